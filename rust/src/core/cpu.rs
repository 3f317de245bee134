//! The node's processor from /proc/cpuinfo, whose layout differs completely between x86_64 (one block of
//! `model name`, `flags`, `cpu MHz` per logical CPU), aarch64 (`Features` and `CPU implementer`/`CPU part` ids, no
//! name, no clock) and riscv64 (`hart`, `isa` string, `uarch`).
//!
//! Captures differ in more than the architecture: spaces instead of tabs before the colon, keys containing spaces
//! (`hart isa`, `model name`), empty values (`isa-ext\t\t: `), CRLF line ends, no blank line after the last block,
//! and cores of different kinds in one chip. The parser splits each line at its first colon and trims both sides,
//! and counts processors by key, not by blocks.

use std::collections::HashMap;
use std::path::Path;

use crate::core::error::{NativeError, Result};
use crate::core::util::read_string;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
    Riscv64,
    Other,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
            Arch::Riscv64 => "riscv64",
            Arch::Other => "other",
        }
    }

    /// The names callers pass, including the Debian/Go spellings amd64 and arm64.
    pub fn from_name(name: &str) -> Result<Arch> {
        match name {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            "riscv64" => Ok(Arch::Riscv64),
            "other" => Ok(Arch::Other),
            _ => Err(NativeError::InvalidArgument(format!(
                "unknown arch {name:?}: expected x86_64, aarch64, riscv64 or other"
            ))),
        }
    }

    /// `uname -m` spellings.
    fn from_machine(machine: &str) -> Arch {
        match machine {
            "x86_64" | "amd64" => Arch::X86_64,
            "aarch64" | "arm64" | "aarch64_be" => Arch::Aarch64,
            "riscv64" => Arch::Riscv64,
            _ => Arch::Other,
        }
    }

    /// The architecture this module was compiled for; for other targets, what the kernel says (uname).
    pub fn native() -> Arch {
        if cfg!(target_arch = "x86_64") {
            Arch::X86_64
        } else if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else if cfg!(target_arch = "riscv64") {
            Arch::Riscv64
        } else {
            uname_machine().map_or(Arch::Other, |m| Arch::from_machine(&m))
        }
    }

    /// Recognise the cpuinfo layout. x86 alone has `flags`/`vendor_id`; ARM has `CPU implementer` on both 32- and
    /// 64-bit kernels, so 64-bit is told by architecture 8 or later (or the old kernels' "AArch64") or by `asimd`,
    /// the arm64 name of what 32-bit kernels call `neon`; RISC-V has an `isa` string.
    pub fn guess(fields: &HashMap<&str, &str>) -> Arch {
        if fields.contains_key("flags") || fields.contains_key("vendor_id") {
            return Arch::X86_64;
        }
        if fields.contains_key("CPU implementer") {
            let arch = fields.get("CPU architecture").copied().unwrap_or("");
            let v8_or_later = arch == "AArch64" || arch.parse::<u32>().is_ok_and(|v| v >= 8);
            let asimd = fields.get("Features").is_some_and(|f| f.split_whitespace().any(|x| x == "asimd"));
            return if v8_or_later || asimd { Arch::Aarch64 } else { Arch::Other };
        }
        if let Some(isa) = fields.get("isa") {
            return if isa.to_ascii_lowercase().starts_with("rv64") { Arch::Riscv64 } else { Arch::Other };
        }
        if fields.contains_key("hart") {
            return Arch::Riscv64;
        }
        Arch::Other
    }
}

fn uname_machine() -> Option<String> {
    // SAFETY: utsname is plain old data; uname fills it and its fields are NUL-terminated.
    unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) != 0 {
            return None;
        }
        let machine = std::ffi::CStr::from_ptr(uts.machine.as_ptr());
        Some(machine.to_string_lossy().into_owned())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CpuInfo {
    pub arch: Arch,
    pub model: Option<String>,
    pub family: Option<String>,
    pub mhz: Option<f64>,
    pub flags: Vec<String>,
    pub has_avx: bool,
    pub logical_cpus: u32,
}

/// What one pass over cpuinfo text collects.
#[derive(Debug, Default)]
struct CpuinfoFields<'a> {
    /// The first value of every key: the first processor's, or the global one on kernels that print some once.
    first: HashMap<&'a str, &'a str>,
    processors: u32,
    harts: u32,
    /// (CPU implementer, CPU part) of every aarch64 core, in order: chips mix core kinds (big.LITTLE, GB10).
    arm_cores: Vec<(&'a str, &'a str)>,
}

