//! The rings: submission queues (entries, tail, doorbell) and completion
//! queues (phase tag, head doorbell, wrap-around), in DMA memory.
//!
//! This is one of the few modules with `unsafe`: entries are copied into and
//! out of ring memory the device reads and writes concurrently, so every
//! access is a volatile copy of a whole entry through a raw pointer.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use zerocopy::{FromBytes, IntoBytes};

use crate::dma::{DmaBuffer, DmaPool};
use crate::mmio::Mmio;
use crate::nvme::regs::{doorbell_offset, offset};
use crate::nvme::{CompletionEntry, SubmissionEntry};

impl std::fmt::Debug for SubmissionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmissionQueue")
            .field("id", &self.id)
            .field("depth", &self.depth)
            .field("head", &self.head)
            .field("tail", &self.tail)
            .finish()
    }
}

impl std::fmt::Debug for CompletionQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompletionQueue")
            .field("id", &self.id)
            .field("depth", &self.depth)
            .field("head", &self.head)
            .field("phase", &self.phase)
            .finish()
    }
}

/// Size of a submission queue entry (CC.IOSQES = 6).
pub const SQ_ENTRY_SIZE: usize = 64;
/// Size of a completion queue entry (CC.IOCQES = 4).
pub const CQ_ENTRY_SIZE: usize = 16;

/// A queue's ring memory could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The requested depth is outside what NVMe allows.
    #[error("queue depth {0} is invalid: NVMe queues hold 2 to 65536 entries")]
    BadDepth(u32),
    /// DMA memory for the ring could not be allocated.
    #[error("cannot allocate queue memory: {0}")]
    Dma(#[from] crate::dma::DmaError),
}

/// A submission queue: the driver writes entries at the tail and rings the
/// tail doorbell; the device reports how far it has fetched (the head) in
/// every completion.
pub struct SubmissionQueue {
    id: u16,
    ring: DmaBuffer,
    // Indices are u32 so `index + depth` never overflows.
    depth: u32,
    tail: u32,
    /// The head the device last reported (entries before it are free).
    head: u32,
    /// The tail doorbell.
    doorbell: Doorbell,
}

impl SubmissionQueue {
    /// Allocates a ring of `depth` entries for queue `id`, whose tail
    /// doorbell is the 32-bit register at `doorbell` in `mmio`.
    pub fn new(
        id: u16,
        depth: u32,
        pool: &DmaPool,
        mmio: Mmio,
        doorbell: usize,
    ) -> Result<Self, RingError> {
        let depth = check_depth(depth)?;
        let ring = pool.alloc(depth as usize * SQ_ENTRY_SIZE)?;
        Ok(SubmissionQueue {
            id,
            ring,
            depth,
            tail: 0,
            head: 0,
            doorbell: Doorbell::new(mmio, doorbell),
        })
    }

    /// Publishes the tail through the shadow doorbell buffer from now on.
    pub(crate) fn use_shadow(&mut self, slot: ShadowSlot) {
        self.doorbell.shadow = Some(slot);
    }

    /// The tail value the device was last told.
    pub(crate) fn published(&self) -> u32 {
        self.doorbell.published
    }

    /// The queue identifier.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Number of entries in the ring.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The ring's device address (for Create I/O SQ / ASQ).
    pub fn iova(&self) -> u64 {
        self.ring.iova()
    }

    /// Entries that can be pushed now (one slot always stays empty so a
    /// full ring is distinguishable from an empty one).
    pub fn free_slots(&self) -> u32 {
        let used = (self.tail + self.depth - self.head) % self.depth;
        self.depth - 1 - used
    }

    /// Whether no entry can be pushed until the device reports progress.
    pub fn is_full(&self) -> bool {
        self.free_slots() == 0
    }

    /// Copies `entry` into the slot at the tail and advances the tail. The
    /// device does not see it until [`SubmissionQueue::ring_doorbell`].
    pub fn push(&mut self, entry: &SubmissionEntry) -> Result<(), QueueFull> {
        if self.is_full() {
            return Err(QueueFull);
        }
        // Eight 64-bit volatile stores. A single wide copy (the compiler
        // picks 512-bit moves on AVX-512 machines) doubled the simulator's
        // QD1 round trip here (845 ns vs 413 ns, `cargo bench --bench io`),
        // and byte stores cost 64 instructions.
        let words: [u64; SQ_ENTRY_SIZE / 8] = zerocopy::transmute!(*entry);
        let slot = self.tail as usize * SQ_ENTRY_SIZE;
        // SAFETY: `slot + 64 <= depth * 64 <= ring capacity` and the ring is
        // page-aligned, so the slot is 8-byte aligned; the slot is free (not
        // between head and tail), so the device does not read it until the
        // doorbell publishes it, which comes after these stores.
        unsafe {
            let dst = self.ring.as_ptr().add(slot).cast::<u64>();
            for (i, word) in words.iter().enumerate() {
                dst.add(i).write_volatile(*word);
            }
        }
        self.tail = (self.tail + 1) % self.depth;
        Ok(())
    }

