//! TreeSampler: the fast and slow monitoring tiers over every process of a job.
//!
//! Discovery and sampling happen in one pass: each process's `stat` is read once and gives both the counters and
//! the thread count needed to read its `children` files. Files are read through descriptors kept open between
//! samples as far as the process's descriptor budget allows (fdbudget.rs: stat first, then children, then io) and
//! opened, read and closed otherwise. A process that is known to be in the job but cannot be read (no descriptor
//! left, access denied) is never dropped silently: it is counted in `unread`, by reason.
//!
//! `io` is read at every sample by default. With `io_every` = N it is read at every Nth sample only (and at every
//! full sample): nothing at 1 Hz needs it, and it was half of the fast tier's reads. Between two such samples the sums
//! are made of each process's last counters, so they never fall back; a process seen for the first time is read at
//! once. io files are then not kept open: read once every N samples, a kept descriptor saves little and costs a
//! descriptor and the kernel's file per process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::PathBuf;

use super::cgroup::read_procs_recursive;
use super::error::{NativeError, Result};
use super::fdbudget::{Budget, Class, Quotas};
use super::procfs::{parse_io, parse_kb_field, parse_pid_list, parse_stat_counters, Io, ProcFs, StatCounters};
use super::util::{clock_ticks, now_unix, page_size, KeptFile};

/// One sample of a job's processes. Sizes in bytes, times in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcSample {
    pub timestamp: f64,
    /// Processes read: the length of `pids`, and what every sum below covers.
    pub nprocs: u64,
    pub nthreads: u64,
    pub pids: Vec<i32>,
    pub utime_s: f64,
    pub stime_s: f64,
    pub cpu_time_s: f64,
    /// CPU time of the reaped descendants of the processes read (cutime + cstime): with cpu_time_s, a total that
    /// does not drop when short-lived children exit.
    pub children_cpu_s: f64,
    pub rss_bytes: u64,
    pub vmem_bytes: u64,
    pub swap_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub rchar: u64,
    pub wchar: u64,
    /// When every process's io counters were last read (wall clock, as `timestamp`): read_bytes, write_bytes,
    /// rchar and wchar hold counters read then or later (later for a process first seen since). Equal to
    /// `timestamp` when this sample read them; 0 before the first read.
    pub io_timestamp: f64,
    pub minflt: u64,
    pub majflt: u64,
    /// Processes known to be in the job (listed by a parent or cgroup.procs, or read before) that exist but could
    /// not be read: not in nprocs, pids or the sums, so every sum is a lower bound when this is not 0.
    pub unread: u64,
    /// `unread` by cause, named by errno ("EMFILE", "ENFILE", "EACCES", ...).
    pub unread_reasons: BTreeMap<String, u64>,
    /// Processes read whose children could not be listed (tree discovery only): new descendants of theirs may be
    /// missing from this sample, unknown and so uncounted; ones seen before are still read or counted unread.
    pub unlisted: u64,
}

/// A thread whose `children` file is read: children belong to the thread that forked them.
#[derive(Debug)]
struct Task {
    tid: i32,
    file: Option<KeptFile>,
}

/// What is known of one process of the job, valid while its start time stays the same.
#[derive(Debug)]
struct Tracked {
    /// 0 while the process has never been read (it was listed but unreadable).
    starttime: u64,
    stat: Option<KeptFile>,
    io: Option<KeptFile>,
    /// The counters read from io last: what the sums hold for this process on samples that do not read io.
    io_last: Option<Io>,
    /// io is unreadable (another user's process without CAP_SYS_PTRACE): counted as absent, not tried again.
    io_denied: bool,
    /// The threads whose children files are read, listed when the thread count was `listed_threads`.
    tasks: Vec<Task>,
    listed_threads: u64,
    generation: u64,
}

impl Tracked {
    fn new(starttime: u64, generation: u64) -> Tracked {
        Tracked {
            starttime,
            stat: None,
            io: None,
            io_last: None,
            io_denied: false,
            tasks: Vec::new(),
            listed_threads: 0,
            generation,
        }
    }
}

/// A kept `children` file of a thread that has exited reads as empty, not as an error, so a process whose threads
/// come and go at an unchanged count would hide the children of its new threads: its task list is re-read every
/// this many samples as well as whenever the count changes.
const RELIST_EVERY: u64 = 10;

fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EMFILE) => "EMFILE",
        Some(libc::ENFILE) => "ENFILE",
        Some(libc::EACCES) => "EACCES",
        Some(libc::EPERM) => "EPERM",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EIO) => "EIO",
        Some(libc::EINTR) => "EINTR",
        Some(n) => return format!("errno {n}"),
        None if e.kind() == io::ErrorKind::InvalidData => "unparsable",
        None => "other",
    };
    name.to_string()
}

/// The process (or thread) has gone: normal between two reads, not a fault.
fn is_gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ESRCH))
}

fn is_out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

fn is_denied(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}

