//! The isolated CPU's hot path: a per-CPU handle that submits, rings and
//! polls without locks, allocation or system calls.
//!
//! A handle submits into its own hardware SQ (`Direct`) or, when CPUs share
//! SQs, into a ring its queue's housekeeping thread drains (`Shared`). Its
//! completions arrive one of two ways:
//!
//! * `Handed`: a housekeeping completion thread reaped the shared CQ and
//!   pushed them into this CPU's single-producer ring;
//! * `Inline`: the handle owns a CQ created with interrupts disabled (no
//!   MSI-X vector) and reaps it itself inside [`CpuHandle::poll`] — the
//!   kernel's poll queues in userspace: no interrupt, no second thread, no
//!   hand-off.
//!
//! Everything here runs on the submitting thread; nothing else touches a
//! handle's slots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recovery::{DeviceState, HandleWatch, Health};
use crate::controller::Registers;
use crate::dma::{DmaBuffer, DmaPool};
use crate::error::{DeviceError, Error, Result};
use crate::io::{CommandBuilder, Completion, IoCommand, Rejected};
use crate::nvme::{NvmeStatus, Status, SubmissionEntry};
use crate::prp::{self, PrpLists, Segment};
use crate::queue::{CompletionQueue, SubmissionQueue};
use crate::spsc::{Consumer, Producer};

/// A completion on its way from a completion thread to a CPU.
#[derive(Debug, Clone, Copy)]
pub(super) struct Record {
    pub cid: u16,
    pub sq_head: u16,
    /// The 15-bit status field (phase tag stripped).
    pub status: u16,
    pub dw0: u32,
}

/// Counters of one CPU's handle.
#[derive(Debug, Default)]
pub struct CpuCounters {
    /// Commands submitted.
    pub submitted: AtomicU64,
    /// Completions delivered to the handle.
    pub completed: AtomicU64,
    /// Of those, completions the handle reaped itself from its own
    /// interrupt-less CQ (inline mode); no other thread touched them.
    pub reaped_inline: AtomicU64,
    /// Submissions refused because the CPU's queue was full.
    pub ring_full: AtomicU64,
    /// Commands submitted again after a retryable error status (not Do
    /// Not Retry, within the retry budget), honouring the controller's
    /// Command Retry Delay.
    pub retried: AtomicU64,
    /// Commands submitted again because a controller reset dropped them.
    pub resubmitted: AtomicU64,
    /// Commands failed by the driver ("command aborted by host"): the
    /// device was removed or given up on, or a command's retry budget was
    /// spent on resets.
    pub failed_by_host: AtomicU64,
}

/// Adds to a counter only its handle writes: a plain load and store (no
/// locked read-modify-write on the I/O path); readers may see it late, never
/// torn.
pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

/// A CPU's submission path, prepared at open and handed out once.
pub(super) enum SubmitPath {
    /// The CPU owns a hardware SQ.
    Direct(SubmissionQueue),
    /// The CPU hands entries to its queue's thread.
    Shared(Producer<SubmissionEntry>),
}

/// Where a CPU's completions come from.
pub(super) enum CompletionPath {
    /// Reaped by a housekeeping thread and handed over through a ring.
    Handed(Consumer<Record>),
    /// The handle's own CQ, without an interrupt, reaped in `poll()`.
    Inline(CompletionQueue),
}

/// What `Runtime::open` prepares for each CPU's handle.
pub(super) struct HandleParts {
    pub path: SubmitPath,
    pub completions: CompletionPath,
    pub cid_base: u16,
    pub slots: u16,
    /// Its deadlines and reset handshake, shared with the watchdog.
    pub watch: Arc<HandleWatch>,
}

/// What a handle shares with the runtime: its counters, its deadlines and
/// reset handshake, the device's health, and how it retries.
pub(super) struct HandleContext {
    pub counters: Arc<CpuCounters>,
    pub watch: Arc<HandleWatch>,
    pub health: Arc<Health>,
    pub policy: RetryPolicy,
}

impl HandleContext {
    /// Stamps a slot's deadline for the watchdog (relaxed: it only
    /// compares numbers; a late view delays an abort by a scan).
    fn arm_deadline(&self, slot: usize) {
        let now = self.health.now_ms.load(Ordering::Relaxed);
        self.watch.deadlines[slot].store(
            now.saturating_add(self.policy.timeout_ms).max(1),
            Ordering::Relaxed,
        );
    }

