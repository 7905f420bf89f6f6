//! CPU → queue maps (`blk_mq_map_queues`, `blk_mq_map_hw_queues`) and the
//! offline rule, for mainline and for `isolcpus=io_queue`.

use serde::Serialize;

use crate::group::{group_cpus_evenly, group_mask_cpus_evenly};
use crate::{CpuSet, Topology};

/// Which CPUs submit to which queue, for one queue map (one queue set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMap {
    /// Queues in this map.
    pub nr_queues: usize,
    /// Absolute number of this map's first queue.
    pub queue_offset: usize,
    /// Whether validation failed and every CPU was sent to the map's first
    /// queue (`queue_offset`).
    pub fallback: bool,
    /// CPU → absolute queue number; `None` for an impossible CPU.
    /// (32-bit: queue numbers stay below 65536, and for 8192 CPUs half
    /// the memory to fault in.)
    pub cpu_to_queue: Vec<Option<u32>>,
    /// CPU → whether it may go offline; `None` for an offline CPU.
    pub offline_allowed: Vec<Option<bool>>,
}

impl QueueMap {
    /// The CPUs of each queue of the map, `[queue_offset, queue_offset + nr_queues)`.
    pub fn queues(&self) -> Vec<CpuSet> {
        let mut queues = vec![CpuSet::new(); self.nr_queues];
        for (cpu, queue) in self.cpu_to_queue.iter().enumerate() {
            if let Some(index) = queue.and_then(|q| (q as usize).checked_sub(self.queue_offset)) {
                if let Some(set) = queues.get_mut(index) {
                    set.insert(cpu);
                }
            }
        }
        queues
    }

    /// The absolute queue `cpu` submits to.
    pub fn queue_of(&self, cpu: usize) -> Option<usize> {
        self.cpu_to_queue
            .get(cpu)
            .copied()
            .flatten()
            .map(|q| q as usize)
    }
}

impl Serialize for QueueMap {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut map = serializer.serialize_struct("QueueMap", 6)?;
        map.serialize_field("nr_queues", &self.nr_queues)?;
        map.serialize_field("queue_offset", &self.queue_offset)?;
        map.serialize_field("fallback", &self.fallback)?;
        map.serialize_field("cpu_to_queue", &self.cpu_to_queue)?;
        map.serialize_field("queues", &self.queues())?;
        map.serialize_field("offline_allowed", &self.offline_allowed)?;
        map.end()
    }
}

/// The policy's view of the machine that every map needs.
pub(crate) struct MapContext<'a> {
    pub topology: &'a Topology,
    /// `Some(housekeeping)` under io_queue, `None` for mainline.
    pub housekeeping: Option<&'a CpuSet>,
}

