//! Security groups through the registry, on a fake datapath: memberships
//! follow tasks, refused requests change nothing anywhere, and everything
//! survives a restart.
use serde_json::json;

use super::*;
use crate::{
    adapters::store::Store,
    domain::cidr::Ipv4Cidr,
    domain::rules::RuleSpec,
    engine::datapath::{PolicyRule, RulePeer, RuleProto},
    engine::fake::{FakeDatapath, FakeHost, FakePolicy},
    engine::sg_book::{SgBook, SgSettings, DEFAULT_POLICY_ID},
};

type Endpoints = BTreeMap<Ipv4Addr, (u32, bool)>;

/// Everything security groups put in the datapath.
#[derive(Debug, PartialEq)]
struct Snapshot {
    endpoints: Endpoints,
    policies: BTreeMap<u32, FakePolicy>,
    members: BTreeMap<u32, Vec<Ipv4Addr>>,
}

struct Env {
    dir: tempfile::TempDir,
    datapath: Arc<FakeDatapath>,
    settings: SgSettings,
    registry: Option<Registry>,
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A task of a web container publishing 8080 and a sidecar publishing
/// nothing, with their addresses.
fn shop_task() -> (TaskDefinition, BTreeMap<String, Ipv4Addr>) {
    let def = TaskDefinition::from_value(&json!({"containerDefinitions": [
        {"name": "web", "portMappings": [{"containerPort": 80, "hostPort": 8080}]},
        {"name": "sidecar"}
    ]}))
    .unwrap();
    let ips = [
        ("web".to_owned(), ip("172.17.0.2")),
        ("sidecar".to_owned(), ip("172.17.0.5")),
    ]
    .into();
    (def, ips)
}

impl Env {
    fn new() -> Self {
        Self::with(SgSettings::default())
    }

    fn with(settings: SgSettings) -> Self {
        let mut env = Self {
            dir: tempfile::tempdir().unwrap(),
            datapath: Arc::new(FakeDatapath::default()),
            settings,
            registry: None,
        };
        env.open();
        env
    }

    /// An API tier and a database only it may reach on 5432: both tasks
    /// published, both groups made, the API's attached (the database's
    /// is left to each test).
    fn two_tiers(api_description: &str) -> Self {
        let mut env = Self::new();
        env.add("api", "172.17.0.2", &["8080:80"]);
        env.add("db", "172.17.0.3", &["5432:5432"]);
        env.r().sg_create("api", api_description).unwrap();
        env.r().sg_create("db", "").unwrap();
        env.r()
            .sg_add_rule("db", &tcp_in_from_group("5432", "api"))
            .unwrap();
        env.r().sg_attach("api", "api").unwrap();
        env
    }

    /// What the daemon does at start.
    fn open(&mut self) {
        let mut r = Registry::open(
            Store::open(self.dir.path()).unwrap(),
            self.datapath.clone(),
            Bridge::Fixed {
                name: "br0".into(),
                subnets: vec![Ipv4Cidr::new(Ipv4Addr::new(172, 17, 0, 1), 16)],
            },
            Arc::new(FakeHost::default()),
            PortPolicy::new(PortRange {
                start: 49153,
                end: 49162,
            }),
        )
        .unwrap();
        r.configure_security_groups(self.settings.clone()).unwrap();
        r.restore().unwrap();
        self.registry = Some(r);
    }

    /// A restart after a reboot: the datapath starts empty.
    fn reboot(&mut self) {
        self.registry = None;
        self.datapath = Arc::new(FakeDatapath::default());
        self.open();
    }

    fn r(&mut self) -> &mut Registry {
        self.registry.as_mut().unwrap()
    }

