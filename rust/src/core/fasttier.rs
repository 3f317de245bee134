//! FastTier: the JobAgent's fast monitoring tier (every second) on a native thread.
//!
//! A Python wake costs the agent ~0.5 ms of CPU whatever it does (measured, issue 16), so waking Python every second
//! to sample was most of what a job's monitoring cost. Here a thread samples the job at the fast cadence and keeps
//! what the Python monitor needs (each tick's CPU, the peaks, the last sample, the memory and OOM counters); Python
//! takes it all at its own, slower, cadence. Where a rule may break between two takes (memory above the kill
//! threshold, a new OOM kill, a name like a core file in the work directory), the thread makes the eventfd readable
//! at once, so the agent's loop wakes within one tick, as it did when it sampled itself. The rules themselves stay in
//! Python (pilot/rules.py): the thread only says when to look.

use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use super::cgroup::{flat_keyed, is_cgroup_v2, parse_cpu_stat, parse_memory_events, parse_single_value};
use super::error::{NativeError, Result};
use super::sampler::{ProcSample, TreeSampler};
use super::util::KeptFile;

/// A directory modified less than this long before it was listed is listed again at the next tick: a file made in the
/// same timestamp granule as the listing, just after it, leaves the mtime unchanged.
const RECENT_MTIME: Duration = Duration::from_secs(2);

/// What to watch and how often.
#[derive(Debug, Clone)]
pub struct FastTierConfig {
    pub proc_root: PathBuf,
    pub root_pid: i32,
    /// The job's cgroup v2 directory: the sampler's source of members, and cpu.stat/memory.current/memory.events.
    pub cgroup: Option<PathBuf>,
    /// The job's cgroup v1 memory directory (hybrid hosts): memory.usage_in_bytes and memory.oom_control.
    pub v1_memory: Option<PathBuf>,
    /// The work directory, watched for core files (None: not watched).
    pub workdir: Option<PathBuf>,
    /// The memory kill threshold: above it the agent is woken (None: never).
    pub memory_limit: Option<u64>,
    pub interval: Duration,
    /// Read the processes' io at every this many ticks (TreeSampler::set_io_every): no rule needs it, only the
    /// records made at the monitor's medium cadence; DEFAULT_IO_EVERY ticks of a second is that cadence.
    pub io_every: u64,
}

/// The monitor's medium tier (15 s), which makes the records that carry the I/O figures, in ticks of a second.
pub const DEFAULT_IO_EVERY: u64 = 15;

/// Everything sampled since the last take.
#[derive(Debug, Clone, Default)]
pub struct Taken {
    /// (CLOCK_MONOTONIC seconds, the job's CPU seconds) per tick: the larger of the tree's (with reaped children)
    /// and the cgroup's cpu.stat usage, as the Python monitor counts it.
    pub points: Vec<(f64, f64)>,
    pub rss_max: u64,
    pub vmem_max: u64,
    /// The largest cgroup charge seen (memory.current, or v1's memory.usage_in_bytes).
    pub memory_max: Option<u64>,
    /// The last tree sample and cgroup readings (kept across takes: None only before the first good tick).
    pub last: Option<ProcSample>,
    pub cgroup_memory: Option<u64>,
    pub v1_memory: Option<u64>,
    /// OOM kills so far, cumulative: memory.events oom_kill plus v1's memory.oom_control oom_kill.
    pub oom_kills: u64,
    /// The work directory held a name like a core file at the last look (`core*`, not `*.inp`).
    pub core_candidate: bool,
    pub ticks: u64,
    /// Ticks where a read failed, and the last failure.
    pub errors: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    taken: Taken,
    /// The OOM count at the last take: a higher one wakes the agent.
    oom_seen: u64,
    alarmed: bool,
}

struct Shared {
    /// The samplers; the thread holds it for a tick, sample_full for the slow tier.
    watcher: Mutex<Watcher>,
    state: Mutex<State>,
    stop: Mutex<bool>,
    wake: Condvar,
    event: OwnedFd,
}

