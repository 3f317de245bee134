//! Signalling a job's processes safely: SIGTERM, a grace period, SIGKILL, repeated for late forks.
//!
//! A process is its identity (pid, start time), never a bare pid. Each signal goes through a pidfd opened and then
//! checked against the start time seen when the process was listed, so a pid reused in between is never hit.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::cgroup::{events_flag, kill_all, read_procs_recursive, set_frozen, wait_frozen};
use super::error::{NativeError, Result};
use super::procfs::{ProcFs, Stat};

/// What a call to terminate_tree or signal_tree did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KillReport {
    /// Processes the first signal (SIGTERM, or signal_tree's signal) was delivered to.
    pub signalled: Vec<i32>,
    /// Processes that exited after SIGTERM, before any SIGKILL.
    pub terminated: Vec<i32>,
    /// Processes that needed SIGKILL (or were in the cgroup when cgroup.kill was written).
    pub killed: Vec<i32>,
    /// Processes still alive when the rounds ran out.
    pub survivors: Vec<i32>,
    /// Processes the guards would not signal, with the reason.
    pub refused: Vec<(i32, String)>,
    pub elapsed_s: f64,
    pub rounds: u32,
}

/// Where the job's processes are found.
///
/// `root_start` is the root's start time as the caller learnt it while the root was surely its own (a child not yet
/// reaped, a record written when it started): a root pid that now names a process with another start time has been
/// reused, and neither it nor its tree is signalled. Without it, the root's identity is the one it has when the
/// call starts.
#[derive(Debug, Clone)]
pub enum Target {
    /// The tree under a root pid (children files of every thread), plus the root's session when it leads one.
    Tree { root_pid: i32, include_root: bool, root_start: Option<u64> },
    /// Every process in a cgroup v2 directory and its descendants.
    Cgroup { dir: PathBuf, root_pid: Option<i32>, include_root: bool, root_start: Option<u64> },
}

impl Target {
    /// The tree under `root_pid`, the root included, its identity read when the call starts.
    pub fn tree(root_pid: i32) -> Self {
        Target::Tree { root_pid, include_root: true, root_start: None }
    }