    fn add(&mut self, task: &str, container_ip: &str, specs: &[&str]) {
        self.r()
            .add(task, ip(container_ip), &parse_specs(specs).unwrap())
            .unwrap();
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            endpoints: self.datapath.endpoints.lock().unwrap().clone(),
            policies: self.datapath.policies.lock().unwrap().clone(),
            // No members and never set are the same to the datapath.
            members: self
                .datapath
                .members
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, ips)| !ips.is_empty())
                .map(|(id, ips)| (*id, ips.clone()))
                .collect(),
        }
    }

    fn stored(&self) -> SgBook {
        self.registry.as_ref().unwrap().store.load_sgs().unwrap()
    }

    fn endpoint(&self, s: &str) -> Option<(u32, bool)> {
        self.datapath.endpoints.lock().unwrap().get(&ip(s)).copied()
    }

    fn members(&self, group: &str) -> Vec<Ipv4Addr> {
        let id = self.registry.as_ref().unwrap().sg.book.groups[group].id;
        self.datapath.members.lock().unwrap()[&id].clone()
    }

    fn policy_of(&self, task: &str) -> FakePolicy {
        let id = self.registry.as_ref().unwrap().sg.book.attachments[task].policy_id;
        self.datapath.policies.lock().unwrap()[&id].clone()
    }
}

fn rule(value: serde_json::Value) -> RuleSpec {
    serde_json::from_value(value).unwrap()
}

fn tcp_in(port: &str, cidr: &str) -> RuleSpec {
    rule(json!({"direction": "ingress", "protocol": "tcp", "port": port, "cidr": cidr}))
}

fn tcp_in_from_group(port: &str, sg: &str) -> RuleSpec {
    rule(json!({"direction": "ingress", "protocol": "tcp", "port": port, "sg": sg}))
}

fn tcp(port: u16, peer: RulePeer) -> PolicyRule {
    PolicyRule {
        proto: Some(RuleProto::Tcp),
        ports: (port, port),
        icmp_type: None,
        icmp_code: None,
        peer,
    }
}

#[test]
fn attaching_gives_every_container_ip_of_the_task_the_union_of_rules() {
    let mut env = Env::new();
    env.add("web", "172.17.0.2", &["8080:80"]);
    env.add("web", "172.17.0.4", &["8443:443"]);
    env.add("other", "172.17.0.9", &["9090:90"]);
    assert_eq!(env.endpoint("172.17.0.2"), Some((DEFAULT_POLICY_ID, false)));
    env.r().sg_create("a", "").unwrap();
    env.r().sg_create("b", "").unwrap();
    env.r()
        .sg_add_rule("a", &tcp_in("80", "192.0.2.0/24"))
        .unwrap();
    env.r()
        .sg_add_rule("b", &tcp_in_from_group("443", "a"))
        .unwrap();
    env.r().sg_attach("a", "web").unwrap();
    let view = env.r().sg_attach("b", "web").unwrap();
    assert_eq!(view.tasks, ["web"]);
    assert_eq!(view.members, [ip("172.17.0.2"), ip("172.17.0.4")]);

    let id = env.r().sg.book.attachments["web"].policy_id;
    assert_eq!(env.endpoint("172.17.0.2"), Some((id, true)));
    assert_eq!(env.endpoint("172.17.0.4"), Some((id, true)));
    assert_eq!(env.endpoint("172.17.0.9"), Some((DEFAULT_POLICY_ID, false)));
    let (ingress, egress) = env.policy_of("web");
    assert_eq!(
        ingress,
        [
            tcp(80, RulePeer::Cidr(ip("192.0.2.0"), 24)),
            tcp(443, RulePeer::Group(1)),
        ]
    );
    assert_eq!(
        egress.len(),
        2,
        "all-out once per family, though both groups have it: {egress:?}"
    );
    assert_eq!(env.members("a"), [ip("172.17.0.2"), ip("172.17.0.4")]);
    assert_eq!(env.members("b"), [ip("172.17.0.2"), ip("172.17.0.4")]);
}

#[test]
fn membership_follows_map_add_and_rm_at_once() {
    let mut env = Env::two_tiers("");
    env.r().sg_attach("db", "db").unwrap();
    assert_eq!(env.members("api"), [ip("172.17.0.2")]);

    // A second copy of the API task's container: a member at once.
    env.add("api", "172.17.0.4", &["8081:80"]);
    assert_eq!(env.members("api"), [ip("172.17.0.2"), ip("172.17.0.4")]);
    assert!(env.endpoint("172.17.0.4").unwrap().1);

    env.r()
        .remove("api", &parse_specs(&["8081:80"]).unwrap())
        .unwrap();
    assert_eq!(env.members("api"), [ip("172.17.0.2")]);
    assert_eq!(env.endpoint("172.17.0.4"), None);

    // The task goes: its endpoints, memberships and attachments too.
    env.r().remove("api", &[]).unwrap();
    assert_eq!(env.members("api"), Vec::<Ipv4Addr>::new());
    assert_eq!(env.endpoint("172.17.0.2"), None);
    assert!(env.r().sg_show("api").unwrap().tasks.is_empty());
    assert!(!env.stored().attachments.contains_key("api"));
    // A new task of that name starts without groups.
    env.add("api", "172.17.0.2", &["8080:80"]);
    assert_eq!(env.endpoint("172.17.0.2"), Some((DEFAULT_POLICY_ID, false)));
}

