//! CgroupSampler and CgroupSample: bindings of core::cgroup's sampler. Counters in microseconds become seconds here.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::cgroup::{CgroupSample, CgroupSampler};

const USEC_PER_S: f64 = 1e6;

fn usec_to_s(v: Option<u64>) -> Option<f64> {
    v.map(|us| us as f64 / USEC_PER_S)
}

#[pyclass(name = "CgroupSample", module = "gridpilot._native", frozen)]
pub struct CgroupSamplePy {
    inner: CgroupSample,
}

/// Every field by its Python name, in the stub's order: one list feeds to_dict and __repr__.
enum Field {
    Float(Option<f64>),
    Int(Option<u64>),
    Bool(Option<bool>),
}

impl CgroupSamplePy {
    fn fields(&self) -> [(&'static str, Field); 22] {
        let s = &self.inner;
        [
            ("timestamp", Field::Float(Some(s.timestamp))),
            ("cpu_usage_s", Field::Float(usec_to_s(s.cpu.usage_usec))),
            ("cpu_user_s", Field::Float(usec_to_s(s.cpu.user_usec))),
            ("cpu_system_s", Field::Float(usec_to_s(s.cpu.system_usec))),
            ("nr_periods", Field::Int(s.cpu.nr_periods)),
            ("nr_throttled", Field::Int(s.cpu.nr_throttled)),
            ("throttled_s", Field::Float(usec_to_s(s.cpu.throttled_usec))),
            ("memory_current", Field::Int(s.memory_current)),
            ("memory_peak", Field::Int(s.memory_peak)),
            ("memory_swap_current", Field::Int(s.memory_swap_current)),
            ("memory_anon", Field::Int(s.memory.anon)),
            ("memory_file", Field::Int(s.memory.file)),
            ("memory_shmem", Field::Int(s.memory.shmem)),
            ("oom", Field::Int(s.events.oom)),
            ("oom_kill", Field::Int(s.events.oom_kill)),
            ("memory_max_events", Field::Int(s.events.max)),
            ("memory_high_events", Field::Int(s.events.high)),
            ("pids_current", Field::Int(s.pids_current)),
            ("io_rbytes", Field::Int(s.io.rbytes)),
            ("io_wbytes", Field::Int(s.io.wbytes)),
            ("populated", Field::Bool(s.populated)),
            ("frozen", Field::Bool(s.frozen)),
        ]
    }
}

#[pymethods]
impl CgroupSamplePy {
    #[getter]
    fn timestamp(&self) -> f64 {
        self.inner.timestamp
    }
    #[getter]
    fn cpu_usage_s(&self) -> Option<f64> {
        usec_to_s(self.inner.cpu.usage_usec)
    }
    #[getter]
    fn cpu_user_s(&self) -> Option<f64> {
        usec_to_s(self.inner.cpu.user_usec)
    }
    #[getter]
    fn cpu_system_s(&self) -> Option<f64> {
        usec_to_s(self.inner.cpu.system_usec)
    }
    #[getter]
    fn nr_periods(&self) -> Option<u64> {
        self.inner.cpu.nr_periods
    }
    #[getter]
    fn nr_throttled(&self) -> Option<u64> {
        self.inner.cpu.nr_throttled
    }
    #[getter]
    fn throttled_s(&self) -> Option<f64> {
        usec_to_s(self.inner.cpu.throttled_usec)
    }
    #[getter]
    fn memory_current(&self) -> Option<u64> {
        self.inner.memory_current
    }
    #[getter]
    fn memory_peak(&self) -> Option<u64> {
        self.inner.memory_peak
    }
    #[getter]
    fn memory_swap_current(&self) -> Option<u64> {
        self.inner.memory_swap_current
    }
    #[getter]
    fn memory_anon(&self) -> Option<u64> {
        self.inner.memory.anon
    }
    #[getter]
    fn memory_file(&self) -> Option<u64> {
        self.inner.memory.file
    }
    #[getter]
    fn memory_shmem(&self) -> Option<u64> {
        self.inner.memory.shmem
    }
    #[getter]
    fn oom(&self) -> Option<u64> {
        self.inner.events.oom
    }
    #[getter]
    fn oom_kill(&self) -> Option<u64> {
        self.inner.events.oom_kill
    }
    #[getter]
    fn memory_max_events(&self) -> Option<u64> {
        self.inner.events.max
    }
    #[getter]
    fn memory_high_events(&self) -> Option<u64> {
        self.inner.events.high
    }
    #[getter]
    fn pids_current(&self) -> Option<u64> {
        self.inner.pids_current
    }
    #[getter]
    fn io_rbytes(&self) -> Option<u64> {
        self.inner.io.rbytes
    }
    #[getter]
    fn io_wbytes(&self) -> Option<u64> {
        self.inner.io.wbytes
    }
    #[getter]
    fn populated(&self) -> Option<bool> {
        self.inner.populated
    }
    #[getter]
    fn frozen(&self) -> Option<bool> {
        self.inner.frozen
    }

    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (name, value) in self.fields() {
            match value {
                Field::Float(v) => d.set_item(name, v)?,
                Field::Int(v) => d.set_item(name, v)?,
                Field::Bool(v) => d.set_item(name, v)?,
            }
        }
        Ok(d)
    }

    /// Only the counters the cgroup provides, so a sample of a minimal delegation stays short.
    fn __repr__(&self) -> String {
        let parts: Vec<String> = self
            .fields()
            .into_iter()
            .filter_map(|(name, value)| match value {
                Field::Float(Some(v)) => Some(format!("{name}={v:.6}")),
                Field::Int(Some(v)) => Some(format!("{name}={v}")),
                Field::Bool(Some(v)) => Some(format!("{name}={}", if v { "True" } else { "False" })),
                _ => None,
            })
            .collect();
        format!("CgroupSample({})", parts.join(", "))
    }
}

#[pyclass(name = "CgroupSampler", module = "gridpilot._native", frozen)]
pub struct CgroupSamplerPy {
    // KeptFile reads take &self (pread), so a frozen class needs no lock around the sampler.
    inner: CgroupSampler,
}

#[pymethods]
impl CgroupSamplerPy {
    #[new]
    fn new(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let inner = py.detach(|| CgroupSampler::open(&path))?;
        Ok(CgroupSamplerPy { inner })
    }

    #[getter]
    fn path(&self) -> String {
        self.inner.path().to_string_lossy().into_owned()
    }

    fn sample(&self, py: Python<'_>) -> PyResult<CgroupSamplePy> {
        let inner = py.detach(|| self.inner.sample())?;
        Ok(CgroupSamplePy { inner })
    }

    fn __repr__(&self) -> String {
        format!("CgroupSampler('{}', files=[{}])", self.inner.path().display(), self.inner.files().join(", "))
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CgroupSamplePy>()?;
    m.add_class::<CgroupSamplerPy>()?;
    Ok(())
}
