//! container mode (wired when its crate lands).
