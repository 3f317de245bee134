//! Small I/O helpers shared by the readers: whole-file reads and files kept open between samples.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Read a whole file. /proc and /sys files report size 0, so this reads until EOF rather than trusting metadata.
pub fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(4096);
    File::open(path)?.read_to_end(&mut buf)?;
    Ok(buf)
}

pub fn read_string(path: &Path) -> io::Result<String> {
    let bytes = read_file(path)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A file opened once and re-read from offset 0 on every sample. /proc/<pid>/* and cgroup files regenerate their
/// content on each read from 0, so keeping the descriptor saves the path walk and open() of every sample.
#[derive(Debug)]
pub struct KeptFile {
    file: File,
    path: PathBuf,
}

impl KeptFile {
    pub fn open(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        Ok(KeptFile { file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replace the content of `buf` with the file's current content (pread from 0 until EOF).
    pub fn read_into(&self, buf: &mut Vec<u8>) -> io::Result<()> {
        buf.clear();
        let fd = self.file.as_raw_fd();
        loop {
            if buf.capacity() - buf.len() < 1024 {
                buf.reserve(4096);
            }
            let len = buf.len();
            let spare = buf.capacity() - len;
            // SAFETY: the kernel writes at most `spare` bytes into the vector's spare capacity, and only the `n` bytes
            // it wrote are then counted in its length. Reading into spare capacity saves zeroing 4 KB per read.
            let n = unsafe { libc::pread(fd, buf.as_mut_ptr().add(len).cast(), spare, len as libc::off_t) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            // SAFETY: see above; n <= spare.
            unsafe { buf.set_len(len + n) };
            if n == 0 {
                return Ok(());
            }
            // A seq_file (all of /proc and cgroupfs) ends a read early only at its end or when its page-sized buffer
            // is full, and a regular file only at its end: a first read well short of a page and of the room given
            // is the whole file. This saves the read that would return 0, one syscall per file per sample.
            if len == 0 && n < SHORT_READ && n < spare {
                return Ok(());
            }
        }
    }
}

/// A first read shorter than this (and than the room given) is the whole of a /proc, cgroupfs or regular file.
const SHORT_READ: usize = 2048;

pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Clock ticks per second, the unit of utime/stime in /proc/<pid>/stat.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if v > 0 {
        v as u64
    } else {
        100
    }
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 {
        v as u64
    } else {
        4096
    }
}

/// Parse the leading unsigned decimal of `s` (after trimming); None if there is none.
pub fn parse_u64(s: &str) -> Option<u64> {
    s.trim().parse::<u64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn kept_file_rereads_from_start() {
        let dir = std::env::temp_dir().join(format!("gp-util-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f");
        std::fs::write(&p, "hello").unwrap();
        let k = KeptFile::open(p.clone()).unwrap();
        let mut buf = Vec::new();
        k.read_into(&mut buf).unwrap();
        assert_eq!(buf, b"hello");
        let big = "x".repeat(10_000);
        std::fs::File::create(&p).unwrap().write_all(big.as_bytes()).unwrap();
        k.read_into(&mut buf).unwrap();
        assert_eq!(buf.len(), 10_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn kept_file_reads_proc_more_than_once() {
        let k = KeptFile::open(PathBuf::from("/proc/self/stat")).unwrap();
        let mut a = Vec::new();
        k.read_into(&mut a).unwrap();
        let mut b = Vec::new();
        k.read_into(&mut b).unwrap();
        assert!(!a.is_empty() && !b.is_empty());
        assert_eq!(a.split(|c| *c == b' ').next(), b.split(|c| *c == b' ').next());
    }
}
