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
}

struct HandleSlot {
    busy: bool,
    tag: u64,
    buffer: Option<DmaBuffer>,
    prp_lists: PrpLists,
}

/// The commands a handle has in flight, indexed by `cid - cid_base`.
struct Inflight {
    cid_base: u16,
    slots: Vec<HandleSlot>,
    free: Vec<u16>,
}

impl Inflight {
    /// Retires the command a completion names and hands it to `deliver`.
    fn complete(
        &mut self,
        cpu: usize,
        path: &mut SubmitPath,
        record: Record,
        deliver: &mut impl FnMut(Completion),
    ) -> Result<()> {
        let slot_index = record.cid.wrapping_sub(self.cid_base);
        let Some(slot) = self
            .slots
            .get_mut(usize::from(slot_index))
            .filter(|slot| slot.busy)
        else {
            tracing::warn!(
                cpu,
                cid = record.cid,
                "completion for a command that is not outstanding"
            );
            return Err(DeviceError::UnknownCommandId {
                queue: 0,
                cid: record.cid,
            }
            .into());
        };
        if let SubmitPath::Direct(sq) = path {
            sq.update_head(record.sq_head).map_err(DeviceError::from)?;
        }
        slot.busy = false;
        let result = match NvmeStatus::from_status(Status(record.status)) {
            None => Ok(record.dw0),
            Some(status) => Err(status),
        };
        let completion = Completion {
            tag: slot.tag,
            result,
            buffer: slot.buffer.take(),
        };
        self.free.push(slot_index);
        deliver(completion);
        Ok(())
    }
}

/// One CPU's door to the device: submit and poll without locks, allocation
/// or system calls. Use it from one thread at a time (normally the thread
/// pinned to that CPU).
pub struct CpuHandle {
    cpu: usize,
    counters: Arc<CpuCounters>,
    path: SubmitPath,
    completions: CompletionPath,
    inflight: Inflight,
    commands: CommandBuilder,
    pool: DmaPool,
    regs: Arc<Registers>,
}

impl CpuHandle {
    pub(super) fn new(
        cpu: usize,
        parts: HandleParts,
        counters: Arc<CpuCounters>,
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
            });
        }
        Ok(CpuHandle {
            cpu,
            counters,
            path: parts.path,
            completions: parts.completions,
            inflight: Inflight {
                cid_base: parts.cid_base,
                free: (0..parts.slots).rev().collect(),
                slots,
            },
            commands,
            pool,
            regs,
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

    /// Queues a command; the device sees it after [`CpuHandle::ring`]
    /// (shared SQs: as soon as the queue's thread picks it up). The buffer
    /// comes back with the completion.
    pub fn submit(
        &mut self,
        command: IoCommand,
        buffer: Option<DmaBuffer>,
        tag: u64,
    ) -> std::result::Result<(), Rejected> {
        match self.push(command, buffer.as_ref(), tag) {
            Ok(slot) => {
                self.inflight.slots[slot].buffer = buffer;
                bump(&self.counters.submitted, 1);
                Ok(())
            }
            Err(error) => {
                if matches!(error, Error::QueueFull) {
                    bump(&self.counters.ring_full, 1);
                }
                Err(Rejected { error, buffer })
            }
        }
    }

    fn push(&mut self, command: IoCommand, buffer: Option<&DmaBuffer>, tag: u64) -> Result<usize> {
        if self.regs.failed.load(Ordering::Relaxed) {
            return Err(Error::Unusable(
                "the controller was stopped after a lost command",
            ));
        }
        if let Some(buffer) = buffer {
            // A pointer comparison: another controller's IOVA could name
            // this device's own queue memory.
            self.pool.check_owns(buffer)?;
        }
        let data_len = buffer.map_or(0, DmaBuffer::len);
        let mut entry = self.commands.entry_for(command, data_len)?;
        let slot_index = *self.inflight.free.last().ok_or(Error::QueueFull)?;
        let slot = &mut self.inflight.slots[usize::from(slot_index)];
        let transfer = self.commands.transfer_len(command);
        if let (Some(buffer), 1..) = (buffer, transfer) {
            let segment = Segment {
                iova: buffer.iova(),
                len: transfer.min(buffer.len()),
            };
            let prp = prp::build(
                std::slice::from_ref(&segment),
                &mut slot.prp_lists,
                &self.pool,
            )?;
            entry.prp1 = prp.prp1;
            entry.prp2 = prp.prp2;
        }
        entry.set_cid(self.inflight.cid_base + slot_index);
        match &mut self.path {
            SubmitPath::Direct(sq) => sq.push(&entry).map_err(|_| Error::QueueFull)?,
            SubmitPath::Shared(ring) => ring.push(entry).map_err(|_| Error::QueueFull)?,
        }
        self.inflight.free.pop();
        slot.busy = true;
        slot.tag = tag;
        Ok(usize::from(slot_index))
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
    pub fn poll(&mut self, mut deliver: impl FnMut(Completion)) -> Result<usize> {
        let mut count = 0u64;
        let outcome = match &mut self.completions {
            CompletionPath::Handed(ring) => {
                let mut outcome = Ok(());
                while let Some(record) = ring.pop() {
                    outcome =
                        self.inflight
                            .complete(self.cpu, &mut self.path, record, &mut deliver);
                    if outcome.is_err() {
                        break;
                    }
                    count += 1;
                }
                outcome
            }
            CompletionPath::Inline(cq) => {
                let mut outcome = Ok(());
                let mut consumed = false;
                // An inline pair always has its own SQ.
                let own_sq = match &self.path {
                    SubmitPath::Direct(sq) => sq.id(),
                    SubmitPath::Shared(_) => 0,
                };
                while let Some(entry) = cq.pop() {
                    consumed = true;
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
                    outcome =
                        self.inflight
                            .complete(self.cpu, &mut self.path, record, &mut deliver);
                    if outcome.is_err() {
                        break;
                    }
                    count += 1;
                }
                // One head doorbell for the whole batch, also after an
                // error: the entries were consumed either way. (Deferring it
                // over many batches, which a CQ deeper than the SQ allows,
                // was slower on QEMU's controller: QD1 p50 55 -> 63-68 us in
                // the VM test.)
                if consumed {
                    cq.ring_doorbell();
                }
                if count > 0 {
                    bump(&self.counters.reaped_inline, count);
                }
                outcome
            }
        };
        if count > 0 {
            bump(&self.counters.completed, count);
        }
        outcome.map(|()| count as usize)
    }

    /// Submits one command and spins until it completes (a blocking
    /// convenience on top of submit/poll; the queue must be idle).
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
            self.poll(|completion| done = Some(completion))?;
            if let Some(completion) = done {
                return match completion.result {
                    Ok(dw0) => Ok((dw0, completion.buffer)),
                    Err(status) => Err(Error::Command {
                        command: "I/O",
                        status,
                    }),
                };
            }
            if start.elapsed() > timeout {
                self.regs.fail();
                return Err(Error::Timeout {
                    what: "did not complete an I/O command",
                    waited: timeout,
                    hint: "; the controller was disabled to stop its DMA",
                });
            }
            std::hint::spin_loop();
        }
    }
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