    fn root(&self) -> (Option<i32>, Option<u64>) {
        match self {
            Target::Tree { root_pid, root_start, .. } => (Some(*root_pid), *root_start),
            Target::Cgroup { root_pid, root_start, .. } => (*root_pid, *root_start),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KillOptions {
    pub grace: Duration,
    pub rounds: u32,
    /// Interval between checks while waiting for processes to exit.
    pub poll: Duration,
    /// How long to wait for SIGKILLed processes to disappear, per round.
    pub kill_wait: Duration,
    /// Use cgroup.kill where the kernel has it; false takes the path of kernels without it (Linux < 5.14), so tests
    /// can run that path on any kernel.
    pub cgroup_kill_file: bool,
}

impl Default for KillOptions {
    fn default() -> Self {
        KillOptions {
            grace: Duration::from_secs(60),
            rounds: 10,
            poll: Duration::from_millis(10),
            kill_wait: Duration::from_secs(5),
            cgroup_kill_file: true,
        }
    }
}

/// (pid, start time): the identity of a process.
type Ident = (i32, u64);

/// The processes the caller must never signal: itself, its ancestors, its process group and its session.
#[derive(Debug)]
pub struct Guards {
    me: i32,
    ancestors: HashSet<i32>,
    pgrp: i32,
    session: i32,
}

impl Guards {
    pub fn for_caller(fs: &ProcFs) -> Self {
        // SAFETY: getpid, getpgrp and getsid(0) have no preconditions and cannot fail for the caller.
        let (me, pgrp, session) = unsafe { (libc::getpid(), libc::getpgrp(), libc::getsid(0)) };
        let ancestors = fs.ancestors(me).into_iter().collect();
        Guards { me, ancestors, pgrp, session }
    }

    /// Why `stat`'s process must not be signalled, or None when it may be.
    pub fn refusal(&self, stat: &Stat) -> Option<String> {
        let pid = stat.pid;
        if pid <= 1 {
            return Some(format!("pid {pid} is init or invalid"));
        }
        if pid == self.me {
            return Some("the caller itself".into());
        }
        if self.ancestors.contains(&pid) {
            return Some("an ancestor of the caller".into());
        }
        if pid == self.pgrp || stat.pgrp == self.pgrp {
            return Some(format!("in the caller's process group {}", self.pgrp));
        }
        if pid == self.session || stat.session == self.session {
            return Some(format!("in the caller's session {}", self.session));
        }
        None
    }
}

/// Send `signum` to the process only if it still has the start time it was listed with.
/// Returns Ok(false) when it has gone (or its pid was reused), which is not an error.
pub fn signal_identity(fs: &ProcFs, ident: Ident, signum: i32) -> Result<bool> {
    let (pid, starttime) = ident;
    match pidfd_open(pid) {
        Some(Ok(fd)) => {
            // The pidfd pins the process that holds `pid` now; checking the start time after opening it proves
            // that this is the process we listed, and the signal cannot reach a later holder of the pid.
            let same = fs.read_stat(pid).map(|s| s.starttime == starttime && !s.has_exited()).unwrap_or(false);
            let res = if same { pidfd_send_signal(fd, signum, 0) } else { Ok(false) };
            // SAFETY: fd is a descriptor we own and close exactly once.
            unsafe { libc::close(fd) };
            res.map_err(|e| NativeError::from_proc(pid, &fs.pid_path(pid, ""), e))
        }
        Some(Err(_)) => Ok(false), // ESRCH: gone
        None => {
            // No pidfd_open (Linux < 5.3): check right before kill(), the best a pid allows.
            let same = fs.read_stat(pid).map(|s| s.starttime == starttime && !s.has_exited()).unwrap_or(false);
            if !same {
                return Ok(false);
            }
            // SAFETY: kill has no memory-safety preconditions; pid > 1 is guaranteed by the guards.
            delivered(unsafe { libc::kill(pid, signum) } == 0)
                .map_err(|e| NativeError::from_proc(pid, &fs.pid_path(pid, ""), e))
        }
    }
}

/// None when the kernel has no pidfd_open; Some(Err) when the process is gone.
fn pidfd_open(pid: i32) -> Option<std::io::Result<i32>> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd >= 0 {
        return Some(Ok(fd as i32));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOSYS) => None,
        _ => Some(Err(e)),
    }
}

/// `flags` 0: to the pidfd's process, as kill(2).
fn pidfd_send_signal(fd: i32, signum: i32, flags: libc::c_uint) -> std::io::Result<bool> {
    // SAFETY: plain syscall; a null siginfo makes it behave like kill().
    let r =
        unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd, signum, std::ptr::null::<libc::siginfo_t>(), flags) };
    delivered(r == 0)
}

