//! I/O commands on a queue pair: Read, Write, Flush, Write Zeroes and
//! Dataset Management, with PRPs built from pool buffers and transfers above
//! MDTS split transparently.
//!
//! Two layers: [`IoQueuePair::submit`] / [`IoQueuePair::poll`] move owned
//! buffers through the queue with a user tag and never block; the blocking
//! calls (`read`, `write`, …) sit on top and split large transfers.

use std::sync::Arc;
use std::time::Instant;

use crate::controller::{Controller, Namespace, Registers};
use crate::dma::{DmaBuffer, DmaPool, PAGE_SIZE};
use crate::error::{DeviceError, Error, Result};
use crate::nvme::command::{DsmRange, SubmissionEntry, MAX_BLOCKS_PER_COMMAND, MAX_DSM_RANGES};
use crate::nvme::NvmeStatus;
use crate::prp::{self, PrpLists, Segment};
use crate::queue::{CompletionQueue, SubmissionQueue};

/// An I/O command, in blocks of its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoCommand {
    /// Read `blocks` blocks at `lba` into the buffer.
    Read {
        /// Namespace.
        nsid: u32,
        /// First block.
        lba: u64,
        /// Block count.
        blocks: u32,
    },
    /// Write `blocks` blocks at `lba` from the buffer.
    Write {
        /// Namespace.
        nsid: u32,
        /// First block.
        lba: u64,
        /// Block count.
        blocks: u32,
    },
    /// Make written data durable.
    Flush {
        /// Namespace.
        nsid: u32,
    },
    /// Zero `blocks` blocks at `lba` without transferring data.
    WriteZeroes {
        /// Namespace.
        nsid: u32,
        /// First block.
        lba: u64,
        /// Block count.
        blocks: u32,
        /// Let the device deallocate the blocks too.
        deallocate: bool,
    },
    /// Deallocate (trim) the ranges written in the buffer as [`DsmRange`]s.
    Deallocate {
        /// Namespace.
        nsid: u32,
        /// Number of ranges in the buffer.
        ranges: u16,
    },
}

/// A finished command.
#[derive(Debug)]
pub struct Completion {
    /// The tag given at submission.
    pub tag: u64,
    /// Command-specific result (dword 0), or the controller's error.
    pub result: std::result::Result<u32, NvmeStatus>,
    /// The buffer given at submission, handed back.
    pub buffer: Option<DmaBuffer>,
}

/// A submission that was refused; the buffer comes back with the reason.
#[derive(Debug)]
pub struct Rejected {
    /// Why.
    pub error: Error,
    /// The buffer, unused.
    pub buffer: Option<DmaBuffer>,
}

/// Checks commands against the namespaces and the transfer limit and
/// builds their submission entries (shared by queue pairs and per-CPU
/// handles).
#[derive(Debug, Clone)]
pub(crate) struct CommandBuilder {
    pub namespaces: Vec<Namespace>,
    pub max_transfer: usize,
}

impl CommandBuilder {
    pub fn namespace(&self, nsid: u32) -> Result<&Namespace> {
        self.namespaces
            .iter()
            .find(|ns| ns.id == nsid)
            .ok_or_else(|| Error::InvalidArgument(format!("namespace {nsid} is not active")))
    }

