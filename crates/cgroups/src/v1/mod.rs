//! cgroup v1 backend: one directory per controller (`<mount>/isolab/<name>`).

mod cpu;
mod cpuset;
mod devices;
mod freezer;
mod manager;
mod memory;
mod pids;

pub use manager::V1Cgroup;
