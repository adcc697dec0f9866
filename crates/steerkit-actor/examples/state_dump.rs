//! Experiment helper: the last-token block output of every layer for the prompts of one or
//! more prompt files (read as every command reads them; LIMIT keeps each file's first N),
//! written as `[prompts, layers, hidden]` little-endian f32, prompts in file order, with the
//! shape in `OUT.f32.json`. Used for the README's layer study of ACTOR ("ACTOR, the block":
//! which block separates unsafe twins from safe ones).
//!
//! ```text
//! cargo run --release -p steerkit-actor --example state_dump -- MODEL OUT.f32 LIMIT FILE...
//! ```
use std::io::Write;
use steerkit_actor::states::last_token_states;
use steerkit_model::{load, LoadOptions, SystemPrompt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() < 5 {
        return Err("usage: state_dump MODEL OUT.f32 LIMIT FILE.jsonl...".into());
    }
    let m = load(&a[1], &LoadOptions::default())?;
    let limit: usize = a[3].parse()?;
    let mut prompts = Vec::new();
    for f in &a[4..] {
        let opts = steerkit_data::ReadOptions {
            limit: Some(limit),
            ..Default::default()
        };
        let items = steerkit_data::sets::read_file(std::path::Path::new(f), &opts)?;
        eprintln!("{f}: {} prompts", items.len());
        prompts.extend(items.into_iter().map(|i| i.prompt));
    }
    let refs: Vec<&str> = prompts.iter().map(|s| s.as_str()).collect();
    let t0 = std::time::Instant::now();
    let (states, _) = last_token_states(&m, &refs, &SystemPrompt::Default, 16, 0..0, &mut |_| {})?;
    // [layers, prompts, hidden] -> [prompts, layers, hidden]
    let s = states
        .transpose(0, 1)?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut w = std::io::BufWriter::new(std::fs::File::create(&a[2])?);
    for x in s {
        w.write_all(&x.to_le_bytes())?;
    }
    w.flush()?;
    let (layers, n, hidden) = states.dims3()?;
    std::fs::write(
        format!("{}.json", a[2]),
        serde_json::json!({"prompts": n, "layers": layers, "hidden": hidden}).to_string(),
    )?;
    eprintln!(
        "{n} prompts x {layers} layers x {hidden} in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
