//! Ablation experiments: generate with an intervention in place, judge the answers, and
//! measure the first-token KL from the unmodified model on the same prompts. Each condition
//! is an evaluation run folder of its own (resumable); a sweep is a grid of additions
//! (layers x scales) summarised as a table and a heatmap.

use std::path::Path;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use steerkit_data::PromptSet;
use steerkit_eval::run::{evaluate, EvalOptions, Progress};
use steerkit_eval::stats::Rate;
use steerkit_model::{Hook, HookPoint, Loaded, NoHook};

use crate::extract::RunError;
use crate::intervene::{ablation, addition};

/// One intervention with the direction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Intervention {
    /// No intervention (the baseline).
    None,
    /// Directional ablation at every layer and sub-layer.
    Ablate,
    /// Directional ablation in blocks `start..end` only.
    AblateLayers { start: usize, end: usize },
    /// `scale · r` added at the output of `layer`.
    Add { layer: usize, scale: f64 },
}

impl Intervention {
    /// The forward hook.
    pub fn hook(&self, direction: &Tensor) -> Result<Box<dyn Hook>, RunError> {
        Ok(match self {
            Intervention::None => Box::new(NoHook),
            Intervention::Ablate => Box::new(ablation(direction)?),
            Intervention::AblateLayers { start, end } => Box::new(
                steerkit_model::Ablate::new(direction, &HookPoint::ALL)?.only_layers(*start..*end),
            ),
            Intervention::Add { layer, scale } => Box::new(addition(direction, *layer, *scale)?),
        })
    }

    /// A readable label (`add 2·r at L14`).
    pub fn label(&self) -> String {
        match self {
            Intervention::None => "none".into(),
            Intervention::Ablate => "ablate (all layers)".into(),
            Intervention::AblateLayers { start, end } => format!("ablate layers {start}..{end}"),
            Intervention::Add { layer, scale } => format!("add {scale}·r at L{layer}"),
        }
    }

    /// A folder name for the condition's run.
    pub fn slug(&self) -> String {
        match self {
            Intervention::None => "none".into(),
            Intervention::Ablate => "ablate".into(),
            Intervention::AblateLayers { start, end } => format!("ablate-L{start}-{end}"),
            Intervention::Add { layer, scale } => format!("add-L{layer}-x{scale}"),
        }
    }
}

/// The result of one condition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub intervention: Intervention,
    pub label: String,
    /// Full and partial refusals, judged.
    pub refusal: Rate,
    pub mean_refusal_score: f64,
    /// Mean first-token KL from the unmodified model on the same prompts (0 for the baseline).
    pub kl: f64,
}

/// Runs (or resumes) one condition into `out/<slug>`.
pub fn run_condition(
    m: &Loaded,
    set: &PromptSet,
    direction: &Tensor,
    iv: &Intervention,
    opts: &EvalOptions,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<Row, RunError> {
    let mut hook = iv.hook(direction)?;
    // The condition names the direction, so answers under another direction (after a new
    // selection into the same run folder) are not resumed as this one's.
    let condition = match iv {
        Intervention::None => iv.label(),
        _ => format!(
            "{} (direction {})",
            iv.label(),
            crate::intervene::direction_id(direction)?
        ),
    };
    let opts = EvalOptions {
        condition,
        earlier_labels: Vec::new(),
        ..opts.clone()
    };
    let reference = (*iv != Intervention::None).then_some((m, set));
    let report = evaluate(
        m,
        std::slice::from_ref(set),
        &opts,
        reference,
        hook.as_mut(),
        &out.join(iv.slug()),
        progress,
    )?;
    let s = &report.sets[0];
    Ok(Row {
        intervention: iv.clone(),
        label: iv.label(),
        refusal: s.refusal,
        mean_refusal_score: s.mean_refusal_score,
        kl: report
            .utility
            .first_token_kl
            .as_ref()
            .map_or(0.0, |k| k.mean),
    })
}

/// The rows as CSV.
pub fn rows_csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "condition,layer,scale,refused,n,refusal_rate,ci_lo,ci_hi,mean_refusal_score,first_token_kl\n",
    );
    for r in rows {
        let (layer, scale) = match &r.intervention {
            Intervention::Add { layer, scale } => (layer.to_string(), scale.to_string()),
            _ => (String::new(), String::new()),
        };
        s.push_str(&format!(
            "\"{}\",{layer},{scale},{},{},{:.4},{:.4},{:.4},{:.4},{:.5}\n",
            r.label,
            r.refusal.k,
            r.refusal.n,
            r.refusal.rate,
            r.refusal.lo,
            r.refusal.hi,
            r.mean_refusal_score,
            r.kl
        ));
    }
    s
}

/// The rows as a markdown table.
pub fn rows_markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| condition | refused | rate [95% CI] | mean refusal score | first-token KL |\n|---|---|---|---|---|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {}/{} | {:.1}% [{:.1}, {:.1}] | {:+.2} | {:.3} |\n",
            r.label,
            r.refusal.k,
            r.refusal.n,
            100.0 * r.refusal.rate,
            100.0 * r.refusal.lo,
            100.0 * r.refusal.hi,
            r.mean_refusal_score,
            r.kl
        ));
    }
    s
}

/// A heatmap of refusal rate (colour) over layers x scales, each cell labelled with its rate
/// and KL.
pub fn heatmap_svg(rows: &[Row], layers: &[usize], scales: &[f64]) -> String {
    let (cw, ch, left, top) = (70.0, 34.0, 60.0, 50.0);
    let w = left + cw * scales.len() as f64 + 20.0;
    let h = top + ch * layers.len() as f64 + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"18\" font-size=\"13\">Refusal rate with scale·r added at a layer (cell: rate, KL)</text>\n"
    );
    for (j, sc) in scales.iter().enumerate() {
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">×{sc}</text>\n",
            left + cw * (j as f64 + 0.5),
            top - 8.0
        ));
    }
    for (i, l) in layers.iter().enumerate() {
        let y = top + ch * i as f64;
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">L{l}</text>\n",
            left - 6.0,
            y + ch / 2.0 + 4.0
        ));
        for (j, sc) in scales.iter().enumerate() {
            let cell = rows.iter().find(|r| {
                r.intervention
                    == Intervention::Add {
                        layer: *l,
                        scale: *sc,
                    }
            });
            let x = left + cw * j as f64;
            let (fill, text) = match cell {
                Some(r) => {
                    // White (0%) to red (100%).
                    let g = (255.0 * (1.0 - r.refusal.rate)).round() as u8;
                    (
                        format!("rgb(255,{g},{g})"),
                        format!("{:.0}%, {:.2}", 100.0 * r.refusal.rate, r.kl),
                    )
                }
                None => ("#eee".to_string(), String::new()),
            };
            s.push_str(&format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{cw}\" height=\"{ch}\" fill=\"{fill}\" stroke=\"#999\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{text}</text>\n",
                x + cw / 2.0,
                y + ch / 2.0 + 4.0
            ));
        }
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">scale</text>\n</svg>\n",
        left + cw * scales.len() as f64 / 2.0,
        h - 12.0
    ));
    s
}
