//! The CPU topology the policy reads: which CPUs exist, where they sit
//! (NUMA node, cluster, SMT core) and which are present and online.
//!
//! A [`Topology`] is built from sysfs ([`crate::sysfs`]), from the JSON
//! input format of the specification ([`crate::input`]) or by hand. It is
//! validated once on construction so the planner never meets an
//! inconsistent machine.

use std::collections::BTreeMap;

use crate::CpuSet;

/// Why a topology was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// No possible CPU at all.
    #[error("the topology has no possible CPU: list at least one CPU in `possible`")]
    NoPossibleCpu,
    /// `present` names a CPU that is not possible (or `online` one that is
    /// not present).
    #[error("CPUs {extra} are {what} but not {within}: every {what} CPU must also be {within}")]
    NotSubset {
        /// The CPUs breaking the rule.
        extra: CpuSet,
        /// The set they are in (`present` or `online`).
        what: &'static str,
        /// The set they should also be in.
        within: &'static str,
    },
    /// A CPU is listed in two NUMA nodes.
    #[error(
        "CPU {cpu} is listed in NUMA node {first} and in node {second}: a CPU belongs to one node"
    )]
    CpuInTwoNodes {
        /// The CPU.
        cpu: usize,
        /// The first node listing it.
        first: usize,
        /// The second node listing it.
        second: usize,
    },
    /// A node, sibling group or cluster names a CPU that is not possible.
    #[error("{what} names CPUs {cpus} that are not possible CPUs (possible: {possible})")]
    UnknownCpu {
        /// Where the CPUs were named.
        what: String,
        /// The CPUs that are not possible.
        cpus: CpuSet,
        /// The possible CPUs.
        possible: CpuSet,
    },
    /// A CPU appears in two different SMT sibling groups or clusters.
    #[error("CPU {cpu} appears in two different {what} groups ({first} and {second}): groups must not overlap")]
    OverlappingGroups {
        /// The CPU.
        cpu: usize,
        /// `SMT sibling` or `cluster`.
        what: &'static str,
        /// One group holding it.
        first: CpuSet,
        /// The other group holding it.
        second: CpuSet,
    },
    /// No CPU is online.
    #[error("no CPU is online: at least one CPU must be online")]
    NoOnlineCpu,
}

/// Groups of CPUs that partition (part of) the CPU space, such as SMT
/// sibling sets or clusters, stored compactly: every group's sorted CPUs
/// one after another in one vector, where each group starts, and a per-CPU
/// index into the groups. A CPU in no group has no entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuGroups {
    members: Vec<usize>,
    /// Group `i` is `members[starts[i]..starts[i + 1]]`.
    starts: Vec<usize>,
    group_of: Vec<Option<u32>>,
}

impl Default for CpuGroups {
    fn default() -> Self {
        CpuGroups {
            members: Vec::new(),
            starts: vec![0],
            group_of: Vec::new(),
        }
    }
}

impl CpuGroups {
    /// Builds the groups, refusing a CPU that sits in two different groups.
    /// A group listed twice is kept once.
    pub fn new(
        sets: impl IntoIterator<Item = CpuSet>,
        what: &'static str,
    ) -> Result<Self, TopologyError> {
        CpuGroups::from_lists(sets.into_iter().map(|set| set.iter().collect()), what)
    }

    /// Fails when a group names a CPU outside `possible`.
    fn check_within(&self, possible: &CpuSet, what: &str) -> Result<(), TopologyError> {
        for group in self.groups() {
            if group.iter().any(|&cpu| !possible.contains(cpu)) {
                let set: CpuSet = group.iter().copied().collect();
                return Err(TopologyError::UnknownCpu {
                    what: what.to_string(),
                    cpus: set.difference(possible),
                    possible: possible.clone(),
                });
            }
        }
        Ok(())
    }

    /// As [`CpuGroups::new`], from each group's CPUs in increasing order
    /// without duplicates.
    pub fn from_lists(
        lists: impl IntoIterator<Item = Vec<usize>>,
        what: &'static str,
    ) -> Result<Self, TopologyError> {
        let mut out = CpuGroups::default();
        for cpus in lists {
            out.add(&cpus, what)?;
        }
        Ok(out)
    }

    /// Adds one group (its CPUs in increasing order, no duplicates); a
    /// group already there is kept once, a group overlapping another is an
    /// error.
    pub fn add(&mut self, cpus: &[usize], what: &'static str) -> Result<(), TopologyError> {
        if cpus.is_empty() {
            return Ok(());
        }
        debug_assert!(cpus.windows(2).all(|w| w[0] < w[1]), "unsorted group");
        // A repeated group (sysfs lists one per member CPU) shows at its
        // first CPU.
        if let Some(existing) = self.group_of.get(cpus[0]).copied().flatten() {
            if self.group(existing as usize) == cpus {
                return Ok(());
            }
        }
        let index = self.starts.len() - 1;
        for &cpu in cpus {
            if self.group_of.len() <= cpu {
                self.group_of.resize(cpu + 1, None);
            }
            if let Some(existing) = self.group_of[cpu] {
                // Undo this group's entries before reporting.
                for &done in cpus.iter().take_while(|&&c| c != cpu) {
                    self.group_of[done] = None;
                }
                return Err(TopologyError::OverlappingGroups {
                    cpu,
                    what,
                    first: self.group(existing as usize).iter().copied().collect(),
                    second: cpus.iter().copied().collect(),
                });
            }
            self.group_of[cpu] = Some(index as u32);
        }
        self.members.extend_from_slice(cpus);
        self.starts.push(self.members.len());
        Ok(())
    }

