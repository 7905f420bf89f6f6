//! BAR0, the NVMe register window, mapped straight from the VFIO device
//! fd: doorbells are plain stores, never system calls.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::NonNull;

use vfio_ioctls::VfioRegionInfoCap;

/// `VFIO_REGION_INFO_FLAG_MMAP`.
const REGION_FLAG_MMAP: u32 = 4;

/// The NVMe registers end and the doorbells start here.
pub(crate) const DOORBELL_BASE: u64 = 0x1000;

/// The smallest useful window: the registers and the admin queue's two
/// doorbells at the smallest stride (4 bytes).
const MIN_WINDOW: u64 = DOORBELL_BASE + 8;

/// The part of BAR0 to map, relative to the start of the region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BarWindow {
    /// Offset within the region (always 0: the registers start there).
    pub(crate) offset: u64,
    /// Bytes to map.
    pub(crate) len: u64,
}

/// Chooses the mappable part of BAR0 that holds the registers and the
/// doorbells, from the region's size, flags and capabilities. When the
/// kernel restricts mmap to sparse areas (typically around an MSI-X table
/// inside BAR0), the area starting at offset 0 is used; there is no
/// fallback to read/write system calls, which would put a syscall on every
/// doorbell.
pub(crate) fn choose_window(
    size: u64,
    flags: u32,
    caps: &[VfioRegionInfoCap],
) -> Result<BarWindow, String> {
    const NO_FALLBACK: &str = "isonvme rings doorbells with plain stores and does not fall back \
                               to read/write system calls on the I/O path";
    if size == 0 {
        return Err("the device reports no BAR0 (size 0)".to_owned());
    }
    if flags & REGION_FLAG_MMAP == 0 {
        return Err(format!(
            "the kernel does not allow BAR0 to be mmapped (region flags {flags:#x}); {NO_FALLBACK}"
        ));
    }
    let sparse = caps.iter().find_map(|cap| match cap {
        VfioRegionInfoCap::SparseMmap(sparse) => Some(sparse),
        _ => None,
    });
    let (offset, len) = match sparse {
        None => (0, size),
        Some(sparse) => {
            let Some(first) = sparse
                .areas
                .iter()
                .filter(|a| a.size > 0)
                .min_by_key(|a| a.offset)
            else {
                return Err(format!("BAR0 has no mmappable area; {NO_FALLBACK}"));
            };
            if first.offset != 0 {
                return Err(format!(
                    "BAR0's first mmappable area starts at {:#x}, so the registers at 0..{DOORBELL_BASE:#x} \
                     cannot be mapped (something the kernel protects, usually the MSI-X table, \
                     sits at the start of BAR0); {NO_FALLBACK}",
                    first.offset
                ));
            }
            (0, first.size.min(size))
        }
    };
    if len < MIN_WINDOW {
        return Err(format!(
            "the mmappable part of BAR0 is only {len:#x} bytes, so the doorbells at \
             {DOORBELL_BASE:#x} are outside it (something the kernel protects, usually the MSI-X \
             table, follows the registers); {NO_FALLBACK}"
        ));
    }
    Ok(BarWindow { offset, len })
}

/// How many queue pairs' doorbells a window of `len` bytes covers at the
/// doorbell stride `stride`.
pub(crate) fn queues_covered(len: u64, stride: u64) -> u64 {
    len.saturating_sub(DOORBELL_BASE) / (2 * stride.max(4))
}

/// A shared mapping of part of the device fd. Unmapped on drop.
#[derive(Debug)]
pub(crate) struct BarMapping {
    base: NonNull<u8>,
    len: usize,
    /// A SIGBUS on the mapping reads all-ones instead of killing us.
    guard: Option<super::sigbus::Guard>,
}

// SAFETY: the mapping is plain device memory; the pointer is only used to
// unmap it on drop and (through `Mmio`) for volatile register accesses,
// which are valid from any thread.
unsafe impl Send for BarMapping {}
// SAFETY: as for `Send`; `BarMapping` has no interior state.
unsafe impl Sync for BarMapping {}