    fn disarm_deadline(&self, slot: usize) {
        self.watch.deadlines[slot].store(0, Ordering::Relaxed);
    }
}

/// How a handle times and retries its commands.
#[derive(Debug, Clone, Copy)]
pub(super) struct RetryPolicy {
    /// Deadline of a command, in coarse-clock milliseconds.
    pub timeout_ms: u64,
    /// Times a command is submitted again (error statuses without DNR,
    /// resets) before it fails.
    pub max_retries: u8,
    /// The controller's Command Retry Delay times (CRDT1-3), in ms.
    pub retry_delay_ms: [u64; 3],
}

struct HandleSlot {
    busy: bool,
    tag: u64,
    buffer: Option<DmaBuffer>,
    prp_lists: PrpLists,
    /// A copy of what was submitted, to submit again (retry, reset): the
    /// ring slot it went to may be reused while it is in flight.
    entry: SubmissionEntry,
    retries: u8,
    /// Waiting to be pushed (a reset in progress, a retry delay).
    unsent: bool,
    /// Coarse-clock ms before which an unsent retry waits (CRD).
    not_before: u64,
    /// A part of a command split at the controller's transfer limit: the
    /// slot of its first part, which holds the tag and the buffer.
    lead: Option<u16>,
    /// First part of a split command: parts not completed yet (itself
    /// included); 0 for an ordinary command.
    parts_left: u16,
    /// First part of a split command: its own part has completed.
    own_part_done: bool,
    /// First part of a split command: the first error of any part.
    part_error: Option<NvmeStatus>,
}

/// The commands a handle has in flight, indexed by `cid - cid_base`.
struct Inflight {
    cid_base: u16,
    slots: Vec<HandleSlot>,
    free: Vec<u16>,
    /// Slots with `unsent` set (looked at in `poll` only when non-zero).
    unsent: usize,
    /// Something was pushed inside `poll` (a retry): ring before returning.
    pushed_in_poll: bool,
}

impl Inflight {
    /// The busy slot a completion names, or the protocol error.
    fn slot_of(&self, cpu: usize, cid: u16) -> Result<usize> {
        let slot_index = usize::from(cid.wrapping_sub(self.cid_base));
        if self.slots.get(slot_index).is_some_and(|slot| slot.busy) {
            return Ok(slot_index);
        }
        tracing::warn!(cpu, cid, "completion for a command that is not outstanding");
        Err(DeviceError::UnknownCommandId { queue: 0, cid }.into())
    }

    /// Ends the command in `index` with `result`: an ordinary command is
    /// delivered; a part of a split command is counted, and the whole
    /// command delivered (first error, or success) with its last part.
    /// Returns whether something was delivered.
    fn finish(
        &mut self,
        index: usize,
        result: std::result::Result<u32, NvmeStatus>,
        deliver: &mut impl FnMut(Completion),
    ) -> bool {
        let lead = self.slots[index].lead.map_or(index, usize::from);
        if lead == index && self.slots[index].parts_left == 0 {
            deliver(self.retire(index, result));
            return true;
        }
        if index == lead {
            self.slots[index].own_part_done = true;
        } else {
            let part = &mut self.slots[index];
            part.busy = false;
            part.unsent = false;
            part.lead = None;
            self.free.push(index as u16);
        }
        let head = &mut self.slots[lead];
        if let Err(status) = result {
            head.part_error.get_or_insert(status);
        }
        head.parts_left -= 1;
        if head.parts_left > 0 {
            return false;
        }
        let whole = head.part_error.take().map_or(Ok(0), Err);
        deliver(self.retire(lead, whole));
        true
    }

    /// Frees `slot_index` and builds its completion.
    fn retire(
        &mut self,
        slot_index: usize,
        result: std::result::Result<u32, NvmeStatus>,
    ) -> Completion {
        let slot = &mut self.slots[slot_index];
        slot.busy = false;
        slot.unsent = false;
        slot.lead = None;
        slot.parts_left = 0;
        slot.own_part_done = false;
        slot.part_error = None;
        let completion = Completion {
            tag: slot.tag,
            result,
            buffer: slot.buffer.take(),
        };
        self.free.push(slot_index as u16);
        completion
    }
}

