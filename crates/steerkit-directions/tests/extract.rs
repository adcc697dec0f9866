//! Candidates are differences of means computed in batches, equal to the per-prompt residuals
//! computed one at a time; a rerun with the same inputs reuses the run folder.

use candle_core::{DType, Device, Tensor};
use steerkit_data::sets::builtin;
use steerkit_model::random::max_abs_diff;
use steerkit_model::{left_pad, load, HookPoint, LoadOptions, Mode, Record, Site, SystemPrompt};

#[test]
fn candidates_are_differences_of_means_and_are_reused() {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../checkpoints/models/smollm2-135m-instruct.gguf");
    assert!(p.is_file(), "run scripts/fetch-models.sh");
    let m = load(p.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let harmful = builtin("harmful").unwrap().limit(5);
    let harmless = builtin("harmless").unwrap().limit(3);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let sys = SystemPrompt::Default;
    // Batches of 2: the means are accumulated over uneven, padded batches.
    let (c, reused) =
        steerkit_directions::extract(&m, &harmful, &harmless, &sys, 2, &dir, &mut |_| {}).unwrap();
    assert!(!reused);
    assert_eq!(c.candidates.dims(), [30, 6, 576]);
    // Reference: each prompt alone, its block outputs at the post-instruction positions.
    let layer = 12;
    let mean_alone = |set: &steerkit_data::PromptSet| -> Tensor {
        let mut acc = Tensor::zeros((6, 576), DType::F32, &Device::Cpu).unwrap();
        for it in &set.items {
            let ids = m.chat.prompt(&m.tok, &it.prompt, &sys).unwrap().ids;
            let (x, pads) = left_pad(&[ids], 0, &Device::Cpu).unwrap();
            let site = Site {
                layer,
                point: HookPoint::Output,
            };
            let mut rec = Record::new(vec![site], (-6..0).collect());
            m.model
                .forward(&x, &pads, None, &mut rec, Mode::Inference)
                .unwrap();
            acc = (acc + rec.get(site).unwrap().squeeze(0).unwrap()).unwrap();
        }
        (acc / set.items.len() as f64).unwrap()
    };
    let want = (mean_alone(&harmful) - mean_alone(&harmless)).unwrap();
    let got = c.candidates.get(layer).unwrap();
    let err = max_abs_diff(&want, &got).unwrap();
    assert!(err < 1e-3, "max abs difference {err}");
    // Same inputs: reused. Other prompts: recomputed.
    let (_, reused) =
        steerkit_directions::extract(&m, &harmful, &harmless, &sys, 2, &dir, &mut |_| {}).unwrap();
    assert!(reused);
    let (_, reused) = steerkit_directions::extract(
        &m,
        &harmful.clone().limit(4),
        &harmless,
        &sys,
        2,
        &dir,
        &mut |_| {},
    )
    .unwrap();
    assert!(!reused);
    // Saving removes the old metadata before it writes the tensors: when that write fails
    // (here: a folder where the file goes), the folder holds no metadata to pass the old
    // extraction's tensors, or a torn mix, off as these.
    let (c, _) =
        steerkit_directions::extract(&m, &harmful, &harmless, &sys, 2, &dir, &mut |_| {}).unwrap();
    let blocked = tmp.path().join("blocked");
    std::fs::create_dir_all(blocked.join("directions.safetensors")).unwrap();
    std::fs::write(blocked.join("extract.json"), "{}").unwrap();
    assert!(c.save(&blocked).is_err());
    assert!(!blocked.join("extract.json").exists());
    // An extraction of other prompts interrupted while it computes (here: its progress
    // callback panics, as a Ctrl-C ends it) leaves the old candidates and their selection;
    // a finished one removes the selection, which scored other candidates.
    std::fs::write(dir.join("selected.json"), "{}").unwrap();
    let other = harmful.clone().limit(3);
    let interrupted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        steerkit_directions::extract(&m, &other, &harmless, &sys, 2, &dir, &mut |_| {
            panic!("interrupted")
        })
    }));
    assert!(interrupted.is_err());
    assert!(
        dir.join("selected.json").is_file(),
        "the selection was removed"
    );
    let (_, reused) =
        steerkit_directions::extract(&m, &harmful, &harmless, &sys, 2, &dir, &mut |_| {}).unwrap();
    assert!(reused, "the old candidates are intact");
    steerkit_directions::extract(&m, &other, &harmless, &sys, 2, &dir, &mut |_| {}).unwrap();
    assert!(!dir.join("selected.json").exists());
}
