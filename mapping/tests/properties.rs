//! Property tests over random machines of up to 512 CPUs: the invariants
//! the policy promises, whatever the topology.

use std::collections::BTreeMap;

use isonvme_mapping::group::{group_cpus_evenly, group_mask_cpus_evenly};
use isonvme_mapping::{plan, CpuSet, PlanParams, Policy, QueueMap, Topology, TopologySpec};
use proptest::prelude::*;

/// A random machine description, kept small enough to shrink well.
#[derive(Debug, Clone)]
struct Machine {
    possible: usize,
    present: usize,
    offline: Vec<usize>,
    nodes: usize,
    empty_node_gap: bool,
    interleave_nodes: bool,
    smt: usize,
    interleave_smt: bool,
    cluster_cores: Option<usize>,
    isolated: Vec<usize>,
}

impl Machine {
    fn topology(&self) -> Topology {
        let possible = CpuSet::range(0, self.possible);
        let present = CpuSet::range(0, self.present);
        let mut online = present.clone();
        for &cpu in &self.offline {
            if online.len() > 1 {
                online.remove(cpu % self.present);
            }
        }
        // Cores: groups of `smt` CPUs, adjacent (0-1) or interleaved (0,n/2).
        let cores = self.possible.div_ceil(self.smt);
        let core_of = |cpu: usize| {
            if self.interleave_smt {
                cpu % cores
            } else {
                cpu / self.smt
            }
        };
        let mut core_cpus: BTreeMap<usize, CpuSet> = BTreeMap::new();
        for cpu in 0..self.possible {
            core_cpus.entry(core_of(cpu)).or_default().insert(cpu);
        }
        // Nodes hold whole cores, in blocks or round-robin.
        let node_of_core = |core: usize| {
            let index = if self.interleave_nodes {
                core % self.nodes
            } else {
                core * self.nodes / cores
            };
            // Leave a gap in node ids (node 1 has no CPUs) when asked.
            if self.empty_node_gap && index >= 1 {
                index + 1
            } else {
                index
            }
        };
        let mut nodes: BTreeMap<usize, CpuSet> = BTreeMap::new();
        for (&core, cpus) in &core_cpus {
            nodes
                .entry(node_of_core(core))
                .or_default()
                .union_with(cpus);
        }
        if self.empty_node_gap {
            nodes.entry(1).or_default();
        }
        let clusters = self.cluster_cores.map(|per_cluster| {
            let mut clusters: Vec<CpuSet> = Vec::new();
            for node_cpus in nodes.values() {
                let node_cores: Vec<&CpuSet> = core_cpus
                    .values()
                    .filter(|cpus| cpus.is_subset(node_cpus) && !cpus.is_empty())
                    .collect();
                for chunk in node_cores.chunks(per_cluster) {
                    let mut cluster = CpuSet::new();
                    for core in chunk {
                        cluster.union_with(core);
                    }
                    clusters.push(cluster);
                }
            }
            clusters
        });
        Topology::new(TopologySpec {
            possible,
            present,
            online,
            nodes,
            siblings: core_cpus.into_values().collect(),
            clusters,
        })
        .expect("generated topologies are consistent")
    }

    fn isolated(&self) -> CpuSet {
        self.isolated
            .iter()
            .map(|&cpu| cpu % self.possible)
            .collect()
    }
}

fn machine() -> impl Strategy<Value = Machine> {
    (1usize..=512)
        .prop_flat_map(|possible| {
            (
                Just(possible),
                1..=possible,
                prop::collection::vec(0usize..512, 0..8),
                1usize..=8,
                any::<bool>(),
                any::<bool>(),
                prop::sample::select(vec![1usize, 2, 4]),
                any::<bool>(),
                prop::option::of(1usize..=6),
                prop::collection::vec(0usize..512, 0..(possible.min(300))),
            )
        })
        .prop_map(
            |(
                possible,
                present,
                offline,
                nodes,
                empty_node_gap,
                interleave_nodes,
                smt,
                interleave_smt,
                cluster_cores,
                isolated,
            )| Machine {
                possible,
                present,
                offline,
                nodes,
                empty_node_gap,
                interleave_nodes,
                smt,
                interleave_smt,
                cluster_cores,
                isolated,
            },
        )
}

