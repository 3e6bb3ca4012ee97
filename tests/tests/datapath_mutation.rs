//! The datapath's randomized run at CI size: mutated frames through every
//! packet program, checked against the NAT invariants (see
//! `berth_integration::datapath_fuzz`). `BERTH_FUZZ_FRAMES` sets the count
//! per program and `BERTH_FUZZ_SEED` the seed; `cargo xtask fuzz-datapath`
//! runs a million frames per program. Needs root.
use berth_integration::{
    datapath_fuzz::{judge, publish_model, run, Config},
    pkt::{self, Packet},
    testrun::{in_fixture_ns, BRIDGE_MAC, C1, C1_MAC, CLIENT, HOST},
};

/// Frames per program in CI: a few seconds.
const CI_FRAMES: u64 = 20_000;

#[test]
fn mutated_frames_keep_the_nat_invariants() {
    let cfg = Config::from_env(CI_FRAMES);
    println!(
        "datapath mutation run: seed {:#x}, {} frames per program (BERTH_FUZZ_SEED, BERTH_FUZZ_FRAMES)",
        cfg.seed, cfg.frames
    );
    let report = run(&cfg);
    println!("{}", report.render());
    assert!(!report.failed(), "{}", report.render());
    for prog in ["berth_ingress", "berth_xdp", "berth_reply", "berth_deliver"] {
        let t = &report.programs[prog];
        assert_eq!(t.frames, cfg.frames, "{prog} ran every frame");
    }
    // The seeds and mutations must keep reaching the translation paths.
    for prog in ["berth_ingress", "berth_xdp", "berth_reply"] {
        let t = &report.programs[prog];
        assert!(
            t.translated * 50 >= t.frames,
            "{prog}: only {} of {} frames translated",
            t.translated,
            t.frames
        );
    }
}

/// The rules catch what they are meant to: a real translation passes them,
/// and the same output with one more change than a NAT may make does not.
#[test]
fn the_invariants_reject_a_wrong_translation() {
    in_fixture_ns(|env| {
        publish_model(env);
        let input = Packet::tcp(CLIENT, 40000, HOST, 8080)
            .with_payload_len(20)
            .frame();
        let v = env.tc("berth_ingress", &input);
        assert_eq!(
            judge(env, "berth_ingress", &input, v.code, &v.frame),
            Ok("translated")
        );
        let l4 = pkt::ETH_LEN + 20;
        let wrong: [(&str, usize, u8); 6] = [
            ("payload byte", l4 + 25, 0x01),
            ("source port", l4, 0x01),
            ("destination port", l4 + 3, 0x01),
            ("tcp flags", l4 + 13, 0x08),
            ("ip id", pkt::ETH_LEN + 4, 0x01),
            ("ttl", pkt::ETH_LEN + 8, 0x01),
        ];
        for (what, off, xor) in wrong {
            let mut out = v.frame.clone();
            out[off] ^= xor;
            assert!(
                judge(env, "berth_ingress", &input, v.code, &out).is_err(),
                "a changed {what} went unnoticed"
            );
        }
        let mut out = v.frame.clone();
        out[l4 + 16] ^= 0x01; // the L4 checksum
        let err = judge(env, "berth_ingress", &input, v.code, &out).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        // Changed without a translation verdict.
        let err = judge(env, "berth_ingress", &input, 0, &v.frame).unwrap_err();
        assert!(err.contains("without a translation"), "{err}");
    });
}

/// A translation of a packet whose source is a container's, or whose
/// destination is loopback, is caught even when the rewrite itself is
/// flawless.
#[test]
fn the_invariants_reject_translating_a_local_source_or_loopback() {
    in_fixture_ns(|env| {
        publish_model(env);
        for (src, dst, dport, to_port) in [
            (C1, HOST, 8080, 80),
            (CLIENT, std::net::Ipv4Addr::LOCALHOST, 9000, 9000),
        ] {
            let input = Packet::tcp(src, 40000, dst, dport);
            let mut out = input.clone();
            out.dst = C1;
            out.dport = to_port;
            out.ttl -= 1;
            out.eth_dst = C1_MAC;
            out.eth_src = BRIDGE_MAC;
            let err = judge(env, "berth_ingress", &input.frame(), 7, &out.frame()).unwrap_err();
            assert!(
                err.contains("loopback or spoofed-local"),
                "{src} -> {dst}: {err}"
            );
        }
    });
}
