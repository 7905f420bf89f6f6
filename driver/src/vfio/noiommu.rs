//! VFIO's unsafe no-IOMMU mode, with raw ioctls.
//!
//! `vfio-ioctls` 0.5 cannot drive this mode: it opens groups as
//! `/dev/vfio/<N>` (a no-IOMMU group is `/dev/vfio/noiommu-<N>`), insists on
//! a type1v2 container, and builds a `VfioDevice` only from its own
//! container. So this module does the few ioctls the back-end needs itself:
//! the container with `VFIO_NOIOMMU_IOMMU` (type 8), the group and the
//! device fd; the device ioctls (region and IRQ info, `VFIO_DEVICE_SET_IRQS`
//! for MSI-X) are [`super::raw`]'s, shared with the iommufd route.
//!
//! There is no `VFIO_IOMMU_MAP_DMA` in this mode: the device sees physical
//! memory, and DMA addresses come from [`super::pagemap`]. The kernel
//! requires CAP_SYS_RAWIO for the group, the container's IOMMU type and
//! the device fd, and taints itself when the device is opened.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use libc::c_ulong;
use vfio_bindings::bindings::vfio::{
    VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_NOIOMMU_IOMMU,
};

use super::error::{open_node_error, VfioError};
use super::raw::{check, vfio_io, RawDevice};

const VFIO_GET_API_VERSION: c_ulong = vfio_io(0);
const VFIO_CHECK_EXTENSION: c_ulong = vfio_io(1);
const VFIO_SET_IOMMU: c_ulong = vfio_io(2);
const VFIO_GROUP_GET_STATUS: c_ulong = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: c_ulong = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: c_ulong = vfio_io(6);

/// Where the VFIO device nodes are.
const DEV_VFIO: &str = "/dev/vfio";

/// The device node of no-IOMMU group `group`.
pub(crate) fn group_node(group: u32) -> PathBuf {
    Path::new(DEV_VFIO).join(format!("noiommu-{group}"))
}

/// A device opened through a VFIO no-IOMMU group. The fields are in drop
/// order: the device fd closes before its group, the group before the
/// container (the kernel would keep them alive anyway, but this is the
/// order it documents).
#[derive(Debug)]
pub(crate) struct NoIommuDevice {
    device: RawDevice,
    _group: File,
    _container: File,
}

