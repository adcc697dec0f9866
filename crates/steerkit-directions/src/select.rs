//! Choosing the refusal direction among the candidates (METHODS.md 1.4).
//!
//! For a candidate `r = r_{l,i}`:
//! - bypass: mean first-token refusal score on harmful prompts with `r̂` ablated everywhere
//!   (lower is better);
//! - induce: mean refusal score on harmless prompts with `r` added at layer `l`
//!   (must be > 0);
//! - KL: mean first-token KL on harmless prompts, ablated vs plain (must be <= 0.1);
//! - `l < 0.8 * layers`.
//!
//! The selected candidate has the lowest bypass score among those that pass. Pruning, in three
//! steps: (1) a screening bypass score on the first `screen` harmful prompts for every
//! candidate; (2) the full bypass score for the `keep` best of them; (3) induce and KL in
//! increasing order of full bypass until one passes. Step 3 never changes the choice among the
//! kept candidates; steps 1-2 can (a candidate ranked low on a few prompts is not rescored):
//! `exhaustive` scores everything on every prompt.

use serde::{Deserialize, Serialize};
use steerkit_data::PromptSet;
use steerkit_eval::score::{kl, refusal_score, refusal_token_ids};
use steerkit_eval::utility::first_token_logprobs;
use steerkit_model::{Loaded, NoHook, SystemPrompt};

use crate::extract::{Candidates, RunError};
use crate::intervene::{ablation, addition};

/// The scores of one candidate (`None`: not computed, pruned).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Score {
    pub layer: usize,
    pub pos: isize,
    /// Bypass score on the screening prompts (when screening ran).
    pub screen: Option<f64>,
    pub bypass: Option<f64>,
    pub induce: Option<f64>,
    pub kl: Option<f64>,
    pub passes: Option<bool>,
}

/// Selection settings.
#[derive(Debug, Clone)]
pub struct SelectOptions {
    pub system: SystemPrompt,
    pub batch: usize,
    pub max_layer_frac: f64,
    pub kl_max: f64,
    /// Score every candidate on every prompt (no screening, no early stop).
    pub exhaustive: bool,
    /// Harmful prompts in the screening pass.
    pub screen: usize,
    /// Candidates kept after screening for the full bypass score.
    pub keep: usize,
    /// Coefficient of the direction in the induce test (METHODS.md: 1).
    pub induce_coeff: f64,
}

/// The selected direction (`selected.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Selected {
    pub layer: usize,
    pub pos: isize,
    pub bypass: f64,
    pub induce: f64,
    pub kl: f64,
    /// Mean refusal scores without intervention, for reference.
    pub baseline_harmful: f64,
    pub baseline_harmless: f64,
    /// True when chosen with `--layer/--pos` rather than by the filters.
    pub manual: bool,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Scores candidates and selects one (`manual` forces a layer and position). The scores are
/// returned even when no candidate passes the filters (`None`), so they can be inspected.
pub fn select(
    m: &Loaded,
    c: &Candidates,
    harmful: &PromptSet,
    harmless: &PromptSet,
    opts: &SelectOptions,
    manual: Option<(usize, isize)>,
    progress: &mut dyn FnMut(&str, usize, usize),
) -> Result<(Vec<Score>, Option<Selected>), RunError> {
    let ids = refusal_token_ids(&m.tok);
    let hp = harmful.prompts();
    let bp = harmless.prompts();
    let score_of = |lps: &[Vec<f32>]| {
        mean(
            &lps.iter()
                .map(|l| refusal_score(l, &ids))
                .collect::<Vec<_>>(),
        )
    };
    let base_harmless = first_token_logprobs(m, &bp, &opts.system, opts.batch, &mut NoHook)?;
    let baseline_harmless = score_of(&base_harmless);
    let baseline_harmful = score_of(&first_token_logprobs(
        m,
        &hp,
        &opts.system,
        opts.batch,
        &mut NoHook,
    )?);
    let layers = c.meta.num_layers;
    let max_layer = ((opts.max_layer_frac * layers as f64).ceil() as usize).min(layers);
    let mut cands: Vec<(usize, isize)> = match manual {
        Some(lp) => vec![lp],
        None => (0..max_layer)
            .flat_map(|l| (1..=c.meta.positions as isize).map(move |p| (l, -p)))
            .collect(),
    };
    cands.sort();
    // Screening: every candidate on the first `screen` harmful prompts.
    let screening = !opts.exhaustive && manual.is_none() && opts.screen < hp.len();
    let screen_prompts = if screening {
        &hp[..opts.screen]
    } else {
        &hp[..]
    };
    let mut scores = Vec::with_capacity(cands.len());
    for (k, &(layer, pos)) in cands.iter().enumerate() {
        progress("bypass (screening)", k, cands.len());
        let r = c.direction(layer, pos)?;
        let mut hook = ablation(&r)?;
        let lps = first_token_logprobs(m, screen_prompts, &opts.system, opts.batch, &mut hook)?;
        scores.push(Score {
            layer,
            pos,
            screen: screening.then(|| score_of(&lps)),
            bypass: (!screening).then(|| score_of(&lps)),
            induce: None,
            kl: None,
            passes: None,
        });
    }
    if screening {
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&a, &b| {
            scores[a]
                .screen
                .unwrap()
                .total_cmp(&scores[b].screen.unwrap())
        });
        order.truncate(opts.keep.max(1));
        for (k, &i) in order.iter().enumerate() {
            progress("bypass (kept)", k, order.len());
            let r = c.direction(scores[i].layer, scores[i].pos)?;
            let mut hook = ablation(&r)?;
            let lps = first_token_logprobs(m, &hp, &opts.system, opts.batch, &mut hook)?;
            scores[i].bypass = Some(score_of(&lps));
        }
    }
    let mut order: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i].bypass.is_some())
        .collect();
    order.sort_by(|&a, &b| {
        scores[a]
            .bypass
            .unwrap()
            .total_cmp(&scores[b].bypass.unwrap())
    });
    let mut chosen = None;
    for (k, &i) in order.iter().enumerate() {
        progress("filters", k, order.len());
        let (layer, pos) = (scores[i].layer, scores[i].pos);
        let r = c.direction(layer, pos)?;
        let mut add = addition(&r, layer, opts.induce_coeff)?;
        let induce = score_of(&first_token_logprobs(
            m,
            &bp,
            &opts.system,
            opts.batch,
            &mut add,
        )?);
        let mut abl = ablation(&r)?;
        let ablated = first_token_logprobs(m, &bp, &opts.system, opts.batch, &mut abl)?;
        let kl_mean = mean(
            &base_harmless
                .iter()
                .zip(&ablated)
                .map(|(a, b)| kl(a, b))
                .collect::<Vec<_>>(),
        );
        let passes = induce > 0.0 && kl_mean <= opts.kl_max && layer < max_layer;
        let s = &mut scores[i];
        s.induce = Some(induce);
        s.kl = Some(kl_mean);
        s.passes = Some(passes);
        if (passes || manual.is_some()) && chosen.is_none() {
            chosen = Some(i);
            if !opts.exhaustive {
                break;
            }
        }
    }
    let Some(i) = chosen else {
        return Ok((scores, None));
    };
    let s = &scores[i];
    let selected = Selected {
        layer: s.layer,
        pos: s.pos,
        bypass: s.bypass.expect("scored"),
        induce: s.induce.expect("scored"),
        kl: s.kl.expect("scored"),
        baseline_harmful,
        baseline_harmless,
        manual: manual.is_some(),
    };
    Ok((scores, Some(selected)))
}

