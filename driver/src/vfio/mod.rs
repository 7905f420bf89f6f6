//! The VFIO back-end: a real NVMe controller (or QEMU's emulated one)
//! bound to vfio-pci, driven from userspace.
//!
//! [`VfioController::open`] checks everything sysfs can tell before VFIO
//! is touched (the device exists, is an NVMe controller, is bound to
//! vfio-pci, has a viable IOMMU group), then opens the device through
//! one of VFIO's routes (see [below](self#routes-iommufd-and-the-legacy-container)),
//! resets the device, enables
//! memory decoding and bus mastering in its command register, and mmaps
//! BAR0 from the device fd. It then provides the [`Transport`] seam:
//!
//! * **registers**: the BAR0 mapping (the sparse-mmap area holding the
//!   registers and doorbells when the kernel restricts mmap); doorbells are
//!   plain stores, never system calls;
//! * **DMA**: 2 MiB hugepages (anonymous `MAP_HUGETLB`), each mapped once
//!   (`VFIO_IOMMU_MAP_DMA`, or `IOMMU_IOAS_MAP` through iommufd) at an IOVA
//!   inside the IOMMU's reported valid ranges (never the MSI window
//!   0xfee00000–0xfeefffff), above 4 GiB where possible, with an unmapped
//!   guard gap after every region;
//! * **interrupts**: the MSI-X table size from the device's IRQ info, and
//!   all the vectors asked for enabled in one `VFIO_DEVICE_SET_IRQS` call,
//!   one eventfd each; each vector's host IRQ is steered through
//!   `/proc/irq/<irq>/smp_affinity_list` ([`crate::irq::HostIrqs`]).
//!
//! Dropping the controller disables MSI-X, turns bus mastering off, unmaps
//! all DMA memory from the IOMMU and resets the device.
//!
//! # Routes: iommufd and the legacy container
//!
//! With an IOMMU, there are two ways into VFIO ([`VfioRoute`]):
//!
//! * **iommufd** (Linux 6.6+, `CONFIG_IOMMUFD` and
//!   `CONFIG_VFIO_DEVICE_CDEV`): the device's own character device
//!   `/dev/vfio/devices/vfioN` (found through
//!   `/sys/bus/pci/devices/<BDF>/vfio-dev/vfioN`) is bound to `/dev/iommu`
//!   and attached to a fresh I/O address space; DMA memory is mapped with
//!   `IOMMU_IOAS_MAP`, at IOVAs inside the ranges `IOMMU_IOAS_IOVA_RANGES`
//!   reports. Raw ioctls (`vfio-ioctls` does not know this route). It is
//!   the only route on kernels built without `CONFIG_VFIO_CONTAINER`.
//! * **the legacy container** (`/dev/vfio/vfio` and the group
//!   `/dev/vfio/<group>`, type1v2 IOMMU, through `vfio-ioctls`).
//!
//! By default ([`VfioRoute::Auto`]) isonvme takes iommufd when the device
//! has a VFIO cdev and `/dev/iommu` exists, and falls back to the container
//! when it has not, or when this process may not open those two nodes (a
//! non-root user given the group by `isonvme setup bind --user`). Either
//! can be forced, for testing or to work around one: the device name
//! options `,iommufd` and `,container` (see [`crate::device`]) or
//! [`VfioOptions::route`]. A forced route that is not available is an
//! error naming what is missing.
//!
//! # No-IOMMU mode (unsafe, explicit only)
//!
//! On a host without an IOMMU, VFIO can still hand a device to userspace
//! when the `vfio` module's `enable_unsafe_noiommu_mode` parameter is on:
//! vfio-pci then puts the device in a made-up group, `/dev/vfio/noiommu-N`.
//! Nothing confines the device's DMA in that mode, so isonvme uses it only
//! when asked: the device name `0000:01:00.0,noiommu` (see
//! [`crate::device`]) or [`VfioOptions::noiommu`]. It then
//!
//! * refuses if the device is behind a real IOMMU
//!   ([`VfioError::NoIommuNotNeeded`]) or the mode is off
//!   ([`VfioError::NoIommuModeOff`]), naming the fix;
//! * warns loudly (a `tracing` warning on every open, and once per process
//!   on stderr) that the device can reach all memory;
//! * opens the group with raw ioctls and sets the container to
//!   `VFIO_NOIOMMU_IOMMU` (`vfio-ioctls` cannot);
//! * gives DMA memory no IOMMU mapping: each region is 2 MiB hugepages,
//!   locked with `mlock`, whose physical address (from `/proc/self/pagemap`,
//!   checked to be one contiguous range) is its IOVA. The DMA pool maps one
//!   hugepage per chunk and never hands out a buffer across chunks, so every
//!   buffer and every PRP entry is physically contiguous.
//!
//! It needs root: CAP_SYS_RAWIO for the group, CAP_SYS_ADMIN to read
//! physical addresses. The kernel taints itself when such a device is
//! opened. Hugetlb pages are not migrated in normal operation, but nothing
//! pins them for the device the way `VFIO_IOMMU_MAP_DMA` does: do not
//! offline memory or allocate gigantic pages at run time while a no-IOMMU
//! device is open.
//!
//! Not implemented: no-IOMMU mode through iommufd (the kernel's
//! `CONFIG_IOMMUFD_VFIO_CONTAINER`/cdev no-IOMMU support; no-IOMMU mode
//! always uses the container), and a 4 KiB-page fallback when there are no
//! hugepages.
//!
//! ```no_run
//! use isonvme::transport::Transport;
//! use isonvme::vfio::VfioController;
//!
//! let device = VfioController::open("0000:01:00.0")?;
//! println!("{}: {} MSI-X vectors", device.name(), device.max_vectors());
//! # Ok::<(), isonvme::vfio::VfioError>(())
//! ```

mod bar;
mod dma;
mod error;
mod iommufd;
mod iova;
mod noiommu;
mod pagemap;
mod raw;
mod sigbus;
mod sysfs;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Once};

use isonvme_mapping::CpuSet;
use vfio_bindings::bindings::vfio::{
    VFIO_BASE, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX, VFIO_TYPE,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps, VfioRegionInfoCap};
use vm_memory::{GuestAddress, GuestRegionMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_CLOEXEC, EFD_NONBLOCK};

use crate::device::DeviceName;
use crate::dma::DmaRegion;
use crate::irq::{HostIrqs, IrqError};
use crate::mmio::Mmio;
use crate::transport::{AffinityOutcome, DmaMapper, Transport, TransportError};

pub use dma::{memlock_limit, parse_memlock_limit, show_limit, MemlockLimit};
pub use error::{GroupMember, NoIommuParam, VfioError};
pub use iova::{IommuInfo, MSI_WINDOW};
pub use sysfs::{
    link_name, parse_hex, HugePages, PciFunction, PciSysfs, KERNEL_NVME, NVME_CLASS, VFIO_PCI,
};

