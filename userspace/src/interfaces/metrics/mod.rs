//! Prometheus metrics: `GET /metrics` on the API socket, and on TCP with
//! `berth daemon --metrics-listen ADDR:PORT` (that listener serves nothing
//! else: the API stays on the root-only socket).
//!
//! Everything is read when scraped — the datapath's counters, the
//! per-binding counters, the maps' fill — so a scrape costs a few batch
//! reads and nothing is counted twice. Names follow Prometheus'
//! conventions: `berth_` prefix, `_total` on counters, base units (bytes,
//! seconds). Cardinality is bounded: no per-flow labels; the per-binding
//! families (`task`, `host_ip`, `host_port`, `protocol`) are summed to `protocol` and
//! `direction` with `--metrics-per-binding=false`; API latency is labelled
//! by route template (`/v1/tasks/{name}`), never by raw path.
pub mod text;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse as _, Response},
    routing::get,
    Extension, Router,
};

use self::text::{Exposition, Kind};
use crate::{
    domain::model::Binding,
    engine::{
        datapath::{BindingCounters, DatapathStatus},
        registry::Berth,
    },
};

/// Upper bounds of the API latency histogram's buckets, in seconds: a
/// request is a map write and a store commit, milliseconds; a flow sweep
/// of a large table may take seconds.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The datapath counters that count a dropped packet (or a refused
/// flow's packet); the rest count what berth did with a packet.
pub const DROP_COUNTERS: &[&str] = &[
    "nat_table_full",
    "no_route",
    "ttl_exceeded",
    "policy_denied_ingress",
    "policy_denied_egress",
    "ct_table_full",
    "frag_no_first",
    "frag_denied",
    "policy_denied_icmp",
    "icmp_forged",
    "uplink_loopback",
    "uplink_spoofed_source",
    "container_spoofed_source",
    "nat_port_remap_failed",
    "nat_no_flow",
    "ct_no_flow",
    "unhooked_port",
    "policy6_unjudged",
    "ctr_frame_refused",
    "neigh_spoofed",
    "frag_needed_sent",
    "frag_needed_suppressed",
    "too_big_no_df",
];

/// Security-group refusals among the datapath counters, by direction.
const SG_COUNTERS: &[(&str, &str)] = &[
    ("policy_denied_ingress", "ingress"),
    ("policy_denied_egress", "egress"),
    ("policy_denied_icmp", "icmp"),
];

/// New flows security groups let through, by direction (once per flow).
const SG_ACCEPT_COUNTERS: &[(&str, &str)] = &[
    ("policy_accepted_ingress", "ingress"),
    ("policy_accepted_egress", "egress"),
];

/// `berth daemon` settings for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `--metrics-listen`.
    pub listen: Option<SocketAddr>,
    /// `--metrics-per-binding`.
    pub per_binding: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            per_binding: true,
        }
    }
}

/// One histogram series: counts per bucket (not cumulative), sum, count.
#[derive(Clone, Debug, Default)]
struct Hist {
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Hist {
    fn observe(&mut self, secs: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }
}

/// What the daemon keeps for metrics between scrapes: the settings and
/// the API latency histograms, by (method, route template).
#[derive(Debug, Default)]
pub struct MetricsState {
    pub per_binding: bool,
    latency: Mutex<BTreeMap<(String, String), Hist>>,
}

impl MetricsState {
    pub fn new(per_binding: bool) -> Arc<Self> {
        Arc::new(Self {
            per_binding,
            latency: Mutex::default(),
        })
    }