    /// Tells the device about every entry pushed since the last call (one
    /// register write for a whole batch; with shadow doorbells, a memory
    /// store and a register write only when the device's EventIdx asks).
    pub fn ring_doorbell(&mut self) {
        self.doorbell.ring(self.tail);
    }

    /// Forgets every entry, as the device does when the controller is
    /// reset: tail and head back to 0, the doorbell told nothing yet (its
    /// shadow slot zeroed). The queue must be created again before use.
    pub(crate) fn reset(&mut self) {
        self.tail = 0;
        self.head = 0;
        self.doorbell.reset();
    }

    /// Records the SQ head a completion reported. A head outside the ring
    /// or one that would move backwards past the tail means the device is
    /// confused; it is refused and the caller reports it.
    pub fn update_head(&mut self, head: u16) -> Result<(), BadSqHead> {
        let head_index = u32::from(head);
        if head_index >= self.depth {
            return Err(BadSqHead {
                queue: self.id,
                head,
            });
        }
        // The new head must lie between the old head and the tail.
        let outstanding = (self.tail + self.depth - self.head) % self.depth;
        let advanced = (head_index + self.depth - self.head) % self.depth;
        if advanced > outstanding {
            return Err(BadSqHead {
                queue: self.id,
                head,
            });
        }
        self.head = head_index;
        Ok(())
    }
}

/// The submission ring has no free slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the submission queue is full")]
pub struct QueueFull;

/// A completion reported an SQ head the ring cannot have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the controller reported SQ head {head} for queue {queue}, outside the submitted range")]
pub struct BadSqHead {
    /// The submission queue.
    pub queue: u16,
    /// The head reported.
    pub head: u16,
}

/// A completion queue: the device writes entries and flips the phase tag on
/// every pass through the ring; the driver consumes entries whose phase
/// matches the current pass and rings the head doorbell.
pub struct CompletionQueue {
    id: u16,
    ring: DmaBuffer,
    depth: u32,
    head: u32,
    phase: bool,
    /// The head doorbell.
    doorbell: Doorbell,
}

impl CompletionQueue {
    /// Allocates a ring of `depth` entries for queue `id`, whose head
    /// doorbell is the 32-bit register at `doorbell` in `mmio`.
    pub fn new(
        id: u16,
        depth: u32,
        pool: &DmaPool,
        mmio: Mmio,
        doorbell: usize,
    ) -> Result<Self, RingError> {
        let depth = check_depth(depth)?;
        // The pool hands out zeroed memory: every phase tag starts at 0 and
        // the first pass expects 1.
        let ring = pool.alloc(depth as usize * CQ_ENTRY_SIZE)?;
        Ok(CompletionQueue {
            id,
            ring,
            depth,
            head: 0,
            phase: true,
            doorbell: Doorbell::new(mmio, doorbell),
        })
    }

    /// Publishes the head through the shadow doorbell buffer from now on.
    pub(crate) fn use_shadow(&mut self, slot: ShadowSlot) {
        self.doorbell.shadow = Some(slot);
    }

    /// The head value the device was last told.
    pub(crate) fn published(&self) -> u32 {
        self.doorbell.published
    }

    /// The queue identifier.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// Number of entries in the ring.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// The ring's device address (for Create I/O CQ / ACQ).
    pub fn iova(&self) -> u64 {
        self.ring.iova()
    }

    /// The next completion, if the device has posted one.
    pub fn pop(&mut self) -> Option<CompletionEntry> {
        let slot = self.head as usize * CQ_ENTRY_SIZE;
        let mut words = [0u32; 4];
        // SAFETY: `slot + 16 <= depth * 16 <= ring capacity` and the ring is
        // 4-byte aligned (page-aligned buffer); the device may be writing
        // the entry, hence volatile 32-bit reads.
        let status_word = unsafe {
            self.ring
                .as_ptr()
                .add(slot + 12)
                .cast::<u32>()
                .read_volatile()
        };
        // Bit 16 of dword 3 is the phase tag.
        if (status_word >> 16) & 1 != u32::from(self.phase) {
            return None;
        }
        // The rest of the entry was written before the phase flipped; the
        // acquire fence keeps these reads after the phase check.
        fence(Ordering::Acquire);
        for (index, word) in words.iter_mut().enumerate() {
            // SAFETY: as above, within the same 16-byte entry.
            *word = unsafe {
                self.ring
                    .as_ptr()
                    .add(slot + index * 4)
                    .cast::<u32>()
                    .read_volatile()
            };
        }
        words[3] = status_word;
        self.head += 1;
        if self.head == self.depth {
            self.head = 0;
            self.phase = !self.phase;
        }
        CompletionEntry::read_from_bytes(words.as_bytes()).ok()
    }

