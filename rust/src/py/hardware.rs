//! Python face of rust/src/core/{gpu,cpu}.rs: `Gpu`, `CpuInfo`, `list_gpus`, `parse_lspci`, `cpu_info`,
//! `parse_cpuinfo`. Converts types, releases the GIL around file reads, maps errors; nothing else.

use std::path::PathBuf;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::core::cpu::{self, Arch};
use crate::core::gpu;

/// A Python-style quoted string for `__repr__`.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn quoted_opt(s: &Option<String>) -> String {
    s.as_deref().map_or_else(|| "None".to_string(), quoted)
}

/// A GPU or accelerator found in sysfs or in lspci output.
#[pyclass(name = "Gpu", module = "gridpilot._native", frozen)]
pub struct GpuPy {
    #[pyo3(get)]
    pci_address: String,
    #[pyo3(get)]
    vendor_id: u16,
    #[pyo3(get)]
    device_id: u16,
    #[pyo3(get)]
    vendor: &'static str,
    #[pyo3(get)]
    model: Option<String>,
    #[pyo3(get)]
    class_id: u16,
    #[pyo3(get)]
    driver: Option<String>,
    #[pyo3(get)]
    numa_node: Option<i32>,
    #[pyo3(get)]
    device_nodes: Vec<String>,
}

impl From<gpu::Gpu> for GpuPy {
    fn from(g: gpu::Gpu) -> Self {
        GpuPy {
            pci_address: g.pci_address,
            vendor_id: g.vendor_id,
            device_id: g.device_id,
            vendor: g.vendor,
            model: g.model,
            class_id: g.class_id,
            driver: g.driver,
            numa_node: g.numa_node,
            device_nodes: g.device_nodes,
        }
    }
}

#[pymethods]
impl GpuPy {
    /// All fields as a plain dict (for JSON).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("pci_address", &self.pci_address)?;
        d.set_item("vendor_id", self.vendor_id)?;
        d.set_item("device_id", self.device_id)?;
        d.set_item("vendor", self.vendor)?;
        d.set_item("model", &self.model)?;
        d.set_item("class_id", self.class_id)?;
        d.set_item("driver", &self.driver)?;
        d.set_item("numa_node", self.numa_node)?;
        d.set_item("device_nodes", &self.device_nodes)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "Gpu(pci_address={}, vendor={}, vendor_id=0x{:04x}, device_id=0x{:04x}, model={}, class_id=0x{:04x}, \
             driver={}, numa_node={}, device_nodes=[{}])",
            quoted(&self.pci_address),
            quoted(self.vendor),
            self.vendor_id,
            self.device_id,
            quoted_opt(&self.model),
            self.class_id,
            quoted_opt(&self.driver),
            self.numa_node.map_or_else(|| "None".to_string(), |n| n.to_string()),
            self.device_nodes.iter().map(|n| quoted(n)).collect::<Vec<_>>().join(", "),
        )
    }
}

/// The processor of this node.
#[pyclass(name = "CpuInfo", module = "gridpilot._native", frozen)]
pub struct CpuInfoPy {
    #[pyo3(get)]
    arch: &'static str,
    #[pyo3(get)]
    model: Option<String>,
    #[pyo3(get)]
    family: Option<String>,
    #[pyo3(get)]
    mhz: Option<f64>,
    #[pyo3(get)]
    flags: Vec<String>,
    #[pyo3(get)]
    has_avx: bool,
    #[pyo3(get)]
    logical_cpus: u32,
}

impl From<cpu::CpuInfo> for CpuInfoPy {
    fn from(c: cpu::CpuInfo) -> Self {
        CpuInfoPy {
            arch: c.arch.as_str(),
            model: c.model,
            family: c.family,
            mhz: c.mhz,
            flags: c.flags,
            has_avx: c.has_avx,
            logical_cpus: c.logical_cpus,
        }
    }
}

