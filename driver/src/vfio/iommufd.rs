//! The iommufd/cdev route, with raw ioctls.
//!
//! Since Linux 6.6 a VFIO device can be opened without a container or a
//! group: vfio-pci gives every device a character device,
//! `/dev/vfio/devices/vfioN` (sysfs: `<device>/vfio-dev/vfioN`), which is
//! bound to an iommufd (`/dev/iommu`) and attached to an I/O address space
//! (IOAS) there. Kernels built without `CONFIG_VFIO_CONTAINER` only offer
//! this route. `vfio-ioctls` 0.5 does not drive it and `vfio-bindings`
//! lacks its structures, so they are defined here from the uapi headers
//! (`linux/iommufd.h`, `linux/vfio.h`), with layout tests.
//!
//! The flow: open `/dev/iommu`; `IOMMU_IOAS_ALLOC`; open the cdev;
//! `VFIO_DEVICE_BIND_IOMMUFD`; `VFIO_DEVICE_ATTACH_IOMMUFD_PT` with the
//! IOAS; `IOMMU_IOAS_IOVA_RANGES` for the usable IOVAs. DMA memory is
//! mapped with `IOMMU_IOAS_MAP` at fixed IOVAs and unmapped with
//! `IOMMU_IOAS_UNMAP`. The device fd then takes the same ioctls as in the
//! other routes ([`super::raw`]). Closing the device fd unbinds it; closing
//! the iommufd destroys the IOAS and whatever is still mapped in it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libc::c_ulong;
use vfio_bindings::bindings::vfio::VFIO_TYPE;

use super::error::VfioError;
use super::raw::{check, vfio_io, RawDevice};

/// `_IO(IOMMUFD_TYPE, nr)`; `IOMMUFD_TYPE` is `';'`, like `VFIO_TYPE`.
const fn iommufd_io(nr: u32) -> c_ulong {
    ((VFIO_TYPE as c_ulong) << 8) | nr as c_ulong
}

/// `IOMMUFD_CMD_IOAS_ALLOC` (`IOMMUFD_CMD_BASE` 0x80 + 1).
const IOMMU_IOAS_ALLOC: c_ulong = iommufd_io(0x81);
/// `IOMMUFD_CMD_IOAS_IOVA_RANGES`.
const IOMMU_IOAS_IOVA_RANGES: c_ulong = iommufd_io(0x84);
/// `IOMMUFD_CMD_IOAS_MAP`.
const IOMMU_IOAS_MAP: c_ulong = iommufd_io(0x85);
/// `IOMMUFD_CMD_IOAS_UNMAP`.
const IOMMU_IOAS_UNMAP: c_ulong = iommufd_io(0x86);
/// `VFIO_DEVICE_BIND_IOMMUFD`: `_IO(VFIO_TYPE, VFIO_BASE + 18)`.
const VFIO_DEVICE_BIND_IOMMUFD: c_ulong = vfio_io(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: `_IO(VFIO_TYPE, VFIO_BASE + 19)`.
const VFIO_DEVICE_ATTACH_IOMMUFD_PT: c_ulong = vfio_io(19);

/// `IOMMU_IOAS_MAP_FIXED_IOVA`: map at the given IOVA.
const IOMMU_IOAS_MAP_FIXED_IOVA: u32 = 1 << 0;
/// `IOMMU_IOAS_MAP_WRITEABLE`: the device may write.
const IOMMU_IOAS_MAP_WRITEABLE: u32 = 1 << 1;
/// `IOMMU_IOAS_MAP_READABLE`: the device may read.
const IOMMU_IOAS_MAP_READABLE: u32 = 1 << 2;

/// The most IOVA ranges accepted from the kernel.
const MAX_RANGES: u32 = 4096;

/// `struct iommu_ioas_alloc`.
#[repr(C)]
#[derive(Debug, Default)]
struct IommuIoasAlloc {
    size: u32,
    flags: u32,
    out_ioas_id: u32,
}

/// `struct iommu_iova_range` (inclusive).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct IommuIovaRange {
    start: u64,
    last: u64,
}