    /// Tells the device which entries have been consumed.
    pub fn ring_doorbell(&mut self) {
        self.doorbell.ring(self.head);
    }

    /// Starts the ring over, as a queue the controller has just created
    /// expects: every entry zeroed (phase 0), head 0, first pass phase 1,
    /// the doorbell told nothing yet. Only while the controller is disabled
    /// or the queue does not exist there (a controller reset).
    pub(crate) fn reset(&mut self) {
        let words = self.depth as usize * CQ_ENTRY_SIZE / 4;
        for index in 0..words {
            // SAFETY: `index * 4 + 4 <= depth * 16 <= ring capacity`, the
            // ring is page aligned; the device does not write a queue that
            // does not exist (the caller's contract), and the volatile
            // stores keep the compiler from eliding them.
            unsafe {
                self.ring
                    .as_ptr()
                    .add(index * 4)
                    .cast::<u32>()
                    .write_volatile(0);
            }
        }
        self.head = 0;
        self.phase = true;
        self.doorbell.reset();
    }
}

/// A queue's doorbell: the register, the value the device was last told,
/// and its slot in the shadow buffers once Doorbell Buffer Config is on.
/// One piece for SQ tails and CQ heads alike.
struct Doorbell {
    mmio: Mmio,
    offset: usize,
    published: u32,
    shadow: Option<ShadowSlot>,
}

impl Doorbell {
    fn new(mmio: Mmio, offset: usize) -> Self {
        Doorbell {
            mmio,
            offset,
            published: 0,
            shadow: None,
        }
    }

    /// Back to a new queue's doorbell: nothing published, the shadow slot
    /// (and its EventIdx) zeroed.
    fn reset(&mut self) {
        self.published = 0;
        if let Some(shadow) = &self.shadow {
            shadow.seed(0);
        }
    }

    /// Tells the device `value` if it changed: through the shadow slot,
    /// with a register write only when its EventIdx asks (always without
    /// shadow doorbells).
    fn ring(&mut self, value: u32) {
        if value == self.published {
            return;
        }
        let register = self
            .shadow
            .as_ref()
            .is_none_or(|shadow| shadow.publish(self.published, value));
        if register {
            self.mmio.ring_doorbell(self.offset, value);
        }
        self.published = value;
    }
}

/// The shadow doorbell and EventIdx buffers of NVMe's Doorbell Buffer
/// Config, laid out like the doorbell registers: a queue's new tail or head
/// is stored in memory, and the register is written only when the
/// controller's EventIdx says it wants to hear of it. Under virtualisation
/// every register write traps to the hypervisor, so this saves an exit per
/// doorbell while the device is busy.
pub struct ShadowBuffers {
    doorbells: DmaBuffer,
    event_indexes: DmaBuffer,
    stride: usize,
}

impl ShadowBuffers {
    /// Zeroed buffers for queue ids `0..=max_qid` with doorbell `stride`
    /// bytes (`4 << CAP.DSTRD`).
    pub fn new(pool: &DmaPool, max_qid: u16, stride: usize) -> Result<Self, RingError> {
        let len = (usize::from(max_qid) + 1) * 2 * stride;
        Ok(ShadowBuffers {
            doorbells: pool.alloc(len)?,
            event_indexes: pool.alloc(len)?,
            stride,
        })
    }

    /// Device addresses of the shadow doorbell and EventIdx buffers (PRP1
    /// and PRP2 of Doorbell Buffer Config).
    pub fn iovas(&self) -> (u64, u64) {
        (self.doorbells.iova(), self.event_indexes.iova())
    }

