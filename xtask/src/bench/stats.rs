//! Medians, ranges and a distribution-free confidence interval for the
//! median (order statistics of the binomial distribution): no assumption
//! that build times are normally distributed.

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

pub fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `median unit (min–max)` with `decimals` places (`unit`: `" s"`, or
/// `""`): how the report gives a series of runs.
pub fn median_range(values: &[f64], decimals: usize, unit: &str) -> String {
    format!(
        "{:.d$}{unit} ({:.d$}–{:.d$})",
        median(values),
        min(values),
        max(values),
        d = decimals
    )
}

/// A confidence interval for the median: `[low, high]` holds the true
/// median with probability `level`.
#[derive(Debug, Clone, Copy)]
pub struct MedianInterval {
    pub low: f64,
    pub high: f64,
    pub level: f64,
}

impl MedianInterval {
    pub fn half_width(&self) -> f64 {
        (self.high - self.low) / 2.0
    }
}

/// P(X < k) for X ~ Binomial(n, 1/2).
fn binomial_below(n: usize, k: usize) -> f64 {
    let mut total = 0.0;
    let mut choose = 1.0f64; // C(n, 0)
    for i in 0..k.min(n + 1) {
        total += choose;
        choose = choose * (n - i) as f64 / (i + 1) as f64;
    }
    total / 2f64.powi(n as i32)
}

/// The narrowest order-statistic interval `[x(k), x(n+1-k)]` with coverage
/// at least 95 %; with too few values for that (n < 6), the full range and
/// its actual coverage. `None` for fewer than two values.
pub fn median_interval(values: &[f64]) -> Option<MedianInterval> {
    let n = values.len();
    if n < 2 {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let coverage = |k: usize| 1.0 - 2.0 * binomial_below(n, k);
    let mut k = 1;
    while k < n.div_ceil(2) && coverage(k + 1) >= 0.95 {
        k += 1;
    }
    Some(MedianInterval {
        low: sorted[k - 1],
        high: sorted[n - k],
        level: coverage(k),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gives_a_series_as_median_and_range() {
        assert_eq!(median_range(&[3.0, 1.04, 2.26], 1, " s"), "2.3 s (1.0–3.0)");
        assert_eq!(median_range(&[406.4, 386.0, 447.0], 0, ""), "406 (386–447)");
    }

    #[test]
    fn takes_the_median() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn small_samples_get_the_full_range_and_its_coverage() {
        let ci = median_interval(&[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((ci.low, ci.high), (1.0, 5.0));
        // 1 - 2/32
        assert!((ci.level - 0.9375).abs() < 1e-9);
        assert!(median_interval(&[1.0]).is_none());
    }

    #[test]
    fn larger_samples_narrow_to_95_percent() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        let ci = median_interval(&values).unwrap();
        // Binomial(20, 1/2): k = 6 gives 95.86 %, k = 7 only 88.5 %.
        assert_eq!((ci.low, ci.high), (6.0, 15.0));
        assert!(ci.level >= 0.95 && ci.level < 0.97, "{}", ci.level);
    }
}
