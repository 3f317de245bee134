//! Python bindings of core::fasttier: the monitor's fast tier on a native thread.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::sampler::ProcSample;
use crate::core::fasttier::{FastTier as CoreFastTier, FastTierConfig, Taken, DEFAULT_IO_EVERY};

#[pyclass(name = "FastTake", module = "gridpilot._native", frozen, get_all)]
pub struct FastTake {
    points: Vec<(f64, f64)>,
    rss_max: u64,
    vmem_max: u64,
    memory_max: Option<u64>,
    last: Option<ProcSample>,
    cgroup_memory: Option<u64>,
    v1_memory: Option<u64>,
    oom_kills: u64,
    core_candidate: bool,
    ticks: u64,
    errors: u64,
    last_error: Option<String>,
}

impl From<Taken> for FastTake {
    fn from(t: Taken) -> Self {
        FastTake {
            points: t.points,
            rss_max: t.rss_max,
            vmem_max: t.vmem_max,
            memory_max: t.memory_max,
            last: t.last.map(ProcSample::from),
            cgroup_memory: t.cgroup_memory,
            v1_memory: t.v1_memory,
            oom_kills: t.oom_kills,
            core_candidate: t.core_candidate,
            ticks: t.ticks,
            errors: t.errors,
            last_error: t.last_error,
        }
    }
}

// The signature's default, written out so Python sees a number (stubtest checks it against _native.pyi).
const _: () = assert!(DEFAULT_IO_EVERY == 15);

#[pyclass(name = "FastTier", module = "gridpilot._native", frozen)]
pub struct FastTier {
    inner: Mutex<CoreFastTier>,
    fd: i32,
}

#[pymethods]
impl FastTier {
    #[new]
    #[pyo3(signature = (root_pid, *, interval_s, cgroup=None, v1_memory=None, workdir=None, memory_limit=None, proc="/proc", io_every=15))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        root_pid: i32,
        interval_s: f64,
        cgroup: Option<String>,
        v1_memory: Option<String>,
        workdir: Option<String>,
        memory_limit: Option<u64>,
        proc: &str,
        io_every: u64,
    ) -> PyResult<Self> {
        if !(interval_s.is_finite() && interval_s > 0.0) {
            return Err(PyValueError::new_err(format!("interval_s must be > 0, got {interval_s}")));
        }
        if io_every == 0 {
            return Err(PyValueError::new_err("io_every must be >= 1, got 0"));
        }
        let cfg = FastTierConfig {
            proc_root: PathBuf::from(proc),
            root_pid,
            cgroup: cgroup.map(PathBuf::from),
            v1_memory: v1_memory.map(PathBuf::from),
            workdir: workdir.map(PathBuf::from),
            memory_limit,
            interval: Duration::from_secs_f64(interval_s),
            io_every,
        };
        let inner = py.detach(|| CoreFastTier::start(cfg))?;
        let fd = inner.event_fd();
        Ok(FastTier { inner: Mutex::new(inner), fd })
    }

    fn fileno(&self) -> i32 {
        self.fd
    }

    fn take(&self, py: Python<'_>) -> FastTake {
        py.detach(|| self.inner.lock().unwrap_or_else(|p| p.into_inner()).take()).into()
    }

    fn sample_full(&self, py: Python<'_>) -> PyResult<ProcSample> {
        py.detach(|| self.inner.lock().unwrap_or_else(|p| p.into_inner()).sample_full())
            .map(ProcSample::from)
            .map_err(PyErr::from)
    }

    fn stop(&self, py: Python<'_>) {
        py.detach(|| self.inner.lock().unwrap_or_else(|p| p.into_inner()).stop())
    }

    #[getter]
    fn running(&self) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).running()
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<FastTake>()?;
    m.add_class::<FastTier>()?;
    Ok(())
}
