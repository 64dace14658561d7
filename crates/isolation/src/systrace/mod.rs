//! Host system calls made on behalf of an instance, counted by a tracer of
//! our own on ptrace(2): which entry points of the host kernel the
//! instance's host-side processes and threads actually use.
//!
//! - [`tracer`]: the ptrace engine (seize or spawn, follow, count, detach).
//! - [`process`]: the same engine run as the separate `isolab-trace`
//!   process, which is how the harness uses it.
//! - [`profile`]: the result, names from the `syscalls` crate's tables.
//!
//! Tracing is its own pass: a traced thread stops twice per call, so no
//! timing figure is ever taken while it runs.

pub mod process;
pub mod profile;
pub mod tracer;

pub use process::{TraceMessage, TracerProcess, TracerProcessError};
pub use profile::{syscall_name, Exit, NotTraced, SyscallProfile, ThreadCounts};
pub use tracer::{SpawnSpec, Tracer, TracerError};
