//! `--runtime uring-multishot`: the io_uring engine written directly on the `io-uring` crate.
//!
//! [`engine`] holds the event loop and is self-contained (no dependency on the rest of the
//! crate), so it can be driven in-process by tests with its own stats sink and stop flag.
//! [`buf_ring`] is the provided-buffer pool, [`conn`] the per-connection state.

pub mod buf_ring;
pub mod conn;
pub mod engine;

pub use engine::{
    default_buffer_count, BatchWait, Counts, Engine, MultishotParams, Report, StatsSink,
};