/// `struct iommu_ioas_iova_ranges`.
#[repr(C)]
#[derive(Debug, Default)]
struct IommuIoasIovaRanges {
    size: u32,
    ioas_id: u32,
    num_iovas: u32,
    reserved: u32,
    allowed_iovas: u64,
    out_iova_alignment: u64,
}

/// `struct iommu_ioas_map`.
#[repr(C)]
#[derive(Debug, Default)]
struct IommuIoasMap {
    size: u32,
    flags: u32,
    ioas_id: u32,
    reserved: u32,
    user_va: u64,
    length: u64,
    iova: u64,
}

/// `struct iommu_ioas_unmap`.
#[repr(C)]
#[derive(Debug, Default)]
struct IommuIoasUnmap {
    size: u32,
    ioas_id: u32,
    iova: u64,
    length: u64,
}

/// `struct vfio_device_bind_iommufd` (without the later token fields,
/// which `argsz` leaves out).
#[repr(C)]
#[derive(Debug, Default)]
struct VfioDeviceBindIommufd {
    argsz: u32,
    flags: u32,
    iommufd: i32,
    out_devid: u32,
}

/// `struct vfio_device_attach_iommufd_pt` (without the later PASID field).
#[repr(C)]
#[derive(Debug, Default)]
struct VfioDeviceAttachIommufdPt {
    argsz: u32,
    flags: u32,
    pt_id: u32,
}

