//! Where DMA memory goes in the device's address space: the IOMMU's valid
//! IOVA ranges (from `VFIO_IOMMU_GET_INFO`), minus the MSI window, handed
//! out 2 MiB-aligned with an unmapped guard gap after every region.

/// The x86 MSI window: writes here are interrupts, not memory, so it is
/// never a usable IOVA (the kernel reports it as reserved, but older kernels
/// do not report ranges at all).
pub const MSI_WINDOW: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

/// Where IOVAs start when the kernel does not report valid ranges, and the
/// preferred floor otherwise: above 4 GiB, so a device or driver that
/// truncates addresses to 32 bits faults instead of hitting other memory.
pub const PREFERRED_BASE: u64 = 0x1_0000_0000;

/// The top of the assumed IOVA space when the kernel reports no ranges:
/// 39 bits, the narrowest address width Intel VT-d implementations (and
/// QEMU's intel-iommu by default) support.
pub const DEFAULT_LIMIT: u64 = (1 << 39) - 1;

/// The lowest IOVA ever handed out: IOVA 0 stays unmapped, so a zero
/// address from the driver faults.
const FLOOR: u64 = 2 << 20;

/// `VFIO_IOMMU_INFO_CAPS` in `vfio_iommu_type1_info.flags`.
const INFO_CAPS: u32 = 2;
/// `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`.
const CAP_IOVA_RANGE: u16 = 1;
/// `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`.
const CAP_DMA_AVAIL: u16 = 3;
/// `sizeof(struct vfio_iommu_type1_info)`.
pub(crate) const INFO_HEADER_LEN: usize = 24;

/// What the type1 IOMMU reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IommuInfo {
    /// Bitmap of supported IOMMU page sizes (`iova_pgsizes`).
    pub page_sizes: u64,
    /// Valid IOVA ranges, inclusive, if the kernel reports them.
    pub iova_ranges: Option<Vec<(u64, u64)>>,
    /// How many more DMA mappings the container accepts, if reported.
    pub dma_avail: Option<u32>,
}

