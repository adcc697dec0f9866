//! Whether an output fits on its disk: exports know the bytes they will write before they
//! write any (GGUF headers and safetensors shards are planned from shapes), so a disk too
//! small is one clear error at the start, not a failure part way through a long write.

use std::path::Path;

use crate::error::{ModelError, Result};

/// Bytes free to this user on the file system that holds `dir` (`statvfs`); `None` where it
/// cannot be asked (not Unix, or the call fails).
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // Safety: `path` is a NUL-terminated string and `st` a writable statvfs.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// An error when `bytes` will not fit in the `free` bytes of the disk that holds `dir`.
pub fn check_room(bytes: u64, free: Option<u64>, dir: &Path) -> Result<()> {
    match free {
        Some(free) if bytes > free => Err(ModelError::Input(format!(
            "the output needs {:.1} GB and {} has {:.1} GB free",
            bytes as f64 / 1e9,
            dir.display(),
            free as f64 / 1e9
        ))),
        _ => Ok(()),
    }
}

/// [`check_room`] for `bytes` written at or under `path` (its nearest existing ancestor).
pub fn ensure_room(bytes: u64, path: &Path) -> Result<()> {
    let dir = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.is_dir())
        .unwrap_or(Path::new("."));
    check_room(bytes, free_space(dir), dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's temporary folder has some room and less than an exabyte; an output
    /// larger than the room is refused, naming the folder.
    #[test]
    fn room_on_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_space(dir.path()).expect("statvfs answers on Unix");
        assert!(free > 1_000_000 && free < 1 << 60, "{free}");
        assert!(ensure_room(1000, &dir.path().join("a/b.gguf")).is_ok());
        let e = ensure_room(u64::MAX / 2, &dir.path().join("x.gguf")).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("GB free") && e.contains(&dir.path().display().to_string()),
            "{e}"
        );
        assert!(check_room(10, None, dir.path()).is_ok());
    }
}