use bar::BarMapping;
use iommufd::IommufdDevice;
use iova::IovaSpace;
use noiommu::NoIommuDevice;
use pagemap::Pagemap;

/// `VFIO_DEVICE_RESET`: `_IO(VFIO_TYPE, VFIO_BASE + 11)`.
const VFIO_DEVICE_RESET: libc::c_ulong =
    ((VFIO_TYPE as libc::c_ulong) << 8) | (VFIO_BASE + 11) as libc::c_ulong;
/// `VFIO_IOMMU_GET_INFO`: `_IO(VFIO_TYPE, VFIO_BASE + 12)`.
const VFIO_IOMMU_GET_INFO: libc::c_ulong =
    ((VFIO_TYPE as libc::c_ulong) << 8) | (VFIO_BASE + 12) as libc::c_ulong;

/// PCI configuration space: vendor ID and command register offsets.
const PCI_VENDOR_ID: u64 = 0x00;
const PCI_COMMAND: u64 = 0x04;
/// Command register: respond to memory accesses (BAR0).
const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register: the device may master the bus, i.e. do DMA.
const COMMAND_BUS_MASTER: u16 = 1 << 2;

/// Which VFIO interface opens a device behind an IOMMU (see the [module
/// documentation](self#routes-iommufd-and-the-legacy-container)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum VfioRoute {
    /// iommufd when the kernel and the device offer it (a VFIO cdev and
    /// `/dev/iommu`), the legacy container otherwise.
    #[default]
    Auto,
    /// The legacy container and group (`/dev/vfio/vfio`, `/dev/vfio/<N>`);
    /// device name option `,container`.
    Container,
    /// The device's VFIO cdev bound to `/dev/iommu`; an error when the
    /// kernel or the device does not offer it. Device name option
    /// `,iommufd`.
    Iommufd,
}

impl std::fmt::Display for VfioRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            VfioRoute::Auto => "auto",
            VfioRoute::Container => "container",
            VfioRoute::Iommufd => "iommufd",
        })
    }
}

/// How to open a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VfioOptions {
    /// Use VFIO's unsafe no-IOMMU mode: no DMA protection at all, DMA
    /// addresses are physical addresses (see the [module
    /// documentation](self#no-iommu-mode-unsafe-explicit-only)). Off by
    /// default; the device name suffix `,noiommu` turns it on too. Refused
    /// when the device is behind a real IOMMU or the kernel's
    /// `enable_unsafe_noiommu_mode` is off.
    pub noiommu: bool,
    /// Which VFIO route to take with an IOMMU (default: iommufd where
    /// available, else the legacy container). The device name options
    /// `,iommufd` and `,container` set it too. Ignored in no-IOMMU mode,
    /// which always uses a container.
    pub route: VfioRoute,
    /// Where the device nodes are (`/dev`): the iommufd route looks for
    /// `iommu` and `vfio/devices/vfioN` there. The container and no-IOMMU
    /// routes always use `/dev/vfio`.
    pub dev_root: PathBuf,
    /// Where sysfs is (`/sys`).
    pub sysfs_root: PathBuf,
    /// Where procfs is (`/proc`): `/proc/interrupts`, `/proc/irq`, limits.
    pub proc_root: PathBuf,
}

impl Default for VfioOptions {
    fn default() -> Self {
        VfioOptions {
            noiommu: false,
            route: VfioRoute::Auto,
            dev_root: PathBuf::from("/dev"),
            sysfs_root: PathBuf::from("/sys"),
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// What VFIO says about one region of the device (config space, a BAR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub(crate) flags: u32,
    /// Size in bytes (0: no such region).
    pub(crate) size: u64,
    /// Offset of the region in the device fd.
    pub(crate) offset: u64,
    /// Capabilities (sparse mmap areas...).
    pub(crate) caps: Vec<VfioRegionInfoCap>,
}

/// How the device was opened, which decides how DMA memory gets its
/// device address.
enum Access {
    /// Through the IOMMU: `vfio-ioctls`' type1v2 container; DMA memory
    /// is mapped with `VFIO_IOMMU_MAP_DMA`. Field order is drop order: the
    /// device before the container.
    Iommu {
        device: VfioDevice,
        container: Arc<VfioContainer>,
    },
    /// VFIO's no-IOMMU mode: raw ioctls; DMA addresses are physical.
    NoIommu(NoIommuDevice),
    /// The device's VFIO cdev bound to an iommufd: raw ioctls; DMA memory
    /// is mapped with `IOMMU_IOAS_MAP`.
    Iommufd(IommufdDevice),
}

/// The device of an [`Access`]: `vfio-ioctls`' or a raw device fd.
enum DeviceRef<'a> {
    Vfio(&'a VfioDevice),
    Raw(&'a raw::RawDevice),
}

impl Access {
    /// The device, however it is driven.
    fn device(&self) -> DeviceRef<'_> {
        match self {
            Access::Iommu { device, .. } => DeviceRef::Vfio(device),
            Access::NoIommu(device) => DeviceRef::Raw(device.device()),
            Access::Iommufd(device) => DeviceRef::Raw(device.device()),
        }
    }

    /// The route's name, for logs.
    fn name(&self) -> &'static str {
        match self {
            Access::Iommu { .. } => "container",
            Access::NoIommu(_) => "noiommu",
            Access::Iommufd(_) => "iommufd",
        }
    }

    fn device_fd(&self) -> std::os::fd::RawFd {
        match self.device() {
            DeviceRef::Vfio(device) => device.as_raw_fd(),
            DeviceRef::Raw(device) => device.file().as_raw_fd(),
        }
    }

    fn region(&self, index: u32) -> io::Result<RegionInfo> {
        match self.device() {
            DeviceRef::Vfio(device) => Ok(RegionInfo {
                flags: device.get_region_flags(index),
                size: device.get_region_size(index),
                offset: device.get_region_offset(index),
                caps: device.get_region_caps(index),
            }),
            DeviceRef::Raw(device) => device.region(index),
        }
    }

    fn msix_count(&self) -> u32 {
        match self.device() {
            DeviceRef::Vfio(device) => device
                .get_irq_info(VFIO_PCI_MSIX_IRQ_INDEX)
                .map(|info| info.count)
                .unwrap_or(0),
            DeviceRef::Raw(device) => device.irq_count(VFIO_PCI_MSIX_IRQ_INDEX).unwrap_or(0),
        }
    }

    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), String> {
        match self.device() {
            DeviceRef::Vfio(device) => device.enable_msix(fds.to_vec()).map_err(|e| {
                let os = io::Error::last_os_error();
                format!("{e} (last OS error: {os})")
            }),
            DeviceRef::Raw(device) => device.set_msix(fds).map_err(|e| e.to_string()),
        }
    }

