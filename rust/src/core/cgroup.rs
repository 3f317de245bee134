//! cgroup v2: listing and controlling a job's cgroup (procs, freeze, kill) and sampling its counters.

use std::io;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::error::{NativeError, Result};
use super::util::{now_unix, read_string, KeptFile};

/// Pids in `cgroup.procs` of `dir` and of every cgroup below it (a job may make sub-cgroups).
pub fn read_procs_recursive(dir: &Path) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut first = true;
    while let Some(d) = stack.pop() {
        let procs = d.join("cgroup.procs");
        match read_string(&procs) {
            Ok(text) => out.extend(text.split_ascii_whitespace().filter_map(|t| t.parse::<i32>().ok())),
            // A sub-cgroup removed between listing and reading is normal; the top one missing is not.
            Err(e) if !first && e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(NativeError::io(&procs, e)),
        }
        first = false;
        if let Ok(entries) = std::fs::read_dir(&d) {
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(entry.path());
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Freeze (`true`) or thaw (`false`) the cgroup. Returns false when the kernel has no cgroup.freeze here.
pub fn set_frozen(dir: &Path, frozen: bool) -> Result<bool> {
    let f = dir.join("cgroup.freeze");
    if !f.exists() {
        return Ok(false);
    }
    std::fs::write(&f, if frozen { "1" } else { "0" }).map_err(|e| NativeError::io(&f, e))?;
    Ok(true)
}

/// Wait until cgroup.events says frozen (or the timeout passes). Returns whether it froze.
pub fn wait_frozen(dir: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if events_flag(dir, "frozen") == Some(true) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Kill every process in the cgroup and below through `cgroup.kill` (Linux >= 5.14).
/// Returns false when the file is missing, so the caller falls back to SIGKILL per member.
pub fn kill_all(dir: &Path) -> Result<bool> {
    let f = dir.join("cgroup.kill");
    if !f.exists() {
        return Ok(false);
    }
    std::fs::write(&f, "1").map_err(|e| NativeError::io(&f, e))?;
    Ok(true)
}

/// A flag of cgroup.events ("populated", "frozen"); None when the file or the key is absent.
pub fn events_flag(dir: &Path, key: &str) -> Option<bool> {
    let text = read_string(&dir.join("cgroup.events")).ok()?;
    flat_keyed(&text, key).map(|v| v != 0)
}

/// The value of `key` in a flat-keyed cgroup file ("key value" per line).
pub fn flat_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let mut it = line.split_ascii_whitespace();
        if it.next()? == key {
            it.next()?.parse().ok()
        } else {
            None
        }
    })
}

/// True when `dir` looks like a cgroup v2 directory (it has cgroup.procs and cgroup.controllers or cgroup.events).
pub fn is_cgroup_v2(dir: &Path) -> bool {
    dir.join("cgroup.procs").exists() && (dir.join("cgroup.events").exists() || dir.join("cgroup.controllers").exists())
}

/// One sample of a cgroup v2 directory, in the kernel's units. A counter whose file (or key) the kernel or the
/// delegation does not provide is None.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CgroupSample {
    pub timestamp: f64,
    pub cpu: CpuStat,
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub memory_swap_current: Option<u64>,
    pub memory: MemoryStat,
    pub events: MemoryEvents,
    pub pids_current: Option<u64>,
    pub io: IoStat,
    pub populated: Option<bool>,
    pub frozen: Option<bool>,
}

/// The keys of `cpu.stat` we use. usage/user/system are always there; the bandwidth ones only with the cpu controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuStat {
    pub usage_usec: Option<u64>,
    pub user_usec: Option<u64>,
    pub system_usec: Option<u64>,
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_usec: Option<u64>,
}

/// The keys of `memory.stat` we use, in bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStat {
    pub anon: Option<u64>,
    pub file: Option<u64>,
    pub shmem: Option<u64>,
}

/// The keys of `memory.events` we use (hierarchical counts, this cgroup and below).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryEvents {
    pub oom: Option<u64>,
    pub oom_kill: Option<u64>,
    pub max: Option<u64>,
    pub high: Option<u64>,
}

/// `io.stat` bytes summed over every device line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStat {
    pub rbytes: Option<u64>,
    pub wbytes: Option<u64>,
}

pub fn parse_cpu_stat(text: &str) -> CpuStat {
    CpuStat {
        usage_usec: flat_keyed(text, "usage_usec"),
        user_usec: flat_keyed(text, "user_usec"),
        system_usec: flat_keyed(text, "system_usec"),
        nr_periods: flat_keyed(text, "nr_periods"),
        nr_throttled: flat_keyed(text, "nr_throttled"),
        throttled_usec: flat_keyed(text, "throttled_usec"),
    }
}

