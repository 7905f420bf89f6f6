//! The whole `isonvme-map plan --input` run, process start to exit, for
//! machines of 256 to 8192 CPUs (16 NUMA nodes, SMT2 with the siblings and
//! clusters listed once per CPU as sysfs has them, clusters of two cores,
//! the upper half of every node isolated, 128 queues), beside
//! `isonvme-map --version` (process start-up alone) on the same machine.
//!
//! Targets: the 8192-CPU run within 3× of `--version`; the cost above
//! start-up growing no faster than n log n from 256 to 8192 CPUs.
//! Output goes to a pipe (compact JSON, as any non-terminal gets it).
//!
//! Run: `cargo bench -p isonvme-mapping --bench cli` (about 20 s).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

const NODES: usize = 16;
const RUNS: usize = 60;

fn request(cpus: usize) -> serde_json::Value {
    let per_node = cpus / NODES;
    let nodes: serde_json::Map<String, serde_json::Value> = (0..NODES)
        .map(|n| {
            let first = n * per_node;
            (
                n.to_string(),
                json!(format!("{}-{}", first, first + per_node - 1)),
            )
        })
        .collect();
    let isolated: Vec<String> = (0..NODES)
        .map(|n| {
            let first = n * per_node;
            format!("{}-{}", first + per_node / 2, first + per_node - 1)
        })
        .collect();
    json!({
        "topology": {
            "possible": format!("0-{}", cpus - 1),
            "present": format!("0-{}", cpus - 1),
            "online": format!("0-{}", cpus - 1),
            "nodes": nodes,
            "siblings": (0..cpus).map(|c| format!("{}-{}", c & !1, (c & !1) + 1)).collect::<Vec<_>>(),
            "clusters": (0..cpus).map(|c| format!("{}-{}", c & !3, (c & !3) + 3)).collect::<Vec<_>>(),
            "isolated": isolated.join(","),
        },
        "params": {"queues": 128, "pre_vectors": 1},
    })
}

/// Median and spread (min..max of the middle 80%) of `RUNS` runs.
fn time(args: &[&str]) -> (Duration, Duration, Duration) {
    let binary = env!("CARGO_BIN_EXE_isonvme-map");
    let mut samples: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new(binary)
                .args(args)
                .stdout(Stdio::piped())
                .output()
                .expect("isonvme-map runs")
                .status;
            assert!(status.success(), "isonvme-map {args:?} failed");
            start.elapsed()
        })
        .collect();
    samples.sort();
    let cut = RUNS / 10;
    (samples[RUNS / 2], samples[cut], samples[RUNS - 1 - cut])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
    // without it, as a smoke test: one small run.
    let measuring = std::env::args().any(|a| a == "--bench");
    if !measuring {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("request.json");
        std::fs::write(&path, request(256).to_string()).expect("write the request");
        let status = Command::new(env!("CARGO_BIN_EXE_isonvme-map"))
            .args(["plan", "--input", path.to_str().expect("UTF-8 path")])
            .stdout(Stdio::null())
            .status()
            .expect("isonvme-map runs");
        assert!(status.success());
        return;
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let (version, version_low, version_high) = time(&["--version"]);
    eprintln!(
        "isonvme-map --version: {:.2} ms ({:.2}..{:.2})",
        ms(version),
        ms(version_low),
        ms(version_high)
    );
    eprintln!("  CPUs   plan --input (ms)        × --version   above start-up (ms)");
    let mut above = Vec::new();
    for cpus in [256usize, 512, 1024, 2048, 4096, 8192] {
        let path = dir.path().join(format!("request-{cpus}.json"));
        std::fs::write(&path, request(cpus).to_string()).expect("write the request");
        let input = path.to_str().expect("UTF-8 path");
        let (median, low, high) = time(&["plan", "--input", input]);
        let extra = ms(median) - ms(version);
        above.push((cpus, extra));
        eprintln!(
            "  {cpus:>5}  {:>6.2} ({:.2}..{:.2})   {:>10.2}×   {:>8.2}",
            ms(median),
            ms(low),
            ms(high),
            ms(median) / ms(version),
            extra
        );
    }
    let (small, small_extra) = above[0];
    let (large, large_extra) = above[above.len() - 1];
    let nlogn = |n: usize| n as f64 * (n as f64).log2();
    eprintln!(
        "  growth of the cost above start-up, {small} -> {large} CPUs: {:.1}× (n log n: {:.1}×, n: {:.1}×)",
        large_extra / small_extra.max(1e-3),
        nlogn(large) / nlogn(small),
        large as f64 / small as f64
    );
}
