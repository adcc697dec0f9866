//! Whether a model's weights fit in the memory this process can still be given: checked
//! before any weight is read, so that a model too large for the machine is one clear error
//! instead of the kernel killing the process part way through loading.

use std::path::Path;

use candle_core::DType;

use crate::error::{ModelError, Result};

/// Memory this process can still be given (Linux): `MemAvailable` (free memory and
/// reclaimable caches, memory-mapped model files included) plus `SwapFree` from
/// `/proc/meminfo`, or less where the process's memory cgroups (a container's, a job's,
/// cgroup v2 or v1) leave less. `None` where `/proc/meminfo` cannot be read.
pub fn available_memory() -> Option<u64> {
    let info = read(Path::new("/proc/meminfo"))?;
    let host = available_in_meminfo(&info)?;
    let swap = meminfo_field(&info, "SwapFree:").unwrap_or(0);
    let own = read(Path::new("/proc/self/cgroup")).unwrap_or_default();
    Some(
        match cgroup_available(Path::new("/sys/fs/cgroup"), &own, swap) {
            Some(c) => host.min(c),
            None => host,
        },
    )
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The files of one cgroup version: limit, usage, and the `memory.stat` line of its page
/// cache.
struct Files {
    limit: &'static str,
    usage: &'static str,
    cache: &'static str,
}

const V2: Files = Files {
    limit: "memory.max",
    usage: "memory.current",
    cache: "file",
};
const V1: Files = Files {
    limit: "memory.limit_in_bytes",
    usage: "memory.usage_in_bytes",
    cache: "total_cache",
};

/// What this process's memory cgroups leave, where one sets a limit: for each version, the
/// cgroup `own` (the text of `/proc/self/cgroup`) names under `root` (v2 at the root, v1 in
/// `memory/`) and each cgroup above it up to the mount, the least any leaves (a cgroup named
/// outside the mount, `..`, is not read; the mount's own root is, as a container's cgroup is
/// there). A cgroup leaves its limit minus its usage plus the page cache in that usage, which
/// the kernel gives back (all of it, so that no model that would load is refused), plus
/// `swap` (the machine's free swap; a v2 cgroup's own swap limit, when it sets one, caps it).
fn cgroup_available(root: &Path, own: &str, swap: u64) -> Option<u64> {
    let path_of = |v2: bool| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let ours = match v2 {
                true => controllers.is_empty(),
                false => controllers.split(',').any(|c| c == "memory"),
            };
            ours.then(|| path.trim_matches('/').to_string())
        })
    };
    let mut least: Option<u64> = None;
    for (v2, files) in [(true, &V2), (false, &V1)] {
        let mount = match v2 {
            true => root.to_path_buf(),
            false => root.join("memory"),
        };
        let path = path_of(v2).filter(|p| !p.split('/').any(|c| c == ".."));
        let mut dir = mount.join(path.unwrap_or_default());
        loop {
            let left = (|| {
                let limit = read(&dir.join(files.limit))?;
                let usage = read(&dir.join(files.usage))?;
                let stat = read(&dir.join("memory.stat")).unwrap_or_default();
                let swap = match v2 {
                    true => swap_left(&dir).map_or(swap, |s| s.min(swap)),
                    false => swap,
                };
                cgroup_left(&limit, &usage, &stat, files.cache).map(|l| l.saturating_add(swap))
            })();
            if let Some(l) = left {
                least = Some(least.map_or(l, |m| m.min(l)));
            }
            if dir == mount || !dir.pop() || !dir.starts_with(&mount) {
                break;
            }
        }
    }
    least
}

/// A v2 cgroup's swap limit minus its swap usage, when it sets one.
fn swap_left(dir: &Path) -> Option<u64> {
    let max: u64 = read(&dir.join("memory.swap.max"))?.trim().parse().ok()?;
    let used: u64 = read(&dir.join("memory.swap.current"))?
        .trim()
        .parse()
        .ok()?;
    Some(max.saturating_sub(used))
}