    /// Asks VFIO to signal `fd` when the host wants the device back (the
    /// device request a hot-unplug sends before it waits for us).
    fn enable_device_request(&self, fd: &EventFd) -> Result<(), String> {
        match self.device() {
            DeviceRef::Vfio(device) => device
                .enable_irq(VFIO_PCI_REQ_IRQ_INDEX, vec![fd])
                .map_err(|e| e.to_string()),
            DeviceRef::Raw(device) => device
                .set_irqs(VFIO_PCI_REQ_IRQ_INDEX, &[fd])
                .map_err(|e| e.to_string()),
        }
    }

    fn disable_msix(&self) -> Result<(), String> {
        match self.device() {
            DeviceRef::Vfio(device) => device.disable_msix().map_err(|e| e.to_string()),
            DeviceRef::Raw(device) => device.set_msix(&[]).map_err(|e| e.to_string()),
        }
    }

    /// Unmaps `size` bytes at `iova` from the IOMMU (nothing to do in
    /// no-IOMMU mode).
    fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), String> {
        match self {
            Access::Iommu { container, .. } => container
                .vfio_dma_unmap(iova, size)
                .map_err(|e| e.to_string()),
            Access::Iommufd(device) => device.unmap(iova, size).map_err(|e| e.to_string()),
            Access::NoIommu(_) => Ok(()),
        }
    }
}

/// The route [`choose_route`] picked for a device behind an IOMMU.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chosen {
    /// The legacy container and group.
    Container,
    /// iommufd, through cdev node `cdev` and iommufd node `iommu`.
    Iommufd { cdev: PathBuf, iommu: PathBuf },
}

/// Picks the route for `bdf` (sysfs directory `device_dir`) as `route`
/// asks, looking for the device nodes under `dev_root`: iommufd when the
/// device has a VFIO cdev and `/dev/iommu` exists (an error if `route` is
/// [`VfioRoute::Iommufd`] and they do not), the container otherwise.
fn choose_route(
    bdf: &str,
    route: VfioRoute,
    device_dir: &Path,
    dev_root: &Path,
) -> Result<Chosen, VfioError> {
    if route == VfioRoute::Container {
        return Ok(Chosen::Container);
    }
    let iommu = iommufd::iommu_node(dev_root);
    let missing = match iommufd::find_cdev(device_dir) {
        None => format!(
            "{bdf} has no VFIO cdev (no {}/vfioN/dev in sysfs: the kernel is older than 6.6 \
             or built without CONFIG_VFIO_DEVICE_CDEV, or the device is not bound to vfio-pci)",
            device_dir.join("vfio-dev").display()
        ),
        Some(name) => {
            let cdev = iommufd::cdev_node(dev_root, &name);
            if !cdev.exists() {
                format!(
                    "{} does not exist (sysfs has {name}: is devtmpfs mounted on {}?)",
                    cdev.display(),
                    dev_root.display()
                )
            } else if !iommu.exists() {
                format!(
                    "{} does not exist (the kernel lacks CONFIG_IOMMUFD, or the iommufd \
                     module is not loaded: `modprobe iommufd`)",
                    iommu.display()
                )
            } else {
                return Ok(Chosen::Iommufd { cdev, iommu });
            }
        }
    };
    if route == VfioRoute::Iommufd {
        return Err(VfioError::IommufdUnavailable {
            bdf: bdf.to_owned(),
            reason: missing,
        });
    }
    tracing::debug!(bdf, reason = %missing, "iommufd route not available; using the legacy container");
    Ok(Chosen::Container)
}

/// The warning no-IOMMU mode earns, on every open through `tracing` and
/// once per process on stderr (where it is seen even without a
/// subscriber).
fn warn_noiommu(bdf: &str, group: u32) {
    const RISK: &str = "nothing confines its DMA: the device (or a bug in isonvme) can read and \
                        write ANY physical memory, the kernel's included. DMA addresses are \
                        physical addresses from /proc/self/pagemap. Use this only on a machine \
                        you can afford to crash; enable the IOMMU (VT-d/AMD-Vi, intel_iommu=on) \
                        for anything else";
    tracing::warn!(bdf, group, "UNSAFE: opened in VFIO no-IOMMU mode: {RISK}");
    static STDERR: Once = Once::new();
    STDERR.call_once(|| {
        eprintln!(
            "isonvme: WARNING: {bdf} opened in VFIO no-IOMMU mode (UNSAFE, group \
             /dev/vfio/noiommu-{group}): {RISK}"
        );
    });
}

/// One region of DMA memory mapped for the device.
struct Mapping {
    iova: u64,
    size: u64,
    // Keeps the memory alive at least as long as the IOMMU maps it.
    _region: Arc<GuestRegionMmap<()>>,
}

struct DmaState {
    /// Where IOVAs come from; `None` in no-IOMMU mode, where the IOVA is
    /// the physical address.
    space: Option<IovaSpace>,
    mappings: Vec<Mapping>,
    mapped_bytes: u64,
}

/// An NVMe controller opened through VFIO: the [`Transport`] for real
/// hardware.
pub struct VfioController {
    bdf: String,
    group: u32,
    function: PciFunction,
    iommu: IommuInfo,
    max_vectors: u16,
    irqs: HostIrqs,
    sysfs: PciSysfs,
    proc_root: PathBuf,
    config_offset: u64,
    registers: Mmio,
    dma: Mutex<DmaState>,
    vectors: Mutex<Vec<Arc<EventFd>>>,
    /// Signalled by VFIO's device request (a hot-unplug waiting for us).
    removal: Option<Arc<EventFd>>,
    // Field order is drop order: the duplicate device fd closes before
    // the device (so vfio-ioctls can release the group), the device before
    // the container (inside `access`).
    device_file: File,
    access: Access,
}

impl VfioController {
    /// Opens the NVMe controller at PCI address `address`
    /// (`[dddd:]bb:dd.f`) with default options.
    pub fn open(address: &str) -> Result<Arc<VfioController>, VfioError> {
        VfioController::open_with(address, VfioOptions::default())
    }