    /// Zeroes every shadow doorbell and EventIdx (a controller reset
    /// forgets them; the buffers are configured again afterwards).
    pub(crate) fn clear(&self) {
        for buffer in [&self.doorbells, &self.event_indexes] {
            for index in 0..buffer.len() / 4 {
                // SAFETY: within the buffer, 4-byte aligned (page-aligned
                // buffer); shared with a device, hence atomic stores.
                let word = unsafe { AtomicU32::from_ptr(buffer.as_ptr().add(index * 4).cast()) };
                word.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Queue `qid`'s slot (its tail for an SQ, head for a CQ), zeroed, as a
    /// new queue starts; `None` beyond the buffers. With `always_register`
    /// every value is also written to the register (the admin queue: some
    /// controllers read its shadow, others only its register).
    pub(crate) fn slot(
        self: &Arc<Self>,
        qid: u16,
        completion: bool,
        always_register: bool,
    ) -> Option<ShadowSlot> {
        // The same layout as the doorbell registers.
        let offset = doorbell_offset(qid, completion, self.stride) - offset::DOORBELL_BASE;
        if offset + 4 > self.doorbells.len() {
            return None;
        }
        let slot = ShadowSlot {
            buffers: Arc::clone(self),
            offset,
            always_register,
        };
        slot.doorbell().store(0, Ordering::Relaxed);
        slot.event_index().store(0, Ordering::Relaxed);
        Some(slot)
    }
}

/// One queue's doorbell in the shadow buffers.
pub(crate) struct ShadowSlot {
    buffers: Arc<ShadowBuffers>,
    offset: usize,
    always_register: bool,
}

impl ShadowSlot {
    fn doorbell(&self) -> &AtomicU32 {
        // SAFETY: `offset + 4 <= len` (checked in `slot`), the buffer is
        // page aligned and `offset` a multiple of 4, so the pointer is an
        // aligned u32 inside memory the `Arc` keeps alive; the device reads
        // it concurrently, hence atomic access only.
        unsafe { AtomicU32::from_ptr(self.buffers.doorbells.as_ptr().add(self.offset).cast()) }
    }

    fn event_index(&self) -> &AtomicU32 {
        // SAFETY: as in `doorbell`: same offset in a buffer of the same
        // length; the device writes it concurrently.
        unsafe { AtomicU32::from_ptr(self.buffers.event_indexes.as_ptr().add(self.offset).cast()) }
    }

    /// Starts the slot at a queue's current value (a queue that existed
    /// before the buffers did).
    pub(crate) fn seed(&self, value: u32) {
        self.doorbell().store(value, Ordering::Release);
        self.event_index().store(value, Ordering::Release);
    }

    /// Stores `new` (after `old`) in the shadow doorbell; returns whether
    /// the register must be written too.
    fn publish(&self, old: u32, new: u32) -> bool {
        // Release: the queue entries written (or the CQ slots consumed)
        // before are visible to the device before the new value.
        self.doorbell().store(new, Ordering::Release);
        // The kernel's mb(): the shadow store must be visible before the
        // EventIdx load, or the device could publish an EventIdx that asks
        // for this value while we read the old one, and neither side would
        // act (a store→load reordering only a full fence forbids).
        fence(Ordering::SeqCst);
        let event_index = self.event_index().load(Ordering::Acquire);
        self.always_register || need_event(event_index as u16, new as u16, old as u16)
    }
}

/// NVMe's need-event rule: the device asked (with `event_index`) to hear of
/// the value passing `event_index`, and moving from `old` to `new` passed
/// it. Arithmetic is modulo 2^16, as doorbell values wrap.
fn need_event(event_index: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event_index).wrapping_sub(1) < new.wrapping_sub(old)
}

fn check_depth(depth: u32) -> Result<u32, RingError> {
    if !(2..=65536).contains(&depth) {
        return Err(RingError::BadDepth(depth));
    }
    Ok(depth)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shadow_slot_asks_for_the_register_only_past_the_event_index() {
        let sim = crate::sim::SimController::open("sim,size=1M").unwrap();
        let pool = DmaPool::new(sim);
        let buffers = Arc::new(ShadowBuffers::new(&pool, 4, 4).unwrap());
        let always = buffers.slot(0, false, true).unwrap();
        let slot = buffers.slot(3, true, false).unwrap();
        assert!(
            buffers.slot(5, false, false).is_none(),
            "beyond the buffers"
        );
        // Queue 3's CQ head sits at (2 * 3 + 1) * 4 bytes.
        assert_eq!(slot.offset, 28);
        // The device has read up to 4: moving 4 -> 6 passes it.
        slot.event_index().store(4, Ordering::Relaxed);
        assert!(slot.publish(4, 6));
        assert_eq!(slot.doorbell().load(Ordering::Relaxed), 6);
        // The device has not caught up (still 4): 6 -> 9 needs no register.
        assert!(!slot.publish(6, 9));
        assert_eq!(slot.doorbell().load(Ordering::Relaxed), 9);
        // The admin queue's slot always writes the register too.
        always.event_index().store(100, Ordering::Relaxed);
        assert!(always.publish(1, 2));
    }

    #[test]
    fn the_register_is_written_only_when_the_new_value_passes_the_event_index() {
        // The device has read up to 5 and asks to hear of anything past it.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 9, 5));
        // It still has work up to 8 and will look again: 6 -> 7 needs nothing.
        assert!(!need_event(8, 7, 6));
        // Crossing the index, exactly at it.
        assert!(need_event(8, 9, 7));
        assert!(!need_event(8, 8, 7));
        // Wrap-around of the 16-bit space.
        assert!(need_event(0xFFFF, 0x0001, 0xFFFE));
        assert!(!need_event(0x0005, 0x0002, 0xFFFE));
        // No change, no event.
        assert!(!need_event(3, 4, 4));
    }
}