pub fn parse_memory_stat(text: &str) -> MemoryStat {
    MemoryStat { anon: flat_keyed(text, "anon"), file: flat_keyed(text, "file"), shmem: flat_keyed(text, "shmem") }
}

pub fn parse_memory_events(text: &str) -> MemoryEvents {
    MemoryEvents {
        oom: flat_keyed(text, "oom"),
        oom_kill: flat_keyed(text, "oom_kill"),
        max: flat_keyed(text, "max"),
        high: flat_keyed(text, "high"),
    }
}

/// Sum rbytes and wbytes over the lines of `io.stat` ("MAJ:MIN rbytes=N wbytes=N rios=N ..."). An empty file is a
/// cgroup that has done no I/O yet: zero, not unknown. A device stacked on another (dm on sd) appears on both lines
/// and is counted at each layer; that is the kernel's accounting, not ours.
pub fn parse_io_stat(text: &str) -> std::result::Result<IoStat, String> {
    let (mut rbytes, mut wbytes) = (0u64, 0u64);
    for line in text.lines() {
        let mut fields = line.split_ascii_whitespace();
        if fields.next().is_none() {
            continue;
        }
        // Other controllers' policies add their own fields (cost.*, depth=, avg_lat=); only ours must parse.
        for (key, value) in fields.filter_map(|f| f.split_once('=')) {
            let total = match key {
                "rbytes" => &mut rbytes,
                "wbytes" => &mut wbytes,
                _ => continue,
            };
            let n: u64 = value.parse().map_err(|_| format!("{key}={value:?} is not a number in line {line:?}"))?;
            *total = total.saturating_add(n);
        }
    }
    Ok(IoStat { rbytes: Some(rbytes), wbytes: Some(wbytes) })
}

/// A single-value file such as `memory.current` or `pids.current`.
pub fn parse_single_value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `populated` and `frozen` of `cgroup.events`.
pub fn parse_cgroup_events(text: &str) -> (Option<bool>, Option<bool>) {
    (flat_keyed(text, "populated").map(|v| v != 0), flat_keyed(text, "frozen").map(|v| v != 0))
}

/// Samples one cgroup v2 directory. Which files exist is decided once, at construction; those are kept open and
/// re-read with pread, so a sample costs the same for one process or ten thousand (cgroup.procs is never read).
#[derive(Debug)]
pub struct CgroupSampler {
    dir: PathBuf,
    cpu_stat: Option<KeptFile>,
    memory_current: Option<KeptFile>,
    memory_peak: Option<KeptFile>,
    memory_swap_current: Option<KeptFile>,
    memory_stat: Option<KeptFile>,
    memory_events: Option<KeptFile>,
    pids_current: Option<KeptFile>,
    io_stat: Option<KeptFile>,
    cgroup_events: Option<KeptFile>,
}