/// One CPU's door to the device: submit and poll without locks, allocation
/// or system calls. Use it from one thread at a time (normally the thread
/// pinned to that CPU).
///
/// Commands carry a deadline; the runtime's watchdog aborts a late one and
/// resets the controller when that does not help. Across a reset the handle
/// stays valid: its next [`CpuHandle::poll`] takes in the reset and its
/// commands in flight are submitted again (see `runtime::recovery`).
pub struct CpuHandle {
    cpu: usize,
    path: SubmitPath,
    completions: CompletionPath,
    inflight: Inflight,
    commands: CommandBuilder,
    pool: DmaPool,
    regs: Arc<Registers>,
    ctx: HandleContext,
    /// The reset epoch this handle's rings belong to.
    seen_epoch: u64,
    /// Its queues are being created again after a reset: hold submissions.
    waiting_for_queues: bool,
}

impl CpuHandle {
    pub(super) fn new(
        cpu: usize,
        parts: HandleParts,
        ctx: HandleContext,
        commands: CommandBuilder,
        pool: DmaPool,
        regs: Arc<Registers>,
        max_transfer: usize,
    ) -> Result<CpuHandle> {
        let pages = PrpLists::pages_needed(max_transfer / crate::dma::PAGE_SIZE + 1);
        let mut slots = Vec::with_capacity(usize::from(parts.slots));
        for _ in 0..parts.slots {
            let mut prp_lists = PrpLists::new();
            prp_lists.reserve(pages, &pool)?;
            slots.push(HandleSlot {
                busy: false,
                tag: 0,
                buffer: None,
                prp_lists,
                entry: SubmissionEntry::default(),
                retries: 0,
                unsent: false,
                not_before: 0,
                lead: None,
                parts_left: 0,
                own_part_done: false,
                part_error: None,
            });
        }
        // A handle taken after a reset starts its rings over like one that
        // lived through it (acknowledged in its first poll).
        let seen_epoch = if ctx.health.epoch.load(Ordering::Acquire) == 0 {
            0
        } else {
            u64::MAX
        };
        Ok(CpuHandle {
            cpu,
            path: parts.path,
            completions: parts.completions,
            inflight: Inflight {
                cid_base: parts.cid_base,
                free: (0..parts.slots).rev().collect(),
                slots,
                unsent: 0,
                pushed_in_poll: false,
            },
            commands,
            pool,
            regs,
            ctx,
            seen_epoch,
            waiting_for_queues: false,
        })
    }

    /// The CPU this handle belongs to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Whether this handle reaps its own interrupt-less completion queue
    /// inside [`CpuHandle::poll`] (inline mode) rather than receiving
    /// completions from a housekeeping thread.
    pub fn is_inline(&self) -> bool {
        matches!(self.completions, CompletionPath::Inline(_))
    }

    /// Commands that can be submitted now.
    pub fn capacity(&self) -> usize {
        self.inflight.free.len()
    }

    /// Commands in flight.
    pub fn outstanding(&self) -> usize {
        self.inflight.slots.len() - self.inflight.free.len()
    }

    /// The DMA pool (allocate buffers up front, outside the hot loop).
    pub fn pool(&self) -> &DmaPool {
        &self.pool
    }

    /// Whether the device still serves I/O (it may be between resets), was
    /// removed, or was given up on after a failed reset.
    pub fn device_state(&self) -> DeviceState {
        self.ctx.health.state()
    }

    /// Queues a command; the device sees it after [`CpuHandle::ring`]
    /// (shared SQs: as soon as the queue's thread picks it up). The buffer
    /// comes back with the completion. During a controller reset the
    /// command is kept and submitted once the queues are back.
    pub fn submit(
        &mut self,
        command: IoCommand,
        buffer: Option<DmaBuffer>,
        tag: u64,
    ) -> std::result::Result<(), Rejected> {
        if let Some(parts) = self.split_plan(command) {
            return self.submit_split(command, parts, buffer, tag);
        }
        match self.push(command, buffer.as_ref(), tag) {
            Ok(slot) => {
                self.inflight.slots[slot].buffer = buffer;
                bump(&self.ctx.counters.submitted, 1);
                Ok(())
            }
            Err(error) => {
                if matches!(error, Error::QueueFull) {
                    bump(&self.ctx.counters.ring_full, 1);
                }
                Err(Rejected { error, buffer })
            }
        }
    }