    fn observe(&self, method: &str, route: &str, secs: f64) {
        self.latency
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry((method.to_owned(), route.to_owned()))
            .or_default()
            .observe(secs);
    }
}

/// Middleware timing every API request under its route template; a path
/// no route matched counts as `unmatched` (so a scan of random paths adds
/// one series, not one per path). An event stream is timed to its
/// response head, not to its end.
pub async fn time_requests(req: Request, next: Next) -> Response {
    let state = req.extensions().get::<Arc<MetricsState>>().cloned();
    let Some(state) = state else {
        return next.run(req).await;
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = bounded_method(req.method());
    let start = Instant::now();
    let resp = next.run(req).await;
    state.observe(method, &route, start.elapsed().as_secs_f64());
    resp
}

/// The method as a label: the ones the API serves, anything else `other`.
fn bounded_method(m: &axum::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "PUT" => "PUT",
        _ => "other",
    }
}

/// `GET /metrics`.
pub async fn scrape(
    State(berth): State<Berth>,
    state: Option<Extension<Arc<MetricsState>>>,
) -> Response {
    let state = state.map_or_else(|| MetricsState::new(true), |Extension(s)| s);
    match gather(&berth).await {
        Ok(g) => (
            [(header::CONTENT_TYPE, text::CONTENT_TYPE)],
            render(&g, &state),
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "gathering metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()
        }
    }
}

/// What one scrape shows.
#[derive(Clone, Debug, Default)]
pub struct Gathered {
    pub bindings: Vec<(Binding, Option<BindingCounters>)>,
    pub counters: BTreeMap<String, u64>,
    pub datapath: Option<DatapathStatus>,
}

async fn gather(berth: &Berth) -> crate::domain::error::Result<Gathered> {
    Ok(Gathered {
        bindings: berth.binding_counters(None).await?,
        counters: berth.counters().await?,
        datapath: berth.datapath_status().await?,
    })
}

/// The text of one scrape.
pub fn render(g: &Gathered, state: &MetricsState) -> String {
    let mut e = Exposition::default();
    e.family(
        "berth_build_info",
        Kind::Gauge,
        "The running berth's version; always 1.",
    );
    e.sample(
        "berth_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );

    render_bindings(&mut e, &g.bindings, state.per_binding);

    e.family(
        "berth_dropped_packets_total",
        Kind::Counter,
        "Packets the datapath dropped, by reason (the datapath counter's name).",
    );
    for name in DROP_COUNTERS {
        let v = g.counters.get(*name).copied().unwrap_or(0);
        e.sample("berth_dropped_packets_total", &[("reason", name)], v);
    }
    e.family(
        "berth_datapath_events_total",
        Kind::Counter,
        "Other datapath counters, by name: translations, passes, socket-level translations, bind refusals.",
    );
    for (name, v) in &g.counters {
        if !DROP_COUNTERS.contains(&name.as_str()) {
            e.sample("berth_datapath_events_total", &[("event", name)], *v);
        }
    }
    render_by_direction(
        &mut e,
        g,
        "berth_security_group_rejected_flows_total",
        "Packets opening a flow that a task's security groups refused, by direction.",
        SG_COUNTERS,
    );
    render_by_direction(
        &mut e,
        g,
        "berth_security_group_accepted_flows_total",
        "New flows a task's security groups let through, by direction; counted once per flow.",
        SG_ACCEPT_COUNTERS,
    );

    let tasks: BTreeSet<&str> = g.bindings.iter().map(|(b, _)| b.task.as_str()).collect();
    e.family(
        "berth_mappings",
        Kind::Gauge,
        "Published mappings (bindings).",
    );
    e.sample("berth_mappings", &[], g.bindings.len() as u64);
    e.family(
        "berth_tasks",
        Kind::Gauge,
        "Tasks with at least one published mapping.",
    );
    e.sample("berth_tasks", &[], tasks.len() as u64);

    if let Some(d) = &g.datapath {
        e.family(
            "berth_map_capacity_entries",
            Kind::Gauge,
            "Entries each eBPF map can hold.",
        );
        for m in &d.maps {
            e.sample(
                "berth_map_capacity_entries",
                &[("map", &m.name)],
                u64::from(m.capacity),
            );
        }
        e.family(
            "berth_map_entries",
            Kind::Gauge,
            "Entries in use in each eBPF hash map (arrays are always full and not listed).",
        );
        for m in &d.maps {
            if let Some(n) = m.entries {
                e.sample("berth_map_entries", &[("map", &m.name)], n);
            }
        }
        let h = &d.host_addrs;
        e.family(
            "berth_host_addresses",
            Kind::Gauge,
            "The host's addresses, by family, at the last push to the host address tables.",
        );
        e.sample("berth_host_addresses", &[("family", "ipv4")], h.ipv4);
        e.sample("berth_host_addresses", &[("family", "ipv6")], h.ipv6);
        e.family(
            "berth_host_addresses_left_out",
            Kind::Gauge,
            "Host addresses a full host address table does not hold (link-local ones first); not 0: raise --max-host-addrs.",
        );
        e.sample(
            "berth_host_addresses_left_out",
            &[("family", "ipv4")],
            h.ipv4_left_out,
        );
        e.sample(
            "berth_host_addresses_left_out",
            &[("family", "ipv6")],
            h.ipv6_left_out,
        );
    }

    render_latency(&mut e, state);
    e.finish()
}

/// Per-binding families, or their sums by protocol when per-binding labels
/// are off.
fn render_bindings(
    e: &mut Exposition,
    bindings: &[(Binding, Option<BindingCounters>)],
    per_binding: bool,
) {
    type Pick = fn(&BindingCounters) -> u64;
    let traffic: [(&str, &str, &str, Pick); 4] = [
        ("berth_forwarded_packets_total", "Packets translated, by direction (in: to the container at the uplink; out: its replies).", "in", |c| c.packets_in),
        ("berth_forwarded_packets_total", "", "out", |c| c.packets_out),
        ("berth_forwarded_bytes_total", "Bytes translated (IP header and payload: the IPv4 total length, or 40 plus the IPv6 payload length), by direction.", "in", |c| c.bytes_in),
        ("berth_forwarded_bytes_total", "", "out", |c| c.bytes_out),
    ];
    let flows: [(&str, &str, Kind, Pick); 3] = [
        (
            "berth_flows_opened_total",
            "Flows opened to a mapping.",
            Kind::Counter,
            |c| c.flows_opened,
        ),
        (
            "berth_flows_refused_total",
            "Packets opening a flow to a mapping that its task's security groups refused.",
            Kind::Counter,
            |c| c.flows_refused,
        ),
        (
            "berth_flows_tracked",
            "Flows of a mapping tracked now.",
            Kind::Gauge,
            |c| c.flows_tracked,
        ),
    ];
    let counted: Vec<(&Binding, &BindingCounters)> = bindings
        .iter()
        .filter_map(|(b, c)| c.as_ref().map(|c| (b, c)))
        .collect();
    for (name, help, dir, pick) in traffic {
        if !help.is_empty() {
            e.family(name, Kind::Counter, help);
        }
        if per_binding {
            for (b, c) in &counted {
                let port = b.host_port.to_string();
                // The host address tells a dual-stack port's two bindings
                // (and a port bound to several addresses) apart.
                let host_ip = b.bind_ip.to_string();
                e.sample(
                    name,
                    &[
                        ("task", &b.task),
                        ("host_ip", &host_ip),
                        ("host_port", &port),
                        ("protocol", b.protocol.as_str()),
                        ("direction", dir),
                    ],
                    pick(c),
                );
            }
        } else {
            for (proto, v) in by_protocol(&counted, pick) {
                e.sample(name, &[("protocol", proto), ("direction", dir)], v);
            }
        }
    }
    for (name, help, kind, pick) in flows {
        e.family(name, kind, help);
        if per_binding {
            for (b, c) in &counted {
                let port = b.host_port.to_string();
                let host_ip = b.bind_ip.to_string();
                e.sample(
                    name,
                    &[
                        ("task", &b.task),
                        ("host_ip", &host_ip),
                        ("host_port", &port),
                        ("protocol", b.protocol.as_str()),
                    ],
                    pick(c),
                );
            }
        } else {
            for (proto, v) in by_protocol(&counted, pick) {
                e.sample(name, &[("protocol", proto)], v);
            }
        }
    }
}

fn by_protocol(
    counted: &[(&Binding, &BindingCounters)],
    pick: fn(&BindingCounters) -> u64,
) -> BTreeMap<&'static str, u64> {
    let mut sums = BTreeMap::from([("tcp", 0u64), ("udp", 0u64)]);
    for (b, c) in counted {
        *sums.entry(b.protocol.as_str()).or_default() += pick(c);
    }
    sums
}

/// One counter family whose samples are datapath counters labelled by
/// direction (`counters`: counter name, direction).
fn render_by_direction(
    e: &mut Exposition,
    g: &Gathered,
    family: &str,
    help: &str,
    counters: &[(&str, &str)],
) {
    e.family(family, Kind::Counter, help);
    for (name, dir) in counters {
        let v = g.counters.get(*name).copied().unwrap_or(0);
        e.sample(family, &[("direction", dir)], v);
    }
}

fn render_latency(e: &mut Exposition, state: &MetricsState) {
    let name = "berth_api_request_duration_seconds";
    e.family(
        name,
        Kind::Histogram,
        "API request latency by method and route template.",
    );
    let hists = state
        .latency
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for ((method, route), h) in &hists {
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
            cumulative += n;
            let le = text::format_f64(*bound);
            e.sample(
                &format!("{name}_bucket"),
                &[("method", method), ("route", route), ("le", &le)],
                cumulative,
            );
        }
        e.sample(
            &format!("{name}_bucket"),
            &[("method", method), ("route", route), ("le", "+Inf")],
            h.count,
        );
        e.sample_f64(
            &format!("{name}_sum"),
            &[("method", method), ("route", route)],
            h.sum,
        );
        e.sample(
            &format!("{name}_count"),
            &[("method", method), ("route", route)],
            h.count,
        );
    }
}

