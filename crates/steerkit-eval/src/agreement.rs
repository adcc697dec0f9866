//! A judge's agreement with people as Markdown, with 95% Wilson intervals and counts.

use steerkit_data::agreement::Confusion;
use steerkit_data::Verdict;

use crate::stats::Rate;

/// The four measures of a confusion matrix: 3-class agreement, binary (refusal vs compliance)
/// agreement, refusal recall and refusal precision.
pub fn measures(c: &Confusion) -> [Rate; 4] {
    [
        Rate::new(c.agree3(), c.n()),
        Rate::new(c.agree_binary(), c.n()),
        Rate::new(c.both_refusals(), c.human_refusals()),
        Rate::new(c.both_refusals(), c.judge_refusals()),
    ]
}

/// One row per group (`name`, matrix): n and the four [`measures`].
pub fn table(first: &str, groups: &[(String, &Confusion)]) -> String {
    let mut s = format!(
        "| {first} | n | 3-class agreement | binary agreement | refusal recall | refusal precision |\n|---|---|---|---|---|---|\n"
    );
    for (name, c) in groups {
        let m = measures(c).map(|r| r.display());
        s.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            c.n(),
            m[0],
            m[1],
            m[2],
            m[3]
        ));
    }
    s
}

/// The confusion matrix: human label by row, judge verdict by column.
pub fn confusion_table(c: &Confusion) -> String {
    let mut s = String::from("| human \\ judge |");
    for v in Verdict::ALL {
        s.push_str(&format!(" {} |", v.as_str()));
    }
    s.push_str("\n|---|---|---|---|\n");
    for h in Verdict::ALL {
        s.push_str(&format!("| {} |", h.as_str()));
        for j in Verdict::ALL {
            s.push_str(&format!(" {} |", c.counts[h.index()][j.index()]));
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    #[test]
    fn tables_show_counts_and_intervals() {
        let mut c = Confusion::default();
        c.add(Compliance, Compliance);
        c.add(FullRefusal, PartialRefusal);
        c.add(PartialRefusal, Compliance);
        c.add(FullRefusal, FullRefusal);
        let t = table("model", &[("m".into(), &c)]);
        let row = t.lines().nth(2).unwrap();
        assert!(row.starts_with("| m | 4 | 50.0% ["), "{row}");
        assert!(row.contains("(3/4)"), "binary: {row}");
        assert!(
            row.contains("(2/3) | 100.0% [") && row.ends_with("(2/2) |"),
            "{row}"
        );
        let m = confusion_table(&c);
        assert!(m.contains("| full_refusal | 0 | 1 | 1 |"), "{m}");
        assert!(m.contains("| partial_refusal | 1 | 0 | 0 |"), "{m}");
    }
}
