//! Flow-log records in the format of AWS VPC Flow Logs: the fields by
//! AWS's names and versions, a `--flow-log-format` of `${field}`s, and one
//! record rendered as a line (fields separated by one space, `-` where a
//! field does not apply or berth cannot know it). IPv6 addresses are
//! written as AWS writes them: RFC 5952 text (lower case, the longest run
//! of zero groups as `::`), `type` `IPv6`.
use std::{fmt::Write as _, net::IpAddr};

use super::model::EcsLabels;

macro_rules! fields {
    ($($variant:ident = $name:literal @ $version:literal,)*) => {
        /// A flow-log field, by AWS's name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Field {
            $($variant,)*
        }

        impl Field {
            /// Every field AWS defines, in AWS's table order.
            pub const ALL: &'static [Field] = &[$(Field::$variant,)*];

            pub const fn name(self) -> &'static str {
                match self {
                    $(Field::$variant => $name,)*
                }
            }

            /// The flow-log version that introduced the field.
            pub const fn version(self) -> u8 {
                match self {
                    $(Field::$variant => $version,)*
                }
            }
        }
    };
}

fields! {
    Version = "version" @ 2,
    AccountId = "account-id" @ 2,
    InterfaceId = "interface-id" @ 2,
    SrcAddr = "srcaddr" @ 2,
    DstAddr = "dstaddr" @ 2,
    SrcPort = "srcport" @ 2,
    DstPort = "dstport" @ 2,
    Protocol = "protocol" @ 2,
    Packets = "packets" @ 2,
    Bytes = "bytes" @ 2,
    Start = "start" @ 2,
    End = "end" @ 2,
    Action = "action" @ 2,
    LogStatus = "log-status" @ 2,
    VpcId = "vpc-id" @ 3,
    SubnetId = "subnet-id" @ 3,
    InstanceId = "instance-id" @ 3,
    TcpFlags = "tcp-flags" @ 3,
    Type = "type" @ 3,
    PktSrcAddr = "pkt-srcaddr" @ 3,
    PktDstAddr = "pkt-dstaddr" @ 3,
    Region = "region" @ 4,
    AzId = "az-id" @ 4,
    SublocationType = "sublocation-type" @ 4,
    SublocationId = "sublocation-id" @ 4,
    PktSrcAwsService = "pkt-src-aws-service" @ 5,
    PktDstAwsService = "pkt-dst-aws-service" @ 5,
    FlowDirection = "flow-direction" @ 5,
    TrafficPath = "traffic-path" @ 5,
    EcsClusterArn = "ecs-cluster-arn" @ 7,
    EcsClusterName = "ecs-cluster-name" @ 7,
    EcsContainerInstanceArn = "ecs-container-instance-arn" @ 7,
    EcsContainerInstanceId = "ecs-container-instance-id" @ 7,
    EcsContainerId = "ecs-container-id" @ 7,
    EcsSecondContainerId = "ecs-second-container-id" @ 7,
    EcsServiceName = "ecs-service-name" @ 7,
    EcsTaskDefinitionArn = "ecs-task-definition-arn" @ 7,
    EcsTaskArn = "ecs-task-arn" @ 7,
    EcsTaskId = "ecs-task-id" @ 7,
    RejectReason = "reject-reason" @ 8,
}

/// The default format: every version-2 field, in AWS's order.
pub const DEFAULT_FORMAT: &str = "${version} ${account-id} ${interface-id} ${srcaddr} ${dstaddr} \
     ${srcport} ${dstport} ${protocol} ${packets} ${bytes} ${start} ${end} ${action} ${log-status}";

/// The most fields a format may name (AWS has 40; a format may repeat one).
const MAX_FIELDS: usize = 64;

/// The fields a flow log writes, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowLogFormat {
    fields: Vec<Field>,
}

impl Default for FlowLogFormat {
    fn default() -> Self {
        Self::parse(DEFAULT_FORMAT).expect("the default format parses")
    }
}

