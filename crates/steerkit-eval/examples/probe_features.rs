//! Experiment behind the README's "a linear probe as the judge": the residual state at the
//! last prompt position of a judge model reading the judge message (`model_judge`) of each row,
//! after the given blocks, for a linear probe fitted by `scripts/judge_probe.py`.
//!
//! ```text
//! cargo run --release -p steerkit-eval --example probe_features -- MODEL \
//!     ../shared/datasets/xstest_judged.jsonl /tmp/probe.f32 6,9,12,15,18,21,23
//! ```
//!
//! Writes `[rows, layers, hidden]` little-endian f32, rows in file order.
use std::io::Write;
use steerkit_eval::model_judge::judge_message;
use steerkit_model::{left_pad, load, HookPoint, LoadOptions, Mode, Record, Site, SystemPrompt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 5 {
        return Err("usage: probe_features MODEL ROWS.jsonl OUT.f32 LAYER,LAYER,...".into());
    }
    let m = load(&a[1], &LoadOptions::default())?;
    let layers = a[4]
        .split(',')
        .map(|s| s.parse::<usize>())
        .collect::<Result<Vec<_>, _>>()?;
    let top = layers.iter().max().ok_or("no layer given")? + 1;
    let rows = std::fs::read_to_string(&a[2])?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<Vec<serde_json::Value>, _>>()?;
    let mut ids: Vec<(usize, Vec<u32>)> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let response = r["completion"]
            .as_str()
            .ok_or("a row without `completion`")?;
        let msg = judge_message(r["prompt"].as_str(), response);
        ids.push((i, m.chat.prompt(&m.tok, &msg, &SystemPrompt::Default)?.ids));
    }
    ids.sort_by_key(|t| std::cmp::Reverse(t.1.len()));
    let hidden = m.model.cfg.hidden_size;
    let mut out = vec![0f32; rows.len() * layers.len() * hidden];
    let t0 = std::time::Instant::now();
    let sites: Vec<Site> = layers
        .iter()
        .map(|&layer| Site {
            layer,
            point: HookPoint::Output,
        })
        .collect();
    for (bi, batch) in ids.chunks(8).enumerate() {
        let rows: Vec<Vec<u32>> = batch.iter().map(|(_, v)| v.clone()).collect();
        let (x, pads) = left_pad(&rows, m.tok.pad_id, &m.model.device)?;
        let mut rec = Record::new(sites.clone(), vec![-1]);
        m.model.forward_layers(
            m.model.embed(&x)?,
            &pads,
            0..top,
            None,
            &mut rec,
            Mode::Inference,
        )?;
        for (li, site) in sites.iter().enumerate() {
            // [batch, 1, hidden], f32.
            let v: Vec<Vec<Vec<f32>>> = rec.get(*site).ok_or("a layer not reached")?.to_vec3()?;
            for (k, (i, _)) in batch.iter().enumerate() {
                let o = (i * layers.len() + li) * hidden;
                out[o..o + hidden].copy_from_slice(&v[k][0]);
            }
        }
        if bi % 10 == 0 {
            eprintln!("{} rows, {:.0} s", (bi + 1) * 8, t0.elapsed().as_secs_f64());
        }
    }
    let mut f = std::fs::File::create(&a[3])?;
    for x in out {
        f.write_all(&x.to_le_bytes())?;
    }
    Ok(())
}
