//! The plan: everything the policy decides for one device on one machine —
//! vectors, their CPUs, the CPU → queue maps and the offline rule — in the
//! form the driver consumes and `isonvme-map` prints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::queue_map::{MapContext, QueueMap};
use crate::vectors::{affinity_masks, set_sizes, vector_count, Vector, VectorRequest};
use crate::{CpuSet, Topology};

/// Which kernel behaviour to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// `isolcpus=io_queue` (the "blk: honor isolcpus configuration" series).
    IoQueue,
    /// Mainline Linux, which ignores the isolated set; for comparison.
    Mainline,
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "io_queue" => Ok(Policy::IoQueue),
            "mainline" => Ok(Policy::Mainline),
            other => Err(format!(
                "unknown policy `{other}`: use `io_queue` or `mainline`"
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Policy::IoQueue => "io_queue",
            Policy::Mainline => "mainline",
        })
    }
}

/// What the device asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanParams {
    /// I/O queues wanted.
    pub queues: usize,
    /// Unmanaged vectors before the spread ones (NVMe's admin queue: 1).
    #[serde(default)]
    pub pre_vectors: usize,
    /// Unmanaged vectors after the spread ones.
    #[serde(default)]
    pub post_vectors: usize,
    /// The fewest vectors the device accepts; default pre + post + 1.
    #[serde(default)]
    pub min_vectors: Option<usize>,
    /// Absolute number of the first queue of the generic map
    /// (`blk_mq_map_queues`): a secondary map, such as NVMe's poll queues,
    /// follows the queues of the maps before it.
    #[serde(default)]
    pub queue_offset: usize,
    /// Vector set sizes (e.g. default/read/poll), if the device uses sets.
    #[serde(default)]
    pub sets: Option<Vec<usize>>,
}

/// Most I/O queues a request may name: NVMe queue identifiers are 16-bit.
pub const MAX_QUEUES: usize = 65_535;
/// Most unmanaged (pre or post) vectors: the MSI-X table holds 2048.
pub const MAX_RESERVED_VECTORS: usize = 2048;
/// Most vector sets (the kernel's `IRQ_AFFINITY_MAX_SETS`).
pub const MAX_SETS: usize = 4;

impl PlanParams {
    /// Refuses values no device or kernel can have (they would otherwise
    /// cost memory in proportion to their size).
    pub fn check_ranges(&self) -> Result<(), PlanError> {
        let out = |what, value, limit| Err(PlanError::OutOfRange { what, value, limit });
        if self.queues > MAX_QUEUES {
            return out(
                "queues",
                self.queues,
                "at most 65535 (NVMe queue ids are 16-bit)",
            );
        }
        if self.pre_vectors > MAX_RESERVED_VECTORS {
            return out(
                "pre_vectors",
                self.pre_vectors,
                "at most 2048 (the largest MSI-X table)",
            );
        }
        if self.post_vectors > MAX_RESERVED_VECTORS {
            return out(
                "post_vectors",
                self.post_vectors,
                "at most 2048 (the largest MSI-X table)",
            );
        }
        if let Some(min) = self.min_vectors {
            if min > MAX_QUEUES + 2 * MAX_RESERVED_VECTORS {
                return out(
                    "min_vectors",
                    min,
                    "at most queues + pre_vectors + post_vectors can ever be allocated (69631)",
                );
            }
        }
        if self.queue_offset.saturating_add(self.queues) > MAX_QUEUES + 1 {
            return out(
                "queue_offset",
                self.queue_offset,
                "queue_offset + queues must stay within 65536 queues",
            );
        }
        if let Some(sets) = &self.sets {
            if sets.len() > MAX_SETS {
                return out(
                    "sets",
                    sets.len(),
                    "at most 4 vector sets (IRQ_AFFINITY_MAX_SETS)",
                );
            }
            if let Some(&size) = sets.iter().find(|&&size| size > MAX_QUEUES) {
                return out("a set size", size, "at most 65535");
            }
        }
        Ok(())
    }

