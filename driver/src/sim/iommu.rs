//! The simulator's "IOMMU": DMA regions registered at IOVAs, and the map
//! the device thread translates every device address through.

use std::sync::{Arc, Mutex};

use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion,
};

use crate::dma::DmaRegion;
use crate::transport::TransportError;

/// First IOVA handed out. Deliberately far from any host address a
/// process sees, so a driver that hands the device host pointers instead of
/// IOVAs gets a data transfer error instead of silently working.
pub const IOVA_BASE: u64 = 0x10_0000_0000;

/// IOVAs are aligned to this (a 2 MiB hugepage), and every region is
/// followed by at least this much unmapped space, so a transfer running
/// past the end of a region faults instead of landing in the next one.
const IOVA_ALIGN: u64 = 2 << 20;

/// The translation map the device sees.
pub(crate) type GuestMemory = GuestMemoryMmap<()>;

pub(crate) struct IovaMap {
    memory: GuestMemoryAtomic<GuestMemory>,
    next: Mutex<u64>,
}

impl IovaMap {
    pub(crate) fn new() -> Self {
        IovaMap {
            memory: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            next: Mutex::new(IOVA_BASE),
        }
    }

    /// A snapshot of the map (cheap; take one per device-thread pass).
    pub(crate) fn memory(&self) -> <GuestMemoryAtomic<GuestMemory> as GuestAddressSpace>::T {
        self.memory.memory()
    }

    /// Maps `len` bytes (rounded up to 4 KiB) of zeroed anonymous memory at
    /// a fresh IOVA.
    pub(crate) fn map(&self, len: usize) -> Result<DmaRegion, TransportError> {
        let fail = |reason: String| TransportError::DmaMap { len, reason };
        if len == 0 {
            return Err(fail("zero-length mapping".to_owned()));
        }
        let size = len
            .checked_next_multiple_of(4096)
            .ok_or_else(|| fail("length overflows".to_owned()))?;
        let mapping = MmapRegion::<()>::new(size).map_err(|e| fail(format!("mmap: {e}")))?;
        // One lock for both the IOVA cursor and the map update, so two
        // concurrent callers cannot lose each other's region.
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let iova = *next;
        let end = iova
            .checked_add(size as u64)
            .and_then(|end| end.checked_add(IOVA_ALIGN))
            .and_then(|end| end.checked_next_multiple_of(IOVA_ALIGN))
            .ok_or_else(|| fail("IOVA space exhausted".to_owned()))?;
        let region = Arc::new(
            GuestRegionMmap::new(mapping, GuestAddress(iova))
                .map_err(|e| fail(format!("region: {e}")))?,
        );
        let guard = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        let updated = self
            .memory
            .memory()
            .insert_region(Arc::clone(&region))
            .map_err(|e| fail(format!("IOVA map: {e}")))?;
        guard.replace(updated);
        *next = end;
        Ok(DmaRegion::new(region))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemory as _};

    #[test]
    fn regions_are_separated_and_translated() {
        let map = IovaMap::new();
        let a = map.map(100).unwrap();
        let b = map.map(2 << 20).unwrap();
        assert_eq!(a.iova(), IOVA_BASE);
        assert_eq!(a.len(), 4096);
        assert_eq!(b.iova() % IOVA_ALIGN, 0);
        assert!(b.iova() >= a.iova() + IOVA_ALIGN);
        assert_ne!(a.host_ptr() as u64, a.iova());
        let mem = map.memory();
        mem.write_obj(0xdead_beef_u32, GuestAddress(b.iova() + 8))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(b.iova() + 8)).unwrap(),
            0xdead_beef
        );
        // Just past a region, and the host address itself, are unmapped.
        assert!(mem.get_slice(GuestAddress(a.iova() + 4096), 1).is_err());
        assert!(mem.get_slice(GuestAddress(a.host_ptr() as u64), 1).is_err());
        assert!(map.map(0).is_err());
    }
}
