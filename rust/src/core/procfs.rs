//! Parsing /proc/<pid>/{stat,io,status,smaps_rollup,task/*/children} and finding the processes of a job.
//!
//! Every function takes the procfs root so tests can point it at a fixture tree.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::path::{Path, PathBuf};

use super::error::{NativeError, Result};
use super::util::{read_file, read_string, KeptFile};

/// The fields of /proc/<pid>/stat that gridpilot uses. Times are in clock ticks, rss in pages, vsize in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub minflt: u64,
    pub majflt: u64,
    pub utime: u64,
    pub stime: u64,
    /// CPU of waited-for children (cutime + cstime): a reaped process's time is credited to its parent here.
    pub cutime: u64,
    pub cstime: u64,
    pub num_threads: u64,
    pub starttime: u64,
    pub vsize: u64,
    pub rss_pages: u64,
}

impl Stat {
    /// A zombie (Z) or dead (X) task has exited; only its parent's wait() is missing.
    pub fn has_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parse the text of /proc/<pid>/stat. The command name sits between the first `(` and the *last* `)`: it may
/// itself contain spaces and parentheses (`prctl(PR_SET_NAME)` allows any 15 bytes).
pub fn parse_stat(text: &[u8]) -> Result<Stat> {
    let bad = |detail: &str| NativeError::parse("/proc/<pid>/stat", detail.to_string());
    let open = text.iter().position(|&c| c == b'(').ok_or_else(|| bad("no '(' before the command name"))?;
    let close = text.iter().rposition(|&c| c == b')').ok_or_else(|| bad("no ')' after the command name"))?;
    if close < open {
        return Err(bad("')' before '('"));
    }
    let pid = std::str::from_utf8(&text[..open])
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .ok_or_else(|| bad("pid is not a number"))?;
    let comm = String::from_utf8_lossy(&text[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(&text[close + 1..]).map_err(|_| bad("fields after the command are not text"))?;
    // Field numbers below are those of proc(5); `rest` starts at field 3 (state).
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    if fields.len() < 22 {
        return Err(bad(&format!("only {} fields after the command name, need at least 22", fields.len())));
    }
    let num = |field: usize| -> Result<u64> {
        let s = fields[field - 3];
        s.parse::<u64>()
            .or_else(|_| s.parse::<i64>().map(|v| v.max(0) as u64))
            .map_err(|_| bad(&format!("field {field} is not a number: {s:?}")))
    };
    let int = |field: usize| -> Result<i32> {
        let s = fields[field - 3];
        s.parse::<i32>().map_err(|_| bad(&format!("field {field} is not a number: {s:?}")))
    };
    Ok(Stat {
        pid,
        comm,
        state: fields[0].chars().next().unwrap_or('?'),
        ppid: int(4)?,
        pgrp: int(5)?,
        session: int(6)?,
        minflt: num(10)?,
        majflt: num(12)?,
        utime: num(14)?,
        stime: num(15)?,
        cutime: num(16)?,
        cstime: num(17)?,
        num_threads: num(20)?,
        starttime: num(22)?,
        vsize: num(23)?,
        rss_pages: num(24)?,
    })
}

/// The counters of /proc/<pid>/stat that a sample sums, parsed without allocating: the sampler's hot path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatCounters {
    pub minflt: u64,
    pub majflt: u64,
    pub utime: u64,
    pub stime: u64,
    pub cutime: u64,
    pub cstime: u64,
    pub num_threads: u64,
    pub starttime: u64,
    pub vsize: u64,
    pub rss_pages: u64,
}

/// Parse the counters of /proc/<pid>/stat (see parse_stat for the command name's rules). Negative values read as 0.
pub fn parse_stat_counters(text: &[u8]) -> Result<StatCounters> {
    let bad = |detail: String| NativeError::parse("/proc/<pid>/stat", detail);
    let close = text.iter().rposition(|&c| c == b')').ok_or_else(|| bad("no ')' after the command name".into()))?;
    let mut c = StatCounters::default();
    // Field numbers are those of proc(5); the first after the command is field 3 (state).
    let mut field = 2usize;
    for tok in text[close + 1..].split(|b| b.is_ascii_whitespace()).filter(|t| !t.is_empty()) {
        field += 1;
        let slot = match field {
            10 => &mut c.minflt,
            12 => &mut c.majflt,
            14 => &mut c.utime,
            15 => &mut c.stime,
            16 => &mut c.cutime,
            17 => &mut c.cstime,
            20 => &mut c.num_threads,
            22 => &mut c.starttime,
            23 => &mut c.vsize,
            24 => &mut c.rss_pages,
            _ => continue,
        };
        *slot = parse_counter(tok)
            .ok_or_else(|| bad(format!("field {field} is not a number: {:?}", String::from_utf8_lossy(tok))))?;
        if field == 24 {
            return Ok(c);
        }
    }
    Err(bad(format!("only {} fields after the command name, need at least 22", field.saturating_sub(2))))
}

/// A decimal counter; a negative one (a signed field) reads as 0.
fn parse_counter(tok: &[u8]) -> Option<u64> {
    let (neg, digits) = match tok.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, tok),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(if neg { 0 } else { v })
}

/// The counters of /proc/<pid>/io.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Io {
    pub rchar: u64,
    pub wchar: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
}

