//! microvm mode (wired when its crate lands).