impl IommuInfo {
    /// The smallest IOMMU page size (4 KiB when unknown).
    pub fn min_page_size(&self) -> u64 {
        if self.page_sizes == 0 {
            4096
        } else {
            1 << self.page_sizes.trailing_zeros()
        }
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Parses the buffer `VFIO_IOMMU_GET_INFO` filled: the
/// `vfio_iommu_type1_info` header and its capability chain.
pub fn parse_iommu_info(bytes: &[u8]) -> Result<IommuInfo, String> {
    let short = || format!("IOMMU info is {} bytes, too short", bytes.len());
    let flags = u32_at(bytes, 4).ok_or_else(short)?;
    let page_sizes = u64_at(bytes, 8).ok_or_else(short)?;
    let mut info = IommuInfo {
        page_sizes,
        ..IommuInfo::default()
    };
    if flags & INFO_CAPS == 0 {
        return Ok(info);
    }
    let mut offset = u32_at(bytes, 16).ok_or_else(short)? as usize;
    // Capabilities follow the header, each pointing further on; stop at 0
    // and refuse anything that loops or runs past the buffer.
    while offset != 0 {
        if offset < INFO_HEADER_LEN {
            return Err(format!(
                "IOMMU info capability at offset {offset} overlaps the header"
            ));
        }
        let bad = || {
            format!(
                "IOMMU info capability at offset {offset} runs past the {}-byte buffer",
                bytes.len()
            )
        };
        let id = u16_at(bytes, offset).ok_or_else(bad)?;
        let next = u32_at(bytes, offset + 4).ok_or_else(bad)? as usize;
        match id {
            CAP_IOVA_RANGE => {
                let count = u32_at(bytes, offset + 8).ok_or_else(bad)? as usize;
                let mut ranges = Vec::with_capacity(count.min(64));
                for i in 0..count {
                    let at = offset + 16 + i * 16;
                    let start = u64_at(bytes, at).ok_or_else(bad)?;
                    let end = u64_at(bytes, at + 8).ok_or_else(bad)?;
                    if start <= end {
                        ranges.push((start, end));
                    }
                }
                info.iova_ranges = Some(ranges);
            }
            CAP_DMA_AVAIL => info.dma_avail = Some(u32_at(bytes, offset + 8).ok_or_else(bad)?),
            _ => {}
        }
        if next != 0 && next <= offset {
            return Err(format!(
                "IOMMU info capability chain goes backwards ({offset} → {next})"
            ));
        }
        offset = next;
    }
    Ok(info)
}

/// Hands out IOVAs from the usable parts of the IOMMU's address space.
/// Addresses are never reused: regions stay mapped until the device closes.
#[derive(Debug, Clone)]
pub struct IovaSpace {
    /// Free segments, inclusive, in the order they are used: everything at
    /// or above [`PREFERRED_BASE`] first, then what lies below.
    segments: Vec<(u64, u64)>,
    align: u64,
    guard: u64,
}

impl IovaSpace {
    /// The usable space given the IOMMU's valid ranges (`None`: not
    /// reported, assume [`PREFERRED_BASE`]..=[`DEFAULT_LIMIT`]). Regions are
    /// aligned to `align` (a power of two) and followed by `guard` unmapped
    /// bytes.
    pub fn new(valid: Option<&[(u64, u64)]>, align: u64, guard: u64) -> Self {
        let default = [(PREFERRED_BASE, DEFAULT_LIMIT)];
        let valid = valid.unwrap_or(&default);
        let mut pieces: Vec<(u64, u64)> = Vec::new();
        for &(start, end) in valid {
            let start = start.max(FLOOR);
            if start > end {
                continue;
            }
            // Cut out the MSI window.
            let (msi_start, msi_end) = MSI_WINDOW;
            if end < msi_start || start > msi_end {
                pieces.push((start, end));
            } else {
                if start < msi_start {
                    pieces.push((start, msi_start - 1));
                }
                if end > msi_end {
                    pieces.push((msi_end + 1, end));
                }
            }
        }
        // Split at the preferred base and put the high part first.
        let mut high = Vec::new();
        let mut low = Vec::new();
        for (start, end) in pieces {
            if start >= PREFERRED_BASE {
                high.push((start, end));
            } else if end < PREFERRED_BASE {
                low.push((start, end));
            } else {
                low.push((start, PREFERRED_BASE - 1));
                high.push((PREFERRED_BASE, end));
            }
        }
        high.sort_unstable();
        low.sort_unstable();
        high.extend(low);
        IovaSpace {
            segments: high,
            align: align.max(1).next_power_of_two(),
            guard,
        }
    }

    /// An IOVA for `size` bytes, or `None` when no segment has room.
    pub fn alloc(&mut self, size: u64) -> Option<u64> {
        if size == 0 {
            return None;
        }
        for segment in &mut self.segments {
            let Some(start) = segment.0.checked_next_multiple_of(self.align) else {
                continue;
            };
            let Some(last) = start.checked_add(size - 1) else {
                continue;
            };
            if last > segment.1 {
                continue;
            }
            // The next region starts after the guard gap; an exhausted
            // segment becomes empty (start > end).
            segment.0 = last
                .checked_add(1)
                .and_then(|next| next.checked_add(self.guard))
                .unwrap_or(u64::MAX);
            if segment.0 > segment.1 || segment.0 == u64::MAX {
                segment.0 = 1;
                segment.1 = 0;
            }
            return Some(start);
        }
        None
    }

    /// The free segments, in the order they are used (for messages).
    pub fn segments(&self) -> &[(u64, u64)] {
        &self.segments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB2: u64 = 2 << 20;

    fn overlaps_msi(iova: u64, size: u64) -> bool {
        iova <= MSI_WINDOW.1 && iova + size > MSI_WINDOW.0
    }

    #[test]
    fn without_reported_ranges_iovas_start_above_4g() {
        let mut space = IovaSpace::new(None, MB2, MB2);
        let a = space.alloc(MB2).unwrap();
        let b = space.alloc(MB2).unwrap();
        assert_eq!(a, PREFERRED_BASE);
        assert_eq!(
            b,
            PREFERRED_BASE + 2 * MB2,
            "a guard gap follows each region"
        );
        assert!(b + MB2 - 1 <= DEFAULT_LIMIT);
    }

    #[test]
    fn reported_ranges_are_respected_and_high_memory_preferred() {
        // What intel-iommu reports on a 39-bit IOMMU: everything but the
        // MSI window.
        let ranges = [(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)];
        let mut space = IovaSpace::new(Some(&ranges), MB2, MB2);
        assert_eq!(space.alloc(MB2), Some(PREFERRED_BASE));
        // A range entirely below 4 GiB is used, skipping the MSI window
        // and the zero page.
        let ranges = [(0, 0xffff_ffff)];
        let mut space = IovaSpace::new(Some(&ranges), MB2, 0);
        let mut seen = Vec::new();
        while let Some(iova) = space.alloc(MB2) {
            assert!(!overlaps_msi(iova, MB2), "{iova:#x}");
            assert!(iova >= MB2, "{iova:#x}");
            assert!(iova + MB2 - 1 <= 0xffff_ffff);
            seen.push(iova);
        }
        // 4 GiB less the first 2 MiB and the 1 MiB MSI window (which costs
        // its 2 MiB block, the alignment wastes the rest).
        assert_eq!(seen.len(), 2048 - 2);
        assert_eq!(seen[0], MB2);
    }

    #[test]
    fn the_msi_window_is_never_handed_out() {
        // A range straddling the window, with unaligned edges.
        let ranges = [(0xfe00_1000, 0xff10_0000)];
        let mut space = IovaSpace::new(Some(&ranges), 4096, 0);
        while let Some(iova) = space.alloc(0x10_0000) {
            assert!(!overlaps_msi(iova, 0x10_0000), "{iova:#x}");
        }
        let ranges = [MSI_WINDOW];
        let mut space = IovaSpace::new(Some(&ranges), 4096, 0);
        assert_eq!(space.alloc(4096), None);
    }

    #[test]
    fn exhaustion_and_odd_sizes_fail_cleanly() {
        let ranges = [(PREFERRED_BASE, PREFERRED_BASE + 3 * MB2 - 1)];
        let mut space = IovaSpace::new(Some(&ranges), MB2, MB2);
        assert_eq!(space.alloc(MB2), Some(PREFERRED_BASE));
        assert_eq!(space.alloc(MB2), Some(PREFERRED_BASE + 2 * MB2));
        assert_eq!(space.alloc(MB2), None);
        assert_eq!(space.alloc(0), None);
        let mut space = IovaSpace::new(Some(&[(u64::MAX - MB2, u64::MAX)]), MB2, MB2);
        assert_eq!(space.alloc(MB2), Some(u64::MAX - MB2 + 1));
        assert_eq!(space.alloc(MB2), None);
        assert_eq!(space.alloc(u64::MAX), None);
        let mut space = IovaSpace::new(Some(&[(u64::MAX - 4095, u64::MAX)]), 4096, MB2);
        assert_eq!(space.alloc(4096), Some(u64::MAX - 4095));
        assert_eq!(space.alloc(4096), None);
    }

    fn info_buffer(flags: u32, caps: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut bytes = vec![0u8; INFO_HEADER_LEN];
        bytes[4..8].copy_from_slice(&flags.to_ne_bytes());
        bytes[8..16].copy_from_slice(&0x4020_1000u64.to_ne_bytes());
        let mut offset = INFO_HEADER_LEN;
        if !caps.is_empty() {
            bytes[16..20].copy_from_slice(&(offset as u32).to_ne_bytes());
        }
        for (i, (id, body)) in caps.iter().enumerate() {
            let next = if i + 1 == caps.len() {
                0
            } else {
                offset + 8 + body.len()
            };
            bytes.extend_from_slice(&id.to_ne_bytes());
            bytes.extend_from_slice(&1u16.to_ne_bytes());
            bytes.extend_from_slice(&(next as u32).to_ne_bytes());
            bytes.extend_from_slice(body);
            offset = next;
        }
        let len = bytes.len() as u32;
        bytes[0..4].copy_from_slice(&len.to_ne_bytes());
        bytes
    }

    #[test]
    fn iommu_info_capabilities_are_parsed() {
        let mut ranges = Vec::new();
        ranges.extend_from_slice(&2u32.to_ne_bytes());
        ranges.extend_from_slice(&0u32.to_ne_bytes());
        for (start, end) in [(0u64, 0xfedf_ffffu64), (0xfef0_0000, (1 << 39) - 1)] {
            ranges.extend_from_slice(&start.to_ne_bytes());
            ranges.extend_from_slice(&end.to_ne_bytes());
        }
        let avail = 65535u32.to_ne_bytes().to_vec();
        let buffer = info_buffer(
            INFO_CAPS | 1,
            &[(CAP_DMA_AVAIL, avail), (CAP_IOVA_RANGE, ranges)],
        );
        let info = parse_iommu_info(&buffer).unwrap();
        assert_eq!(info.page_sizes, 0x4020_1000);
        assert_eq!(info.min_page_size(), 4096);
        assert_eq!(info.dma_avail, Some(65535));
        assert_eq!(
            info.iova_ranges.as_deref(),
            Some(&[(0, 0xfedf_ffff), (0xfef0_0000, (1 << 39) - 1)][..])
        );
    }

    #[test]
    fn iommu_info_without_caps_or_garbled_is_handled() {
        let info = parse_iommu_info(&info_buffer(1, &[])).unwrap();
        assert_eq!(info.iova_ranges, None);
        assert!(parse_iommu_info(&[0u8; 8]).is_err());
        // A capability pointing past the end.
        let mut buffer = info_buffer(INFO_CAPS, &[]);
        buffer[16..20].copy_from_slice(&4096u32.to_ne_bytes());
        assert!(parse_iommu_info(&buffer).is_err());
        // A range count larger than the buffer.
        let mut body = Vec::new();
        body.extend_from_slice(&1000u32.to_ne_bytes());
        body.extend_from_slice(&0u32.to_ne_bytes());
        let buffer = info_buffer(INFO_CAPS, &[(CAP_IOVA_RANGE, body)]);
        assert!(parse_iommu_info(&buffer).is_err());
        // A chain that loops.
        let mut buffer = info_buffer(INFO_CAPS, &[(7, vec![0; 8]), (8, vec![0; 8])]);
        let second = INFO_HEADER_LEN + 16;
        buffer[second + 4..second + 8].copy_from_slice(&(INFO_HEADER_LEN as u32).to_ne_bytes());
        assert!(parse_iommu_info(&buffer).is_err());
    }
}
