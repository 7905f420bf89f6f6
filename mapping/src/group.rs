//! Grouping CPUs evenly by NUMA node, cluster and SMT core: the kernel's
//! lib/group_cpus.c, `group_cpus_evenly()` and the io_queue series'
//! `group_mask_cpus_evenly()`.
//!
//! Every step follows the kernel's order of operations, because the order
//! is visible in the result: which node is visited first (the kernel
//! heapsort of the private `ksort` module), which group index a node's CPUs land in,
//! and which CPU a group takes next (lowest remaining, then its SMT
//! siblings).

use crate::ksort::{kernel_sort, ncpus_cmp};
use crate::{CpuSet, Topology};

/// The kernel marks a node without CPUs in the mask with `UINT_MAX`; the
/// wrapping comparator then sorts it first and the walk skips it.
const NO_CPUS: u32 = u32::MAX;

/// The result of a grouping: `masks.len()` groups (as many as asked for),
/// of which the first `filled` received CPUs (the kernel's `nummasks`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Groups {
    /// One mask per requested group; groups past `filled` are empty.
    pub masks: Vec<CpuSet>,
    /// How many groups the kernel reports as initialised.
    pub filled: usize,
}

impl Groups {
    /// The initialised masks, `masks[..filled]`.
    pub fn filled_masks(&self) -> &[CpuSet] {
        &self.masks[..self.filled]
    }
}

/// `group_cpus_evenly(numgrps)`: mainline's two-stage grouping of all
/// possible CPUs, present CPUs first, then the possible-but-absent ones
/// starting after the last group used. Returns `None` for zero groups,
/// as the kernel returns `NULL`.
pub fn group_cpus_evenly(topology: &Topology, numgrps: usize) -> Option<Groups> {
    if numgrps == 0 {
        return None;
    }
    let grouper = Grouper::new(topology);
    let mut masks = vec![CpuSet::with_capacity(topology.nr_cpu_ids()); numgrps];
    let present = topology.present().clone();
    let nr_present = grouper.group(0, numgrps, &present, &mut masks);
    let start = if nr_present >= numgrps { 0 } else { nr_present };
    let absent = topology.possible().difference(&present);
    let nr_others = grouper.group(start, numgrps, &absent, &mut masks);
    let filled = (nr_present + nr_others).min(numgrps);
    Some(Groups { masks, filled })
}

/// `group_mask_cpus_evenly(numgrps, mask)`: the io_queue series' grouping
/// of `mask`, two-stage since v13 like `group_cpus_evenly`: the present
/// CPUs of `mask` from group 0, then the rest of `mask` starting after the
/// last group used (or at 0 if all were used). Returns `None` for zero
/// groups.
pub fn group_mask_cpus_evenly(
    topology: &Topology,
    numgrps: usize,
    mask: &CpuSet,
) -> Option<Groups> {
    if numgrps == 0 {
        return None;
    }
    let grouper = Grouper::new(topology);
    let mut masks = vec![CpuSet::with_capacity(topology.nr_cpu_ids()); numgrps];
    let present = mask.intersection(topology.present());
    let nr_present = grouper.group(0, numgrps, &present, &mut masks);
    let start = if nr_present >= numgrps { 0 } else { nr_present };
    let absent = mask.difference(&present);
    let nr_others = grouper.group(start, numgrps, &absent, &mut masks);
    let filled = (nr_present + nr_others).min(numgrps);
    Some(Groups { masks, filled })
}

/// A node's (or cluster's) entry in the kernel's `struct node_groups`: the
/// id, and a count that holds CPUs before allocation and groups after it
/// (a union in the kernel; the walk relies on `NO_CPUS` surviving).
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: usize,
    count: u32,
}

struct Grouper<'a> {
    topology: &'a Topology,
    /// `node_to_cpumask`, indexed by node id up to `nr_node_ids`.
    node_cpus: Vec<CpuSet>,
}

impl<'a> Grouper<'a> {
    fn new(topology: &'a Topology) -> Self {
        let mut node_cpus = vec![CpuSet::new(); topology.nr_node_ids()];
        for (&node, cpus) in topology.nodes() {
            node_cpus[node] = cpus.intersection(topology.possible());
        }
        Grouper {
            topology,
            node_cpus,
        }
    }

