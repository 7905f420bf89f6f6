//! The seam between the NVMe core and a back-end. The driver needs exactly
//! three things from a controller, and both back-ends (VFIO and the
//! simulator) provide the same three:
//!
//! * registers: BAR0 as mapped memory, accessed with volatile 32-bit
//!   loads and stores ([`Mmio`]);
//! * DMA: memory with a host address and an IOVA ([`DmaMapper`]);
//! * interrupts: one eventfd per MSI-X vector.

use std::sync::Arc;

use isonvme_mapping::CpuSet;
use vmm_sys_util::eventfd::EventFd;

use crate::dma::DmaRegion;
use crate::mmio::Mmio;

/// Why a back-end operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Mapping DMA memory failed.
    #[error("DMA mapping of {len} bytes failed: {reason}")]
    DmaMap {
        /// Bytes requested.
        len: usize,
        /// What went wrong, and the fix where known.
        reason: String,
    },
    /// Enabling interrupt vectors failed.
    #[error("enabling {count} interrupt vectors failed: {reason}")]
    Vectors {
        /// Vectors requested.
        count: u16,
        /// What went wrong.
        reason: String,
    },
    /// An operating-system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Maps memory for the device.
pub trait DmaMapper: Send + Sync {
    /// Maps at least `len` bytes (a multiple of 4 KiB) of zeroed memory
    /// that the device can read and write at the returned region's IOVA.
    fn map_dma(&self, len: usize) -> Result<DmaRegion, TransportError>;
}

/// A controller back-end: registers, DMA and interrupt vectors.
pub trait Transport: DmaMapper {
    /// A name for messages: `sim` or the PCI address.
    fn name(&self) -> &str;

    /// The BAR0 register window.
    fn registers(&self) -> Mmio;

    /// The MSI-X table size: how many interrupt vectors the device has.
    fn max_vectors(&self) -> u16;

    /// Enables vectors `0..count` in one step and returns one eventfd per
    /// vector, signalled when the vector fires.
    fn enable_vectors(&self, count: u16) -> Result<Vec<Arc<EventFd>>, TransportError>;

    /// Asks the host to deliver `vector`'s interrupts only to `cpus` (the
    /// userspace form of restricted IRQ affinity).
    fn set_vector_affinity(
        &self,
        vector: u16,
        cpus: &CpuSet,
    ) -> Result<AffinityOutcome, TransportError>;

    /// An eventfd the host signals when it wants the device back (VFIO's
    /// device request: a hot-unplug is waiting for this process to let go).
    /// `None` where the back-end has no such notice.
    fn removal_notice(&self) -> Option<Arc<EventFd>> {
        None
    }

    /// Thread ids of the back-end's own busy threads (the simulated
    /// device's), which are housekeeping work: the runtime confines them to
    /// the housekeeping CPUs. Empty for real hardware.
    fn helper_threads(&self) -> Vec<i32> {
        Vec::new()
    }
}

/// What became of a request to steer a vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AffinityOutcome {
    /// The vector now targets the CPUs asked for.
    Applied,
    /// The host would not allow it; the text says why and how to fix it.
    NotPermitted(String),
}
