//! DMA memory: regions the device can reach (an IOVA for the device, a
//! host address for the driver) and the pool that hands out buffers from
//! them.
//!
//! A region is a vm-memory `GuestRegionMmap` whose "guest address" is the
//! IOVA: the VFIO back-end maps it through the IOMMU at that address, the
//! simulator translates the device's addresses through the same regions.
//! Buffers are carved out of regions in 4 KiB frames by a buddy allocator,
//! so every buffer is page-aligned and a buffer of 2^k pages is aligned to
//! its size — which keeps PRP entries simple. A buffer never spans two
//! regions, which the VFIO back-end's no-IOMMU mode relies on: there each
//! region is one 2 MiB hugepage whose IOVA is its physical address, so only
//! memory inside one region is known to be physically contiguous.

use std::sync::{Arc, Mutex};

use buddy_system_allocator::FrameAllocator;
use vm_memory::{GuestMemoryRegion, GuestRegionMmap};

use crate::transport::{DmaMapper, TransportError};

/// The unit the pool allocates in, and the NVMe memory page size isonvme
/// programs into CC.MPS.
pub const PAGE_SIZE: usize = 4096;

/// Size of the regions the pool maps when it runs out: one 2 MiB hugepage.
pub const CHUNK_SIZE: usize = 2 << 20;

/// First frame number of every chunk's allocator (see `DmaPool::alloc`).
const FRAME_BASE: usize = CHUNK_SIZE / PAGE_SIZE;

/// Memory mapped for the device: host memory plus the IOVA it answers to.
#[derive(Clone, Debug)]
pub struct DmaRegion {
    region: Arc<GuestRegionMmap<()>>,
}

impl DmaRegion {
    /// Wraps a region whose guest base address is its IOVA.
    pub fn new(region: Arc<GuestRegionMmap<()>>) -> Self {
        DmaRegion { region }
    }

