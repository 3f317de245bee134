//! Python bindings of terminate_tree, signal_tree, signal_process, kill_cgroup and KillReport, and of the process
//! identity and tree readers they rest on (start_time, children, descendants).

use std::path::PathBuf;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::procfs::ProcFs;
use crate::core::signal::{
    kill_members, signal_all, signal_process as core_signal_process, terminate, KillOptions, KillReport as CoreReport,
    Target,
};

#[pyclass(name = "KillReport", module = "gridpilot._native", frozen, get_all)]
pub struct KillReport {
    signalled: Vec<i32>,
    terminated: Vec<i32>,
    killed: Vec<i32>,
    survivors: Vec<i32>,
    refused: Vec<(i32, String)>,
    elapsed_s: f64,
    rounds: u32,
}

impl From<CoreReport> for KillReport {
    fn from(r: CoreReport) -> Self {
        KillReport {
            signalled: r.signalled,
            terminated: r.terminated,
            killed: r.killed,
            survivors: r.survivors,
            refused: r.refused,
            elapsed_s: r.elapsed_s,
            rounds: r.rounds,
        }
    }
}

#[pymethods]
impl KillReport {
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("signalled", self.signalled.clone())?;
        d.set_item("terminated", self.terminated.clone())?;
        d.set_item("killed", self.killed.clone())?;
        d.set_item("survivors", self.survivors.clone())?;
        d.set_item("refused", self.refused.clone())?;
        d.set_item("elapsed_s", self.elapsed_s)?;
        d.set_item("rounds", self.rounds)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "KillReport(terminated={:?}, killed={:?}, survivors={:?}, refused={:?}, elapsed_s={:.3})",
            self.terminated, self.killed, self.survivors, self.refused, self.elapsed_s
        )
    }
}

fn target(
    root_pid: Option<i32>,
    cgroup: Option<String>,
    include_root: bool,
    root_start: Option<u64>,
) -> PyResult<Target> {
    if root_start.is_some() && root_pid.is_none() {
        return Err(PyValueError::new_err("start_time is the root's: it needs root_pid"));
    }
    match (root_pid, cgroup) {
        (_, Some(dir)) => Ok(Target::Cgroup { dir: PathBuf::from(dir), root_pid, include_root, root_start }),
        (Some(root_pid), None) => Ok(Target::Tree { root_pid, include_root, root_start }),
        (None, None) => Err(PyValueError::new_err("terminate_tree needs root_pid, cgroup, or both")),
    }
}

#[pyfunction]
#[pyo3(signature = (
    root_pid=None, *, cgroup=None, grace_s=60.0, rounds=10, include_root=true, start_time=None, proc="/proc"
))]
#[allow(clippy::too_many_arguments)]
pub fn terminate_tree(
    py: Python<'_>,
    root_pid: Option<i32>,
    cgroup: Option<String>,
    grace_s: f64,
    rounds: u32,
    include_root: bool,
    start_time: Option<u64>,
    proc: &str,
) -> PyResult<KillReport> {
    if !grace_s.is_finite() || grace_s < 0.0 {
        return Err(PyValueError::new_err(format!("grace_s must be a finite number >= 0, got {grace_s}")));
    }
    if rounds == 0 {
        return Err(PyValueError::new_err("rounds must be >= 1"));
    }
    let target = target(root_pid, cgroup, include_root, start_time)?;
    let fs = ProcFs::new(proc);
    let opts = KillOptions { grace: Duration::from_secs_f64(grace_s), rounds, ..Default::default() };
    let mut pending: Option<PyErr> = None;
    let result = py.detach(|| {
        // Waiting must still run Python's signal handlers (Ctrl-C, SIGTERM from the batch system). A handler that
        // raises cuts the grace short: what is left is SIGKILLed before the exception propagates.
        let mut interrupted = || match Python::attach(|py| py.check_signals()) {
            Ok(()) => false,
            Err(e) => {
                pending.get_or_insert(e);
                true
            }
        };
        terminate(&fs, &target, &opts, &mut interrupted)
    });
    if let Some(err) = pending {
        return Err(err);
    }
    Ok(result?.into())
}

#[pyfunction]
#[pyo3(signature = (root_pid, signum, *, cgroup=None, include_root=true, start_time=None, proc="/proc"))]
pub fn signal_tree(
    py: Python<'_>,
    root_pid: i32,
    signum: i32,
    cgroup: Option<String>,
    include_root: bool,
    start_time: Option<u64>,
    proc: &str,
) -> PyResult<KillReport> {
    let target = target(Some(root_pid), cgroup, include_root, start_time)?;
    let fs = ProcFs::new(proc);
    Ok(py.detach(|| signal_all(&fs, &target, signum))?.into())
}

#[pyfunction]
#[pyo3(signature = (pid, signum, *, start_time=None, group=false, proc="/proc"))]
pub fn signal_process(
    py: Python<'_>,
    pid: i32,
    signum: i32,
    start_time: Option<u64>,
    group: bool,
    proc: &str,
) -> PyResult<bool> {
    let fs = ProcFs::new(proc);
    Ok(py.detach(|| core_signal_process(&fs, pid, start_time, signum, group))?)
}

#[pyfunction]
#[pyo3(signature = (cgroup, *, proc="/proc"))]
pub fn kill_cgroup(py: Python<'_>, cgroup: PathBuf, proc: &str) -> PyResult<bool> {
    let fs = ProcFs::new(proc);
    Ok(py.detach(|| kill_members(&fs, &cgroup))?)
}

#[pyfunction]
#[pyo3(signature = (pid, *, live_only=false, proc="/proc"))]
pub fn start_time(py: Python<'_>, pid: i32, live_only: bool, proc: &str) -> Option<u64> {
    let fs = ProcFs::new(proc);
    py.detach(|| fs.start_time(pid, live_only))
}

#[pyfunction]
#[pyo3(signature = (pid, *, proc="/proc"))]
pub fn children(py: Python<'_>, pid: i32, proc: &str) -> Vec<i32> {
    let fs = ProcFs::new(proc);
    py.detach(|| fs.direct_children(pid))
}

#[pyfunction]
#[pyo3(signature = (pid, *, proc="/proc"))]
pub fn descendants(py: Python<'_>, pid: i32, proc: &str) -> Vec<i32> {
    let fs = ProcFs::new(proc);
    py.detach(|| fs.descendants(pid))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<KillReport>()?;
    m.add_function(wrap_pyfunction!(terminate_tree, m)?)?;
    m.add_function(wrap_pyfunction!(signal_tree, m)?)?;
    m.add_function(wrap_pyfunction!(signal_process, m)?)?;
    m.add_function(wrap_pyfunction!(kill_cgroup, m)?)?;
    m.add_function(wrap_pyfunction!(start_time, m)?)?;
    m.add_function(wrap_pyfunction!(children, m)?)?;
    m.add_function(wrap_pyfunction!(descendants, m)?)?;
    Ok(())
}