    /// An NVMe-like request: `queues` I/O queues and one admin pre vector.
    pub fn nvme(queues: usize) -> Self {
        PlanParams {
            queues,
            pre_vectors: 1,
            post_vectors: 0,
            min_vectors: None,
            queue_offset: 0,
            sets: None,
        }
    }
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Zero queues requested.
    #[error("0 queues requested: ask for at least one I/O queue")]
    NoQueues,
    /// A vector set of size zero.
    #[error("vector set {index} has size 0: every set needs at least one vector")]
    EmptySet {
        /// The set's index.
        index: usize,
    },
    /// A parameter beyond what any device or kernel can have.
    #[error("{what} = {value} is out of range: {limit}")]
    OutOfRange {
        /// The parameter.
        what: &'static str,
        /// The value given.
        value: usize,
        /// The limit, and why.
        limit: &'static str,
    },
    /// Isolated CPUs that do not exist on the machine.
    #[error("isolated CPUs {cpus} are not possible CPUs of this machine (possible: {possible})")]
    UnknownIsolatedCpus {
        /// The offending CPUs.
        cpus: CpuSet,
        /// The machine's possible CPUs.
        possible: CpuSet,
    },
}

/// The policy's decisions for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The behaviour reproduced.
    pub policy: Policy,
    /// The request this plan answers.
    pub params: PlanParams,
    /// Whether any CPU is isolated (reported for both policies).
    pub isolation_active: bool,
    /// Isolated CPUs actually in effect (after the boot-CPU rule).
    pub isolated: CpuSet,
    /// Housekeeping CPUs: possible − isolated.
    pub housekeeping: CpuSet,
    /// `blk_mq_num_possible_queues(queues)`.
    pub num_possible_queues: usize,
    /// `blk_mq_num_online_queues(queues)`.
    pub num_online_queues: usize,
    /// Interrupt vectors allocated (admin/pre + spread + post).
    pub nr_vecs: usize,
    /// Whether the allocation fails (fewer vectors than `min_vectors`).
    pub enospc: bool,
    /// The vector set sizes used.
    pub sets: Vec<usize>,
    /// Each vector's affinity.
    pub vectors: Vec<Vector>,
    /// One hardware queue map per set, from the vectors' affinities.
    pub irq_queue_maps: Vec<QueueMap>,
    /// The generic map (`blk_mq_map_queues`), at `params.queue_offset`.
    pub queue_map: QueueMap,
}

/// The answer to "may this CPU go offline?", with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum OfflineVerdict {
    /// The CPU is already offline.
    AlreadyOffline,
    /// Nothing is isolated, so any CPU may go.
    NoIsolation,
    /// The mainline policy ignores isolation, so any CPU may go.
    MainlinePolicy,
    /// Isolated CPUs may always go offline.
    Isolated,
    /// Every queue it serves keeps another online housekeeping CPU.
    OtherHousekeepingRemain,
    /// It is the last online housekeeping CPU of a queue that online
    /// isolated CPUs submit to.
    LastHousekeeping {
        /// The absolute queue number.
        queue: usize,
        /// The online isolated CPUs that would be stranded.
        isolated: CpuSet,
    },
    /// A queue serving online isolated CPUs has no online housekeeping CPU
    /// at all, so no housekeeping CPU may go until it is fixed.
    QueueWithoutHousekeeping {
        /// The absolute queue number.
        queue: usize,
        /// The online isolated CPUs on it.
        isolated: CpuSet,
    },
}

impl OfflineVerdict {
    /// Whether the CPU may go offline.
    pub fn allowed(&self) -> bool {
        !matches!(
            self,
            OfflineVerdict::LastHousekeeping { .. }
                | OfflineVerdict::QueueWithoutHousekeeping { .. }
        )
    }
}

