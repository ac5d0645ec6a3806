//! echo-bench