    /// For a read or write larger than the controller's transfer limit
    /// (MDTS, or the runtime's `max_transfer`): the blocks per part and the
    /// part count. `None` for everything else.
    fn split_plan(&self, command: IoCommand) -> Option<(u32, u32)> {
        let (IoCommand::Read { nsid, blocks, .. } | IoCommand::Write { nsid, blocks, .. }) =
            command
        else {
            return None;
        };
        let block_size = self.commands.namespace(nsid).ok()?.block_size as usize;
        let per_part = (self.commands.max_transfer / block_size.max(1)).max(1) as u32;
        (blocks > per_part).then(|| (per_part, blocks.div_ceil(per_part)))
    }

    /// Submits a read or write larger than one command may be as several
    /// parts in consecutive slots, as SPDK and the kernel split requests:
    /// one completion (the first error, or success) comes back with the
    /// buffer once every part is done. It needs as many free slots as
    /// parts.
    fn submit_split(
        &mut self,
        command: IoCommand,
        (per_part, parts): (u32, u32),
        buffer: Option<DmaBuffer>,
        tag: u64,
    ) -> std::result::Result<(), Rejected> {
        let reject = |error: Error, buffer: Option<DmaBuffer>| Rejected { error, buffer };
        if self.regs.failed.load(Ordering::Relaxed) {
            let error = self.ctx.health.error().unwrap_or(Error::Unusable(
                "the controller was stopped after a lost command",
            ));
            return Err(reject(error, buffer));
        }
        let (nsid, lba, blocks, write) = match command {
            IoCommand::Read { nsid, lba, blocks } => (nsid, lba, blocks, false),
            IoCommand::Write { nsid, lba, blocks } => (nsid, lba, blocks, true),
            _ => unreachable!("split_plan splits reads and writes only"),
        };
        let Some(data) = buffer.as_ref() else {
            return Err(reject(
                Error::InvalidArgument("a read or write needs a buffer".into()),
                buffer,
            ));
        };
        let block_size = match self.commands.namespace(nsid) {
            Ok(ns) => ns.block_size as usize,
            Err(error) => return Err(reject(error, buffer)),
        };
        if data.len() < blocks as usize * block_size {
            return Err(reject(
                Error::InvalidArgument(format!(
                    "{blocks} blocks of {block_size} bytes need {} bytes of buffer, got {}",
                    blocks as usize * block_size,
                    data.len()
                )),
                buffer,
            ));
        }
        if parts as usize > self.inflight.slots.len() {
            return Err(reject(
                Error::InvalidArgument(format!(
                    "{} bytes split into {parts} commands at the {}-byte transfer limit (MDTS), more than this CPU's {} slots: raise RuntimeOptions::depth or send smaller commands",
                    blocks as usize * block_size,
                    self.commands.max_transfer,
                    self.inflight.slots.len()
                )),
                buffer,
            ));
        }
        if self.inflight.free.len() < parts as usize {
            bump(&self.ctx.counters.ring_full, 1);
            return Err(reject(Error::QueueFull, buffer));
        }
        // Check the whole range once, so no part is sent for a command
        // that would fail halfway.
        let whole = match command {
            IoCommand::Read { .. } => IoCommand::Read {
                nsid,
                lba,
                blocks: per_part,
            },
            _ => IoCommand::Write {
                nsid,
                lba,
                blocks: per_part,
            },
        };
        let end_check = match command {
            IoCommand::Read { .. } => IoCommand::Read {
                nsid,
                lba: lba + u64::from(blocks - 1),
                blocks: 1,
            },
            _ => IoCommand::Write {
                nsid,
                lba: lba + u64::from(blocks - 1),
                blocks: 1,
            },
        };
        for check in [whole, end_check] {
            if let Err(error) = self
                .commands
                .entry_for(check, data.len())
                .and_then(|_| self.pool.check_owns(data))
            {
                return Err(reject(error, buffer));
            }
        }
        let mut lead = None;
        for part in 0..parts {
            let first = part * per_part;
            let count = per_part.min(blocks - first);
            let part_command = if write {
                IoCommand::Write {
                    nsid,
                    lba: lba + u64::from(first),
                    blocks: count,
                }
            } else {
                IoCommand::Read {
                    nsid,
                    lba: lba + u64::from(first),
                    blocks: count,
                }
            };
            let offset = first as usize * block_size;
            match self.push_part(part_command, data, offset, count as usize * block_size) {
                Ok(index) => {
                    bump(&self.ctx.counters.submitted, 1);
                    match lead {
                        None => {
                            lead = Some(index);
                            let head = &mut self.inflight.slots[index];
                            head.tag = tag;
                            head.parts_left = parts as u16;
                        }
                        Some(head) => self.inflight.slots[index].lead = Some(head as u16),
                    }
                }
                Err(error) => {
                    // Checked above (slots, range, buffer): cannot happen
                    // for a first part; a later one would leave parts in
                    // flight, so it is reported as a device-side failure of
                    // the whole command instead.
                    let Some(head) = lead else {
                        return Err(reject(error, buffer));
                    };
                    let head_slot = &mut self.inflight.slots[head];
                    head_slot.parts_left -= (parts - part) as u16;
                    head_slot.part_error.get_or_insert(NvmeStatus::HOST_ABORTED);
                    break;
                }
            }
        }
        if let Some(head) = lead {
            self.inflight.slots[head].buffer = buffer;
        }
        Ok(())
    }

