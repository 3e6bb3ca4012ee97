//! `berth top`, `berth stats --task` and `berth map ls --stats`: the
//! per-binding counters as tables, and live rates like `docker stats`.
//!
//! Rates are differences of the daemon's counters between two samples
//! divided by the time between them (measured here, so a slow answer does
//! not inflate them). `--once` takes its two samples `--interval` apart
//! and prints one table.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::output::{print, table, to_json_line};
use crate::{
    domain::error::Result,
    engine::datapath::BindingCounters,
    interfaces::{api::BindingStatsView, client::Client, metrics::DROP_COUNTERS},
};

/// `berth map ls --stats` and `berth stats --task`: one row per binding
/// with its counters since it was published.
pub fn binding_stats_table(rows: &[BindingStatsView]) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let b = &r.binding;
            let mut row = vec![
                b.task.clone(),
                b.container_ip.to_string(),
                b.bind_ip.to_string(),
                b.host_port.to_string(),
                b.container_port.to_string(),
                b.protocol.as_str().to_owned(),
            ];
            match &r.stats {
                Some(c) => row.extend(
                    [
                        c.packets_in,
                        c.bytes_in,
                        c.packets_out,
                        c.bytes_out,
                        c.flows_opened,
                        c.flows_refused,
                        c.flows_tracked,
                    ]
                    .map(|v| v.to_string()),
                ),
                None => row.extend(std::iter::repeat_n("-".to_owned(), 7)),
            }
            row
        })
        .collect();
    table(
        &[
            "TASK",
            "CONTAINER IP",
            "BIND IP",
            "HOST PORT",
            "CONTAINER PORT",
            "PROTO",
            "PKTS IN",
            "BYTES IN",
            "PKTS OUT",
            "BYTES OUT",
            "FLOWS",
            "REFUSED",
            "TRACKED",
        ],
        &body,
    )
}

/// `berth stats --task T`.
pub async fn run_task_stats(client: &Client, task: &str, json: bool) -> Result<()> {
    crate::domain::task::validate_task_name(task)?;
    let rows = client.binding_stats(Some(task)).await?;
    if json {
        print(&to_json_line(&rows)?)
    } else {
        print(&binding_stats_table(&rows))
    }
}

/// One sample: per-binding counters and the datapath's drops, and when.
struct Sample {
    at: Instant,
    rows: Vec<BindingStatsView>,
    drops: u64,
}

async fn sample(client: &Client) -> Result<Sample> {
    let rows = client.binding_stats(None).await?;
    let counters = client.stats().await?.counters;
    let drops = DROP_COUNTERS
        .iter()
        .filter_map(|n| counters.get(*n))
        .fold(0u64, |a, v| a.wrapping_add(*v));
    Ok(Sample {
        at: Instant::now(),
        rows,
        drops,
    })
}

/// Rates of one binding between two samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rates {
    pub packets_in: f64,
    pub packets_out: f64,
    pub bits_in: f64,
    pub bits_out: f64,
    pub new_flows: f64,
    pub refused: f64,
}

/// The rates from `old` to `new` over `secs`; a counter that went back
/// (the binding was removed and published again) starts from zero.
pub fn rates(old: &BindingCounters, new: &BindingCounters, secs: f64) -> Rates {
    let per = |a: u64, b: u64| {
        let d = if b >= a { b - a } else { b };
        d as f64 / secs.max(1e-3)
    };
    Rates {
        packets_in: per(old.packets_in, new.packets_in),
        packets_out: per(old.packets_out, new.packets_out),
        bits_in: 8.0 * per(old.bytes_in, new.bytes_in),
        bits_out: 8.0 * per(old.bytes_out, new.bytes_out),
        new_flows: per(old.flows_opened, new.flows_opened),
        refused: per(old.flows_refused, new.flows_refused),
    }
}