#[test]
fn task_run_and_stop_keep_groups_in_step() {
    let mut env = Env::new();
    let (def, ips) = shop_task();
    env.r().run_task("shop", &def, &ips).unwrap();
    env.r().sg_create("shop", "").unwrap();
    let view = env.r().sg_attach("shop", "shop").unwrap();
    // The sidecar has no published port but is part of the task.
    assert_eq!(view.members, [ip("172.17.0.2"), ip("172.17.0.5")]);
    assert!(env.endpoint("172.17.0.5").unwrap().1);
    env.r().stop_task("shop").unwrap();
    assert_eq!(env.endpoint("172.17.0.5"), None);
    assert!(env.members("shop").is_empty());
    assert_eq!(
        env.r().sg_attach("shop", "shop").unwrap_err().to_string(),
        "no such task: shop"
    );
}

#[test]
fn detaching_the_last_group_opens_the_task() {
    let mut env = Env::new();
    env.add("web", "172.17.0.2", &["8080:80"]);
    env.r().sg_create("web", "").unwrap();
    env.r().sg_attach("web", "web").unwrap();
    let id = env.r().sg.book.attachments["web"].policy_id;
    env.r().sg_detach("web", "web").unwrap();
    assert_eq!(env.endpoint("172.17.0.2"), Some((DEFAULT_POLICY_ID, false)));
    assert!(!env.snapshot().policies.contains_key(&id));
    assert!(env.members("web").is_empty());
    // Now it can go.
    env.r().sg_remove("web").unwrap();
    assert!(env.stored().groups.is_empty());
}

#[test]
fn rule_changes_reach_the_datapath_at_once() {
    let mut env = Env::new();
    env.add("web", "172.17.0.2", &["8080:80"]);
    env.r().sg_create("web", "").unwrap();
    env.r().sg_attach("web", "web").unwrap();
    assert!(
        env.policy_of("web").0.is_empty(),
        "a new group lets nothing in"
    );
    env.r()
        .sg_add_rule("web", &tcp_in("80", "0.0.0.0/0"))
        .unwrap();
    assert_eq!(
        env.policy_of("web").0,
        [tcp(80, RulePeer::Cidr(Ipv4Addr::UNSPECIFIED, 0))]
    );
    // Removal names the rule by its fields; the description does not matter.
    let mut same = tcp_in("80", "0.0.0.0/0");
    same.description = "whatever".into();
    env.r().sg_remove_rule("web", &same).unwrap();
    assert!(env.policy_of("web").0.is_empty());
    let all_out = rule(json!({"direction": "egress", "protocol": "all", "cidr": "0.0.0.0/0"}));
    env.r().sg_remove_rule("web", &all_out).unwrap();
    assert!(
        env.policy_of("web").1.iter().all(|r| !r.applies_v4()),
        "nothing out over IPv4"
    );
    let all_out6 = rule(json!({"direction": "egress", "protocol": "all", "cidr": "::/0"}));
    env.r().sg_remove_rule("web", &all_out6).unwrap();
    assert!(env.policy_of("web").1.is_empty(), "and now nothing out");
}