/// The running thread; dropping it stops the thread.
pub struct FastTier {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Watcher {
    cfg: FastTierConfig,
    tree: TreeSampler,
    cgroup: Option<CgroupFast>,
    /// The v1 memory cgroup's memory.usage_in_bytes and memory.oom_control, kept open as the cgroup v2 files are.
    v1_usage: Option<KeptFile>,
    v1_oom: Option<KeptFile>,
    buf: Vec<u8>,
    dir_mtime: Option<SystemTime>,
    core_candidate: bool,
}

/// CLOCK_MONOTONIC in seconds: the clock of Python's time.monotonic() on Linux.
pub fn monotonic_s() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `core`, `core.1234`, `core-x`: a core dump's name; `core*.inp` are inputs some payloads ship (rules.is_core_file).
pub fn is_core_name(name: &[u8]) -> bool {
    name.starts_with(b"core") && !name.ends_with(b".inp")
}

/// The three cgroup v2 files the fast tier needs, kept open: CgroupSampler also reads memory.stat and io.stat,
/// which the kernel sums over every CPU on each read, and nothing at 1 Hz needs them.
struct CgroupFast {
    cpu_stat: Option<KeptFile>,
    memory_current: Option<KeptFile>,
    memory_events: Option<KeptFile>,
}

#[derive(Default)]
struct CgroupFastSample {
    usage_usec: Option<u64>,
    memory_current: Option<u64>,
    oom_kill: Option<u64>,
}

impl CgroupFast {
    fn open(dir: &Path) -> Result<Self> {
        if !is_cgroup_v2(dir) {
            return Err(NativeError::Cgroup { path: dir.to_path_buf(), detail: "not a cgroup v2 directory".into() });
        }
        Ok(CgroupFast {
            cpu_stat: open_kept(dir, "cpu.stat")?,
            memory_current: open_kept(dir, "memory.current")?,
            memory_events: open_kept(dir, "memory.events")?,
        })
    }

    fn sample(&self, buf: &mut Vec<u8>) -> Result<CgroupFastSample> {
        let mut s = CgroupFastSample::default();
        if let Some(k) = &self.cpu_stat {
            read_kept(k, buf)?;
            s.usage_usec = parse_cpu_stat(&String::from_utf8_lossy(buf)).usage_usec;
        }
        if let Some(k) = &self.memory_current {
            read_kept(k, buf)?;
            s.memory_current = parse_single_value(&String::from_utf8_lossy(buf));
        }
        if let Some(k) = &self.memory_events {
            read_kept(k, buf)?;
            s.oom_kill = parse_memory_events(&String::from_utf8_lossy(buf)).oom_kill;
        }
        Ok(s)
    }
}

/// A cgroup file kept open (None: the file is not there).
fn open_kept(dir: &Path, name: &str) -> Result<Option<KeptFile>> {
    let path = dir.join(name);
    match KeptFile::open(path.clone()) {
        Ok(k) => Ok(Some(k)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NativeError::io(&path, e)),
    }
}

fn read_kept(kept: &KeptFile, buf: &mut Vec<u8>) -> Result<()> {
    kept.read_into(buf).map_err(|e| NativeError::io(kept.path(), e))
}

impl Watcher {
    fn oom_total(&mut self, cg: Option<&CgroupFastSample>) -> Result<u64> {
        let mut n = cg.and_then(|c| c.oom_kill).unwrap_or(0);
        if let Some(kept) = &self.v1_oom {
            read_kept(kept, &mut self.buf)?;
            n += flat_keyed(&String::from_utf8_lossy(&self.buf), "oom_kill").unwrap_or(0);
        }
        Ok(n)
    }

    fn v1_usage(&mut self) -> Result<Option<u64>> {
        let Some(kept) = &self.v1_usage else { return Ok(None) };
        read_kept(kept, &mut self.buf)?;
        Ok(parse_single_value(&String::from_utf8_lossy(&self.buf)))
    }

    /// Whether the work directory holds a core-like name, listing it only when its mtime says it may have changed.
    fn look_for_core(&mut self) -> Result<bool> {
        let Some(dir) = &self.cfg.workdir else { return Ok(false) };
        let mtime = match fs::metadata(dir) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(NativeError::io(dir, e)),
        };
        let recent = mtime.is_some_and(|t| t.elapsed().map(|age| age < RECENT_MTIME).unwrap_or(true));
        if mtime.is_none() || mtime != self.dir_mtime || recent {
            let mut found = false;
            for entry in fs::read_dir(dir).map_err(|e| NativeError::io(dir, e))? {
                let Ok(entry) = entry else { continue };
                if is_core_name(entry.file_name().as_bytes()) {
                    found = true;
                    break;
                }
            }
            self.core_candidate = found;
            self.dir_mtime = mtime;
        }
        Ok(self.core_candidate)
    }

