//! Planning cost at 256, 1024 and 8192 CPUs: 16 NUMA nodes, SMT2, clusters
//! of two cores, the upper half of every node isolated, 128 queues.
//! Target: 8192 CPUs under 1 ms, cost growing no faster than n log n.

use std::collections::BTreeMap;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use isonvme_mapping::{plan, CpuSet, PlanParams, Policy, Topology, TopologySpec};

const NODES: usize = 16;

fn machine(cpus: usize) -> (Topology, CpuSet) {
    let per_node = cpus / NODES;
    let mut nodes = BTreeMap::new();
    let mut isolated = CpuSet::new();
    for node in 0..NODES {
        let first = node * per_node;
        nodes.insert(node, CpuSet::range(first, first + per_node));
        isolated.union_with(&CpuSet::range(first + per_node / 2, first + per_node));
    }
    let siblings = (0..cpus / 2)
        .map(|core| CpuSet::range(2 * core, 2 * core + 2))
        .collect();
    let clusters = (0..cpus / 4)
        .map(|cluster| CpuSet::range(4 * cluster, 4 * cluster + 4))
        .collect();
    let all = CpuSet::range(0, cpus);
    let topology = Topology::new(TopologySpec {
        possible: all.clone(),
        present: all.clone(),
        online: all,
        nodes,
        siblings,
        clusters: Some(clusters),
    })
    .expect("benchmark topology is consistent");
    (topology, isolated)
}

fn planning(c: &mut Criterion) {
    let params = PlanParams::nvme(128);
    let mut group = c.benchmark_group("plan");
    for cpus in [256usize, 1024, 8192] {
        let (topology, isolated) = machine(cpus);
        group.throughput(Throughput::Elements(cpus as u64));
        for policy in [Policy::IoQueue, Policy::Mainline] {
            group.bench_with_input(BenchmarkId::new(policy.to_string(), cpus), &cpus, |b, _| {
                b.iter(|| plan(&topology, &isolated, &params, policy).expect("plan"))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, planning);
criterion_main!(benches);
