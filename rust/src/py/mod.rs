//! Thin pyo3 bindings: convert types, release the GIL around I/O, map errors. No logic lives here.

use pyo3::prelude::*;

mod cgroup;
mod errors;
mod fasttier;
mod hardware;
mod sampler;
mod signal;

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    sampler::register(m)?;
    signal::register(m)?;
    cgroup::register(m)?;
    hardware::register(m)?;
    fasttier::register(m)?;
    Ok(())
}