/// What a signalling syscall's result means: sent, or (ESRCH) nobody left to receive it; any other failure is an
/// error. Read right after the call, before anything can overwrite errno.
fn delivered(ok: bool) -> std::io::Result<bool> {
    if ok {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Lists the job's processes round after round, remembering every identity once seen.
struct Lister<'a> {
    fs: &'a ProcFs,
    target: &'a Target,
    guards: Guards,
    /// Identities seen in earlier listings: still members while alive, even when re-parented out of the tree.
    known: HashMap<i32, u64>,
    /// The session the root leads, remembered so its members are found after the root has exited.
    root_session: Option<i32>,
    refused: HashMap<i32, String>,
    /// The root was listed and left alone (include_root false): a cgroup.kill would not spare it.
    spared: bool,
    /// The root's identity; None when it was gone when the call started, or its pid named another process.
    root: Option<Ident>,
    /// The root pid named another process than the caller's (a start time other than the one given): why it was
    /// left alone. Apart from `refused`: it is no member of a cgroup, so it does not stand in cgroup.kill's way.
    stale_root: Option<(i32, String)>,
}

impl<'a> Lister<'a> {
    fn new(fs: &'a ProcFs, target: &'a Target) -> Self {
        let guards = Guards::for_caller(fs);
        let (root_pid, given) = target.root();
        let mut stale_root = None;
        let root_stat = root_pid.filter(|&r| r > 1).and_then(|r| fs.read_stat(r).ok()).filter(|st| match given {
            Some(start) if start != st.starttime => {
                let why = format!("pid {} is another process now (start time {}, not {start})", st.pid, st.starttime);
                stale_root = Some((st.pid, why));
                false
            }
            _ => true,
        });
        let root_session = root_stat.as_ref().filter(|s| s.session == s.pid).map(|s| s.session);
        let root = root_stat.map(|s| (s.pid, s.starttime));
        Lister {
            fs,
            target,
            guards,
            known: HashMap::new(),
            root_session,
            refused: HashMap::new(),
            spared: false,
            root,
            stale_root,
        }
    }

    /// The tree under the root, empty unless the root still is the process it was (zombie or not): a walk from a
    /// reused pid would list a stranger's processes.
    fn root_tree(&self) -> Vec<i32> {
        let Some((pid, start)) = self.root else { return Vec::new() };
        let same = || self.fs.read_stat(pid).map(|s| s.starttime == start).unwrap_or(false);
        if !same() {
            return Vec::new();
        }
        let tree = self.fs.tree(pid);
        // Checked again after the walk: the same start time then means the same process all along, so the children
        // read were its own.
        if same() {
            tree
        } else {
            Vec::new()
        }
    }

    /// The live (not exited) processes of the job that the guards allow.
    fn list(&mut self) -> Result<Vec<Ident>> {
        let (candidates, root_pid, include_root): (Vec<i32>, Option<i32>, bool) = match self.target {
            Target::Tree { root_pid, include_root, .. } => {
                let mut c = self.root_tree();
                // Known members keep their place (and bring their children) only while their identity holds.
                let known: Vec<Ident> = self.known.iter().map(|(p, s)| (*p, *s)).collect();
                for ident in known {
                    if alive(self.fs, ident) {
                        c.extend(self.fs.tree(ident.0));
                    } else {
                        self.known.remove(&ident.0);
                    }
                }
                if let Some(sid) = self.root_session {
                    if sid != self.guards.session {
                        c.extend(self.fs.session_members(sid).into_iter().map(|s| s.pid));
                    }
                }
                (c, Some(*root_pid), *include_root)
            }
            Target::Cgroup { dir, root_pid, include_root, .. } => {
                (read_procs_recursive(dir)?, *root_pid, *include_root)
            }
        };
        let mut out = Vec::new();
        if let Some(r) = root_pid.filter(|&r| r <= 1) {
            // Not a job: pid 1 is init, 0 and negative numbers are process groups to kill(2).
            self.refused.entry(r).or_insert_with(|| format!("pid {r} is init or invalid"));
            return Ok(out);
        }
        let mut seen = HashSet::new();
        for pid in candidates {
            if !seen.insert(pid) {
                continue;
            }
            let Ok(stat) = self.fs.read_stat(pid) else { continue };
            if stat.has_exited() {
                continue;
            }
            if !include_root && Some((pid, stat.starttime)) == self.root {
                self.spared = true;
                continue;
            }
            if let Some(reason) = self.guards.refusal(&stat) {
                self.refused.entry(pid).or_insert(reason);
                continue;
            }
            self.known.insert(pid, stat.starttime);
            out.push((pid, stat.starttime));
        }
        out.sort_unstable();
        Ok(out)
    }

    fn refused(&self) -> Vec<(i32, String)> {
        let mut v: Vec<(i32, String)> = self.refused.iter().map(|(p, r)| (*p, r.clone())).collect();
        v.extend(self.stale_root.iter().filter(|(p, _)| !self.refused.contains_key(p)).cloned());
        v.sort();
        v
    }
}

fn alive(fs: &ProcFs, ident: Ident) -> bool {
    fs.read_stat(ident.0).map(|s| s.starttime == ident.1 && !s.has_exited()).unwrap_or(false)
}

/// Outcome of a wait: the caller's interrupt check asked to stop waiting.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    AllGone,
    TimedOut,
    Interrupted,
}

fn wait_gone(
    fs: &ProcFs,
    idents: &[Ident],
    until: Instant,
    poll: Duration,
    interrupted: &mut dyn FnMut() -> bool,
) -> Wait {
    loop {
        if idents.iter().all(|&i| !alive(fs, i)) {
            return Wait::AllGone;
        }
        if interrupted() {
            return Wait::Interrupted;
        }
        let now = Instant::now();
        if now >= until {
            return Wait::TimedOut;
        }
        thread::sleep(poll.min(until - now));
    }
}