    /// Opens the NVMe controller at PCI address `address` with `options`.
    pub fn open_with(
        address: &str,
        options: VfioOptions,
    ) -> Result<Arc<VfioController>, VfioError> {
        // The address may carry the options of device names: `,noiommu`
        // adds to the options, never removes; `,iommufd` or `,container`
        // takes precedence over the options' route.
        let (bdf, noiommu, route) = match address.parse::<DeviceName>() {
            Ok(DeviceName::Pci {
                address,
                noiommu,
                route,
            }) => (
                address,
                noiommu || options.noiommu,
                if route == VfioRoute::Auto {
                    options.route
                } else {
                    route
                },
            ),
            _ => return Err(VfioError::InvalidAddress(address.to_owned())),
        };
        let sysfs = PciSysfs::new(&options.sysfs_root);
        let (function, group) = sysfs.check_vfio_ready(&bdf, noiommu)?;

        let iommufd = if noiommu {
            None
        } else {
            match choose_route(&bdf, route, &function.path, &options.dev_root)? {
                Chosen::Container => None,
                Chosen::Iommufd { cdev, iommu } => {
                    match IommufdDevice::open(&bdf, group, &cdev, &iommu) {
                        Ok(device) => Some(device),
                        // Not forced: a process that may not open the
                        // iommufd nodes may still have the group.
                        Err(error @ VfioError::IommufdNotPermitted { .. })
                            if route == VfioRoute::Auto =>
                        {
                            tracing::debug!(%bdf, %error, "iommufd route not permitted; trying the legacy container");
                            None
                        }
                        Err(error) => return Err(error),
                    }
                }
            }
        };
        let access = if noiommu {
            warn_noiommu(&bdf, group);
            let mode_off = || VfioError::NoIommuModeOff {
                bdf: bdf.clone(),
                state: sysfs.noiommu_param(),
                sysfs: sysfs.root().to_path_buf(),
            };
            Access::NoIommu(NoIommuDevice::open(&bdf, group, mode_off)?)
        } else if let Some(device) = iommufd {
            Access::Iommufd(device)
        } else {
            let container = Arc::new(
                VfioContainer::new(None).map_err(|error| container_error(&bdf, group, error))?,
            );
            let ops: Arc<dyn VfioOps> = container.clone();
            let device = VfioDevice::new(&function.path, ops)
                .map_err(|error| device_error(&sysfs, &bdf, group, error))?;
            Access::Iommu { device, container }
        };
        // A second fd for the device, for pread/pwrite, mmap and the ioctls
        // vfio-ioctls does not wrap.
        // SAFETY: the raw fd belongs to `access`, which is alive for the
        // whole borrow; the borrow is only used to duplicate it.
        let borrowed = unsafe { BorrowedFd::borrow_raw(access.device_fd()) };
        let device_file =
            File::from(
                borrowed
                    .try_clone_to_owned()
                    .map_err(|source| VfioError::Io {
                        bdf: bdf.clone(),
                        what: "duplicating the VFIO device fd".to_owned(),
                        source,
                    })?,
            );

        // A clean device: function-level (or bus) reset where supported;
        // the controller bring-up resets the NVMe controller (CC.EN=0)
        // either way.
        if let Err(error) = reset_device(&device_file) {
            tracing::debug!(%bdf, %error, "VFIO_DEVICE_RESET not done; relying on the NVMe controller reset");
        }

        let config_error = |reason: String| VfioError::Config {
            bdf: bdf.clone(),
            reason,
        };
        let config = access
            .region(VFIO_PCI_CONFIG_REGION_INDEX)
            .map_err(|e| config_error(format!("VFIO_DEVICE_GET_REGION_INFO: {e}")))?;
        if config.size < 64 {
            return Err(config_error(
                "VFIO reports no configuration space region".to_owned(),
            ));
        }
        let config_offset = config.offset;
        let vendor = config_read16(&device_file, config_offset, PCI_VENDOR_ID)
            .map_err(|e| config_error(format!("reading the vendor ID: {e}")))?;
        if vendor == 0xffff {
            return Err(config_error(
                "the vendor ID reads as 0xffff: the device does not respond (is it powered, \
                 or stuck in a failed reset?)"
                    .to_owned(),
            ));
        }
        if let Some(expected) = function.vendor.filter(|&v| v != vendor) {
            return Err(config_error(format!(
                "the vendor ID reads {vendor:#06x} through VFIO but sysfs says {expected:#06x}"
            )));
        }
        let command = set_command_bits(
            &device_file,
            config_offset,
            COMMAND_MEMORY | COMMAND_BUS_MASTER,
            true,
        )
        .map_err(|e| config_error(format!("setting the command register: {e}")))?;
        if command & COMMAND_BUS_MASTER == 0 {
            return Err(config_error(format!(
                "bus mastering could not be enabled (COMMAND reads back {command:#06x}); without \
                 it the controller's DMA silently does nothing"
            )));
        }

        let registers = map_registers(&bdf, &access, &device_file)?;

        let iommu = match &access {
            Access::Iommu { container, .. } => {
                Some(iommu_info(container.as_ref()).unwrap_or_else(|error| {
                    tracing::warn!(%bdf, %error, "VFIO_IOMMU_GET_INFO failed; assuming IOVAs from 4 GiB to 2^39");
                    IommuInfo::default()
                }))
            }
            Access::Iommufd(device) => Some(match device.iova_ranges() {
                Ok((ranges, alignment)) => IommuInfo {
                    // The required alignment, as a one-size bitmap.
                    page_sizes: if alignment.is_power_of_two() { alignment } else { 0 },
                    iova_ranges: Some(ranges),
                    dma_avail: None,
                },
                Err(error) => {
                    tracing::warn!(%bdf, %error, "IOMMU_IOAS_IOVA_RANGES failed; assuming IOVAs from 4 GiB to 2^39");
                    IommuInfo::default()
                }
            }),
            Access::NoIommu(_) => None,
        };
        let (iommu, space) = match iommu {
            Some(iommu) => {
                let align = iommu.min_page_size().max(dma::HUGEPAGE as u64);
                let space =
                    IovaSpace::new(iommu.iova_ranges.as_deref(), align, dma::HUGEPAGE as u64);
                tracing::debug!(%bdf, ranges = ?iommu.iova_ranges, usable = ?space.segments(), "IOVA space");
                (iommu, Some(space))
            }
            // No IOMMU, no IOVA space: DMA addresses are physical.
            None => (IommuInfo::default(), None),
        };

        let max_vectors = u16::try_from(access.msix_count()).unwrap_or(u16::MAX);
        if max_vectors == 0 {
            tracing::warn!(%bdf, "the device reports no MSI-X vectors; only polled completions will work");
        }
        tracing::debug!(
            %bdf,
            group,
            route = access.name(),
            bar0 = registers.len(),
            max_vectors,
            numa_node = ?function.numa_node,
            "opened through VFIO"
        );
        let removal = EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC)
            .ok()
            .map(Arc::new)
            .filter(|fd| match access.enable_device_request(fd) {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(%bdf, %error, "no VFIO device request notice: a hot-unplug will wait for the process to exit");
                    false
                }
            });
        Ok(Arc::new(VfioController {
            removal,
            bdf,
            group,
            function,
            iommu,
            max_vectors,
            irqs: HostIrqs::new(&options.proc_root),
            sysfs,
            proc_root: options.proc_root,
            config_offset,
            registers,
            dma: Mutex::new(DmaState {
                space,
                mappings: Vec::new(),
                mapped_bytes: 0,
            }),
            vectors: Mutex::new(Vec::new()),
            device_file,
            access,
        }))
    }

    /// The PCI address, `dddd:bb:dd.f`.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The device's IOMMU group.
    pub fn iommu_group(&self) -> u32 {
        self.group
    }

    /// What sysfs said about the device when it was opened.
    pub fn function(&self) -> &PciFunction {
        &self.function
    }

    /// What the IOMMU reported (page sizes, valid IOVA ranges); empty in
    /// no-IOMMU mode.
    pub fn iommu_info(&self) -> &IommuInfo {
        &self.iommu
    }

    /// Whether the device was opened in VFIO's unsafe no-IOMMU mode (DMA
    /// addresses are physical addresses, nothing confines the device).
    pub fn is_noiommu(&self) -> bool {
        matches!(self.access, Access::NoIommu(_))
    }

    /// The route the device was opened through: [`VfioRoute::Iommufd`] or
    /// [`VfioRoute::Container`] (no-IOMMU mode included), never
    /// [`VfioRoute::Auto`].
    pub fn route(&self) -> VfioRoute {
        match self.access {
            Access::Iommufd(_) => VfioRoute::Iommufd,
            Access::Iommu { .. } | Access::NoIommu(_) => VfioRoute::Container,
        }
    }

    /// Bytes of DMA memory currently mapped for the device (through the
    /// IOMMU, or locked and translated in no-IOMMU mode).
    pub fn dma_mapped_bytes(&self) -> u64 {
        self.dma
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .mapped_bytes
    }
}

