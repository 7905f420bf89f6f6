//! Helpers shared by the runtime test crates (`runtime.rs`, `recovery.rs`).

use std::collections::BTreeMap;

use isonvme::mapping::{CpuSet, Topology, TopologySpec};

/// A CPU list such as "0-3,6".
pub fn set(list: &str) -> CpuSet {
    list.parse().unwrap()
}

/// `cpus` CPUs, all online, split into `nodes` NUMA nodes of consecutive
/// CPUs, with SMT pairs (n, n + cpus/2) as Linux numbers them on x86.
pub fn smt_pairs(cpus: usize, nodes: usize) -> Topology {
    let per_node = cpus / nodes;
    let half = cpus / 2;
    Topology::new(TopologySpec {
        possible: set(&format!("0-{}", cpus - 1)),
        present: set(&format!("0-{}", cpus - 1)),
        online: set(&format!("0-{}", cpus - 1)),
        nodes: (0..nodes)
            .map(|node| {
                let first = node * per_node;
                (node, set(&format!("{first}-{}", first + per_node - 1)))
            })
            .collect::<BTreeMap<_, _>>(),
        siblings: (0..half)
            .map(|c| set(&format!("{c},{}", c + half)))
            .collect(),
        clusters: None,
    })
    .unwrap()
}