#[test]
fn the_default_group_covers_tasks_without_groups_of_their_own() {
    let mut env = Env::with(SgSettings {
        default_sg: Some("base".into()),
        ..Default::default()
    });
    let base = env.stored().groups["base"].clone();
    assert!(base.ingress.is_empty(), "created with no ingress rules");
    env.add("web", "172.17.0.2", &["8080:80"]);
    env.add("db", "172.17.0.3", &["5432:5432"]);
    assert_eq!(env.endpoint("172.17.0.2"), Some((DEFAULT_POLICY_ID, true)));
    assert_eq!(env.members("base"), [ip("172.17.0.2"), ip("172.17.0.3")]);
    let view = env.r().sg_show("base").unwrap();
    assert!(view.default);
    assert_eq!(view.default_tasks, ["db", "web"]);

    env.r().sg_create("db", "").unwrap();
    env.r().sg_attach("db", "db").unwrap();
    assert_eq!(env.members("base"), [ip("172.17.0.2")]);
    let id = env.r().sg.book.attachments["db"].policy_id;
    assert_eq!(env.endpoint("172.17.0.3"), Some((id, true)));
    env.r().sg_detach("db", "db").unwrap();
    assert_eq!(env.endpoint("172.17.0.3"), Some((DEFAULT_POLICY_ID, true)));

    let err = env.r().sg_remove("base").unwrap_err();
    assert_eq!(
        err.to_string(),
        "security group base is the daemon's --default-sg; restart the daemon without it first"
    );
    assert_eq!(err.http_status(), 409);

    // Without the flag the group stays, but tasks without groups are open.
    env.settings.default_sg = None;
    env.reboot();
    assert_eq!(env.endpoint("172.17.0.2"), Some((DEFAULT_POLICY_ID, false)));
    assert!(env.members("base").is_empty());
    env.r().sg_remove("base").unwrap();
}

