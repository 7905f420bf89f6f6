//! The VFIO device-fd ioctls every route shares, done with raw ioctls:
//! region info (with its capability chain), IRQ info and
//! `VFIO_DEVICE_SET_IRQS` for MSI-X.
//!
//! The no-IOMMU route ([`super::noiommu`]) and the iommufd route
//! ([`super::iommufd`]) get their device fd without `vfio-ioctls` (which
//! builds a `VfioDevice` only from its own container), so they both drive
//! the device through [`RawDevice`].

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use libc::c_ulong;
use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, VFIO_REGION_INFO_CAP_SPARSE_MMAP,
    VFIO_REGION_INFO_FLAG_CAPS, VFIO_TYPE,
};
use vfio_ioctls::{VfioRegionInfoCap, VfioRegionInfoCapSparseMmap, VfioRegionSparseMmapArea};
use vmm_sys_util::eventfd::EventFd;

use super::RegionInfo;

/// `_IO(VFIO_TYPE, VFIO_BASE + nr)`: every VFIO ioctl has this form.
pub(crate) const fn vfio_io(nr: u32) -> c_ulong {
    ((VFIO_TYPE as c_ulong) << 8) | (VFIO_BASE + nr) as c_ulong
}

const VFIO_DEVICE_GET_REGION_INFO: c_ulong = vfio_io(8);
const VFIO_DEVICE_GET_IRQ_INFO: c_ulong = vfio_io(9);
const VFIO_DEVICE_SET_IRQS: c_ulong = vfio_io(10);

/// `sizeof(struct vfio_region_info)`.
const REGION_INFO_LEN: usize = 32;
/// `sizeof(struct vfio_irq_set)` without its data.
const IRQ_SET_LEN: usize = 20;
/// The most region info (with capabilities) accepted from the kernel.
const REGION_INFO_MAX: usize = 1 << 16;

/// The result of a raw ioctl: the non-negative return value, or errno.
pub(crate) fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// A VFIO device fd, driven with raw ioctls.
#[derive(Debug)]
pub(crate) struct RawDevice {
    device: File,
}

impl RawDevice {
    /// Wraps an open VFIO device fd.
    pub(crate) fn new(device: File) -> RawDevice {
        RawDevice { device }
    }