/// The router of `--metrics-listen`: `/metrics` only.
pub fn tcp_router(berth: Berth, state: Arc<MetricsState>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .layer(Extension(state))
        .with_state(berth)
}

/// Binds `--metrics-listen` (at start, so a bad address or a port in use
/// stops the daemon with one line).
pub async fn bind(addr: SocketAddr) -> crate::domain::error::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| crate::domain::error::Error::io(format!("binding --metrics-listen {addr}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::Protocol;

    fn binding(task: &str, port: u16, protocol: Protocol) -> Binding {
        Binding {
            protocol,
            ..Binding::for_test(task, [172, 17, 0, 2], port)
        }
    }

    fn gathered() -> Gathered {
        let c = BindingCounters {
            packets_in: 3,
            bytes_in: 300,
            packets_out: 2,
            bytes_out: 120,
            flows_opened: 1,
            flows_refused: 4,
            flows_tracked: 1,
        };
        Gathered {
            bindings: vec![
                (binding("web", 8080, Protocol::Tcp), Some(c)),
                (binding("web", 8081, Protocol::Tcp), Some(c)),
                (binding("dns", 5353, Protocol::Udp), None),
            ],
            counters: [
                ("ingress_dnat", 7),
                ("nat_no_flow", 2),
                ("policy_denied_ingress", 4),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            datapath: None,
        }
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn per_binding_series_carry_task_port_protocol_and_direction() {
        let state = MetricsState::new(true);
        let text = render(&gathered(), &state);
        assert_eq!(
            line(&text, "berth_forwarded_bytes_total{task=\"web\",host_ip=\"0.0.0.0\",host_port=\"8080\""),
            Some("berth_forwarded_bytes_total{task=\"web\",host_ip=\"0.0.0.0\",host_port=\"8080\",protocol=\"tcp\",direction=\"in\"} 300")
        );
        assert!(text.contains(
            "berth_flows_refused_total{task=\"web\",host_ip=\"0.0.0.0\",host_port=\"8081\",protocol=\"tcp\"} 4\n"
        ));
        assert!(text.contains("berth_dropped_packets_total{reason=\"nat_no_flow\"} 2\n"));
        assert!(text.contains("berth_datapath_events_total{event=\"ingress_dnat\"} 7\n"));
        assert!(
            text.contains("berth_security_group_rejected_flows_total{direction=\"ingress\"} 4\n")
        );
        assert!(text.contains("berth_mappings 3\n") && text.contains("berth_tasks 2\n"));
        assert!(text.contains(&format!(
            "berth_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        // A binding the datapath does not count has no series.
        assert!(!text.contains("host_port=\"5353\""));
        // Each family is declared once.
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let unique: BTreeSet<&str> = types.iter().copied().collect();
        assert_eq!(types.len(), unique.len());
    }

    /// A dual-stack port is two bindings with one task, port and
    /// protocol: the host address keeps their series apart (a duplicate
    /// series is an invalid exposition).
    #[test]
    fn a_dual_stack_ports_two_bindings_are_two_series() {
        let c = |n| BindingCounters {
            packets_in: n,
            ..BindingCounters::default()
        };
        let mut v6 = binding("web", 8080, Protocol::Tcp);
        v6.bind_ip = "::".parse().unwrap();
        v6.container_ip = "fd00:17::2".parse().unwrap();
        let g = Gathered {
            bindings: vec![
                (binding("web", 8080, Protocol::Tcp), Some(c(5))),
                (v6, Some(c(7))),
            ],
            counters: Default::default(),
            datapath: None,
        };
        let text = render(&g, &MetricsState::new(true));
        let want = |ip: &str, n: u64| {
            format!("berth_forwarded_packets_total{{task=\"web\",host_ip=\"{ip}\",host_port=\"8080\",protocol=\"tcp\",direction=\"in\"}} {n}\n")
        };
        assert!(text.contains(&want("0.0.0.0", 5)), "{text}");
        assert!(text.contains(&want("::", 7)), "{text}");
        let series: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
            .collect();
        let unique: BTreeSet<&str> = series.iter().copied().collect();
        assert_eq!(series.len(), unique.len(), "{text}");
    }

    #[test]
    fn without_per_binding_labels_traffic_is_summed_by_protocol() {
        let state = MetricsState::new(false);
        let text = render(&gathered(), &state);
        assert!(!text.contains("task="), "{text}");
        assert!(!text.contains("host_port="));
        assert!(!text.contains("host_ip="));
        assert!(
            text.contains("berth_forwarded_packets_total{protocol=\"tcp\",direction=\"in\"} 6\n")
        );
        assert!(
            text.contains("berth_forwarded_packets_total{protocol=\"udp\",direction=\"out\"} 0\n")
        );
        assert!(text.contains("berth_flows_opened_total{protocol=\"tcp\"} 2\n"));
    }

    #[test]
    fn latency_is_a_cumulative_histogram_per_route_template() {
        let state = MetricsState::new(true);
        state.observe("GET", "/v1/tasks/{name}", 0.002);
        state.observe("GET", "/v1/tasks/{name}", 0.2);
        state.observe("GET", "/v1/tasks/{name}", 60.0);
        let text = render(&Gathered::default(), &state);
        let series = |le: &str| {
            format!("berth_api_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/tasks/{{name}}\",le=\"{le}\"}}")
        };
        assert!(text.contains(&format!("{} 0\n", series("0.001"))));
        assert!(text.contains(&format!("{} 1\n", series("0.0025"))));
        assert!(text.contains(&format!("{} 2\n", series("0.25"))));
        assert!(text.contains(&format!("{} 2\n", series("5"))));
        assert!(text.contains(&format!("{} 3\n", series("+Inf"))));
        assert!(text.contains("berth_api_request_duration_seconds_count{method=\"GET\",route=\"/v1/tasks/{name}\"} 3\n"));
    }

    #[test]
    fn every_datapath_counter_is_shown_once() {
        let counters: BTreeMap<String, u64> = berth_maps::COUNTER_NAMES
            .iter()
            .map(|n| ((*n).to_owned(), 1))
            .collect();
        let g = Gathered {
            counters,
            ..Gathered::default()
        };
        let text = render(&g, &MetricsState::new(true));
        for name in berth_maps::COUNTER_NAMES {
            let n = text
                .lines()
                .filter(|l| {
                    l.starts_with("berth_dropped_packets_total")
                        || l.starts_with("berth_datapath_events_total")
                })
                .filter(|l| l.contains(&format!("\"{name}\"")))
                .count();
            assert_eq!(n, 1, "{name}");
        }
        for d in DROP_COUNTERS {
            assert!(
                berth_maps::COUNTER_NAMES.contains(d),
                "{d} is no datapath counter"
            );
        }
    }
}
