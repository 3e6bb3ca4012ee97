//! Forgetting removed bindings' tracked flows in the background.
//!
//! Unpublishing takes a binding out of `BERTH_SERVICES` and `BERTH_PORTS` before
//! the request answers: no new flow can start for it, and the bind guard
//! lets host processes have the port again. Its tracked flows are forgotten
//! afterwards by one worker thread, so the answer does not wait for a pass
//! over a full flow table (262 144 entries, about 0.2 s). Removals queued
//! while a pass runs are swept together by the next pass: one pass per
//! burst, not one per request.
//!
//! What a pass forgets: the published-port flows (`BERTH_NAT`, `BERTH_NAT_NEW`;
//! an IPv6 binding's in `BERTH_NAT6`, `BERTH_NAT6_NEW`) of the removed bindings, and the policy-tracked flows (`BERTH_CT`,
//! `BERTH_CT_NEW`) with an address of a task that is gone at either end — a
//! removed task loses its groups and what they allowed.
//!
//! Ordering: a publish whose bindings share a flow owner (protocol,
//! container address and port, host port) with a pending sweep, or whose
//! container address is a pending sweep's, waits until that sweep is done.
//! Otherwise the sweep would take the new binding's fresh flows, or the new
//! binding would inherit the old one's (the stale UDP state Docker users
//! hit after replacing a container). Publishes that share nothing with a
//! pending sweep do not wait.
//!
//! Shutdown drains the queue ([`FlowSweeper::close`]). A daemon killed with
//! sweeps pending leaves the flows to the next start, whose reconcile
//! forgets every published-port flow no stored binding owns.
use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    domain::model::Binding,
    domain::spec::{PortRange, PortSpec},
    engine::datapath::Datapath,
};

/// What one or more removals leave to forget.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Work {
    bindings: Vec<Binding>,
    /// Container addresses no task has any more.
    endpoints: Vec<Ipv4Addr>,
}

impl Work {
    fn is_empty(&self) -> bool {
        self.bindings.is_empty() && self.endpoints.is_empty()
    }

    fn extend(&mut self, bindings: &[Binding], endpoints: &[Ipv4Addr]) {
        self.bindings.extend_from_slice(bindings);
        self.endpoints.extend_from_slice(endpoints);
    }

    /// Whether a publish of `new` for a task at `addrs` must wait for this
    /// work.
    fn blocks(&self, new: &[Binding], addrs: &[Ipv4Addr]) -> bool {
        addrs.iter().any(|a| self.endpoints.contains(a))
            || new.iter().any(|n| {
                n.container_ip4()
                    .is_some_and(|ip| self.endpoints.contains(&ip))
                    || self.bindings.iter().any(|g| same_flow_owner(g, n))
            })
    }

    /// Whether this work touches any of `addrs` (a cheap check before a
    /// publish knows its host ports).
    fn touches(&self, addrs: &[Ipv4Addr]) -> bool {
        addrs.iter().any(|a| {
            self.endpoints.contains(a) || self.bindings.iter().any(|g| g.container_ip == *a)
        })
    }

    /// Whether a publish of `specs` at `ip` could meet this work, judged
    /// from the specs without expanding them: a static spec that maps a
    /// swept binding's host port to its container port, or a dynamic one
    /// with its container port (it may be given that host port).
    fn blocks_specs(&self, ip: IpAddr, specs: &[PortSpec]) -> bool {
        if matches!(ip, IpAddr::V4(v4) if self.endpoints.contains(&v4)) {
            return true;
        }
        let here: Vec<&Binding> = self
            .bindings
            .iter()
            .filter(|g| g.container_ip == ip)
            .collect();
        if here.len().saturating_mul(specs.len()) > SPEC_CHECK_MAX {
            return !here.is_empty();
        }
        here.iter()
            .any(|g| specs.iter().any(|s| spec_may_map(s, g)))
    }
}

/// Above this many (swept binding, spec) pairs a publish waits for any
/// sweep at its address rather than compare them all.
const SPEC_CHECK_MAX: usize = 1 << 20;