    /// `__group_cpus_evenly()`: spreads `cpu_mask` over `masks`, starting
    /// at group `start` and wrapping; returns the groups it allocated.
    fn group(
        &self,
        start: usize,
        numgrps: usize,
        cpu_mask: &CpuSet,
        masks: &mut [CpuSet],
    ) -> usize {
        if cpu_mask.is_empty() {
            return 0;
        }
        let last_grp = numgrps;
        let mut curgrp = start;
        // `for_each_node`: the nodes the machine declares, in id order.
        let nodes_in_mask: Vec<usize> = self
            .topology
            .nodes()
            .keys()
            .copied()
            .filter(|&node| self.node_cpus[node].intersects(cpu_mask))
            .collect();

        // Fewer groups than nodes: each node goes whole into the next group.
        if numgrps <= nodes_in_mask.len() {
            for &node in &nodes_in_mask {
                masks[curgrp].union_with(&cpu_mask.intersection(&self.node_cpus[node]));
                curgrp += 1;
                if curgrp == last_grp {
                    curgrp = 0;
                }
            }
            return numgrps;
        }

        let mut entries: Vec<Entry> = (0..self.node_cpus.len())
            .map(|id| Entry { id, count: NO_CPUS })
            .collect();
        let mut numcpus = 0u32;
        for &node in &nodes_in_mask {
            let ncpus = self.node_cpus[node].intersection_len(cpu_mask) as u32;
            if ncpus == 0 {
                continue;
            }
            numcpus += ncpus;
            entries[node].count = ncpus;
        }
        let numgrps_alloc = numcpus.min(numgrps as u32);
        alloc_groups(numgrps_alloc, numcpus, &mut entries);

        let mut done = 0usize;
        for entry in &entries {
            if entry.count == NO_CPUS {
                continue;
            }
            let node_mask = cpu_mask.intersection(&self.node_cpus[entry.id]);
            let ncpus = node_mask.len();
            if ncpus == 0 {
                continue;
            }
            let ngroups = entry.count as usize;
            if !self.try_group_clusters(ncpus, ngroups, &node_mask, masks, &mut curgrp, last_grp) {
                let mut remaining = Remaining::new(&node_mask);
                self.assign(ncpus, ngroups, &mut remaining, masks, &mut curgrp, last_grp);
            }
            done += ngroups;
        }
        done
    }

    /// `__try_group_cluster_cpus()`: when the node's clusters are no more
    /// than its groups, split the groups over clusters and fill each.
    fn try_group_clusters(
        &self,
        ncpus: usize,
        ngroups: usize,
        node_mask: &CpuSet,
        masks: &mut [CpuSet],
        curgrp: &mut usize,
        last_grp: usize,
    ) -> bool {
        let Some(clusters) = self.topology.clusters() else {
            return false;
        };
        // Probe the clusters in the order of their first CPU in the node.
        let mut probe = Remaining::new(node_mask);
        let mut found: Vec<std::borrow::Cow<'_, [usize]>> = Vec::new();
        while let Some(cpu) = probe.first() {
            // A CPU no listed cluster contains is a cluster of its own: the
            // kernel's default `topology_cluster_cpumask()` is the CPU.
            let cluster = match clusters.of(cpu) {
                [] => std::borrow::Cow::Owned(vec![cpu]),
                listed => std::borrow::Cow::Borrowed(listed),
            };
            for &member in cluster.iter() {
                probe.take(member);
            }
            found.push(cluster);
        }
        if found.is_empty() || found.len() > ngroups {
            return false;
        }
        let mut entries: Vec<Entry> = found
            .iter()
            .enumerate()
            .map(|(id, cluster)| Entry {
                id,
                count: cluster
                    .iter()
                    .filter(|&&cpu| node_mask.contains(cpu))
                    .count() as u32,
            })
            .collect();
        alloc_groups(ngroups as u32, ncpus as u32, &mut entries);
        for entry in &entries {
            let cluster_mask: CpuSet = found[entry.id]
                .iter()
                .copied()
                .filter(|&cpu| node_mask.contains(cpu))
                .collect();
            let nc = cluster_mask.len();
            if nc == 0 {
                continue;
            }
            let mut remaining = Remaining::new(&cluster_mask);
            self.assign(
                nc,
                entry.count as usize,
                &mut remaining,
                masks,
                curgrp,
                last_grp,
            );
        }
        true
    }

    /// `assign_cpus_to_groups()`: `ncpus / ngroups` CPUs per group, the
    /// first `ncpus % ngroups` groups one more.
    fn assign(
        &self,
        ncpus: usize,
        ngroups: usize,
        remaining: &mut Remaining,
        masks: &mut [CpuSet],
        curgrp: &mut usize,
        last_grp: usize,
    ) {
        let mut extra = ncpus - ngroups * (ncpus / ngroups);
        for _ in 0..ngroups {
            let mut cpus_per_grp = ncpus / ngroups;
            if extra > 0 {
                cpus_per_grp += 1;
                extra -= 1;
            }
            if *curgrp >= last_grp {
                *curgrp = 0;
            }
            self.spread_one(&mut masks[*curgrp], remaining, cpus_per_grp);
            *curgrp += 1;
        }
    }

    /// `grp_spread_init_one()`: take the lowest remaining CPU, then its
    /// remaining SMT siblings (lowest first), until the group is full.
    fn spread_one(&self, group: &mut CpuSet, remaining: &mut Remaining, mut cpus_per_grp: usize) {
        while cpus_per_grp > 0 {
            let Some(cpu) = remaining.first() else {
                return;
            };
            remaining.take(cpu);
            group.insert(cpu);
            cpus_per_grp -= 1;
            for &sibling in self.topology.siblings().of(cpu) {
                if cpus_per_grp == 0 {
                    break;
                }
                if remaining.take(sibling) {
                    group.insert(sibling);
                    cpus_per_grp -= 1;
                }
            }
        }
    }
}