impl MapContext<'_> {
    /// `blk_mq_map_queues()`.
    pub fn map_queues(&self, nr_queues: usize, queue_offset: usize) -> QueueMap {
        let topology = self.topology;
        let mut mq_map = vec![0usize; topology.nr_cpu_ids()];
        match self.housekeeping {
            None => {
                // Mainline: group_cpus_evenly, queue q takes mask q mod masks.
                match group_cpus_evenly(topology, nr_queues) {
                    Some(groups) if groups.filled > 0 => {
                        for queue in 0..nr_queues {
                            for cpu in groups.masks[queue % groups.filled].iter() {
                                mq_map[cpu] = queue_offset + queue;
                            }
                        }
                    }
                    _ => mq_map.fill(queue_offset),
                }
                self.finish(mq_map, nr_queues, queue_offset, false)
            }
            Some(housekeeping) => {
                let Some(groups) = group_mask_cpus_evenly(topology, nr_queues, housekeeping)
                    .filter(|g| g.filled > 0)
                else {
                    return self.fallback(nr_queues, queue_offset);
                };
                // v14: mask `idx` is written once, to the highest queue
                // congruent to it modulo the masks; no rotation by the
                // offset, and queues that get no mask stay empty.
                let masks = groups.filled;
                let mut active = CpuSet::with_capacity(nr_queues);
                for (idx, mask) in groups.filled_masks().iter().enumerate() {
                    let queue = nr_queues - 1 - ((nr_queues - 1 - idx) % masks);
                    for cpu in mask.iter() {
                        mq_map[cpu] = queue_offset + queue;
                        if topology.online().contains(cpu) {
                            active.insert(queue);
                        }
                    }
                }
                self.deal_and_validate(mq_map, housekeeping, &active, nr_queues, queue_offset)
            }
        }
    }

    /// `blk_mq_map_hw_queues()` over one set's vectors: queue
    /// `queue_offset + q` takes `vectors[q]` (the vectors of this set, in
    /// order).
    pub fn map_hw_queues(&self, vectors: &[CpuSet], queue_offset: usize) -> QueueMap {
        let topology = self.topology;
        let nr_queues = vectors.len();
        let mut mq_map = vec![0usize; topology.nr_cpu_ids()];
        match self.housekeeping {
            None => {
                // Mainline: CPUs in no vector mask stay at queue 0.
                for (queue, mask) in vectors.iter().enumerate() {
                    for cpu in mask.iter() {
                        mq_map[cpu] = queue_offset + queue;
                    }
                }
                self.finish(mq_map, nr_queues, queue_offset, false)
            }
            Some(housekeeping) => {
                if nr_queues == 0 {
                    return self.fallback(nr_queues, queue_offset);
                }
                let mut covered = CpuSet::with_capacity(topology.nr_cpu_ids());
                for (queue, mask) in vectors.iter().enumerate() {
                    for cpu in mask.iter() {
                        mq_map[cpu] = queue_offset + queue;
                        covered.insert(cpu);
                    }
                }
                // v14: the active queues are decided after every mask was
                // written (a later queue may have taken a CPU from an
                // earlier one): the final queue of each CPU that is online
                // and inside the constraint.
                let mut active = CpuSet::with_capacity(nr_queues);
                for cpu in covered.intersection(topology.online()).iter() {
                    if housekeeping.contains(cpu) {
                        active.insert(mq_map[cpu] - queue_offset);
                    }
                }
                self.deal_and_validate(mq_map, &covered, &active, nr_queues, queue_offset)
            }
        }
    }

    /// Deals every possible CPU outside `grouped` (the isolated CPUs, in
    /// increasing order) round-robin over the active queues, then checks
    /// that no inactive queue has an online CPU (else: fallback).
    fn deal_and_validate(
        &self,
        mut mq_map: Vec<usize>,
        grouped: &CpuSet,
        active: &CpuSet,
        nr_queues: usize,
        queue_offset: usize,
    ) -> QueueMap {
        let topology = self.topology;
        let active_queues: Vec<usize> = active.iter().collect();
        if active_queues.is_empty() {
            // No queue has an online CPU of the constraint: v14 falls back.
            return self.fallback(nr_queues, queue_offset);
        }
        for (cpu, &queue) in topology
            .possible()
            .difference(grouped)
            .iter()
            .zip(active_queues.iter().cycle())
        {
            mq_map[cpu] = queue_offset + queue;
        }
        // blk_mq_validate(): an inactive queue must not serve an online CPU.
        let usable =
            topology
                .online()
                .iter()
                .all(|cpu| match mq_map[cpu].checked_sub(queue_offset) {
                    Some(queue) if queue < nr_queues => active.contains(queue),
                    _ => true,
                });
        if !usable {
            return self.fallback(nr_queues, queue_offset);
        }
        self.finish(mq_map, nr_queues, queue_offset, false)
    }

    /// `blk_mq_map_fallback()`: every CPU to the map's first queue,
    /// `queue_offset` (v14).
    fn fallback(&self, nr_queues: usize, queue_offset: usize) -> QueueMap {
        let mq_map = vec![queue_offset; self.topology.nr_cpu_ids()];
        self.finish(mq_map, nr_queues, queue_offset, true)
    }

    fn finish(
        &self,
        mq_map: Vec<usize>,
        nr_queues: usize,
        queue_offset: usize,
        fallback: bool,
    ) -> QueueMap {
        let topology = self.topology;
        let cpu_to_queue: Vec<Option<u32>> = mq_map
            .iter()
            .enumerate()
            // Queue numbers are below 65536 (PlanParams::check_ranges).
            .map(|(cpu, &queue)| topology.possible().contains(cpu).then_some(queue as u32))
            .collect();
        let offline_allowed = offline_rule(topology, self.housekeeping, &cpu_to_queue);
        QueueMap {
            nr_queues,
            queue_offset,
            fallback,
            cpu_to_queue,
            offline_allowed,
        }
    }
}

/// The offline rule: an isolated CPU may always go offline; a
/// housekeeping CPU may not while some queue has an online isolated CPU and
/// no online housekeeping CPU other than it. Without isolation every online
/// CPU may go. Offline CPUs get `None`.
pub(crate) fn offline_rule(
    topology: &Topology,
    housekeeping: Option<&CpuSet>,
    cpu_to_queue: &[Option<u32>],
) -> Vec<Option<bool>> {
    let online = topology.online();
    let mut allowed: Vec<Option<bool>> = (0..cpu_to_queue.len())
        .map(|cpu| online.contains(cpu).then_some(true))
        .collect();
    let Some(housekeeping) = housekeeping else {
        return allowed;
    };
    // Per queue: its online housekeeping CPUs (up to two are enough to
    // know) and whether an online isolated CPU submits to it.
    struct QueueState {
        online_housekeeping: Vec<usize>,
        has_online_isolated: bool,
    }
    // Indexed by queue number (queue numbers are bounded by the plan's
    // parameters); no hashing per CPU.
    let highest = cpu_to_queue.iter().flatten().copied().max().unwrap_or(0) as usize;
    let mut queues: Vec<QueueState> = (0..=highest)
        .map(|_| QueueState {
            online_housekeeping: Vec::new(),
            has_online_isolated: false,
        })
        .collect();
    for cpu in online.iter() {
        let Some(queue) = cpu_to_queue.get(cpu).copied().flatten().map(|q| q as usize) else {
            continue;
        };
        let state = &mut queues[queue];
        if housekeeping.contains(cpu) {
            if state.online_housekeeping.len() < 2 {
                state.online_housekeeping.push(cpu);
            }
        } else {
            state.has_online_isolated = true;
        }
    }
    let mut every_housekeeping_blocked = false;
    for state in queues.iter().filter(|s| s.has_online_isolated) {
        match state.online_housekeeping.as_slice() {
            [] => every_housekeeping_blocked = true,
            [only] => allowed[*only] = Some(false),
            _ => {}
        }
    }
    if every_housekeeping_blocked {
        for cpu in online.intersection(housekeeping).iter() {
            allowed[cpu] = Some(false);
        }
    }
    allowed
}