#[pymethods]
impl CpuInfoPy {
    /// All fields as a plain dict (for JSON).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("arch", self.arch)?;
        d.set_item("model", &self.model)?;
        d.set_item("family", &self.family)?;
        d.set_item("mhz", self.mhz)?;
        d.set_item("flags", &self.flags)?;
        d.set_item("has_avx", self.has_avx)?;
        d.set_item("logical_cpus", self.logical_cpus)?;
        Ok(d)
    }

    fn __repr__(&self) -> String {
        format!(
            "CpuInfo(arch={}, model={}, family={}, mhz={}, logical_cpus={}, has_avx={}, flags=<{} flags>)",
            quoted(self.arch),
            quoted_opt(&self.model),
            quoted_opt(&self.family),
            self.mhz.map_or_else(|| "None".to_string(), |m| format!("{m:?}")),
            self.logical_cpus,
            if self.has_avx { "True" } else { "False" },
            self.flags.len(),
        )
    }
}

fn arch_arg(arch: Option<&str>) -> PyResult<Option<Arch>> {
    Ok(arch.map(Arch::from_name).transpose()?)
}

/// GPUs and accelerators from sysfs PCI devices; an empty list where there is no sysfs or no GPU.
// Paths are taken as PathBuf so os.PathLike works too; text_signature shows the defaults as the stub has them.
#[pyfunction]
#[pyo3(
    signature = (sysfs = PathBuf::from("/sys"), pci_ids = None, dev = PathBuf::from("/dev")),
    text_signature = "(sysfs='/sys', pci_ids=None, dev='/dev')"
)]
fn list_gpus(py: Python<'_>, sysfs: PathBuf, pci_ids: Option<PathBuf>, dev: PathBuf) -> PyResult<Vec<GpuPy>> {
    let gpus = py.detach(|| gpu::list_gpus(&sysfs, &dev, pci_ids.as_deref()))?;
    Ok(gpus.into_iter().map(GpuPy::from).collect())
}

/// GPUs and accelerators from `lspci -mm -nn -D` output (and the plain, -k and -vvnn forms).
#[pyfunction]
#[pyo3(signature = (text, pci_ids = None))]
fn parse_lspci(py: Python<'_>, text: String, pci_ids: Option<PathBuf>) -> Vec<GpuPy> {
    // Reads pci.ids (about 1.3 MB) when the text holds GPUs.
    let gpus = py.detach(|| gpu::parse_lspci(&text, pci_ids.as_deref()));
    gpus.into_iter().map(GpuPy::from).collect()
}

/// Read /proc/cpuinfo (and cpufreq in sysfs); arch defaults to this machine's.
#[pyfunction]
#[pyo3(
    signature = (proc = PathBuf::from("/proc"), sys = PathBuf::from("/sys"), arch = None),
    text_signature = "(proc='/proc', sys='/sys', arch=None)"
)]
fn cpu_info(py: Python<'_>, proc: PathBuf, sys: PathBuf, arch: Option<&str>) -> PyResult<CpuInfoPy> {
    let arch = arch_arg(arch)?;
    let info = py.detach(|| cpu::cpu_info(&proc, &sys, arch))?;
    Ok(info.into())
}

/// Parse the text of a /proc/cpuinfo; arch is guessed from the text when not given.
#[pyfunction]
#[pyo3(signature = (text, arch = None))]
fn parse_cpuinfo(text: &str, arch: Option<&str>) -> PyResult<CpuInfoPy> {
    Ok(cpu::parse_cpuinfo(text, arch_arg(arch)?)?.into())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<GpuPy>()?;
    m.add_class::<CpuInfoPy>()?;
    m.add_function(wrap_pyfunction!(list_gpus, m)?)?;
    m.add_function(wrap_pyfunction!(parse_lspci, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_info, m)?)?;
    m.add_function(wrap_pyfunction!(parse_cpuinfo, m)?)?;
    Ok(())
}