/// A cgroup's limit minus its usage plus its page cache (the `cache` line of `memory.stat`),
/// from the texts of its files; `None` when it sets no limit (`max`, or v1's near-2^63
/// default).
fn cgroup_left(limit: &str, usage: &str, stat: &str, cache: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok().filter(|m| *m < 1 << 60)?;
    let usage: u64 = usage.trim().parse().ok()?;
    let cached: u64 = stat
        .lines()
        .find_map(|l| {
            l.strip_prefix(cache)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Some(
        limit
            .saturating_sub(usage)
            .saturating_add(cached.min(usage)),
    )
}

/// A `/proc/meminfo` field in bytes.
fn meminfo_field(info: &str, key: &str) -> Option<u64> {
    let line = info.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `MemAvailable` plus `SwapFree` from the text of `/proc/meminfo`.
fn available_in_meminfo(info: &str) -> Option<u64> {
    Some(meminfo_field(info, "MemAvailable:")? + meminfo_field(info, "SwapFree:").unwrap_or(0))
}

/// The environment variable that skips [`check_fits`] at loading.
pub const SKIP_MEMORY_CHECK: &str = "STEERKIT_SKIP_MEMORY_CHECK";

/// An error, before anything is read, when the weights of `cfg` loaded as `dtype` on the CPU
/// (`need` bytes; `bf16` bytes with bf16 matrices) cannot fit in `available` bytes, instead of
/// the kernel killing the process part way through loading. The message says what bf16
/// matrices would take when `dtype` is f32. Only the weights are counted, not what loading
/// holds for a moment beside them (a tensor being converted), so that no model that would
/// load is refused; one whose weights nearly fill the memory may still fail.
pub fn check_fits(need: u64, bf16: u64, dtype: DType, available: Option<u64>) -> Result<()> {
    let Some(available) = available.filter(|a| need > *a) else {
        return Ok(());
    };
    let gb = |b: u64| format!("{:.1} GB", b as f64 / 1e9);
    let hint = match dtype {
        DType::F32 if bf16 <= available => format!(
            "; --dtype bf16 (`dtype = \"bf16\"` in a run config) keeps its matrices in bf16 ({}), which should fit",
            gb(bf16)
        ),
        DType::F32 => format!(
            "; even with --dtype bf16 its matrices take {}: use a machine with more memory or a GPU",
            gb(bf16)
        ),
        _ => "; use a machine with more memory or a GPU".into(),
    };
    Err(ModelError::Memory(format!(
        "this model's weights alone take {} as {} on the CPU, and {} are available (free memory and swap){hint}. Set {SKIP_MEMORY_CHECK}=1 to try anyway",
        gb(need),
        dtype.as_str(),
        gb(available)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::weight_bytes;
    use candle_core::Device;

    /// Qwen2.5-Coder-0.5B's weights as its GGUF file holds them (630 million parameters: 494
    /// million and a head of its own) take 2.52 GB as f32 and a little over half that with
    /// bf16 matrices (the norms and biases stay f32); a machine with less is told so, and
    /// pointed to bf16 when that fits; this machine's free memory is read.
    #[test]
    fn weights_that_do_not_fit_are_refused_before_loading() {
        let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../checkpoints/models/qwen2.5-coder-0.5b-instruct.gguf");
        assert!(p.is_file(), "run scripts/fetch-models.sh");
        let cfg = crate::gguf::Gguf::open(&p).unwrap().config().unwrap();
        let cpu = &Device::Cpu;
        let f32 = weight_bytes(&cfg, cpu, DType::F32);
        let bf16 = weight_bytes(&cfg, cpu, DType::BF16);
        assert_eq!(f32, 630_167_424 * 4);
        assert!(bf16 > f32 / 2 && bf16 < f32 * 53 / 100, "{bf16}");
        assert!(check_fits(f32, bf16, DType::F32, Some(f32)).is_ok());
        assert!(check_fits(f32, bf16, DType::F32, None).is_ok());
        let e = check_fits(f32, bf16, DType::F32, Some(1_500_000_000))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("take 2.5 GB as f32") && e.contains("1.5 GB are available"),
            "{e}"
        );
        assert!(
            e.contains("--dtype bf16") && e.contains("which should fit"),
            "{e}"
        );
        assert!(e.contains(SKIP_MEMORY_CHECK), "{e}");
        let e = check_fits(f32, bf16, DType::F32, Some(500_000_000)).unwrap_err();
        assert!(e.to_string().contains("even with --dtype bf16"), "{e}");
        let e = check_fits(bf16, bf16, DType::BF16, Some(500_000_000)).unwrap_err();
        assert!(!e.to_string().contains("--dtype"), "{e}");
        let info = "MemTotal:       24000000 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\nSwapTotal:       4000000 kB\nSwapFree:        3000000 kB\n";
        assert_eq!(available_in_meminfo(info), Some(23_000_000 * 1024));
        let no_swap = "MemTotal: 8 kB\nMemAvailable: 5 kB\n";
        assert_eq!(available_in_meminfo(no_swap), Some(5 * 1024));
        assert_eq!(
            available_in_meminfo("MemTotal: 8 kB\nMemFree: 5 kB\n"),
            None
        );
        if cfg!(target_os = "linux") {
            let here = available_memory().expect("/proc/meminfo is read");
            assert!(here > 100_000_000, "{here} bytes available");
        }
    }

    /// A cgroup's limit, usage and page cache, v2 and v1; no limit is no figure.
    #[test]
    fn cgroup_limits_are_read() {
        let stat = "anon 100\nfile 3000\nactive_file 50\n";
        assert_eq!(cgroup_left("10000\n", "5000\n", stat, "file"), Some(8000));
        assert_eq!(cgroup_left("max\n", "5000\n", stat, "file"), None);
        let v1 = "cache 9\ntotal_cache 2000\n";
        assert_eq!(cgroup_left("9000", "10000", v1, "total_cache"), Some(2000));
        assert_eq!(
            cgroup_left("9223372036854771712", "1", v1, "total_cache"),
            None
        );
        assert_eq!(cgroup_left("10000", "4000", "", "file"), Some(6000));
    }

    /// Cgroup trees as the kernel mounts them, written to a folder: a v2 job whose limit is
    /// above the process's unlimited cgroup, a tighter root, swap capped by the cgroup, a
    /// v1 container (its own cgroup at the mount's root), a path outside the mount, and a
    /// machine with no limit anywhere.
    #[test]
    fn the_least_any_cgroup_above_leaves() {
        let put = |dir: &std::path::Path, files: &[(&str, &str)]| {
            std::fs::create_dir_all(dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
        };
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        put(root, &[]);
        let job = root.join("slurm/job_7");
        put(
            &job,
            &[
                ("memory.max", "16000\n"),
                ("memory.current", "6000\n"),
                ("memory.stat", "file 1000\n"),
            ],
        );
        let task = job.join("step_0/task_0");
        put(
            &task,
            &[("memory.max", "max\n"), ("memory.current", "5000\n")],
        );
        let own = "0::/slurm/job_7/step_0/task_0\n";
        // The job leaves 16000 - 6000 + 1000, and the machine's free swap.
        assert_eq!(cgroup_available(root, own, 0), Some(11_000));
        assert_eq!(cgroup_available(root, own, 500), Some(11_500));
        put(
            &job,
            &[
                ("memory.swap.max", "300\n"),
                ("memory.swap.current", "100\n"),
            ],
        );
        assert_eq!(cgroup_available(root, own, 500), Some(11_200));
        put(
            root,
            &[("memory.max", "9000\n"), ("memory.current", "7000\n")],
        );
        assert_eq!(cgroup_available(root, own, 0), Some(2000));
        assert_eq!(
            cgroup_available(root, "0::/../../elsewhere\n", 0),
            Some(2000)
        );
        // cgroup v1, no v2 limit: the container's cgroup at the memory mount's root.
        let v1 = tempfile::tempdir().unwrap();
        let mem = v1.path().join("memory");
        put(
            &mem,
            &[
                ("memory.limit_in_bytes", "8000\n"),
                ("memory.usage_in_bytes", "7000\n"),
                ("memory.stat", "cache 10\ntotal_cache 3000\n"),
            ],
        );
        let own = "4:memory:/docker/abc\n0::/\n";
        assert_eq!(cgroup_available(v1.path(), own, 0), Some(4000));
        put(&mem, &[("memory.limit_in_bytes", "9223372036854771712\n")]);
        assert_eq!(cgroup_available(v1.path(), own, 0), None);
        assert_eq!(
            cgroup_available(tempfile::tempdir().unwrap().path(), "", 0),
            None
        );
    }
}
