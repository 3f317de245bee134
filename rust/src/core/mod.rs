//! Pure Rust core: every reader takes its root (`/proc`, `/sys`, a cgroup directory) so tests can use fixtures.

pub mod cgroup;
pub mod cpu;
pub mod error;
pub mod fasttier;
pub mod fdbudget;
pub mod gpu;
pub mod procfs;
pub mod sampler;
pub mod signal;
pub mod util;
