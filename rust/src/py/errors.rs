//! The one mapping from NativeError to the Python exceptions declared in gridpilot/errors.py.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;

use crate::core::error::NativeError;

pyo3::import_exception!(gridpilot.errors, NoSuchProcess);
pyo3::import_exception!(gridpilot.errors, AccessDenied);
pyo3::import_exception!(gridpilot.errors, ParseError);
pyo3::import_exception!(gridpilot.errors, CgroupError);

impl From<NativeError> for PyErr {
    fn from(err: NativeError) -> PyErr {
        let msg = err.to_string();
        match err {
            NativeError::NoSuchProcess { pid } => NoSuchProcess::new_err((msg, pid)),
            NativeError::AccessDenied { pid, .. } => AccessDenied::new_err((msg, pid)),
            NativeError::Parse { .. } => ParseError::new_err(msg),
            NativeError::Cgroup { .. } => CgroupError::new_err(msg),
            NativeError::InvalidArgument(_) => PyValueError::new_err(msg),
            NativeError::Io { source, .. } => PyOSError::new_err((source.raw_os_error().unwrap_or(0), msg)),
        }
    }
}
