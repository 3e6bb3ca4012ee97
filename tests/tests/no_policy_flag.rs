//! The daemon's "no endpoint has policy" flag (`BERTH_CONFIG` index
//! `CONFIG_NO_POLICY)`: while it is set, the veth hooks skip the source check
//! and the security-group lookups, which could refuse nothing then. The
//! daemon clears it before any endpoint gets policy (sg.rs; its unit test
//! checks the order), so here the flag is set against the rules on purpose,
//! to show what it switches off.
use aya::maps::{Array, MapData};
use berth_integration::{pkt::Packet, testrun::*};
use berth_maps::CONFIG_NO_POLICY;

const OK: u32 = 0;
const SHOT: u32 = 2;

fn set_no_policy(env: &mut Env, on: bool) {
    let mut m: Array<&mut MapData, u64> =
        Array::try_from(env.ebpf.map_mut("BERTH_CONFIG").unwrap()).unwrap();
    m.set(CONFIG_NO_POLICY, u64::from(on), 0).unwrap();
}

#[test]
fn with_the_no_policy_flag_the_veth_hooks_skip_their_checks() {
    in_fixture_ns(|env| {
        // C1 has policy and no rules; the test run's device (lo, port 1)
        // owns C2 only, so a frame from C1 on it is a spoofed source.
        env.set_endpoint(C1, 1, true);
        env.port_addrs(1, &[C2]);
        let to_c1 = Packet::tcp(OTHER, 40000, C1, 80).frame();
        let from_c1 = Packet::tcp(C1, 80, OTHER, 40000).frame();
        assert_eq!(
            env.tc("berth_to_ctr", &to_c1).code,
            SHOT,
            "no rule allows it"
        );
        assert_eq!(env.tc("berth_from_ctr", &from_c1).code, SHOT, "spoofed");
        set_no_policy(env, true);
        for (prog, frame) in [("berth_to_ctr", &to_c1), ("berth_from_ctr", &from_c1)] {
            let v = env.tc(prog, frame);
            assert_eq!(v.code, OK, "{prog} with the flag");
            assert_eq!(&v.frame, frame, "{prog} leaves the frame alone");
        }
        set_no_policy(env, false);
        assert_eq!(env.tc("berth_to_ctr", &to_c1).code, SHOT, "checks back on");
        assert_eq!(
            env.tc("berth_from_ctr", &from_c1).code,
            SHOT,
            "checks back on"
        );
    });
}
