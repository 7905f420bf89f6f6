//! Completion threads: pinned to housekeeping CPUs, they reap the shared
//! interrupt-driven CQs and hand every completion to the submitting CPU's
//! ring (and drain shared SQs' software rings into the hardware SQ).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isonvme_mapping::CpuSet;
use vmm_sys_util::eventfd::EventFd;

use super::handle::{CpuCounters, Record};
use super::recovery::{DeviceState, Health};
use super::CompletionMode;
use crate::controller::Registers;
use crate::nvme::{NvmeStatus, SubmissionEntry};
use crate::os;
use crate::queue::{CompletionQueue, SubmissionQueue};
use crate::spsc::{Consumer, Producer};

/// A polling thread with nothing in flight parks after this long without
/// completions, so an idle poll-mode runtime does not burn its CPUs.
pub const POLL_PARK_AFTER: Duration = Duration::from_millis(1);

/// How long a parked polling thread naps between looks at the submitters'
/// counters (its wake-up latency for the first command after idling).
pub const POLL_PARK_NAP: Duration = Duration::from_micros(50);

/// Counters of one interrupt vector.
#[derive(Debug)]
pub struct VectorCounters {
    /// Wake-ups by the vector's interrupt (interrupt and hybrid modes).
    pub interrupts: AtomicU64,
    /// Completions reaped from the vector's CQ.
    pub completions: AtomicU64,
    /// Completions reaped, by the CPU the completion thread ran on.
    pub handled_on: Vec<AtomicU64>,
    /// Completions the protocol does not allow (unknown SQ), dropped.
    pub device_errors: AtomicU64,
    /// Naps a poll-mode thread took because nothing was in flight.
    pub parked_naps: AtomicU64,
}

impl VectorCounters {
    pub(super) fn new(max_cpu: usize) -> Self {
        VectorCounters {
            interrupts: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            handled_on: (0..=max_cpu).map(|_| AtomicU64::new(0)).collect(),
            device_errors: AtomicU64::new(0),
            parked_naps: AtomicU64::new(0),
        }
    }
}

/// One vector as the runtime runs it.
pub struct VectorState {
    /// MSI-X vector number.
    pub vector: u16,
    /// Its completion queue id.
    pub cq: u16,
    /// The housekeeping CPUs the plan gives it.
    pub home: CpuSet,
    pub(super) target: Mutex<CpuSet>,
    pub(super) generation: AtomicU64,
    pub(super) eventfd: Arc<EventFd>,
    /// Its counters.
    pub counters: VectorCounters,
}