fn spec_may_map(s: &PortSpec, g: &Binding) -> bool {
    if s.protocol != g.protocol {
        return false;
    }
    let in_range = |r: &PortRange, p: u16| r.start <= p && p <= r.end;
    match (s.fixed_host(), s.host_pool()) {
        (Some(h), _) => {
            in_range(&h, g.host_port)
                && u32::from(s.container.start) + u32::from(g.host_port - h.start)
                    == u32::from(g.container_port)
        }
        (None, Some(pool)) => {
            in_range(&pool, g.host_port) && in_range(&s.container, g.container_port)
        }
        (None, None) => in_range(&s.container, g.container_port),
    }
}

/// What tells a binding's flows apart in the flow tables (`FlowOwner` in
/// `datapath/flows.rs`); the bind address is not part of it.
fn same_flow_owner(a: &Binding, b: &Binding) -> bool {
    a.protocol == b.protocol
        && a.container_ip == b.container_ip
        && a.container_port == b.container_port
        && a.host_port == b.host_port
}

/// How long the worker waits after the first removal of a burst before
/// it starts a pass.
const GATHER: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Queue {
    /// Queued since the running pass started.
    waiting: Work,
    /// What the running pass forgets.
    running: Work,
    /// Ticket of the latest queued work, and of the latest finished pass.
    queued: u64,
    done: u64,
    closed: bool,
    /// A publish waits: start the pass without gathering more.
    hurry: bool,
}