impl CgroupSampler {
    pub fn open(dir: &Path) -> Result<Self> {
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(cgroup_error(dir, "not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(cgroup_error(dir, "no such cgroup directory"));
            }
            Err(e) => return Err(NativeError::io(dir, e)),
        }
        if !is_cgroup_v2(dir) {
            return Err(cgroup_error(
                dir,
                "not a cgroup v2 directory (it needs cgroup.procs and cgroup.events or cgroup.controllers)",
            ));
        }
        let open = |name: &str| open_if_present(&dir.join(name));
        Ok(CgroupSampler {
            dir: dir.to_path_buf(),
            cpu_stat: open("cpu.stat")?,
            memory_current: open("memory.current")?,
            memory_peak: open("memory.peak")?,
            memory_swap_current: open("memory.swap.current")?,
            memory_stat: open("memory.stat")?,
            memory_events: open("memory.events")?,
            pids_current: open("pids.current")?,
            io_stat: open("io.stat")?,
            cgroup_events: open("cgroup.events")?,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Names of the counter files this sampler found and keeps open.
    pub fn files(&self) -> Vec<&str> {
        [
            &self.cpu_stat,
            &self.memory_current,
            &self.memory_peak,
            &self.memory_swap_current,
            &self.memory_stat,
            &self.memory_events,
            &self.pids_current,
            &self.io_stat,
            &self.cgroup_events,
        ]
        .into_iter()
        .flatten()
        .filter_map(|k| k.path().file_name().and_then(|n| n.to_str()))
        .collect()
    }

    pub fn sample(&self) -> Result<CgroupSample> {
        let mut buf = Vec::with_capacity(4096);
        let mut s = CgroupSample { timestamp: now_unix(), ..CgroupSample::default() };
        if let Some(text) = self.read(&self.cpu_stat, &mut buf)? {
            s.cpu = parse_cpu_stat(text);
        }
        s.memory_current = self.read_single(&self.memory_current, &mut buf)?;
        s.memory_peak = self.read_single(&self.memory_peak, &mut buf)?;
        s.memory_swap_current = self.read_single(&self.memory_swap_current, &mut buf)?;
        if let Some(text) = self.read(&self.memory_stat, &mut buf)? {
            s.memory = parse_memory_stat(text);
        }
        if let Some(text) = self.read(&self.memory_events, &mut buf)? {
            s.events = parse_memory_events(text);
        }
        s.pids_current = self.read_single(&self.pids_current, &mut buf)?;
        if let Some(kept) = &self.io_stat {
            let text = self.read_kept(kept, &mut buf)?;
            s.io = parse_io_stat(text).map_err(|d| NativeError::parse(kept.path().display().to_string(), d))?;
        }
        if let Some(text) = self.read(&self.cgroup_events, &mut buf)? {
            (s.populated, s.frozen) = parse_cgroup_events(text);
        }
        Ok(s)
    }

    fn read<'b>(&self, file: &Option<KeptFile>, buf: &'b mut Vec<u8>) -> Result<Option<&'b str>> {
        file.as_ref().map(|kept| self.read_kept(kept, buf)).transpose()
    }

    fn read_kept<'b>(&self, kept: &KeptFile, buf: &'b mut Vec<u8>) -> Result<&'b str> {
        kept.read_into(buf).map_err(|e| match e.raw_os_error() {
            // kernfs answers ENODEV on a descriptor whose cgroup was removed after we opened it.
            Some(libc::ENODEV) | Some(libc::ENOENT) => cgroup_error(&self.dir, "the cgroup was removed"),
            _ => NativeError::io(kept.path(), e),
        })?;
        std::str::from_utf8(buf).map_err(|_| NativeError::parse(kept.path().display().to_string(), "not UTF-8 text"))
    }

    fn read_single(&self, file: &Option<KeptFile>, buf: &mut Vec<u8>) -> Result<Option<u64>> {
        let Some(kept) = file else { return Ok(None) };
        let text = self.read_kept(kept, buf)?;
        parse_single_value(text).map(Some).ok_or_else(|| {
            NativeError::parse(
                kept.path().display().to_string(),
                format!("expected one number, found {:?}", text.trim()),
            )
        })
    }
}

fn open_if_present(path: &Path) -> Result<Option<KeptFile>> {
    match KeptFile::open(path.to_path_buf()) {
        Ok(k) => Ok(Some(k)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NativeError::io(path, e)),
    }
}