impl VectorState {
    /// The CPUs its completion thread and interrupt target now.
    pub fn target(&self) -> CpuSet {
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// What a completion thread owns for one vector.
pub(super) struct VectorWork {
    pub state: Arc<VectorState>,
    pub cq: CompletionQueue,
    /// SQ id → ring of the CPU owning that SQ (direct mode).
    pub direct: BTreeMap<u16, Producer<Record>>,
    /// Shared mode: the hardware SQ, the CPUs' submission rings and their
    /// completion rings, indexed by `cid / per_cpu_slots`.
    pub shared: Option<SharedSq>,
    /// The counters of the CPUs submitting to this vector's CQ, to tell
    /// whether anything is in flight (poll mode parks when nothing is).
    pub feeders: Vec<Arc<CpuCounters>>,
}

impl SharedSq {
    /// Remembers an entry the hardware SQ now has in flight.
    fn track(&mut self, entry: &SubmissionEntry) {
        if let Some(slot) = self.in_flight.get_mut(usize::from(entry.cid())) {
            *slot = Some((*entry, 0));
        }
    }
}

pub(super) struct SharedSq {
    pub sq: SubmissionQueue,
    pub per_cpu_slots: u16,
    pub submissions: Vec<Consumer<SubmissionEntry>>,
    pub completions: Vec<Producer<Record>>,
    /// An entry taken from a ring that did not fit the SQ yet.
    pub held: Option<SubmissionEntry>,
    /// What the hardware SQ has in flight, by command id, with the resets
    /// it went through: after a reset this thread submits it again.
    pub in_flight: Vec<Option<(SubmissionEntry, u8)>>,
    /// Resubmissions a reset allows a command before it fails.
    pub max_retries: u8,
}

/// Pins the calling completion thread to `target` as far as this machine
/// allows (a "what if" topology may name CPUs that do not exist here).
pub(super) fn pin_to(target: &CpuSet, vector: u16) {
    // The cpuset, not the inherited affinity: a runtime opened from a
    // thread already pinned to an isolated CPU must still put its threads
    // on the housekeeping CPUs.
    let placeable = os::placeable_cpus();
    let usable = target.intersection(&placeable);
    if usable.is_empty() {
        tracing::warn!(vector, cpus = %target, "no CPU of the vector exists on this machine; completion thread left unpinned");
        return;
    }
    if let Err(error) = os::pin_current_thread(&usable) {
        tracing::warn!(vector, %error, "cannot pin completion thread");
    }
}

/// Groups vectors into completion threads: `threads` round robin when the
/// caller chose a count; otherwise one thread per vector, except in poll
/// and hybrid modes, where vectors homed on the same first housekeeping
/// CPU share one thread (at most one spinning thread per housekeeping
/// CPU).
pub(super) fn group_vectors(
    work: Vec<VectorWork>,
    mode: CompletionMode,
    threads: Option<usize>,
) -> Vec<Vec<VectorWork>> {
    if let Some(threads) = threads {
        let threads = threads.clamp(1, work.len().max(1));
        let mut groups: Vec<Vec<VectorWork>> = (0..threads).map(|_| Vec::new()).collect();
        for (index, vector_work) in work.into_iter().enumerate() {
            groups[index % threads].push(vector_work);
        }
        return groups;
    }
    if mode == CompletionMode::Interrupt {
        return work.into_iter().map(|w| vec![w]).collect();
    }
    let mut by_cpu: BTreeMap<Option<usize>, Vec<VectorWork>> = BTreeMap::new();
    for vector_work in work {
        by_cpu
            .entry(vector_work.state.home.first())
            .or_default()
            .push(vector_work);
    }
    by_cpu.into_values().collect()
}

/// The body of a completion thread serving `work`.
pub(super) fn completion_thread(
    mut work: Vec<VectorWork>,
    mode: CompletionMode,
    stop: &AtomicBool,
    regs: &Registers,
    health: &Health,
    reset_ack: &AtomicU64,
) {
    // The runtime opens at epoch 0; a thread scheduled late must still
    // see a reset that began before it ran.
    let mut seen_epoch = 0;
    let mut generations: Vec<u64> = work
        .iter()
        .map(|w| w.state.generation.load(Ordering::Acquire))
        .collect();
    let targets = |work: &[VectorWork]| {
        let mut all = CpuSet::new();
        for vector in work {
            all.union_with(&vector.state.target());
        }
        all
    };
    if let Some(first) = work.first() {
        pin_to(&targets(&work), first.state.vector);
    }
    // Naps of a parked poller should last what they say.
    os::set_timer_slack(Duration::from_micros(1));
    // One wait covers every vector this thread serves.
    let mut interrupts = os::ReadableSet::new(work.iter().map(|w| w.state.eventfd.as_raw_fd()));
    let mut last_activity = Instant::now();
    let mut spin = os::SpinYield::new();
    while !stop.load(Ordering::Acquire) {
        let epoch = health.epoch.load(Ordering::Acquire);
        if epoch != seen_epoch {
            if health.state() != DeviceState::Alive {
                break;
            }
            seen_epoch = epoch;
            if epoch.is_multiple_of(2) {
                // The queues exist again: send what the reset dropped.
                for vector in work.iter_mut() {
                    vector.resubmit_after_reset();
                }
            } else {
                // The controller is disabled: hand over what it completed
                // before, start the rings over, and say so.
                for vector in work.iter_mut() {
                    vector.reap(health);
                    vector.start_over();
                }
                // Release: the rings are reset before the watchdog
                // creates the queues again.
                reset_ack.store(epoch, Ordering::Release);
            }
        }
        if !seen_epoch.is_multiple_of(2) {
            // Nothing to do until the queues are back.
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let mut did_work = false;
        let mut moved = false;
        for (index, vector) in work.iter().enumerate() {
            let generation = vector.state.generation.load(Ordering::Acquire);
            if generation != generations[index] {
                generations[index] = generation;
                moved = true;
            }
        }
        if moved {
            pin_to(&targets(&work), work[0].state.vector);
        }
        for vector in work.iter_mut() {
            did_work |= vector.drain_submissions();
            did_work |= vector.reap(health);
        }
        if did_work {
            last_activity = Instant::now();
            spin.worked();
            continue;
        }
        let block = match mode {
            CompletionMode::Poll => false,
            CompletionMode::Interrupt => true,
            CompletionMode::Hybrid { spin } => last_activity.elapsed() > spin,
        };
        // Shared SQs are fed by CPUs that must not make system calls, so
        // their thread keeps looking at the rings instead of sleeping long.
        let shared = work.iter().any(|w| w.shared.is_some());
        if block && !shared {
            match interrupts.wait(Duration::from_millis(50)) {
                Ok(_) => {
                    for (index, vector) in work.iter().enumerate() {
                        if interrupts.is_ready(index) {
                            let _ = vector.state.eventfd.read();
                            vector
                                .state
                                .counters
                                .interrupts
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "waiting for an interrupt failed; polling instead");
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        } else if block && shared {
            std::thread::sleep(Duration::from_micros(20));
        } else if last_activity.elapsed() > POLL_PARK_AFTER && work.iter().all(VectorWork::is_idle)
        {
            // Nothing in flight for a while: nap instead of spinning. A
            // submission shows up in the feeders' counters, which the next
            // pass reads.
            for vector in &work {
                vector
                    .state
                    .counters
                    .parked_naps
                    .fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(POLL_PARK_NAP);
        } else {
            // Offers the CPU now and then when it is shared (see
            // `os::SpinYield`); a dedicated CPU keeps polling.
            spin.idle();
        }
        if regs.failed.load(Ordering::Acquire) {
            break;
        }
    }
}

impl VectorWork {
    /// After the controller was disabled for a reset: the CQ and the
    /// shared SQ start over (their queues are created again by the
    /// watchdog).
    fn start_over(&mut self) {
        self.cq.reset();
        if let Some(shared) = self.shared.as_mut() {
            shared.sq.reset();
        }
    }

    /// After the reset: submits again what the shared SQ had in flight,
    /// or fails it ("command aborted by host") once its budget is spent.
    fn resubmit_after_reset(&mut self) {
        let Some(shared) = self.shared.as_mut() else {
            return;
        };
        let per_cpu = shared.per_cpu_slots.max(1);
        let mut pushed = false;
        for cid in 0..shared.in_flight.len() {
            let Some((entry, resets)) = shared.in_flight[cid] else {
                continue;
            };
            let local = cid / usize::from(per_cpu);
            if resets >= shared.max_retries || shared.sq.push(&entry).is_err() {
                shared.in_flight[cid] = None;
                let record = Record {
                    cid: cid as u16,
                    sq_head: 0,
                    status: NvmeStatus::HOST_ABORTED.to_status_field(),
                    dw0: 0,
                };
                if let Some(ring) = shared.completions.get_mut(local) {
                    let _ = ring.push(record);
                }
                continue;
            }
            shared.in_flight[cid] = Some((entry, resets + 1));
            pushed = true;
        }
        if pushed {
            shared.sq.ring_doorbell();
        }
    }

    /// Whether no command submitted to this vector's CQ is waiting for its
    /// completion (submitted by the feeding CPUs minus reaped here).
    fn is_idle(&self) -> bool {
        if self.shared.as_ref().is_some_and(|s| s.held.is_some()) {
            return false;
        }
        let submitted: u64 = self
            .feeders
            .iter()
            .map(|c| c.submitted.load(Ordering::Relaxed))
            .sum();
        submitted <= self.state.counters.completions.load(Ordering::Relaxed)
    }

    /// Moves entries from the CPUs' submission rings into the shared
    /// hardware SQ; returns whether anything moved.
    pub(super) fn drain_submissions(&mut self) -> bool {
        let Some(shared) = self.shared.as_mut() else {
            return false;
        };
        let mut moved = false;
        loop {
            let mut progressed = false;
            if let Some(entry) = shared.held.take() {
                if shared.sq.push(&entry).is_err() {
                    shared.held = Some(entry);
                    break;
                }
                shared.track(&entry);
                moved = true;
            }
            for ring in &mut shared.submissions {
                if shared.sq.is_full() {
                    break;
                }
                if let Some(entry) = ring.pop() {
                    if let Err(crate::queue::QueueFull) = shared.sq.push(&entry) {
                        shared.held = Some(entry);
                        break;
                    }
                    if let Some(slot) = shared.in_flight.get_mut(usize::from(entry.cid())) {
                        *slot = Some((entry, 0));
                    }
                    moved = true;
                    progressed = true;
                }
            }
            if !progressed || shared.sq.is_full() {
                break;
            }
        }
        if moved {
            shared.sq.ring_doorbell();
        }
        moved
    }

    /// Reaps the CQ and hands each completion to its CPU; returns whether
    /// anything was reaped.
    pub(super) fn reap(&mut self, health: &Health) -> bool {
        let mut reaped = 0u64;
        while let Some(entry) = self.cq.pop() {
            reaped += 1;
            let record = Record {
                cid: entry.cid,
                sq_head: entry.sq_head,
                status: entry.status >> 1,
                dw0: entry.dw0,
            };
            let delivered = match self.shared.as_mut() {
                Some(shared) if entry.sq_id == shared.sq.id() => {
                    if shared.sq.update_head(entry.sq_head).is_err() {
                        tracing::warn!(
                            sq = entry.sq_id,
                            head = entry.sq_head,
                            "impossible SQ head; resetting the controller"
                        );
                        health.request_reset();
                    }
                    if let Some(slot) = shared.in_flight.get_mut(usize::from(entry.cid)) {
                        *slot = None;
                    }
                    let local = usize::from(entry.cid / shared.per_cpu_slots.max(1));
                    shared
                        .completions
                        .get_mut(local)
                        .map(|ring| ring.push(record).is_ok())
                }
                Some(_) => None,
                None => self
                    .direct
                    .get_mut(&entry.sq_id)
                    .map(|ring| ring.push(record).is_ok()),
            };
            match delivered {
                Some(true) => {}
                Some(false) => {
                    // The ring holds a CPU's whole depth, so only a device
                    // completing a command twice can fill it.
                    self.state
                        .counters
                        .device_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        cq = self.state.cq,
                        cid = entry.cid,
                        "completion ring full: duplicate completion dropped"
                    );
                }
                None => {
                    self.state
                        .counters
                        .device_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        cq = self.state.cq,
                        sq = entry.sq_id,
                        cid = entry.cid,
                        "completion for an unknown SQ dropped"
                    );
                }
            }
        }
        if reaped == 0 {
            return false;
        }
        self.cq.ring_doorbell();
        self.state
            .counters
            .completions
            .fetch_add(reaped, Ordering::Relaxed);
        if let Some(cpu) = os::current_cpu() {
            if let Some(counter) = self.state.counters.handled_on.get(cpu) {
                counter.fetch_add(reaped, Ordering::Relaxed);
            }
        }
        true
    }
}