impl DmaMapper for VfioController {
    fn map_dma(&self, len: usize) -> Result<DmaRegion, TransportError> {
        let fail = |reason: String| TransportError::DmaMap { len, reason };
        if len == 0 {
            return Err(fail("zero-length mapping".to_owned()));
        }
        let size = len
            .checked_next_multiple_of(dma::HUGEPAGE)
            .ok_or_else(|| fail("length overflows".to_owned()))?;
        let memory = dma::hugepage_memory(size).map_err(|error| {
            fail(dma::hugepage_advice(
                size,
                &error,
                self.sysfs.hugepages_2m(),
            ))
        })?;
        let host = memory.as_ptr() as u64;
        let mut state = self.dma.lock().unwrap_or_else(|e| e.into_inner());
        let iova = if !self.is_noiommu() {
            let mapped = state.mapped_bytes;
            state
                .space
                .as_mut()
                .and_then(|space| space.alloc(size as u64))
                .ok_or_else(|| {
                    fail(format!(
                        "the IOMMU's IOVA space is exhausted ({mapped} bytes mapped already; \
                         usable ranges {:x?})",
                        self.iommu.iova_ranges
                    ))
                })?
        } else {
            // No IOMMU: the device gets the physical address. The memory
            // is locked, then translated; the pool asks for one hugepage
            // at a time, which is always contiguous, and a larger request
            // is refused unless its hugepages happen to be contiguous.
            dma::lock_memory(&memory).map_err(|error| {
                fail(dma::mlock_advice(
                    size,
                    &error,
                    dma::memlock_limit(&self.proc_root),
                ))
            })?;
            Pagemap::open(&self.proc_root)
                .and_then(|pagemap| {
                    pagemap.contiguous_range(host, size as u64, dma::HUGEPAGE as u64)
                })
                .map_err(|error| fail(error.to_string()))?
        };
        let region = Arc::new(
            GuestRegionMmap::new(memory, GuestAddress(iova))
                .map_err(|e| fail(format!("IOVA {iova:#x}: {e}")))?,
        );
        let mapped = match &self.access {
            Access::Iommu { container, .. } => container
                .vfio_dma_map(iova, size as u64, host)
                .map_err(|error| match &error {
                    vfio_ioctls::VfioError::IommuDmaMap(e) => e.errno(),
                    _ => 0,
                }),
            Access::Iommufd(device) => device
                .map(iova, size as u64, host)
                .map_err(|error| error.raw_os_error().unwrap_or(0)),
            Access::NoIommu(_) => Ok(()),
        };
        if let Err(errno) = mapped {
            // The memlock and double-mapping advice fits both routes; the
            // rest of it is about type1.
            let shared = matches!(errno, libc::ENOMEM | libc::EPERM | libc::EEXIST);
            let reason = if shared || !matches!(self.access, Access::Iommufd(_)) {
                dma::map_dma_advice(
                    size as u64,
                    iova,
                    errno,
                    dma::memlock_limit(&self.proc_root),
                    state.mapped_bytes,
                )
            } else {
                format!(
                    "IOMMU_IOAS_MAP of {size} bytes at IOVA {iova:#x} failed: {}",
                    io::Error::from_raw_os_error(errno)
                )
            };
            return Err(fail(reason));
        }
        state.mapped_bytes += size as u64;
        state.mappings.push(Mapping {
            iova,
            size: size as u64,
            _region: Arc::clone(&region),
        });
        tracing::debug!(bdf = %self.bdf, iova = format_args!("{iova:#x}"), size, "DMA memory mapped");
        Ok(DmaRegion::new(region))
    }
}

impl Transport for VfioController {
    fn name(&self) -> &str {
        &self.bdf
    }

    fn registers(&self) -> Mmio {
        self.registers.clone()
    }

    fn max_vectors(&self) -> u16 {
        self.max_vectors
    }

    fn removal_notice(&self) -> Option<Arc<EventFd>> {
        self.removal.clone()
    }

    fn enable_vectors(&self, count: u16) -> Result<Vec<Arc<EventFd>>, TransportError> {
        let fail = |reason: String| TransportError::Vectors { count, reason };
        if count > self.max_vectors {
            return Err(fail(format!(
                "{} has {} MSI-X vectors (VFIO's MSI-X IRQ info)",
                self.bdf, self.max_vectors
            )));
        }
        let mut enabled = self.vectors.lock().unwrap_or_else(|e| e.into_inner());
        // Older kernels refuse to grow an enabled MSI-X set: start over.
        if !enabled.is_empty() {
            self.access.disable_msix().map_err(|e| {
                fail(format!(
                    "disabling the previous {} vectors: {e}",
                    enabled.len()
                ))
            })?;
            enabled.clear();
        }
        if count == 0 {
            return Ok(Vec::new());
        }
        let fds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK | EFD_CLOEXEC).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TransportError::Io {
                what: "creating an interrupt eventfd".to_owned(),
                source,
            })?;
        let borrowed: Vec<&EventFd> = fds.iter().map(|fd| fd.as_ref()).collect();
        self.access.enable_msix(&borrowed).map_err(|e| {
            fail(format!(
                "VFIO_DEVICE_SET_IRQS for MSI-X vectors 0..{count}: {e}"
            ))
        })?;
        enabled.clone_from(&fds);
        Ok(fds)
    }

    fn set_vector_affinity(
        &self,
        vector: u16,
        cpus: &CpuSet,
    ) -> Result<AffinityOutcome, TransportError> {
        let enabled = self.vectors.lock().unwrap_or_else(|e| e.into_inner()).len();
        if usize::from(vector) >= enabled {
            return Err(TransportError::Vectors {
                count: vector.saturating_add(1),
                reason: format!(
                    "vector {vector} is not enabled ({enabled} are): enable vectors before \
                     steering them"
                ),
            });
        }
        let what = || format!("steering MSI-X vector {vector} of {}", self.bdf);
        let irq_failure = |error: IrqError| TransportError::Io {
            what: what(),
            source: io::Error::other(error),
        };
        let irqs = self.irqs.find_vfio_msix(&self.bdf).map_err(irq_failure)?;
        let Some(&irq) = irqs.get(&vector) else {
            return Err(TransportError::Io {
                what: what(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no vfio-msix[{vector}]({}) line in {}",
                        self.bdf,
                        self.irqs.interrupts_path().display()
                    ),
                ),
            });
        };
        match self.irqs.set_affinity(irq, cpus) {
            Ok(()) => Ok(AffinityOutcome::Applied),
            Err(error @ IrqError::NotPermitted { .. }) => {
                Ok(AffinityOutcome::NotPermitted(error.to_string()))
            }
            Err(error) => Err(irq_failure(error)),
        }
    }
}

