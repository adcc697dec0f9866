//! Temporary outputs being written (`OUT.tmp` files, `.OUT.tmp-PID` folders), so that an
//! interrupt can remove them before the process ends.
//!
//! Every writer here writes to a temporary name and renames it when complete
//! ([`write_through`] for a file); a process killed part way leaves the temporary file, which
//! the next write of the same output reuses. A command-line tool that catches Ctrl-C calls
//! [`remove_all`] first, so that an interrupted export does not leave gigabytes behind until
//! then.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

type Registry = Vec<(u64, PathBuf)>;

static PATHS: Mutex<Registry> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

/// A temporary output being written; dropped when the writer is done with it (renamed or
/// removed), after which an interrupt leaves it alone.
#[must_use = "the path is tracked only while this lives"]
pub struct Tracked(u64);

/// The temporary name an output file is written under before it is renamed to `path`
/// (`PATH.tmp`); [`create_file`] makes it.
pub fn temporary_for(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// Opens the temporary file `tmp` for writing, empty, tracked until the guard is dropped.
///
/// It is made while the registry is held, so that an interrupt ([`remove_all`]) either sees
/// it or comes first and it is never made: made after a handler's look, it would outlive the
/// process. It is locked (an advisory lock, released when the file is closed), so that a
/// second process writing the same output is refused, not allowed to share the file or
/// remove it; a file left by a killed process holds no lock and is reused.
pub fn create_file(tmp: &Path) -> std::io::Result<(File, Tracked)> {
    let mut paths = lock();
    // A few tries: the file opened may be renamed into place by its writer between the open
    // and the lock (then it is that writer's finished output, not a temporary file).
    for _ in 0..5 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(tmp)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    "being written by another process (its temporary file is locked)",
                ))
            }
            // A file system without locks: written unlocked, as before.
            Err(std::fs::TryLockError::Error(_)) => {}
        }
        if !same_file(&file, tmp) {
            continue;
        }
        if let Err(e) = file.set_len(0) {
            let _ = std::fs::remove_file(tmp);
            return Err(e);
        }
        return Ok((file, register(&mut paths, tmp)));
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ResourceBusy,
        "being written by another process (its temporary file keeps being renamed)",
    ))
}

/// Writes the file `out` through its temporary file ([`temporary_for`], made by
/// [`create_file`]): `write` fills it (given the file and its path), then it is renamed to
/// `out`, over an existing file when `replace`, else never over one written meanwhile
/// ([`rename_new`]); on any error the temporary file is removed. The file stays open, and so
/// locked, until it is renamed or removed, so that no second writer takes it over between.
/// `io` turns an I/O error at a path into the caller's error.
pub fn write_through<E>(
    out: &Path,
    replace: bool,
    io: impl Fn(&Path, std::io::Error) -> E,
    write: impl FnOnce(&File, &Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temporary_for(out);
    let (file, _tracked) = create_file(&tmp).map_err(|e| io(out, e))?;
    let res = write(&file, &tmp).and_then(|()| {
        let moved = if replace {
            std::fs::rename(&tmp, out)
        } else {
            rename_new(&tmp, out)
        };
        moved.map_err(|e| io(out, e))
    });
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    drop(file);
    res
}

/// Whether `file` is the file at `path` now.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), std::fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        true
    }
}

/// Moves the finished temporary file `tmp` to `out`, which must not exist: an output another
/// process wrote there meanwhile is not replaced (a hard link, which fails on an existing
/// name, then the temporary name removed; a rename where the file system has no links).
pub fn rename_new(tmp: &Path, out: &Path) -> std::io::Result<()> {
    let exists = || {
        std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "written by another process meanwhile; this one is not kept",
        )
    };
    match std::fs::hard_link(tmp, out) {
        Ok(()) => std::fs::remove_file(tmp),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists()),
        Err(_) if out.exists() => Err(exists()),
        Err(_) => std::fs::rename(tmp, out),
    }
}

