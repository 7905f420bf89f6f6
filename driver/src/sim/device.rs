//! The device model: what the controller's firmware would do. Owned by the
//! device thread; it talks to the host only through the register page and
//! the IOVA map, like hardware.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemory as _};
use zerocopy::{FromBytes, IntoBytes};

use crate::mmio::Mmio;
use crate::nvme::regs::offset;
use crate::nvme::{
    doorbell_offset, Aqa, Cap, Cc, CompletionEntry, Csts, GenericStatus, IoOpcode,
    ShutdownNotification, ShutdownStatus, Status, StatusCode, SubmissionEntry, Version,
};

use super::fault_plan::IoFaultKind;
use super::faults::{CompletionFault, SpuriousCompletion};
use super::iommu::GuestMemory;
use super::namespace::Namespace;
use super::prp::Segment;
use super::Shared;

/// Commands taken from one SQ before moving to the next (round robin
/// arbitration burst; reported as RAB = 2^6).
const ARBITRATION_BURST: usize = 64;

/// Abort Command Limit / Async Event Request Limit, 0-based as reported.
pub(crate) const AERL: u8 = 3;

/// A completion to post: everything but the phase tag and SQ head, which
/// are decided when it is written into the CQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cqe {
    pub cqid: u16,
    pub sqid: u16,
    pub cid: u16,
    pub dw0: u32,
    /// 15-bit status field.
    pub status: u16,
    /// Fixed SQ head to report (spurious entries); `None` = the SQ's head
    /// at posting time.
    pub sq_head: Option<u16>,
}

#[derive(Debug, PartialEq, Eq)]
struct Due {
    at: Instant,
    seq: u64,
    cqe: Cqe,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// A submission queue.
#[derive(Debug)]
pub(crate) struct SubQueue {
    pub base: u64,
    pub size: u32,
    /// Next entry the controller fetches.
    pub head: u32,
    /// Last valid tail doorbell value.
    pub tail: u32,
    pub cqid: u16,
    /// Last raw doorbell value seen, to act (and warn) once per write.
    last_doorbell: u32,
    /// Last value of the doorbell register itself (shadow doorbells: the
    /// value may arrive without a register write).
    last_mmio: u32,
}

/// A completion queue.
#[derive(Debug)]
pub(crate) struct CompQueue {
    pub base: u64,
    pub size: u32,
    /// Next slot the controller writes.
    pub tail: u32,
    /// Last valid head doorbell value: slots up to here are free.
    pub head: u32,
    pub phase: bool,
    pub interrupts: bool,
    pub vector: u16,
    /// SQs completing here.
    pub sq_count: u32,
    /// Completions waiting for room (the CQ is full).
    backlog: VecDeque<Cqe>,
    last_doorbell: u32,
    last_mmio: u32,
}

impl CompQueue {
    fn is_full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }

    /// Entries posted and not yet consumed by the host.
    fn outstanding(&self) -> u32 {
        (self.tail + self.size - self.head) % self.size
    }
}

/// What running a command produced.
pub(crate) enum Exec {
    /// A completion: DW0 and the 15-bit status field.
    Done { dw0: u32, status: u16 },
    /// Nothing yet (an Asynchronous Event Request being held).
    Held,
}

impl Exec {
    pub(crate) fn from_result(r: Result<u32, StatusCode>) -> Self {
        match r {
            Ok(dw0) => Exec::Done { dw0, status: 0 },
            Err(code) => Exec::Done {
                dw0: 0,
                status: status_field(code),
            },
        }
    }
}

/// The status field a controller posts for `code`: Do Not Retry for every
/// error a retry cannot fix.
pub(crate) fn status_field(code: StatusCode) -> u16 {
    let retryable = matches!(
        code,
        StatusCode::Media(_)
            | StatusCode::Generic(GenericStatus::InternalError)
            | StatusCode::Generic(GenericStatus::AbortedSqDeletion)
            | StatusCode::Generic(GenericStatus::NamespaceNotReady)
    );
    code.to_status_field(!retryable)
}

/// Settable features with plain values (Get Features returns what Set
/// Features stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Features {
    pub arbitration: u32,
    pub power_management: u32,
    pub temperature_threshold: u32,
    pub error_recovery: u32,
    pub volatile_write_cache: u32,
    pub interrupt_coalescing: u32,
    pub async_event_config: u32,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            // Arbitration burst 2^6, matching RAB.
            arbitration: 6,
            power_management: 0,
            // Over-temperature threshold 343 K.
            temperature_threshold: 0x157,
            error_recovery: 0,
            volatile_write_cache: 1,
            interrupt_coalescing: 0,
            async_event_config: 0,
        }
    }
}

