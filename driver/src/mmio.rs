//! Register (BAR0) access: volatile 32-bit loads and stores into a mapped
//! window, whatever backs it — a VFIO BAR mapping or the simulator's
//! register page.

use std::any::Any;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

/// A mapped register window. Cloning shares the mapping, which stays alive
/// as long as any clone does.
#[derive(Clone)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
    // Keeps whatever owns the mapping (the mmap, the VFIO device) alive.
    _owner: Arc<dyn Any + Send + Sync>,
}

// SAFETY: `Mmio` only hands out volatile accesses to device registers;
// registers are designed for concurrent access from any CPU, and the
// mapping itself is kept alive by `_owner`, which is `Send + Sync`.
unsafe impl Send for Mmio {}
// SAFETY: see `Send`: every access is a single volatile load or store.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Wraps a mapped register window.
    ///
    /// # Safety
    /// `base` must point to `len` bytes of readable and writable memory,
    /// 4-byte aligned, that stays mapped as long as `owner` lives, and that
    /// is only ever accessed as device registers (volatile, naturally
    /// aligned 32-bit accesses).
    pub unsafe fn new(base: NonNull<u8>, len: usize, owner: Arc<dyn Any + Send + Sync>) -> Self {
        debug_assert_eq!(base.as_ptr() as usize % 4, 0);
        Mmio {
            base,
            len,
            _owner: owner,
        }
    }

    /// Size of the window in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether a 32-bit register at `offset` lies inside the window.
    pub fn contains(&self, offset: usize) -> bool {
        offset.is_multiple_of(4) && offset.checked_add(4).is_some_and(|end| end <= self.len)
    }

    fn register(&self, offset: usize) -> *mut u32 {
        // Offsets are the driver's constants or doorbells validated against
        // the window at bring-up; a miss is a driver bug, not device input.
        assert!(
            self.contains(offset),
            "register offset {offset:#x} outside the {:#x}-byte window",
            self.len
        );
        // SAFETY: `offset + 4 <= len` was just checked, so the pointer stays
        // inside the mapping `new`'s contract guarantees.
        unsafe { self.base.as_ptr().add(offset).cast::<u32>() }
    }

    /// Reads the 32-bit register at `offset`.
    pub fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `register` bounds- and alignment-checks the offset; the
        // mapping is live (owner held) and registers are read volatile.
        unsafe { self.register(offset).read_volatile() }
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write32(&self, offset: usize, value: u32) {
        // SAFETY: as in `read32`.
        unsafe { self.register(offset).write_volatile(value) }
    }

    /// Reads a 64-bit register as two 32-bit halves, low first: some
    /// controllers do not support 64-bit accesses, all support this.
    pub fn read64(&self, offset: usize) -> u64 {
        let low = self.read32(offset) as u64;
        let high = self.read32(offset + 4) as u64;
        low | (high << 32)
    }

    /// Writes a 64-bit register as two 32-bit halves, low first.
    pub fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    /// Rings a doorbell: every earlier store to queue memory becomes
    /// visible to the device before the doorbell write does.
    pub fn ring_doorbell(&self, offset: usize, value: u32) {
        // Release orders the queue-entry stores before the doorbell store
        // (the kernel's wmb() before writel of the tail).
        fence(Ordering::Release);
        self.write32(offset, value);
    }
}

impl std::fmt::Debug for Mmio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mmio")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}