impl NoIommuDevice {
    /// Opens `bdf`, in no-IOMMU group `group`: a container set to
    /// `VFIO_NOIOMMU_IOMMU`, the group attached to it, and the device fd.
    /// `mode_off` builds the error for a kernel whose container does not
    /// offer the no-IOMMU type (the mode is off).
    pub(crate) fn open(
        bdf: &str,
        group: u32,
        mode_off: impl FnOnce() -> VfioError,
    ) -> Result<NoIommuDevice, VfioError> {
        let io_error = |what: String, source: io::Error| {
            if matches!(
                source.raw_os_error(),
                Some(libc::EPERM) | Some(libc::EACCES)
            ) {
                VfioError::NoIommuNotPermitted {
                    bdf: bdf.to_owned(),
                    what,
                    source,
                }
            } else {
                VfioError::Io {
                    bdf: bdf.to_owned(),
                    what,
                    source,
                }
            }
        };
        let open_node = |path: PathBuf| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|source| match source.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::EACCES) => {
                        io_error(format!("opening {}", path.display()), source)
                    }
                    _ => open_node_error(bdf, group, path.clone(), &source)
                        .unwrap_or_else(|| io_error(format!("opening {}", path.display()), source)),
                })
        };

        let container = open_node(Path::new(DEV_VFIO).join("vfio"))?;
        // SAFETY: `container` is an open VFIO container fd; this ioctl takes
        // no argument and touches no memory of this process.
        let version =
            check(unsafe { vmm_sys_util::ioctl::ioctl(&container, VFIO_GET_API_VERSION) })
                .map_err(|e| io_error("VFIO_GET_API_VERSION".to_owned(), e))?;
        if version as u32 != VFIO_API_VERSION {
            return Err(io_error(
                "checking the VFIO API version".to_owned(),
                io::Error::other(format!(
                    "the kernel speaks VFIO API {version}, isonvme speaks {VFIO_API_VERSION}"
                )),
            ));
        }
        // SAFETY: as above; the argument is passed by value.
        let offered = check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_val(
                &container,
                VFIO_CHECK_EXTENSION,
                c_ulong::from(VFIO_NOIOMMU_IOMMU),
            )
        })
        .map_err(|e| io_error("VFIO_CHECK_EXTENSION(VFIO_NOIOMMU_IOMMU)".to_owned(), e))?;
        if offered != 1 {
            return Err(mode_off());
        }

        let node = group_node(group);
        let group_file = open_node(node.clone())?;
        // struct vfio_group_status { argsz, flags }.
        let mut status = [8u32, 0];
        // SAFETY: the group fd is valid; the kernel writes at most `argsz`
        // (8) bytes, the size of `status`; the result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                &group_file,
                VFIO_GROUP_GET_STATUS,
                status.as_mut_ptr(),
            )
        })
        .map_err(|e| io_error(format!("VFIO_GROUP_GET_STATUS on {}", node.display()), e))?;
        if status[1] & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(io_error(
                format!("opening {}", node.display()),
                io::Error::other(format!(
                    "the kernel says no-IOMMU group {group} is not viable: every device in it \
                     must be bound to vfio-pci or to no driver"
                )),
            ));
        }
        let container_fd: libc::c_int = container.as_raw_fd();
        // SAFETY: the kernel reads one int (the container fd, open for the
        // whole call) through the pointer; the result is checked.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_ref(
                &group_file,
                VFIO_GROUP_SET_CONTAINER,
                &container_fd,
            )
        })
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => VfioError::Busy {
                bdf: bdf.to_owned(),
                group,
            },
            _ => io_error(
                format!("attaching {} to the VFIO container", node.display()),
                e,
            ),
        })?;
        // SAFETY: the container fd is valid; the argument is passed by
        // value.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_val(
                &container,
                VFIO_SET_IOMMU,
                c_ulong::from(VFIO_NOIOMMU_IOMMU),
            )
        })
        .map_err(|e| {
            io_error(
                "setting the container's IOMMU type to VFIO_NOIOMMU_IOMMU".to_owned(),
                e,
            )
        })?;

        let name = CString::new(bdf).map_err(|_| VfioError::InvalidAddress(bdf.to_owned()))?;
        // SAFETY: the kernel reads the NUL-terminated name, which lives
        // for the whole call; the result is a new fd (checked).
        let fd = check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_ptr(
                &group_file,
                VFIO_GROUP_GET_DEVICE_FD,
                name.as_ptr(),
            )
        })
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => VfioError::Busy {
                bdf: bdf.to_owned(),
                group,
            },
            _ => io_error(format!("getting the device fd from {}", node.display()), e),
        })?;
        // SAFETY: `fd` was just returned by the kernel and nothing else
        // owns it.
        let device = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        Ok(NoIommuDevice {
            device: RawDevice::new(device),
            _group: group_file,
            _container: container,
        })
    }

    /// The device fd, with the shared device ioctls.
    pub(crate) fn device(&self) -> &RawDevice {
        &self.device
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // _IO(';', 100 + n) from <linux/vfio.h>.
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_CHECK_EXTENSION, 0x3b65);
        assert_eq!(VFIO_SET_IOMMU, 0x3b66);
        assert_eq!(VFIO_GROUP_GET_STATUS, 0x3b67);
        assert_eq!(VFIO_GROUP_SET_CONTAINER, 0x3b68);
        assert_eq!(VFIO_GROUP_GET_DEVICE_FD, 0x3b6a);
        assert_eq!(VFIO_NOIOMMU_IOMMU, 8);
        assert_eq!(
            group_node(3),
            PathBuf::from("/dev/vfio/noiommu-3"),
            "no-IOMMU groups have their own node names"
        );
    }
}
