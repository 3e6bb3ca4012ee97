//! Hand-rolled SVG charts: grouped bar charts with value and ratio labels,
//! and a line chart. No dependencies; the output is plain, diffable text.
use std::fmt::Write as _;

const W: f64 = 960.0;
const H: f64 = 460.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 56.0;
const PALETTE: [&str; 8] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f",
];

/// One series of a bar chart: a value (and an optional second label line,
/// e.g. a ratio) per category; `None` draws "n/a".
pub struct Series {
    pub name: String,
    pub values: Vec<Option<f64>>,
    pub notes: Vec<Option<String>>,
}

pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub dashed: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Compact numbers: 12.3k, 1.2M, 0.045.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e9 {
        format!("{:.3}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.3}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Axis ticks: round numbers without trailing zeros (1, 2.5, 10k, 1M).
fn fmt_tick(v: f64) -> String {
    let (x, suffix) = if v.abs() >= 1e6 {
        (v / 1e6, "M")
    } else if v.abs() >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let mut t = format!("{x:.3}");
    while t.contains('.') && (t.ends_with('0') || t.ends_with('.')) {
        t.pop();
    }
    format!("{t}{suffix}")
}

/// About five round ticks from 0 to at least `max`.
fn linear_ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let n = (max / step).ceil() as usize;
    (0..=n).map(|i| i as f64 * step).collect()
}

fn log_ticks(min: f64, max: f64) -> Vec<f64> {
    let (min, max) = if min.is_finite() && max.is_finite() && min > 0.0 {
        (min, max)
    } else {
        (1.0, 10.0)
    };
    let lo = min.max(1e-12).log10().floor() as i32;
    let hi = max.max(1e-12).log10().ceil() as i32;
    (lo..=hi.max(lo + 1)).map(|e| 10f64.powi(e)).collect()
}

struct Scale {
    log: bool,
    lo: f64,
    hi: f64,
}

impl Scale {
    fn y(&self, v: f64) -> f64 {
        let plot_h = H - TOP - BOTTOM;
        let f = if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        f.clamp(0.0, 1.0).mul_add(-plot_h, H - BOTTOM)
    }
}

fn header(s: &mut String, title: &str, subtitle: &str) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="Helvetica, Arial, sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="26" font-size="17" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="46" font-size="11" fill="#555">{}</text>"##,
        esc(subtitle)
    );
}

fn y_axis(s: &mut String, scale: &Scale, ticks: &[f64], unit: &str) {
    for t in ticks {
        let y = scale.y(*t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##,
            W - RIGHT
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{:.1}" font-size="10" text-anchor="end" fill="#333">{}</text>"##,
            LEFT - 6.0,
            y + 3.0,
            fmt_tick(*t)
        );
    }
    let _ = writeln!(
        s,
        r##"<text transform="translate(16,{:.1}) rotate(-90)" font-size="11" text-anchor="middle" fill="#333">{}</text>"##,
        (TOP + H - BOTTOM) / 2.0,
        esc(unit)
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" stroke="#333"/>"##,
        H - BOTTOM
    );
}

fn legend(s: &mut String, names: &[(&str, &str, bool)]) {
    let mut x = W - RIGHT;
    for (name, color, dashed) in names.iter().rev() {
        let w = 6.5f64.mul_add(name.len() as f64, 18.0) + 14.0;
        x -= w;
        let dash = if *dashed {
            r#" stroke-dasharray="4 3""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" x2="{:.1}" y1="58" y2="58" stroke="{color}" stroke-width="6"{dash}/>"#,
            x + 14.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="62" font-size="11">{}</text>"#,
            x + 18.0,
            esc(name)
        );
    }
}