    fn group(&self, index: usize) -> &[usize] {
        &self.members[self.starts[index]..self.starts[index + 1]]
    }

    /// The sorted CPUs of the group holding `cpu`; empty when `cpu` is in
    /// no group (the kernel's empty topology mask).
    pub fn of(&self, cpu: usize) -> &[usize] {
        match self.group_of.get(cpu).copied().flatten() {
            Some(index) => self.group(index as usize),
            None => &[],
        }
    }

    /// All groups, each sorted, in the order they were given.
    pub fn groups(&self) -> impl ExactSizeIterator<Item = &[usize]> + '_ {
        (0..self.starts.len() - 1).map(|index| self.group(index))
    }

    /// Every CPU named by some group.
    pub fn all_cpus(&self) -> CpuSet {
        self.members.iter().copied().collect()
    }
}

/// A machine's CPU topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    possible: CpuSet,
    present: CpuSet,
    online: CpuSet,
    nodes: BTreeMap<usize, CpuSet>,
    cpu_node: Vec<usize>,
    siblings: CpuGroups,
    clusters: Option<CpuGroups>,
}

/// Everything needed to build a [`Topology`]; [`Topology::new`] checks it.
#[derive(Debug, Clone, Default)]
pub struct TopologySpec {
    /// CPUs that may ever exist (`cpu_possible_mask`).
    pub possible: CpuSet,
    /// CPUs physically there (`cpu_present_mask`).
    pub present: CpuSet,
    /// CPUs running now (`cpu_online_mask`).
    pub online: CpuSet,
    /// NUMA node id → its CPUs. Nodes without CPUs are kept (they count in
    /// `nr_node_ids`). A possible CPU listed in no node is placed on node 0,
    /// as the kernel does without NUMA information.
    pub nodes: BTreeMap<usize, CpuSet>,
    /// SMT sibling groups (CPUs sharing a core). A CPU in none has no
    /// siblings.
    pub siblings: Vec<CpuSet>,
    /// Cluster groups (CPUs sharing an L2 on x86), or `None` when the kernel
    /// has no cluster masks (before cluster-aware grouping). A CPU in none
    /// is a cluster of its own, as the kernel's default
    /// `topology_cluster_cpumask()` is the CPU itself.
    pub clusters: Option<Vec<CpuSet>>,
}

impl Topology {
    /// Validates `spec` and builds the topology.
    pub fn new(spec: TopologySpec) -> Result<Self, TopologyError> {
        let siblings = CpuGroups::new(spec.siblings, "SMT sibling")?;
        let clusters = spec
            .clusters
            .map(|sets| CpuGroups::new(sets, "cluster"))
            .transpose()?;
        Topology::from_groups(
            spec.possible,
            spec.present,
            spec.online,
            spec.nodes,
            siblings,
            clusters,
        )
    }

    /// Validates and builds the topology from sibling and cluster groups
    /// already built (see [`CpuGroups::from_lists`]: thousands of small
    /// groups far up the CPU space cost less as lists than as bitsets).
    pub fn from_groups(
        possible: CpuSet,
        present: CpuSet,
        online: CpuSet,
        mut nodes: BTreeMap<usize, CpuSet>,
        siblings: CpuGroups,
        clusters: Option<CpuGroups>,
    ) -> Result<Self, TopologyError> {
        if possible.is_empty() {
            return Err(TopologyError::NoPossibleCpu);
        }
        let extra = present.difference(&possible);
        if !extra.is_empty() {
            return Err(TopologyError::NotSubset {
                extra,
                what: "present",
                within: "possible",
            });
        }
        let extra = online.difference(&present);
        if !extra.is_empty() {
            return Err(TopologyError::NotSubset {
                extra,
                what: "online",
                within: "present",
            });
        }
        if online.is_empty() {
            return Err(TopologyError::NoOnlineCpu);
        }
        let nr_cpu_ids = possible.last().map_or(0, |last| last + 1);
        let mut cpu_node: Vec<Option<usize>> = vec![None; nr_cpu_ids];
        for (&node, cpus) in &nodes {
            let unknown = cpus.difference(&possible);
            if !unknown.is_empty() {
                return Err(TopologyError::UnknownCpu {
                    what: format!("NUMA node {node}"),
                    cpus: unknown,
                    possible: possible.clone(),
                });
            }
            for cpu in cpus.iter() {
                if let Some(first) = cpu_node[cpu] {
                    return Err(TopologyError::CpuInTwoNodes {
                        cpu,
                        first,
                        second: node,
                    });
                }
                cpu_node[cpu] = Some(node);
            }
        }
        let mut homeless = CpuSet::new();
        for cpu in possible.iter() {
            if cpu_node[cpu].is_none() {
                homeless.insert(cpu);
                cpu_node[cpu] = Some(0);
            }
        }
        if !homeless.is_empty() {
            nodes.entry(0).or_default().union_with(&homeless);
        }
        siblings.check_within(&possible, "an SMT sibling group")?;
        if let Some(clusters) = &clusters {
            clusters.check_within(&possible, "a cluster")?;
        }
        Ok(Topology {
            possible,
            present,
            online,
            nodes,
            cpu_node: cpu_node.into_iter().map(|n| n.unwrap_or(0)).collect(),
            siblings,
            clusters,
        })
    }

