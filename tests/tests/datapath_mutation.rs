//! The datapath's randomized run at CI size: mutated frames through every
//! packet program, checked against the NAT invariants (see
//! `berth_integration::datapath_fuzz`). `BERTH_FUZZ_FRAMES` sets the count
//! per program and `BERTH_FUZZ_SEED` the seed; `cargo xtask fuzz-datapath`
//! runs a million frames per program. Needs root.
use berth_integration::{
    datapath_fuzz::{judge, publish_model, run, Config},
    pkt::{self, Packet},
    testrun::{in_fixture_ns, BRIDGE_MAC, C1, C1_MAC, CLIENT, HOST, OTHER},
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
    for prog in [
        "berth_ingress",
        "berth_xdp",
        "berth_reply",
        "berth_deliver",
        "berth_from_ctr",
        "berth_to_ctr",
    ] {
        let t = &report.programs[prog];
        assert_eq!(t.frames, cfg.frames, "{prog} ran every frame");
    }
    // The seeds and mutations must keep reaching the translation paths.
    for prog in [
        "berth_ingress",
        "berth_xdp",
        "berth_reply",
        "berth_from_ctr",
    ] {
        let t = &report.programs[prog];
        assert!(
            t.translated * 50 >= t.frames,
            "{prog}: only {} of {} frames translated",
            t.translated,
            t.frames
        );
    }
    assert!(
        report.ipv6_parsed > 0,
        "no mutated IPv6 frame reached a published IPv6 port"
    );
    // NAT66 output is judged too, both ways.
    for (i, side) in ["uplink", "bridge"].iter().enumerate() {
        assert!(
            report.ipv6_translated[i] * 200 >= cfg.frames,
            "only {} IPv6 frames translated at the {side}",
            report.ipv6_translated[i]
        );
    }
}

/// The NAT66 rules catch a wrong translation as the IPv4 ones do: a real
/// one (of the remapped seed flow, both ways) passes, and the same output
/// with one more change, or the client's own port where the remap says
/// another, does not.
#[test]
fn the_invariants_reject_a_wrong_nat66_translation() {
    use berth_integration::pkt::{Ipv6Packet, CLIENT6, HOST6};
    in_fixture_ns(|env| {
        publish_model(env);
        let l4 = pkt::ETH_LEN + 40;
        let mut p = Ipv6Packet::new(pkt::TCP, 8080);
        p.payload = vec![0x11; 20];
        // Opens client:40000 -> 8080, then the clashing one to 8081.
        let first = p.frame();
        let v = env.tc("berth_ingress", &first);
        assert_eq!(v.code, 7);
        assert_eq!(
            judge(env, "berth_ingress", &first, v.code, &v.frame),
            Ok("translated")
        );
        p.dport = 8081;
        let input = p.frame();
        let v = env.tc("berth_ingress", &input);
        assert_eq!(v.code, 7);
        assert_eq!(
            judge(env, "berth_ingress", &input, v.code, &v.frame),
            Ok("translated")
        );
        let remapped = u16::from_be_bytes([v.frame[l4], v.frame[l4 + 1]]);
        assert_ne!(remapped, 40000, "the seed flow was remapped");
        let wrong: [(&str, usize, u8); 6] = [
            ("payload byte", l4 + 25, 0x01),
            ("destination port", l4 + 3, 0x01),
            ("tcp flags", l4 + 13, 0x08),
            ("flow label", pkt::ETH_LEN + 3, 0x01),
            ("hop limit", pkt::ETH_LEN + 7, 0x01),
            ("source address", pkt::ETH_LEN + 23, 0x01),
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
        out[l4 + 16] ^= 0x01;
        let err = judge(env, "berth_ingress", &input, v.code, &out).unwrap_err();
        assert!(err.contains("checksum"), "{err}");
        // The client's own port where the remap says another (checksum
        // kept right, so only the port rule can catch it).
        let mut out = v.frame.clone();
        let own = 40000u16.to_be_bytes();
        let c = u16::from_be_bytes([out[l4 + 16], out[l4 + 17]]);
        let c = pkt::keep_csum_error(c, 40000, remapped);
        out[l4..l4 + 2].copy_from_slice(&own);
        out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        let err = judge(env, "berth_ingress", &input, v.code, &out).unwrap_err();
        assert!(err.contains("remap"), "{err}");
        // The reply of the remapped flow goes back to the client's own
        // port; leaving it on the remapped one is caught.
        let mut r = Ipv6Packet::new(pkt::TCP, remapped);
        (r.src, r.sport, r.dst) = ("fd00::2".parse().unwrap(), 80, CLIENT6);
        let reply = r.frame();
        let v = env.tc("berth_reply", &reply);
        assert_eq!(v.code, 7);
        assert_eq!(
            judge(env, "berth_reply", &reply, v.code, &v.frame),
            Ok("translated")
        );
        assert_eq!(&v.frame[l4 + 2..l4 + 4], &own, "back to the client's port");
        assert_eq!(
            &v.frame[pkt::ETH_LEN + 8..pkt::ETH_LEN + 24],
            &HOST6.octets()
        );
        let mut out = v.frame.clone();
        out[l4 + 2..l4 + 4].copy_from_slice(&remapped.to_be_bytes());
        let c = u16::from_be_bytes([out[l4 + 16], out[l4 + 17]]);
        let c = pkt::keep_csum_error(c, remapped, 40000);
        out[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        let err = judge(env, "berth_reply", &reply, v.code, &out).unwrap_err();
        assert!(err.contains("remap"), "{err}");
    });
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

/// A later fragment is judged against what the run saw of its datagram:
/// translated, or let through a security group, only after its first
/// fragment was (`judge` starts from a run that saw nothing).
#[test]
fn the_invariants_reject_a_later_fragment_without_its_first() {
    in_fixture_ns(|env| {
        publish_model(env);
        let mut p = Packet::udp(CLIENT, 5000, HOST, 8053).with_payload_len(600);
        (p.ip_id, p.frag) = (0x7e01, 0);
        let first = pkt::fragment(&p, 0, 256, true);
        let later = pkt::fragment(&p, 256, 256, true);
        let v = env.tc("berth_ingress", &first);
        assert_eq!(
            judge(env, "berth_ingress", &first, v.code, &v.frame),
            Ok("translated")
        );
        let v = env.tc("berth_ingress", &later);
        assert_eq!(v.code, 7, "the datapath translates it after its first");
        let err = judge(env, "berth_ingress", &later, v.code, &v.frame).unwrap_err();
        assert!(err.contains("first fragment was not"), "{err}");
        // C1 has policy in the run's model: an orphan let through is caught.
        let mut q = Packet::udp(OTHER, 53, C1, 40000).with_payload_len(600);
        (q.ip_id, q.frag) = (0x7e02, 0);
        let orphan = pkt::fragment(&q, 256, 256, true);
        assert_eq!(env.tc("berth_to_ctr", &orphan).code, 2, "dropped");
        let err = judge(env, "berth_to_ctr", &orphan, 0, &orphan).unwrap_err();
        assert!(err.contains("without its first fragment"), "{err}");
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
