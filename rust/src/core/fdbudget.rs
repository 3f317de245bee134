//! How many descriptors the samplers of one process may keep open between samples.
//!
//! A kept descriptor saves a path walk and an open() per file per sample, but every one counts against the
//! process's RLIMIT_NOFILE, which the rest of the process (sockets, pipes, logs) and the samplers' own
//! open-read-close fallback also need. So the samplers of a process share `soft limit - reserve` descriptors: each
//! live sampler may keep an equal share (or less, when given a budget of its own), and a process-wide counter makes
//! sure the sum never passes the limit while shares are being rebalanced. The soft limit is read again at every
//! sample, so raising it (gridpilot.pilot.fdlimit) or lowering it takes effect at the next sample.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Descriptors kept open by every sampler of this process together.
static KEPT: AtomicUsize = AtomicUsize::new(0);
/// Live samplers of this process, among which the descriptors are shared.
static SAMPLERS: AtomicUsize = AtomicUsize::new(0);

/// The soft RLIMIT_NOFILE now (RLIM_INFINITY as u64::MAX).
pub fn soft_nofile() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    // rlim_t is u32 on some 32-bit targets (`make test-arch`).
    #[allow(clippy::unnecessary_cast)]
    let soft = r.rlim_cur as u64;
    soft
}

/// Descriptors left to the rest of the process: half the limit up to 256, at least 16 (0, 1, 2 and a few more).
pub fn reserve_for(soft: u64) -> u64 {
    (soft / 2).clamp(16, 256)
}

/// Descriptors every sampler of a process with this soft limit may keep, together.
pub fn process_limit(soft: u64) -> usize {
    usize::try_from(soft.saturating_sub(reserve_for(soft))).unwrap_or(usize::MAX)
}

/// The three kinds of descriptor a sampler keeps, most useful first. A kept `stat` also pins the process: read
/// after the process has gone it fails with ESRCH, even when the pid already names another process; `children` and
/// `io` cost no more to reopen than stat but prove nothing, so they are the first to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Stat = 0,
    Children = 1,
    Io = 2,
}

/// How many descriptors of each class one sampler keeps, given what it may keep and what its last sample needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quotas {
    pub stat: usize,
    pub children: usize,
    pub io: usize,
}

impl Quotas {
    pub fn of(&self, class: Class) -> usize {
        match class {
            Class::Stat => self.stat,
            Class::Children => self.children,
            Class::Io => self.io,
        }
    }

    /// One stat per process first, then children files (one per thread), then io, until `allowance` is spent.
    /// Stat may always take the whole allowance: a job that grows gets its new processes pinned first, and the
    /// next plan takes the room back from children and io.
    pub fn plan(allowance: usize, procs: usize, children: usize, io: usize) -> Quotas {
        let stats = procs.min(allowance);
        let children = children.min(allowance - stats);
        let io = io.min(allowance - stats - children);
        Quotas { stat: allowance, children, io }
    }
}

/// One sampler's part of the process's descriptors.
#[derive(Debug)]
pub struct Budget {
    /// A limit of this sampler's own (TreeSampler's max_fds), on top of its share of the process's.
    cap: Option<usize>,
    /// Descriptors this sampler holds now.
    held: usize,
    /// What it may hold, as of the last refresh.
    allowance: usize,
    /// What the whole process may hold, as of the last refresh.
    limit: usize,
    /// Set after EMFILE: the process has fewer descriptors than the limit says, so hold no more than this for a while.
    pressure: Option<(usize, u32)>,
}

/// Samples for which a sampler that met EMFILE does not grow again.
const PRESSURE_SAMPLES: u32 = 60;

impl Budget {
    pub fn new(cap: Option<usize>) -> Budget {
        SAMPLERS.fetch_add(1, Ordering::Relaxed);
        let mut b = Budget { cap, held: 0, allowance: 0, limit: 0, pressure: None };
        b.refresh_with(soft_nofile());
        b
    }

    /// Read the soft limit again and recompute this sampler's share. Called at the start of every sample.
    pub fn refresh(&mut self) {
        self.refresh_with(soft_nofile());
    }

