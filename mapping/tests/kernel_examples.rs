//! The planner against kernel results: every file in tests/data/kernel is a
//! kernel-produced example (`{"input", "expected": {"io_queue", "mainline"}}`)
//! and must be reproduced exactly, for both policies.

use std::path::Path;

use isonvme_mapping::input::PlanInput;
use isonvme_mapping::{plan, CpuSet, Policy};
use serde_json::Value;

/// Cpulists may be spelled differently; compare them as sets.
fn normalise(value: &Value, key: Option<&str>) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), normalise(v, Some(k))))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(|v| normalise(v, key)).collect()),
        Value::String(text) if matches!(key, Some("cpus" | "queues" | "housekeeping")) => {
            let set: CpuSet = text.parse().expect("expected output holds a valid cpulist");
            Value::String(set.to_string())
        }
        other => other.clone(),
    }
}

fn first_difference(path: &str, expected: &Value, actual: &Value) -> Option<String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, ev) in e {
                let Some(av) = a.get(key) else {
                    return Some(format!("{path}.{key}: missing"));
                };
                if let Some(diff) = first_difference(&format!("{path}.{key}"), ev, av) {
                    return Some(diff);
                }
            }
            None
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => e
            .iter()
            .zip(a)
            .enumerate()
            .find_map(|(i, (ev, av))| first_difference(&format!("{path}[{i}]"), ev, av)),
        _ if expected == actual => None,
        _ => Some(format!("{path}: expected {expected}, got {actual}")),
    }
}

#[test]
fn every_kernel_example_matches_both_policies() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kernel");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "kernel examples missing from {dir:?}");
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let document: Value = serde_json::from_str(&text).unwrap();
        let input = PlanInput::from_json(&text).unwrap();
        for (policy, key) in [
            (Policy::IoQueue, "io_queue"),
            (Policy::Mainline, "mainline"),
        ] {
            let computed = plan(&input.topology, &input.isolated, &input.params, policy).unwrap();
            let expected = normalise(&document["expected"][key], None);
            let actual = normalise(&computed.to_spec_json(), None);
            if let Some(diff) = first_difference("", &expected, &actual) {
                failures.push(format!("{} [{key}] {diff}", file.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
