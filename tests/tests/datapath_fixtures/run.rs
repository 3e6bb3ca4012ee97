//! Running a table through a program and collecting every failure.
use berth_integration::{
    pkt::{self, ETH_LEN},
    testrun::*,
};

use berth_maps::{XDP_HANDOFF_MAGIC, XDP_HANDOFF_MAGIC_NEIGH};

use crate::{reply::reply_flows, table::*};

pub(crate) const TC_ACT_OK: u32 = 0;
pub(crate) const TC_ACT_SHOT: u32 = 2;
pub(crate) const TC_ACT_REDIRECT: u32 = 7;
pub(crate) const XDP_DROP: u32 = 1;
pub(crate) const XDP_PASS: u32 = 2;

pub(crate) fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) struct Failures(pub(crate) Vec<String>);

impl Failures {
    fn check(&mut self, hook: &str, case: &str, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(format!("[{hook}] {case}: {}", what()));
        }
    }

    fn frame(&mut self, hook: &str, case: &str, got: &[u8], want: &[u8], input: &[u8]) {
        self.check(hook, case, got == want, || {
            format!(
                "frame\n  in   {}\n  want {}\n  got  {}",
                hex(input),
                hex(want),
                hex(got)
            )
        });
    }
}

/// Whether `BPF_PROG_TEST_RUN` for skb programs accepts `frame`: it refuses
/// one shorter than its network header (EINVAL). XDP takes any frame from
/// 14 bytes on.
pub(crate) fn tc_accepts(frame: &[u8]) -> bool {
    let ethertype = frame.get(12..14).map(|e| u16::from_be_bytes([e[0], e[1]]));
    match ethertype {
        None => false,
        Some(pkt::ETH_P_IP) => frame.len() >= ETH_LEN + 20,
        Some(pkt::ETH_P_IPV6) => frame.len() >= ETH_LEN + 40,
        Some(_) => true,
    }
}

/// Runs one case through a TC program.
pub(crate) fn run_tc(env: &Env, f: &mut Failures, prog: &str, c: &Case) {
    if !tc_accepts(&c.frame) {
        return;
    }
    let v = match env.try_tc(prog, &c.frame) {
        Ok(v) => v,
        Err(e) => return f.check(prog, &c.name, false, || e.to_string()),
    };
    let n = &c.name;
    match &c.expect {
        Expect::Pass => {
            f.check(prog, n, v.code == TC_ACT_OK, || {
                format!("verdict {} != TC_ACT_OK", v.code)
            });
            f.frame(prog, n, &v.frame, &c.frame, &c.frame);
        }
        Expect::Drop => {
            f.check(prog, n, v.code == TC_ACT_SHOT, || {
                format!("verdict {} != TC_ACT_SHOT", v.code)
            });
            f.frame(prog, n, &v.frame, &c.frame, &c.frame);
        }
        Expect::DropAfterNat => {
            f.check(prog, n, v.code == TC_ACT_SHOT, || {
                format!("verdict {} != TC_ACT_SHOT", v.code)
            });
        }
        Expect::Nat { want, .. } | Expect::TooBig { want } => {
            f.check(prog, n, v.code == TC_ACT_REDIRECT, || {
                format!("verdict {} != TC_ACT_REDIRECT", v.code)
            });
            f.frame(prog, n, &v.frame, want, &c.frame);
        }
    }
}