impl FlowLogFormat {
    /// `${field} ${field} …`, as AWS writes a custom format.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut fields = Vec::new();
        for token in s.split_whitespace() {
            let name = token
                .strip_prefix("${")
                .and_then(|t| t.strip_suffix('}'))
                .ok_or_else(|| {
                    format!("flow-log format: {token:?} is not a field; write fields as ${{srcaddr}}, separated by spaces")
                })?;
            let field = Field::ALL
                .iter()
                .find(|f| f.name() == name)
                .ok_or_else(|| format!("flow-log format: unknown field ${{{name}}}"))?;
            fields.push(*field);
            if fields.len() > MAX_FIELDS {
                return Err(format!("flow-log format: more than {MAX_FIELDS} fields"));
            }
        }
        if fields.is_empty() {
            return Err("flow-log format: name at least one field, e.g. ${srcaddr}".into());
        }
        Ok(Self { fields })
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// What `version` says: the highest version of the fields named, as AWS.
    pub fn version(&self) -> u8 {
        self.fields.iter().map(|f| f.version()).max().unwrap_or(2)
    }

    /// One record as a line (no newline).
    pub fn render(&self, r: &Record) -> String {
        let mut line = String::with_capacity(128);
        for (i, f) in self.fields.iter().enumerate() {
            if i > 0 {
                line.push(' ');
            }
            self.field(&mut line, *f, r);
        }
        line
    }

    fn field(&self, out: &mut String, f: Field, r: &Record) {
        let flow = r.flow.as_ref();
        let dash = "-";
        match f {
            Field::Version => {
                let _ = write!(out, "{}", self.version());
            }
            Field::AccountId => out.push_str(word(r.account_id.as_deref())),
            Field::InterfaceId => out.push_str(word(r.interface.as_deref())),
            Field::Start => {
                let _ = write!(out, "{}", r.start);
            }
            Field::End => {
                let _ = write!(out, "{}", r.end);
            }
            Field::LogStatus => out.push_str(r.status.as_str()),
            Field::Type => out.push_str(match flow {
                Some(fl) if fl.src.is_ipv6() => "IPv6",
                Some(_) => "IPv4",
                None => dash,
            }),
            _ => match flow {
                Some(fl) => fl.field(out, f),
                None => out.push_str(dash),
            },
        }
    }
}

/// A value that holds whitespace would split the record: `-` instead
/// (labels are checked when bindings are made; this is the last guard).
fn word(v: Option<&str>) -> &str {
    match v {
        Some(s) if !s.is_empty() && !s.chars().any(char::is_whitespace) => s,
        _ => "-",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Accept,
    Reject,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStatus {
    /// Data is logging normally.
    Ok,
    /// No traffic on the interface during the window.
    NoData,
    /// Records were lost during the window.
    SkipData,
}

impl LogStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::NoData => "NODATA",
            Self::SkipData => "SKIPDATA",
        }
    }
}

/// Whether a record is what the uplink received (client -> host) or sent
/// (the container's replies, host -> client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// One flow-log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub account_id: Option<String>,
    /// The uplink's name.
    pub interface: Option<String>,
    /// `None`: a NODATA or SKIPDATA record.
    pub flow: Option<FlowFields>,
    /// Unix seconds.
    pub start: u64,
    pub end: u64,
    pub status: LogStatus,
}

/// One direction of one flow within a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowFields {
    /// Both addresses of a flow, and both `pkt_*`, are of one family.
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub packets: u64,
    pub bytes: u64,
    pub action: Action,
    /// The addresses on the packet inside the host: the container's in
    /// place of the host address.
    pub pkt_src: IpAddr,
    pub pkt_dst: IpAddr,
    /// AWS's bits (FIN 1, SYN 2, RST 4, SYN-ACK 18) seen in the window;
    /// `None` for UDP.
    pub tcp_flags: Option<u8>,
    pub direction: Direction,
    pub ecs: EcsLabels,
}

impl FlowFields {
    fn field(&self, out: &mut String, f: Field) {
        let _ = match f {
            Field::SrcAddr => write!(out, "{}", self.src),
            Field::DstAddr => write!(out, "{}", self.dst),
            Field::SrcPort => write!(out, "{}", self.src_port),
            Field::DstPort => write!(out, "{}", self.dst_port),
            Field::Protocol => write!(out, "{}", self.protocol),
            Field::Packets => write!(out, "{}", self.packets),
            Field::Bytes => write!(out, "{}", self.bytes),
            Field::Action => write!(
                out,
                "{}",
                match self.action {
                    Action::Accept => "ACCEPT",
                    Action::Reject => "REJECT",
                }
            ),
            Field::PktSrcAddr => write!(out, "{}", self.pkt_src),
            Field::PktDstAddr => write!(out, "{}", self.pkt_dst),
            Field::TcpFlags => match self.tcp_flags {
                Some(v) => write!(out, "{v}"),
                None => write!(out, "-"),
            },
            Field::FlowDirection => write!(
                out,
                "{}",
                match self.direction {
                    Direction::Ingress => "ingress",
                    Direction::Egress => "egress",
                }
            ),
            Field::EcsTaskArn => write!(out, "{}", word(self.ecs.task_arn.as_deref())),
            Field::EcsTaskId => write!(out, "{}", word(self.task_arn().map(|a| a.task_id))),
            Field::EcsClusterName => {
                write!(out, "{}", word(self.task_arn().and_then(|a| a.cluster)))
            }
            Field::EcsClusterArn => match self.task_arn().and_then(|a| a.cluster_arn()) {
                Some(arn) => write!(out, "{}", word(Some(&arn))),
                None => write!(out, "-"),
            },
            _ => write!(out, "-"),
        };
    }

