//! Temporary outputs being written (`OUT.tmp` files, `.OUT.tmp-PID` folders), so that an
//! interrupt can remove them before the process ends.
//!
//! Every writer here writes to a temporary name and renames it when complete; a process
//! killed part way leaves the temporary file, which the next write of the same output
//! removes. A command-line tool that catches Ctrl-C calls [`remove_all`] first, so that an
//! interrupted export does not leave gigabytes behind until then.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

static PATHS: Mutex<Vec<(u64, PathBuf)>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A temporary output being written; dropped when the writer is done with it (renamed or
/// removed), after which an interrupt leaves it alone.
#[must_use = "the path is tracked only while this lives"]
pub struct Tracked(u64);

/// The temporary name an output file is written under before it is renamed to `path`
/// (`PATH.tmp`), tracked until the returned guard is dropped.
pub fn temporary_for(path: &Path) -> (PathBuf, Tracked) {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let tracked = track(&tmp);
    (tmp, tracked)
}

/// Tracks `path` (a file or a folder) until the returned guard is dropped.
pub fn track(path: &Path) -> Tracked {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    lock().push((id, path.to_path_buf()));
    Tracked(id)
}

impl Drop for Tracked {
    fn drop(&mut self) {
        lock().retain(|(id, _)| *id != self.0);
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<(u64, PathBuf)>> {
    PATHS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The temporary outputs being written now.
pub fn tracked() -> Vec<PathBuf> {
    lock().iter().map(|(_, p)| p.clone()).collect()
}

/// Removes every temporary output being written (for an interrupt handler: the writers are
/// still running, and the process must end right after); returns those it removed.
pub fn remove_all() -> Vec<PathBuf> {
    remove(&tracked())
}

/// Removes files and folders; returns those it removed. A folder is first renamed out of the
/// way (its writer may be renaming it into place at this moment: whichever rename comes
/// first wins, and a folder already in place is never emptied), then removed, a few times
/// over if a writer adds a file meanwhile.
fn remove(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut trash = p.as_os_str().to_os_string();
            trash.push(".interrupted");
            let trash = PathBuf::from(trash);
            if std::fs::rename(p, &trash).is_err() {
                continue;
            }
            for _ in 0..5 {
                if std::fs::remove_dir_all(&trash).is_ok() || !trash.exists() {
                    break;
                }
            }
            removed.push(p.clone());
        } else if std::fs::remove_file(p).is_ok() {
            removed.push(p.clone());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracked_paths_are_removed_until_released() {
        let d = tempfile::tempdir().unwrap();
        let (f, folder, done) = (
            d.path().join("a.tmp"),
            d.path().join(".b.tmp-1"),
            d.path().join("c.tmp"),
        );
        std::fs::write(&f, b"x").unwrap();
        std::fs::create_dir_all(folder.join("sub")).unwrap();
        std::fs::write(folder.join("sub/t"), b"x").unwrap();
        std::fs::write(&done, b"x").unwrap();
        let (_a, _b) = (track(&f), track(&folder));
        drop(track(&done));
        // Only this test's paths: other tests' writers run in this process meanwhile.
        let mine: Vec<PathBuf> = tracked()
            .into_iter()
            .filter(|p| p.starts_with(d.path()))
            .collect();
        assert_eq!(mine, [f.clone(), folder.clone()]);
        assert_eq!(remove(&mine), mine);
        assert!(!f.exists() && !folder.exists());
        assert!(done.exists(), "released: left alone");
    }
}