/// SIGTERM every process of the job, wait up to the grace period, SIGKILL what is left, and repeat for processes
/// forked meanwhile, at most `rounds` times. `interrupted` is polled while waiting; when it returns true the grace
/// is cut short and everything left is SIGKILLed at once, so an interrupted caller leaves nothing running.
pub fn terminate(
    fs: &ProcFs,
    target: &Target,
    opts: &KillOptions,
    interrupted: &mut dyn FnMut() -> bool,
) -> Result<KillReport> {
    // The grace counts from when the first round's SIGTERMs have all been sent: signalling thousands of processes
    // on a loaded node took longer than a 2 s grace, and then every process was SIGKILLed before it had been
    // scheduled once after its SIGTERM (a 4,095-process fork bomb at load 17: "0 exited on SIGTERM").
    let start = Instant::now();
    let mut deadline: Option<Instant> = None;
    let mut lister = Lister::new(fs, target);
    let mut report = KillReport::default();
    let mut termed: HashSet<Ident> = HashSet::new();
    let mut killed: HashSet<Ident> = HashSet::new();
    let mut cut_short = false;
    let cgroup_dir = match target {
        Target::Cgroup { dir, .. } => Some(dir.as_path()),
        Target::Tree { .. } => None,
    };

    let mut last: Vec<Ident> = Vec::new();
    while report.rounds < opts.rounds.max(1) {
        let members = lister.list()?;
        last.clone_from(&members);
        if members.is_empty() {
            break;
        }
        report.rounds += 1;
        let in_grace = !cut_short
            && !opts.grace.is_zero()
            && match deadline {
                Some(d) => Instant::now() < d,
                None => true,
            };
        if in_grace {
            for &ident in &members {
                if termed.insert(ident) && signal_identity(fs, ident, libc::SIGTERM)? {
                    report.signalled.push(ident.0);
                    // A stopped (SIGSTOP) process keeps SIGTERM pending until it is continued, so without SIGCONT it
                    // gets no chance at its own cleanup and waits out the grace for SIGKILL. systemd sends SIGCONT
                    // right after the kill signal for the same reason (systemd.kill(5), KillSignal=).
                    signal_identity(fs, ident, libc::SIGCONT)?;
                }
            }
            let until = *deadline.get_or_insert_with(|| Instant::now() + opts.grace);
            match wait_gone(fs, &members, until, opts.poll, interrupted) {
                Wait::Interrupted => cut_short = true,
                Wait::AllGone | Wait::TimedOut => {}
            }
            // Late forks and survivors are picked up by the next round's listing.
            continue;
        }
        // Past the grace (or cut short): SIGKILL everything, through cgroup.kill when there is one.
        let mut emptied: Option<&Path> = None;
        let members = match (cgroup_dir, lister.refused.is_empty() && !lister.spared) {
            // cgroup.kill cannot spare a refused member (or a root the caller asked to keep), and freezing would stop
            // the refused (possibly the caller): the cgroup is used only when nothing in it is to be spared.
            (Some(dir), true) => {
                let mut listed = members.clone();
                let by_kill_file = kill_cgroup(dir, opts.cgroup_kill_file, &mut || {
                    // Frozen: this listing is complete, and nothing in it forks before the SIGKILL reaches it.
                    listed = lister.list()?;
                    for &ident in &listed {
                        signal_identity(fs, ident, libc::SIGKILL)?;
                    }
                    Ok(())
                })?;
                if by_kill_file {
                    emptied = Some(dir);
                }
                listed
            }
            _ => {
                for &ident in &members {
                    signal_identity(fs, ident, libc::SIGKILL)?;
                }
                members
            }
        };
        killed.extend(members.iter().copied());
        let until = Instant::now() + opts.kill_wait;
        match emptied {
            // The kernel says when the last member has exited (cgroup.events populated 0): one small read per step
            // instead of every member's stat, so the step can be short. The next round's listing confirms it.
            Some(dir) => wait_unpopulated(dir, until),
            None => {
                wait_gone(fs, &members, until, opts.poll, &mut || false);
            }
        }
    }
    let final_members = if report.rounds >= opts.rounds.max(1) { lister.list()? } else { last };
    let survivors: HashSet<Ident> = final_members.into_iter().filter(|&i| alive(fs, i)).collect();

    report.terminated = termed.iter().filter(|i| !killed.contains(i) && !survivors.contains(i)).map(|i| i.0).collect();
    report.killed = killed.iter().filter(|i| !survivors.contains(i)).map(|i| i.0).collect();
    report.survivors = survivors.iter().map(|i| i.0).collect();
    report.refused = lister.refused();
    for v in [&mut report.signalled, &mut report.terminated, &mut report.killed, &mut report.survivors] {
        v.sort_unstable();
        v.dedup();
    }
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Freeze so nothing forks during the kill, write cgroup.kill (or, where the kernel has none or `use_kill_file` is
/// false, SIGKILL each member through `kill_each` while the cgroup is still frozen), then thaw. A fatal signal ends
/// a frozen cgroup v2 task (Documentation/admin-guide/cgroup-v2.rst, "cgroup.freeze"), so killing before the thaw
/// loses nothing, and no member can fork between being listed and being killed; thawing before the per-member
/// SIGKILL, as this did before, let it (only the next round caught such a child).
/// Whether it used cgroup.kill (else it froze the cgroup, ran `kill_each`, and thawed it).
fn kill_cgroup(dir: &Path, use_kill_file: bool, kill_each: &mut dyn FnMut() -> Result<()>) -> Result<bool> {
    // cgroup.kill needs no freeze: the kernel marks the cgroup while it kills, and a fork racing with it is killed
    // too (kernel/cgroup/cgroup.c, CGRP_KILL checked in cgroup_post_fork). Freezing 1,000 processes first, waiting
    // for it and thawing them cost more than the kill (145 ms against the kill alone's 62 ms, README).
    if use_kill_file && kill_all(dir)? {
        return Ok(true);
    }
    let froze = set_frozen(dir, true)?;
    if froze {
        wait_frozen(dir, Duration::from_millis(500));
    }
    let done = kill_each();
    if froze {
        set_frozen(dir, false)?;
    }
    done.map(|_| false)
}

/// Wait until cgroup.events says the cgroup (and its descendants) has no live process, or `until`. A cgroup whose
/// events cannot be read is left to the caller's next listing.
fn wait_unpopulated(dir: &Path, until: Instant) {
    while events_flag(dir, "populated") == Some(true) && Instant::now() < until {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Send one signal to every process of the job, with the same guards as terminate.
pub fn signal_all(fs: &ProcFs, target: &Target, signum: i32) -> Result<KillReport> {
    if !(1..=64).contains(&signum) {
        return Err(NativeError::InvalidArgument(format!("signal number must be 1..64, got {signum}")));
    }
    let start = Instant::now();
    let mut lister = Lister::new(fs, target);
    let mut report = KillReport { rounds: 1, ..Default::default() };
    for ident in lister.list()? {
        if signal_identity(fs, ident, signum)? {
            report.signalled.push(ident.0);
        }
    }
    report.refused = lister.refused();
    report.elapsed_s = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Send `signum` to one process, `pid`, only while it is the process the caller means: the one started at `start`
/// (clock ticks since boot, as /proc/<pid>/stat says) when given, else the one holding the pid now. With `group`,
/// to the process group it leads instead (as killpg(2)), a zombie leader included: its unreaped pid still names
/// the group. Ok(false) when the process has gone, its pid names another process now, or (`group`) it leads no
/// group. Neither the caller nor its own group is signalled.
pub fn signal_process(fs: &ProcFs, pid: i32, start: Option<u64>, signum: i32, group: bool) -> Result<bool> {
    if !(1..=64).contains(&signum) {
        return Err(NativeError::InvalidArgument(format!("signal number must be 1..64, got {signum}")));
    }
    // SAFETY: getpid and getpgrp have no preconditions and cannot fail.
    let (me, my_group) = unsafe { (libc::getpid(), libc::getpgrp()) };
    if pid <= 1 || pid == me || (group && pid == my_group) {
        return Err(NativeError::InvalidArgument(format!("refusing to signal pid {pid}: init, invalid or the caller")));
    }
    let Ok(stat) = fs.read_stat(pid) else { return Ok(false) };
    let start = start.unwrap_or(stat.starttime);
    if !group {
        return signal_identity(fs, (pid, start), signum);
    }
    let leads = |s: &Stat| s.starttime == start && s.pgrp == pid;
    match pidfd_open(pid) {
        Some(Ok(fd)) => {
            // The pidfd pins the leader, and the kernel sends to the group of that very process (Linux >= 6.9);
            // older kernels refuse the flag, and get killpg right after the check below.
            let res = if fs.read_stat(pid).map(|s| leads(&s)).unwrap_or(false) {
                match pidfd_send_signal(fd, signum, PIDFD_SIGNAL_PROCESS_GROUP) {
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => killpg(pid, signum),
                    other => other,
                }
            } else {
                Ok(false)
            };
            // SAFETY: fd is a descriptor we own and close exactly once.
            unsafe { libc::close(fd) };
            res.map_err(|e| NativeError::from_proc(pid, &fs.pid_path(pid, ""), e))
        }
        Some(Err(_)) => Ok(false),
        None => {
            if !fs.read_stat(pid).map(|s| leads(&s)).unwrap_or(false) {
                return Ok(false);
            }
            killpg(pid, signum).map_err(|e| NativeError::from_proc(pid, &fs.pid_path(pid, ""), e))
        }
    }
}

/// linux/pidfd.h: pidfd_send_signal to the process group of the pidfd's process (Linux >= 6.9).
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

fn killpg(pgid: i32, signum: i32) -> std::io::Result<bool> {
    // SAFETY: killpg has no memory-safety preconditions; pgid > 1 and not the caller's group was checked.
    delivered(unsafe { libc::killpg(pgid, signum) } == 0)
}

/// SIGKILL every process in the cgroup `dir` and below, without waiting for them to exit: one write to cgroup.kill
/// where the kernel has it (Linux >= 5.14), else freeze, SIGKILL each member by its identity, thaw (a cgroup v1
/// directory, which has neither file, gets the SIGKILLs alone). Unlike `terminate`, which spares the caller's
/// session, every member goes: the cgroup is the job. Refused when the caller is a member. Returns whether
/// cgroup.kill did it.
pub fn kill_members(fs: &ProcFs, dir: &Path) -> Result<bool> {
    let cgroup_err = |detail: String| NativeError::Cgroup { path: dir.to_path_buf(), detail };
    // SAFETY: getpid has no preconditions and cannot fail.
    let me = unsafe { libc::getpid() };
    let kill = || -> Result<bool> {
        if read_procs_recursive(dir)?.contains(&me) {
            return Err(cgroup_err(format!("refusing to kill its members: this process ({me}) is inside it")));
        }
        kill_cgroup(dir, true, &mut || {
            for pid in read_procs_recursive(dir)? {
                let Some(start) = fs.start_time(pid, true) else { continue };
                signal_identity(fs, (pid, start), libc::SIGKILL)
                    .map_err(|e| cgroup_err(format!("cannot kill pid {pid}: {e}")))?;
            }
            Ok(())
        })
    };
    kill().map_err(|e| match e {
        NativeError::Cgroup { .. } => e,
        other => cgroup_err(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    fn fs() -> ProcFs {
        ProcFs::new("/proc")
    }

    fn spawn_session(script: &str) -> std::process::Child {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        // SAFETY: setsid is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    #[test]
    fn guards_refuse_caller_and_init() {
        let fs = fs();
        let g = Guards::for_caller(&fs);
        let me = fs.read_stat(std::process::id() as i32).unwrap();
        assert!(g.refusal(&me).is_some());
        let init = Stat { pid: 1, ..Default::default() };
        assert!(g.refusal(&init).unwrap().contains("init"));
        if let Some(&parent) = fs.ancestors(me.pid).first() {
            let p = fs.read_stat(parent).unwrap();
            assert!(g.refusal(&p).is_some());
        }
    }

    #[test]
    fn terminates_a_tree_in_its_own_session() {
        let mut child = spawn_session("sleep 30 & sleep 30 & wait");
        let pid = child.id() as i32;
        // Give the shell time to fork its two children.
        let t0 = Instant::now();
        while fs().tree(pid).len() < 3 && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(10));
        }
        let target = Target::tree(pid);
        let opts = KillOptions { grace: Duration::from_secs(5), ..Default::default() };
        let report = terminate(&fs(), &target, &opts, &mut || false).unwrap();
        child.wait().unwrap();
        assert!(report.survivors.is_empty(), "{report:?}");
        assert!(report.signalled.contains(&pid));
        assert_eq!(report.signalled.len(), 3, "{report:?}");
        assert!(report.refused.is_empty());
    }

    #[test]
    fn a_reused_identity_is_not_signalled() {
        let mut child = spawn_session("sleep 30");
        let pid = child.id() as i32;
        let st = fs().read_stat(pid).unwrap().starttime;
        assert!(!signal_identity(&fs(), (pid, st + 1), libc::SIGKILL).unwrap());
        assert!(signal_identity(&fs(), (pid, st), libc::SIGKILL).unwrap());
        child.wait().unwrap();
    }

    /// A fresh cgroup v2 child of this test process's own cgroup, or None (saying why) where there is none to write.
    fn own_child_cgroup(name: &str) -> Option<PathBuf> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?.trim_start_matches('/').to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        // Field 4 is the mount's root in the hierarchy; only a mount of the whole hierarchy ("/") maps our path.
        let mount = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|&x| x == "-")?;
            (f.get(sep + 1) == Some(&"cgroup2") && f[3] == "/").then(|| f[4].to_string())
        })?;
        let dir = PathBuf::from(mount).join(rel).join(format!("{name}-{}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                eprintln!("no writable cgroup v2 for this test ({}: {e}); not run", dir.display());
                None
            }
        }
    }

    #[test]
    fn without_cgroup_kill_each_member_is_killed_while_frozen() {
        let Some(dir) = own_child_cgroup("gridpilot-rust-test-kill") else { return };
        let procs = dir.join("cgroup.procs");
        // A shell that keeps forking and ignores SIGTERM: a member listed before the freeze forks more after it.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("trap '' TERM; i=0; while [ $i -lt 400 ]; do sleep 60 & i=$((i+1)); done; wait");
        let procs_file = procs.clone();
        // SAFETY: setsid and a write(2) to a file between fork and exec. Its own session: the guards refuse the
        // caller's session, and the cgroup path is taken only when nothing in the cgroup is refused.
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                std::fs::write(&procs_file, "0")
            });
        }
        let mut child = cmd.spawn().unwrap();
        let t0 = Instant::now();
        while read_procs_recursive(&dir).unwrap().len() < 50 && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(1));
        }
        let target = Target::Cgroup { dir: dir.clone(), root_pid: None, include_root: true, root_start: None };
        let opts = KillOptions { grace: Duration::ZERO, cgroup_kill_file: false, ..Default::default() };
        let report = terminate(&fs(), &target, &opts, &mut || false).unwrap();
        child.wait().unwrap();
        let left = read_procs_recursive(&dir).unwrap();
        let frozen = std::fs::read_to_string(dir.join("cgroup.events")).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert!(left.is_empty() && report.survivors.is_empty(), "{left:?} {report:?}");
        // Listed and killed while frozen: the shell could not fork anything the one round missed.
        assert_eq!(report.rounds, 1, "{report:?}");
        assert!(report.killed.len() >= 50, "{report:?}");
        assert!(frozen.contains("frozen 0"), "left frozen: {frozen}");
    }

    /// Wait until `pid` has exited (a zombie counts) or 10 s have passed.
    fn wait_exited(pid: i32) -> bool {
        let t0 = Instant::now();
        while fs().start_time(pid, true).is_some() {
            if t0.elapsed() > Duration::from_secs(10) {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
        true
    }

    #[test]
    fn a_root_with_another_start_time_is_refused_with_its_tree() {
        let mut child = spawn_session("sleep 30 & sleep 30 & wait");
        let pid = child.id() as i32;
        let t0 = Instant::now();
        while fs().tree(pid).len() < 3 && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(10));
        }
        let st = fs().read_stat(pid).unwrap().starttime;
        // As if `pid` had been reaped and handed to a new process: the start time the caller knows is not its.
        let stale = Target::Tree { root_pid: pid, include_root: true, root_start: Some(st + 1) };
        let opts = KillOptions { grace: Duration::from_secs(5), ..Default::default() };
        let report = terminate(&fs(), &stale, &opts, &mut || false).unwrap();
        let signalled = signal_all(&fs(), &stale, libc::SIGKILL).unwrap();
        let alive_after = fs().tree(pid).len();
        let right = Target::Tree { root_pid: pid, include_root: true, root_start: Some(st) };
        let done = terminate(&fs(), &right, &opts, &mut || false).unwrap();
        child.wait().unwrap();
        assert!(report.signalled.is_empty() && report.killed.is_empty(), "{report:?}");
        assert_eq!(report.refused.len(), 1, "{report:?}");
        assert_eq!(report.refused[0].0, pid);
        assert!(report.refused[0].1.contains("another process"), "{report:?}");
        assert!(signalled.signalled.is_empty() && signalled.refused.len() == 1, "{signalled:?}");
        assert_eq!(alive_after, 3);
        assert_eq!(done.signalled.len(), 3, "{done:?}");
        assert!(done.refused.is_empty() && done.survivors.is_empty(), "{done:?}");
    }

    #[test]
    fn a_stale_root_does_not_keep_cgroup_kill_from_a_cgroup() {
        // The root is no member here: only its spared or refused members keep cgroup.kill from being used, and the
        // listing from the cgroup goes on without the root.
        let dir = std::env::temp_dir().join(format!("gp-stale-root-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        let mut child = spawn_session("sleep 30");
        let pid = child.id() as i32;
        let st = fs().read_stat(pid).unwrap().starttime;
        let t = Target::Cgroup { dir: dir.clone(), root_pid: Some(pid), include_root: false, root_start: Some(st + 7) };
        let report = signal_all(&fs(), &t, libc::SIGKILL).unwrap();
        let procfs = fs();
        let mut lister = Lister::new(&procfs, &t);
        let listed = lister.list().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(report.signalled.is_empty(), "{report:?}");
        assert_eq!(report.refused.iter().map(|r| r.0).collect::<Vec<_>>(), vec![pid]);
        assert!(listed.is_empty() && lister.refused.is_empty() && !lister.spared && lister.root.is_none());
    }

    #[test]
    fn signal_process_checks_the_identity() {
        let mut child = spawn_session("sleep 30");
        let pid = child.id() as i32;
        let st = fs().read_stat(pid).unwrap().starttime;
        let stale = signal_process(&fs(), pid, Some(st + 1), libc::SIGKILL, false).unwrap();
        let stale_group = signal_process(&fs(), pid, Some(st + 1), libc::SIGKILL, true).unwrap();
        let still = fs().start_time(pid, true).is_some();
        let sent = signal_process(&fs(), pid, Some(st), libc::SIGKILL, false).unwrap();
        child.wait().unwrap();
        assert!(!stale && !stale_group && still && sent);
        // Gone (reaped): nothing to signal, not an error.
        assert!(!signal_process(&fs(), pid, Some(st), libc::SIGKILL, false).unwrap());
        assert!(!signal_process(&fs(), pid, None, libc::SIGKILL, false).unwrap());
        let me = std::process::id() as i32;
        for bad in [0, 1, -5, me] {
            assert!(matches!(
                signal_process(&fs(), bad, None, libc::SIGTERM, false),
                Err(NativeError::InvalidArgument(_))
            ));
        }
        assert!(matches!(signal_process(&fs(), pid, None, 0, false), Err(NativeError::InvalidArgument(_))));
    }

    #[test]
    fn signal_process_reaches_the_group_of_a_leader_only() {
        let mut child = spawn_session("sleep 30 & wait");
        let pid = child.id() as i32;
        let t0 = Instant::now();
        while fs().tree(pid).len() < 2 && t0.elapsed() < Duration::from_secs(5) {
            thread::sleep(Duration::from_millis(10));
        }
        let kids = fs().direct_children(pid);
        // The sleep is in the group but leads none.
        let not_leader = signal_process(&fs(), kids[0], None, libc::SIGKILL, true).unwrap();
        let sent = signal_process(&fs(), pid, None, libc::SIGKILL, true).unwrap();
        let sleep_gone = wait_exited(kids[0]);
        child.wait().unwrap();
        assert!(!not_leader && sent && sleep_gone, "{kids:?}");
    }

    #[test]
    fn kill_members_refuses_a_cgroup_holding_the_caller() {
        let dir = std::env::temp_dir().join(format!("gp-kill-members-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("cgroup.procs"), "").unwrap();
        std::fs::write(dir.join("sub/cgroup.procs"), format!("{}\n", std::process::id())).unwrap();
        std::fs::write(dir.join("cgroup.kill"), "").unwrap();
        let res = kill_members(&fs(), &dir);
        let kill_file = std::fs::read_to_string(dir.join("cgroup.kill")).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(&res, Err(NativeError::Cgroup { detail, .. }) if detail.contains("this process")), "{res:?}");
        assert_eq!(kill_file, "");
    }

    #[test]
    fn kill_members_kills_every_member_of_a_real_cgroup() {
        let Some(dir) = own_child_cgroup("gridpilot-rust-test-members") else { return };
        let procs = dir.join("cgroup.procs");
        // In the caller's session: terminate would refuse it, the cgroup's own kill does not.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("sleep 60 & sleep 60 & wait");
        // SAFETY: a write(2) to a file between fork and exec.
        unsafe { cmd.pre_exec(move || std::fs::write(&procs, "0")) };
        let mut child = cmd.spawn().unwrap();
        let t0 = Instant::now();
        while read_procs_recursive(&dir).unwrap().len() < 3 && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
        let res = kill_members(&fs(), &dir);
        let status = child.wait().unwrap();
        let t0 = Instant::now();
        while !read_procs_recursive(&dir).unwrap().is_empty() && t0.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(5));
        }
        let left = read_procs_recursive(&dir).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert!(res.is_ok(), "{res:?}");
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(libc::SIGKILL));
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn bad_signal_number_is_rejected() {
        let t = Target::tree(999_999);
        assert!(matches!(signal_all(&fs(), &t, 0), Err(NativeError::InvalidArgument(_))));
    }
}