impl BarMapping {
    /// Maps `len` bytes of `device` at file offset `offset`, read/write and
    /// shared.
    pub(crate) fn map(device: &File, offset: u64, len: usize) -> std::io::Result<BarMapping> {
        let file_offset = libc::off_t::try_from(offset).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("region offset {offset:#x} does not fit off_t"),
            )
        })?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no
        // MAP_FIXED), so no existing memory is affected; the fd is valid
        // for the call (borrowed from `device`); the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                device.as_raw_fd(),
                file_offset,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
        let guard = Some(super::sigbus::guard(base.as_ptr(), len));
        Ok(BarMapping { base, len, guard })
    }

    /// The first byte of the mapping.
    pub(crate) fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Bytes mapped.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for BarMapping {
    fn drop(&mut self) {
        // Unguarded first: the handler must not remap it once it is gone.
        drop(self.guard.take());
        // SAFETY: `base`/`len` are exactly the mapping `map` created, and
        // nothing can use it any more: every `Mmio` holds this owner alive.
        let result = unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        if result != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "unmapping BAR0 failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfio_ioctls::{VfioRegionInfoCapSparseMmap, VfioRegionSparseMmapArea};

    fn sparse(areas: &[(u64, u64)]) -> Vec<VfioRegionInfoCap> {
        vec![VfioRegionInfoCap::SparseMmap(VfioRegionInfoCapSparseMmap {
            areas: areas
                .iter()
                .map(|&(offset, size)| VfioRegionSparseMmapArea { offset, size })
                .collect(),
        })]
    }

    #[test]
    fn a_plain_mappable_bar_is_mapped_whole() {
        let window = choose_window(0x4000, REGION_FLAG_MMAP | 3, &[]).unwrap();
        assert_eq!(
            window,
            BarWindow {
                offset: 0,
                len: 0x4000
            }
        );
        let caps = [VfioRegionInfoCap::MsixMappable];
        assert_eq!(choose_window(0x4000, 7, &caps).unwrap().len, 0x4000);
    }

    #[test]
    fn sparse_areas_use_the_one_holding_the_registers() {
        // QEMU's NVMe: MSI-X table at 0x2000 inside a 16 KiB BAR0.
        let caps = sparse(&[(0x3000, 0x1000), (0, 0x2000)]);
        let window = choose_window(0x4000, REGION_FLAG_MMAP | 3, &caps).unwrap();
        assert_eq!(
            window,
            BarWindow {
                offset: 0,
                len: 0x2000
            }
        );
        assert_eq!(queues_covered(window.len, 4), 512);
    }

    #[test]
    fn unusable_bars_are_refused_clearly() {
        let text = choose_window(0x4000, 3, &[]).unwrap_err();
        assert!(text.contains("does not allow BAR0 to be mmapped"), "{text}");
        assert!(text.contains("does not fall back"), "{text}");
        let text = choose_window(0, REGION_FLAG_MMAP, &[]).unwrap_err();
        assert!(text.contains("no BAR0"), "{text}");
        let text =
            choose_window(0x4000, REGION_FLAG_MMAP, &sparse(&[(0x1000, 0x3000)])).unwrap_err();
        assert!(text.contains("starts at 0x1000"), "{text}");
        let text = choose_window(0x4000, REGION_FLAG_MMAP, &sparse(&[(0, 0x1000)])).unwrap_err();
        assert!(
            text.contains("doorbells at 0x1000 are outside it"),
            "{text}"
        );
        let text = choose_window(0x4000, REGION_FLAG_MMAP, &sparse(&[])).unwrap_err();
        assert!(text.contains("no mmappable area"), "{text}");
    }

    #[test]
    fn a_file_mapping_round_trips() {
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &[0u8; 8192]).unwrap();
        let mapping = BarMapping::map(&file, 4096, 4096).unwrap();
        assert_eq!(mapping.len(), 4096);
        // SAFETY: the mapping is 4096 bytes, live, and aligned.
        unsafe { mapping.base().cast::<u32>().as_ptr().write_volatile(0xabcd) };
        drop(mapping);
        let mut bytes = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut bytes, 4096).unwrap();
        assert_eq!(u32::from_ne_bytes(bytes), 0xabcd);
        assert!(BarMapping::map(&file, u64::MAX, 4096).is_err());
    }
}