impl fmt::Display for OfflineVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OfflineVerdict::AlreadyOffline => f.write_str("it is already offline"),
            OfflineVerdict::NoIsolation => {
                f.write_str("no CPU is isolated, so every online CPU may go offline")
            }
            OfflineVerdict::MainlinePolicy => f.write_str(
                "the mainline policy ignores isolation, so every online CPU may go offline",
            ),
            OfflineVerdict::Isolated => f.write_str("it is isolated; isolated CPUs may always go offline"),
            OfflineVerdict::OtherHousekeepingRemain => f.write_str(
                "every queue it serves keeps another online housekeeping CPU",
            ),
            OfflineVerdict::LastHousekeeping { queue, isolated } => write!(
                f,
                "it is the last online housekeeping CPU of queue {queue}, which isolated CPUs {isolated} submit to; bring another housekeeping CPU of that queue online or take CPUs {isolated} offline first"
            ),
            OfflineVerdict::QueueWithoutHousekeeping { queue, isolated } => write!(
                f,
                "queue {queue} serves online isolated CPUs {isolated} and has no online housekeeping CPU, so no housekeeping CPU may go offline"
            ),
        }
    }
}

/// Computes the plan for `params` on `topology` with `isolated` CPUs.
pub fn plan(
    topology: &Topology,
    isolated: &CpuSet,
    params: &PlanParams,
    policy: Policy,
) -> Result<Plan, PlanError> {
    if params.queues == 0 {
        return Err(PlanError::NoQueues);
    }
    params.check_ranges()?;
    if let Some(index) = params
        .sets
        .as_deref()
        .and_then(|sets| sets.iter().position(|&size| size == 0))
    {
        return Err(PlanError::EmptySet { index });
    }
    let unknown = isolated.difference(topology.possible());
    if !unknown.is_empty() {
        return Err(PlanError::UnknownIsolatedCpus {
            cpus: unknown,
            possible: topology.possible().clone(),
        });
    }
    let (isolated, housekeeping) = housekeeping_split(topology, isolated);
    let isolation_active = !isolated.is_empty();
    let policy_housekeeping =
        (policy == Policy::IoQueue && isolation_active).then_some(&housekeeping);

    let counted = policy_housekeeping.unwrap_or(topology.possible());
    let min_not_zero = |count: usize| {
        if count == 0 {
            params.queues
        } else {
            count.min(params.queues)
        }
    };
    let num_possible_queues = min_not_zero(topology.possible().intersection_len(counted));
    let num_online_queues = min_not_zero(topology.online().intersection_len(counted));

    let resv = params.pre_vectors + params.post_vectors;
    let request = VectorRequest {
        pre_vectors: params.pre_vectors,
        post_vectors: params.post_vectors,
        max_vectors: params.queues + resv,
        min_vectors: params.min_vectors.unwrap_or(resv + 1),
        has_sets: params.sets.is_some(),
    };
    let (nr_vecs, enospc) = vector_count(
        request,
        topology.possible().len(),
        policy_housekeeping.map(CpuSet::len),
    );

    let context = MapContext {
        topology,
        housekeeping: policy_housekeeping,
    };
    let (sets, vectors, irq_queue_maps) = if enospc {
        (Vec::new(), Vec::new(), Vec::new())
    } else {
        let sets = set_sizes(params.sets.as_deref(), nr_vecs.saturating_sub(resv));
        let vectors = affinity_masks(
            topology,
            nr_vecs,
            params.pre_vectors,
            params.post_vectors,
            &sets,
            policy_housekeeping,
        );
        let mut maps = Vec::with_capacity(sets.len());
        let mut first = 0;
        for &size in &sets {
            let start = params.pre_vectors + first;
            let masks: Vec<CpuSet> = vectors[start..start + size]
                .iter()
                .map(|v| v.cpus.clone())
                .collect();
            maps.push(context.map_hw_queues(&masks, first));
            first += size;
        }
        (sets, vectors, maps)
    };
    let queue_map = context.map_queues(
        params.queues.min(topology.nr_cpu_ids()),
        params.queue_offset,
    );

    Ok(Plan {
        policy,
        params: params.clone(),
        isolation_active,
        isolated,
        housekeeping,
        num_possible_queues,
        num_online_queues,
        nr_vecs,
        enospc,
        sets,
        vectors,
        irq_queue_maps,
        queue_map,
    })
}

/// The specification's result object, borrowed from a [`Plan`].
#[derive(Serialize)]
struct SpecView<'a> {
    irq_queue_maps: &'a [QueueMap],
    isolation_active: bool,
    housekeeping: &'a CpuSet,
    num_possible_queues: usize,
    num_online_queues: usize,
    nr_vecs: usize,
    enospc: bool,
    sets: &'a [usize],
    queue_map: &'a QueueMap,
    vectors: &'a [crate::vectors::Vector],
}