/// Runs one case through `berth_xdp`; a translated frame comes back with
/// the 8-byte hand-off metadata in front.
pub(crate) fn run_xdp(env: &Env, f: &mut Failures, c: &Case, docker0: u32) {
    let prog = "berth_xdp";
    let v = match env.try_xdp(prog, &c.frame) {
        Ok(v) => v,
        Err(e) => return f.check(prog, &c.name, false, || e.to_string()),
    };
    let n = &c.name;
    match &c.expect {
        Expect::Pass => {
            f.check(prog, n, v.code == XDP_PASS, || {
                format!("verdict {} != XDP_PASS", v.code)
            });
            f.frame(prog, n, &v.frame, &c.frame, &c.frame);
        }
        Expect::Drop => {
            f.check(prog, n, v.code == XDP_DROP, || {
                format!("verdict {} != XDP_DROP", v.code)
            });
            f.frame(prog, n, &v.frame, &c.frame, &c.frame);
        }
        Expect::DropAfterNat => {
            f.check(prog, n, v.code == XDP_DROP, || {
                format!("verdict {} != XDP_DROP", v.code)
            });
        }
        Expect::TooBig { want } => {
            f.check(prog, n, v.code == XDP_PASS, || {
                format!("verdict {} != XDP_PASS", v.code)
            });
            let (meta, frame) = v.frame.split_at(8.min(v.frame.len()));
            // Handed to `berth_deliver`, back to the test run's device.
            let mut want_meta = XDP_HANDOFF_MAGIC.to_ne_bytes().to_vec();
            want_meta.extend(ifindex("lo").to_ne_bytes());
            f.check(prog, n, meta == want_meta, || {
                format!("handoff {}, want {}", hex(meta), hex(&want_meta))
            });
            f.frame(prog, n, frame, want, &c.frame);
        }
        Expect::Nat { want, neigh } => {
            f.check(prog, n, v.code == XDP_PASS, || {
                format!("verdict {} != XDP_PASS", v.code)
            });
            let (meta, frame) = v.frame.split_at(8.min(v.frame.len()));
            let magic = u32::from_ne_bytes(
                meta.get(..4)
                    .and_then(|m| m.try_into().ok())
                    .unwrap_or([0; 4]),
            );
            let ifx = u32::from_ne_bytes(
                meta.get(4..8)
                    .and_then(|m| m.try_into().ok())
                    .unwrap_or([0; 4]),
            );
            let want_magic = if *neigh {
                XDP_HANDOFF_MAGIC_NEIGH
            } else {
                XDP_HANDOFF_MAGIC
            };
            f.check(prog, n, magic == want_magic && ifx == docker0, || {
                format!("handoff magic {magic:#x} ifindex {ifx}, want {want_magic:#x} {docker0}")
            });
            f.frame(prog, n, frame, want, &c.frame);
        }
    }
}

/// Runs the ingress table `cases` through both hooks; panics with every
/// failure.
pub(crate) fn run_ingress(cases: Vec<Case>) {
    in_fixture_ns(move |env| {
        publish_defaults(env);
        // The flows the ICMP errors are about.
        for p in reply_flows() {
            let v = env.tc("berth_ingress", &p.frame());
            assert_eq!(v.code, TC_ACT_REDIRECT, "setting up the flow of {p:?}");
        }
        let docker0 = ifindex("docker0");
        let mut f = Failures(Vec::new());
        for c in &cases {
            run_xdp(env, &mut f, c, docker0);
            run_tc(env, &mut f, "berth_ingress", c);
        }
        assert!(
            f.0.is_empty(),
            "{} failures in {} cases:\n{}",
            f.0.len(),
            cases.len(),
            f.0.join("\n")
        );
    });
}

/// Runs the reply table `cases` after setting up the flows they answer
/// (UDP ones through XDP, TCP ones through TC); panics with every failure.
pub(crate) fn run_reply(cases: Vec<Case>) {
    in_fixture_ns(move |env| {
        publish_defaults(env);
        for p in reply_flows() {
            if p.proto == pkt::UDP {
                let v = env.xdp("berth_xdp", &p.frame());
                assert_eq!(v.code, XDP_PASS, "setting up the flow of {p:?}");
                assert_eq!(v.frame.len(), p.frame().len() + 8, "handed off: {p:?}");
            } else {
                let v = env.tc("berth_ingress", &p.frame());
                assert_eq!(v.code, TC_ACT_REDIRECT, "setting up the flow of {p:?}");
            }
        }
        let mut f = Failures(Vec::new());
        for c in &cases {
            run_tc(env, &mut f, "berth_reply", c);
        }
        assert!(
            f.0.is_empty(),
            "{} failures in {} cases:\n{}",
            f.0.len(),
            cases.len(),
            f.0.join("\n")
        );
    });
}