    pub fn refresh_with(&mut self, soft: u64) {
        self.limit = process_limit(soft);
        let samplers = SAMPLERS.load(Ordering::Relaxed).max(1);
        let mut allowance = self.limit / samplers;
        if let Some(cap) = self.cap {
            allowance = allowance.min(cap);
        }
        if let Some((held, left)) = self.pressure {
            allowance = allowance.min(held);
            self.pressure = if left > 1 { Some((held, left - 1)) } else { None };
        }
        self.allowance = allowance;
    }

    /// The process ran out of descriptors although the budget had room: hold no more than now, minus a margin,
    /// for the next PRESSURE_SAMPLES samples.
    pub fn under_pressure(&mut self) {
        let held = self.held.saturating_sub(8);
        self.allowance = self.allowance.min(held);
        self.pressure = Some((held, PRESSURE_SAMPLES));
    }

    pub fn allowance(&self) -> usize {
        self.allowance
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Take one descriptor if this sampler's share and the process's limit both have room.
    pub fn try_take(&mut self) -> bool {
        if self.held >= self.allowance {
            return false;
        }
        let limit = self.limit;
        let took = KEPT.fetch_update(Ordering::AcqRel, Ordering::Acquire, |k| (k < limit).then_some(k + 1)).is_ok();
        if took {
            self.held += 1;
        }
        took
    }

    /// A kept descriptor was closed.
    pub fn give_back(&mut self) {
        debug_assert!(self.held > 0);
        if self.held > 0 {
            self.held -= 1;
            KEPT.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Budget {
    fn drop(&mut self) {
        KEPT.fetch_sub(self.held, Ordering::AcqRel);
        SAMPLERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The kept descriptors of every sampler of this process (for tests and diagnostics).
pub fn process_kept() -> usize {
    KEPT.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_leaves_room_for_the_rest_of_the_process() {
        assert_eq!(process_limit(1024), 768);
        assert_eq!(process_limit(256), 128);
        assert_eq!(process_limit(64), 32);
        assert_eq!(process_limit(20), 4);
        assert_eq!(process_limit(10), 0);
        assert_eq!(process_limit(1 << 20), (1 << 20) - 256);
    }

    #[test]
    fn plan_keeps_stat_first_then_children_then_io() {
        // Room for everything.
        assert_eq!(Quotas::plan(1000, 100, 130, 100), Quotas { stat: 1000, children: 130, io: 100 });
        // Room for every stat and some children files: io goes first.
        assert_eq!(Quotas::plan(200, 100, 130, 100), Quotas { stat: 200, children: 100, io: 0 });
        // Not even a stat each: nothing else is kept.
        assert_eq!(Quotas::plan(128, 1000, 1300, 1000), Quotas { stat: 128, children: 0, io: 0 });
        assert_eq!(Quotas::plan(0, 10, 10, 10), Quotas { stat: 0, children: 0, io: 0 });
    }

    // The counters are process-wide and tests run in parallel threads, so one test holds every assertion on them.
    #[test]
    fn samplers_share_the_process_limit() {
        let mut a = Budget::new(None);
        let mut b = Budget::new(Some(10));
        let samplers = SAMPLERS.load(Ordering::Relaxed);
        a.refresh_with(1024);
        b.refresh_with(1024);
        assert!(samplers >= 2);
        assert_eq!(a.allowance(), 768 / samplers);
        assert_eq!(b.allowance(), 10.min(768 / samplers));
        for _ in 0..b.allowance() {
            assert!(b.try_take());
        }
        assert!(!b.try_take(), "a sampler holds no more than its allowance");
        // Other tests' samplers may take and give back descriptors meanwhile, so only a lower bound holds here.
        assert!(process_kept() >= b.allowance());
        // A lower limit shrinks the allowance below what is held: the sampler must shed the difference.
        b.refresh_with(24);
        assert!(b.allowance() < b.held());
        b.give_back();
        // EMFILE: no growth for a while, whatever the limit says.
        a.refresh_with(1024);
        assert!(a.try_take());
        a.under_pressure();
        assert_eq!(a.allowance(), 0);
        assert!(!a.try_take());
        a.refresh_with(1 << 20);
        assert_eq!(a.allowance(), 0);
        for _ in 0..PRESSURE_SAMPLES {
            a.refresh_with(1 << 20);
        }
        assert!(a.allowance() > 0, "pressure wears off");
        drop(a);
        drop(b);
    }
}