/// Housekeeping = possible − isolated; if no present CPU would remain, the
/// boot CPU (the lowest online CPU) goes back into housekeeping, as the
/// kernel's `housekeeping_setup()` does.
pub(crate) fn housekeeping_split(topology: &Topology, isolated: &CpuSet) -> (CpuSet, CpuSet) {
    let mut isolated = isolated.intersection(topology.possible());
    let mut housekeeping = topology.possible().difference(&isolated);
    if !isolated.is_empty() && !housekeeping.intersects(topology.present()) {
        if let Some(boot_cpu) = topology.online().first() {
            housekeeping.insert(boot_cpu);
            isolated.remove(boot_cpu);
        }
    }
    (isolated, housekeeping)
}

impl Plan {
    /// The hardware queue maps the driver builds queues from (the
    /// generic map when no vectors could be allocated).
    pub fn hardware_maps(&self) -> Vec<&QueueMap> {
        if self.irq_queue_maps.is_empty() {
            vec![&self.queue_map]
        } else {
            self.irq_queue_maps.iter().collect()
        }
    }

    /// The offline rule for `cpu` over the hardware queue maps, with the
    /// reason. `None` when `cpu` is not a possible CPU.
    pub fn can_offline(&self, topology: &Topology, cpu: usize) -> Option<OfflineVerdict> {
        if !topology.possible().contains(cpu) {
            return None;
        }
        if !topology.online().contains(cpu) {
            return Some(OfflineVerdict::AlreadyOffline);
        }
        if self.policy == Policy::Mainline {
            return Some(OfflineVerdict::MainlinePolicy);
        }
        if !self.isolation_active {
            return Some(OfflineVerdict::NoIsolation);
        }
        if self.isolated.contains(cpu) {
            return Some(OfflineVerdict::Isolated);
        }
        for map in self.hardware_maps() {
            let mut queues: std::collections::BTreeMap<usize, (CpuSet, CpuSet)> =
                Default::default();
            for online in topology.online().iter() {
                if let Some(queue) = map.queue_of(online) {
                    let (housekeeping, isolated) = queues.entry(queue).or_default();
                    if self.housekeeping.contains(online) {
                        housekeeping.insert(online);
                    } else {
                        isolated.insert(online);
                    }
                }
            }
            for (queue, (housekeeping, isolated)) in queues {
                if isolated.is_empty() {
                    continue;
                }
                if housekeeping.is_empty() {
                    return Some(OfflineVerdict::QueueWithoutHousekeeping { queue, isolated });
                }
                if housekeeping == CpuSet::single(cpu) {
                    return Some(OfflineVerdict::LastHousekeeping { queue, isolated });
                }
            }
        }
        Some(OfflineVerdict::OtherHousekeepingRemain)
    }

    /// The plan as the specification's machine-readable object (the
    /// `expected.io_queue` / `expected.mainline` shape).
    pub fn to_spec_json(&self) -> serde_json::Value {
        serde_json::to_value(self.spec_view()).unwrap_or(serde_json::Value::Null)
    }

    /// Writes the specification's result object straight to `out`,
    /// indented when `pretty` (no intermediate JSON tree: for 8192 CPUs
    /// that tree costs more than planning).
    pub fn write_spec_json(
        &self,
        out: impl std::io::Write,
        pretty: bool,
    ) -> serde_json::Result<()> {
        if pretty {
            serde_json::to_writer_pretty(out, &self.spec_view())
        } else {
            serde_json::to_writer(out, &self.spec_view())
        }
    }

    fn spec_view(&self) -> SpecView<'_> {
        SpecView {
            irq_queue_maps: &self.irq_queue_maps,
            isolation_active: self.isolation_active,
            housekeeping: &self.housekeeping,
            num_possible_queues: self.num_possible_queues,
            num_online_queues: self.num_online_queues,
            nr_vecs: self.nr_vecs,
            enospc: self.enospc,
            sets: &self.sets,
            queue_map: &self.queue_map,
            vectors: &self.vectors,
        }
    }
}
