//! Medians, min-max, percentiles and whole-machine CPU time from /proc/stat.
use serde_json::{json, Value};

pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    }
}

/// `{median, min, max, samples}`.
pub fn summary(v: &[f64]) -> Value {
    let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    json!({
        "median": round(median(&finite)),
        "min": round(min),
        "max": round(max),
        "samples": finite.iter().map(|x| round(*x)).collect::<Vec<_>>(),
    })
}

/// Four significant digits are plenty for a shared VM; keeps the JSON short.
pub fn round(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return x;
    }
    let digits = 4 - 1 - x.abs().log10().floor() as i32;
    let f = 10f64.powi(digits.clamp(-12, 12));
    (x * f).round() / f
}

/// The `p`-th percentile (0-100) of `sorted`, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of a `{median, ...}` summary (NaN when absent).
pub fn med(v: &Value) -> f64 {
    v["median"].as_f64().unwrap_or(f64::NAN)
}

/// Busy and total CPU time of the whole machine, from the `cpu` line of
/// /proc/stat (all cores, every process and softirq included).
#[derive(Clone, Copy, Debug)]
pub struct CpuSample {
    busy_ticks: u64,
}

impl CpuSample {
    pub fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = stat.lines().find(|l| l.starts_with("cpu ")).unwrap_or("");
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal guest guest_nice;
        // guest time is already counted in user.
        let get = |i: usize| f.get(i).copied().unwrap_or(0);
        let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
        Self { busy_ticks: busy }
    }

    /// CPU seconds the machine spent busy since `earlier`.
    pub fn busy_secs_since(&self, earlier: &Self) -> f64 {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.busy_ticks.saturating_sub(earlier.busy_ticks) as f64 / hz
    }
}

/// Runs `f` and returns its result with the machine's busy CPU seconds.
pub fn with_cpu<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let a = CpuSample::now();
    let r = f();
    let b = CpuSample::now();
    (r, b.busy_secs_since(&a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_percentiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
    }

    #[test]
    fn rounding_keeps_four_digits() {
        assert_eq!(round(12345.6), 12350.0);
        assert_eq!(round(0.012345), 0.01235);
        assert_eq!(round(0.0), 0.0);
    }
}