/// 1234567 -> "1.23M"; below 1000 as is, one decimal.
pub fn human(v: f64) -> String {
    const UNITS: [(f64, &str); 3] = [(1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in UNITS {
        if v >= scale {
            return format!("{:.2}{unit}", v / scale);
        }
    }
    format!("{v:.1}")
}

fn key(v: &BindingStatsView) -> (String, String, u16, &'static str) {
    let b = &v.binding;
    (
        b.task.clone(),
        b.bind_ip.to_string(),
        b.host_port,
        b.protocol.as_str(),
    )
}

/// The table `top` shows for two samples: a line per task (its bindings
/// summed) followed by its bindings, then the datapath's drops.
fn top_table(old: &Sample, new: &Sample) -> String {
    let secs = new.at.duration_since(old.at).as_secs_f64();
    let before: BTreeMap<_, _> = old
        .rows
        .iter()
        .filter_map(|r| r.stats.map(|s| (key(r), s)))
        .collect();
    let mut by_task: BTreeMap<String, Vec<(String, Rates, u64)>> = BTreeMap::new();
    for r in &new.rows {
        let Some(now) = r.stats else { continue };
        let was = before.get(&key(r)).copied().unwrap_or_default();
        let b = &r.binding;
        // As a socket address, so an IPv6 binding reads `[::]:8080/tcp`.
        let addr = std::net::SocketAddr::new(b.bind_ip, b.host_port);
        let name = format!("{addr}/{}", b.protocol.as_str());
        by_task.entry(b.task.clone()).or_default().push((
            name,
            rates(&was, &now, secs),
            now.flows_tracked,
        ));
    }
    let fmt = |name: String, r: &Rates, flows: u64| {
        vec![
            name,
            human(r.packets_in),
            human(r.packets_out),
            human(r.bits_in),
            human(r.bits_out),
            human(r.new_flows),
            human(r.refused),
            flows.to_string(),
        ]
    };
    let mut rows = Vec::new();
    for (task, bindings) in &by_task {
        let mut sum = Rates::default();
        let mut flows = 0;
        for (_, r, f) in bindings {
            sum.packets_in += r.packets_in;
            sum.packets_out += r.packets_out;
            sum.bits_in += r.bits_in;
            sum.bits_out += r.bits_out;
            sum.new_flows += r.new_flows;
            sum.refused += r.refused;
            flows += f;
        }
        rows.push(fmt(task.clone(), &sum, flows));
        for (name, r, f) in bindings {
            rows.push(fmt(format!("  {name}"), r, *f));
        }
    }
    let drops = new.drops.saturating_sub(old.drops) as f64 / secs.max(1e-3);
    let mut out = table(
        &[
            "TASK / BINDING",
            "PKT/S IN",
            "PKT/S OUT",
            "BIT/S IN",
            "BIT/S OUT",
            "NEW FLOWS/S",
            "REFUSED/S",
            "FLOWS",
        ],
        &rows,
    );
    out.push_str(&format!(
        "datapath drops/s (all reasons): {}   sampled over {:.2} s\n",
        human(drops),
        secs
    ));
    out
}

/// `berth top`: refreshes every `interval` until interrupted; `once`:
/// one table over one interval.
pub async fn run_top(client: &Client, once: bool, interval: Duration) -> Result<()> {
    let mut old = sample(client).await?;
    loop {
        tokio::time::sleep(interval).await;
        let new = sample(client).await?;
        let text = top_table(&old, &new);
        if once {
            return print(&text);
        }
        // Clear the screen and home the cursor, as `docker stats` does.
        print(&format!("\x1b[2J\x1b[H{text}"))?;
        old = new;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_differences_over_time_and_restart_from_zero() {
        let old = BindingCounters {
            packets_in: 10,
            bytes_in: 1000,
            flows_opened: 5,
            ..Default::default()
        };
        let new = BindingCounters {
            packets_in: 30,
            bytes_in: 3000,
            flows_opened: 2,
            ..Default::default()
        };
        let r = rates(&old, &new, 2.0);
        assert_eq!(r.packets_in, 10.0);
        assert_eq!(r.bits_in, 8000.0);
        // Went back: the slot was given to a new binding.
        assert_eq!(r.new_flows, 1.0);
    }

    #[test]
    fn human_units() {
        assert_eq!(human(12.34), "12.3");
        assert_eq!(human(1500.0), "1.50k");
        assert_eq!(human(2_500_000.0), "2.50M");
        assert_eq!(human(3e9), "3.00G");
    }
}