    /// A single-node machine with CPUs `0..cpus`, all online, no SMT or
    /// cluster information.
    pub fn flat(cpus: usize) -> Result<Self, TopologyError> {
        let all = CpuSet::range(0, cpus);
        Topology::new(TopologySpec {
            possible: all.clone(),
            present: all.clone(),
            online: all.clone(),
            nodes: BTreeMap::from([(0, all)]),
            siblings: Vec::new(),
            clusters: None,
        })
    }

    /// Possible CPUs.
    pub fn possible(&self) -> &CpuSet {
        &self.possible
    }

    /// Present CPUs.
    pub fn present(&self) -> &CpuSet {
        &self.present
    }

    /// Online CPUs.
    pub fn online(&self) -> &CpuSet {
        &self.online
    }

    /// Highest possible CPU + 1.
    pub fn nr_cpu_ids(&self) -> usize {
        self.cpu_node.len()
    }

    /// Highest node id + 1 (node ids may have gaps).
    pub fn nr_node_ids(&self) -> usize {
        self.nodes.keys().next_back().map_or(1, |last| last + 1)
    }

    /// NUMA node id → CPUs, CPU-less nodes included.
    pub fn nodes(&self) -> &BTreeMap<usize, CpuSet> {
        &self.nodes
    }

    /// The node of a possible CPU.
    pub fn node_of(&self, cpu: usize) -> Option<usize> {
        self.cpu_node
            .get(cpu)
            .copied()
            .filter(|_| self.possible.contains(cpu))
    }

    /// The SMT sibling groups.
    pub fn siblings(&self) -> &CpuGroups {
        &self.siblings
    }

    /// The cluster groups, `None` when the kernel has no cluster masks.
    pub fn clusters(&self) -> Option<&CpuGroups> {
        self.clusters.as_ref()
    }

    /// The same machine with a different online set (a hotplug event).
    pub fn with_online(&self, online: CpuSet) -> Result<Self, TopologyError> {
        let extra = online.difference(&self.present);
        if !extra.is_empty() {
            return Err(TopologyError::NotSubset {
                extra,
                what: "online",
                within: "present",
            });
        }
        if online.is_empty() {
            return Err(TopologyError::NoOnlineCpu);
        }
        Ok(Topology {
            online,
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> CpuSet {
        list.parse().unwrap()
    }

    fn spec() -> TopologySpec {
        TopologySpec {
            possible: set("0-7"),
            present: set("0-7"),
            online: set("0-7"),
            nodes: BTreeMap::from([(0, set("0-3")), (2, set("4-7")), (3, set(""))]),
            siblings: vec![set("0,4"), set("1,5")],
            clusters: Some(vec![set("0-1"), set("4-5")]),
        }
    }

    #[test]
    fn keeps_cpu_less_nodes_and_gaps() {
        let topo = Topology::new(spec()).unwrap();
        assert_eq!(topo.nr_node_ids(), 4);
        assert_eq!(topo.nodes().len(), 3);
        assert_eq!(topo.node_of(5), Some(2));
        assert_eq!(topo.siblings().of(4), &[0, 4]);
        assert!(topo.siblings().of(2).is_empty());
        assert_eq!(topo.clusters().unwrap().of(5), &[4, 5]);
    }

    #[test]
    fn rejects_inconsistent_sets() {
        let mut bad = spec();
        bad.online = set("0-8");
        assert!(matches!(
            Topology::new(bad),
            Err(TopologyError::NotSubset { what: "online", .. })
        ));
        let mut bad = spec();
        bad.nodes.insert(1, set("3"));
        assert!(matches!(
            Topology::new(bad),
            Err(TopologyError::CpuInTwoNodes { cpu: 3, .. })
        ));
        let mut bad = spec();
        bad.siblings.push(set("0-1"));
        let err = Topology::new(bad).unwrap_err();
        assert!(err
            .to_string()
            .contains("CPU 0 appears in two different SMT sibling groups"));
        let mut bad = spec();
        bad.clusters = Some(vec![set("6-9")]);
        assert!(matches!(
            Topology::new(bad),
            Err(TopologyError::UnknownCpu { .. })
        ));
    }

    #[test]
    fn cpus_without_a_node_go_to_node_zero() {
        let mut partial = spec();
        partial.nodes = BTreeMap::from([(1, set("4-7"))]);
        let topo = Topology::new(partial).unwrap();
        assert_eq!(topo.node_of(2), Some(0));
        assert_eq!(topo.nodes()[&0], set("0-3"));
    }
}