    /// Pushes one part of a split command: `len` bytes at `offset` of
    /// `data`. Returns its slot.
    fn push_part(
        &mut self,
        command: IoCommand,
        data: &DmaBuffer,
        offset: usize,
        len: usize,
    ) -> Result<usize> {
        let entry = self.commands.entry_for(command, len)?;
        let segment = Segment {
            iova: data.iova() + offset as u64,
            len,
        };
        self.place(entry, Some(segment), 0)
    }

    /// Describes `segment` (if any) in the PRP lists of the next free
    /// slot, gives the entry that slot's command id and puts it in flight.
    fn place(
        &mut self,
        mut entry: SubmissionEntry,
        segment: Option<Segment>,
        tag: u64,
    ) -> Result<usize> {
        let slot_index = *self.inflight.free.last().ok_or(Error::QueueFull)?;
        if let Some(segment) = segment {
            let slot = &mut self.inflight.slots[usize::from(slot_index)];
            let prp = prp::build(
                std::slice::from_ref(&segment),
                &mut slot.prp_lists,
                &self.pool,
            )?;
            entry.prp1 = prp.prp1;
            entry.prp2 = prp.prp2;
        }
        entry.set_cid(self.inflight.cid_base + slot_index);
        // The epoch check in `enqueue` pairs (Acquire) with the watchdog's
        // bump; a stale view at worst rings a queue that no longer exists,
        // which the controller ignores, and the command is submitted again
        // after the reset.
        self.enqueue(usize::from(slot_index), entry, tag)
    }

    /// Puts a prepared entry in flight in the free slot `slot_index` (the
    /// last of the free list): pushed now, or held while a reset runs.
    fn enqueue(&mut self, slot_index: usize, entry: SubmissionEntry, tag: u64) -> Result<usize> {
        let hold = self.waiting_for_queues
            || self.ctx.health.epoch.load(Ordering::Acquire) != self.seen_epoch;
        if !hold {
            match &mut self.path {
                SubmitPath::Direct(sq) => sq.push(&entry).map_err(|_| Error::QueueFull)?,
                SubmitPath::Shared(ring) => ring.push(entry).map_err(|_| Error::QueueFull)?,
            }
        }
        self.inflight.free.pop();
        let slot = &mut self.inflight.slots[slot_index];
        slot.busy = true;
        slot.tag = tag;
        slot.entry = entry;
        slot.retries = 0;
        slot.unsent = hold;
        slot.not_before = 0;
        if hold {
            self.inflight.unsent += 1;
        } else {
            self.ctx.arm_deadline(slot_index);
        }
        Ok(slot_index)
    }

    fn push(&mut self, command: IoCommand, buffer: Option<&DmaBuffer>, tag: u64) -> Result<usize> {
        if self.regs.failed.load(Ordering::Relaxed) {
            return Err(self.ctx.health.error().unwrap_or(Error::Unusable(
                "the controller was stopped after a lost command",
            )));
        }
        if let Some(buffer) = buffer {
            // A pointer comparison: another controller's IOVA could name
            // this device's own queue memory.
            self.pool.check_owns(buffer)?;
        }
        let data_len = buffer.map_or(0, DmaBuffer::len);
        let entry = self.commands.entry_for(command, data_len)?;
        let transfer = self.commands.transfer_len(command);
        let segment = buffer.filter(|_| transfer > 0).map(|buffer| Segment {
            iova: buffer.iova(),
            len: transfer.min(buffer.len()),
        });
        self.place(entry, segment, tag)
    }