/// The scores as CSV.
pub fn scores_csv(scores: &[Score]) -> String {
    let f = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.5}"));
    let mut s = String::from("layer,pos,screen,bypass,induce,kl,passes\n");
    for r in scores {
        s.push_str(&format!(
            "{},{},{},{},{},{},{}\n",
            r.layer,
            r.pos,
            f(r.screen),
            f(r.bypass),
            f(r.induce),
            f(r.kl),
            r.passes.map_or(String::new(), |p| p.to_string())
        ));
    }
    s
}

/// The plotted bypass score of a candidate: the screening score when screening ran (every
/// candidate has one), else the full one.
fn plotted(s: &Score) -> f64 {
    s.screen.or(s.bypass).unwrap_or(f64::NAN)
}

/// Bypass score by layer, one line per position, as SVG (the selected candidate circled).
pub fn scores_svg(scores: &[Score], selected: Option<&Selected>) -> String {
    let baseline = selected.map_or(f64::NAN, |s| s.baseline_harmful);
    let (w, h, left, top) = (640.0, 320.0, 50.0, 30.0);
    let max_layer = scores.iter().map(|s| s.layer).max().unwrap_or(0).max(1) as f64;
    let lo = scores.iter().map(plotted).fold(baseline, f64::min).floor();
    let hi = scores
        .iter()
        .map(plotted)
        .fold(baseline, f64::max)
        .ceil()
        .max(lo + 1.0);
    let x = |l: f64| left + (w - left - 20.0) * l / max_layer;
    let y = |v: f64| top + (h - top - 40.0) * (hi - v) / (hi - lo);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\" font-size=\"13\">Refusal score on harmful prompts under ablation (screening prompts), by layer (dashed: none)</text>\n"
    );
    if baseline.is_finite() {
        s.push_str(&format!(
            "<line x1=\"{}\" y1=\"{by}\" x2=\"{}\" y2=\"{by}\" stroke=\"gray\" stroke-dasharray=\"4\"/>\n",
            x(0.0),
            x(max_layer),
            by = y(baseline)
        ));
    }
    for t in [lo, (lo + hi) / 2.0, hi] {
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{t:.1}</text>\n",
            left - 4.0,
            y(t) + 4.0
        ));
    }
    for l in (0..=max_layer as usize).step_by(4) {
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{l}</text>\n",
            x(l as f64),
            h - 22.0
        ));
    }
    s.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">layer</text>\n",
        x(max_layer / 2.0),
        h - 6.0
    ));
    let colours = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    ];
    let mut positions: Vec<isize> = scores.iter().map(|s| s.pos).collect();
    positions.sort();
    positions.dedup();
    for (k, p) in positions.iter().enumerate() {
        let pts: Vec<String> = scores
            .iter()
            .filter(|s| s.pos == *p)
            .map(|s| format!("{:.1},{:.1}", x(s.layer as f64), y(plotted(s))))
            .collect();
        let c = colours[k % colours.len()];
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{c}\" points=\"{}\"/>\n",
            pts.join(" ")
        ));
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">pos {p}</text>\n",
            w - 70.0,
            top + 14.0 * k as f64 + 10.0
        ));
    }
    let chosen = selected.and_then(|sel| {
        scores
            .iter()
            .find(|s| s.layer == sel.layer && s.pos == sel.pos)
    });
    if let Some(c) = chosen {
        s.push_str(&format!(
            "<circle cx=\"{}\" cy=\"{}\" r=\"5\" fill=\"none\" stroke=\"black\"/>\n",
            x(c.layer as f64),
            y(plotted(c))
        ));
    }
    s.push_str("</svg>\n");
    s
}