    fn task_arn(&self) -> Option<TaskArn<'_>> {
        self.ecs.task_arn.as_deref().and_then(TaskArn::parse)
    }
}

/// `arn:aws:ecs:REGION:ACCOUNT:task/CLUSTER/ID` (or the old
/// `task/ID`, which names no cluster).
struct TaskArn<'a> {
    prefix: &'a str,
    cluster: Option<&'a str>,
    task_id: &'a str,
}

impl<'a> TaskArn<'a> {
    fn parse(arn: &'a str) -> Option<Self> {
        let (prefix, resource) = arn.split_once(":task/")?;
        if !prefix.starts_with("arn:") {
            return None;
        }
        let (cluster, task_id) = match resource.split_once('/') {
            Some((c, id)) => (Some(c), id),
            None => (None, resource),
        };
        (!task_id.is_empty()).then_some(Self {
            prefix,
            cluster,
            task_id,
        })
    }

    fn cluster_arn(&self) -> Option<String> {
        self.cluster.map(|c| format!("{}:cluster/{c}", self.prefix))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn flow() -> FlowFields {
        FlowFields {
            src: Ipv4Addr::new(192, 0, 2, 2).into(),
            dst: Ipv4Addr::new(192, 0, 2, 1).into(),
            src_port: 40000,
            dst_port: 8080,
            protocol: 6,
            packets: 5,
            bytes: 300,
            action: Action::Accept,
            pkt_src: Ipv4Addr::new(192, 0, 2, 2).into(),
            pkt_dst: Ipv4Addr::new(172, 17, 0, 2).into(),
            tcp_flags: Some(3),
            direction: Direction::Ingress,
            ecs: EcsLabels {
                task_arn: Some(
                    "arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef".into(),
                ),
                container_name: Some("web".into()),
            },
        }
    }

    fn record(flow: Option<FlowFields>, status: LogStatus) -> Record {
        Record {
            account_id: None,
            interface: Some("eth0".into()),
            flow,
            start: 1_700_000_000,
            end: 1_700_000_059,
            status,
        }
    }

    #[test]
    fn the_default_format_is_the_version_2_fields_in_aws_order() {
        let f = FlowLogFormat::default();
        let names: Vec<&str> = f.fields().iter().map(|f| f.name()).collect();
        assert_eq!(
            names.join(" "),
            "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets \
             bytes start end action log-status"
        );
        assert_eq!(
            f.render(&record(Some(flow()), LogStatus::Ok)),
            "2 - eth0 192.0.2.2 192.0.2.1 40000 8080 6 5 300 1700000000 1700000059 ACCEPT OK"
        );
    }

    #[test]
    fn nodata_and_skipdata_records_have_dashes_where_a_flow_would_be() {
        let f = FlowLogFormat::default();
        assert_eq!(
            f.render(&record(None, LogStatus::NoData)),
            "2 - eth0 - - - - - - - 1700000000 1700000059 - NODATA"
        );
        let mut r = record(None, LogStatus::SkipData);
        r.interface = None;
        r.account_id = Some("123456789012".into());
        assert_eq!(
            f.render(&r),
            "2 123456789012 - - - - - - - - 1700000000 1700000059 - SKIPDATA"
        );
    }

    #[test]
    fn a_custom_format_takes_later_fields_and_reports_the_highest_version() {
        let f = FlowLogFormat::parse(
            "${version} ${srcaddr} ${pkt-dstaddr} ${tcp-flags} ${flow-direction} ${ecs-task-arn} \
             ${ecs-task-id} ${ecs-cluster-name} ${ecs-cluster-arn} ${ecs-container-id} ${vpc-id} ${type}",
        )
        .unwrap();
        assert_eq!(f.version(), 7);
        assert_eq!(
            f.render(&record(Some(flow()), LogStatus::Ok)),
            "7 192.0.2.2 172.17.0.2 3 ingress \
             arn:aws:ecs:eu-west-1:123456789012:task/prod/0123456789abcdef 0123456789abcdef prod \
             arn:aws:ecs:eu-west-1:123456789012:cluster/prod - - IPv4"
        );
        let f = FlowLogFormat::parse("${srcaddr} ${tcp-flags}").unwrap();
        assert_eq!(f.version(), 3);
    }

    /// An IPv6 flow: RFC 5952 text in every address field, as AWS writes
    /// IPv6 records (`2001:db8::2`, not `2001:0db8:0:0:0:0:0:2`), and
    /// `type` `IPv6`.
    fn flow6() -> FlowFields {
        let client = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        FlowFields {
            src: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            dst: client,
            src_port: 8080,
            dst_port: 40000,
            protocol: 17,
            packets: 2,
            bytes: 296,
            action: Action::Accept,
            pkt_src: IpAddr::V6(Ipv6Addr::new(0xfd00, 0x17, 0, 0, 0xab, 0, 0, 2)),
            pkt_dst: client,
            tcp_flags: None,
            direction: Direction::Egress,
            ecs: EcsLabels::default(),
        }
    }

    #[test]
    fn an_ipv6_flow_is_written_with_rfc_5952_addresses_and_type_ipv6() {
        assert_eq!(
            FlowLogFormat::default().render(&record(Some(flow6()), LogStatus::Ok)),
            "2 - eth0 2001:db8::1 2001:db8::2 8080 40000 17 2 296 1700000000 1700000059 ACCEPT OK"
        );
        let f = FlowLogFormat::parse(
            "${version} ${type} ${srcaddr} ${dstaddr} ${pkt-srcaddr} ${pkt-dstaddr} ${tcp-flags} \
             ${flow-direction}",
        )
        .unwrap();
        assert_eq!(
            f.render(&record(Some(flow6()), LogStatus::Ok)),
            "5 IPv6 2001:db8::1 2001:db8::2 fd00:17::ab:0:0:2 2001:db8::2 - egress"
        );
        assert_eq!(
            f.render(&record(None, LogStatus::NoData)),
            "5 - - - - - - -",
            "a record without a flow has no type"
        );
    }

    #[test]
    fn a_task_arn_without_a_cluster_gives_its_id_only() {
        let mut fl = flow();
        fl.ecs.task_arn = Some("arn:aws:ecs:us-east-1:123456789012:task/abc".into());
        let f =
            FlowLogFormat::parse("${ecs-task-id} ${ecs-cluster-name} ${ecs-cluster-arn}").unwrap();
        assert_eq!(
            f.render(&record(Some(fl.clone()), LogStatus::Ok)),
            "abc - -"
        );
        fl.ecs.task_arn = Some("not an arn".into());
        assert_eq!(f.render(&record(Some(fl), LogStatus::Ok)), "- - -");
    }

    #[test]
    fn unknown_fields_and_malformed_formats_are_refused_in_one_line() {
        for (input, err) in [
            (
                "${srcaddr} ${nope}",
                "flow-log format: unknown field ${nope}",
            ),
            (
                "srcaddr",
                "flow-log format: \"srcaddr\" is not a field; write fields as ${srcaddr}, separated by spaces",
            ),
            (
                "${srcaddr",
                "flow-log format: \"${srcaddr\" is not a field; write fields as ${srcaddr}, separated by spaces",
            ),
            ("  ", "flow-log format: name at least one field, e.g. ${srcaddr}"),
        ] {
            assert_eq!(FlowLogFormat::parse(input).unwrap_err(), err, "{input:?}");
        }
        let huge = "${srcaddr} ".repeat(MAX_FIELDS + 1);
        assert_eq!(
            FlowLogFormat::parse(&huge).unwrap_err(),
            format!("flow-log format: more than {MAX_FIELDS} fields")
        );
    }

    #[test]
    fn a_value_with_whitespace_cannot_split_a_record() {
        let mut fl = flow();
        fl.ecs.task_arn = Some("arn:aws:ecs:r:1:task/c x/id".into());
        let f = FlowLogFormat::parse("${ecs-task-arn} ${srcaddr}").unwrap();
        assert_eq!(f.render(&record(Some(fl), LogStatus::Ok)), "- 192.0.2.2");
    }
}