    /// Rings the doorbell once for everything submitted since the last
    /// call (a single MMIO store, or a shadow-doorbell update; shared SQs
    /// need none).
    pub fn ring(&mut self) {
        if let SubmitPath::Direct(sq) = &mut self.path {
            sq.ring_doorbell();
        }
    }

    /// Hands every completion waiting for this CPU to `deliver`; returns
    /// how many. In inline mode this reaps the handle's own CQ and rings its
    /// head doorbell once for the batch. A completion the protocol does not
    /// allow is reported as an error after the valid ones before it.
    ///
    /// A failed command whose status allows a retry (no Do Not Retry) is
    /// submitted again, after the controller's Command Retry Delay, up to
    /// the runtime's retry budget, and delivered only when it finally
    /// succeeds or fails for good. After a controller reset this is where
    /// the handle takes the reset in and submits its commands again; once
    /// the device is removed, every command in flight is delivered failed
    /// ("command aborted by host") and submissions are refused.
    pub fn poll(&mut self, mut deliver: impl FnMut(Completion)) -> Result<usize> {
        if self.waiting_for_queues
            || self.ctx.health.epoch.load(Ordering::Acquire) != self.seen_epoch
        {
            let count = self.recover(&mut deliver)?;
            if count > 0 {
                bump(&self.ctx.counters.completed, count as u64);
                return Ok(count);
            }
        }
        let count = self.reap(&mut deliver);
        if self.inflight.unsent > 0
            && !self.waiting_for_queues
            && self.ctx.health.epoch.load(Ordering::Acquire) == self.seen_epoch
        {
            self.push_unsent();
        }
        if std::mem::take(&mut self.inflight.pushed_in_poll) {
            self.ring();
        }
        let count = count?;
        if count > 0 {
            bump(&self.ctx.counters.completed, count as u64);
        }
        Ok(count)
    }

    /// Reaps what the completion path has: the handed ring, or the own CQ.
    fn reap(&mut self, deliver: &mut impl FnMut(Completion)) -> Result<usize> {
        let mut count = 0usize;
        match &mut self.completions {
            CompletionPath::Handed(ring) => {
                while let Some(record) = ring.pop() {
                    if retire_or_retry(
                        self.cpu,
                        &mut self.inflight,
                        &mut self.path,
                        &self.ctx,
                        record,
                        deliver,
                    )? {
                        count += 1;
                    }
                }
                Ok(count)
            }
            CompletionPath::Inline(cq) => {
                let mut outcome = Ok(());
                let mut consumed = 0u64;
                // An inline pair always has its own SQ.
                let own_sq = match &self.path {
                    SubmitPath::Direct(sq) => sq.id(),
                    SubmitPath::Shared(_) => 0,
                };
                while let Some(entry) = cq.pop() {
                    consumed += 1;
                    if entry.sq_id != own_sq {
                        outcome = Err(DeviceError::WrongSubmissionQueue {
                            cq: cq.id(),
                            reported: entry.sq_id,
                        }
                        .into());
                        break;
                    }
                    let record = Record {
                        cid: entry.cid,
                        sq_head: entry.sq_head,
                        status: entry.status >> 1,
                        dw0: entry.dw0,
                    };
                    match retire_or_retry(
                        self.cpu,
                        &mut self.inflight,
                        &mut self.path,
                        &self.ctx,
                        record,
                        deliver,
                    ) {
                        Ok(delivered) => count += usize::from(delivered),
                        Err(error) => {
                            outcome = Err(error);
                            break;
                        }
                    }
                }
                // One head doorbell for the whole batch, also after an
                // error: the entries were consumed either way. (Deferring it
                // over many batches, which a CQ deeper than the SQ allows,
                // was slower on QEMU's controller: QD1 p50 55 -> 63-68 us in
                // the VM test.)
                if consumed > 0 {
                    cq.ring_doorbell();
                    bump(&self.ctx.counters.reaped_inline, consumed);
                }
                outcome.map(|()| count)
            }
        }
    }