fn scan(text: &str) -> CpuinfoFields<'_> {
    let mut fields = CpuinfoFields::default();
    let mut implementer = "";
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        let Some((key, value)) = line.split_once(':') else { continue };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            continue;
        }
        fields.first.entry(key).or_insert(value);
        match key {
            "processor" => fields.processors += 1,
            "hart" => fields.harts += 1,
            "CPU implementer" => implementer = value,
            "CPU part" => fields.arm_cores.push((implementer, value)),
            _ => {}
        }
    }
    fields
}

/// Logical CPUs: `processor` entries; RISC-V kernels always print one with each `hart`, but count harts if a
/// capture kept only those; s390x states the count in `# processors`.
fn count_cpus(fields: &CpuinfoFields<'_>) -> u32 {
    if fields.processors > 0 {
        return fields.processors;
    }
    if fields.harts > 0 {
        return fields.harts;
    }
    fields.first.get("# processors").and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// A clock as cpuinfo spells it ("2894.214", "1.848Ghz", "2300.000000MHz") in MHz.
fn parse_mhz(value: &str) -> Option<f64> {
    let lower = value.trim().to_ascii_lowercase();
    let (number, scale) = if let Some(n) = lower.strip_suffix("ghz") {
        (n, 1000.0)
    } else if let Some(n) = lower.strip_suffix("mhz") {
        (n, 1.0)
    } else if let Some(n) = lower.strip_suffix("khz") {
        (n, 0.001)
    } else {
        (lower.as_str(), 1.0)
    };
    let mhz = number.trim().parse::<f64>().ok()? * scale;
    (mhz.is_finite() && mhz > 0.0).then_some(mhz)
}

/// Drop a trailing version (`2p0`, `1`) from an ISA extension name.
fn strip_isa_version(ext: &str) -> &str {
    let trimmed = ext.trim_end_matches(|c: char| c.is_ascii_digit());
    if trimmed.len() < ext.len() {
        // `<major>p<minor>`: remove the `p` and the major version before it as well.
        if let Some(before_p) = trimmed.strip_suffix('p') {
            let major_removed = before_p.trim_end_matches(|c: char| c.is_ascii_digit());
            if major_removed.len() < before_p.len() && !major_removed.is_empty() {
                return major_removed;
            }
        }
        if !trimmed.is_empty() {
            return trimmed;
        }
    }
    ext
}

/// Extensions in a RISC-V ISA string: `rv64imafdc_zicsr_zifencei` gives i m a f d c zicsr zifencei. `g` is the
/// shorthand for imafd with zicsr and zifencei. Single letters come first, multi-letter ones after underscores.
pub fn riscv_isa_extensions(isa: &str) -> Vec<String> {
    let isa = isa.trim().to_ascii_lowercase();
    let body = ["rv128", "rv64", "rv32"].iter().find_map(|p| isa.strip_prefix(p)).unwrap_or(&isa);
    let mut parts = body.split('_');
    let mut out: Vec<String> = Vec::new();
    let mut after_digit = false;
    for c in parts.next().unwrap_or("").chars() {
        if c.is_ascii_digit() {
            after_digit = true;
            continue;
        }
        // `p` between digits separates major and minor version ("i2p1"), it is no extension.
        if c == 'p' && after_digit {
            continue;
        }
        after_digit = false;
        if c == 'g' {
            out.extend(["i", "m", "a", "f", "d", "zicsr", "zifencei"].map(String::from));
        } else if c.is_ascii_alphabetic() {
            out.push(c.to_string());
        }
    }
    out.extend(parts.filter(|p| !p.is_empty()).map(|p| strip_isa_version(p).to_string()));
    out
}

fn push_unique(flags: &mut Vec<String>, new: impl IntoIterator<Item = String>) {
    for flag in new {
        if !flags.contains(&flag) {
            flags.push(flag);
        }
    }
}

fn words(value: Option<&&str>) -> Vec<String> {
    value.map(|v| v.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------------------------
// aarch64 implementer and part ids (MIDR_EL1), from the vendors' public technical reference manuals as collected
// in Linux's arch/arm64/include/asm/cputype.h and util-linux's lscpu.

fn arm_implementer_name(implementer: u32) -> Option<&'static str> {
    Some(match implementer {
        0x41 => "ARM",
        0x42 => "Broadcom",
        0x43 => "Cavium",
        0x46 => "Fujitsu",
        0x48 => "HiSilicon",
        0x4e => "NVIDIA",
        0x50 => "APM",
        0x51 => "Qualcomm",
        0x53 => "Samsung",
        0x61 => "Apple",
        0x6d => "Microsoft",
        0x70 => "Phytium",
        0xc0 => "Ampere",
        _ => return None,
    })
}

fn arm_core_name(implementer: u32, part: u32) -> Option<&'static str> {
    Some(match (implementer, part) {
        (0x41, 0xd03) => "ARM Cortex-A53",
        (0x41, 0xd04) => "ARM Cortex-A35",
        (0x41, 0xd05) => "ARM Cortex-A55",
        (0x41, 0xd07) => "ARM Cortex-A57",
        (0x41, 0xd08) => "ARM Cortex-A72",
        (0x41, 0xd09) => "ARM Cortex-A73",
        (0x41, 0xd0a) => "ARM Cortex-A75",
        (0x41, 0xd0b) => "ARM Cortex-A76",
        (0x41, 0xd0c) => "ARM Neoverse-N1",
        (0x41, 0xd0d) => "ARM Cortex-A77",
        (0x41, 0xd0e) => "ARM Cortex-A76AE",
        (0x41, 0xd40) => "ARM Neoverse-V1",
        (0x41, 0xd41) => "ARM Cortex-A78",
        (0x41, 0xd42) => "ARM Cortex-A78AE",
        (0x41, 0xd44) => "ARM Cortex-X1",
        (0x41, 0xd46) => "ARM Cortex-A510",
        (0x41, 0xd47) => "ARM Cortex-A710",
        (0x41, 0xd48) => "ARM Cortex-X2",
        (0x41, 0xd49) => "ARM Neoverse-N2",
        (0x41, 0xd4a) => "ARM Neoverse-E1",
        (0x41, 0xd4b) => "ARM Cortex-A78C",
        (0x41, 0xd4d) => "ARM Cortex-A715",
        (0x41, 0xd4e) => "ARM Cortex-X3",
        (0x41, 0xd4f) => "ARM Neoverse-V2",
        (0x41, 0xd80) => "ARM Cortex-A520",
        (0x41, 0xd81) => "ARM Cortex-A720",
        (0x41, 0xd82) => "ARM Cortex-X4",
        (0x41, 0xd84) => "ARM Neoverse-V3",
        (0x41, 0xd85) => "ARM Cortex-X925",
        (0x41, 0xd87) => "ARM Cortex-A725",
        (0x41, 0xd8e) => "ARM Neoverse-N3",
        // Broadcom designed Vulcan; Cavium shipped it as ThunderX2 under Broadcom's implementer id.
        (0x42, 0x516) => "Cavium ThunderX2",
        (0x43, 0x0a1) => "Cavium ThunderX",
        (0x43, 0x0a2) => "Cavium ThunderX 81xx",
        (0x43, 0x0a3) => "Cavium ThunderX 83xx",
        (0x43, 0x0af) => "Cavium ThunderX2",
        (0x46, 0x001) => "Fujitsu A64FX",
        (0x48, 0xd01) => "HiSilicon TSV110 (Kunpeng 920)",
        (0x4e, 0x000) => "NVIDIA Denver",
        (0x4e, 0x003) => "NVIDIA Denver 2",
        (0x4e, 0x004) => "NVIDIA Carmel",
        (0x50, 0x000) => "APM X-Gene",
        (0x51, 0xc00) => "Qualcomm Falkor",
        (0x70, 0x662) => "Phytium FTC662",
        (0x70, 0x663) => "Phytium FTC663",
        (0x70, 0x862) => "Phytium FTC862",
        (0xc0, 0xac3) => "Ampere Ampere-1",
        (0xc0, 0xac4) => "Ampere Ampere-1a",
        _ => return None,
    })
}

fn parse_id(value: &str) -> Option<u32> {
    let v = value.trim();
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Name of one core from its implementer and part strings ("0x41", "0xd0c").
pub fn arm_core_label(implementer: &str, part: &str) -> String {
    match (parse_id(implementer), parse_id(part)) {
        (Some(i), Some(p)) => match (arm_core_name(i, p), arm_implementer_name(i)) {
            (Some(name), _) => name.to_string(),
            (None, Some(vendor)) => format!("{vendor} part {part}"),
            (None, None) => format!("implementer {implementer} part {part}"),
        },
        _ => format!("implementer {implementer} part {part}"),
    }
}

/// The model of an aarch64 chip: its core names in order of first appearance, joined with " + " when a chip
/// mixes kinds of cores.
fn arm_model(cores: &[(&str, &str)]) -> Option<String> {
    let mut names: Vec<String> = Vec::new();
    for (implementer, part) in cores {
        let name = arm_core_label(implementer, part);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    (!names.is_empty()).then(|| names.join(" + "))
}

fn non_empty(value: Option<&&str>) -> Option<String> {
    value.filter(|v| !v.is_empty()).map(|v| v.to_string())
}

/// Parse the text of a /proc/cpuinfo. `arch` None: recognise the layout from the text. Text without any
/// processor entry is a parse error.
pub fn parse_cpuinfo(text: &str, arch: Option<Arch>) -> Result<CpuInfo> {
    let fields = scan(text);
    let logical_cpus = count_cpus(&fields);
    if logical_cpus == 0 {
        return Err(NativeError::parse("cpuinfo", "no processor entries"));
    }
    let arch = arch.unwrap_or_else(|| Arch::guess(&fields.first));
    let first = &fields.first;
    let mut flags: Vec<String> = Vec::new();
    let (model, family, mhz) = match arch {
        Arch::X86_64 => {
            push_unique(&mut flags, words(first.get("flags")));
            (non_empty(first.get("model name")), non_empty(first.get("cpu family")), None)
        }
        Arch::Aarch64 => {
            push_unique(&mut flags, words(first.get("Features")));
            let model = arm_model(&fields.arm_cores).or_else(|| non_empty(first.get("model name")));
            (model, non_empty(first.get("CPU architecture")), None)
        }
        Arch::Riscv64 => {
            if let Some(isa) = first.get("isa") {
                push_unique(&mut flags, riscv_isa_extensions(isa));
            }
            // Older vendor kernels list further extensions apart; often the line is there but empty.
            for key in ["isa-ext", "isa ext"] {
                if let Some(extra) = first.get(key) {
                    let extra = extra.split(|c: char| c.is_whitespace() || c == '_' || c == ',');
                    push_unique(&mut flags, extra.filter(|e| !e.is_empty()).map(|e| e.to_ascii_lowercase()));
                }
            }
            let model = non_empty(first.get("model name"))
                .or_else(|| non_empty(first.get("uarch")))
                .or_else(|| non_empty(first.get("isa")));
            // T-Head vendor kernels print the clock as `cpu-freq : 1.848Ghz`.
            let mhz = first.get("cpu-freq").and_then(|v| parse_mhz(v));
            (model, non_empty(first.get("mvendorid")), mhz)
        }
        Arch::Other => {
            let list = first.get("flags").or(first.get("Features"));
            push_unique(&mut flags, words(list));
            let model = non_empty(first.get("model name")).or_else(|| non_empty(first.get("cpu")));
            // POWER prints `clock : 2300.000000MHz`.
            let mhz = first.get("clock").and_then(|v| parse_mhz(v));
            (model, non_empty(first.get("cpu family")), mhz)
        }
    };
    let mhz = first.get("cpu MHz").and_then(|v| parse_mhz(v)).or(mhz);
    let has_avx = flags.iter().any(|f| f == "avx");
    Ok(CpuInfo { arch, model, family, mhz, flags, has_avx, logical_cpus })
}

/// Clock of cpu0 from cpufreq in sysfs (kHz there): the maximum, else the current one.
fn cpufreq_mhz(sys: &Path) -> Option<f64> {
    let dir = sys.join("devices/system/cpu/cpu0/cpufreq");
    ["cpuinfo_max_freq", "scaling_cur_freq"].iter().find_map(|name| {
        let khz = read_string(&dir.join(name)).ok()?.trim().parse::<u64>().ok()?;
        (khz > 0).then(|| khz as f64 / 1000.0)
    })
}

/// The processor of this node from `<proc>/cpuinfo`, with the clock from cpufreq under `sys` when cpuinfo has
/// none (aarch64, most riscv64). `arch` None: this machine's.
pub fn cpu_info(proc: &Path, sys: &Path, arch: Option<Arch>) -> Result<CpuInfo> {
    let path = proc.join("cpuinfo");
    let text = read_string(&path).map_err(|e| NativeError::io(&path, e))?;
    let mut info = parse_cpuinfo(&text, Some(arch.unwrap_or_else(Arch::native)))?;
    if info.mhz.is_none() {
        info.mhz = cpufreq_mhz(sys);
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 85\n\
model name\t: Intel(R) Xeon(R) Silver 4108 CPU @ 1.80GHz\ncpu MHz\t\t: 802.990\n\
flags\t\t: fpu sse sse2 avx avx2 avx512f\nvmx flags\t: vnmi ept\n\n\
processor\t: 1\nvendor_id\t: GenuineIntel\ncpu family\t: 6\ncpu MHz\t\t: 1200.000\nflags\t\t: fpu sse sse2 avx\n\n";

    #[test]
    fn x86_blocks() {
        let info = parse_cpuinfo(X86, None).unwrap();
        assert_eq!(info.arch, Arch::X86_64);
        assert_eq!(info.logical_cpus, 2);
        assert_eq!(info.model.as_deref(), Some("Intel(R) Xeon(R) Silver 4108 CPU @ 1.80GHz"));
        assert_eq!(info.family.as_deref(), Some("6"));
        assert_eq!(info.mhz, Some(802.990));
        // `vmx flags` is another key; only `flags` of the first processor counts.
        assert_eq!(info.flags, ["fpu", "sse", "sse2", "avx", "avx2", "avx512f"]);
        assert!(info.has_avx);
    }

    #[test]
    fn x86_without_avx_and_with_spaces_and_crlf() {
        let text = "processor       : 0\r\nvendor_id       : GenuineIntel\r\n\
model name      : Intel(R) Xeon(R) CPU           E5345  @ 2.33GHz\r\nflags           : fpu sse4_1 avx512f\r\n";
        let info = parse_cpuinfo(text, None).unwrap();
        assert_eq!(info.arch, Arch::X86_64);
        assert_eq!(info.logical_cpus, 1);
        assert!(!info.has_avx, "avx512f alone is not the avx flag");
        assert_eq!(info.model.as_deref(), Some("Intel(R) Xeon(R) CPU           E5345  @ 2.33GHz"));
    }

    #[test]
    fn aarch64_mixed_cores_without_final_newline() {
        let mut text = String::new();
        for (i, part) in ["0xd87", "0xd87", "0xd85"].iter().enumerate() {
            text.push_str(&format!(
                "processor\t: {i}\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd sve\nCPU implementer\t: 0x41\n\
CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 1\n\n"
            ));
        }
        let text = text.trim_end();
        let info = parse_cpuinfo(text, None).unwrap();
        assert_eq!(info.arch, Arch::Aarch64);
        assert_eq!(info.logical_cpus, 3);
        assert_eq!(info.model.as_deref(), Some("ARM Cortex-A725 + ARM Cortex-X925"));
        assert_eq!(info.family.as_deref(), Some("8"));
        assert_eq!(info.flags, ["fp", "asimd", "sve"]);
        assert_eq!(info.mhz, None);
        assert!(!info.has_avx);
    }

    #[test]
    fn aarch64_names() {
        assert_eq!(arm_core_label("0x41", "0xd0c"), "ARM Neoverse-N1");
        assert_eq!(arm_core_label("0x48", "0xd01"), "HiSilicon TSV110 (Kunpeng 920)");
        assert_eq!(arm_core_label("0x42", "0x516"), "Cavium ThunderX2");
        assert_eq!(arm_core_label("0xc0", "0xac4"), "Ampere Ampere-1a");
        assert_eq!(arm_core_label("0x41", "0xfff"), "ARM part 0xfff");
        assert_eq!(arm_core_label("0x99", "0x001"), "implementer 0x99 part 0x001");
        // A vendor kernel's "model name" is generic; the ids say more.
        let text = "processor\t: 0\nmodel name\t: ARMv8 Processor rev 1 (v8l)\nFeatures\t: fp asimd\n\
CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd42\n";
        assert_eq!(parse_cpuinfo(text, None).unwrap().model.as_deref(), Some("ARM Cortex-A78AE"));
    }

    #[test]
    fn arm32_is_other() {
        let text = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\nFeatures\t: half thumb vfp neon\n\
CPU implementer\t: 0x41\nCPU architecture: 7\nCPU part\t: 0xc07\n";
        let info = parse_cpuinfo(text, None).unwrap();
        assert_eq!(info.arch, Arch::Other);
        assert_eq!(info.model.as_deref(), Some("ARMv7 Processor rev 4 (v7l)"));
        assert_eq!(info.flags, ["half", "thumb", "vfp", "neon"]);
    }

    #[test]
    fn riscv_harts() {
        let text = "processor\t: 0\nhart\t\t: 2\nisa\t\t: rv64imafdc_zicntr_zicsr_zba\nmmu\t\t: sv39\n\
uarch\t\t: sifive,u74-mc\nmvendorid\t: 0x489\nhart isa\t: rv64imafdc_zicntr_zicsr_zba_zbb\n\n\
processor\t: 1\nhart\t\t: 1\nisa\t\t: rv64imafdc_zicntr_zicsr_zba\nisa-ext\t\t: \n";
        let info = parse_cpuinfo(text, None).unwrap();
        assert_eq!(info.arch, Arch::Riscv64);
        assert_eq!(info.logical_cpus, 2, "`hart isa` is not a hart");
        assert_eq!(info.flags, ["i", "m", "a", "f", "d", "c", "zicntr", "zicsr", "zba"]);
        assert_eq!(info.model.as_deref(), Some("sifive,u74-mc"));
        assert_eq!(info.family.as_deref(), Some("0x489"));
        assert!(!info.has_avx);
    }

    #[test]
    fn riscv_vendor_fields() {
        let text = "processor\t: 0\nhart\t\t: 0\nisa\t\t: rv64imafdcvsu\nmmu\t\t: sv39\ncpu-freq\t: 1.848Ghz\n";
        let info = parse_cpuinfo(text, None).unwrap();
        assert_eq!(info.model.as_deref(), Some("rv64imafdcvsu"));
        assert!((info.mhz.unwrap() - 1848.0).abs() < 1e-6);
        let text = "processor\t: 0\nhart\t\t: 0\nmodel name\t: Spacemit(R) X60\nisa\t\t: rv64imafdcv_sstc\n";
        assert_eq!(parse_cpuinfo(text, None).unwrap().model.as_deref(), Some("Spacemit(R) X60"));
    }

    #[test]
    fn riscv_isa_strings() {
        assert_eq!(riscv_isa_extensions("rv64gc"), ["i", "m", "a", "f", "d", "zicsr", "zifencei", "c"]);
        assert_eq!(riscv_isa_extensions("rv64i2p1_m2p0_zicsr2p0_zba"), ["i", "m", "zicsr", "zba"]);
        assert_eq!(riscv_isa_extensions("RV64IMAC"), ["i", "m", "a", "c"]);
    }

    #[test]
    fn clocks() {
        assert_eq!(parse_mhz("2894.214"), Some(2894.214));
        assert_eq!(parse_mhz("2300.000000MHz"), Some(2300.0));
        assert_eq!(parse_mhz("2.5 GHz"), Some(2500.0));
        assert_eq!(parse_mhz(""), None);
        assert_eq!(parse_mhz("0"), None);
    }

    #[test]
    fn errors() {
        assert!(matches!(parse_cpuinfo("", None), Err(NativeError::Parse { .. })));
        assert!(matches!(parse_cpuinfo("garbage\n\n", None), Err(NativeError::Parse { .. })));
        assert!(matches!(Arch::from_name("x86-64"), Err(NativeError::InvalidArgument(_))));
        assert_eq!(Arch::from_name("arm64").unwrap(), Arch::Aarch64);
    }

    #[test]
    fn forced_arch_wins() {
        let info = parse_cpuinfo(X86, Some(Arch::Aarch64)).unwrap();
        assert_eq!(info.arch, Arch::Aarch64);
        assert!(info.flags.is_empty());
    }

    #[test]
    fn cpu_info_falls_back_to_cpufreq() {
        let root = std::env::temp_dir().join(format!("gp-cpu-{}", std::process::id()));
        let proc = root.join("proc");
        let freq = root.join("sys/devices/system/cpu/cpu0/cpufreq");
        std::fs::create_dir_all(&proc).unwrap();
        std::fs::create_dir_all(&freq).unwrap();
        std::fs::write(proc.join("cpuinfo"), "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\n")
            .unwrap();
        std::fs::write(freq.join("scaling_cur_freq"), "1500000\n").unwrap();
        let info = cpu_info(&proc, &root.join("sys"), Some(Arch::Aarch64)).unwrap();
        assert_eq!(info.mhz, Some(1500.0));
        std::fs::write(freq.join("cpuinfo_max_freq"), "3000000\n").unwrap();
        assert_eq!(cpu_info(&proc, &root.join("sys"), None).unwrap().mhz, Some(3000.0));
        let missing = cpu_info(&root.join("nowhere"), &root, None);
        assert!(matches!(missing, Err(NativeError::Io { .. })));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn this_machine() {
        let info = cpu_info(Path::new("/proc"), Path::new("/sys"), None).unwrap();
        assert_eq!(info.arch, Arch::native());
        assert!(info.logical_cpus >= 1);
    }
}
