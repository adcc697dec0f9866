//! The training curve as SVG: loss by epoch (left) and validation refusal shares (right).

use crate::train::EpochLog;

fn panel(
    title: &str,
    x0: f64,
    series: &[(String, Vec<(f64, f64)>)],
    lo: f64,
    hi: f64,
    max_x: f64,
) -> String {
    let (w, h, top, left) = (300.0, 240.0, 30.0, 45.0);
    let hi = if hi > lo { hi } else { lo + 1.0 };
    let x = |e: f64| x0 + left + (w - left - 10.0) * e / max_x.max(1.0);
    let y = |v: f64| top + (h - top - 30.0) * (hi - v) / (hi - lo);
    let mut s = format!(
        "<text x=\"{}\" y=\"18\" font-size=\"12\">{title}</text>\n",
        x0 + left
    );
    for t in [lo, (lo + hi) / 2.0, hi] {
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            x0 + left - 4.0,
            y(t) + 4.0,
            tick_label(t, hi - lo)
        ));
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">epoch</text>\n",
        x(max_x / 2.0),
        h - 4.0
    ));
    let colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    for (k, (name, pts)) in series.iter().enumerate() {
        let c = colours[k % colours.len()];
        let p: Vec<String> = pts
            .iter()
            .map(|(e, v)| format!("{:.1},{:.1}", x(*e), y(*v)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{c}\" points=\"{}\"/>\n",
            p.join(" ")
        ));
        for pt in &p {
            let (cx, cy) = pt.split_once(',').expect("x,y");
            s.push_str(&format!(
                "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"2.5\" fill=\"{c}\"/>\n"
            ));
        }
        s.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{name}</text>\n",
            x0 + left + 8.0,
            top + 12.0 + 13.0 * k as f64
        ));
    }
    s
}

/// A tick label on an axis spanning `span`: enough decimals that the three ticks (0, 1/2 and
/// all of the span apart) read differently (with three, losses 0.0398 and 0.0399 gave three
/// ticks of "0.040"), and exponent notation for very large or small values.
fn tick_label(t: f64, span: f64) -> String {
    if t != 0.0 && !(1e-4..1e6).contains(&t.abs()) {
        return format!("{t:.3e}");
    }
    let decimals = if span > 0.0 && span.is_finite() {
        ((-(span / 2.0).log10()).ceil() as i64 + 1).clamp(3, 12) as usize
    } else {
        3
    };
    format!("{t:.decimals$}")
}

/// Loss and validation refusal share by epoch.
pub fn loss_svg(logs: &[EpochLog]) -> String {
    let max_x = logs.iter().map(|l| l.epoch).max().unwrap_or(1) as f64;
    let loss: Vec<(f64, f64)> = logs.iter().map(|l| (l.epoch as f64, l.loss)).collect();
    let lo = loss.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = loss.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
    let mut s = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"620\" height=\"240\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
    );
    s.push_str(&panel(
        "ACTOR loss (1 - cos)",
        0.0,
        &[("loss".into(), loss)],
        lo,
        hi,
        max_x,
    ));
    let names: Vec<String> = logs
        .first()
        .map(|l| l.val.iter().map(|v| v.0.clone()).collect())
        .unwrap_or_default();
    let series: Vec<(String, Vec<(f64, f64)>)> = names
        .iter()
        .enumerate()
        .map(|(k, n)| {
            (
                n.clone(),
                logs.iter()
                    .filter_map(|l| l.val.get(k).map(|v| (l.epoch as f64, v.1)))
                    .collect(),
            )
        })
        .collect();
    s.push_str(&panel(
        "share refused (first token)",
        310.0,
        &series,
        0.0,
        1.0,
        max_x,
    ));
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::tick_label;

    #[test]
    fn ticks_of_a_narrow_axis_differ() {
        for (lo, hi) in [(0.0398, 0.0399), (0.5, 0.50001), (0.0, 1.0), (2.0, 40.0)] {
            let t: Vec<String> = [lo, (lo + hi) / 2.0, hi]
                .iter()
                .map(|&t| tick_label(t, hi - lo))
                .collect();
            assert!(t[0] != t[1] && t[1] != t[2], "{lo}..{hi}: {t:?}");
        }
        assert_eq!(tick_label(0.5, 1.0), "0.500");
        assert_eq!(tick_label(3.77e24, 3.0e24), "3.770e24");
    }
}