    /// Pushes the slots waiting to be sent whose retry delay has passed.
    fn push_unsent(&mut self) {
        let now = self.ctx.health.now_ms.load(Ordering::Relaxed);
        for index in 0..self.inflight.slots.len() {
            let slot = &mut self.inflight.slots[index];
            if !slot.busy || !slot.unsent || slot.not_before > now {
                continue;
            }
            let pushed = match &mut self.path {
                SubmitPath::Direct(sq) => sq.push(&slot.entry).is_ok(),
                SubmitPath::Shared(ring) => ring.push(slot.entry).is_ok(),
            };
            if !pushed {
                break;
            }
            slot.unsent = false;
            self.inflight.unsent -= 1;
            self.inflight.pushed_in_poll = true;
            self.ctx.arm_deadline(index);
        }
    }

    /// Takes in a reset (or the device's end); returns the completions it
    /// delivered.
    fn recover(&mut self, deliver: &mut impl FnMut(Completion)) -> Result<usize> {
        if self.ctx.health.state() != DeviceState::Alive {
            // What it completed before it went is real; the rest fails.
            let reaped = self.reap(deliver).unwrap_or(0);
            return Ok(reaped + self.fail_everything(deliver));
        }
        let epoch = self.ctx.health.epoch.load(Ordering::Acquire);
        if self.waiting_for_queues && epoch == self.seen_epoch {
            if self.ctx.watch.ready.load(Ordering::Acquire) != epoch {
                return Ok(0);
            }
            // Our queues exist again: everything in flight goes out anew.
            self.waiting_for_queues = false;
            self.push_unsent();
            if std::mem::take(&mut self.inflight.pushed_in_poll) {
                self.ring();
            }
            return Ok(0);
        }
        if !epoch.is_multiple_of(2) {
            // The controller is disabled; the completion threads are
            // draining. Submissions wait in their slots.
            return Ok(0);
        }
        // The queues of the vectors are back and every completion reaped
        // before the reset has been handed over: take those first.
        let mut count = self.reap(deliver).unwrap_or_else(|error| {
            tracing::warn!(cpu = self.cpu, %error, "invalid completion before a reset ignored");
            0
        });
        self.seen_epoch = epoch;
        let owns_queues = match &mut self.path {
            SubmitPath::Direct(sq) => {
                sq.reset();
                true
            }
            SubmitPath::Shared(_) => false,
        };
        if let CompletionPath::Inline(cq) = &mut self.completions {
            cq.reset();
        }
        if !owns_queues {
            // A shared SQ's thread resubmits what it had sent; entries
            // still in our ring go out after the reset as usual.
            return Ok(count);
        }
        // Whatever the device had is gone: send it again, within budget.
        for index in 0..self.inflight.slots.len() {
            let slot = &mut self.inflight.slots[index];
            // (A split command's first part that completed waits for the
            // others; it is not sent again.)
            if !slot.busy || slot.unsent || slot.own_part_done {
                continue;
            }
            self.ctx.disarm_deadline(index);
            if slot.retries >= self.ctx.policy.max_retries {
                bump(&self.ctx.counters.failed_by_host, 1);
                if self
                    .inflight
                    .finish(index, Err(NvmeStatus::HOST_ABORTED), deliver)
                {
                    count += 1;
                }
                continue;
            }
            slot.retries += 1;
            slot.unsent = true;
            slot.not_before = 0;
            self.inflight.unsent += 1;
            bump(&self.ctx.counters.resubmitted, 1);
        }
        self.waiting_for_queues = true;
        // Release: our rings are reset before the watchdog creates the
        // queues that use them.
        self.ctx.watch.acked.store(epoch, Ordering::Release);
        Ok(count)
    }

    /// The device is gone: every command in flight fails with "command
    /// aborted by host" (it can no longer write any buffer).
    fn fail_everything(&mut self, deliver: &mut impl FnMut(Completion)) -> usize {
        self.seen_epoch = self.ctx.health.epoch.load(Ordering::Acquire);
        self.waiting_for_queues = false;
        self.inflight.unsent = 0;
        let mut count = 0;
        for index in 0..self.inflight.slots.len() {
            let slot = &self.inflight.slots[index];
            if !slot.busy || slot.own_part_done {
                continue;
            }
            self.ctx.disarm_deadline(index);
            bump(&self.ctx.counters.failed_by_host, 1);
            if self
                .inflight
                .finish(index, Err(NvmeStatus::HOST_ABORTED), deliver)
            {
                count += 1;
            }
        }
        count
    }