    /// Checks a command against its namespace and data and builds the
    /// entry (without PRPs).
    pub fn entry_for(&self, command: IoCommand, data_len: usize) -> Result<SubmissionEntry> {
        let check_range = |ns: &Namespace, lba: u64, blocks: u32| -> Result<()> {
            if blocks == 0 || blocks > MAX_BLOCKS_PER_COMMAND {
                return Err(Error::InvalidArgument(format!(
                    "{blocks} blocks per command: give 1 to {MAX_BLOCKS_PER_COMMAND}"
                )));
            }
            if lba
                .checked_add(u64::from(blocks))
                .is_none_or(|end| end > ns.blocks)
            {
                return Err(Error::InvalidArgument(format!(
                    "blocks {lba}..{} are beyond namespace {} ({} blocks)",
                    lba.saturating_add(u64::from(blocks)),
                    ns.id,
                    ns.blocks
                )));
            }
            Ok(())
        };
        let check_data = |ns: &Namespace, blocks: u32| -> Result<()> {
            let needed = blocks as usize * ns.block_size as usize;
            if data_len < needed {
                return Err(Error::InvalidArgument(format!(
                    "{blocks} blocks of {} bytes need {needed} bytes of buffer, got {data_len}",
                    ns.block_size
                )));
            }
            if needed > self.max_transfer {
                return Err(Error::InvalidArgument(format!(
                    "{needed} bytes exceed the controller's {}-byte maximum transfer (MDTS): use the blocking calls, which split",
                    self.max_transfer
                )));
            }
            Ok(())
        };
        Ok(match command {
            IoCommand::Read { nsid, lba, blocks } => {
                let ns = self.namespace(nsid)?;
                check_range(ns, lba, blocks)?;
                check_data(ns, blocks)?;
                SubmissionEntry::read(nsid, lba, blocks, 0, 0)
            }
            IoCommand::Write { nsid, lba, blocks } => {
                let ns = self.namespace(nsid)?;
                check_range(ns, lba, blocks)?;
                check_data(ns, blocks)?;
                SubmissionEntry::write(nsid, lba, blocks, 0, 0)
            }
            IoCommand::Flush { nsid } => {
                self.namespace(nsid)?;
                SubmissionEntry::flush(nsid)
            }
            IoCommand::WriteZeroes {
                nsid,
                lba,
                blocks,
                deallocate,
            } => {
                let ns = self.namespace(nsid)?;
                check_range(ns, lba, blocks)?;
                SubmissionEntry::write_zeroes(nsid, lba, blocks, deallocate)
            }
            IoCommand::Deallocate { nsid, ranges } => {
                self.namespace(nsid)?;
                if ranges == 0 || ranges > MAX_DSM_RANGES {
                    return Err(Error::InvalidArgument(format!(
                        "{ranges} ranges: Dataset Management takes 1 to {MAX_DSM_RANGES}"
                    )));
                }
                let needed = ranges as usize * std::mem::size_of::<DsmRange>();
                if data_len < needed {
                    return Err(Error::InvalidArgument(format!(
                        "{ranges} ranges need {needed} bytes of buffer, got {data_len}"
                    )));
                }
                SubmissionEntry::dataset_management(nsid, ranges, 0, true)
            }
        })
    }

    pub fn transfer_len(&self, command: IoCommand) -> usize {
        match command {
            IoCommand::Read { nsid, blocks, .. } | IoCommand::Write { nsid, blocks, .. } => self
                .namespace(nsid)
                .map_or(0, |ns| blocks as usize * ns.block_size as usize),
            IoCommand::Deallocate { ranges, .. } => {
                ranges as usize * std::mem::size_of::<DsmRange>()
            }
            IoCommand::Flush { .. } | IoCommand::WriteZeroes { .. } => 0,
        }
    }
}

struct Slot {
    busy: bool,
    tag: u64,
    buffer: Option<DmaBuffer>,
    prp_lists: PrpLists,
}

/// One submission queue and the completion queue it completes to, used by
/// one thread at a time.
pub struct IoQueuePair {
    sq: SubmissionQueue,
    cq: CompletionQueue,
    slots: Vec<Slot>,
    free: Vec<u16>,
    commands: CommandBuilder,
    pool: DmaPool,
    regs: Arc<Registers>,
    timeout: std::time::Duration,
}

impl IoQueuePair {
    /// Creates CQ and SQ number `qid` with `depth` entries (the CQ
    /// signalling `vector` if given, polled otherwise).
    pub fn create(
        controller: &Controller,
        qid: u16,
        depth: u32,
        vector: Option<u16>,
    ) -> Result<Self> {
        let cq = controller.create_io_cq(qid, depth, vector)?;
        let sq = match controller.create_io_sq(qid, depth, qid) {
            Ok(sq) => sq,
            Err(error) => {
                let _ = controller.delete_io_cq(qid);
                return Err(error);
            }
        };
        Ok(Self::from_queues(controller, sq, cq))
    }