    /// The device fd.
    pub(crate) fn file(&self) -> &File {
        &self.device
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` for region `index`, with its
    /// capabilities.
    pub(crate) fn region(&self, index: u32) -> io::Result<RegionInfo> {
        let mut len = REGION_INFO_LEN;
        loop {
            // u64 words: the struct is 8-byte aligned. `argsz` and `index`
            // are its first and third u32.
            let mut words = vec![0u64; len.div_ceil(8)];
            let argsz = u32::try_from(words.len() * 8).unwrap_or(u32::MAX);
            let mut header = [0u8; 16];
            header[0..4].copy_from_slice(&argsz.to_ne_bytes());
            header[8..12].copy_from_slice(&index.to_ne_bytes());
            let (first, second) = header.split_at(8);
            words[0] = u64::from_ne_bytes(first.try_into().unwrap_or_default());
            words[1] = u64::from_ne_bytes(second.try_into().unwrap_or_default());
            // SAFETY: the device fd is valid; the kernel writes at most
            // `argsz` bytes, the size of `words`, which is 8-byte aligned as
            // `struct vfio_region_info` requires; the result is checked.
            check(unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                    &self.device,
                    VFIO_DEVICE_GET_REGION_INFO,
                    words.as_mut_ptr(),
                )
            })?;
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let info = parse_region_info(&bytes).map_err(io::Error::other)?;
            // The kernel raises argsz when the capabilities do not fit.
            if info.wanted > bytes.len() {
                if info.wanted <= REGION_INFO_MAX && len < info.wanted {
                    len = info.wanted;
                    continue;
                }
                return Err(io::Error::other(format!(
                    "the kernel wants {} bytes for the info of region {index}",
                    info.wanted
                )));
            }
            return Ok(info.region);
        }
    }

    /// How many interrupts IRQ index `index` has (`VFIO_DEVICE_GET_IRQ_INFO`).
    pub(crate) fn irq_count(&self, index: u32) -> io::Result<u32> {
        // struct vfio_irq_info { argsz, flags, index, count }.
        let mut info = [16u32, 0, index, 0];
        // SAFETY: the device fd is valid; the kernel writes at most
        // `argsz` (16) bytes, the size of `info`; the result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                &self.device,
                VFIO_DEVICE_GET_IRQ_INFO,
                info.as_mut_ptr(),
            )
        })?;
        Ok(info[3])
    }

    /// Enables MSI-X vectors `0..fds.len()`, each signalling its eventfd,
    /// in one `VFIO_DEVICE_SET_IRQS`; with no fds, disables MSI-X.
    pub(crate) fn set_msix(&self, fds: &[&EventFd]) -> io::Result<()> {
        self.set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, fds)
    }

    /// Points IRQ index `index`'s interrupts `0..fds.len()` at the eventfds
    /// (`VFIO_DEVICE_SET_IRQS`); with no fds, turns the index off.
    pub(crate) fn set_irqs(&self, index: u32, fds: &[&EventFd]) -> io::Result<()> {
        let buffer = irq_set_buffer(
            index,
            &fds.iter().map(|fd| fd.as_raw_fd()).collect::<Vec<_>>(),
        )?;
        // SAFETY: the device fd is valid; the kernel reads `argsz` bytes
        // (the whole buffer: the header and one fd per vector), which stay
        // alive for the call; the result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(&self.device, VFIO_DEVICE_SET_IRQS, buffer.as_ptr())
        })?;
        Ok(())
    }
}

/// A `struct vfio_irq_set` for IRQ index `index`: trigger the eventfds
/// `fds` on vectors `0..fds.len()`, or (no fds) turn the index off.
fn irq_set_buffer(index: u32, fds: &[libc::c_int]) -> io::Result<Vec<u32>> {
    let count =
        u32::try_from(fds.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let argsz = u32::try_from(IRQ_SET_LEN + 4 * fds.len())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let data = if fds.is_empty() {
        VFIO_IRQ_SET_DATA_NONE
    } else {
        VFIO_IRQ_SET_DATA_EVENTFD
    };
    let mut buffer = vec![
        argsz,
        data | VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        0, // start
        count,
    ];
    // The data: one int per vector, the eventfd (as the kernel reads it).
    buffer.extend(fds.iter().map(|&fd| fd as u32));
    Ok(buffer)
}

/// A region's info as the kernel filled it, and the `argsz` it wants.
#[derive(Debug)]
struct ParsedRegionInfo {
    region: RegionInfo,
    wanted: usize,
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Parses a filled `struct vfio_region_info` and, when the whole of it is
/// there, its capability chain (the sparse-mmap areas and the MSI-X
/// mappable flag are what BAR0 handling looks at).
fn parse_region_info(bytes: &[u8]) -> Result<ParsedRegionInfo, String> {
    let short = || format!("region info is {} bytes, too short", bytes.len());
    let wanted = u32_at(bytes, 0).ok_or_else(short)? as usize;
    let flags = u32_at(bytes, 4).ok_or_else(short)?;
    let cap_offset = u32_at(bytes, 12).ok_or_else(short)? as usize;
    let size = u64_at(bytes, 16).ok_or_else(short)?;
    let offset = u64_at(bytes, 24).ok_or_else(short)?;
    let mut caps = Vec::new();
    // Capabilities only count once they all fit (argsz not raised).
    if flags & VFIO_REGION_INFO_FLAG_CAPS != 0 && wanted <= bytes.len() {
        let mut at = cap_offset;
        let mut steps = 0;
        while at != 0 {
            steps += 1;
            if at < REGION_INFO_LEN || steps > 64 {
                return Err(format!(
                    "region info capability chain is malformed (at offset {at})"
                ));
            }
            let bad = || format!("region info capability at offset {at} runs past the buffer");
            let id = u16_at(bytes, at).ok_or_else(bad)?;
            let next = u32_at(bytes, at + 4).ok_or_else(bad)? as usize;
            match u32::from(id) {
                VFIO_REGION_INFO_CAP_SPARSE_MMAP => {
                    let count = u32_at(bytes, at + 8).ok_or_else(bad)? as usize;
                    let mut areas = Vec::with_capacity(count.min(64));
                    for i in 0..count {
                        let area = at + 16 + i * 16;
                        areas.push(VfioRegionSparseMmapArea {
                            offset: u64_at(bytes, area).ok_or_else(bad)?,
                            size: u64_at(bytes, area + 8).ok_or_else(bad)?,
                        });
                    }
                    caps.push(VfioRegionInfoCap::SparseMmap(VfioRegionInfoCapSparseMmap {
                        areas,
                    }));
                }
                VFIO_REGION_INFO_CAP_MSIX_MAPPABLE => caps.push(VfioRegionInfoCap::MsixMappable),
                _ => {}
            }
            if next != 0 && next <= at {
                return Err(format!(
                    "region info capability chain goes backwards ({at} → {next})"
                ));
            }
            at = next;
        }
    }
    Ok(ParsedRegionInfo {
        region: RegionInfo {
            flags,
            size,
            offset,
            caps,
        },
        wanted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // _IO(';', 100 + n) from <linux/vfio.h>.
        assert_eq!(vfio_io(0), 0x3b64);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
    }

    fn region_header(argsz: u32, flags: u32, cap_offset: u32, size: u64, offset: u64) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&argsz.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes()); // index
        bytes.extend_from_slice(&cap_offset.to_ne_bytes());
        bytes.extend_from_slice(&size.to_ne_bytes());
        bytes.extend_from_slice(&offset.to_ne_bytes());
        bytes
    }

    #[test]
    fn region_info_and_its_capabilities_are_parsed() {
        // BAR0 of QEMU's NVMe controller: 16 KiB, mmappable, with a sparse
        // area before the MSI-X table and the MSI-X-mappable capability.
        let mut bytes = region_header(0, 0xf, 32, 0x4000, 0x0);
        let sparse_at = 32u32;
        let msix_at = sparse_at + 16 + 2 * 16;
        bytes.extend_from_slice(&(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16).to_ne_bytes());
        bytes.extend_from_slice(&1u16.to_ne_bytes());
        bytes.extend_from_slice(&msix_at.to_ne_bytes());
        bytes.extend_from_slice(&2u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        for (offset, size) in [(0u64, 0x2000u64), (0x3000, 0x1000)] {
            bytes.extend_from_slice(&offset.to_ne_bytes());
            bytes.extend_from_slice(&size.to_ne_bytes());
        }
        bytes.extend_from_slice(&(VFIO_REGION_INFO_CAP_MSIX_MAPPABLE as u16).to_ne_bytes());
        bytes.extend_from_slice(&1u16.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        let len = bytes.len() as u32;
        bytes[0..4].copy_from_slice(&len.to_ne_bytes());

        let parsed = parse_region_info(&bytes).unwrap();
        assert_eq!(parsed.wanted, bytes.len());
        assert_eq!(parsed.region.flags, 0xf);
        assert_eq!(parsed.region.size, 0x4000);
        assert_eq!(
            parsed.region.caps,
            vec![
                VfioRegionInfoCap::SparseMmap(VfioRegionInfoCapSparseMmap {
                    areas: vec![
                        VfioRegionSparseMmapArea {
                            offset: 0,
                            size: 0x2000
                        },
                        VfioRegionSparseMmapArea {
                            offset: 0x3000,
                            size: 0x1000
                        },
                    ]
                }),
                VfioRegionInfoCap::MsixMappable,
            ]
        );
        // The chosen BAR0 window is the same as through vfio-ioctls.
        let window = super::super::bar::choose_window(
            parsed.region.size,
            parsed.region.flags,
            &parsed.region.caps,
        )
        .unwrap();
        assert_eq!(window.len, 0x2000);
    }

    #[test]
    fn region_info_asking_for_more_or_garbled_is_handled() {
        // The kernel raised argsz: capabilities are not parsed yet.
        let bytes = region_header(200, 0xf, 32, 0x4000, 0x1000);
        let parsed = parse_region_info(&bytes).unwrap();
        assert_eq!(parsed.wanted, 200);
        assert!(parsed.region.caps.is_empty());
        assert_eq!(parsed.region.offset, 0x1000);
        // Too short.
        assert!(parse_region_info(&[0u8; 16]).is_err());
        // A chain pointing into the header, past the end, or looping.
        let mut bytes = region_header(48, 0xf, 8, 0x4000, 0);
        bytes.resize(48, 0);
        assert!(parse_region_info(&bytes).is_err());
        let mut bytes = region_header(40, 0xf, 36, 0x4000, 0);
        bytes.resize(40, 0);
        assert!(parse_region_info(&bytes).is_err());
        let mut bytes = region_header(40, 0xf, 32, 0x4000, 0);
        bytes.extend_from_slice(&7u16.to_ne_bytes());
        bytes.extend_from_slice(&1u16.to_ne_bytes());
        bytes.extend_from_slice(&32u32.to_ne_bytes());
        assert!(parse_region_info(&bytes).is_err());
        // A sparse area count larger than the buffer.
        let mut bytes = region_header(48, 0xf, 32, 0x4000, 0);
        bytes.extend_from_slice(&(VFIO_REGION_INFO_CAP_SPARSE_MMAP as u16).to_ne_bytes());
        bytes.extend_from_slice(&1u16.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(&1000u32.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        assert!(parse_region_info(&bytes).is_err());
    }

    #[test]
    fn irq_sets_are_laid_out_like_the_kernel_struct() {
        let enable = irq_set_buffer(VFIO_PCI_MSIX_IRQ_INDEX, &[7, 8, 9]).unwrap();
        assert_eq!(
            enable,
            vec![
                32,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                VFIO_PCI_MSIX_IRQ_INDEX,
                0,
                3,
                7,
                8,
                9
            ]
        );
        let disable = irq_set_buffer(VFIO_PCI_MSIX_IRQ_INDEX, &[]).unwrap();
        assert_eq!(
            disable,
            vec![
                20,
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                VFIO_PCI_MSIX_IRQ_INDEX,
                0,
                0
            ]
        );
    }
}