fn cgroup_error(dir: &Path, detail: &str) -> NativeError {
    NativeError::Cgroup { path: dir.to_path_buf(), detail: detail.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cgroup").join(name)
    }

    #[test]
    fn flat_keyed_matches_whole_keys_only() {
        let t = "anon_thp 7\nfile_mapped 9\nanon 1\nfile 2\n";
        assert_eq!(flat_keyed(t, "anon"), Some(1));
        assert_eq!(flat_keyed(t, "file"), Some(2));
    }

    #[test]
    fn cpu_stat_without_cpu_controller_has_no_bandwidth_keys() {
        let c = parse_cpu_stat("usage_usec 1534027\nuser_usec 1190562\nsystem_usec 343465\nnice_usec 0\n");
        assert_eq!(c.usage_usec, Some(1534027));
        assert_eq!(c.user_usec, Some(1190562));
        assert_eq!(c.system_usec, Some(343465));
        assert_eq!((c.nr_periods, c.nr_throttled, c.throttled_usec), (None, None, None));
    }

    #[test]
    fn memory_events_reads_the_four_counters() {
        let e = parse_memory_events("low 0\nhigh 5\nmax 1287\noom 2\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(e, MemoryEvents { oom: Some(2), oom_kill: Some(1), max: Some(1287), high: Some(5) });
    }

    #[test]
    fn io_stat_sums_devices_and_ignores_other_keys() {
        let t = "259:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n\
                 8:16 rbytes=5 wbytes=7 rios=1 wios=1 dbytes=3 dios=1 cost.vrate=100.00\n";
        assert_eq!(parse_io_stat(t).unwrap(), IoStat { rbytes: Some(15), wbytes: Some(27) });
    }

    #[test]
    fn io_stat_empty_means_no_io_yet() {
        assert_eq!(parse_io_stat("").unwrap(), IoStat { rbytes: Some(0), wbytes: Some(0) });
    }

    #[test]
    fn io_stat_rejects_garbage_in_its_own_fields_only() {
        assert!(parse_io_stat("8:0 rbytes=12x wbytes=1\n").is_err());
        assert_eq!(
            parse_io_stat("8:0 rbytes=4 wbytes=1 future\n").unwrap(),
            IoStat { rbytes: Some(4), wbytes: Some(1) }
        );
    }

    #[test]
    fn single_value_and_events() {
        assert_eq!(parse_single_value("9876541440\n"), Some(9876541440));
        assert_eq!(parse_single_value("max\n"), None);
        assert_eq!(parse_cgroup_events("populated 1\nfrozen 0\n"), (Some(true), Some(false)));
        assert_eq!(parse_cgroup_events(""), (None, None));
    }

    #[test]
    fn sampler_reads_every_counter_of_el9_job() {
        let s = CgroupSampler::open(&fixture("el9-job")).unwrap().sample().unwrap();
        assert_eq!(
            s.cpu,
            CpuStat {
                usage_usec: Some(41532987654),
                user_usec: Some(40123456789),
                system_usec: Some(1409530865),
                nr_periods: Some(72113),
                nr_throttled: Some(1206),
                throttled_usec: Some(98766543),
            }
        );
        assert_eq!(s.memory_current, Some(9876541440));
        assert_eq!(s.memory_peak, Some(12348030976));
        assert_eq!(s.memory_swap_current, Some(268435456));
        assert_eq!(s.memory, MemoryStat { anon: Some(9261023232), file: Some(547356672), shmem: Some(4194304) });
        assert_eq!(s.events, MemoryEvents { oom: Some(0), oom_kill: Some(0), max: Some(3), high: Some(17) });
        assert_eq!(s.pids_current, Some(37));
        assert_eq!(s.io, IoStat { rbytes: Some(2319286272), wbytes: Some(5442109440) });
        assert_eq!((s.populated, s.frozen), (Some(true), Some(false)));
        assert!(s.timestamp > 0.0);
    }

    #[test]
    fn sampler_on_minimal_delegation_gives_none_for_missing_files() {
        let sampler = CgroupSampler::open(&fixture("minimal-delegation")).unwrap();
        assert_eq!(sampler.files(), vec!["cpu.stat", "cgroup.events"]);
        let s = sampler.sample().unwrap();
        assert_eq!(s.cpu.usage_usec, Some(1534027));
        assert_eq!(s.cpu.nr_periods, None);
        assert_eq!((s.memory_current, s.memory_peak, s.memory_swap_current, s.pids_current), (None, None, None, None));
        assert_eq!(s.memory, MemoryStat::default());
        assert_eq!(s.events, MemoryEvents::default());
        assert_eq!(s.io, IoStat::default());
        assert_eq!((s.populated, s.frozen), (Some(true), Some(false)));
    }

    #[test]
    fn sampler_rejects_missing_and_non_cgroup_directories() {
        let missing = fixture("no-such-cgroup");
        let err = CgroupSampler::open(&missing).unwrap_err();
        assert!(matches!(&err, NativeError::Cgroup { path, .. } if path == &missing), "{err}");
        assert!(err.to_string().contains("no-such-cgroup"));
        let err = CgroupSampler::open(&fixture("")).unwrap_err();
        assert!(matches!(err, NativeError::Cgroup { .. }), "{err}");
        let err = CgroupSampler::open(&fixture("el9-job/cpu.stat")).unwrap_err();
        assert!(matches!(err, NativeError::Cgroup { .. }), "{err}");
    }

    #[test]
    fn sampler_sees_new_values_through_kept_descriptors() {
        let dir = std::env::temp_dir().join(format!("gp-cgroup-sampler-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in
            [("cgroup.procs", ""), ("cgroup.events", "populated 0\nfrozen 0\n"), ("pids.current", "1\n")]
        {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let sampler = CgroupSampler::open(&dir).unwrap();
        assert_eq!(sampler.sample().unwrap().pids_current, Some(1));
        // Rewritten in place (same inode), as the kernel regenerates a cgroup file's content.
        std::fs::write(dir.join("pids.current"), "12\n").unwrap();
        assert_eq!(sampler.sample().unwrap().pids_current, Some(12));
        std::fs::write(dir.join("pids.current"), "many\n").unwrap();
        assert!(matches!(sampler.sample().unwrap_err(), NativeError::Parse { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn flat_keyed_finds_values() {
        let t = "populated 1\nfrozen 0\n";
        assert_eq!(flat_keyed(t, "populated"), Some(1));
        assert_eq!(flat_keyed(t, "frozen"), Some(0));
        assert_eq!(flat_keyed(t, "missing"), None);
    }
}