#[derive(Debug)]
pub struct TreeSampler {
    fs: ProcFs,
    root_pid: i32,
    cgroup: Option<PathBuf>,
    tracked: HashMap<i32, Tracked>,
    generation: u64,
    children_files: bool,
    ticks: f64,
    page: u64,
    buf: Vec<u8>,
    kids: Vec<u8>,
    budget: Budget,
    quotas: Quotas,
    /// Kept descriptors by Class.
    kept: [usize; 3],
    /// What the last sample wanted kept: one stat per process, one children file per thread, io per process.
    wanted: (usize, usize, usize),
    /// EMFILE met with nothing left to close: no more closing and retrying for the rest of this sample.
    starved: bool,
    stack: Vec<i32>,
    seen: HashSet<i32>,
    /// The job cgroup's cgroup.procs and cgroup.stat, kept open (two per cgroup sampler, within the budget's
    /// reserve): membership is one read, and the walk of sub-cgroups only happens when cgroup.stat says there are any.
    procs_file: Option<KeptFile>,
    cgstat_file: Option<KeptFile>,
    /// Read io at every this many samples (1: every sample).
    io_every: u64,
    /// Samples left before the next one that reads io (0: the next one does).
    io_countdown: u64,
    /// Processes that left the job (exited, or their pid reused) during the sample under way.
    left: usize,
    io_timestamp: f64,
}

/// Sums of one sample, in the units of /proc (ticks, pages).
#[derive(Default)]
struct Sums {
    utime: u64,
    stime: u64,
    children: u64,
    swap: u64,
    pss: u64,
}

impl TreeSampler {
    pub fn new(proc_root: impl Into<PathBuf>, root_pid: i32, cgroup: Option<PathBuf>) -> Result<Self> {
        Self::with_budget(proc_root, root_pid, cgroup, None)
    }

    /// `max_fds`: keep at most this many descriptors open between samples, below this sampler's share of the
    /// process's (None: the share alone). 0 reads every file by open-read-close.
    pub fn with_budget(
        proc_root: impl Into<PathBuf>,
        root_pid: i32,
        cgroup: Option<PathBuf>,
        max_fds: Option<usize>,
    ) -> Result<Self> {
        if root_pid <= 0 && cgroup.is_none() {
            return Err(NativeError::InvalidArgument(format!("root_pid must be > 0, got {root_pid}")));
        }
        if let Some(cg) = &cgroup {
            if !cg.join("cgroup.procs").exists() {
                return Err(NativeError::Cgroup {
                    path: cg.clone(),
                    detail: "not a cgroup directory (no cgroup.procs)".into(),
                });
            }
        }
        let fs = ProcFs::new(proc_root);
        let children_files = fs.has_children_files();
        let budget = Budget::new(max_fds);
        // Before the first sample nothing is known of the job: every class may take the whole allowance, and the
        // first plan (at the second sample) takes back what stat needs.
        let a = budget.allowance();
        Ok(TreeSampler {
            fs,
            root_pid,
            cgroup,
            tracked: HashMap::new(),
            generation: 0,
            children_files,
            ticks: clock_ticks() as f64,
            page: page_size(),
            buf: Vec::with_capacity(1024),
            kids: Vec::with_capacity(256),
            budget,
            quotas: Quotas { stat: a, children: a, io: a },
            kept: [0; 3],
            wanted: (0, 0, 0),
            starved: false,
            stack: Vec::new(),
            seen: HashSet::new(),
            procs_file: None,
            cgstat_file: None,
            io_every: 1,
            io_countdown: 0,
            left: 0,
            io_timestamp: 0.0,
        })
    }

    /// Read every process's io at every `n`th sample only (and at every full sample); 0 counts as 1. The next sample
    /// reads it in any case.
    pub fn set_io_every(&mut self, n: u64) {
        self.io_every = n.max(1);
        self.io_countdown = 0;
    }

    pub fn io_every(&self) -> u64 {
        self.io_every
    }

    pub fn root_pid(&self) -> i32 {
        self.root_pid
    }

    pub fn cgroup(&self) -> Option<&PathBuf> {
        self.cgroup.as_ref()
    }

    /// Descriptors this sampler keeps open between samples now.
    pub fn kept_fds(&self) -> usize {
        self.budget.held()
    }

    /// Fast tier: stat of every process of the job, and io as `io_every` says.
    pub fn sample(&mut self) -> Result<ProcSample> {
        self.sample_inner(false)
    }

    /// Slow tier: the fast tier plus VmSwap from status and PSS from smaps_rollup.
    pub fn sample_full(&mut self) -> Result<ProcSample> {
        self.sample_inner(true)
    }

    /// The processes of the job now.
    pub fn pids(&mut self) -> Result<Vec<i32>> {
        Ok(self.sample_inner(false)?.pids)
    }

