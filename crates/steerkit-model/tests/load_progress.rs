//! The load watcher (the command line's loading bar) is told every tensor's bytes, and the
//! last report is the whole model, as large as the memory check says it is. Its own test
//! binary: the watcher is process-wide.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use steerkit_model::random::{random_model, tiny_config};
use steerkit_model::weights::{needs, watch_loading, weight_bytes};
use steerkit_model::Arch;

#[test]
fn the_watcher_counts_every_byte() {
    for (arch, dtype) in [(Arch::Qwen2, DType::F32), (Arch::Llama, DType::BF16)] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        watch_loading(Some(Arc::new(move |done, total| {
            log.lock().unwrap().push((done, total))
        })));
        let cfg = tiny_config(arch, 64);
        let m = random_model(cfg.clone(), dtype, 1).unwrap();
        watch_loading(None);
        let seen = seen.lock().unwrap().clone();
        let total = weight_bytes(&cfg, &Device::Cpu, dtype);
        assert_eq!(
            seen.len(),
            needs(&cfg).len(),
            "{arch:?}: one report a tensor"
        );
        assert!(seen.iter().all(|&(_, t)| t == total));
        let last = seen.iter().map(|&(d, _)| d).max().unwrap();
        assert_eq!(last, total, "{arch:?} {dtype:?}");
        let held: u64 = m
            .named_tensors()
            .iter()
            .map(|(_, t)| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
            .sum();
        assert_eq!(held, total, "{arch:?} {dtype:?}: what the model holds");
    }
}
