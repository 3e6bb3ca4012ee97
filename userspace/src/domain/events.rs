//! Binding added / removed events, for registrars that follow dynamic ports
//! (`GET /v1/events`, `berth events`): one JSON object per line,
//! `{"event":"added","binding":{...},"container":"web","time":"2024-05-01T12:00:00.123Z"}`
//! (`container` only for tasks run from a task definition).
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::domain::model::Binding;

/// How many events a slow subscriber may fall behind before its stream is
/// ended (it then reconnects and re-reads the bindings).
pub const EVENT_BUFFER: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Added,
    Removed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event: EventKind,
    pub binding: Binding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
}

impl Event {
    pub fn now(event: EventKind, binding: Binding, container: Option<String>) -> Self {
        Self {
            event,
            binding,
            container,
            time: rfc3339(SystemTime::now()),
        }
    }
}

/// The last line of a stream whose subscriber fell too far behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lagged {
    pub event: String,
    pub missed: u64,
    pub time: String,
}

impl Lagged {
    pub fn now(missed: u64) -> Self {
        Self {
            event: "lagged".into(),
            missed,
            time: rfc3339(SystemTime::now()),
        }
    }
}

/// `2024-05-01T12:00:00.123Z`. Times before 1970 print as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::domain::model::Protocol;

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    #[test]
    fn rfc3339_formats_utc_with_milliseconds() {
        assert_eq!(rfc3339(at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(at(951_782_400, 5)), "2000-02-29T00:00:00.005Z");
        assert_eq!(rfc3339(at(1_714_564_800, 123)), "2024-05-01T12:00:00.123Z");
        assert_eq!(rfc3339(at(4_102_444_799, 999)), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn events_serialize_as_one_json_object() {
        let b = Binding {
            task: "web".into(),
            container_ip: "172.17.0.2".parse().unwrap(),
            bind_ip: "0.0.0.0".parse().unwrap(),
            host_port: 49160,
            container_port: 80,
            protocol: Protocol::Tcp,
            ecs: Default::default(),
            cni: None,
            docker_events: false,
        };
        let mut e = Event::now(EventKind::Added, b, None);
        e.time = "2024-05-01T12:00:00.123Z".into();
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"added","binding":{"task":"web","containerIP":"172.17.0.2","bindIP":"0.0.0.0","hostPort":49160,"containerPort":80,"protocol":"tcp"},"time":"2024-05-01T12:00:00.123Z"}"#
        );
        e.event = EventKind::Removed;
        e.container = Some("web".into());
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "removed");
        assert_eq!(v["container"], "web");
    }
}