pub(crate) struct Device {
    pub(crate) shared: Arc<Shared>,
    pub(crate) mmio: Mmio,
    pub(crate) namespaces: Vec<Namespace>,
    pub(crate) cap: Cap,
    /// CC as last seen.
    last_cc: u32,
    csts: Csts,
    /// Queues are live (CC.EN = 1 and the enable succeeded).
    pub(crate) enabled: bool,
    pub(crate) fatal: bool,
    shut_down: bool,
    /// CC at the moment of enabling (page size, entry sizes).
    pub(crate) cc: Cc,
    pub(crate) sqs: Vec<Option<SubQueue>>,
    pub(crate) cqs: Vec<Option<CompQueue>>,
    /// Existing SQ ids, for the arbitration loop.
    active_sqs: Vec<u16>,
    rr_start: usize,
    /// I/O queue counts granted by Set Features Number of Queues.
    pub(crate) granted_sqs: u16,
    pub(crate) granted_cqs: u16,
    /// Some I/O queue was created since the last reset (Number of Queues
    /// can no longer change).
    pub(crate) io_queues_created: bool,
    pub(crate) features: Features,
    /// Held Asynchronous Event Requests (CIDs).
    pub(crate) aers: Vec<u16>,
    /// Asynchronous events raised (`fault=event:...`) and not yet reported
    /// (dword 0 of the AER completion): posted as AERs arrive.
    events: Vec<u32>,
    /// Doorbell Buffer Config: the shadow doorbell and EventIdx buffers.
    pub(crate) dbbuf: Option<(u64, u64)>,
    /// I/O commands fetched since the thread started (for `fault=`).
    io_fetched: u64,
    /// No fetching before this (`fault=stall:DUR@N`).
    stalled_until: Option<Instant>,
    /// Surprise-removed (`fault=remove@N`): registers read all-ones and
    /// nothing else happens, ever.
    removed: bool,
    pending: BinaryHeap<Reverse<Due>>,
    seq: u64,
    next_io_slot: Option<Instant>,
    irq_flagged: Vec<bool>,
    irq_list: Vec<u16>,
    /// Scratch for PRP walks.
    pub(crate) segments: Vec<Segment>,
}

impl Device {
    pub(crate) fn new(shared: Arc<Shared>, mmio: Mmio, namespaces: Vec<Namespace>) -> Self {
        let o = &shared.options;
        let cap = Cap::new()
            .with_mqes((o.qdepth - 1) as u16)
            .with_cqr(true)
            .with_to(10)
            .with_dstrd(o.dstrd)
            .with_css(Cap::CSS_NVM)
            .with_mpsmin(0)
            .with_mpsmax(4);
        let queues = usize::from(o.queues) + 1;
        let vectors = usize::from(o.vectors);
        let granted = o.queues;
        mmio.write64(offset::CAP, cap.0);
        mmio.write32(offset::VS, Version::V1_4.0);
        Device {
            mmio,
            namespaces,
            cap,
            last_cc: 0,
            csts: Csts::new(),
            enabled: false,
            fatal: false,
            shut_down: false,
            cc: Cc::new(),
            sqs: (0..queues).map(|_| None).collect(),
            cqs: (0..queues).map(|_| None).collect(),
            active_sqs: Vec::new(),
            rr_start: 0,
            granted_sqs: granted,
            granted_cqs: granted,
            io_queues_created: false,
            features: Features::default(),
            aers: Vec::new(),
            events: Vec::new(),
            dbbuf: None,
            io_fetched: 0,
            stalled_until: None,
            removed: false,
            pending: BinaryHeap::new(),
            seq: 0,
            next_io_slot: None,
            irq_flagged: vec![false; vectors],
            irq_list: Vec::new(),
            segments: Vec::new(),
            shared,
        }
    }

    pub(crate) fn dstrd_bytes(&self) -> usize {
        self.cap.doorbell_stride_bytes()
    }

    /// The memory page size the host configured (CC.MPS).
    pub(crate) fn page_size(&self) -> usize {
        self.cc.page_size()
    }

    /// One pass over the registers and queues. Returns whether anything
    /// happened (for the idle back-off).
    pub(crate) fn poll(&mut self, now: Instant) -> bool {
        if self.removed {
            // Gone from the bus: whatever the host wrote, every register
            // reads all-ones.
            for offset in (0..self.mmio.len()).step_by(4) {
                self.mmio.write32(offset, u32::MAX);
            }
            return false;
        }
        let mut active = false;
        if self.shared.faults.take_fatal() {
            self.go_fatal("fatal status injected");
            active = true;
        }
        let cc = self.mmio.read32(offset::CC);
        if cc != self.last_cc {
            self.on_cc_change(Cc(cc));
            active = true;
        }
        if !self.enabled || self.fatal || self.shut_down {
            return active;
        }
        active |= self.read_doorbells(&self.shared.iommu.memory());
        // Queue entries written before a doorbell are visible after it.
        fence(Ordering::Acquire);
        // The DMA map as of after the doorbells: a buffer the host mapped
        // just before writing the entry that uses it is in it (an earlier
        // snapshot made such a command fail with a data transfer error).
        let mem = self.shared.iommu.memory();
        active |= self.post_due(&mem, now);
        active |= self.post_spurious(&mem);
        active |= self.post_events(&mem);
        active |= self.fetch_and_execute(&mem, now);
        self.signal_interrupts();
        active
    }