    /// Wraps queues already created on the controller.
    pub fn from_queues(controller: &Controller, sq: SubmissionQueue, cq: CompletionQueue) -> Self {
        // One slot per ring entry but the one that must stay empty; command
        // ids are slot numbers.
        let slots = sq.depth() as usize - 1;
        IoQueuePair {
            slots: (0..slots)
                .map(|_| Slot {
                    busy: false,
                    tag: 0,
                    buffer: None,
                    prp_lists: PrpLists::new(),
                })
                .collect(),
            free: (0..slots as u16).rev().collect(),
            sq,
            cq,
            commands: CommandBuilder {
                namespaces: controller.info().namespaces.clone(),
                max_transfer: controller.info().max_transfer,
            },
            pool: controller.pool().clone(),
            regs: Arc::clone(controller.registers()),
            timeout: controller.command_timeout(),
        }
    }

    /// Submission queue id.
    pub fn id(&self) -> u16 {
        self.sq.id()
    }

    /// Commands in flight.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Commands that can be submitted now.
    pub fn capacity(&self) -> usize {
        self.free.len()
    }

    /// The largest transfer one command may carry.
    pub fn max_transfer(&self) -> usize {
        self.commands.max_transfer
    }

    fn namespace(&self, nsid: u32) -> Result<&Namespace> {
        self.commands.namespace(nsid)
    }

    /// Puts a command on the submission queue (the device sees it after
    /// [`IoQueuePair::ring`]). The buffer comes back in its completion.
    pub fn submit(
        &mut self,
        command: IoCommand,
        buffer: Option<DmaBuffer>,
        tag: u64,
    ) -> std::result::Result<(), Rejected> {
        if let Some(error) = buffer.as_ref().and_then(|b| self.pool.check_owns(b).err()) {
            return Err(Rejected { error, buffer });
        }
        let data_len = buffer.as_ref().map_or(0, DmaBuffer::len);
        let transfer = self.commands.transfer_len(command);
        let segment = buffer.as_ref().map(|b| Segment {
            iova: b.iova(),
            len: transfer.min(b.len()),
        });
        let segments: &[Segment] = match (&segment, transfer) {
            (Some(segment), 1..) => std::slice::from_ref(segment),
            _ => &[],
        };
        match self.push(command, data_len, segments, tag) {
            Ok(cid) => {
                self.slots[cid as usize].buffer = buffer;
                Ok(())
            }
            Err(error) => Err(Rejected { error, buffer }),
        }
    }

    /// Pushes a command whose data lies in `segments` (which the caller
    /// keeps alive until it completes); returns the command id.
    fn push(
        &mut self,
        command: IoCommand,
        data_len: usize,
        segments: &[Segment],
        tag: u64,
    ) -> Result<u16> {
        self.regs.check()?;
        let mut entry = self.commands.entry_for(command, data_len)?;
        let cid = *self.free.last().ok_or(Error::QueueFull)?;
        let slot = &mut self.slots[cid as usize];
        if !segments.is_empty() {
            let prp = prp::build(segments, &mut slot.prp_lists, &self.pool)?;
            entry.prp1 = prp.prp1;
            entry.prp2 = prp.prp2;
        }
        entry.set_cid(cid);
        self.sq.push(&entry).map_err(|_| Error::QueueFull)?;
        self.free.pop();
        slot.busy = true;
        slot.tag = tag;
        Ok(cid)
    }

    /// Rings the submission doorbell once for everything submitted since.
    pub fn ring(&mut self) {
        self.sq.ring_doorbell();
    }

