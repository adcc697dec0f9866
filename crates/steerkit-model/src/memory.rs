//! Whether a model's weights fit in the memory this process can still be given: checked
//! before any weight is read, so that a model too large for the machine is one clear error
//! instead of the kernel killing the process part way through loading.

use candle_core::DType;

use crate::error::{ModelError, Result};

/// Memory this process can still be given (Linux): `MemAvailable` (free memory and
/// reclaimable caches, memory-mapped model files included) plus `SwapFree` from
/// `/proc/meminfo`, or less where the process's memory cgroup (a container's, cgroup v2 or
/// v1) leaves less: its limit minus its usage, plus the file caches in that usage that would
/// be given back (`inactive_file`). `None` where `/proc/meminfo` cannot be read.
pub fn available_memory() -> Option<u64> {
    let host = available_in_meminfo(&read("/proc/meminfo")?)?;
    Some(match cgroup_available() {
        Some(c) => host.min(c),
        None => host,
    })
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// What the memory cgroup of this process leaves, when it sets a limit: the cgroup named in
/// `/proc/self/cgroup` under the usual mounts (`/sys/fs/cgroup` for v2,
/// `/sys/fs/cgroup/memory` for v1), or the mount's root (a container's own cgroup).
fn cgroup_available() -> Option<u64> {
    let own = read("/proc/self/cgroup").unwrap_or_default();
    let path_of = |pick: &dyn Fn(&str) -> bool| {
        own.lines().find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            pick(controllers).then(|| path.trim_start_matches('/').to_string())
        })
    };
    let v2 = path_of(&|c| c.is_empty()).unwrap_or_default();
    let v1 = path_of(&|c| c.split(',').any(|x| x == "memory")).unwrap_or_default();
    let candidates = [
        (
            format!("/sys/fs/cgroup/{v2}"),
            "memory.max",
            "memory.current",
            "inactive_file",
        ),
        (
            "/sys/fs/cgroup".into(),
            "memory.max",
            "memory.current",
            "inactive_file",
        ),
        (
            format!("/sys/fs/cgroup/memory/{v1}"),
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_inactive_file",
        ),
        (
            "/sys/fs/cgroup/memory".into(),
            "memory.limit_in_bytes",
            "memory.usage_in_bytes",
            "total_inactive_file",
        ),
    ];
    candidates.iter().find_map(|(dir, max, current, inactive)| {
        let dir = dir.trim_end_matches('/');
        let max = read(&format!("{dir}/{max}"))?;
        let current = read(&format!("{dir}/{current}"))?;
        let stat = read(&format!("{dir}/memory.stat")).unwrap_or_default();
        cgroup_left(&max, &current, &stat, inactive)
    })
}

/// A cgroup's limit minus its usage plus its reclaimable file cache (the `inactive` line of
/// `memory.stat`), from the texts of its files; `None` when it sets no limit (`max`, or v1's
/// near-2^63 default).
fn cgroup_left(max: &str, current: &str, stat: &str, inactive: &str) -> Option<u64> {
    let max: u64 = max.trim().parse().ok().filter(|m| *m < 1 << 60)?;
    let current: u64 = current.trim().parse().ok()?;
    let cache: u64 = stat
        .lines()
        .find_map(|l| {
            l.strip_prefix(inactive)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    Some(
        max.saturating_sub(current)
            .saturating_add(cache.min(current)),
    )
}

/// [`available_memory`] from the text of `/proc/meminfo`.
fn available_in_meminfo(info: &str) -> Option<u64> {
    let field = |key: &str| -> Option<u64> {
        let line = info.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some(field("MemAvailable:")? + field("SwapFree:").unwrap_or(0))
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

    /// A cgroup's limit, usage and reclaimable cache, v2 and v1; no limit is no figure.
    #[test]
    fn cgroup_limits_are_read() {
        let stat = "anon 100\ninactive_file 3000\nactive_file 50\n";
        assert_eq!(
            cgroup_left("10000\n", "5000\n", stat, "inactive_file"),
            Some(8000)
        );
        assert_eq!(cgroup_left("max\n", "5000\n", stat, "inactive_file"), None);
        let v1 = "cache 9\ninactive_file 1\ntotal_inactive_file 2000\n";
        assert_eq!(
            cgroup_left("9000", "10000", v1, "total_inactive_file"),
            Some(2000)
        );
        assert_eq!(
            cgroup_left("9223372036854771712", "1", v1, "total_inactive_file"),
            None
        );
        assert_eq!(
            cgroup_left("10000", "4000", "", "inactive_file"),
            Some(6000)
        );
    }
}