    fn sample_inner(&mut self, full: bool) -> Result<ProcSample> {
        self.generation += 1;
        self.starved = false;
        self.budget.refresh();
        if self.generation > 1 {
            let (procs, children, io) = self.wanted;
            self.quotas = Quotas::plan(self.budget.allowance(), procs, children, io);
        }
        self.shed();
        self.wanted = (0, 0, 0);
        let mut out = ProcSample { timestamp: now_unix(), ..Default::default() };
        self.left = 0;
        out.pids.reserve(self.tracked.len());
        let mut sums = Sums::default();
        let mut stack = std::mem::take(&mut self.stack);
        let mut seen = std::mem::take(&mut self.seen);
        stack.clear();
        seen.clear();

        match self.cgroup.clone() {
            Some(cg) => {
                let pids = match self.cgroup_pids(&cg) {
                    Some(pids) => pids,
                    None => match read_procs_recursive(&cg) {
                        Err(NativeError::Io { source, .. }) if is_out_of_fds(&source) && self.evict_one() => {
                            read_procs_recursive(&cg)?
                        }
                        other => other?,
                    },
                };
                for pid in pids {
                    self.visit(pid, full, &mut out, &mut sums);
                }
            }
            None => {
                stack.push(self.root_pid);
                // A process seen before keeps belonging to the job while its identity holds, even after its parent
                // exits and it is re-parented away from the tree (a daemonising payload).
                stack.extend(self.tracked.keys().copied());
                while let Some(pid) = stack.pop() {
                    if !seen.insert(pid) {
                        continue;
                    }
                    let Some(num_threads) = self.visit(pid, full, &mut out, &mut sums) else { continue };
                    if !self.children_files {
                        self.push_children_by_ppid(pid, &mut stack);
                    } else if let Err(e) = self.push_children(pid, num_threads, &mut stack) {
                        if !is_gone(&e) {
                            out.unlisted += 1;
                        }
                    }
                }
            }
        }
        self.stack = stack;
        self.seen = seen;
        let generation = self.generation;
        let mut released = [0usize; 3];
        let mut left = 0;
        self.tracked.retain(|_, t| {
            if t.generation == generation {
                return true;
            }
            count_kept(t, &mut released);
            left += 1;
            false
        });
        self.left += left;
        self.release_counts(released);
        self.wanted.0 = out.pids.len() + out.unread as usize;

        // A process that left the job took its counters out of the sums; the parent that reaped it now holds them
        // (the kernel adds a reaped child's io to its parent's), so its io is read now, not at the next Nth sample.
        let io_due = full || self.io_countdown == 0 || self.left > 0;
        if io_due {
            self.io_countdown = self.io_every - 1;
            self.io_timestamp = out.timestamp;
        } else {
            self.io_countdown -= 1;
        }
        out.io_timestamp = self.io_timestamp;
        for &pid in &out.pids {
            if let Some(c) = self.io_of(pid, io_due) {
                out.read_bytes += c.read_bytes;
                out.write_bytes += c.write_bytes;
                out.rchar += c.rchar;
                out.wchar += c.wchar;
            }
        }

        out.pids.sort_unstable();
        out.nprocs = out.pids.len() as u64;
        out.utime_s = sums.utime as f64 / self.ticks;
        out.stime_s = sums.stime as f64 / self.ticks;
        out.cpu_time_s = (sums.utime + sums.stime) as f64 / self.ticks;
        out.children_cpu_s = sums.children as f64 / self.ticks;
        if full {
            out.swap_bytes = Some(sums.swap);
            out.pss_bytes = Some(sums.pss);
        }
        Ok(out)
    }

    /// The members of a job cgroup without sub-cgroups, through the kept cgroup.procs; None when there are
    /// sub-cgroups, when the kernel has no cgroup.stat (v1), or on any error (the full walk then reports it).
    fn cgroup_pids(&mut self, cg: &std::path::Path) -> Option<Vec<i32>> {
        if self.cgstat_file.is_none() {
            self.cgstat_file = KeptFile::open(cg.join("cgroup.stat")).ok();
        }
        let stat = self.cgstat_file.as_ref()?;
        if stat.read_into(&mut self.kids).is_err() {
            self.cgstat_file = None;
            return None;
        }
        let descendants = self.kids.split(|&c| c == b'\n').find_map(|line| {
            let rest = line.strip_prefix(b"nr_descendants ")?;
            std::str::from_utf8(rest).ok()?.trim().parse::<u64>().ok()
        });
        if descendants != Some(0) {
            return None;
        }
        if self.procs_file.is_none() {
            self.procs_file = KeptFile::open(cg.join("cgroup.procs")).ok();
        }
        if self.procs_file.as_ref()?.read_into(&mut self.kids).is_err() {
            self.procs_file = None;
            return None;
        }
        let mut pids: Vec<i32> = parse_pid_list(&self.kids).collect();
        pids.sort_unstable();
        pids.dedup();
        Some(pids)
    }