struct Shared {
    datapath: Arc<dyn Datapath>,
    queue: Mutex<Queue>,
    /// Work queued or closing.
    wake: Condvar,
    /// A pass finished.
    finished: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The single worker that forgets removed bindings' flows.
pub struct FlowSweeper {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A place in the sweep queue: done once the pass that took it finished.
pub(super) type Ticket = u64;

impl FlowSweeper {
    pub fn start(datapath: Arc<dyn Datapath>) -> Self {
        let shared = Arc::new(Shared {
            datapath,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            finished: Condvar::new(),
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("berth-flow-sweep".into())
                .spawn(move || run(&shared))
        };
        let worker = match worker {
            Ok(handle) => Some(handle),
            Err(err) => {
                // Without a worker every sweep runs in the request (closed).
                tracing::warn!(error = %err, "could not start the flow sweeper; removals sweep before answering");
                shared.lock().closed = true;
                None
            }
        };
        Self {
            shared,
            worker: Mutex::new(worker),
        }
    }

    /// Queues the flows of removed `bindings` and of the gone task
    /// addresses `endpoints`. After [`FlowSweeper::close`], sweeps at once.
    pub fn queue(&self, bindings: &[Binding], endpoints: &[Ipv4Addr]) -> Ticket {
        let mut q = self.shared.lock();
        if bindings.is_empty() && endpoints.is_empty() {
            return q.queued;
        }
        if q.closed {
            drop(q);
            let mut work = Work::default();
            work.extend(bindings, endpoints);
            forget(&*self.shared.datapath, &work);
            return self.shared.lock().queued;
        }
        q.waiting.extend(bindings, endpoints);
        q.queued += 1;
        self.shared.wake.notify_one();
        q.queued
    }

    /// The ticket to wait for before publishing `new` for a task whose
    /// containers are at `addrs` (also those without bindings), if a
    /// pending sweep could take its flows or hand it stale ones.
    pub fn blocker(&self, new: &[Binding], addrs: &[Ipv4Addr]) -> Option<Ticket> {
        let q = self.shared.lock();
        (q.waiting.blocks(new, addrs) || q.running.blocks(new, addrs)).then_some(q.queued)
    }

    /// Like [`FlowSweeper::blocker`] for a publish to container addresses
    /// `addrs` whose host ports are not chosen yet.
    pub fn blocker_for_addrs(&self, addrs: &[Ipv4Addr]) -> Option<Ticket> {
        let q = self.shared.lock();
        (q.waiting.touches(addrs) || q.running.touches(addrs)).then_some(q.queued)
    }

    /// Like [`FlowSweeper::blocker`] for a publish of `specs` at `ip`,
    /// before they are checked, bounded and expanded.
    pub fn blocker_for_specs(&self, ip: impl Into<IpAddr>, specs: &[PortSpec]) -> Option<Ticket> {
        let ip = ip.into();
        let q = self.shared.lock();
        (q.waiting.blocks_specs(ip, specs) || q.running.blocks_specs(ip, specs)).then_some(q.queued)
    }

    /// Blocks until every sweep queued up to `ticket` is done.
    pub fn wait(&self, ticket: Ticket) {
        let mut q = self.shared.lock();
        if q.done < ticket {
            q.hurry = true;
            self.shared.wake.notify_all();
        }
        while q.done < ticket && !(q.closed && q.waiting.is_empty() && q.running.is_empty()) {
            q = self
                .shared
                .finished
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Bindings whose flows are still to be forgotten.
    pub fn pending(&self) -> usize {
        let q = self.shared.lock();
        q.waiting.bindings.len() + q.running.bindings.len()
    }

    /// Finishes every queued sweep and stops the worker; later removals
    /// sweep before they answer. Blocks for the remaining passes.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        let worker = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(worker) = worker {
            if worker.join().is_err() {
                tracing::error!("the flow sweeper panicked; the next start forgets what it left");
            }
        }
    }
}

impl Drop for FlowSweeper {
    fn drop(&mut self) {
        self.close();
    }
}

fn run(shared: &Shared) {
    let mut q = shared.lock();
    loop {
        while q.waiting.is_empty() && !q.closed {
            q = shared
                .wake
                .wait(q)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if q.waiting.is_empty() {
            return; // closed, and nothing is left
        }
        // Let the request that queued this answer first, and gather what
        // arrives with it (`map rm` of several tasks in a row), unless a
        // publish waits for this pass.
        let gathered = Instant::now() + GATHER;
        while !q.closed && !q.hurry {
            let Some(left) = gathered.checked_duration_since(Instant::now()) else {
                break;
            };
            q = shared
                .wake
                .wait_timeout(q, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        q.hurry = false;
        q.running = std::mem::take(&mut q.waiting);
        let ticket = q.queued;
        let work = q.running.clone();
        drop(q);
        forget(&*shared.datapath, &work);
        q = shared.lock();
        q.running = Work::default();
        q.done = ticket;
        shared.finished.notify_all();
    }
}

/// One pass over the flow tables. The removals are committed, so a failed
/// pass is logged, not returned: the flows then age out.
fn forget(datapath: &dyn Datapath, work: &Work) {
    let started = Instant::now();
    let bindings = work.bindings.len();
    match datapath.forget_flows(&work.bindings) {
        Ok(flows) => tracing::debug!(
            bindings,
            flows,
            ms = started.elapsed().as_millis() as u64,
            "forgot the flows of removed bindings"
        ),
        Err(err) => {
            tracing::warn!(bindings, error = %err, "forgetting the flows of removed bindings failed; they expire by timeout")
        }
    }
    if work.endpoints.is_empty() {
        return;
    }
    match datapath.forget_endpoint_flows(&work.endpoints) {
        Ok(flows) => tracing::debug!(
            addresses = work.endpoints.len(),
            flows,
            "forgot the policy-tracked flows of removed tasks"
        ),
        Err(err) => {
            tracing::warn!(error = %err, "forgetting the policy-tracked flows of removed tasks failed; they expire by timeout")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        domain::model::Protocol,
        engine::fake::{FakeDatapath, FakeOp},
    };

    fn binding(task: &str, ip: [u8; 4], host_port: u16) -> Binding {
        Binding {
            protocol: Protocol::Udp,
            ..Binding::for_test(task, ip, host_port)
        }
    }

    fn sweeper(delay_ms: u64) -> (Arc<FakeDatapath>, FlowSweeper) {
        let dp = Arc::new(FakeDatapath::default());
        dp.set_forget_delay(Duration::from_millis(delay_ms));
        let s = FlowSweeper::start(dp.clone());
        (dp, s)
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(5), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn queueing_returns_at_once_and_the_worker_forgets_later() {
        let (dp, s) = sweeper(300);
        let a = binding("a", [172, 17, 0, 2], 8080);
        let t = Instant::now();
        let ticket = s.queue(std::slice::from_ref(&a), &[a.container_ip4().unwrap()]);
        assert!(t.elapsed() < Duration::from_millis(100), "queueing swept");
        assert_eq!(s.pending(), 1);
        s.wait(ticket);
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(dp.forgotten(), vec![vec![a.clone()]]);
        assert_eq!(dp.forgotten_endpoints(), vec![vec![a.container_ip]]);
        assert_eq!(s.pending(), 0);
    }

    #[test]
    fn removals_queued_during_a_pass_are_swept_together_by_the_next() {
        let (dp, s) = sweeper(200);
        let a = binding("a", [172, 17, 0, 2], 8080);
        s.queue(std::slice::from_ref(&a), &[]);
        wait_until("first pass started", || s.shared.lock().waiting.is_empty());
        let (b, c) = (
            binding("b", [172, 17, 0, 3], 8081),
            binding("c", [172, 17, 0, 4], 8082),
        );
        s.queue(std::slice::from_ref(&b), &[]);
        let last = s.queue(std::slice::from_ref(&c), &[]);
        s.wait(last);
        assert_eq!(dp.forgotten(), vec![vec![a], vec![b, c]]);
    }

    #[test]
    fn a_publish_of_a_pending_bindings_tuple_is_held_back_and_others_are_not() {
        let (_dp, s) = sweeper(300);
        let gone = binding("old", [172, 17, 0, 2], 8080);
        let ticket = s.queue(std::slice::from_ref(&gone), &[]);
        // Same flow owner under another task name and bind address.
        let mut same = binding("new", [172, 17, 0, 2], 8080);
        same.bind_ip = Ipv4Addr::LOCALHOST.into();
        assert_eq!(s.blocker(&[same], &[]), Some(ticket));
        assert_eq!(
            s.blocker_for_addrs(&[gone.container_ip4().unwrap()]),
            Some(ticket)
        );
        // Another host port, container port, protocol or address: free.
        let mut other = vec![binding("x", [172, 17, 0, 2], 8081); 4];
        other[1].host_port = 8080;
        other[1].container_port = 81;
        other[2].host_port = 8080;
        other[2].protocol = Protocol::Tcp;
        other[3] = binding("x", [172, 17, 0, 3], 8080);
        assert_eq!(s.blocker(&other, &[]), None);
        assert_eq!(s.blocker_for_addrs(&[Ipv4Addr::new(172, 17, 0, 3)]), None);
        s.wait(ticket);
        assert_eq!(s.blocker(&[gone], &[]), None, "nothing pending any more");
    }

    #[test]
    fn specs_are_judged_without_expanding_them() {
        let (_dp, s) = sweeper(300);
        let gone = binding("old", [172, 17, 0, 2], 8080); // 8080:80/udp
        let ticket = s.queue(std::slice::from_ref(&gone), &[]);
        let ip = gone.container_ip4().unwrap();
        let spec = |s: &str| s.parse::<PortSpec>().unwrap();
        for (specs, blocked) in [
            (vec!["8080:80/udp"], true),
            (vec!["8001-8100:1-100/udp"], true),  // 8080 -> 80
            (vec!["80/udp"], true),               // dynamic: may get 8080
            (vec!["8000-8100:1-101/udp"], false), // 8080 -> 81
            (vec!["8080:80"], false),             // tcp
            (vec!["8081:80/udp", "9000:9000/udp"], false),
        ] {
            let specs: Vec<_> = specs.into_iter().map(spec).collect();
            let want = blocked.then_some(ticket);
            assert_eq!(s.blocker_for_specs(ip, &specs), want, "{specs:?}");
        }
        assert_eq!(
            s.blocker_for_specs(Ipv4Addr::new(172, 17, 0, 3), &[spec("8080:80/udp")]),
            None
        );
    }

    #[test]
    fn a_removed_ipv6_binding_is_swept_and_holds_back_its_republish() {
        let (dp, s) = sweeper(300);
        let ctr: std::net::Ipv6Addr = "fd00:b::2".parse().unwrap();
        let gone = Binding {
            container_ip: ctr.into(),
            bind_ip: std::net::Ipv6Addr::UNSPECIFIED.into(),
            ..binding("a", [0, 0, 0, 0], 8080)
        };
        let spec = |s: &str| s.parse::<PortSpec>().unwrap();
        let ticket = s.queue(std::slice::from_ref(&gone), &[]);
        assert_eq!(
            s.blocker_for_specs(ctr, &[spec("8080:80/udp")]),
            Some(ticket)
        );
        assert_eq!(s.blocker_for_specs(ctr, &[spec("8081:80/udp")]), None);
        assert_eq!(
            s.blocker_for_specs(Ipv4Addr::new(172, 17, 0, 2), &[spec("8080:80/udp")]),
            None,
            "the IPv4 side of another container"
        );
        assert_eq!(s.blocker(std::slice::from_ref(&gone), &[]), Some(ticket));
        s.wait(ticket);
        assert_eq!(dp.forgotten(), vec![vec![gone]]);
    }

    #[test]
    fn a_waiting_publish_starts_the_pass_without_gathering() {
        let (dp, s) = sweeper(0);
        let a = binding("a", [172, 17, 0, 2], 8080);
        let t = Instant::now();
        let ticket = s.queue(std::slice::from_ref(&a), &[]);
        s.wait(ticket);
        assert!(t.elapsed() < GATHER, "waited {:?}", t.elapsed());
        assert_eq!(dp.forgotten(), vec![vec![a]]);
    }

    #[test]
    fn a_gone_task_address_holds_back_any_publish_to_it() {
        let (_dp, s) = sweeper(300);
        let addr = Ipv4Addr::new(172, 17, 0, 9);
        let ticket = s.queue(&[], &[addr]);
        assert_eq!(
            s.blocker(&[binding("n", [172, 17, 0, 9], 5000)], &[]),
            Some(ticket)
        );
        // A container of the new task with no binding at all.
        assert_eq!(s.blocker(&[], &[addr]), Some(ticket));
        s.wait(ticket);
        assert_eq!(
            s.blocker(&[binding("n", [172, 17, 0, 9], 5000)], &[addr]),
            None
        );
    }

    #[test]
    fn a_republish_after_waiting_lands_after_the_sweep() {
        let (dp, s) = sweeper(200);
        let b = binding("web", [172, 17, 0, 2], 5353);
        s.queue(std::slice::from_ref(&b), &[]);
        // What a publish does: wait for its blocker, then insert.
        if let Some(t) = s.blocker(std::slice::from_ref(&b), &[]) {
            s.wait(t);
        }
        dp.insert(&b).unwrap();
        assert_eq!(
            dp.journal(),
            vec![FakeOp::Forgot(vec![b.clone()]), FakeOp::Insert(b)]
        );
    }

    #[test]
    fn closing_finishes_every_queued_sweep() {
        let (dp, s) = sweeper(150);
        let a = binding("a", [172, 17, 0, 2], 8080);
        let b = binding("b", [172, 17, 0, 3], 8081);
        s.queue(std::slice::from_ref(&a), &[]);
        s.queue(std::slice::from_ref(&b), &[b.container_ip4().unwrap()]);
        s.close();
        let forgotten: Vec<Binding> = dp.forgotten().into_iter().flatten().collect();
        assert_eq!(forgotten, vec![a, b.clone()]);
        assert_eq!(dp.forgotten_endpoints(), vec![vec![b.container_ip]]);
        assert_eq!(s.pending(), 0);
        // After closing, a removal sweeps before it returns.
        let c = binding("c", [172, 17, 0, 4], 8082);
        s.queue(std::slice::from_ref(&c), &[]);
        assert_eq!(dp.forgotten().last(), Some(&vec![c]));
    }

    #[test]
    fn dropping_the_sweeper_finishes_its_queue() {
        let (dp, s) = sweeper(100);
        let a = binding("a", [172, 17, 0, 2], 8080);
        s.queue(std::slice::from_ref(&a), &[]);
        drop(s);
        assert_eq!(dp.forgotten(), vec![vec![a]]);
    }
}
