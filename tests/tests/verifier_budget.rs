//! Every program of the eBPF object passes the verifier, and how much of
//! its budget each one uses (`cargo xtask bench` records the same numbers
//! release to release). Needs root.
use berth_integration::testrun::in_fixture_ns;

/// The kernel refuses a program past 1 000 000. berth's budget is a tenth
/// of that: every program verifies in under 10 000 today (the policy scan
/// runs under `bpf_loop`), so crossing 100 000 means a loop or a branch
/// explosion crept in.
const VERIFIER_LIMIT: u32 = 100_000;

#[test]
fn every_program_verifies_within_the_instruction_limit() {
    let budget = in_fixture_ns(|env| env.verifier_budget());
    println!(
        "{:<18} {:<16} {:>14} {:>12} {:>11}",
        "program", "kind", "verified insns", "xlated B", "jited B"
    );
    for b in &budget {
        let show = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
        println!(
            "{:<18} {:<16} {:>14} {:>12} {:>11}",
            b.name,
            b.kind,
            show(b.verified_insns),
            show(b.xlated_bytes),
            b.jited_bytes
        );
    }
    for name in ["berth_ingress", "berth_xdp", "berth_reply", "berth_deliver"] {
        assert!(
            budget.iter().any(|b| b.name == name),
            "{name} missing from the object"
        );
    }
    for b in &budget {
        // verified_insns exists from Linux 5.16; berth needs 6.6.
        let n = b
            .verified_insns
            .unwrap_or_else(|| panic!("{}: no verified_insns", b.name));
        assert!(n < VERIFIER_LIMIT, "{}: {n} verified instructions", b.name);
    }
}
