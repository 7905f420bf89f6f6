//! Fuzzing of what `isonvme-map plan --input` reads, with proptest over
//! arbitrary bytes and over mutations of the public examples (cargo-fuzz
//! needs a nightly compiler; these run on stable, in every test run). More
//! cases: `PROPTEST_CASES=100000 cargo test -p isonvme-mapping --test fuzz`.
//!
//! The property: any input gives a parsed request or an error, never a
//! panic, and a parsed request gives a plan or an error.

use isonvme_mapping::input::PlanInput;
use isonvme_mapping::{plan, CpuSet, Policy};
use proptest::prelude::*;

const EXAMPLE: &str = include_str!("data/kernel/c0017-multiset.json");

/// Parses `text` and, when it parses, plans it under both policies.
fn parse_and_plan(text: &str) {
    if let Ok(input) = PlanInput::from_json(text) {
        for policy in [Policy::IoQueue, Policy::Mainline] {
            let _ = plan(&input.topology, &input.isolated, &input.params, policy);
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse_and_plan(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_examples_never_panic(
        start in 0usize..EXAMPLE.len(),
        len in 0usize..16,
        replacement in "[0-9,\\-\\[\\]{}\":a-z ]{0,12}",
    ) {
        // Replace a span of a valid request: numbers, lists and keys bent
        // out of shape while the rest stays valid JSON more often than not.
        let end = (start + len).min(EXAMPLE.len());
        if EXAMPLE.is_char_boundary(start) && EXAMPLE.is_char_boundary(end) {
            let text = format!("{}{}{}", &EXAMPLE[..start], replacement, &EXAMPLE[end..]);
            parse_and_plan(&text);
        }
    }

    #[test]
    fn big_numbers_in_a_valid_request_never_panic(
        field in prop::sample::select(vec!["\"queues\": ", "\"pre_vectors\": ", "\"post_vectors\": ", "\"min_vectors\": ", "\"queue_offset\": "]),
        value in prop::sample::select(vec![0u64, 1, 65535, 65536, 4294967295, 4294967296, u64::MAX]),
    ) {
        if let Some(at) = EXAMPLE.find(field) {
            let from = at + field.len();
            let digits = EXAMPLE[from..].find(|c: char| !c.is_ascii_digit()).unwrap_or(0);
            let text = format!("{}{value}{}", &EXAMPLE[..from], &EXAMPLE[from + digits..]);
            parse_and_plan(&text);
        }
    }

    #[test]
    fn cpu_lists_never_panic(list in "[0-9,\\-:/ a-z]{0,40}") {
        if let Ok(set) = list.parse::<CpuSet>() {
            // What parses prints back to the same set.
            prop_assert_eq!(set.to_string().parse::<CpuSet>().unwrap(), set);
        }
    }
}

#[test]
fn the_example_itself_parses_and_plans() {
    let input = PlanInput::from_json(EXAMPLE).unwrap();
    plan(
        &input.topology,
        &input.isolated,
        &input.params,
        Policy::IoQueue,
    )
    .unwrap();
}