pub fn parse_io(text: &[u8]) -> Io {
    let mut io = Io::default();
    for line in text.split(|&c| c == b'\n') {
        let Some(colon) = line.iter().position(|&c| c == b':') else { continue };
        let value = std::str::from_utf8(&line[colon + 1..]).ok().and_then(|s| s.trim().parse::<u64>().ok());
        let Some(value) = value else { continue };
        match &line[..colon] {
            b"rchar" => io.rchar = value,
            b"wchar" => io.wchar = value,
            b"read_bytes" => io.read_bytes = value,
            b"write_bytes" => io.write_bytes = value,
            _ => {}
        }
    }
    io
}

/// A `Key:   123 kB` value of /proc/<pid>/status or smaps_rollup, in bytes.
pub fn parse_kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let mut it = rest.split_ascii_whitespace();
        let n: u64 = it.next()?.parse().ok()?;
        Some(match it.next() {
            Some("kB") | None => n * 1024,
            Some(_) => n,
        })
    })
}

/// Pids in a `children` file: space separated.
pub fn parse_pid_list(text: &[u8]) -> impl Iterator<Item = i32> + '_ {
    text.split(|c| c.is_ascii_whitespace()).filter_map(|t| std::str::from_utf8(t).ok()?.parse::<i32>().ok())
}

/// Reading /proc from a root directory.
#[derive(Debug, Clone)]
pub struct ProcFs {
    root: PathBuf,
}

impl ProcFs {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcFs { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn pid_path(&self, pid: i32, file: &str) -> PathBuf {
        let mut p = self.root.join(pid.to_string());
        if !file.is_empty() {
            p.push(file);
        }
        p
    }

    pub fn read_stat(&self, pid: i32) -> Result<Stat> {
        let path = self.pid_path(pid, "stat");
        let bytes = read_file(&path).map_err(|e| NativeError::from_proc(pid, &path, e))?;
        parse_stat(&bytes)
    }

    /// Children of every thread of `pid`: a thread that forks is the parent, so the main thread's file alone
    /// misses children of other threads. Returns an empty list for a process that has gone.
    pub fn children(&self, pid: i32, num_threads: u64, buf: &mut Vec<u8>) -> Vec<i32> {
        let mut out = Vec::new();
        if num_threads <= 1 {
            if self.read_children_file(pid, pid, buf).is_ok() {
                out.extend(parse_pid_list(buf));
            }
            return out;
        }
        let Ok(tasks) = std::fs::read_dir(self.pid_path(pid, "task")) else { return out };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if self.read_children_file(pid, tid, buf).is_ok() {
                out.extend(parse_pid_list(buf));
            }
        }
        out
    }

