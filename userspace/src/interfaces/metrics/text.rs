//! The Prometheus text exposition format (version 0.0.4), written by hand:
//! what `promtool check metrics` and every Prometheus parse. (The
//! `prometheus-client` crate writes `OpenMetrics`, whose counter families are
//! named without `_total`, which the 0.0.4 parsers read as a family with
//! no samples.) Label values and help texts are escaped as the format says;
//! names are berth's own constants.
use std::fmt::Write as _;

/// The content type of what [`Exposition`] writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Counter => "counter",
            Self::Gauge => "gauge",
            Self::Histogram => "histogram",
        }
    }
}

/// One scrape's text: families each opened by [`Exposition::family`],
/// then their samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// `# HELP` and `# TYPE` of a family; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of an integer value.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.write_name(name, labels);
        let _ = writeln!(self.out, " {value}");
    }

    /// One sample of a real value (seconds, a histogram's sum).
    pub fn sample_f64(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.write_name(name, labels);
        let _ = writeln!(self.out, " {}", format_f64(value));
    }

    fn write_name(&mut self, name: &str, labels: &[(&str, &str)]) {
        self.out.push_str(name);
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
        }
        self.out.push('}');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// A label value: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A help text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Go's spelling of infinities, as the format wants; finite values as Rust
/// prints them (shortest round trip).
pub fn format_f64(v: f64) -> String {
    if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.is_nan() {
        "NaN".into()
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_are_written_as_the_format_says() {
        let mut e = Exposition::default();
        e.family("berth_x_total", Kind::Counter, "What x counts.");
        e.sample("berth_x_total", &[("task", "web"), ("direction", "in")], 3);
        e.sample("berth_x_total", &[], 0);
        e.family("berth_y_seconds", Kind::Histogram, "Y.");
        e.sample_f64("berth_y_seconds_bucket", &[("le", "+Inf")], 0.25);
        assert_eq!(
            e.finish(),
            "# HELP berth_x_total What x counts.\n# TYPE berth_x_total counter\n\
             berth_x_total{task=\"web\",direction=\"in\"} 3\nberth_x_total 0\n\
             # HELP berth_y_seconds Y.\n# TYPE berth_y_seconds histogram\n\
             berth_y_seconds_bucket{le=\"+Inf\"} 0.25\n"
        );
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label("two\nlines"), "two\\nlines");
        assert_eq!(escape_label("plain-ünïcode"), "plain-ünïcode");
        let mut e = Exposition::default();
        e.family("m", Kind::Gauge, "back\\slash\nnewline \"quotes\" stay");
        e.sample("m", &[("task", "x\"}\n# TYPE evil counter")], 1);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP m back\\\\slash\\nnewline \"quotes\" stay\n# TYPE m gauge\n\
             m{task=\"x\\\"}\\n# TYPE evil counter\"} 1\n"
        );
        // A hostile value never starts a line of its own.
        assert_eq!(text.lines().count(), 3);
    }

    #[test]
    fn reals_use_the_formats_spelling() {
        assert_eq!(format_f64(f64::INFINITY), "+Inf");
        assert_eq!(format_f64(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_f64(f64::NAN), "NaN");
        assert_eq!(format_f64(0.005), "0.005");
        assert_eq!(format_f64(2.0), "2");
    }
}