    /// When the next delayed completion is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        if !self.enabled || self.fatal || self.shut_down {
            return None;
        }
        self.pending.peek().map(|Reverse(d)| d.at)
    }

    /// The device thread is stopping: make file data durable.
    pub(crate) fn stop(&mut self) {
        for ns in &mut self.namespaces {
            let _ = ns.flush();
        }
    }

    fn write_csts(&mut self) {
        self.mmio.write32(offset::CSTS, self.csts.0);
    }

    pub(crate) fn go_fatal(&mut self, why: &str) {
        if !self.fatal {
            tracing::warn!(
                reason = why,
                "simulated controller: fatal status (CSTS.CFS=1)"
            );
        }
        self.fatal = true;
        self.csts = self.csts.with_cfs(true);
        self.write_csts();
    }

    fn on_cc_change(&mut self, cc: Cc) {
        let was = Cc(self.last_cc);
        self.last_cc = cc.0;
        if was.en() && !cc.en() {
            self.reset();
            self.csts = self.csts.with_rdy(false).with_cfs(false);
        }
        let shn = cc.shn() != Some(ShutdownNotification::None);
        let was_shn = was.shn() != Some(ShutdownNotification::None);
        if shn && !was_shn {
            for ns in &mut self.namespaces {
                let _ = ns.flush();
            }
            self.shut_down = true;
            self.csts = self.csts.with_shst(ShutdownStatus::Complete);
        } else if !shn && was_shn {
            self.shut_down = false;
            self.csts = self.csts.with_shst(ShutdownStatus::Normal);
        }
        if !was.en() && cc.en() {
            match self.enable(cc) {
                Ok(()) => self.csts = self.csts.with_rdy(true),
                Err(why) => {
                    self.write_csts();
                    self.go_fatal(&why);
                }
            }
        }
        self.write_csts();
    }

    /// CC.EN 0 → 1: validate the configuration and the admin queue, bring
    /// up the admin queue pair.
    fn enable(&mut self, cc: Cc) -> Result<(), String> {
        if self.fatal {
            return Err("enabled while in fatal status; reset first".to_owned());
        }
        if cc.css() != Cc::CSS_NVM {
            return Err(format!("CC.CSS {} is not the NVM command set", cc.css()));
        }
        if cc.mps() < self.cap.mpsmin() || cc.mps() > self.cap.mpsmax() {
            return Err(format!("CC.MPS {} outside CAP.MPSMIN..=MPSMAX", cc.mps()));
        }
        if cc.ams() != 0 {
            return Err(format!("CC.AMS {} is not round robin", cc.ams()));
        }
        if cc.shn().is_none() {
            return Err("CC.SHN holds the reserved value".to_owned());
        }
        if ![0, SubmissionEntry::SIZE_LOG2].contains(&cc.iosqes())
            || ![0, CompletionEntry::SIZE_LOG2].contains(&cc.iocqes())
        {
            return Err(format!(
                "CC.IOSQES/IOCQES {}/{} unsupported (SQES=0x66, CQES=0x44)",
                cc.iosqes(),
                cc.iocqes()
            ));
        }
        let aqa = Aqa(self.mmio.read32(offset::AQA));
        let asq = self.mmio.read64(offset::ASQ);
        let acq = self.mmio.read64(offset::ACQ);
        let page = cc.page_size() as u64;
        let (sq_size, cq_size) = (u32::from(aqa.asqs()) + 1, u32::from(aqa.acqs()) + 1);
        if sq_size < 2
            || cq_size < 2
            || sq_size > self.cap.max_queue_entries()
            || cq_size > self.cap.max_queue_entries()
        {
            return Err(format!(
                "AQA {:#x}: admin queue sizes {sq_size}/{cq_size} invalid",
                aqa.0
            ));
        }
        if !asq.is_multiple_of(page) || !acq.is_multiple_of(page) {
            return Err(format!("ASQ {asq:#x} / ACQ {acq:#x} not page aligned"));
        }
        let mem = self.shared.iommu.memory();
        if mem
            .get_slice(GuestAddress(asq), sq_size as usize * 64)
            .is_err()
            || mem
                .get_slice(GuestAddress(acq), cq_size as usize * 16)
                .is_err()
        {
            return Err(format!(
                "admin queues at ASQ {asq:#x} / ACQ {acq:#x} are not in mapped DMA memory"
            ));
        }
        self.cc = cc;
        let mut admin_cq = CompQueue::new(acq, cq_size, true, 0);
        admin_cq.sq_count = 1;
        self.cqs[0] = Some(admin_cq);
        self.sqs[0] = Some(SubQueue::new(asq, sq_size, 0));
        self.active_sqs = vec![0];
        self.enabled = true;
        Ok(())
    }

    /// Controller reset (CC.EN 1 → 0): every queue and command in flight
    /// is gone; namespaces keep their data.
    fn reset(&mut self) {
        self.shared.stats.count_reset();
        for qid in 0..self.sqs.len() {
            self.sqs[qid] = None;
            self.cqs[qid] = None;
            self.clear_doorbells(qid as u16);
        }
        self.active_sqs.clear();
        self.pending.clear();
        self.aers.clear();
        self.dbbuf = None;
        self.enabled = false;
        self.fatal = false;
        self.granted_sqs = self.shared.options.queues;
        self.granted_cqs = self.shared.options.queues;
        self.io_queues_created = false;
        self.features = Features::default();
        self.next_io_slot = None;
        self.stalled_until = None;
        for f in &mut self.irq_flagged {
            *f = false;
        }
        self.irq_list.clear();
    }

    pub(crate) fn clear_doorbells(&self, qid: u16) {
        let stride = self.dstrd_bytes();
        self.mmio.write32(doorbell_offset(qid, false, stride), 0);
        self.mmio.write32(doorbell_offset(qid, true, stride), 0);
    }

    /// Adds an SQ (called by Create I/O SQ).
    pub(crate) fn add_sq(&mut self, qid: u16, base: u64, size: u32, cqid: u16) {
        self.clear_doorbells_half(qid, false);
        self.sqs[usize::from(qid)] = Some(SubQueue::new(base, size, cqid));
        if let Some(cq) = self.cqs[usize::from(cqid)].as_mut() {
            cq.sq_count += 1;
        }
        self.active_sqs.push(qid);
    }

    /// Adds a CQ (called by Create I/O CQ).
    pub(crate) fn add_cq(&mut self, qid: u16, base: u64, size: u32, interrupts: bool, vector: u16) {
        self.clear_doorbells_half(qid, true);
        self.cqs[usize::from(qid)] = Some(CompQueue::new(base, size, interrupts, vector));
    }

    fn clear_doorbells_half(&self, qid: u16, completion: bool) {
        self.mmio
            .write32(doorbell_offset(qid, completion, self.dstrd_bytes()), 0);
    }

    /// Removes an SQ (Delete I/O SQ): its commands still waiting for their
    /// completion are completed now as aborted.
    pub(crate) fn remove_sq(&mut self, mem: &GuestMemory, qid: u16) {
        let Some(sq) = self.sqs[usize::from(qid)].take() else {
            return;
        };
        let mut aborted = Vec::new();
        self.pending.retain(|Reverse(d)| {
            if d.cqe.sqid == qid {
                aborted.push(d.cqe);
                false
            } else {
                true
            }
        });
        for mut cqe in aborted {
            cqe.status = status_field(GenericStatus::AbortedSqDeletion.into());
            cqe.sq_head = Some(sq.head as u16);
            self.post(mem, cqe);
        }
        self.clear_doorbells_half(qid, false);
        self.active_sqs.retain(|&q| q != qid);
        if let Some(cq) = self.cqs[usize::from(sq.cqid)].as_mut() {
            cq.sq_count = cq.sq_count.saturating_sub(1);
        }
    }

    /// Removes a CQ (Delete I/O CQ), dropping completions it never had room for.
    pub(crate) fn remove_cq(&mut self, qid: u16) {
        self.cqs[usize::from(qid)] = None;
        self.clear_doorbells_half(qid, true);
    }

    /// Reads every live queue's doorbells; invalid values are ignored with
    /// a warning, as the Invalid Doorbell Write asynchronous event would
    /// report them.
    fn read_doorbells(&mut self, mem: &GuestMemory) -> bool {
        let stride = self.dstrd_bytes();
        let mut active = false;
        for qid in 0..self.sqs.len() {
            let sq_doorbell = doorbell_offset(qid as u16, false, stride);
            let sq_shadow = self.sqs[qid]
                .as_ref()
                .and_then(|_| self.shadow_doorbell(mem, qid, sq_doorbell));
            if let Some(sq) = self.sqs[qid].as_mut() {
                let mmio = self.mmio.read32(sq_doorbell);
                let by_register = mmio != sq.last_mmio;
                sq.last_mmio = mmio;
                let raw = sq_shadow.unwrap_or(mmio);
                if raw != sq.last_doorbell {
                    sq.last_doorbell = raw;
                    active = true;
                    if qid != 0 {
                        self.shared
                            .stats
                            .count_doorbell(sq_shadow.is_some() && !by_register);
                    }
                    if raw < sq.size {
                        sq.tail = raw;
                        self.set_event_index(mem, qid, sq_doorbell, raw);
                    } else {
                        self.shared.stats.count_invalid_doorbell();
                        tracing::warn!(
                            qid,
                            value = raw,
                            size = sq.size,
                            "simulated controller: invalid SQ tail doorbell ignored"
                        );
                    }
                }
            }
            let mut drained = false;
            let cq_doorbell = doorbell_offset(qid as u16, true, stride);
            let cq_shadow = self.cqs[qid]
                .as_ref()
                .and_then(|_| self.shadow_doorbell(mem, qid, cq_doorbell));
            let mut seen_head = None;
            if let Some(cq) = self.cqs[qid].as_mut() {
                let mmio = self.mmio.read32(cq_doorbell);
                cq.last_mmio = mmio;
                let raw = cq_shadow.unwrap_or(mmio);
                if raw != cq.last_doorbell {
                    cq.last_doorbell = raw;
                    active = true;
                    let advance =
                        (raw.wrapping_add(cq.size).wrapping_sub(cq.head)) % cq.size.max(1);
                    if raw < cq.size && advance <= cq.outstanding() {
                        cq.head = raw;
                        seen_head = Some(raw);
                        drained = !cq.backlog.is_empty();
                    } else {
                        self.shared.stats.count_invalid_doorbell();
                        tracing::warn!(
                            qid,
                            value = raw,
                            head = cq.head,
                            tail = cq.tail,
                            "simulated controller: invalid CQ head doorbell ignored"
                        );
                    }
                }
            }
            if let Some(head) = seen_head {
                self.set_event_index(mem, qid, cq_doorbell, head);
            }
            if drained {
                self.drain_backlog(mem, qid);
            }
        }
        active
    }

    /// The value of an I/O queue's doorbell in the shadow buffer, when the
    /// host configured one (the admin queue keeps its registers here; the
    /// host writes both).
    fn shadow_doorbell(&self, mem: &GuestMemory, qid: usize, doorbell: usize) -> Option<u32> {
        let (doorbells, _) = self.dbbuf?;
        if qid == 0 {
            return None;
        }
        mem.load::<u32>(
            GuestAddress(doorbells + shadow_offset(doorbell)),
            Ordering::Acquire,
        )
        .ok()
    }

    /// Publishes in the EventIdx buffer how far the device has read a
    /// queue's doorbell, as QEMU's controller does: the host writes the
    /// register again only for a value past it (the NVMe need-event rule).
    fn set_event_index(&self, mem: &GuestMemory, qid: usize, doorbell: usize, value: u32) {
        let Some((_, event_indexes)) = self.dbbuf else {
            return;
        };
        if qid == 0 {
            return;
        }
        let at = GuestAddress(event_indexes + shadow_offset(doorbell));
        let _ = mem.store(value, at, Ordering::Release);
    }

    /// After Doorbell Buffer Config: copies every queue's current tail and
    /// head into the shadow buffer and EventIdx, so both sides start equal.
    pub(crate) fn sync_shadow_doorbells(&mut self, mem: &GuestMemory) {
        let stride = self.dstrd_bytes();
        let Some((doorbells, _)) = self.dbbuf else {
            return;
        };
        for qid in 1..self.sqs.len() {
            for completion in [false, true] {
                let doorbell = doorbell_offset(qid as u16, completion, stride);
                let value = if completion {
                    self.cqs[qid].as_ref().map(|cq| cq.head)
                } else {
                    self.sqs[qid].as_ref().map(|sq| sq.tail)
                };
                if let Some(value) = value {
                    let at = GuestAddress(doorbells + shadow_offset(doorbell));
                    let _ = mem.store(value, at, Ordering::Release);
                    self.set_event_index(mem, qid, doorbell, value);
                }
            }
        }
    }

    fn drain_backlog(&mut self, mem: &GuestMemory, qid: usize) {
        loop {
            let Some(cq) = self.cqs[qid].as_mut() else {
                return;
            };
            if cq.is_full() {
                return;
            }
            let Some(cqe) = cq.backlog.pop_front() else {
                return;
            };
            self.write_cqe(mem, cqe);
            if self.fatal {
                return;
            }
        }
    }

    /// Queues a completion for its CQ: written now if there is room and
    /// nothing older waits, else kept in order until the host frees slots.
    pub(crate) fn post(&mut self, mem: &GuestMemory, cqe: Cqe) {
        let Some(cq) = self.cqs[usize::from(cqe.cqid)].as_mut() else {
            tracing::debug!(
                cqid = cqe.cqid,
                "simulated controller: completion for a deleted CQ dropped"
            );
            return;
        };
        if !cq.backlog.is_empty() || cq.is_full() {
            cq.backlog.push_back(cqe);
            return;
        }
        self.write_cqe(mem, cqe);
    }

    /// Writes one entry into the CQ (which has room): DW0-2 first, then DW3
    /// with the phase tag in one release store, so the host never sees a
    /// new phase with stale contents.
    fn write_cqe(&mut self, mem: &GuestMemory, cqe: Cqe) {
        let sq_head = cqe.sq_head.unwrap_or_else(|| {
            self.sqs
                .get(usize::from(cqe.sqid))
                .and_then(Option::as_ref)
                .map_or(0, |sq| sq.head as u16)
        });
        let Some(cq) = self.cqs[usize::from(cqe.cqid)].as_mut() else {
            return;
        };
        let addr = GuestAddress(cq.base + u64::from(cq.tail) * 16);
        let mut entry = CompletionEntry {
            dw0: cqe.dw0,
            dw1: 0,
            sq_head,
            sq_id: cqe.sqid,
            cid: cqe.cid,
            status: 0,
        };
        entry.status = (cqe.status << 1) | u16::from(cq.phase);
        let bytes = entry.as_bytes();
        let dw3 = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        let written = mem
            .write_slice(&bytes[..12], addr)
            .and_then(|()| mem.store(dw3, GuestAddress(addr.0 + 12), Ordering::Release));
        if written.is_err() {
            self.go_fatal("completion queue memory is not mapped");
            return;
        }
        cq.tail = (cq.tail + 1) % cq.size;
        if cq.tail == 0 {
            cq.phase = !cq.phase;
        }
        if cq.interrupts {
            let v = usize::from(cq.vector);
            if v < self.irq_flagged.len() && !self.irq_flagged[v] {
                self.irq_flagged[v] = true;
                self.irq_list.push(cq.vector);
            }
        }
        self.shared.stats.count_completion();
    }

    /// One write per flagged vector: interrupts coalesce per pass.
    fn signal_interrupts(&mut self) {
        if self.irq_list.is_empty() {
            return;
        }
        let vectors = self
            .shared
            .vectors
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let steered = self
            .shared
            .vector_affinity
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for v in self.irq_list.drain(..) {
            self.irq_flagged[usize::from(v)] = false;
            if let Some(fd) = vectors.get(usize::from(v)) {
                // Counted first, so whoever sees the eventfd sees the count.
                self.shared
                    .stats
                    .count_interrupt(v, steered.contains_key(&v));
                if let Err(e) = fd.write(1) {
                    tracing::warn!(vector = v, error = %e, "simulated controller: signalling an interrupt failed");
                }
            }
        }
    }

    fn post_due(&mut self, mem: &GuestMemory, now: Instant) -> bool {
        let mut active = false;
        while self.pending.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = self.pending.pop() {
                self.post(mem, d.cqe);
                active = true;
            }
            if self.fatal {
                break;
            }
        }
        active
    }

    /// Completes a waiting Asynchronous Event Request per raised event.
    fn post_events(&mut self, mem: &GuestMemory) -> bool {
        let mut active = false;
        while !self.events.is_empty() && !self.aers.is_empty() {
            let dw0 = self.events.remove(0);
            let cid = self.aers.remove(0);
            self.post(
                mem,
                Cqe {
                    cqid: 0,
                    sqid: 0,
                    cid,
                    dw0,
                    status: 0,
                    sq_head: None,
                },
            );
            active = true;
        }
        active
    }

    fn post_spurious(&mut self, mem: &GuestMemory) -> bool {
        let mut active = false;
        while let Some(spurious) = self.shared.faults.take_spurious() {
            active = true;
            let cqe = match spurious {
                SpuriousCompletion::UnknownCid { cqid } => {
                    let Some(sqid) = self.sq_of_cq(cqid) else {
                        continue;
                    };
                    let used = self.cids_in_flight(mem, cqid);
                    let cid = (0..=u16::MAX)
                        .rev()
                        .find(|c| !used.contains(c))
                        .unwrap_or(0);
                    Cqe {
                        cqid,
                        sqid,
                        cid,
                        dw0: 0,
                        status: 0,
                        sq_head: None,
                    }
                }
                SpuriousCompletion::BogusSqId { cqid } => {
                    let sqid = (1..=u16::MAX)
                        .find(|&q| self.sqs.get(usize::from(q)).is_none_or(Option::is_none))
                        .unwrap_or(u16::MAX);
                    Cqe {
                        cqid,
                        sqid,
                        cid: 0,
                        dw0: 0,
                        status: 0,
                        sq_head: Some(0),
                    }
                }
                SpuriousCompletion::Raw {
                    cqid,
                    sq_id,
                    sq_head,
                    cid,
                    status,
                    dw0,
                } => Cqe {
                    cqid,
                    sqid: sq_id,
                    cid,
                    dw0,
                    status: status & 0x7FFF,
                    sq_head: Some(sq_head),
                },
            };
            if self
                .cqs
                .get(usize::from(cqe.cqid))
                .is_none_or(Option::is_none)
            {
                tracing::warn!(
                    cqid = cqe.cqid,
                    "simulated controller: spurious completion for a missing CQ dropped"
                );
                continue;
            }
            self.shared.stats.count_spurious();
            self.post(mem, cqe);
        }
        active
    }

    /// An SQ completing to `cqid` (the CQ's own id when it has none).
    fn sq_of_cq(&self, cqid: u16) -> Option<u16> {
        self.cqs.get(usize::from(cqid))?.as_ref()?;
        Some(
            self.active_sqs
                .iter()
                .copied()
                .find(|&q| {
                    self.sqs[usize::from(q)]
                        .as_ref()
                        .is_some_and(|sq| sq.cqid == cqid)
                })
                .unwrap_or(cqid),
        )
    }

    /// Every CID the host may consider outstanding on the SQs of `cqid`:
    /// submitted and not fetched, executing, or completed but not posted.
    fn cids_in_flight(&self, mem: &GuestMemory, cqid: u16) -> HashSet<u16> {
        let mut used = HashSet::new();
        for Reverse(d) in &self.pending {
            if d.cqe.cqid == cqid {
                used.insert(d.cqe.cid);
            }
        }
        if let Some(cq) = self.cqs[usize::from(cqid)].as_ref() {
            used.extend(cq.backlog.iter().map(|c| c.cid));
        }
        if cqid == 0 {
            used.extend(self.aers.iter().copied());
        }
        for &q in &self.active_sqs {
            let Some(sq) = self.sqs[usize::from(q)].as_ref() else {
                continue;
            };
            if sq.cqid != cqid {
                continue;
            }
            let mut i = sq.head;
            while i != sq.tail {
                let addr = GuestAddress(sq.base + u64::from(i) * 64 + 2);
                if let Ok(cid) = mem.read_obj::<u16>(addr) {
                    used.insert(cid);
                }
                i = (i + 1) % sq.size;
            }
        }
        used
    }

    /// Round-robin arbitration over the SQs with new entries.
    fn fetch_and_execute(&mut self, mem: &GuestMemory, now: Instant) -> bool {
        if self.stalled_until.is_some_and(|until| now < until) {
            return false;
        }
        self.stalled_until = None;
        let mut active = false;
        let count = self.active_sqs.len();
        if count == 0 {
            return false;
        }
        self.rr_start = (self.rr_start + 1) % count;
        for i in 0..count {
            // Admin commands may delete SQs mid-pass: re-read the list.
            let Some(&qid) = self.active_sqs.get((self.rr_start + i) % count) else {
                break;
            };
            for _ in 0..ARBITRATION_BURST {
                if !self.enabled || self.fatal || self.shut_down || self.removed {
                    return active;
                }
                let Some(sq) = self.sqs[usize::from(qid)].as_mut() else {
                    break;
                };
                if sq.head == sq.tail {
                    break;
                }
                // A CQ that is full stalls its SQs, as in hardware.
                let stalled = self.cqs[usize::from(sq.cqid)]
                    .as_ref()
                    .is_none_or(|cq| !cq.backlog.is_empty());
                if stalled {
                    break;
                }
                let addr = GuestAddress(sq.base + u64::from(sq.head) * 64);
                let mut raw = [0u8; 64];
                if mem.read_slice(&mut raw, addr).is_err() {
                    self.go_fatal("submission queue memory is not mapped");
                    return true;
                }
                sq.head = (sq.head + 1) % sq.size;
                let Ok(sqe) = SubmissionEntry::read_from_bytes(&raw) else {
                    break;
                };
                active = true;
                self.handle(mem, qid, sqe, now);
            }
        }
        active
    }

    /// Runs one fetched command and schedules its completion.
    pub(crate) fn handle(
        &mut self,
        mem: &GuestMemory,
        sqid: u16,
        sqe: SubmissionEntry,
        now: Instant,
    ) {
        let admin = sqid == 0;
        self.shared.stats.count_command(admin, sqe.opcode);
        let planned: Vec<IoFaultKind> = if admin {
            Vec::new()
        } else {
            self.io_fetched += 1;
            self.shared.options.faults.at(self.io_fetched).to_vec()
        };
        let mut planned_status = None;
        let mut extra_delay = Duration::ZERO;
        let mut drop_completion = false;
        let mut impossible_head = false;
        for kind in planned {
            match kind {
                IoFaultKind::Remove => {
                    tracing::warn!("simulated controller: surprise removal injected");
                    self.removed = true;
                    return;
                }
                IoFaultKind::Fatal => {
                    self.go_fatal("fault=fatal injected");
                    return;
                }
                IoFaultKind::Status { sct, sc, dnr } => {
                    planned_status = Some(Status::new(sct, sc).with_dnr(dnr).0);
                }
                IoFaultKind::Drop => drop_completion = true,
                IoFaultKind::Delay(by) => extra_delay += by,
                IoFaultKind::SqHead => impossible_head = true,
                IoFaultKind::Stall(by) => {
                    self.stalled_until = Some(now + by);
                    extra_delay += by;
                }
                IoFaultKind::Event(event) => self.events.push(event.to_dw0()),
            }
        }
        let exec = match (planned_status, self.shared.faults.on_command(admin)) {
            (Some(status), _) => Exec::Done { dw0: 0, status },
            (None, Some(status)) => Exec::Done {
                dw0: 0,
                status: status.to_status_field(),
            },
            (None, None) if admin => self.execute_admin(mem, &sqe),
            (None, None) => Exec::from_result(self.execute_io(mem, &sqe)),
        };
        let Exec::Done { dw0, status } = exec else {
            return;
        };
        let Some(cqid) = self
            .sqs
            .get(usize::from(sqid))
            .and_then(Option::as_ref)
            .map(|sq| sq.cqid)
        else {
            return;
        };
        // An SQ head past anything submitted: the ring's size is never a
        // valid index.
        let sq_head = impossible_head.then(|| {
            self.sqs[usize::from(sqid)]
                .as_ref()
                .map_or(u16::MAX, |sq| u16::try_from(sq.size).unwrap_or(u16::MAX))
        });
        let cqe = Cqe {
            cqid,
            sqid,
            cid: sqe.cid,
            dw0,
            status,
            sq_head,
        };
        if drop_completion {
            return;
        }
        let mut delay = extra_delay;
        match self.shared.faults.on_completion() {
            CompletionFault::Drop => return,
            CompletionFault::Delay(d) => delay += d,
            CompletionFault::None => {}
        }
        if !admin {
            delay += self.io_delay(sqe.opcode, now);
        }
        if delay.is_zero() {
            self.post(mem, cqe);
        } else {
            // A huge injected delay means "effectively never".
            let at = now
                .checked_add(delay)
                .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
            self.complete_at(at, cqe);
        }
    }

    /// Latency plus IOPS pacing for an I/O command arriving at `now`.
    fn io_delay(&mut self, opcode: u8, now: Instant) -> Duration {
        let o = &self.shared.options;
        let latency = match IoOpcode::try_from(opcode) {
            Ok(IoOpcode::Read) => o.latency.read,
            Ok(IoOpcode::Write) => o.latency.write,
            Ok(IoOpcode::Flush) => o.latency.flush,
            _ => o.latency.other,
        };
        if o.iops == 0 {
            return latency;
        }
        let interval = Duration::from_nanos(1_000_000_000 / o.iops.max(1));
        let start = self.next_io_slot.map_or(now, |slot| slot.max(now));
        self.next_io_slot = Some(start + interval);
        (start - now) + latency
    }

    /// Takes the waiting completion of command `cid` of SQ `sqid` (Abort).
    pub(crate) fn take_pending(&mut self, sqid: u16, cid: u16) -> Option<Cqe> {
        let mut found = None;
        self.pending.retain(|Reverse(due)| {
            let hit = found.is_none() && due.cqe.sqid == sqid && due.cqe.cid == cid;
            if hit {
                found = Some(due.cqe);
            }
            !hit
        });
        found
    }

    pub(crate) fn complete_at(&mut self, at: Instant, cqe: Cqe) {
        self.seq += 1;
        self.pending.push(Reverse(Due {
            at,
            seq: self.seq,
            cqe,
        }));
    }
}

/// Where a doorbell register's value sits in the shadow doorbell and
/// EventIdx buffers, which are laid out like the doorbells from SQ 0's.
fn shadow_offset(doorbell: usize) -> u64 {
    (doorbell - offset::DOORBELL_BASE) as u64
}

impl SubQueue {
    fn new(base: u64, size: u32, cqid: u16) -> Self {
        SubQueue {
            base,
            size,
            head: 0,
            tail: 0,
            cqid,
            last_doorbell: 0,
            last_mmio: 0,
        }
    }
}

impl CompQueue {
    fn new(base: u64, size: u32, interrupts: bool, vector: u16) -> Self {
        CompQueue {
            base,
            size,
            tail: 0,
            head: 0,
            phase: true,
            interrupts,
            vector,
            sq_count: 0,
            backlog: VecDeque::new(),
            last_doorbell: 0,
            last_mmio: 0,
        }
    }
}