/// A grouped bar chart: one group per category, one bar per series.
pub fn bar_chart(
    title: &str,
    subtitle: &str,
    unit: &str,
    categories: &[String],
    series: &[Series],
    log: bool,
) -> String {
    let vals: Vec<f64> = series
        .iter()
        .flat_map(|s| s.values.iter().flatten().copied())
        .filter(|v| v.is_finite() && (!log || *v > 0.0))
        .collect();
    let max = vals.iter().copied().fold(0.0, f64::max);
    let min = vals.iter().copied().fold(f64::INFINITY, f64::min);
    let (scale, ticks) = if log {
        let t = log_ticks(min, max * 1.5);
        (
            Scale {
                log: true,
                lo: t[0],
                hi: *t.last().unwrap(),
            },
            t,
        )
    } else {
        let t = linear_ticks(max * 1.12);
        (
            Scale {
                log: false,
                lo: 0.0,
                hi: *t.last().unwrap(),
            },
            t,
        )
    };
    let mut s = String::new();
    header(&mut s, title, subtitle);
    y_axis(&mut s, &scale, &ticks, unit);
    let names: Vec<(&str, &str, bool)> = series
        .iter()
        .enumerate()
        .map(|(i, x)| (x.name.as_str(), PALETTE[i % PALETTE.len()], false))
        .collect();
    if series.len() > 1 {
        legend(&mut s, &names);
    }
    let plot_w = W - LEFT - RIGHT;
    let group_w = plot_w / categories.len().max(1) as f64;
    let bar_w = (group_w * 0.8 / series.len().max(1) as f64).min(70.0);
    for (ci, cat) in categories.iter().enumerate() {
        let gx = (ci as f64).mul_add(group_w, LEFT);
        let used = bar_w * series.len() as f64;
        let x0 = gx + (group_w - used) / 2.0;
        for (si, ser) in series.iter().enumerate() {
            let x = (si as f64).mul_add(bar_w, x0);
            let cx = x + bar_w / 2.0;
            match ser.values.get(ci).copied().flatten() {
                Some(v) if v.is_finite() => {
                    let y = scale.y(v);
                    let _ = writeln!(
                        s,
                        r#"<rect x="{:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                        x + 1.0,
                        bar_w - 2.0,
                        (H - BOTTOM - y).max(0.5),
                        PALETTE[si % PALETTE.len()],
                        esc(cat),
                        fmt_num(v)
                    );
                    let _ = writeln!(
                        s,
                        r#"<text x="{cx:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
                        y - 4.0,
                        fmt_num(v)
                    );
                    if let Some(Some(note)) = ser.notes.get(ci) {
                        let _ = writeln!(
                            s,
                            r##"<text x="{cx:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#444">{}</text>"##,
                            y - 15.0,
                            esc(note)
                        );
                    }
                }
                _ => {
                    let _ = writeln!(
                        s,
                        r##"<text x="{cx:.1}" y="{:.1}" font-size="9" text-anchor="middle" fill="#888">n/a</text>"##,
                        H - BOTTOM - 4.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            H - BOTTOM + 16.0,
            esc(cat)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    s.push_str("</svg>\n");
    s
}

/// A line chart with a logarithmic x axis (x values > 0) and a linear y
/// axis from 0, one labelled point per x value.
pub fn line_chart(
    title: &str,
    subtitle: &str,
    x_label: &str,
    y_label: &str,
    lines: &[Line],
) -> String {
    let xs: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.0))
        .filter(|x| *x > 0.0)
        .collect();
    let ys: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .collect();
    let ymax = ys.iter().copied().fold(0.0, f64::max);
    let ticks = linear_ticks(ymax * 1.1);
    let scale = Scale {
        log: false,
        lo: 0.0,
        hi: *ticks.last().unwrap(),
    };
    let xt = log_ticks(
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(1.0, f64::max),
    );
    let (xlo, xhi) = (xt[0].log10(), xt.last().unwrap().log10());
    let plot_w = W - LEFT - RIGHT - 150.0;
    let x_of =
        |x: f64| ((x.log10() - xlo) / (xhi - xlo).max(1e-9)).mul_add(plot_w - 40.0, LEFT + 20.0);
    let mut s = String::new();
    header(&mut s, title, subtitle);
    y_axis(&mut s, &scale, &ticks, y_label);
    for t in &xt {
        let x = x_of(*t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{TOP}" y2="{:.1}" stroke="#f0f0f0"/>"##,
            H - BOTTOM
        );
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{:.1}" font-size="10" text-anchor="middle">{}</text>"#,
            H - BOTTOM + 14.0,
            fmt_tick(*t)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#333">{}</text>"##,
        LEFT + plot_w / 2.0,
        H - BOTTOM + 34.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" x2="{:.1}" y1="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        LEFT + plot_w,
        H - BOTTOM,
        H - BOTTOM
    );
    let mut labels: Vec<(f64, f64, String, &str)> = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let pts: Vec<(f64, f64)> = l
            .points
            .iter()
            .filter(|p| p.0 > 0.0 && p.1.is_finite())
            .map(|p| (x_of(p.0), scale.y(p.1)))
            .collect();
        let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let dash = if l.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
            path.join(" ")
        );
        for ((x, y), p) in pts.iter().zip(l.points.iter()) {
            let _ = writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{color}"><title>{}: {} at {}</title></circle>"#,
                esc(&l.name),
                fmt_num(p.1),
                fmt_num(p.0)
            );
        }
        if let Some((x, y)) = pts.last() {
            let v = l.points.last().map(|p| p.1).unwrap_or(0.0);
            labels.push((
                *x + 8.0,
                *y + 3.0,
                format!("{} ({})", l.name, fmt_num(v)),
                color,
            ));
        }
    }
    // Spread the end-of-line labels so they do not overlap.
    labels.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap());
    for i in 1..labels.len() {
        if labels[i].1 < labels[i - 1].1 + 12.0 {
            labels[i].1 = labels[i - 1].1 + 12.0;
        }
    }
    for (x, y, text, color) in labels {
        let _ = writeln!(
            s,
            r#"<text x="{x:.1}" y="{y:.1}" font-size="10" fill="{color}">{}</text>"#,
            esc(&text)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(linear_ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(fmt_tick(0.0), "0");
        assert_eq!(fmt_tick(2.5), "2.5");
        assert_eq!(fmt_tick(12_500.0), "12.5k");
        assert_eq!(fmt_tick(1e6), "1M");
        assert_eq!(
            log_ticks(3.0, 2000.0),
            vec![1.0, 10.0, 100.0, 1000.0, 10000.0]
        );
    }

    #[test]
    fn charts_are_well_formed() {
        let svg = bar_chart(
            "t",
            "s",
            "u",
            &["a".into(), "b & c".into()],
            &[Series {
                name: "x".into(),
                values: vec![Some(1.0), None],
                notes: vec![Some("1.0×".into()), None],
            }],
            false,
        );
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("b &amp; c") && svg.contains("n/a"));
        let svg = line_chart(
            "t",
            "s",
            "x",
            "y",
            &[Line {
                name: "l".into(),
                points: vec![(1.0, 2.0), (1000.0, 3.0)],
                dashed: true,
            }],
        );
        assert!(svg.contains("<polyline"));
    }
}
