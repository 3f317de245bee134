//! Thin pyo3 bindings: convert types, release the GIL around I/O, map errors. No logic lives here.

use pyo3::prelude::*;

mod errors;
mod hardware;

#[pymodule]
#[pyo3(name = "_native")]
fn native_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    hardware::register(m)?;
    Ok(())
}