impl Drop for VfioController {
    fn drop(&mut self) {
        let bdf = &self.bdf;
        let vectors = self.vectors.get_mut().unwrap_or_else(|e| e.into_inner());
        if !vectors.is_empty() {
            if let Err(error) = self.access.disable_msix() {
                tracing::warn!(%bdf, %error, "disabling MSI-X failed");
            }
            vectors.clear();
        }
        // Stop DMA before its targets disappear from the IOMMU, so a busy
        // device does not fault.
        if let Err(error) = set_command_bits(
            &self.device_file,
            self.config_offset,
            COMMAND_BUS_MASTER,
            false,
        ) {
            tracing::warn!(%bdf, %error, "turning bus mastering off failed");
        }
        let state = self.dma.get_mut().unwrap_or_else(|e| e.into_inner());
        for mapping in state.mappings.drain(..) {
            // In no-IOMMU mode there is nothing to unmap: the memory is
            // freed when its last region handle drops (bus mastering is
            // off by then).
            if let Err(error) = self.access.unmap_dma(mapping.iova, mapping.size) {
                tracing::warn!(%bdf, iova = mapping.iova, %error, "unmapping DMA memory failed");
            }
        }
        state.mapped_bytes = 0;
        if let Err(error) = reset_device(&self.device_file) {
            tracing::debug!(%bdf, %error, "VFIO_DEVICE_RESET on close not done");
        }
    }
}

impl std::fmt::Debug for VfioController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioController")
            .field("bdf", &self.bdf)
            .field("group", &self.group)
            .field("bar0", &self.registers.len())
            .field("max_vectors", &self.max_vectors)
            .field("noiommu", &self.is_noiommu())
            .field("route", &self.route())
            .finish_non_exhaustive()
    }
}

/// Maps the part of BAR0 holding the registers and doorbells, and checks
/// the controller answers.
fn map_registers(bdf: &str, access: &Access, file: &File) -> Result<Mmio, VfioError> {
    let bar_error = |reason: String| VfioError::Bar {
        bdf: bdf.to_owned(),
        reason,
    };
    let region = access
        .region(VFIO_PCI_BAR0_REGION_INDEX)
        .map_err(|e| bar_error(format!("VFIO_DEVICE_GET_REGION_INFO: {e}")))?;
    let window = bar::choose_window(region.size, region.flags, &region.caps).map_err(bar_error)?;
    let len = usize::try_from(window.len).map_err(|_| {
        bar_error(format!(
            "{:#x} bytes do not fit the address space",
            window.len
        ))
    })?;
    let offset = region
        .offset
        .checked_add(window.offset)
        .ok_or_else(|| bar_error("region offset overflows".to_owned()))?;
    let mapping = Arc::new(
        BarMapping::map(file, offset, len).map_err(|source| VfioError::Io {
            bdf: bdf.to_owned(),
            what: format!("mmapping {len:#x} bytes of BAR0"),
            source,
        })?,
    );
    // SAFETY: `mapping` is a fresh page-aligned shared read/write mapping
    // of `mapping.len()` bytes of BAR0, unmapped only when its last owner
    // (held by every Mmio clone) drops; nothing else accesses it, and the
    // driver only uses it through Mmio's volatile aligned 32-bit accesses.
    let registers = unsafe { Mmio::new(mapping.base(), mapping.len(), mapping) };
    let cap = registers.read64(0);
    if cap == u64::MAX {
        return Err(bar_error(
            "CAP reads as all ones: the controller does not respond (memory decoding off, \
             failed reset, or the device is gone)"
                .to_owned(),
        ));
    }
    let stride = 4u64 << ((cap >> 32) & 0xf);
    let queues = bar::queues_covered(registers.len() as u64, stride);
    if queues == 0 {
        return Err(bar_error(format!(
            "the mapped {:#x} bytes do not reach the admin queue's doorbells (stride {stride})",
            registers.len()
        )));
    }
    tracing::debug!(bdf, len = registers.len(), stride, queues, "BAR0 mapped");
    Ok(registers)
}

fn config_read16(file: &File, base: u64, offset: u64) -> io::Result<u16> {
    let mut bytes = [0u8; 2];
    file.read_exact_at(&mut bytes, base + offset)?;
    Ok(u16::from_le_bytes(bytes))
}

/// Sets (`on`) or clears `bits` in the PCI command register; returns the
/// value read back.
fn set_command_bits(file: &File, base: u64, bits: u16, on: bool) -> io::Result<u16> {
    let command = config_read16(file, base, PCI_COMMAND)?;
    let wanted = if on { command | bits } else { command & !bits };
    if wanted != command {
        file.write_all_at(&wanted.to_le_bytes(), base + PCI_COMMAND)?;
    }
    config_read16(file, base, PCI_COMMAND)
}