#[test]
fn limits_refuse_and_change_nothing() {
    let mut env = Env::with(SgSettings {
        max_per_task: 2,
        ..Default::default()
    });
    env.add("web", "172.17.0.2", &["8080:80"]);
    for g in ["a", "b", "c"] {
        env.r().sg_create(g, "").unwrap();
    }
    env.r().sg_attach("a", "web").unwrap();
    env.r().sg_attach("b", "web").unwrap();
    let before = (env.snapshot(), env.stored());
    let err = env.r().sg_attach("c", "web").unwrap_err();
    assert_eq!(
        err.to_string(),
        "task web already has 2 security groups, the most a task may have \
         (berth daemon --max-sgs-per-task)"
    );
    assert_eq!(err.http_status(), 409);
    assert_eq!((env.snapshot(), env.stored()), before);

    for port in 1..=60 {
        env.r()
            .sg_add_rule("a", &tcp_in(&port.to_string(), "0.0.0.0/0"))
            .unwrap();
    }
    let before = (env.snapshot(), env.stored());
    let err = env
        .r()
        .sg_add_rule("a", &tcp_in("61", "0.0.0.0/0"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "security group a already has 60 ingress rules, the most a group may have"
    );
    assert_eq!((env.snapshot(), env.stored()), before);
    assert_eq!(env.policy_of("web").0.len(), 60);
}

#[test]
fn every_bad_request_is_one_line_and_changes_nothing() {
    let mut env = Env::two_tiers("");
    let before = (env.snapshot(), env.stored(), env.r().sg_list());

    type Op = Box<dyn Fn(&mut Registry) -> Result<crate::engine::sg_book::SgView>>;
    let cases: Vec<(Op, u16, &str)> = vec![
        (
            Box::new(|r| r.sg_create("api", "")),
            409,
            "security group api already exists",
        ),
        (
            Box::new(|r| r.sg_create("no/slash", "")),
            400,
            "invalid security group name \"no/slash\": only letters, digits, '_', '.' and '-' are allowed",
        ),
        (
            Box::new(|r| r.sg_create("x", &"d".repeat(256))),
            400,
            "description is 256 characters long; at most 255 are allowed",
        ),
        (
            Box::new(|r| r.sg_add_rule("db", &tcp_in("5432", "10.0.0.1/8"))),
            400,
            "10.0.0.1/8 is not a canonical CIDR (host bits are set); did you mean 10.0.0.0/8?",
        ),
        (
            Box::new(|r| r.sg_add_rule("db", &tcp_in("9000-8000", "10.0.0.0/8"))),
            400,
            "port range 9000-8000 is reversed",
        ),
        (
            Box::new(|r| {
                r.sg_add_rule(
                    "db",
                    &rule(json!({"direction": "ingress", "protocol": "icmp", "port": "8",
                                 "cidr": "0.0.0.0/0"})),
                )
            }),
            400,
            "protocol icmp has no ports; --port applies to tcp and udp",
        ),
        (
            Box::new(|r| r.sg_add_rule("db", &tcp_in_from_group("5432", "api"))),
            409,
            "security group db already has the rule ingress tcp 5432 from sg api (InvalidPermission.Duplicate)",
        ),
        (
            Box::new(|r| r.sg_add_rule("db", &tcp_in_from_group("5432", "nope"))),
            404,
            "no such security group: nope",
        ),
        (
            Box::new(|r| r.sg_add_rule("nope", &tcp_in("1", "0.0.0.0/0"))),
            404,
            "no such security group: nope",
        ),
        (
            Box::new(|r| r.sg_remove_rule("db", &tcp_in("1", "0.0.0.0/0"))),
            404,
            "security group db has no rule ingress tcp 1 from 0.0.0.0/0",
        ),
        (
            Box::new(|r| r.sg_attach("api", "nope")),
            404,
            "no such task: nope",
        ),
        (
            Box::new(|r| r.sg_attach("nope", "api")),
            404,
            "no such security group: nope",
        ),
        (
            Box::new(|r| r.sg_attach("api", "api")),
            409,
            "security group api is already attached to task api",
        ),
        (
            Box::new(|r| r.sg_detach("db", "api")),
            404,
            "security group db is not attached to task api",
        ),
        (
            Box::new(|r| r.sg_remove("api")),
            409,
            "security group api is attached to task api; detach it first (DependencyViolation)",
        ),
        (
            Box::new(|r| r.sg_show("nope")),
            404,
            "no such security group: nope",
        ),
    ];
    for (op, status, message) in cases {
        let err = op(env.r()).unwrap_err();
        assert_eq!(err.to_string(), message);
        assert_eq!(err.http_status(), status, "{message}");
        assert_eq!(
            (env.snapshot(), env.stored(), env.r().sg_list()),
            before,
            "{message}"
        );
    }

    env.r().sg_detach("api", "api").unwrap();
    let err = env.r().sg_remove("api").unwrap_err();
    assert_eq!(
        err.to_string(),
        "security group api is referenced by rules of security group db; remove those rules \
         first (DependencyViolation)"
    );
    assert!(env.stored().groups.contains_key("api"));
}

#[test]
fn a_failed_datapath_write_rolls_everything_back() {
    let mut env = Env::new();
    env.add("web", "172.17.0.2", &["8080:80"]);
    env.r().sg_create("web", "").unwrap();
    let before = (env.snapshot(), env.stored(), env.r().sg_list());
    // The policy and the members go in before the endpoint fails.
    env.datapath.fail_endpoint_of(Some(ip("172.17.0.2")));
    let err = env.r().sg_attach("web", "web").unwrap_err();
    assert!(matches!(err, Error::Datapath(_)), "{err}");
    assert_eq!((env.snapshot(), env.stored(), env.r().sg_list()), before);
    env.datapath.fail_endpoint_of(None);
    env.r().sg_attach("web", "web").unwrap();

    // Publishing a new container of the task fails the same way: no
    // binding, no member, no endpoint.
    let before = (env.snapshot(), env.stored(), env.r().bindings());
    env.datapath.fail_endpoint_of(Some(ip("172.17.0.4")));
    let err = env
        .r()
        .add("web", ip("172.17.0.4"), &parse_specs(&["8081:80"]).unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::Datapath(_)), "{err}");
    assert_eq!((env.snapshot(), env.stored(), env.r().bindings()), before);
    assert_eq!(env.datapath.bindings().len(), 1);
}

#[test]
fn a_failed_binding_insert_takes_the_new_endpoint_back_out() {
    let mut env = Env::new();
    env.add("web", "172.17.0.2", &["8080:80"]);
    env.r().sg_create("web", "").unwrap();
    env.r().sg_attach("web", "web").unwrap();
    let before = env.snapshot();
    env.datapath.fail_insert_of_host_port(8081);
    env.r()
        .add("web", ip("172.17.0.4"), &parse_specs(&["8081:80"]).unwrap())
        .unwrap_err();
    assert_eq!(env.snapshot(), before);
}