fn params() -> impl Strategy<Value = PlanParams> {
    (
        1usize..=160,
        0usize..=1,
        0usize..=1,
        prop::option::of(prop::collection::vec(1usize..=40, 1..=3)),
        0usize..=4,
        prop::option::of(1usize..=6),
    )
        .prop_map(
            |(queues, pre, post, sets, queue_offset, min_extra)| PlanParams {
                queues,
                pre_vectors: pre,
                post_vectors: post,
                min_vectors: min_extra.map(|extra| pre + post + extra),
                queue_offset,
                sets,
            },
        )
}

fn assert_map_covers_possible(map: &QueueMap, topology: &Topology) -> Result<(), TestCaseError> {
    prop_assert_eq!(map.cpu_to_queue.len(), topology.nr_cpu_ids());
    for cpu in 0..topology.nr_cpu_ids() {
        let queue = map.cpu_to_queue[cpu].map(|q| q as usize);
        if !topology.possible().contains(cpu) {
            prop_assert_eq!(queue, None);
            continue;
        }
        let queue = queue.expect("a possible CPU is mapped");
        let in_range = queue >= map.queue_offset && queue < map.queue_offset + map.nr_queues;
        prop_assert!(
            in_range || (map.fallback && queue == 0),
            "CPU {} mapped to queue {} outside [{}, {})",
            cpu,
            queue,
            map.queue_offset,
            map.queue_offset + map.nr_queues
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_possible_cpu_is_mapped_to_a_valid_queue(machine in machine(), params in params()) {
        let topology = machine.topology();
        let io_queue = plan(&topology, &machine.isolated(), &params, Policy::IoQueue).unwrap();
        assert_map_covers_possible(&io_queue.queue_map, &topology)?;
        for map in &io_queue.irq_queue_maps {
            assert_map_covers_possible(map, &topology)?;
        }
        // Mainline's generic map covers every CPU too; its hardware maps do
        // not always (blk_mq_map_hw_queues leaves CPUs outside every vector
        // on queue 0, and packed short sets shift later sets' vectors), which
        // is precisely the kernel behaviour reproduced for comparison.
        let mainline = plan(&topology, &machine.isolated(), &params, Policy::Mainline).unwrap();
        assert_map_covers_possible(&mainline.queue_map, &topology)?;
    }

    #[test]
    fn queue_maps_follow_the_v14_rules(machine in machine(), params in params()) {
        let topology = machine.topology();
        let plan = plan(&topology, &machine.isolated(), &params, Policy::IoQueue).unwrap();
        if !plan.isolation_active || plan.enospc {
            return Ok(());
        }
        let online = topology.online();
        let every_map = std::iter::once(&plan.queue_map).chain(plan.irq_queue_maps.iter());
        for map in every_map {
            // Fallback sends every possible CPU to the map's own first queue.
            if map.fallback {
                for cpu in topology.possible().iter() {
                    prop_assert_eq!(map.queue_of(cpu), Some(map.queue_offset));
                }
                continue;
            }
            // Active queues: those an online housekeeping CPU ends on. Every
            // online CPU ends on an active queue (else the map falls back),
            // and the isolated CPUs are dealt over the active queues only.
            let active: std::collections::BTreeSet<usize> = online
                .intersection(&plan.housekeeping)
                .iter()
                .filter_map(|cpu| map.queue_of(cpu))
                .collect();
            prop_assert!(!active.is_empty());
            for cpu in online.iter() {
                let queue = map.queue_of(cpu).unwrap();
                prop_assert!(active.contains(&queue), "online CPU {} on inactive queue {}", cpu, queue);
            }
        }
        // The generic map: mask idx of the housekeeping grouping lands on
        // queue nr_queues - 1 - ((nr_queues - 1 - idx) mod masks), with no
        // rotation by queue_offset.
        let map = &plan.queue_map;
        if !map.fallback {
            let groups = group_mask_cpus_evenly(&topology, map.nr_queues, &plan.housekeeping).unwrap();
            let masks = groups.filled;
            for (idx, mask) in groups.filled_masks().iter().enumerate() {
                let queue = map.nr_queues - 1 - ((map.nr_queues - 1 - idx) % masks);
                for cpu in mask.iter() {
                    prop_assert_eq!(map.queue_of(cpu), Some(map.queue_offset + queue), "CPU {} of mask {}", cpu, idx);
                }
            }
        }
    }

    #[test]
    fn managed_vectors_never_contain_an_isolated_cpu(machine in machine(), params in params()) {
        let topology = machine.topology();
        let plan = plan(&topology, &machine.isolated(), &params, Policy::IoQueue).unwrap();
        for (index, vector) in plan.vectors.iter().enumerate() {
            if vector.managed {
                prop_assert!(
                    !vector.cpus.intersects(&plan.isolated),
                    "vector {} = {} contains isolated CPUs {}",
                    index, vector.cpus, plan.isolated
                );
                prop_assert!(!vector.cpus.is_empty(), "managed vector {} is empty", index);
            }
        }
        // Housekeeping and isolated partition the possible CPUs.
        prop_assert_eq!(plan.housekeeping.union(&plan.isolated), topology.possible().clone());
        prop_assert!(!plan.housekeeping.intersects(&plan.isolated));
        prop_assert!(plan.housekeeping.intersects(topology.present()));
    }

    #[test]
    fn spread_vectors_are_capped_at_the_housekeeping_count(machine in machine(), params in params()) {
        let topology = machine.topology();
        let plan = plan(&topology, &machine.isolated(), &params, Policy::IoQueue).unwrap();
        let resv = params.pre_vectors + params.post_vectors;
        let min_vectors = params.min_vectors.unwrap_or(resv + 1);
        if !plan.enospc && plan.isolation_active {
            let spread = plan.nr_vecs - resv;
            prop_assert!(
                spread <= plan.housekeeping.len() || plan.nr_vecs == min_vectors,
                "{} spread vectors for {} housekeeping CPUs (min_vectors {})",
                spread, plan.housekeeping.len(), min_vectors
            );
            prop_assert_eq!(plan.sets.iter().sum::<usize>(), spread);
            prop_assert_eq!(plan.vectors.len(), plan.nr_vecs);
        }
        if plan.enospc {
            prop_assert!(plan.nr_vecs < min_vectors || resv > min_vectors);
        }
    }

    #[test]
    fn groups_within_a_node_differ_by_at_most_one(machine in machine(), groups in 1usize..=160) {
        // Cluster grouping deliberately sizes groups by cluster, so balance
        // is promised per node only where there are no cluster masks.
        let machine = Machine { cluster_cores: None, ..machine };
        let topology = machine.topology();
        let mask = topology.possible().difference(&machine.isolated());
        let mask = if mask.is_empty() { topology.possible().clone() } else { mask };
        let nodes_in = |part: &CpuSet| topology.nodes().values().filter(|cpus| cpus.intersects(part)).count();
        // v14 groups in two stages: the present CPUs of the mask, then the rest.
        let present = mask.intersection(topology.present());
        let absent = mask.difference(&present);
        let stage = |part: &CpuSet| if part.is_empty() {
            0
        } else {
            groups.min(part.len()).max(groups.min(nodes_in(part)))
        };
        let result = group_mask_cpus_evenly(&topology, groups, &mask).unwrap();
        // Every CPU of the mask lands in exactly one group.
        let mut seen = CpuSet::new();
        for group in &result.masks {
            prop_assert!(!group.intersects(&seen), "a CPU is in two groups");
            seen.union_with(group);
        }
        prop_assert_eq!(&seen, &mask);
        prop_assert_eq!(result.filled, groups.min(stage(&present) + stage(&absent)));
        // Balance holds within the first stage: per node, the present CPUs
        // each group received differ by at most one.
        if groups > nodes_in(&present) {
            for node_cpus in topology.nodes().values() {
                let sizes: Vec<usize> = result
                    .masks
                    .iter()
                    .map(|group| group.intersection(&present))
                    .filter(|part| part.intersects(node_cpus))
                    .map(|part| {
                        prop_assert!(part.is_subset(node_cpus), "group {} spans nodes", part);
                        Ok(part.len())
                    })
                    .collect::<Result<_, TestCaseError>>()?;
                if let (Some(min), Some(max)) = (sizes.iter().min(), sizes.iter().max()) {
                    prop_assert!(max - min <= 1, "node group sizes {:?}", sizes);
                }
            }
        }
        // The second stage starts after the last group the first one used
        // (or at 0 when it used them all): its first CPUs land there.
        if !absent.is_empty() {
            let first_stage = stage(&present);
            let start = if first_stage >= groups { 0 } else { first_stage };
            prop_assert!(
                result.masks[start].intersects(&absent),
                "the second stage did not begin at group {} ({}), first stage {} groups",
                start, result.masks[start], first_stage
            );
        }
    }

    #[test]
    fn smt_siblings_share_a_group_when_group_sizes_allow(machine in machine(), groups in 1usize..=160) {
        // Whole SMT2 cores, all present, no clusters: a node whose groups
        // all have an even size must never split a core.
        let machine = Machine {
            smt: 2,
            possible: machine.possible.max(2) & !1,
            present: machine.possible.max(2) & !1,
            cluster_cores: None,
            ..machine
        };
        let topology = machine.topology();
        let result = group_cpus_evenly(&topology, groups).unwrap();
        let mut covered = CpuSet::new();
        for group in &result.masks {
            covered.union_with(group);
        }
        prop_assert_eq!(&covered, topology.possible());
        let nodes_in_mask = topology.nodes().values().filter(|cpus| !cpus.is_empty()).count();
        if groups <= nodes_in_mask {
            return Ok(());
        }
        for node_cpus in topology.nodes().values() {
            let node_groups: Vec<&CpuSet> =
                result.masks.iter().filter(|group| group.intersects(node_cpus)).collect();
            if node_groups.iter().any(|group| group.len() % 2 == 1) {
                continue;
            }
            for core in topology.siblings().groups() {
                if !node_cpus.contains(core[0]) {
                    continue;
                }
                let holder = node_groups.iter().find(|group| group.contains(core[0])).unwrap();
                prop_assert!(
                    core.iter().all(|&cpu| holder.contains(cpu)),
                    "core {:?} split although every group of its node is even: {:?}",
                    core, node_groups
                );
            }
        }
    }

    #[test]
    fn the_plan_is_deterministic(machine in machine(), params in params()) {
        let topology = machine.topology();
        let again = machine.topology();
        for policy in [Policy::IoQueue, Policy::Mainline] {
            let first = plan(&topology, &machine.isolated(), &params, policy).unwrap();
            let second = plan(&again, &machine.isolated(), &params, policy).unwrap();
            prop_assert_eq!(first.to_spec_json(), second.to_spec_json());
        }
    }

    #[test]
    fn offline_rule_never_strands_an_online_isolated_cpu(machine in machine(), params in params()) {
        let topology = machine.topology();
        let plan = plan(&topology, &machine.isolated(), &params, Policy::IoQueue).unwrap();
        for map in plan.hardware_maps() {
            for cpu in topology.online().iter() {
                let allowed = map.offline_allowed[cpu].expect("online CPUs have a verdict");
                if plan.isolated.contains(cpu) {
                    prop_assert!(allowed, "isolated CPU {} may not go offline", cpu);
                    continue;
                }
                // Take the CPU away and look for a queue left with online
                // isolated CPUs but no online housekeeping CPU.
                let stranded = map.queues().iter().any(|queue| {
                    let online_queue = queue.intersection(topology.online());
                    let remaining_housekeeping = online_queue
                        .intersection(&plan.housekeeping)
                        .difference(&CpuSet::single(cpu));
                    online_queue.intersects(&plan.isolated) && remaining_housekeeping.is_empty()
                });
                if !plan.isolation_active {
                    prop_assert!(allowed);
                } else if !map.fallback || map.queue_offset == 0 {
                    prop_assert_eq!(allowed, !stranded, "CPU {} in {:?}", cpu, map.queues());
                }
            }
            for cpu in 0..topology.nr_cpu_ids() {
                if !topology.online().contains(cpu) {
                    prop_assert_eq!(map.offline_allowed[cpu], None);
                }
            }
        }
    }
}
