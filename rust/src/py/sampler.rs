//! Python bindings of TreeSampler and ProcSample.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::sampler::{ProcSample as CoreSample, TreeSampler as CoreSampler};

#[pyclass(name = "ProcSample", module = "gridpilot._native", frozen, get_all)]
#[derive(Clone)]
pub struct ProcSample {
    timestamp: f64,
    nprocs: u64,
    nthreads: u64,
    pids: Vec<i32>,
    utime_s: f64,
    stime_s: f64,
    cpu_time_s: f64,
    children_cpu_s: f64,
    rss_bytes: u64,
    vmem_bytes: u64,
    swap_bytes: Option<u64>,
    pss_bytes: Option<u64>,
    read_bytes: u64,
    write_bytes: u64,
    rchar: u64,
    wchar: u64,
    io_timestamp: f64,
    minflt: u64,
    majflt: u64,
    unread: u64,
    unread_reasons: BTreeMap<String, u64>,
    unlisted: u64,
}

impl From<CoreSample> for ProcSample {
    fn from(s: CoreSample) -> Self {
        ProcSample {
            timestamp: s.timestamp,
            nprocs: s.nprocs,
            nthreads: s.nthreads,
            pids: s.pids,
            utime_s: s.utime_s,
            stime_s: s.stime_s,
            cpu_time_s: s.cpu_time_s,
            children_cpu_s: s.children_cpu_s,
            rss_bytes: s.rss_bytes,
            vmem_bytes: s.vmem_bytes,
            swap_bytes: s.swap_bytes,
            pss_bytes: s.pss_bytes,
            read_bytes: s.read_bytes,
            write_bytes: s.write_bytes,
            rchar: s.rchar,
            wchar: s.wchar,
            io_timestamp: s.io_timestamp,
            minflt: s.minflt,
            majflt: s.majflt,
            unread: s.unread,
            unread_reasons: s.unread_reasons,
            unlisted: s.unlisted,
        }
    }
}

#[pymethods]
impl ProcSample {
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("timestamp", self.timestamp)?;
        d.set_item("nprocs", self.nprocs)?;
        d.set_item("nthreads", self.nthreads)?;
        d.set_item("pids", self.pids.clone())?;
        d.set_item("utime_s", self.utime_s)?;
        d.set_item("stime_s", self.stime_s)?;
        d.set_item("cpu_time_s", self.cpu_time_s)?;
        d.set_item("children_cpu_s", self.children_cpu_s)?;
        d.set_item("rss_bytes", self.rss_bytes)?;
        d.set_item("vmem_bytes", self.vmem_bytes)?;
        d.set_item("swap_bytes", self.swap_bytes)?;
        d.set_item("pss_bytes", self.pss_bytes)?;
        d.set_item("read_bytes", self.read_bytes)?;
        d.set_item("write_bytes", self.write_bytes)?;
        d.set_item("rchar", self.rchar)?;
        d.set_item("wchar", self.wchar)?;
        d.set_item("io_timestamp", self.io_timestamp)?;
        d.set_item("minflt", self.minflt)?;
        d.set_item("majflt", self.majflt)?;
        d.set_item("unread", self.unread)?;
        d.set_item("unread_reasons", self.unread_reasons.clone())?;
        d.set_item("unlisted", self.unlisted)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "ProcSample(nprocs={}, nthreads={}, cpu_time_s={:.2}, rss_bytes={}, pss_bytes={:?}, unread={})",
            self.nprocs, self.nthreads, self.cpu_time_s, self.rss_bytes, self.pss_bytes, self.unread
        )
    }
}

#[pyclass(name = "TreeSampler", module = "gridpilot._native", frozen)]
pub struct TreeSampler {
    // Frozen classes are shared between threads; the kept descriptors and caches live behind a lock.
    inner: Mutex<CoreSampler>,
    root_pid: i32,
    cgroup: Option<String>,
}

impl TreeSampler {
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut CoreSampler) -> crate::core::error::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut guard = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut guard)
        })
        .map_err(PyErr::from)
    }
}

#[pymethods]
impl TreeSampler {
    #[new]
    #[pyo3(signature = (root_pid, *, cgroup=None, proc="/proc", max_fds=None, io_every=1))]
    fn new(
        py: Python<'_>,
        root_pid: i32,
        cgroup: Option<String>,
        proc: &str,
        max_fds: Option<usize>,
        io_every: u64,
    ) -> PyResult<Self> {
        if io_every == 0 {
            return Err(PyValueError::new_err("io_every must be >= 1, got 0"));
        }
        let cg = cgroup.clone().map(PathBuf::from);
        let proc = proc.to_string();
        let mut inner = py.detach(|| CoreSampler::with_budget(proc, root_pid, cg, max_fds))?;
        inner.set_io_every(io_every);
        Ok(TreeSampler { inner: Mutex::new(inner), root_pid, cgroup })
    }

    #[getter]
    fn root_pid(&self) -> i32 {
        self.root_pid
    }

    #[getter]
    fn cgroup(&self) -> Option<String> {
        self.cgroup.clone()
    }

    #[getter]
    fn io_every(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).io_every()
    }

    #[getter]
    fn kept_fds(&self) -> usize {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).kept_fds()
    }

    fn sample(&self, py: Python<'_>) -> PyResult<ProcSample> {
        self.run(py, |s| s.sample()).map(ProcSample::from)
    }

    fn sample_full(&self, py: Python<'_>) -> PyResult<ProcSample> {
        self.run(py, |s| s.sample_full()).map(ProcSample::from)
    }

    fn pids(&self, py: Python<'_>) -> PyResult<Vec<i32>> {
        self.run(py, |s| s.pids())
    }

    fn __repr__(&self) -> String {
        match &self.cgroup {
            Some(cg) => format!("TreeSampler(root_pid={}, cgroup={:?})", self.root_pid, cg),
            None => format!("TreeSampler(root_pid={})", self.root_pid),
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ProcSample>()?;
    m.add_class::<TreeSampler>()?;
    Ok(())
}