    /// The device-visible address of the first byte.
    pub fn iova(&self) -> u64 {
        self.region.start_addr().0
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.region.len() as usize
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host address of the first byte.
    pub fn host_ptr(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// The vm-memory region (for back-ends that translate IOVAs).
    pub fn guest_region(&self) -> &Arc<GuestRegionMmap<()>> {
        &self.region
    }
}

/// Why a DMA allocation failed.
#[derive(Debug, thiserror::Error)]
pub enum DmaError {
    /// Zero bytes requested.
    #[error("a DMA buffer of 0 bytes was requested")]
    Empty,
    /// More than one region can hold.
    #[error("a DMA buffer of {0} bytes is larger than the {CHUNK_SIZE}-byte maximum: split the transfer")]
    TooLarge(usize),
    /// The back-end could not map more memory.
    #[error("cannot map more DMA memory: {0}")]
    Map(#[from] TransportError),
}

struct Chunk {
    region: DmaRegion,
    frames: FrameAllocator<16>,
}

struct PoolInner {
    mapper: Arc<dyn DmaMapper>,
    chunks: Mutex<Vec<Chunk>>,
}

/// Hands out DMA buffers, mapping more memory from the back-end as needed.
/// Allocation takes a lock: allocate buffers up front and reuse them on the
/// I/O path.
#[derive(Clone)]
pub struct DmaPool {
    inner: Arc<PoolInner>,
}

impl DmaPool {
    /// A pool that maps its memory through `mapper`.
    pub fn new(mapper: Arc<dyn DmaMapper>) -> Self {
        DmaPool {
            inner: Arc::new(PoolInner {
                mapper,
                chunks: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Whether `buffer` came from this pool, so its IOVA is one this
    /// controller's device can reach (another controller's IOVA could
    /// name this device's own queue memory).
    pub fn owns(&self, buffer: &DmaBuffer) -> bool {
        Arc::ptr_eq(&self.inner, &buffer.pool)
    }

    /// Fails with [`crate::Error::ForeignBuffer`] unless [`DmaPool::owns`]
    /// `buffer`.
    pub(crate) fn check_owns(&self, buffer: &DmaBuffer) -> crate::Result<()> {
        if self.owns(buffer) {
            Ok(())
        } else {
            Err(crate::Error::ForeignBuffer)
        }
    }

    /// A zeroed buffer of at least `len` bytes (rounded up to whole pages).
    pub fn alloc(&self, len: usize) -> Result<DmaBuffer, DmaError> {
        if len == 0 {
            return Err(DmaError::Empty);
        }
        if len > CHUNK_SIZE {
            return Err(DmaError::TooLarge(len));
        }
        let frames = len.div_ceil(PAGE_SIZE);
        let mut chunks = self.inner.chunks.lock().unwrap_or_else(|e| e.into_inner());
        let found = chunks
            .iter_mut()
            .enumerate()
            .find_map(|(index, chunk)| chunk.frames.alloc(frames).map(|frame| (index, frame)));
        let (chunk_index, first_frame) = match found {
            Some(found) => found,
            None => {
                let region = self.inner.mapper.map_dma(CHUNK_SIZE)?;
                let mut allocator = FrameAllocator::new();
                // Frame numbers start at FRAME_BASE, a multiple of the chunk's
                // frame count, so the buddy allocator sees the chunk as one
                // naturally aligned block (starting at 0 it would split it
                // into 32-frame pieces and never serve a whole chunk).
                allocator.add_frame(FRAME_BASE, FRAME_BASE + region.len() / PAGE_SIZE);
                let first = allocator.alloc(frames).ok_or(DmaError::TooLarge(len))?;
                chunks.push(Chunk {
                    region,
                    frames: allocator,
                });
                (chunks.len() - 1, first)
            }
        };
        let region = chunks[chunk_index].region.clone();
        drop(chunks);
        let offset = (first_frame - FRAME_BASE) * PAGE_SIZE;
        let buffer = DmaBuffer {
            pool: Arc::clone(&self.inner),
            chunk_index,
            first_frame,
            frames,
            len,
            iova: region.iova() + offset as u64,
            // SAFETY: `offset + frames * PAGE_SIZE <= region.len()` because
            // the frame allocator only hands out frames it was given, and
            // it was given exactly the region's frames.
            ptr: unsafe { region.host_ptr().add(offset) },
            _region: region,
        };
        // Reused frames may hold an earlier buffer's data.
        buffer.zero();
        Ok(buffer)
    }
}

/// A DMA buffer: host memory the device reaches at [`DmaBuffer::iova`].
/// Owning it means no command is using it, so reading and writing it
/// through slices is sound; hand it to a command and it comes back with
/// the completion.
pub struct DmaBuffer {
    pool: Arc<PoolInner>,
    chunk_index: usize,
    first_frame: usize,
    frames: usize,
    len: usize,
    iova: u64,
    ptr: *mut u8,
    _region: DmaRegion,
}

// SAFETY: the buffer owns its frames exclusively (the allocator never hands
// them out twice), and the mapping is kept alive by `_region`.
unsafe impl Send for DmaBuffer {}
// SAFETY: shared references only allow reads (`as_slice`).
unsafe impl Sync for DmaBuffer {}

impl DmaBuffer {
    /// The device-visible address of the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Usable length in bytes (as requested).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty (never, for an allocated buffer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes reserved, whole pages.
    pub fn capacity(&self) -> usize {
        self.frames * PAGE_SIZE
    }

    /// The host address of the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The contents.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `capacity() >= len` bytes this buffer owns;
        // no command uses the buffer while it is owned here, so nothing
        // writes it concurrently.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The contents, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only
        // reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn zero(&self) {
        // SAFETY: the whole capacity belongs to this buffer, which no
        // command uses yet.
        unsafe { std::ptr::write_bytes(self.ptr, 0, self.capacity()) }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        let mut chunks = self.pool.chunks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(chunk) = chunks.get_mut(self.chunk_index) {
            chunk.frames.dealloc(self.first_frame, self.frames);
        }
    }
}

impl std::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("iova", &format_args!("{:#x}", self.iova))
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimController;

    #[test]
    fn buffers_are_page_aligned_zeroed_and_reused() {
        let sim = SimController::open("sim,size=1M").unwrap();
        let pool = DmaPool::new(sim);
        let mut small = pool.alloc(100).unwrap();
        assert_eq!(small.capacity(), PAGE_SIZE);
        assert_eq!(small.iova() % PAGE_SIZE as u64, 0);
        small.as_mut_slice().fill(0xAB);
        let first_iova = small.iova();
        drop(small);
        let again = pool.alloc(100).unwrap();
        assert_eq!(again.iova(), first_iova, "freed frames are reused");
        assert!(
            again.as_slice().iter().all(|&b| b == 0),
            "reused memory is zeroed"
        );
        // A whole chunk is still available as one buffer next to small ones.
        let whole = pool.alloc(CHUNK_SIZE).unwrap();
        assert_eq!(whole.len(), CHUNK_SIZE);
        assert_eq!(whole.iova() % CHUNK_SIZE as u64, 0);
        assert!(matches!(pool.alloc(0), Err(DmaError::Empty)));
        assert!(matches!(
            pool.alloc(CHUNK_SIZE + 1),
            Err(DmaError::TooLarge(_))
        ));
    }
}
