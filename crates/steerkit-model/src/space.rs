//! Whether an output fits on its disk: exports know the bytes they will write before they
//! write any (a GGUF file's header and tensor data, a folder's tensors; a margin covers a
//! folder's headers and tokenizer files), so a disk too small is one clear error at the
//! start, not a failure part way through a long write.

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
        // A file system that does not report its size (some FUSE mounts answer zeros) has
        // no figure.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
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

/// The environment variable that skips [`ensure_room`].
pub const SKIP_SPACE_CHECK: &str = "STEERKIT_SKIP_SPACE_CHECK";

/// Bytes for people: MB below a gigabyte, GB above.
fn size(bytes: u64) -> String {
    match bytes < 1_000_000_000 {
        true => format!("{:.1} MB", bytes as f64 / 1e6),
        false => format!("{:.2} GB", bytes as f64 / 1e9),
    }
}

/// An error when `bytes` will not fit in the `free` bytes of the disk that holds `dir`.
pub fn check_room(bytes: u64, free: Option<u64>, dir: &Path) -> Result<()> {
    match free {
        Some(free) if bytes > free => Err(ModelError::Disk(format!(
            "the output needs {} and {} has {} free; free some space or write elsewhere (or set {SKIP_SPACE_CHECK}=1 if that figure is wrong)",
            size(bytes),
            dir.display(),
            size(free)
        ))),
        _ => Ok(()),
    }
}

/// [`check_room`] for `bytes` written at or under `path` (its nearest existing folder), unless
/// [`SKIP_SPACE_CHECK`] is `1`.
pub fn ensure_room(bytes: u64, path: &Path) -> Result<()> {
    if std::env::var(SKIP_SPACE_CHECK).is_ok_and(|v| v == "1") {
        return Ok(());
    }
    let dir = path
        .ancestors()
        .find(|p| !p.as_os_str().is_empty() && p.is_dir())
        .unwrap_or(Path::new("."));
    let shown = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    check_room(bytes, free_space(dir), &shown)
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
        let e = ensure_room(u64::MAX / 2, &dir.path().join("a/b/x.gguf")).unwrap_err();
        let e = e.to_string();
        let shown = dir.path().canonicalize().unwrap().display().to_string();
        assert!(
            e.contains("GB free") && e.contains(&format!("{shown} has")),
            "{e}"
        );
        assert!(
            e.starts_with("not enough disk space: the output needs"),
            "{e}"
        );
        assert!(check_room(10, None, dir.path()).is_ok());
        let e = check_room(2_500_000, Some(400_000), dir.path()).unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("needs 2.5 MB") && e.contains("has 0.4 MB free"),
            "{e}"
        );
    }
}