    fn read_children_file(&self, pid: i32, tid: i32, buf: &mut Vec<u8>) -> io::Result<()> {
        let path = self.root.join(format!("{pid}/task/{tid}/children"));
        // One read() of a children file returns at most a page; KeptFile::read_into reads until EOF.
        KeptFile::open(path)?.read_into(buf)
    }

    /// Whether the kernel has the task/<tid>/children files (CONFIG_PROC_CHILDREN); checked on our own process.
    pub fn has_children_files(&self) -> bool {
        self.root
            .join("self/task")
            .read_dir()
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| e.path().join("children").exists())
            .unwrap_or(false)
    }

    /// Every numeric entry of the procfs root.
    pub fn all_pids(&self) -> Result<Vec<i32>> {
        let dir = std::fs::read_dir(&self.root).map_err(|e| NativeError::io(&self.root, e))?;
        Ok(dir.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()).collect())
    }

    /// The process's start time (field 22 of stat, clock ticks since boot): with the pid, the identity of a process,
    /// which a pid alone is not once the process has been reaped. None when there is no such process, nor
    /// (`live_only`) when it has exited and waits to be reaped.
    pub fn start_time(&self, pid: i32, live_only: bool) -> Option<u64> {
        let stat = self.read_stat(pid).ok()?;
        (!live_only || !stat.has_exited()).then_some(stat.starttime)
    }

    /// The direct children of `pid`, sorted: every thread's children file, since a child belongs to the thread that
    /// forked it. Empty when the process is gone.
    pub fn direct_children(&self, pid: i32) -> Vec<i32> {
        let mut buf = Vec::with_capacity(4096);
        // u64::MAX threads: read every task's file, without a stat read to learn how many there are.
        let mut out = self.children(pid, u64::MAX, &mut buf);
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The tree under `root_pid` (root included), sorted; see `walk`.
    pub fn tree(&self, root_pid: i32) -> Vec<i32> {
        let mut out = self.walk(root_pid);
        out.sort_unstable();
        out
    }

    /// Every descendant of `pid` (not `pid` itself), each after its parent: the outermost of nested containers
    /// comes before the inner ones. Empty when the process is gone.
    pub fn descendants(&self, pid: i32) -> Vec<i32> {
        let mut out = self.walk(pid);
        if out.first() == Some(&pid) {
            out.remove(0);
        }
        out
    }

    /// The tree under `root_pid`, root first and level by level, found through the children files; when the kernel
    /// lacks them, through the parent pid of every process on the machine. Processes already gone are left out.
    fn walk(&self, root_pid: i32) -> Vec<i32> {
        if !self.has_children_files() {
            return self.walk_by_ppid(root_pid);
        }
        let mut buf = Vec::with_capacity(4096);
        let mut seen = HashSet::new();
        let mut queue = VecDeque::from([root_pid]);
        let mut out = Vec::new();
        while let Some(pid) = queue.pop_front() {
            if !seen.insert(pid) {
                continue;
            }
            let Ok(stat) = self.read_stat(pid) else { continue };
            out.push(pid);
            queue.extend(self.children(pid, stat.num_threads, &mut buf));
        }
        out
    }

    fn walk_by_ppid(&self, root_pid: i32) -> Vec<i32> {
        let stats: Vec<Stat> =
            self.all_pids().unwrap_or_default().into_iter().filter_map(|p| self.read_stat(p).ok()).collect();
        if !stats.iter().any(|s| s.pid == root_pid) {
            return Vec::new();
        }
        let mut out = vec![root_pid];
        let mut seen = HashSet::from([root_pid]);
        // One level per pass: parents can have higher pids than their children after wrap-around, so the order of
        // the listing says nothing.
        let mut level = 0;
        while level < out.len() {
            let parents: HashSet<i32> = out[level..].iter().copied().collect();
            level = out.len();
            for s in &stats {
                if parents.contains(&s.ppid) && seen.insert(s.pid) {
                    out.push(s.pid);
                }
            }
        }
        out
    }

    /// Every process whose session id is `sid`.
    pub fn session_members(&self, sid: i32) -> Vec<Stat> {
        self.all_pids()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| self.read_stat(p).ok())
            .filter(|s| s.session == sid)
            .collect()
    }

    /// The chain of parents of `pid`, nearest first, ending before pid 0.
    pub fn ancestors(&self, pid: i32) -> Vec<i32> {
        let mut out = Vec::new();
        let mut cur = pid;
        for _ in 0..4096 {
            let Ok(stat) = self.read_stat(cur) else { break };
            if stat.ppid <= 0 || out.contains(&stat.ppid) {
                break;
            }
            out.push(stat.ppid);
            cur = stat.ppid;
        }
        out
    }

    pub fn read_status(&self, pid: i32) -> Result<String> {
        let path = self.pid_path(pid, "status");
        read_string(&path).map_err(|e| NativeError::from_proc(pid, &path, e))
    }

    pub fn read_smaps_rollup(&self, pid: i32) -> Result<String> {
        let path = self.pid_path(pid, "smaps_rollup");
        read_string(&path).map_err(|e| NativeError::from_proc(pid, &path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &[u8] = b"4242 (my (weird) prog) S 1 4242 4242 0 -1 4194560 1234 0 5 0 150 30 0 0 20 0 3 0 987654 123456789 2500 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";

    #[test]
    fn stat_comm_with_spaces_and_parentheses() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "my (weird) prog");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.session, 4242);
        assert_eq!(s.minflt, 1234);
        assert_eq!(s.majflt, 5);
        assert_eq!(s.utime, 150);
        assert_eq!(s.stime, 30);
        assert_eq!((s.cutime, s.cstime), (0, 0));
        assert_eq!(s.num_threads, 3);
        assert_eq!(s.starttime, 987654);
        assert_eq!(s.vsize, 123456789);
        assert_eq!(s.rss_pages, 2500);
    }

    #[test]
    fn stat_counters_agree_with_parse_stat() {
        let full = parse_stat(STAT).unwrap();
        let c = parse_stat_counters(STAT).unwrap();
        assert_eq!(
            (c.minflt, c.majflt, c.utime, c.stime, c.cutime, c.cstime),
            (full.minflt, full.majflt, full.utime, full.stime, full.cutime, full.cstime)
        );
        assert_eq!((c.num_threads, c.starttime, c.vsize, c.rss_pages), (3, 987654, 123456789, 2500));
        let negative = b"7 (a) S 1 7 7 0 -1 0 0 0 0 0 1 2 -3 0 20 0 1 0 55 0 0 0\n";
        assert_eq!(parse_stat_counters(negative).unwrap().cutime, 0);
        assert!(parse_stat_counters(b"12 (x) S 1 2 3").is_err());
        assert!(parse_stat_counters(b"7 (a) S 1 7 7 0 -1 0 x 0 0 0 1 2 0 0 20 0 1 0 55 0 0 0").is_err());
        assert!(parse_stat_counters(b"no parens").is_err());
    }

    #[test]
    fn stat_comm_with_closing_paren_and_newline() {
        let text = b"7 (a) b\n) Z 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 55 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.comm, "a) b\n");
        assert!(s.has_exited());
        assert_eq!(s.starttime, 55);
    }

    #[test]
    fn stat_rejects_truncated_text() {
        assert!(parse_stat(b"12 (x) S 1 2 3").is_err());
        assert!(parse_stat(b"no parens here").is_err());
        assert!(parse_stat(b"x) S (").is_err());
        assert!(parse_stat(b"").is_err());
    }

    #[test]
    fn io_counters() {
        let text = b"rchar: 323934931\nwchar: 323929600\nsyscr: 632687\nsyscw: 632675\nread_bytes: 4096\nwrite_bytes: 323932160\ncancelled_write_bytes: 0\n";
        let io = parse_io(text);
        assert_eq!(io, Io { rchar: 323934931, wchar: 323929600, read_bytes: 4096, write_bytes: 323932160 });
        assert_eq!(parse_io(b""), Io::default());
    }

    #[test]
    fn kb_fields() {
        let status = "Name:\tbash\nVmSwap:\t    1024 kB\nThreads:\t1\n";
        assert_eq!(parse_kb_field(status, "VmSwap"), Some(1024 * 1024));
        assert_eq!(parse_kb_field(status, "VmRSS"), None);
        let rollup = "00400000-7fff [rollup]\nRss:                5000 kB\nPss:                2500 kB\nPss_Anon:            100 kB\n";
        assert_eq!(parse_kb_field(rollup, "Pss"), Some(2500 * 1024));
    }

    #[test]
    fn pid_lists() {
        assert_eq!(parse_pid_list(b"12 13 14 ").collect::<Vec<_>>(), vec![12, 13, 14]);
        assert_eq!(parse_pid_list(b"").count(), 0);
    }

    #[test]
    #[cfg_attr(qemu_user, ignore = "qemu-user answers /proc/<own pid>/stat itself, with num_threads 0")]
    fn live_tree_of_self_contains_self() {
        let fs = ProcFs::new("/proc");
        let me = std::process::id() as i32;
        assert!(fs.tree(me).contains(&me));
        assert!(!fs.ancestors(me).contains(&me));
        let stat = fs.read_stat(me).unwrap();
        assert!(stat.num_threads >= 1);
        assert!(matches!(fs.read_stat(i32::MAX), Err(NativeError::NoSuchProcess { .. })));
    }

    #[test]
    fn fixture_tree_without_children_files() {
        let root = std::env::temp_dir().join(format!("gp-procfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mk = |pid: i32, ppid: i32| {
            let d = root.join(pid.to_string());
            std::fs::create_dir_all(&d).unwrap();
            let text = format!("{pid} (p{pid}) S {ppid} {pid} {pid} 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 {pid} 0 0 0\n");
            std::fs::write(d.join("stat"), text).unwrap();
        };
        mk(10, 1);
        mk(11, 10);
        mk(12, 11);
        mk(13, 1);
        let fs = ProcFs::new(&root);
        assert!(!fs.has_children_files());
        assert_eq!(fs.tree(10), vec![10, 11, 12]);
        assert_eq!(fs.ancestors(12), vec![11, 10, 1]);
        // A child with a lower pid than its parent (the pids wrapped around) still comes after it.
        mk(5, 12);
        assert_eq!(fs.descendants(10), vec![11, 12, 5]);
        assert_eq!(fs.tree(10), vec![5, 10, 11, 12]);
        assert!(fs.descendants(99).is_empty());
        assert_eq!(fs.start_time(11, true), Some(11));
        std::fs::write(root.join("11/stat"), "11 (p11) Z 10 11 11 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0 11 0 0 0\n").unwrap();
        assert_eq!((fs.start_time(11, false), fs.start_time(11, true)), (Some(11), None));
        assert_eq!(fs.start_time(99, false), None);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    #[cfg_attr(qemu_user, ignore = "qemu-user answers /proc/<own pid>/stat itself, with num_threads 0")]
    fn live_children_and_descendants() {
        let fs = ProcFs::new("/proc");
        let me = std::process::id() as i32;
        let mut sh = std::process::Command::new("sh").arg("-c").arg("sleep 30 & wait").spawn().unwrap();
        let pid = sh.id() as i32;
        let t0 = std::time::Instant::now();
        while fs.direct_children(pid).is_empty() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let grandchild = fs.direct_children(pid);
        let mine = fs.direct_children(me);
        let below = fs.descendants(me);
        if let [g] = grandchild[..] {
            // SAFETY: kill(2) has no memory preconditions. The pid is still the sleep's: sh, alive and waiting for
            // it, has not reaped it.
            unsafe { libc::kill(g, libc::SIGKILL) };
        } else {
            let _ = sh.kill();
        }
        sh.wait().unwrap();
        assert_eq!(grandchild.len(), 1, "{grandchild:?}");
        assert!(mine.contains(&pid), "{mine:?}");
        let (at_sh, at_g) = (below.iter().position(|&p| p == pid), below.iter().position(|&p| p == grandchild[0]));
        assert!(at_sh.is_some() && at_sh < at_g, "{below:?}");
    }
}
