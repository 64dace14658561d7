//! peers mode (wired when its crate lands).