#[test]
fn everything_survives_a_restart_and_is_pushed_again() {
    let mut env = Env::two_tiers("API tier");
    env.r().sg_attach("db", "db").unwrap();
    env.r().sg_create("gone", "").unwrap();
    env.r().sg_remove("gone").unwrap();
    let before = (env.snapshot(), env.r().sg_list());

    env.reboot();
    assert_eq!((env.snapshot(), env.r().sg_list()), before);
    // Ids keep counting: a removed group's id is not handed out again.
    assert_eq!(env.r().sg_create("new", "").unwrap().id, 4);
    env.add("web", "172.17.0.9", &["9090:90"]);
    env.r().sg_attach("new", "web").unwrap();
    let ids: BTreeSet<u32> = env
        .r()
        .sg
        .book
        .attachments
        .values()
        .map(|a| a.policy_id)
        .collect();
    assert_eq!(ids.len(), 3, "policy ids stay unique across restarts");

    // A plain restart (pins kept) pushes the same state again.
    let before = env.snapshot();
    env.registry = None;
    env.open();
    assert_eq!(env.snapshot(), before);
}

#[test]
fn attachments_of_tasks_gone_while_stopped_are_dropped_at_start() {
    let mut env = Env::new();
    env.add("web", "172.17.0.2", &["8080:80"]);
    env.r().sg_create("web", "").unwrap();
    env.r().sg_attach("web", "web").unwrap();
    // As if the daemon died between removing the task and its groups.
    env.r()
        .store
        .commit(&Commit {
            tasks: vec![("web".into(), vec![])],
            ..Default::default()
        })
        .unwrap();
    env.reboot();
    assert!(env.stored().attachments.is_empty());
    env.r().sg_remove("web").unwrap();
}

#[test]
fn flow_timeouts_reach_the_datapath() {
    let mut settings = SgSettings::default();
    settings.timeouts.udp_single = 2;
    let env = Env::with(settings);
    assert_eq!(env.datapath.timeouts.lock().unwrap().unwrap().udp_single, 2);
}

#[tokio::test]
async fn show_adds_the_host_wide_drop_counters() {
    let mut env = Env::new();
    let berth = Berth::new(env.registry.take().unwrap());
    berth.sg_create("web".into(), String::new()).await.unwrap();
    let view = berth.sg_show("web".into()).await.unwrap();
    let counters = view.host_counters.unwrap();
    assert_eq!(
        counters.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "ct_table_full",
            "frag_denied",
            "frag_no_first",
            "policy_denied_egress",
            "policy_denied_icmp",
            "policy_denied_ingress"
        ]
    );
    assert!(berth.sg_list().await[0].host_counters.is_none());
}

#[test]
fn restart_drops_policy_entries_the_store_does_not_know() {
    let mut env = Env::new();
    env.add("web", "172.17.0.2", &["8080:80"]);
    env.r().sg_create("sg-web", "").unwrap();
    env.r().sg_attach("sg-web", "web").unwrap();
    let before = env.snapshot();
    // As if a crash had left entries behind that never reached the store.
    let dp = env.datapath.clone();
    dp.set_endpoint(ip("172.17.0.9"), 77, true).unwrap();
    dp.set_policy(77, &[], &[]).unwrap();
    dp.set_group_members(99, &[ip("172.17.0.9")]).unwrap();
    assert_ne!(env.snapshot(), before);
    // A daemon restart: the pinned maps (here the same fake) keep their
    // contents, and the store is reloaded.
    env.registry = None;
    env.open();
    assert_eq!(
        env.snapshot(),
        before,
        "stale endpoint, policy and group dropped"
    );
}

fn ip6(s: &str) -> std::net::Ipv6Addr {
    s.parse().unwrap()
}

impl Env {
    fn add_dual(&mut self, task: &str, v4: &str, v6: &str, specs: &[&str]) {
        let ips = ContainerIps {
            v4: Some(ip(v4)),
            v6: Some(ip6(v6)),
        };
        self.r()
            .add(task, ips, &parse_specs(specs).unwrap())
            .unwrap();
    }

    fn endpoint6(&self, s: &str) -> Option<(u32, bool)> {
        self.datapath
            .endpoints6
            .lock()
            .unwrap()
            .get(&ip6(s))
            .copied()
    }

    fn members6(&self, group: &str) -> Vec<std::net::Ipv6Addr> {
        let id = self.registry.as_ref().unwrap().sg.book.groups[group].id;
        self.datapath.members6.lock().unwrap()[&id].clone()
    }
}