/// `VFIO_DEVICE_RESET` (fails with EINVAL when the device has no reset
/// method VFIO can use).
fn reset_device(file: &File) -> io::Result<()> {
    // SAFETY: `file` is a VFIO device fd; VFIO_DEVICE_RESET takes no
    // argument and touches no memory of this process.
    let result = unsafe { vmm_sys_util::ioctl::ioctl(file, VFIO_DEVICE_RESET) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `VFIO_IOMMU_GET_INFO` with its capability chain (valid IOVA ranges).
fn iommu_info(container: &VfioContainer) -> io::Result<IommuInfo> {
    // Enough for a header and a few capabilities; grown if the kernel asks.
    let mut argsz = 256usize;
    for _ in 0..2 {
        let mut words = vec![0u64; argsz.div_ceil(8)];
        let argsz_field = u32::try_from(words.len() * 8).unwrap_or(u32::MAX);
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&argsz_field.to_ne_bytes());
        words[0] = u64::from_ne_bytes(header);
        // SAFETY: the container fd is valid; the kernel writes at most
        // `argsz_field` bytes, the size of `words`, which is 8-byte aligned
        // as `struct vfio_iommu_type1_info` requires; the result is checked.
        let result = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                container,
                VFIO_IOMMU_GET_INFO,
                words.as_mut_ptr(),
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let wanted = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if wanted > bytes.len() && wanted <= 1 << 16 {
            argsz = wanted;
            continue;
        }
        return iova::parse_iommu_info(&bytes).map_err(io::Error::other);
    }
    Err(io::Error::other("the IOMMU info kept growing"))
}

/// Explains a failure to open the VFIO container.
fn container_error(bdf: &str, group: u32, error: vfio_ioctls::VfioError) -> VfioError {
    match &error {
        vfio_ioctls::VfioError::OpenContainer(source) => {
            if let Some(classified) =
                error::open_node_error(bdf, group, PathBuf::from("/dev/vfio/vfio"), source)
            {
                return classified;
            }
        }
        vfio_ioctls::VfioError::VfioApiVersion | vfio_ioctls::VfioError::VfioExtension => {
            return VfioError::Vfio {
                bdf: bdf.to_owned(),
                what: "the kernel's VFIO offers no type1v2 IOMMU (is the IOMMU enabled, and \
                       vfio_iommu_type1 loaded? `modprobe vfio_iommu_type1`)"
                    .to_owned(),
                source: error,
            }
        }
        _ => {}
    }
    VfioError::Vfio {
        bdf: bdf.to_owned(),
        what: "opening the VFIO container /dev/vfio/vfio".to_owned(),
        source: error,
    }
}

/// Explains a failure to open the group or the device.
fn device_error(
    sysfs: &PciSysfs,
    bdf: &str,
    group: u32,
    error: vfio_ioctls::VfioError,
) -> VfioError {
    let group_node = Path::new("/dev/vfio").join(group.to_string());
    let what = match &error {
        vfio_ioctls::VfioError::OpenGroup(source, _) => {
            if let Some(classified) = error::open_node_error(bdf, group, group_node.clone(), source)
            {
                return classified;
            }
            format!("opening {}", group_node.display())
        }
        vfio_ioctls::VfioError::GroupViable => {
            let others: Vec<GroupMember> = sysfs
                .group_members(group)
                .unwrap_or_default()
                .into_iter()
                .filter(|member| member.bdf != bdf)
                .filter(|member| member.driver.as_deref() != Some(VFIO_PCI))
                .collect();
            if !others.is_empty() {
                return VfioError::GroupNotViable {
                    bdf: bdf.to_owned(),
                    group,
                    others,
                };
            }
            format!(
                "the kernel says IOMMU group {group} is not viable: every device in {} must be \
                 bound to vfio-pci or to no driver",
                sysfs.group_path(group).join("devices").display()
            )
        }
        vfio_ioctls::VfioError::GroupGetDeviceFD(errno) if errno.errno() == libc::EBUSY => {
            return VfioError::Busy {
                bdf: bdf.to_owned(),
                group,
            };
        }
        vfio_ioctls::VfioError::GroupSetContainer => format!(
            "attaching IOMMU group {group} to the container (is the group used by another \
             container or process?)"
        ),
        vfio_ioctls::VfioError::ContainerSetIOMMU(_) => {
            "setting the type1v2 IOMMU on the container".to_owned()
        }
        vfio_ioctls::VfioError::GroupGetDeviceFD(_) => {
            format!("getting the device fd from {}", group_node.display())
        }
        _ => "opening the VFIO device".to_owned(),
    };
    VfioError::Vfio {
        bdf: bdf.to_owned(),
        what,
        source: error,
    }
}

#[cfg(test)]
mod tests {
    use super::sysfs::fake::FakeSysfs;
    use super::*;

    fn options(fake: &FakeSysfs) -> VfioOptions {
        VfioOptions {
            sysfs_root: fake.root().to_path_buf(),
            ..VfioOptions::default()
        }
    }

    #[test]
    fn addresses_are_validated_and_normalised_before_sysfs() {
        let fake = FakeSysfs::new();
        let error = VfioController::open_with("sim", options(&fake)).unwrap_err();
        assert!(matches!(error, VfioError::InvalidAddress(_)), "{error}");
        let error = VfioController::open_with("0000:01:00", options(&fake)).unwrap_err();
        assert!(error.to_string().contains("not a PCI address"), "{error}");
        // A short address is normalised with its domain.
        let error = VfioController::open_with("1:0.0", options(&fake)).unwrap_err();
        let VfioError::NoSuchDevice { bdf, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(bdf, "0000:01:00.0");
    }

    #[test]
    fn sysfs_problems_stop_the_open_before_vfio() {
        let fake = FakeSysfs::new();
        fake.add("0000:02:00.0", NVME_CLASS, Some(KERNEL_NVME), Some(4));
        let error = VfioController::open_with("0000:02:00.0", options(&fake)).unwrap_err();
        assert!(matches!(error, VfioError::BoundToNvme { .. }), "{error}");
        let error: crate::Error = error.into();
        let text = error.to_string();
        assert!(text.contains("isonvme setup bind 0000:02:00.0"), "{text}");

        // A no-IOMMU group without the option: refused, naming the option.
        fake.add("0000:03:00.0", NVME_CLASS, Some(VFIO_PCI), Some(0));
        fake.make_noiommu(0);
        let error = VfioController::open_with("0000:03:00.0", options(&fake)).unwrap_err();
        assert!(
            matches!(error, VfioError::NoIommuGroup { group: 0, .. }),
            "{error}"
        );
        // With it (as an option or in the name), but the mode is off in
        // this (fake) kernel: refused before VFIO is touched.
        fake.noiommu_param(Some("N"));
        let noiommu = VfioOptions {
            noiommu: true,
            ..options(&fake)
        };
        let error = VfioController::open_with("0000:03:00.0", noiommu).unwrap_err();
        assert!(
            matches!(
                error,
                VfioError::NoIommuModeOff {
                    state: NoIommuParam::Off,
                    ..
                }
            ),
            "{error}"
        );
        let error = VfioController::open_with("0000:03:00.0,noiommu", options(&fake)).unwrap_err();
        assert!(matches!(error, VfioError::NoIommuModeOff { .. }), "{error}");
        // Behind a real IOMMU the option is refused.
        fake.add("0000:04:00.0", NVME_CLASS, Some(VFIO_PCI), Some(4));
        let error = VfioController::open_with("0000:04:00.0,noiommu", options(&fake)).unwrap_err();
        assert!(
            matches!(error, VfioError::NoIommuNotNeeded { group: 4, .. }),
            "{error}"
        );
        let error: crate::Error = error.into();
        assert!(error.to_string().contains("without `,noiommu`"), "{error}");
    }

    /// A fake `/dev` with the nodes the iommufd route looks for.
    fn fake_dev(cdev: Option<&str>, iommu: bool) -> tempfile::TempDir {
        let dev = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dev.path().join("vfio/devices")).unwrap();
        if let Some(name) = cdev {
            std::fs::write(dev.path().join("vfio/devices").join(name), "").unwrap();
        }
        if iommu {
            std::fs::write(dev.path().join("iommu"), "").unwrap();
        }
        dev
    }

    #[test]
    fn the_route_is_iommufd_where_offered_and_forcing_it_names_what_is_missing() {
        let fake = FakeSysfs::new();
        fake.add("0000:01:00.0", NVME_CLASS, Some(VFIO_PCI), Some(5));
        let device_dir = PciSysfs::new(fake.root()).device_path("0000:01:00.0");
        let bdf = "0000:01:00.0";
        let choose =
            |route, dev: &tempfile::TempDir| choose_route(bdf, route, &device_dir, dev.path());
        let full = fake_dev(Some("vfio0"), true);

        // No cdev in sysfs (an older kernel): the container, unless forced.
        assert_eq!(choose(VfioRoute::Auto, &full).unwrap(), Chosen::Container);
        let error = choose(VfioRoute::Iommufd, &full).unwrap_err();
        assert!(
            matches!(error, VfioError::IommufdUnavailable { .. }),
            "{error}"
        );
        let text = error.to_string();
        assert!(text.contains("vfio-dev"), "{text}");
        assert!(text.contains("CONFIG_VFIO_DEVICE_CDEV"), "{text}");
        assert!(text.contains("0000:01:00.0,container"), "{text}");

        // The class device of 6.1-6.5 kernels, without a cdev: no cdev.
        std::fs::create_dir_all(device_dir.join("vfio-dev/vfio0")).unwrap();
        assert_eq!(choose(VfioRoute::Auto, &full).unwrap(), Chosen::Container);
        let text = choose(VfioRoute::Iommufd, &full).unwrap_err().to_string();
        assert!(text.contains("has no VFIO cdev"), "{text}");
        std::fs::write(device_dir.join("vfio-dev/vfio0/dev"), "244:0\n").unwrap();
        // Everything there: iommufd by default, the container when forced.
        assert_eq!(
            choose(VfioRoute::Auto, &full).unwrap(),
            Chosen::Iommufd {
                cdev: full.path().join("vfio/devices/vfio0"),
                iommu: full.path().join("iommu"),
            }
        );
        assert_eq!(
            choose(VfioRoute::Iommufd, &full).unwrap(),
            choose(VfioRoute::Auto, &full).unwrap()
        );
        assert_eq!(
            choose(VfioRoute::Container, &full).unwrap(),
            Chosen::Container
        );

        // No /dev/iommu (no CONFIG_IOMMUFD, or the module not loaded).
        let no_iommu = fake_dev(Some("vfio0"), false);
        assert_eq!(
            choose(VfioRoute::Auto, &no_iommu).unwrap(),
            Chosen::Container
        );
        let text = choose(VfioRoute::Iommufd, &no_iommu)
            .unwrap_err()
            .to_string();
        assert!(text.contains("modprobe iommufd"), "{text}");
        // The cdev in sysfs but not in /dev.
        let no_node = fake_dev(None, true);
        assert_eq!(
            choose(VfioRoute::Auto, &no_node).unwrap(),
            Chosen::Container
        );
        let text = choose(VfioRoute::Iommufd, &no_node)
            .unwrap_err()
            .to_string();
        assert!(text.contains("devtmpfs"), "{text}");
    }

    #[test]
    fn a_forced_route_reaches_the_open_and_fails_cleanly() {
        let fake = FakeSysfs::new();
        fake.add("0000:01:00.0", NVME_CLASS, Some(VFIO_PCI), Some(5));
        // Forced through the device name, without a cdev: refused before
        // any device node is opened.
        let error = VfioController::open_with("0000:01:00.0,iommufd", options(&fake)).unwrap_err();
        assert!(
            matches!(error, VfioError::IommufdUnavailable { .. }),
            "{error}"
        );
        // Forced through the options, with nodes that are not the kernel's
        // (plain files): the first iommufd ioctl fails, with its name.
        let device_dir = PciSysfs::new(fake.root()).device_path("0000:01:00.0");
        std::fs::create_dir_all(device_dir.join("vfio-dev/vfio0")).unwrap();
        std::fs::write(device_dir.join("vfio-dev/vfio0/dev"), "244:0\n").unwrap();
        let dev = fake_dev(Some("vfio0"), true);
        let forced = VfioOptions {
            route: VfioRoute::Iommufd,
            dev_root: dev.path().to_path_buf(),
            ..options(&fake)
        };
        let error = VfioController::open_with("0000:01:00.0", forced).unwrap_err();
        assert!(error.to_string().contains("IOMMU_IOAS_ALLOC"), "{error}");
        assert_eq!(VfioRoute::Iommufd.to_string(), "iommufd");
        assert_eq!(VfioRoute::default(), VfioRoute::Auto);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // _IO(';', 111) and _IO(';', 112) from <linux/vfio.h>.
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_IOMMU_GET_INFO, 0x3b70);
    }

    #[test]
    fn device_errors_are_explained() {
        let fake = FakeSysfs::new();
        fake.add("0000:01:00.0", NVME_CLASS, Some(VFIO_PCI), Some(9));
        fake.add("0000:01:00.1", 0x0c0330, Some("xhci_hcd"), Some(9));
        let sysfs = PciSysfs::new(fake.root());
        let error = device_error(
            &sysfs,
            "0000:01:00.0",
            9,
            vfio_ioctls::VfioError::GroupViable,
        );
        let text = error.to_string();
        assert!(text.contains("0000:01:00.1 (bound to xhci_hcd)"), "{text}");
        let denied = vfio_ioctls::VfioError::OpenGroup(
            io::Error::from_raw_os_error(libc::EACCES),
            "9".into(),
        );
        let text = device_error(&sysfs, "0000:01:00.0", 9, denied).to_string();
        assert!(text.contains("/dev/vfio/9"), "{text}");
        assert!(text.contains("isonvme setup bind --user NAME"), "{text}");
        let busy =
            vfio_ioctls::VfioError::GroupGetDeviceFD(vmm_sys_util::errno::Error::new(libc::EBUSY));
        let error = device_error(&sysfs, "0000:01:00.0", 9, busy);
        assert!(matches!(error, VfioError::Busy { group: 9, .. }), "{error}");
        let missing =
            vfio_ioctls::VfioError::OpenContainer(io::Error::from_raw_os_error(libc::ENOENT));
        let text = container_error("0000:01:00.0", 9, missing).to_string();
        assert!(text.contains("modprobe vfio-pci"), "{text}");
    }
}
