//! cgroup v2 backend: one tree (`<root>/isolab/<name>`), controllers enabled
//! top-down through `cgroup.subtree_control`.

mod cpu;
mod cpuset;
mod devices;
mod manager;
mod memory;
mod pids;

pub use manager::V2Cgroup;