    /// Read one process into the sample. Some(thread count) when it was read; None when it has gone or could not
    /// be read (then counted in `unread`).
    fn visit(&mut self, pid: i32, full: bool, out: &mut ProcSample, sums: &mut Sums) -> Option<u64> {
        let stat = match self.read_stat(pid) {
            Ok(stat) => stat,
            Err(e) => {
                // Without a descriptor the process's existence is still visible: stat(2) of /proc/<pid> needs none.
                let gone = is_gone(&e) || (is_out_of_fds(&e) && !self.fs.pid_path(pid, "").exists());
                if gone {
                    self.forget(pid);
                } else {
                    out.unread += 1;
                    *out.unread_reasons.entry(errno_name(&e)).or_insert(0) += 1;
                    // Still known to be in the job: kept in the tracked set, so tree discovery looks for it again.
                    let generation = self.generation;
                    self.tracked.entry(pid).or_insert_with(|| Tracked::new(0, generation)).generation = generation;
                }
                return None;
            }
        };
        out.pids.push(pid);
        out.nthreads += stat.num_threads;
        sums.utime += stat.utime;
        sums.stime += stat.stime;
        sums.children += stat.cutime + stat.cstime;
        let rss = stat.rss_pages * self.page;
        out.rss_bytes += rss;
        out.vmem_bytes += stat.vsize;
        out.minflt += stat.minflt;
        out.majflt += stat.majflt;
        if full {
            // Slow tier only: smaps_rollup holds the target's mmap lock and costs ~12 ms per GB of RSS.
            if self.read_once(pid, "status").is_ok() {
                sums.swap += parse_kb_field(&String::from_utf8_lossy(&self.buf), "VmSwap").unwrap_or(0);
            }
            match self.read_once(pid, "smaps_rollup") {
                Ok(()) => sums.pss += parse_kb_field(&String::from_utf8_lossy(&self.buf), "Pss").unwrap_or(0),
                // Another user's process (a setuid program), or no descriptor free: its RSS, an upper bound of its
                // PSS, stands in, so the memory rule never sees less than the process holds.
                Err(e) if !is_gone(&e) => sums.pss += rss,
                Err(_) => {}
            }
        }
        Some(stat.num_threads)
    }