    /// Hands every posted completion to `deliver` and returns how many.
    /// A completion the protocol does not allow is consumed and reported
    /// as an error (after the valid ones before it were delivered).
    pub fn poll(&mut self, mut deliver: impl FnMut(Completion)) -> Result<usize> {
        let mut count = 0;
        let outcome = loop {
            let Some(entry) = self.cq.pop() else {
                break Ok(count);
            };
            if entry.sq_id != self.sq.id() {
                tracing::warn!(
                    cq = self.cq.id(),
                    sq = entry.sq_id,
                    "completion names a foreign SQ"
                );
                break Err(DeviceError::WrongSubmissionQueue {
                    cq: self.cq.id(),
                    reported: entry.sq_id,
                }
                .into());
            }
            if let Err(bad) = self.sq.update_head(entry.sq_head) {
                tracing::warn!(%bad, "impossible SQ head");
                break Err(DeviceError::from(bad).into());
            }
            let Some(slot) = self
                .slots
                .get_mut(entry.cid as usize)
                .filter(|slot| slot.busy)
            else {
                tracing::warn!(
                    queue = self.sq.id(),
                    cid = entry.cid,
                    "completion for a command that is not outstanding"
                );
                break Err(DeviceError::UnknownCommandId {
                    queue: self.sq.id(),
                    cid: entry.cid,
                }
                .into());
            };
            slot.busy = false;
            let completion = Completion {
                tag: slot.tag,
                result: entry.result().map(|()| entry.dw0),
                buffer: slot.buffer.take(),
            };
            self.free.push(entry.cid);
            count += 1;
            deliver(completion);
        };
        self.cq.ring_doorbell();
        outcome
    }

