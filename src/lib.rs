//! uring-echo