    /// Read `stat` through the kept descriptor, opening (or reopening, for a reused pid) as needed.
    fn read_stat(&mut self, pid: i32) -> io::Result<StatCounters> {
        let generation = self.generation;
        let kept = self.tracked.get_mut(&pid).and_then(|t| t.stat.take());
        if let Some(file) = kept {
            if file.read_into(&mut self.buf).is_ok() {
                if let Ok(stat) = parse_stat_counters(&self.buf) {
                    let t = self.tracked.get_mut(&pid).expect("taken from this entry");
                    if stat.starttime == t.starttime {
                        t.stat = Some(file);
                        t.generation = generation;
                        return Ok(stat);
                    }
                }
            }
            // The kept descriptor points at a dead task (ESRCH) or the pid now names another process.
            drop(file);
            self.release(Class::Stat);
            self.forget(pid);
        }
        let file = self.open(self.fs.pid_path(pid, "stat"))?;
        file.read_into(&mut self.buf)?;
        let stat =
            parse_stat_counters(&self.buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        if self.tracked.get(&pid).is_some_and(|t| t.starttime != stat.starttime) {
            self.forget(pid);
        }
        let keep = self.may_keep(Class::Stat);
        let t = self.tracked.entry(pid).or_insert_with(|| Tracked::new(stat.starttime, generation));
        t.generation = generation;
        if keep {
            t.stat = Some(file);
        }
        Ok(stat)
    }

    /// The io counters the sample sums for `pid`: read now on a sample that reads io and for a process without
    /// counters yet, else the last ones read (a failed read also leaves the last ones).
    fn io_of(&mut self, pid: i32, due: bool) -> Option<Io> {
        let t = self.tracked.get(&pid)?;
        if t.io_denied {
            return None;
        }
        if due || t.io_last.is_none() {
            if let Some(io) = self.read_io(pid) {
                if let Some(t) = self.tracked.get_mut(&pid) {
                    t.io_last = Some(io);
                }
                return Some(io);
            }
        }
        self.tracked.get(&pid)?.io_last
    }

    fn read_io(&mut self, pid: i32) -> Option<Io> {
        let t = self.tracked.get_mut(&pid)?;
        if t.io_denied {
            return None;
        }
        // Read every sample, io is worth a kept descriptor after stat and children; read every Nth, it is not.
        let keep = self.io_every == 1;
        if keep {
            self.wanted.2 += 1;
        }
        if let Some(file) = t.io.take() {
            if file.read_into(&mut self.buf).is_ok() {
                t.io = Some(file);
                return Some(parse_io(&self.buf));
            }
            drop(file);
            self.release(Class::Io);
        }
        let file = match self.open(self.fs.pid_path(pid, "io")) {
            Ok(f) => f,
            Err(e) => {
                if is_denied(&e) {
                    if let Some(t) = self.tracked.get_mut(&pid) {
                        t.io_denied = true;
                    }
                }
                return None;
            }
        };
        file.read_into(&mut self.buf).ok()?;
        let io = parse_io(&self.buf);
        if keep && self.may_keep(Class::Io) {
            if let Some(t) = self.tracked.get_mut(&pid) {
                t.io = Some(file);
            } else {
                self.release(Class::Io);
            }
        }
        Some(io)
    }

    /// Read a file of /proc/<pid> once into self.buf (the slow tier's status and smaps_rollup).
    fn read_once(&mut self, pid: i32, name: &str) -> io::Result<()> {
        let file = self.open(self.fs.pid_path(pid, name))?;
        file.read_into(&mut self.buf)
    }

    /// Push the children of every thread of `pid` onto `stack`: a thread that forks is the parent, so the main
    /// thread's file alone misses children of other threads.
    fn push_children(&mut self, pid: i32, num_threads: u64, stack: &mut Vec<i32>) -> io::Result<()> {
        let num_threads = num_threads.max(1);
        let staggered = (self.generation + pid as u64) % RELIST_EVERY == 0;
        let mut relisted = false;
        loop {
            let stale = match self.tracked.get(&pid) {
                Some(t) => t.listed_threads != num_threads || (num_threads > 1 && staggered && !relisted),
                None => return Ok(()),
            };
            if stale && !relisted {
                self.relist(pid, num_threads)?;
                relisted = true;
            }
            let mut tasks = std::mem::take(&mut self.tracked.get_mut(&pid).expect("checked above").tasks);
            self.wanted.1 += tasks.len();
            let mark = stack.len();
            let mut result = Ok(());
            let mut thread_gone = false;
            for task in tasks.iter_mut() {
                match self.read_children(pid, task) {
                    Ok(()) => stack.extend(parse_pid_list(&self.kids)),
                    Err(e) if is_gone(&e) => thread_gone = true,
                    Err(e) => result = Err(e),
                }
            }
            if let Some(t) = self.tracked.get_mut(&pid) {
                t.tasks = tasks;
                if thread_gone && !relisted {
                    // A thread listed before has exited: list again and re-read.
                    t.listed_threads = 0;
                    stack.truncate(mark);
                    continue;
                }
            } else {
                let mut released = [0usize; 3];
                released[Class::Children as usize] = tasks.iter().filter(|t| t.file.is_some()).count();
                self.release_counts(released);
            }
            return result;
        }
    }

    /// List the threads of `pid` again, keeping the descriptors of the ones still there.
    fn relist(&mut self, pid: i32, num_threads: u64) -> io::Result<()> {
        let tids: Vec<i32> = if num_threads <= 1 {
            vec![pid]
        } else {
            let dir = self.fs.pid_path(pid, "task");
            let entries = match std::fs::read_dir(&dir) {
                Err(e) if is_out_of_fds(&e) && !self.starved && self.evict_one() => std::fs::read_dir(&dir)?,
                other => other?,
            };
            entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).collect()
        };
        let Some(t) = self.tracked.get_mut(&pid) else { return Ok(()) };
        let mut old = std::mem::take(&mut t.tasks);
        let mut tasks = Vec::with_capacity(tids.len());
        for tid in tids {
            match old.iter().position(|o| o.tid == tid) {
                Some(i) => tasks.push(old.swap_remove(i)),
                None => tasks.push(Task { tid, file: None }),
            }
        }
        t.tasks = tasks;
        t.listed_threads = num_threads;
        let closed = old.iter().filter(|o| o.file.is_some()).count();
        let mut released = [0usize; 3];
        released[Class::Children as usize] = closed;
        self.release_counts(released);
        Ok(())
    }