    /// Polls until fewer than `target` commands are outstanding, keeping
    /// the first error; on timeout the controller is stopped (so no DMA
    /// lands later in the caller's memory) and the error returned.
    fn wait_below(&mut self, target: usize, first_error: &mut Option<Error>) -> Result<()> {
        let start = Instant::now();
        let mut idle = 0u32;
        while self.outstanding() >= target.max(1) {
            let polled = self.poll(|completion| {
                if let Err(status) = completion.result {
                    first_error.get_or_insert(Error::Command {
                        command: "I/O",
                        status,
                    });
                }
            });
            match polled {
                Ok(0) => {
                    idle += 1;
                    if idle.is_multiple_of(1024) {
                        self.regs.check()?;
                        if start.elapsed() > self.timeout {
                            self.regs.fail();
                            return Err(Error::Timeout {
                                what: "did not complete an I/O command",
                                waited: self.timeout,
                                hint: "; the controller was disabled to stop its DMA",
                            });
                        }
                        std::thread::yield_now();
                    }
                    std::hint::spin_loop();
                }
                Ok(_) => idle = 0,
                Err(error @ Error::Device(_)) => {
                    // The controller broke the protocol (an impossible SQ
                    // head, a completion nobody asked for): the commands
                    // still listed may never complete. Stop it, so no DMA
                    // lands later in the caller's memory, and say why now
                    // rather than after the timeout.
                    self.regs.fail();
                    return Err(error);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        Ok(())
    }

    /// Runs command pieces whose data the caller keeps borrowed until this
    /// returns, and waits for all of them.
    fn run_blocking(
        &mut self,
        pieces: &mut dyn Iterator<Item = (IoCommand, Vec<Segment>, usize)>,
    ) -> Result<()> {
        self.regs.check()?;
        if self.outstanding() > 0 {
            return Err(Error::InvalidArgument(
                "blocking calls need a queue with no outstanding commands: poll the earlier ones first".into(),
            ));
        }
        // The queue starts empty, so every completion seen belongs to this
        // call; tags are not needed.
        let mut first_error = None;
        for (command, segments, data_len) in pieces {
            if self.free.is_empty() {
                self.ring();
                self.wait_below(self.slots.len(), &mut first_error)?;
            }
            if let Err(error) = self.push(command, data_len, &segments, 0) {
                first_error.get_or_insert(error);
                break;
            }
        }
        self.ring();
        self.wait_below(1, &mut first_error)?;
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Splits a transfer of `blocks` blocks at `lba` over `buffers`
    /// (filled in order, each a whole number of blocks) into commands of at
    /// most MDTS bytes, and runs them.
    fn transfer(&mut self, write: bool, nsid: u32, lba: u64, buffers: &[&DmaBuffer]) -> Result<()> {
        for buffer in buffers {
            self.pool.check_owns(buffer)?;
        }
        let ns = self.namespace(nsid)?.clone();
        let block = ns.block_size as usize;
        let total: usize = buffers.iter().map(|b| b.len()).sum();
        if total == 0 || !total.is_multiple_of(block) {
            return Err(Error::InvalidArgument(format!(
                "the buffers hold {total} bytes, not a whole number of {block}-byte blocks"
            )));
        }
        for (index, buffer) in buffers.iter().enumerate() {
            if index + 1 < buffers.len() && buffer.len() % PAGE_SIZE != 0 {
                return Err(Error::InvalidArgument(format!(
                    "buffer {index} is {} bytes: every buffer but the last must be a whole number of {PAGE_SIZE}-byte pages",
                    buffer.len()
                )));
            }
        }
        let blocks_total = (total / block) as u64;
        if lba
            .checked_add(blocks_total)
            .is_none_or(|end| end > ns.blocks)
        {
            return Err(Error::InvalidArgument(format!(
                "blocks {lba}..{} are beyond namespace {nsid} ({} blocks)",
                lba.saturating_add(blocks_total),
                ns.blocks
            )));
        }
        // Commands of at most MDTS bytes, a whole number of blocks, and
        // ending on a page boundary unless they end the transfer, so every
        // piece is a valid PRP shape.
        let max_bytes = (self
            .commands
            .max_transfer
            .min(MAX_BLOCKS_PER_COMMAND as usize * block)
            / PAGE_SIZE.max(block))
            * PAGE_SIZE.max(block);
        let max_bytes = max_bytes.max(block);
        let mut pieces = Vec::new();
        let mut offset = 0usize;
        while offset < total {
            let len = (total - offset).min(max_bytes);
            let segments = segments_of(buffers, offset, len);
            let blocks = (len / block) as u32;
            let at = lba + (offset / block) as u64;
            let command = if write {
                IoCommand::Write {
                    nsid,
                    lba: at,
                    blocks,
                }
            } else {
                IoCommand::Read {
                    nsid,
                    lba: at,
                    blocks,
                }
            };
            pieces.push((command, segments, len));
            offset += len;
        }
        self.run_blocking(&mut pieces.into_iter())
    }

    /// Reads blocks starting at `lba` until `buffer` is full, waiting.
    pub fn read(&mut self, nsid: u32, lba: u64, buffer: &mut DmaBuffer) -> Result<()> {
        self.transfer(false, nsid, lba, &[&*buffer])
    }

    /// Writes `buffer` to blocks starting at `lba`, waiting.
    pub fn write(&mut self, nsid: u32, lba: u64, buffer: &DmaBuffer) -> Result<()> {
        self.transfer(true, nsid, lba, &[buffer])
    }

    /// Reads into several buffers in order (scatter), waiting.
    pub fn read_vectored(
        &mut self,
        nsid: u32,
        lba: u64,
        buffers: &mut [&mut DmaBuffer],
    ) -> Result<()> {
        let shared: Vec<&DmaBuffer> = buffers.iter().map(|b| &**b).collect();
        self.transfer(false, nsid, lba, &shared)
    }

    /// Writes several buffers in order (gather), waiting.
    pub fn write_vectored(&mut self, nsid: u32, lba: u64, buffers: &[&DmaBuffer]) -> Result<()> {
        self.transfer(true, nsid, lba, buffers)
    }

    /// Flushes the namespace's volatile write cache, waiting.
    pub fn flush(&mut self, nsid: u32) -> Result<()> {
        self.run_blocking(&mut std::iter::once((
            IoCommand::Flush { nsid },
            Vec::new(),
            0,
        )))
    }

    /// Zeroes `blocks` blocks at `lba`, waiting (split into commands of at
    /// most 65536 blocks).
    pub fn write_zeroes(
        &mut self,
        nsid: u32,
        lba: u64,
        blocks: u64,
        deallocate: bool,
    ) -> Result<()> {
        let mut pieces = Vec::new();
        let mut done = 0u64;
        while done < blocks {
            let count = (blocks - done).min(u64::from(MAX_BLOCKS_PER_COMMAND)) as u32;
            pieces.push((
                IoCommand::WriteZeroes {
                    nsid,
                    lba: lba + done,
                    blocks: count,
                    deallocate,
                },
                Vec::new(),
                0,
            ));
            done += u64::from(count);
        }
        self.run_blocking(&mut pieces.into_iter())
    }

    /// Deallocates (trims) `ranges` (start block, block count), waiting.
    pub fn deallocate(&mut self, nsid: u32, ranges: &[(u64, u32)]) -> Result<()> {
        if ranges.is_empty() {
            return Ok(());
        }
        let mut pieces = Vec::new();
        let mut buffers = Vec::new();
        for chunk in ranges.chunks(MAX_DSM_RANGES as usize) {
            let mut buffer = self
                .pool
                .alloc(chunk.len() * std::mem::size_of::<DsmRange>())?;
            for (index, &(lba, blocks)) in chunk.iter().enumerate() {
                let range = DsmRange::new(lba, blocks);
                let bytes = zerocopy::IntoBytes::as_bytes(&range);
                buffer.as_mut_slice()[index * bytes.len()..(index + 1) * bytes.len()]
                    .copy_from_slice(bytes);
            }
            buffers.push(buffer);
        }
        for (chunk, buffer) in ranges.chunks(MAX_DSM_RANGES as usize).zip(&buffers) {
            let ns = self.namespace(nsid)?;
            for &(lba, blocks) in chunk {
                if lba
                    .checked_add(u64::from(blocks))
                    .is_none_or(|end| end > ns.blocks)
                {
                    return Err(Error::InvalidArgument(format!(
                        "deallocate range {lba}+{blocks} is beyond namespace {nsid} ({} blocks)",
                        ns.blocks
                    )));
                }
            }
            let len = chunk.len() * std::mem::size_of::<DsmRange>();
            pieces.push((
                IoCommand::Deallocate {
                    nsid,
                    ranges: chunk.len() as u16,
                },
                vec![Segment {
                    iova: buffer.iova(),
                    len,
                }],
                len,
            ));
        }
        self.run_blocking(&mut pieces.into_iter())
    }
}

impl Drop for IoQueuePair {
    fn drop(&mut self) {
        // Commands still in flight may DMA into the rings and buffers this
        // drop returns to the pool: give them a moment, then stop the
        // controller rather than risk memory being written after reuse.
        if self.outstanding() == 0 || self.regs.failed.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while self.outstanding() > 0 && Instant::now() < deadline {
            if self.poll(|_| {}).is_err() {
                break;
            }
        }
        if self.outstanding() > 0 {
            tracing::warn!(
                queue = self.sq.id(),
                outstanding = self.outstanding(),
                "queue dropped with commands in flight; stopping the controller"
            );
            self.regs.fail();
        }
    }
}

/// The segments of bytes `offset..offset+len` of the concatenation of
/// `buffers`.
fn segments_of(buffers: &[&DmaBuffer], offset: usize, len: usize) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut skip = offset;
    let mut want = len;
    for buffer in buffers {
        if want == 0 {
            break;
        }
        if skip >= buffer.len() {
            skip -= buffer.len();
            continue;
        }
        let take = (buffer.len() - skip).min(want);
        segments.push(Segment {
            iova: buffer.iova() + skip as u64,
            len: take,
        });
        want -= take;
        skip = 0;
    }
    segments
}
