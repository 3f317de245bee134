//! The one error type of the native core. rust/src/py/errors.rs maps it, in one place, to gridpilot.errors.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum NativeError {
    /// The process is gone, or its pid was reused by another process.
    NoSuchProcess { pid: i32 },
    /// The kernel refused to let us read a file or signal a process.
    AccessDenied { pid: Option<i32>, path: PathBuf },
    /// Any other I/O error, with the path it happened on.
    Io { path: PathBuf, source: io::Error },
    /// A file or text that did not have the expected form.
    Parse { what: String, detail: String },
    /// A cgroup operation that cannot work on this directory.
    Cgroup { path: PathBuf, detail: String },
    /// A caller passed something that cannot work.
    InvalidArgument(String),
}

pub type Result<T> = std::result::Result<T, NativeError>;

impl NativeError {
    pub fn io(path: &Path, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::PermissionDenied => NativeError::AccessDenied { pid: None, path: path.to_path_buf() },
            _ => NativeError::Io { path: path.to_path_buf(), source },
        }
    }

    pub fn parse(what: impl Into<String>, detail: impl Into<String>) -> Self {
        NativeError::Parse { what: what.into(), detail: detail.into() }
    }

    /// Reading a file of /proc/<pid> failed: ENOENT and ESRCH mean the process is gone, not a fault.
    pub fn from_proc(pid: i32, path: &Path, source: io::Error) -> Self {
        match source.raw_os_error() {
            Some(libc::ENOENT) | Some(libc::ESRCH) => NativeError::NoSuchProcess { pid },
            Some(libc::EACCES) | Some(libc::EPERM) => {
                NativeError::AccessDenied { pid: Some(pid), path: path.to_path_buf() }
            }
            _ => NativeError::Io { path: path.to_path_buf(), source },
        }
    }
}

impl fmt::Display for NativeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NativeError::NoSuchProcess { pid } => write!(f, "no such process: pid {pid}"),
            NativeError::AccessDenied { pid: Some(pid), path } => {
                write!(f, "access denied to pid {pid} ({})", path.display())
            }
            NativeError::AccessDenied { pid: None, path } => write!(f, "access denied: {}", path.display()),
            NativeError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            NativeError::Parse { what, detail } => write!(f, "cannot parse {what}: {detail}"),
            NativeError::Cgroup { path, detail } => write!(f, "cgroup {}: {detail}", path.display()),
            NativeError::InvalidArgument(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for NativeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NativeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enoent_on_proc_means_gone() {
        let e = NativeError::from_proc(42, Path::new("/proc/42/stat"), io::Error::from_raw_os_error(libc::ENOENT));
        assert!(matches!(e, NativeError::NoSuchProcess { pid: 42 }));
        let e = NativeError::from_proc(42, Path::new("/proc/42/io"), io::Error::from_raw_os_error(libc::EACCES));
        assert!(matches!(e, NativeError::AccessDenied { pid: Some(42), .. }));
    }

    #[test]
    fn display_names_the_path() {
        let e = NativeError::io(Path::new("/x/y"), io::Error::from_raw_os_error(libc::EIO));
        assert!(e.to_string().starts_with("/x/y: "));
    }
}