/// Makes the temporary folder `tmp` (and its parents), tracked until the guard is dropped;
/// made while the registry is held, as [`create_file`] says.
pub fn create_dir(tmp: &Path) -> std::io::Result<Tracked> {
    let mut paths = lock();
    std::fs::create_dir_all(tmp)?;
    Ok(register(&mut paths, tmp))
}

fn register(paths: &mut Registry, path: &Path) -> Tracked {
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    paths.push((id, path.to_path_buf()));
    Tracked(id)
}

impl Drop for Tracked {
    fn drop(&mut self) {
        lock().retain(|(id, _)| *id != self.0);
    }
}

fn lock() -> MutexGuard<'static, Registry> {
    PATHS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The temporary outputs being written now.
pub fn tracked() -> Vec<PathBuf> {
    paths_of(&lock())
}

fn paths_of(registry: &Registry) -> Vec<PathBuf> {
    registry.iter().map(|(_, p)| p.clone()).collect()
}

/// The registry held by [`remove_all`]: until it is dropped, no writer can make a temporary
/// output (nor finish with one).
#[must_use = "new temporary outputs can be made once this is dropped"]
pub struct Held(#[allow(dead_code)] MutexGuard<'static, Registry>);

/// Removes every temporary output being written, for an interrupt handler: the writers are
/// still running, and the process must end right after, holding the returned guard so that
/// none of them makes a new one meanwhile. Returns those it removed.
pub fn remove_all() -> (Vec<PathBuf>, Held) {
    let paths = lock();
    (remove(&paths_of(&paths)), Held(paths))
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
        let (_file, _a) = create_file(&f).unwrap();
        let _b = create_dir(&folder).unwrap();
        std::fs::create_dir(folder.join("sub")).unwrap();
        std::fs::write(folder.join("sub/t"), b"x").unwrap();
        drop(create_file(&done).unwrap());
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

    /// While an interrupt holds the registry, a writer cannot make its temporary file: one
    /// made after the handler looked would outlive the process (seen: an ACTOR run stopped
    /// by Ctrl-C left `optimizer-epoch1.safetensors.tmp`, in 2 of 18 tries).
    #[test]
    fn no_temporary_is_made_while_an_interrupt_holds_the_registry() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("late.tmp");
        let held = Held(lock());
        let writer = {
            let f = f.clone();
            std::thread::spawn(move || drop(create_file(&f).unwrap()))
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(!f.exists(), "made while the registry was held");
        drop(held);
        writer.join().unwrap();
        assert!(f.exists());
    }

    /// A temporary file being written is not shared with a second writer of the same output,
    /// which is refused; one left by a writer that is gone is reused, emptied.
    #[test]
    fn a_temporary_being_written_is_not_shared() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("out.gguf.tmp");
        let (mut first, _t) = create_file(&f).unwrap();
        first.write_all(b"partial").unwrap();
        let err = create_file(&f).err().expect("a second writer is refused");
        assert!(
            err.to_string().contains("being written by another process"),
            "{err}"
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"partial", "left as it was");
        drop(first);
        let (second, _t) = create_file(&f).unwrap();
        assert_eq!(
            second.metadata().unwrap().len(),
            0,
            "a stale file is emptied"
        );
    }

    /// A finished temporary file does not replace an output written meanwhile.
    #[test]
    fn a_new_output_never_replaces_one_written_meanwhile() {
        let d = tempfile::tempdir().unwrap();
        let (tmp, out) = (d.path().join("o.tmp"), d.path().join("o"));
        std::fs::write(&tmp, b"mine").unwrap();
        std::fs::write(&out, b"theirs").unwrap();
        let err = rename_new(&tmp, &out).unwrap_err();
        assert!(
            err.to_string().contains("written by another process"),
            "{err}"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"theirs");
        std::fs::remove_file(&out).unwrap();
        rename_new(&tmp, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"mine");
        assert!(!tmp.exists());
    }
}
