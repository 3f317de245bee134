//! cgroup v2: listing and controlling a job's cgroup (procs, freeze, kill) and sampling its counters.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use super::error::{NativeError, Result};
use super::util::read_string;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_finds_values() {
        let t = "populated 1\nfrozen 0\n";
        assert_eq!(flat_keyed(t, "populated"), Some(1));
        assert_eq!(flat_keyed(t, "frozen"), Some(0));
        assert_eq!(flat_keyed(t, "missing"), None);
    }
}