    fn read_children(&mut self, pid: i32, task: &mut Task) -> io::Result<()> {
        if let Some(file) = &task.file {
            // One read() of a children file returns at most a page; read_into reads until EOF.
            match file.read_into(&mut self.kids) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    task.file = None;
                    self.release(Class::Children);
                    return Err(e);
                }
            }
        }
        let path = self.fs.root().join(format!("{pid}/task/{}/children", task.tid));
        let file = self.open(path)?;
        file.read_into(&mut self.kids)?;
        if self.may_keep(Class::Children) {
            task.file = Some(file);
        }
        Ok(())
    }

    /// Open a file; when the process is out of descriptors, close one kept descriptor and try once more.
    fn open(&mut self, path: PathBuf) -> io::Result<KeptFile> {
        match KeptFile::open(path.clone()) {
            Err(e) if is_out_of_fds(&e) => {
                if self.starved || !self.evict_one() {
                    self.starved = true;
                    return Err(e);
                }
                KeptFile::open(path).inspect_err(|_| self.starved = true)
            }
            other => other,
        }
    }

    /// EMFILE although the budget had room: the process has fewer descriptors than its limit says. Close the least
    /// useful kept descriptor (io, then children, then stat) and hold no more than now for a while.
    fn evict_one(&mut self) -> bool {
        self.budget.under_pressure();
        let mut class = None;
        for t in self.tracked.values_mut() {
            if t.io.take().is_some() {
                class = Some(Class::Io);
                break;
            }
        }
        if class.is_none() {
            'outer: for t in self.tracked.values_mut() {
                for task in &mut t.tasks {
                    if task.file.take().is_some() {
                        class = Some(Class::Children);
                        break 'outer;
                    }
                }
            }
        }
        if class.is_none() {
            for t in self.tracked.values_mut() {
                if t.stat.take().is_some() {
                    class = Some(Class::Stat);
                    break;
                }
            }
        }
        match class {
            Some(c) => {
                self.release(c);
                true
            }
            None => false,
        }
    }

    /// Whether a descriptor just opened for `class` may stay open; if so it is counted.
    fn may_keep(&mut self, class: Class) -> bool {
        if self.kept[class as usize] >= self.quotas.of(class) || !self.budget.try_take() {
            return false;
        }
        self.kept[class as usize] += 1;
        true
    }

    fn release(&mut self, class: Class) {
        self.kept[class as usize] -= 1;
        self.budget.give_back();
    }

    fn release_counts(&mut self, counts: [usize; 3]) {
        for (class, n) in [Class::Stat, Class::Children, Class::Io].into_iter().zip(counts) {
            for _ in 0..n {
                self.release(class);
            }
        }
    }

    /// Drop everything known of `pid`, closing its descriptors.
    fn forget(&mut self, pid: i32) {
        if let Some(t) = self.tracked.remove(&pid) {
            self.left += 1;
            let mut released = [0usize; 3];
            count_kept(&t, &mut released);
            self.release_counts(released);
        }
    }

    /// Close descriptors beyond the quotas and the allowance, least useful class first.
    fn shed(&mut self) {
        let mut target = [
            self.kept[0].min(self.quotas.stat),
            self.kept[1].min(self.quotas.children),
            self.kept[2].min(self.quotas.io),
        ];
        let mut excess = (target.iter().sum::<usize>()).saturating_sub(self.budget.allowance());
        for class in [Class::Io, Class::Children, Class::Stat] {
            let cut = excess.min(target[class as usize]);
            target[class as usize] -= cut;
            excess -= cut;
        }
        if target == self.kept {
            return;
        }
        let mut over = [self.kept[0] - target[0], self.kept[1] - target[1], self.kept[2] - target[2]];
        let mut released = [0usize; 3];
        for t in self.tracked.values_mut() {
            if over[2] > 0 && t.io.take().is_some() {
                over[2] -= 1;
                released[2] += 1;
            }
            for task in &mut t.tasks {
                if over[1] > 0 && task.file.take().is_some() {
                    over[1] -= 1;
                    released[1] += 1;
                }
            }
            if over[0] > 0 && t.stat.take().is_some() {
                over[0] -= 1;
                released[0] += 1;
            }
            if over == [0, 0, 0] {
                break;
            }
        }
        self.release_counts(released);
    }

    /// Without children files (CONFIG_PROC_CHILDREN off) the only way down is every process's parent pid.
    fn push_children_by_ppid(&mut self, pid: i32, stack: &mut Vec<i32>) {
        for other in self.fs.all_pids().unwrap_or_default() {
            if let Ok(s) = self.fs.read_stat(other) {
                if s.ppid == pid {
                    stack.push(other);
                }
            }
        }
    }
}