/// `alloc_groups_to_nodes()`: sort by CPU count with the kernel heapsort,
/// then give each entry `max(1, groups × cpus / remaining cpus)`. Counts
/// are `unsigned int` arithmetic in the kernel; wrapping ops keep that.
fn alloc_groups(mut numgrps: u32, numcpus: u32, entries: &mut [Entry]) {
    kernel_sort(entries, |l, r| ncpus_cmp(l.count, r.count));
    let mut remaining_ncpus = numcpus;
    for entry in entries.iter_mut() {
        if entry.count == NO_CPUS {
            continue;
        }
        let ncpus = entry.count;
        let ngroups = (numgrps.wrapping_mul(ncpus) / remaining_ncpus).max(1);
        entry.count = ngroups;
        remaining_ncpus = remaining_ncpus.wrapping_sub(ncpus);
        numgrps = numgrps.wrapping_sub(ngroups);
    }
}

/// CPUs not yet placed in a group, with an O(1) amortised "lowest
/// remaining CPU": CPUs only ever leave, so a cursor over the sorted list
/// never moves back.
struct Remaining {
    order: Vec<usize>,
    left: CpuSet,
    cursor: usize,
}

impl Remaining {
    fn new(cpus: &CpuSet) -> Self {
        Remaining {
            order: cpus.iter().collect(),
            left: cpus.clone(),
            cursor: 0,
        }
    }

    fn first(&mut self) -> Option<usize> {
        while let Some(&cpu) = self.order.get(self.cursor) {
            if self.left.contains(cpu) {
                return Some(cpu);
            }
            self.cursor += 1;
        }
        None
    }

    /// Removes `cpu`; returns whether it was still there.
    fn take(&mut self, cpu: usize) -> bool {
        self.left.remove(cpu)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TopologySpec;
    use std::collections::BTreeMap;

    fn set(list: &str) -> CpuSet {
        list.parse().unwrap()
    }

    fn lists(groups: &Groups) -> Vec<String> {
        groups
            .filled_masks()
            .iter()
            .map(|m| m.to_string())
            .collect()
    }

    fn two_nodes_smt2() -> Topology {
        // Node 0: 0-7, node 1: 8-15; SMT siblings n and n+1; clusters = cores.
        let siblings: Vec<CpuSet> = (0..8).map(|c| CpuSet::range(2 * c, 2 * c + 2)).collect();
        Topology::new(TopologySpec {
            possible: set("0-15"),
            present: set("0-15"),
            online: set("0-15"),
            nodes: BTreeMap::from([(0, set("0-7")), (1, set("8-15"))]),
            siblings: siblings.clone(),
            clusters: Some(siblings),
        })
        .unwrap()
    }

    #[test]
    fn equal_nodes_are_visited_node_one_first() {
        let topo = two_nodes_smt2();
        let groups = group_cpus_evenly(&topo, 4).unwrap();
        assert_eq!(lists(&groups), ["8-11", "12-15", "0-3", "4-7"]);
    }

    #[test]
    fn fewer_groups_than_nodes_puts_whole_nodes_in_groups() {
        let topo = two_nodes_smt2();
        let groups = group_cpus_evenly(&topo, 1).unwrap();
        assert_eq!(lists(&groups), ["0-15"]);
        assert_eq!(groups.filled, 1);
    }

    #[test]
    fn siblings_share_a_group() {
        let topo = Topology::new(TopologySpec {
            possible: set("0-7"),
            present: set("0-7"),
            online: set("0-7"),
            nodes: BTreeMap::from([(0, set("0-7"))]),
            siblings: vec![set("0,4"), set("1,5"), set("2,6"), set("3,7")],
            clusters: None,
        })
        .unwrap();
        let groups = group_cpus_evenly(&topo, 4).unwrap();
        assert_eq!(lists(&groups), ["0,4", "1,5", "2,6", "3,7"]);
    }

    #[test]
    fn absent_cpus_follow_the_present_ones() {
        let topo = Topology::new(TopologySpec {
            possible: set("0-15"),
            present: set("0-7"),
            online: set("0-7"),
            nodes: BTreeMap::from([(0, set("0-15"))]),
            siblings: vec![],
            clusters: None,
        })
        .unwrap();
        let groups = group_cpus_evenly(&topo, 2).unwrap();
        assert_eq!(lists(&groups), ["0-3,8-11", "4-7,12-15"]);
    }

    #[test]
    fn mask_grouping_counts_only_the_mask() {
        let topo = two_nodes_smt2();
        let groups = group_mask_cpus_evenly(&topo, 8, &set("0,2,4,6")).unwrap();
        assert_eq!(groups.filled, 4);
        assert_eq!(groups.masks.len(), 8);
        assert!(groups.masks[4..].iter().all(CpuSet::is_empty));
        assert!(group_mask_cpus_evenly(&topo, 0, &set("0")).is_none());
    }
}
