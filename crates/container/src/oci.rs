//! OCI bundle writer (next commit).