    /// Submits one command and spins until it completes (a blocking
    /// convenience on top of submit/poll; the queue must be idle). The
    /// runtime's timeouts and resets apply; `timeout` bounds the wait, after
    /// which the command stays outstanding (recovery goes on; poll for it).
    pub fn run(
        &mut self,
        command: IoCommand,
        buffer: Option<DmaBuffer>,
        timeout: Duration,
    ) -> Result<(u32, Option<DmaBuffer>)> {
        if self.outstanding() > 0 {
            return Err(Error::InvalidArgument(
                "run() needs a handle with no outstanding commands".into(),
            ));
        }
        self.submit(command, buffer, 0)
            .map_err(|rejected| rejected.error)?;
        self.ring();
        let start = Instant::now();
        loop {
            let mut done = None;
            // A protocol error after our completion in the same batch must
            // not lose the completion (and its buffer).
            let polled = self.poll(|completion| done = Some(completion));
            if let Some(completion) = done {
                return match completion.result {
                    Ok(dw0) => Ok((dw0, completion.buffer)),
                    Err(status) => Err(self.ctx.health.error().unwrap_or(Error::Command {
                        command: "I/O",
                        status,
                    })),
                };
            }
            polled?;
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: "did not complete an I/O command",
                    waited: timeout,
                    hint: "; it is still outstanding and the runtime's recovery goes on: poll() delivers it",
                });
            }
            std::hint::spin_loop();
        }
    }
}

/// Handles one completion: a retryable failure within budget is submitted
/// again (now, or after its Command Retry Delay); anything else retires the
/// slot and is delivered. Returns whether something was delivered.
fn retire_or_retry(
    cpu: usize,
    inflight: &mut Inflight,
    path: &mut SubmitPath,
    ctx: &HandleContext,
    record: Record,
    deliver: &mut impl FnMut(Completion),
) -> Result<bool> {
    let index = inflight.slot_of(cpu, record.cid)?;
    if let SubmitPath::Direct(sq) = path {
        if let Err(bad) = sq.update_head(record.sq_head) {
            // The command itself completed (its id and status are sound);
            // the ring's bookkeeping is not: a reset starts it over.
            tracing::warn!(cpu, %bad, "impossible SQ head; resetting the controller");
            ctx.health.request_reset();
        }
    }
    let status = NvmeStatus::from_status(Status(record.status));
    let slot = &mut inflight.slots[index];
    if let Some(status) =
        status.filter(|s| s.is_retryable() && slot.retries < ctx.policy.max_retries)
    {
        slot.retries += 1;
        bump(&ctx.counters.retried, 1);
        let delay = match status.crd {
            0 => 0,
            crd => ctx.policy.retry_delay_ms[usize::from(crd - 1)],
        };
        let pushed_now = delay == 0
            && match path {
                SubmitPath::Direct(sq) => sq.push(&slot.entry).is_ok(),
                SubmitPath::Shared(ring) => ring.push(slot.entry).is_ok(),
            };
        if pushed_now {
            inflight.pushed_in_poll = true;
            ctx.arm_deadline(index);
        } else {
            slot.unsent = true;
            slot.not_before = ctx
                .health
                .now_ms
                .load(Ordering::Relaxed)
                .saturating_add(delay);
            ctx.disarm_deadline(index);
            inflight.unsent += 1;
        }
        return Ok(false);
    }
    ctx.disarm_deadline(index);
    let result = match status {
        None => Ok(record.dw0),
        Some(status) => Err(status),
    };
    Ok(inflight.finish(index, result, deliver))
}

impl Drop for CpuHandle {
    fn drop(&mut self) {
        // Commands in flight may still DMA into their buffers and the SQ
        // ring: wait a moment for them, then stop the controller rather
        // than hand that memory back to the pool.
        if self.outstanding() == 0 || self.regs.failed.load(Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.outstanding() > 0 && Instant::now() < deadline {
            if self.poll(|_| {}).is_err() {
                break;
            }
        }
        if self.outstanding() > 0 {
            tracing::warn!(
                cpu = self.cpu,
                outstanding = self.outstanding(),
                "CPU handle dropped with commands in flight; stopping the controller"
            );
            self.regs.fail();
        }
    }
}