fn count_kept(t: &Tracked, counts: &mut [usize; 3]) {
    counts[Class::Stat as usize] += usize::from(t.stat.is_some());
    counts[Class::Io as usize] += usize::from(t.io.is_some());
    counts[Class::Children as usize] += t.tasks.iter().filter(|k| k.file.is_some()).count();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn samples_a_live_child() {
        let mut child = Command::new("sleep").arg("5").stdout(Stdio::null()).spawn().unwrap();
        let pid = child.id() as i32;
        let mut s = TreeSampler::new("/proc", pid, None).unwrap();
        // Right after exec the kernel's approximate rss counter of the new image can still read 0.
        let t0 = std::time::Instant::now();
        let mut a = s.sample().unwrap();
        while a.rss_bytes == 0 && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(10));
            a = s.sample().unwrap();
        }
        assert_eq!(a.pids, vec![pid]);
        assert_eq!(a.nprocs, 1);
        assert!(a.rss_bytes > 0);
        assert!(a.swap_bytes.is_none() && a.pss_bytes.is_none());
        let b = s.sample_full().unwrap();
        assert!(b.pss_bytes.unwrap() > 0);
        child.kill().unwrap();
        child.wait().unwrap();
        let c = s.sample().unwrap();
        assert_eq!(c.nprocs, 0);
    }

    /// A shell with `n` sleeping children, and its pid once every child is there.
    fn family(n: usize) -> (std::process::Child, i32) {
        let script = format!("for i in $(seq {n}); do sleep 30 & done; echo ready; wait");
        let mut child = Command::new("sh").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let pid = child.id() as i32;
        (child, pid)
    }

    fn end(mut child: std::process::Child, pid: i32) {
        let fs = ProcFs::new("/proc");
        for p in fs.tree(pid) {
            // SAFETY: kill(2) has no memory preconditions; these pids are our child's tree, listed just now.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        child.wait().unwrap();
    }

    #[test]
    fn a_small_budget_keeps_stat_first_and_reads_the_rest_per_sample() {
        let (child, pid) = family(8);
        let mut open = TreeSampler::with_budget("/proc", pid, None, None).unwrap();
        let mut tight = TreeSampler::with_budget("/proc", pid, None, Some(4)).unwrap();
        let mut none = TreeSampler::with_budget("/proc", pid, None, Some(0)).unwrap();
        let want = open.sample().unwrap();
        assert_eq!(want.nprocs, 9);
        for _ in 0..3 {
            let a = tight.sample().unwrap();
            let b = none.sample().unwrap();
            assert_eq!((a.pids.clone(), a.unread), (want.pids.clone(), 0));
            assert_eq!((b.pids.clone(), b.unread), (want.pids.clone(), 0));
            assert!(tight.kept_fds() <= 4);
            assert_eq!(none.kept_fds(), 0);
        }
        // After the first plan, the 4 descriptors are all stat: 9 processes need more stats than that.
        assert_eq!(tight.kept, [4, 0, 0]);
        // Unlimited: a stat, an io and a children file per process (each is single-threaded).
        open.sample().unwrap();
        assert_eq!(open.kept, [9, 9, 9]);
        end(child, pid);
        // The killed sleeps are zombies until their new parent reaps them.
        let t0 = std::time::Instant::now();
        let mut gone = tight.sample().unwrap();
        while gone.nprocs > 0 && t0.elapsed() < std::time::Duration::from_secs(20) {
            std::thread::sleep(std::time::Duration::from_millis(20));
            gone = tight.sample().unwrap();
        }
        assert_eq!((gone.nprocs, gone.unread), (0, 0));
        assert_eq!(tight.kept_fds(), 0, "descriptors of exited processes are given back");
    }

    #[test]
    fn plenty_of_budget_keeps_io_and_children_after_stat() {
        let (child, pid) = family(3);
        // 4 processes: 4 stats, then 4 children files, then 2 of the 4 io files fit in 10.
        let mut s = TreeSampler::with_budget("/proc", pid, None, Some(10)).unwrap();
        for _ in 0..3 {
            assert_eq!(s.sample().unwrap().nprocs, 4);
        }
        assert_eq!(s.kept, [4, 4, 2]);
        end(child, pid);
    }

    #[test]
    fn cgroup_members_through_kept_files_and_sub_cgroups_through_the_walk() {
        let (child, pid) = family(2);
        let kids: Vec<i32> = ProcFs::new("/proc").tree(pid).into_iter().filter(|&p| p != pid).collect();
        assert_eq!(kids.len(), 2);
        let dir = std::env::temp_dir().join(format!("gp-sampler-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.stat"), "nr_descendants 0\nnr_dying_descendants 0\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), format!("{pid}\n{}\n", kids[0])).unwrap();
        let mut s = TreeSampler::new("/proc", pid, Some(dir.clone())).unwrap();
        let mut want = vec![pid, kids[0]];
        want.sort_unstable();
        assert_eq!(s.sample().unwrap().pids, want);
        // A sub-cgroup appears: cgroup.stat says so, and the walk finds its member.
        let sub = dir.join("sub");
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join("cgroup.procs"), format!("{}\n", kids[1])).unwrap();
        std::fs::write(dir.join("cgroup.stat"), "nr_descendants 1\nnr_dying_descendants 0\n").unwrap();
        let mut all = vec![pid, kids[0], kids[1]];
        all.sort_unstable();
        assert_eq!(s.sample().unwrap().pids, all);
        end(child, pid);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A shell that, per line on its stdin, writes `n` bytes through a child it reaps (`w n`: its own io then counts
    /// them), starts a child that writes `n` bytes and stays (`c n`), or runs a child that writes `n` bytes and
    /// then waits for a line before it exits and is reaped (`x n`); it says "ok" once they are written (and, for
    /// `x`, again once the child is reaped).
    struct Writer {
        child: std::process::Child,
        pid: i32,
        input: std::process::ChildStdin,
        output: std::io::BufReader<std::process::ChildStdout>,
    }

    impl Writer {
        fn start() -> Writer {
            let script = r#"while read cmd n; do
                if [ "$cmd" = w ]; then head -c "$n" /dev/zero >/dev/null; echo ok
                elif [ "$cmd" = x ]; then (head -c "$n" /dev/zero >/dev/null; echo ok; read _); echo ok
                else (head -c "$n" /dev/zero >/dev/null; echo ok; exec sleep 30) &
                fi
            done"#;
            let mut child =
                Command::new("sh").args(["-c", script]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
            let input = child.stdin.take().unwrap();
            let output = std::io::BufReader::new(child.stdout.take().unwrap());
            let pid = child.id() as i32;
            Writer { child, pid, input, output }
        }

        fn run(&mut self, cmd: &str, n: u64) {
            use std::io::Write;
            writeln!(self.input, "{cmd} {n}").unwrap();
            self.ok();
        }

        fn ok(&mut self) {
            use std::io::BufRead;
            let mut line = String::new();
            self.output.read_line(&mut line).unwrap();
            assert_eq!(line.trim(), "ok");
        }

        fn end(self) {
            drop(self.input);
            end(self.child, self.pid);
        }
    }

    const MB: u64 = 1 << 20;

    #[test]
    fn io_every_nth_sample_holds_the_last_counters_in_between() {
        let mut w = Writer::start();
        let mut s = TreeSampler::new("/proc", w.pid, None).unwrap();
        s.set_io_every(3);
        let s1 = s.sample().unwrap();
        assert_eq!(s1.io_timestamp, s1.timestamp, "the first sample reads io");
        w.run("w", MB);
        // Samples 2 and 3 of every 3 do not read io: the counters are the last ones read, not 0 and not new.
        let s2 = s.sample().unwrap();
        assert_eq!((s2.nprocs, s2.wchar, s2.rchar), (1, s1.wchar, s1.rchar));
        assert_eq!(s2.io_timestamp, s1.timestamp);
        let s3 = s.sample().unwrap();
        assert_eq!(s3.wchar, s1.wchar);
        let s4 = s.sample().unwrap();
        assert!(s4.wchar >= s1.wchar + MB, "{} then {}", s1.wchar, s4.wchar);
        assert_eq!(s4.io_timestamp, s4.timestamp);
        // A full sample always reads io, and the count starts again from it.
        w.run("w", MB);
        let f = s.sample_full().unwrap();
        assert!(f.wchar >= s4.wchar + MB);
        w.run("w", MB);
        for _ in 0..2 {
            let quiet = s.sample().unwrap();
            assert_eq!((quiet.wchar, quiet.io_timestamp), (f.wchar, f.timestamp));
        }
        assert!(s.sample().unwrap().wchar >= f.wchar + MB);
        // Read once every few samples, io is not worth a kept descriptor: stat and children only.
        assert_eq!(s.kept, [1, 1, 0]);
        w.end();
    }

    #[test]
    fn a_new_process_has_its_io_read_at_once() {
        let mut w = Writer::start();
        let mut s = TreeSampler::new("/proc", w.pid, None).unwrap();
        s.set_io_every(1000);
        let s1 = s.sample().unwrap();
        w.run("c", 3 * MB);
        let s2 = s.sample().unwrap();
        assert_eq!(s2.nprocs, 2);
        assert!(s2.wchar >= s1.wchar + 3 * MB, "{} then {}", s1.wchar, s2.wchar);
        assert_eq!(s2.io_timestamp, s1.timestamp, "the shell's own counters are the first sample's");
        w.end();
    }

    #[test]
    fn a_process_leaving_the_job_has_its_parent_read_at_once() {
        use std::io::Write;
        let mut w = Writer::start();
        let mut s = TreeSampler::new("/proc", w.pid, None).unwrap();
        s.set_io_every(1000);
        let s1 = s.sample().unwrap();
        w.run("x", 2 * MB);
        let s2 = s.sample().unwrap();
        assert_eq!(s2.nprocs, 2);
        assert!(s2.wchar >= s1.wchar + 2 * MB);
        // The child exits and the shell reaps it: its bytes move into the shell's counters, which are read at once.
        writeln!(w.input).unwrap();
        w.ok();
        let s3 = s.sample().unwrap();
        assert_eq!(s3.nprocs, 1);
        assert!(s3.wchar >= s2.wchar, "the sum fell from {} to {}", s2.wchar, s3.wchar);
        assert_eq!(s3.io_timestamp, s3.timestamp);
        w.end();
    }

    #[test]
    fn io_every_sample_by_default() {
        let mut w = Writer::start();
        let mut s = TreeSampler::new("/proc", w.pid, None).unwrap();
        let s1 = s.sample().unwrap();
        w.run("w", MB);
        let s2 = s.sample().unwrap();
        assert!(s2.wchar >= s1.wchar + MB);
        assert_eq!(s2.io_timestamp, s2.timestamp);
        w.end();
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(matches!(TreeSampler::new("/proc", 0, None), Err(NativeError::InvalidArgument(_))));
        assert!(matches!(
            TreeSampler::new("/proc", 1, Some(PathBuf::from("/nonexistent-cgroup"))),
            Err(NativeError::Cgroup { .. })
        ));
    }
}
