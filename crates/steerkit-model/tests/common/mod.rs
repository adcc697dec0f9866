//! Shared helpers of the integration tests: where the fixtures and the fetched models are.

#![allow(dead_code)]

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fetched test model (`scripts/fetch-models.sh`); panics with the fix when it is missing.
pub fn model_path(name: &str) -> String {
    let p = root()
        .join("checkpoints/models")
        .join(format!("{name}.gguf"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh first",
        p.display()
    );
    p.to_string_lossy().into_owned()
}

/// A committed fixture, parsed.
pub fn fixture(name: &str) -> serde_json::Value {
    let p = root().join("tests/fixtures").join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).expect("fixture is JSON")
}

pub const MODELS: [&str; 2] = ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"];
