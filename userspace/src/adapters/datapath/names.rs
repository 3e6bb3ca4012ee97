//! The names defined once in `berth_maps` against the built eBPF object:
//! aya names a kernel-side program after its function and a map after its
//! static, so the eBPF crate cannot use the constants, and this checks that
//! every constant names a real program or map, and every program and map
//! has its constant.
use std::collections::BTreeSet;

use aya_obj::maps::PinningType;

fn object() -> aya_obj::Object {
    aya_obj::Object::parse(&super::ebpf_object().expect("the embedded eBPF object inflates"))
        .expect("the embedded eBPF object parses")
}

#[test]
fn every_program_has_its_constant_and_every_constant_its_program() {
    let built: BTreeSet<String> = object().programs.keys().cloned().collect();
    let named: BTreeSet<String> = berth_maps::program::ALL
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(named, built);
    assert_eq!(named.len(), berth_maps::program::ALL.len(), "no name twice");
}

#[test]
fn every_map_has_its_constant_and_is_pinned_by_it() {
    let obj = object();
    let mut pinned = BTreeSet::new();
    let mut unpinned = BTreeSet::new();
    for (name, m) in obj.maps.iter().filter(|(name, _)| !name.starts_with('.')) {
        match m.pinning() {
            PinningType::ByName => pinned.insert(name.clone()),
            PinningType::None => unpinned.insert(name.clone()),
        };
    }
    let named: BTreeSet<String> = berth_maps::MAPS.iter().map(ToString::to_string).collect();
    assert_eq!(named, pinned, "pinned maps");
    assert_eq!(named.len(), berth_maps::MAPS.len(), "no name twice");
    let named: BTreeSet<String> = berth_maps::UNPINNED_MAPS
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(named, unpinned, "maps that are not pinned");
}

#[test]
fn the_counters_map_has_a_slot_for_every_named_counter() {
    let obj = object();
    let counters = &obj.maps[berth_maps::COUNTERS_MAP];
    assert_eq!(counters.max_entries(), berth_maps::COUNTERS_LEN);
    let names: BTreeSet<&str> = berth_maps::Counter::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(names.len(), berth_maps::Counter::ALL.len(), "no name twice");
    assert_eq!(
        berth_maps::COUNTER_NAMES,
        berth_maps::Counter::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
    );
}

#[test]
fn every_tail_called_program_is_a_classifier_in_its_own_slot() {
    let obj = object();
    let mut slots = BTreeSet::new();
    for &(slot, name) in berth_maps::tail::PROGRAMS {
        assert!(slot < berth_maps::tail::LEN, "{name}: slot {slot}");
        assert!(slots.insert(slot), "slot {slot} twice");
        assert!(
            berth_maps::program::ALL.contains(&name),
            "{name} not in ALL"
        );
        let p = &obj.programs[name];
        // A program array takes programs of one type: TC's.
        assert!(
            matches!(p.section, aya_obj::ProgramSection::SchedClassifier),
            "{name} is {:?}",
            p.section
        );
    }
    let tails = &obj.maps[berth_maps::TAILS_MAP];
    assert_eq!(tails.max_entries(), berth_maps::tail::LEN);
}