#[test]
fn a_dual_stack_tasks_ipv6_address_is_an_endpoint_and_member_with_its_ipv4_policy() {
    let mut env = Env::new();
    // A plain spec publishes both families: an IPv6 binding carries the
    // container's IPv6 address.
    env.add_dual("web", "172.17.0.2", "fd00::2", &["8080:80"]);
    env.add("api", "172.17.0.4", &["9090:90"]);
    assert_eq!(env.endpoint6("fd00::2"), Some((DEFAULT_POLICY_ID, false)));
    env.r().sg_create("web", "").unwrap();
    env.r().sg_attach("web", "web").unwrap();
    let (v4, v6) = (
        env.endpoint("172.17.0.2").unwrap(),
        env.endpoint6("fd00::2"),
    );
    assert!(v4.1, "the task has policy");
    assert_eq!(v6, Some(v4), "same task id and flag on both families");
    assert_eq!(env.members("web"), [ip("172.17.0.2")]);
    assert_eq!(env.members6("web"), [ip6("fd00::2")]);
    let view = env.r().sg_show("web").unwrap();
    assert_eq!(view.members6, [ip6("fd00::2")]);
    // An IPv4-only task adds no IPv6 member.
    env.r().sg_attach("web", "api").unwrap();
    assert_eq!(env.members6("web"), [ip6("fd00::2")]);
    // It all comes back after a reboot (empty datapath) ...
    env.reboot();
    assert_eq!(env.endpoint6("fd00::2"), Some(v4));
    assert_eq!(env.members6("web"), [ip6("fd00::2")]);
    // ... and goes with the task's IPv6 binding.
    env.r()
        .remove("web", &parse_specs(&["[::]:8080:80"]).unwrap())
        .unwrap();
    assert_eq!(env.endpoint6("fd00::2"), None);
    assert!(env.members6("web").is_empty());
    assert_eq!(env.endpoint("172.17.0.2"), Some(v4), "IPv4 stays");
}

#[test]
fn restart_drops_ipv6_policy_entries_the_store_does_not_know() {
    let mut env = Env::new();
    env.add_dual("web", "172.17.0.2", "fd00::2", &["8080:80"]);
    env.r().sg_create("sg-web", "").unwrap();
    env.r().sg_attach("sg-web", "web").unwrap();
    let want = env.endpoint6("fd00::2");
    let dp = env.datapath.clone();
    dp.set_endpoint6(ip6("fd00::9"), 77, true).unwrap();
    dp.set_group_members6(99, &[ip6("fd00::9")]).unwrap();
    env.registry = None;
    env.open();
    assert_eq!(
        *dp.endpoints6.lock().unwrap(),
        BTreeMap::from([(ip6("fd00::2"), want.unwrap())])
    );
    assert!(!dp.members6.lock().unwrap().contains_key(&99));
}

#[test]
fn a_task_runs_containers_ipv6_addresses_are_endpoints_and_go_with_it() {
    let mut env = Env::new();
    let (def, ips) = shop_task();
    // The sidecar publishes nothing: its IPv6 address is known from the
    // task's record only.
    let ips6: BTreeMap<String, std::net::Ipv6Addr> = [
        ("web".to_owned(), ip6("fd00::2")),
        ("sidecar".to_owned(), ip6("fd00::5")),
    ]
    .into();
    env.r().run_task_dual("shop", &def, &ips, &ips6).unwrap();
    env.r().sg_create("shop", "").unwrap();
    let view = env.r().sg_attach("shop", "shop").unwrap();
    assert_eq!(view.members6, [ip6("fd00::2"), ip6("fd00::5")]);
    let v4 = env.endpoint("172.17.0.5");
    assert!(v4.unwrap().1);
    assert_eq!(env.endpoint6("fd00::5"), v4);
    assert_eq!(env.endpoint6("fd00::2"), v4);
    assert_eq!(env.members6("shop"), [ip6("fd00::2"), ip6("fd00::5")]);
    env.r().stop_task("shop").unwrap();
    assert_eq!(env.endpoint6("fd00::2"), None);
    assert_eq!(env.endpoint6("fd00::5"), None);
    assert!(env.members6("shop").is_empty());
}
