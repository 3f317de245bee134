//! TreeSampler: the fast and slow monitoring tiers over every process of a job.
//!
//! Discovery and sampling happen in one pass: each process's `stat` is read once, through a descriptor kept open
//! between samples, and gives both the counters and the thread count needed to read its `children` files.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use super::cgroup::read_procs_recursive;
use super::error::{NativeError, Result};
use super::procfs::{parse_io, parse_kb_field, parse_pid_list, parse_stat, ProcFs, Stat};
use super::util::{clock_ticks, now_unix, page_size, KeptFile};

/// One sample of a job's processes. Sizes in bytes, times in seconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcSample {
    pub timestamp: f64,
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
    pub minflt: u64,
    pub majflt: u64,
}

/// The descriptors kept for one process, valid while its start time stays the same.
#[derive(Debug)]
struct Tracked {
    starttime: u64,
    stat: KeptFile,
    /// None when io is unreadable (another user's process without CAP_SYS_PTRACE): counted as absent.
    io: Option<KeptFile>,
    /// The main thread's children file, enough while the process has one thread.
    children: Option<KeptFile>,
    generation: u64,
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
}

impl TreeSampler {
    pub fn new(proc_root: impl Into<PathBuf>, root_pid: i32, cgroup: Option<PathBuf>) -> Result<Self> {
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
        })
    }

    pub fn root_pid(&self) -> i32 {
        self.root_pid
    }

    pub fn cgroup(&self) -> Option<&PathBuf> {
        self.cgroup.as_ref()
    }

    /// Fast tier: stat and io of every process of the job.
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
        let mut out = ProcSample { timestamp: now_unix(), ..Default::default() };
        let mut utime = 0u64;
        let mut stime = 0u64;
        let mut children = 0u64;
        let mut swap = 0u64;
        let mut pss = 0u64;

        let mut visit = |this: &mut Self, stat: &Stat, pid: i32| {
            out.pids.push(pid);
            out.nthreads += stat.num_threads;
            utime += stat.utime;
            stime += stat.stime;
            children += stat.cutime + stat.cstime;
            out.rss_bytes += stat.rss_pages * this.page;
            out.vmem_bytes += stat.vsize;
            out.minflt += stat.minflt;
            out.majflt += stat.majflt;
            if let Some(io) = this.tracked.get(&pid).and_then(|t| t.io.as_ref()) {
                if io.read_into(&mut this.buf).is_ok() {
                    let c = parse_io(&this.buf);
                    out.read_bytes += c.read_bytes;
                    out.write_bytes += c.write_bytes;
                    out.rchar += c.rchar;
                    out.wchar += c.wchar;
                }
            }
            if full {
                // Slow tier only: smaps_rollup holds the target's mmap lock and costs ~12 ms per GB of RSS.
                if let Ok(status) = this.fs.read_status(pid) {
                    swap += parse_kb_field(&status, "VmSwap").unwrap_or(0);
                }
                if let Ok(rollup) = this.fs.read_smaps_rollup(pid) {
                    pss += parse_kb_field(&rollup, "Pss").unwrap_or(0);
                }
            }
        };

        match self.cgroup.clone() {
            Some(cg) => {
                for pid in read_procs_recursive(&cg)? {
                    if let Some(stat) = self.read_tracked(pid) {
                        visit(self, &stat, pid);
                    }
                }
            }
            None => {
                let mut seen: HashSet<i32> = HashSet::new();
                let mut stack = vec![self.root_pid];
                // A process seen before keeps belonging to the job while its identity holds, even after its parent
                // exits and it is re-parented away from the tree (a daemonising payload).
                let known: Vec<i32> = self.tracked.keys().copied().collect();
                stack.extend(known);
                while let Some(pid) = stack.pop() {
                    if !seen.insert(pid) {
                        continue;
                    }
                    let Some(stat) = self.read_tracked(pid) else { continue };
                    visit(self, &stat, pid);
                    self.push_children(pid, stat.num_threads, &mut stack);
                }
            }
        }
        let generation = self.generation;
        self.tracked.retain(|_, t| t.generation == generation);

        out.pids.sort_unstable();
        out.nprocs = out.pids.len() as u64;
        out.utime_s = utime as f64 / self.ticks;
        out.stime_s = stime as f64 / self.ticks;
        out.cpu_time_s = (utime + stime) as f64 / self.ticks;
        out.children_cpu_s = children as f64 / self.ticks;
        if full {
            out.swap_bytes = Some(swap);
            out.pss_bytes = Some(pss);
        }
        Ok(out)
    }

    /// Read `stat` through the kept descriptor, opening (or reopening, for a reused pid) as needed.
    /// None when the process has gone: that is normal between two reads.
    fn read_tracked(&mut self, pid: i32) -> Option<Stat> {
        if let Some(t) = self.tracked.get_mut(&pid) {
            if t.stat.read_into(&mut self.buf).is_ok() {
                if let Ok(stat) = parse_stat(&self.buf) {
                    if stat.starttime == t.starttime {
                        t.generation = self.generation;
                        return Some(stat);
                    }
                }
            }
            // The kept descriptor points at a dead task (ESRCH) or the pid now names another process.
            self.tracked.remove(&pid);
        }
        let stat_file = KeptFile::open(self.fs.pid_path(pid, "stat")).ok()?;
        stat_file.read_into(&mut self.buf).ok()?;
        let stat = parse_stat(&self.buf).ok()?;
        let io = KeptFile::open(self.fs.pid_path(pid, "io")).ok();
        let children = if self.children_files {
            KeptFile::open(self.fs.root().join(format!("{pid}/task/{pid}/children"))).ok()
        } else {
            None
        };
        self.tracked.insert(
            pid,
            Tracked { starttime: stat.starttime, stat: stat_file, io, children, generation: self.generation },
        );
        Some(stat)
    }

    fn push_children(&mut self, pid: i32, num_threads: u64, stack: &mut Vec<i32>) {
        if !self.children_files {
            self.push_children_by_ppid(pid, stack);
            return;
        }
        if num_threads <= 1 {
            if let Some(kept) = self.tracked.get(&pid).and_then(|t| t.children.as_ref()) {
                if kept.read_into(&mut self.kids).is_ok() {
                    stack.extend(parse_pid_list(&self.kids));
                }
                return;
            }
        }
        stack.extend(self.fs.children(pid, num_threads, &mut self.kids));
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

    #[test]
    fn rejects_bad_arguments() {
        assert!(matches!(TreeSampler::new("/proc", 0, None), Err(NativeError::InvalidArgument(_))));
        assert!(matches!(
            TreeSampler::new("/proc", 1, Some(PathBuf::from("/nonexistent-cgroup"))),
            Err(NativeError::Cgroup { .. })
        ));
    }
}