    fn tick(&mut self, shared: &Shared) {
        let t = monotonic_s();
        let mut errors: Vec<String> = Vec::new();
        let sample = self.tree.sample().map_err(|e| errors.push(e.to_string())).ok();
        let cg = match &self.cgroup {
            Some(c) => c.sample(&mut self.buf).map_err(|e| errors.push(e.to_string())).ok(),
            None => None,
        };
        let v1 = self.v1_usage().map_err(|e| errors.push(e.to_string())).ok().flatten();
        let oom = self.oom_total(cg.as_ref()).map_err(|e| errors.push(e.to_string())).ok();
        let core = self.look_for_core().map_err(|e| errors.push(e.to_string())).unwrap_or(false);

        let mut guard = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let st = &mut *guard;
        let tk = &mut st.taken;
        tk.ticks += 1;
        if !errors.is_empty() {
            tk.errors += 1;
            tk.last_error = Some(errors.join("; "));
        }
        let mut cpu = None;
        if let Some(s) = sample {
            tk.rss_max = tk.rss_max.max(s.rss_bytes);
            tk.vmem_max = tk.vmem_max.max(s.vmem_bytes);
            cpu = Some(s.cpu_time_s + s.children_cpu_s);
            tk.last = Some(s);
        }
        if let Some(c) = &cg {
            if let Some(us) = c.usage_usec {
                // Both are lower bounds of the job's CPU (monitor.py says why): the larger is the better.
                let v = us as f64 / 1e6;
                cpu = Some(cpu.map_or(v, |x: f64| x.max(v)));
            }
            tk.cgroup_memory = c.memory_current;
        }
        if self.cfg.v1_memory.is_some() {
            tk.v1_memory = v1;
        }
        for m in [tk.cgroup_memory.filter(|_| cg.is_some()), v1].into_iter().flatten() {
            tk.memory_max = Some(tk.memory_max.map_or(m, |x| x.max(m)));
        }
        if let Some(c) = cpu {
            tk.points.push((t, c));
        }
        if let Some(n) = oom {
            tk.oom_kills = n;
        }
        tk.core_candidate = core;
        // The memory the rule judges: the cgroup's memory.current where there is one, else v1's charge.
        let memory = tk.cgroup_memory.or(tk.v1_memory);
        let over = matches!((memory, self.cfg.memory_limit), (Some(m), Some(l)) if m > l);
        if (over || tk.oom_kills > st.oom_seen || core) && !st.alarmed {
            st.alarmed = true;
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a valid u64 to our own eventfd; a full counter (never here) only fails.
            unsafe { libc::write(shared.event.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }
}

impl FastTier {
    /// Start the thread; its first tick runs at once. The OOM count now is the baseline the alarm compares against.
    pub fn start(cfg: FastTierConfig) -> Result<Self> {
        if cfg.interval.is_zero() {
            return Err(NativeError::InvalidArgument("interval must be > 0".into()));
        }
        let mut tree = TreeSampler::new(cfg.proc_root.clone(), cfg.root_pid, cfg.cgroup.clone())?;
        tree.set_io_every(cfg.io_every);
        let cgroup = cfg.cgroup.as_deref().map(CgroupFast::open).transpose()?;
        // SAFETY: eventfd has no memory preconditions; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(NativeError::io(Path::new("eventfd"), std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let event = unsafe { OwnedFd::from_raw_fd(fd) };
        let (v1_usage, v1_oom) = match &cfg.v1_memory {
            Some(dir) => (open_kept(dir, "memory.usage_in_bytes")?, open_kept(dir, "memory.oom_control")?),
            None => (None, None),
        };
        let mut watcher = Watcher {
            cfg,
            tree,
            cgroup,
            v1_usage,
            v1_oom,
            buf: Vec::with_capacity(256),
            dir_mtime: None,
            core_candidate: false,
        };
        let first_cg = match &watcher.cgroup {
            Some(c) => c.sample(&mut watcher.buf).ok(),
            None => None,
        };
        let oom_seen = watcher.oom_total(first_cg.as_ref()).unwrap_or(0);
        let interval = watcher.cfg.interval;
        let shared = Arc::new(Shared {
            watcher: Mutex::new(watcher),
            state: Mutex::new(State {
                oom_seen,
                taken: Taken { oom_kills: oom_seen, ..Taken::default() },
                alarmed: false,
            }),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            event,
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("gridpilot-fast".into())
            .spawn(move || {
                let mut next = Instant::now();
                let mut stopped = s.stop.lock().unwrap_or_else(|p| p.into_inner());
                while !*stopped {
                    let now = Instant::now();
                    if now >= next {
                        drop(stopped);
                        s.watcher.lock().unwrap_or_else(|p| p.into_inner()).tick(&s);
                        stopped = s.stop.lock().unwrap_or_else(|p| p.into_inner());
                        next += interval;
                        if next <= Instant::now() {
                            next = Instant::now() + interval; // late (a loaded node): no burst of ticks to catch up
                        }
                        continue;
                    }
                    stopped = s.wake.wait_timeout(stopped, next - now).unwrap_or_else(|p| p.into_inner()).0;
                }
            })
            .map_err(|e| NativeError::io(Path::new("thread"), e))?;
        Ok(FastTier { shared, thread: Some(thread) })
    }

    /// Readable when a rule may have broken since the last take.
    pub fn event_fd(&self) -> RawFd {
        self.shared.event.as_raw_fd()
    }

    /// Everything since the last take; clears the points, the peaks and the alarm. The last sample and counters
    /// stay, so a take between two ticks still sees them.
    pub fn take(&self) -> Taken {
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut buf = 0u64;
        // SAFETY: reads 8 bytes into a valid u64 from our own non-blocking eventfd (EAGAIN when not signalled).
        unsafe { libc::read(self.shared.event.as_raw_fd(), (&mut buf as *mut u64).cast(), 8) };
        st.alarmed = false;
        st.oom_seen = st.taken.oom_kills;
        let keep = Taken {
            last: st.taken.last.clone(),
            cgroup_memory: st.taken.cgroup_memory,
            v1_memory: st.taken.v1_memory,
            oom_kills: st.taken.oom_kills,
            core_candidate: st.taken.core_candidate,
            last_error: st.taken.last_error.clone(),
            ..Taken::default()
        };
        std::mem::replace(&mut st.taken, keep)
    }

    /// The slow tier (TreeSampler::sample_full) on the same sampler and descriptors as the ticks.
    pub fn sample_full(&self) -> Result<ProcSample> {
        self.shared.watcher.lock().unwrap_or_else(|p| p.into_inner()).tree.sample_full()
    }

    /// Stop the thread and wait for it (at most one tick's reads).
    pub fn stop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    pub fn running(&self) -> bool {
        self.thread.is_some()
    }
}

impl Drop for FastTier {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};

    fn sleeper() -> Child {
        Command::new("sleep").arg("30").spawn().expect("sleep")
    }

    fn cfg(pid: i32, workdir: Option<PathBuf>) -> FastTierConfig {
        FastTierConfig {
            proc_root: "/proc".into(),
            root_pid: pid,
            cgroup: None,
            v1_memory: None,
            workdir,
            memory_limit: None,
            interval: Duration::from_millis(20),
            io_every: 1,
        }
    }

    fn readable(fd: RawFd, timeout_ms: i32) -> bool {
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, timeout_ms) == 1 }
    }

    #[test]
    fn core_names_as_the_rule_sees_them() {
        assert!(is_core_name(b"core"));
        assert!(is_core_name(b"core.1234"));
        assert!(!is_core_name(b"core.inp"));
        assert!(!is_core_name(b"Core"));
        assert!(!is_core_name(b"xcore"));
    }

    #[test]
    fn ticks_collect_points_and_peaks() {
        let mut child = sleeper();
        let ft = FastTier::start(cfg(child.id() as i32, None)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Taken::default();
        while got.points.len() < 3 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(30));
            let t = ft.take();
            got.points.extend(t.points);
            got.rss_max = got.rss_max.max(t.rss_max);
            got.last = t.last;
        }
        assert!(got.points.len() >= 3);
        assert!(got.points.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(got.rss_max > 0);
        assert_eq!(got.last.unwrap().nprocs, 1);
        assert!(!readable(ft.event_fd(), 0));
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_core_file_makes_the_event_readable() {
        let dir = std::env::temp_dir().join(format!("gridpilot-fasttier-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("core.inp"), b"input").unwrap();
        let mut child = sleeper();
        let ft = FastTier::start(cfg(child.id() as i32, Some(dir.clone()))).unwrap();
        assert!(!readable(ft.event_fd(), 200));
        fs::write(dir.join("core.99"), b"dump").unwrap();
        assert!(readable(ft.event_fd(), 30_000));
        assert!(ft.take().core_candidate);
        fs::remove_dir_all(&dir).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn memory_over_the_limit_and_a_new_oom_kill_wake_the_agent() {
        // A v1 memory cgroup as fixture files: what the thread reads is what the kernel would show.
        let dir = std::env::temp_dir().join(format!("gridpilot-fasttier-v1-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("memory.usage_in_bytes"), b"1000\n").unwrap();
        fs::write(dir.join("memory.oom_control"), b"oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        let mut child = sleeper();
        let mut c = cfg(child.id() as i32, None);
        c.v1_memory = Some(dir.clone());
        c.memory_limit = Some(5000);
        let ft = FastTier::start(c).unwrap();
        assert!(!readable(ft.event_fd(), 200), "2 OOM kills before the start are the baseline");
        fs::write(dir.join("memory.usage_in_bytes"), b"6000\n").unwrap();
        assert!(readable(ft.event_fd(), 30_000));
        let t = ft.take();
        assert_eq!((t.v1_memory, t.memory_max, t.oom_kills), (Some(6000), Some(6000), 2));
        fs::write(dir.join("memory.usage_in_bytes"), b"1000\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        ft.take();
        assert!(!readable(ft.event_fd(), 200));
        fs::write(dir.join("memory.oom_control"), b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert!(readable(ft.event_fd(), 30_000));
        assert_eq!(ft.take().oom_kills, 3);
        fs::remove_dir_all(&dir).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_v2_job_cgroup_gives_cpu_memory_and_oom_kills() {
        // A cgroup v2 directory laid out as on an EL9 node (this machine's v2 has no memory controller).
        let dir = std::env::temp_dir().join(format!("gridpilot-fasttier-v2-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut child = sleeper();
        fs::write(dir.join("cgroup.procs"), format!("{}\n", child.id())).unwrap();
        fs::write(dir.join("cgroup.events"), b"populated 1\nfrozen 0\n").unwrap();
        fs::write(dir.join("cpu.stat"), b"usage_usec 500000000\nuser_usec 1\nsystem_usec 1\n").unwrap();
        fs::write(dir.join("memory.current"), b"1000\n").unwrap();
        fs::write(dir.join("memory.events"), b"low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").unwrap();
        let mut c = cfg(child.id() as i32, None);
        c.cgroup = Some(dir.clone());
        c.memory_limit = Some(5000);
        let ft = FastTier::start(c).unwrap();
        assert!(!readable(ft.event_fd(), 200));
        let t = ft.take();
        assert!(t.points.iter().all(|p| p.1 >= 500.0), "cpu.stat's usage counts: {:?}", t.points);
        assert_eq!(t.cgroup_memory, Some(1000));
        fs::write(dir.join("memory.current"), b"6000\n").unwrap();
        assert!(readable(ft.event_fd(), 30_000));
        assert_eq!(ft.take().memory_max, Some(6000));
        fs::write(dir.join("memory.current"), b"1000\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        ft.take();
        fs::write(dir.join("memory.events"), b"low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert!(readable(ft.event_fd(), 30_000));
        assert_eq!(ft.take().oom_kills, 1);
        drop(ft);
        fs::remove_dir_all(&dir).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn stop_ends_the_thread() {
        let mut child = sleeper();
        let mut ft = FastTier::start(cfg(child.id() as i32, None)).unwrap();
        ft.stop();
        assert!(!ft.running());
        let before = ft.take().ticks;
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(ft.take().ticks, 0, "ticks after stop: {before} then more");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