/// `size_of::<T>()` as the `u32` the structures' size fields hold.
const fn size32<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// The VFIO cdev name of the PCI function whose sysfs directory is
/// `device_dir` (`vfioN` from `<device>/vfio-dev/vfioN`), if vfio-pci made
/// one (the device is bound to it and the kernel has
/// `CONFIG_VFIO_DEVICE_CDEV`). Kernels 6.1 to 6.5 have the `vfio-dev`
/// device too, but without a character device: only an entry with a `dev`
/// attribute (its device number) counts.
pub(crate) fn find_cdev(device_dir: &Path) -> Option<String> {
    let class_dir = device_dir.join("vfio-dev");
    let mut names: Vec<String> = std::fs::read_dir(&class_dir)
        .ok()?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| {
            name.strip_prefix("vfio")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|name| class_dir.join(name).join("dev").is_file())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The device node of cdev `name` under `dev_root` (`/dev`).
pub(crate) fn cdev_node(dev_root: &Path, name: &str) -> PathBuf {
    dev_root.join("vfio/devices").join(name)
}

/// The iommufd node under `dev_root` (`/dev`).
pub(crate) fn iommu_node(dev_root: &Path) -> PathBuf {
    dev_root.join("iommu")
}

/// A device opened through its VFIO cdev, bound to an iommufd and attached
/// to an IOAS. Field order is drop order: the device fd (unbinding it from
/// the iommufd) before the iommufd (destroying the IOAS).
#[derive(Debug)]
pub(crate) struct IommufdDevice {
    device: RawDevice,
    iommufd: File,
    ioas: u32,
}

impl IommufdDevice {
    /// Opens `bdf` (in IOMMU group `group`) through cdev node `cdev`, with
    /// the iommufd `iommu` (`/dev/iommu`).
    pub(crate) fn open(
        bdf: &str,
        group: u32,
        cdev: &Path,
        iommu: &Path,
    ) -> Result<IommufdDevice, VfioError> {
        let open_node = |path: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map_err(|source| match source.raw_os_error() {
                    Some(libc::EACCES) | Some(libc::EPERM) => VfioError::IommufdNotPermitted {
                        bdf: bdf.to_owned(),
                        path: path.to_path_buf(),
                        cdev: cdev.to_path_buf(),
                    },
                    Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
                        VfioError::IommufdUnavailable {
                            bdf: bdf.to_owned(),
                            reason: format!("{} cannot be opened ({source})", path.display()),
                        }
                    }
                    Some(libc::EBUSY) => VfioError::Busy {
                        bdf: bdf.to_owned(),
                        group,
                    },
                    _ => VfioError::Io {
                        bdf: bdf.to_owned(),
                        what: format!("opening {}", path.display()),
                        source,
                    },
                })
        };
        let io_error = |what: &str, source: io::Error| VfioError::Io {
            bdf: bdf.to_owned(),
            what: what.to_owned(),
            source,
        };

        let iommufd = open_node(iommu)?;
        let mut alloc = IommuIoasAlloc {
            size: size32::<IommuIoasAlloc>(),
            ..IommuIoasAlloc::default()
        };
        // SAFETY: `iommufd` is an open iommufd; the kernel reads and writes
        // at most `size` bytes of `alloc`, which is a live, exclusively
        // borrowed `struct iommu_ioas_alloc`; the result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(&iommufd, IOMMU_IOAS_ALLOC, &mut alloc)
        })
        .map_err(|e| io_error("IOMMU_IOAS_ALLOC (allocating an I/O address space)", e))?;
        let ioas = alloc.out_ioas_id;

        let device = open_node(cdev)?;
        let mut bind = VfioDeviceBindIommufd {
            argsz: size32::<VfioDeviceBindIommufd>(),
            iommufd: iommufd.as_raw_fd(),
            ..VfioDeviceBindIommufd::default()
        };
        // SAFETY: `device` is an open VFIO cdev; the kernel reads and writes
        // at most `argsz` bytes of `bind`, a live, exclusively borrowed
        // `struct vfio_device_bind_iommufd`; the iommufd it names stays
        // open for the call; the result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(&device, VFIO_DEVICE_BIND_IOMMUFD, &mut bind)
        })
        .map_err(|source| {
            let advice = match source.raw_os_error() {
                Some(libc::EPERM) => format!(
                    "the platform cannot isolate the device's MSI interrupts (no interrupt \
                     remapping) or the process lacks a capability: enable interrupt remapping \
                     (VT-d/AMD-Vi with IR in the firmware; QEMU: -device \
                     intel-iommu,intremap=on), or accept the risk with \
                     iommufd.allow_unsafe_interrupts=1, or try the legacy container route \
                     (`{bdf},container`)"
                ),
                Some(libc::EBUSY) => format!(
                    "the device or its IOMMU group {group} is already in use (another process, \
                     the legacy group /dev/vfio/{group}, or a kernel driver on another device \
                     of the group): close the other user, and bind every device of the group \
                     to vfio-pci"
                ),
                _ => format!(
                    "the kernel refused to bind {} to the iommufd {}; try the legacy container \
                     route (`{bdf},container`)",
                    cdev.display(),
                    iommu.display()
                ),
            };
            VfioError::IommufdBind {
                bdf: bdf.to_owned(),
                what: "VFIO_DEVICE_BIND_IOMMUFD".to_owned(),
                advice,
                source,
            }
        })?;
        let mut attach = VfioDeviceAttachIommufdPt {
            argsz: size32::<VfioDeviceAttachIommufdPt>(),
            flags: 0,
            pt_id: ioas,
        };
        // SAFETY: `device` is a VFIO cdev bound to an iommufd; the kernel
        // reads and writes at most `argsz` bytes of `attach`, a live,
        // exclusively borrowed `struct vfio_device_attach_iommufd_pt`; the
        // result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(
                &device,
                VFIO_DEVICE_ATTACH_IOMMUFD_PT,
                &mut attach,
            )
        })
        .map_err(|source| VfioError::IommufdBind {
            bdf: bdf.to_owned(),
            what: format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT (IOAS {ioas})"),
            advice: format!(
                "the IOMMU refused to attach the device to a new I/O address space; try the \
                 legacy container route (`{bdf},container`)"
            ),
            source,
        })?;
        tracing::debug!(bdf, cdev = %cdev.display(), devid = bind.out_devid, ioas, "bound to iommufd");
        Ok(IommufdDevice {
            device: RawDevice::new(device),
            iommufd,
            ioas,
        })
    }

    /// The device fd, with the shared device ioctls.
    pub(crate) fn device(&self) -> &RawDevice {
        &self.device
    }

    /// The IOAS's usable IOVA ranges (inclusive) and the IOVA alignment it
    /// requires (`IOMMU_IOAS_IOVA_RANGES`).
    pub(crate) fn iova_ranges(&self) -> io::Result<(Vec<(u64, u64)>, u64)> {
        let mut ranges = vec![IommuIovaRange::default(); 8];
        loop {
            let mut query = IommuIoasIovaRanges {
                size: size32::<IommuIoasIovaRanges>(),
                ioas_id: self.ioas,
                num_iovas: u32::try_from(ranges.len()).unwrap_or(MAX_RANGES),
                allowed_iovas: ranges.as_mut_ptr() as u64,
                ..IommuIoasIovaRanges::default()
            };
            // SAFETY: the iommufd is open; the kernel reads and writes at
            // most `size` bytes of `query`, and writes at most `num_iovas`
            // ranges to `allowed_iovas`, which points to that many live
            // `struct iommu_iova_range` elements of `ranges`; the result is
            // checked.
            let result = check(unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(
                    &self.iommufd,
                    IOMMU_IOAS_IOVA_RANGES,
                    &mut query,
                )
            });
            match result {
                Ok(_) => {
                    let count = (query.num_iovas as usize).min(ranges.len());
                    let found = ranges[..count]
                        .iter()
                        .filter(|range| range.start <= range.last)
                        .map(|range| (range.start, range.last))
                        .collect();
                    return Ok((found, query.out_iova_alignment));
                }
                // Too few elements: the kernel says how many there are.
                Err(error) if error.raw_os_error() == Some(libc::EMSGSIZE) => {
                    let wanted = query.num_iovas;
                    if wanted as usize <= ranges.len() || wanted > MAX_RANGES {
                        return Err(io::Error::other(format!(
                            "IOMMU_IOAS_IOVA_RANGES asks for {wanted} ranges"
                        )));
                    }
                    ranges.resize(wanted as usize, IommuIovaRange::default());
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Maps `size` bytes of this process's memory at `host` for the device
    /// at `iova` (readable and writable; `IOMMU_IOAS_MAP`). Returns the
    /// errno on failure.
    pub(crate) fn map(&self, iova: u64, size: u64, host: u64) -> io::Result<()> {
        let mut map = IommuIoasMap {
            size: size32::<IommuIoasMap>(),
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: self.ioas,
            reserved: 0,
            user_va: host,
            length: size,
            iova,
        };
        // SAFETY: the iommufd is open; the kernel reads and writes at most
        // `size` bytes of `map`, a live `struct iommu_ioas_map`. It pins
        // the pages at `user_va`, which the caller keeps mapped until
        // `unmap`; the result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(&self.iommufd, IOMMU_IOAS_MAP, &mut map)
        })?;
        Ok(())
    }

    /// Unmaps `size` bytes at `iova` (`IOMMU_IOAS_UNMAP`).
    pub(crate) fn unmap(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut unmap = IommuIoasUnmap {
            size: size32::<IommuIoasUnmap>(),
            ioas_id: self.ioas,
            iova,
            length: size,
        };
        // SAFETY: the iommufd is open; the kernel reads and writes at most
        // `size` bytes of `unmap`, a live `struct iommu_ioas_unmap`; the
        // result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ref(&self.iommufd, IOMMU_IOAS_UNMAP, &mut unmap)
        })?;
        if unmap.length != size {
            return Err(io::Error::other(format!(
                "IOMMU_IOAS_UNMAP unmapped {:#x} bytes, not {size:#x}",
                unmap.length
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // _IO(';', 0x80 + n) from <linux/iommufd.h>.
        assert_eq!(IOMMU_IOAS_ALLOC, 0x3b81);
        assert_eq!(IOMMU_IOAS_IOVA_RANGES, 0x3b84);
        assert_eq!(IOMMU_IOAS_MAP, 0x3b85);
        assert_eq!(IOMMU_IOAS_UNMAP, 0x3b86);
        // _IO(';', 100 + 18/19) from <linux/vfio.h>.
        assert_eq!(VFIO_DEVICE_BIND_IOMMUFD, 0x3b76);
        assert_eq!(VFIO_DEVICE_ATTACH_IOMMUFD_PT, 0x3b77);
    }

    #[test]
    fn structures_are_laid_out_like_the_uapi() {
        assert_eq!(size_of::<IommuIoasAlloc>(), 12);
        assert_eq!(offset_of!(IommuIoasAlloc, out_ioas_id), 8);

        assert_eq!(size_of::<IommuIovaRange>(), 16);
        assert_eq!(offset_of!(IommuIovaRange, last), 8);

        assert_eq!(size_of::<IommuIoasIovaRanges>(), 32);
        assert_eq!(offset_of!(IommuIoasIovaRanges, ioas_id), 4);
        assert_eq!(offset_of!(IommuIoasIovaRanges, num_iovas), 8);
        assert_eq!(offset_of!(IommuIoasIovaRanges, allowed_iovas), 16);
        assert_eq!(offset_of!(IommuIoasIovaRanges, out_iova_alignment), 24);

        assert_eq!(size_of::<IommuIoasMap>(), 40);
        assert_eq!(offset_of!(IommuIoasMap, flags), 4);
        assert_eq!(offset_of!(IommuIoasMap, ioas_id), 8);
        assert_eq!(offset_of!(IommuIoasMap, user_va), 16);
        assert_eq!(offset_of!(IommuIoasMap, length), 24);
        assert_eq!(offset_of!(IommuIoasMap, iova), 32);

        assert_eq!(size_of::<IommuIoasUnmap>(), 24);
        assert_eq!(offset_of!(IommuIoasUnmap, ioas_id), 4);
        assert_eq!(offset_of!(IommuIoasUnmap, iova), 8);
        assert_eq!(offset_of!(IommuIoasUnmap, length), 16);

        assert_eq!(size_of::<VfioDeviceBindIommufd>(), 16);
        assert_eq!(offset_of!(VfioDeviceBindIommufd, iommufd), 8);
        assert_eq!(offset_of!(VfioDeviceBindIommufd, out_devid), 12);

        assert_eq!(size_of::<VfioDeviceAttachIommufdPt>(), 12);
        assert_eq!(offset_of!(VfioDeviceAttachIommufdPt, pt_id), 8);

        assert_eq!(
            IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE,
            7
        );
    }

    #[test]
    fn cdevs_are_found_in_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_cdev(dir.path()), None);
        std::fs::create_dir_all(dir.path().join("vfio-dev")).unwrap();
        assert_eq!(find_cdev(dir.path()), None);
        std::fs::create_dir_all(dir.path().join("vfio-dev/vfiox")).unwrap();
        std::fs::create_dir_all(dir.path().join("vfio-dev/vfio")).unwrap();
        assert_eq!(find_cdev(dir.path()), None);
        // A 6.1-6.5 kernel: the class device, but no character device.
        std::fs::create_dir_all(dir.path().join("vfio-dev/vfio3")).unwrap();
        assert_eq!(find_cdev(dir.path()), None);
        std::fs::write(dir.path().join("vfio-dev/vfio3/dev"), "244:0\n").unwrap();
        assert_eq!(find_cdev(dir.path()).as_deref(), Some("vfio3"));
        assert_eq!(
            cdev_node(Path::new("/dev"), "vfio3"),
            PathBuf::from("/dev/vfio/devices/vfio3")
        );
        assert_eq!(iommu_node(Path::new("/dev")), PathBuf::from("/dev/iommu"));
    }
}
