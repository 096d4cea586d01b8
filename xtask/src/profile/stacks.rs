//! The top functions of folded stacks (`frame;frame;… count` lines), with
//! the kernel's verification of the eBPF programs at start kept apart: it
//! is a fixed cost of loading, not of watching the build.

use std::collections::HashMap;

/// Frames of the kernel's `BPF_PROG_LOAD` (the verifier runs inside it).
const PROG_LOAD_FRAMES: &[&str] = &["bpf_prog_load", "bpf_check"];

#[derive(Debug, Default, PartialEq)]
pub struct Top {
    pub total: u64,
    /// Samples inside `BPF_PROG_LOAD`.
    pub prog_load: u64,
    /// (function, samples) where it was the innermost frame, most first.
    pub by_self: Vec<(String, u64)>,
    /// (function, samples) with it anywhere on the stack, most first.
    pub by_total: Vec<(String, u64)>,
}

/// Adds up `folded`; `n`: how many functions each list keeps.
pub fn top(folded: &str, n: usize) -> Top {
    let mut top = Top::default();
    let mut self_counts: HashMap<&str, u64> = HashMap::new();
    let mut total_counts: HashMap<&str, u64> = HashMap::new();
    for line in folded.lines() {
        let Some((stack, count)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        top.total += count;
        let frames: Vec<&str> = stack.split(';').collect();
        if frames.iter().any(|f| PROG_LOAD_FRAMES.contains(&strip(f))) {
            top.prog_load += count;
            continue;
        }
        if let Some(leaf) = frames.last() {
            *self_counts.entry(strip(leaf)).or_default() += count;
        }
        let mut distinct: Vec<&str> = frames.iter().map(|f| strip(f)).collect();
        distinct.sort_unstable();
        distinct.dedup();
        for frame in distinct {
            *total_counts.entry(frame).or_default() += count;
        }
    }
    top.by_self = most(self_counts, n);
    top.by_total = most(total_counts, n);
    top
}

/// A frame without inferno's annotation suffix (`_[k]` kernel, `_[j]` …).
fn strip(frame: &str) -> &str {
    frame
        .strip_suffix("_[k]")
        .or_else(|| frame.strip_suffix("_[j]"))
        .or_else(|| frame.strip_suffix("_[i]"))
        .unwrap_or(frame)
}

fn most(counts: HashMap<&str, u64>, n: usize) -> Vec<(String, u64)> {
    let mut list: Vec<(String, u64)> = counts.into_iter().map(|(f, c)| (f.to_owned(), c)).collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list.truncate(n);
    list
}

/// The table as text, counts shown in `unit` (name, counts per unit: perf's
/// periods of `cpu-clock` are ns); shares are of the samples outside
/// `BPF_PROG_LOAD`.
pub fn render(top: &Top, heading: &str, (unit, per): (&str, f64)) -> String {
    let rest = top.total - top.prog_load;
    let pct = |c: u64| c as f64 * 100.0 / rest.max(1) as f64;
    let mut out = format!(
        "{heading}\n\nsampled, {unit}: {:.0} in all, {:.0} ({:.1} %) in the kernel's BPF_PROG_LOAD (left out below), {:.0} the rest\n",
        top.total as f64 / per,
        top.prog_load as f64 / per,
        top.prog_load as f64 * 100.0 / top.total.max(1) as f64,
        rest as f64 / per
    );
    for (title, list) in [
        ("innermost frame (self)", &top.by_self),
        ("anywhere on the stack (total)", &top.by_total),
    ] {
        out.push_str(&format!("\n{title}, {unit}:\n"));
        for (function, count) in list {
            out.push_str(&format!(
                "{:6.1} %  {:7.0}  {function}\n",
                pct(*count),
                *count as f64 / per
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOLDED: &str = "\
monitor;main;run;judge;memcpy 5000000
monitor;main;run;judge 3000000
monitor;main;run;read_link;readlinkat_[k] 4000000
monitor;main;load;__sys_bpf_[k];bpf_prog_load_[k];do_check_[k] 10000000
monitor;main;recurse;recurse 2000000
";

    #[test]
    fn counts_self_and_total_and_keeps_the_verifier_apart() {
        let top = top(FOLDED, 10);
        let ms = 1_000_000;
        assert_eq!(top.total, 24 * ms);
        assert_eq!(top.prog_load, 10 * ms);
        assert_eq!(
            top.by_self,
            vec![
                ("memcpy".to_owned(), 5 * ms),
                ("readlinkat".to_owned(), 4 * ms),
                ("judge".to_owned(), 3 * ms),
                ("recurse".to_owned(), 2 * ms),
            ]
        );
        // A recursive frame counts once per stack.
        let total: HashMap<_, _> = top.by_total.iter().cloned().collect();
        assert_eq!(total["main"], 14 * ms);
        assert_eq!(total["judge"], 8 * ms);
        assert_eq!(total["recurse"], 2 * ms);
        assert!(!total.contains_key("do_check"), "the verifier is left out");
    }

    #[test]
    fn keeps_the_n_largest_and_skips_malformed_lines() {
        let top = top("a;b 1\nnot a count\na;c x\na;d 7\n", 1);
        assert_eq!(top.total, 8);
        assert_eq!(top.by_self, vec![("d".to_owned(), 7)]);
        assert_eq!(top.by_total, vec![("a".to_owned(), 8)]);
    }

    #[test]
    fn renders_shares_of_the_samples_outside_the_verifier() {
        let text = render(&top(FOLDED, 2), "# t", ("ms", 1e6));
        assert!(
            text.contains("sampled, ms: 24 in all, 10 (41.7 %)"),
            "{text}"
        );
        assert!(text.contains("  35.7 %        5  memcpy"), "{text}");
    }
}
