//! Why opening or driving a device through VFIO failed: every variant names
//! the cause and the fix.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::transport::TransportError;

/// Another device in the same IOMMU group, as found in sysfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Its PCI address.
    pub bdf: String,
    /// Its class code, if readable.
    pub class: Option<u32>,
    /// The driver it is bound to, if any.
    pub driver: Option<String>,
}

impl GroupMember {
    /// Whether this member lets VFIO take the group: bound to no driver,
    /// to vfio-pci itself, or to a driver the kernel marks as managing DMA
    /// safely alongside VFIO (pci-stub, and pcieport for bridges).
    pub fn allows_vfio(&self) -> bool {
        matches!(
            self.driver.as_deref(),
            None | Some(super::sysfs::VFIO_PCI) | Some("pci-stub") | Some("pcieport")
        )
    }
}

impl fmt::Display for GroupMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.driver {
            Some(driver) => write!(f, "{} (bound to {driver})", self.bdf),
            None => write!(f, "{} (no driver)", self.bdf),
        }
    }
}

/// Why a device could not be opened or used through VFIO.
#[derive(Debug, thiserror::Error)]
pub enum VfioError {
    /// The text given is not a PCI address.
    #[error(
        "`{0}` is not a PCI address: expected domain:bus:device.function such as 0000:01:00.0 \
         (list NVMe controllers with `lspci -D -d ::0108`)"
    )]
    InvalidAddress(String),
    /// Nothing at that address.
    #[error(
        "no such device: {bdf} ({} does not exist); list NVMe controllers with \
         `lspci -D -d ::0108`", path.display()
    )]
    NoSuchDevice {
        /// The PCI address.
        bdf: String,
        /// The sysfs directory looked for.
        path: PathBuf,
    },
    /// The device is something other than an NVMe controller.
    #[error(
        "{bdf} is not an NVMe controller: its PCI class is {class:#08x}, NVMe is 0x010802 \
         (list NVMe controllers with `lspci -D -d ::0108`)"
    )]
    NotNvme {
        /// The PCI address.
        bdf: String,
        /// The class code read from sysfs.
        class: u32,
    },
    /// The kernel's NVMe driver owns the device.
    #[error(
        "{bdf} is bound to the kernel's `nvme` driver, which owns it (and every filesystem on \
         it): unmount its namespaces, then hand it to vfio-pci with `isonvme setup bind {bdf}`, \
         or by hand: {}",
        rebind_commands(sysfs, bdf)
    )]
    BoundToNvme {
        /// The PCI address.
        bdf: String,
        /// The sysfs root (`/sys`).
        sysfs: PathBuf,
    },
    /// The device is bound to some driver other than vfio-pci.
    #[error(
        "{bdf} is bound to `{driver}`, not vfio-pci: hand it to vfio-pci with \
         `isonvme setup bind {bdf}`, or by hand: {}",
        rebind_commands(sysfs, bdf)
    )]
    WrongDriver {
        /// The PCI address.
        bdf: String,
        /// The driver it is bound to.
        driver: String,
        /// The sysfs root (`/sys`).
        sysfs: PathBuf,
    },
    /// No driver at all is bound to the device.
    #[error(
        "{bdf} is not bound to any driver: bind it to vfio-pci with `isonvme setup bind {bdf}`, \
         or by hand: {}",
        bind_commands(sysfs, bdf)
    )]
    Unbound {
        /// The PCI address.
        bdf: String,
        /// The sysfs root (`/sys`).
        sysfs: PathBuf,
    },
    /// The device has no IOMMU group: the host has no (enabled) IOMMU.
    #[error(
        "no IOMMU: {bdf} has no IOMMU group ({} is missing): enable VT-d/AMD-Vi in the \
         firmware and boot with intel_iommu=on (Intel) and iommu=pt, or, only on a machine \
         you can afford to crash, ask for VFIO's unsafe no-IOMMU mode explicitly (device \
         name `{bdf},noiommu`, or VfioOptions::noiommu): the device can then write anywhere \
         in memory",
        path.display()
    )]
    NoIommu {
        /// The PCI address.
        bdf: String,
        /// The `iommu_group` link looked for.
        path: PathBuf,
    },
    /// The device's group is a VFIO no-IOMMU group, but no-IOMMU mode was
    /// not asked for.
    #[error(
        "no IOMMU: {bdf} is in VFIO no-IOMMU group {group} (vfio's enable_unsafe_noiommu_mode \
         is on and the host has no IOMMU): enable VT-d/AMD-Vi in the firmware and boot with \
         intel_iommu=on (Intel) and iommu=pt, or, knowing the device can then write anywhere \
         in memory, ask for no-IOMMU mode explicitly (device name `{bdf},noiommu`, or \
         VfioOptions::noiommu)"
    )]
    NoIommuGroup {
        /// The PCI address.
        bdf: String,
        /// The group number.
        group: u32,
    },
    /// No-IOMMU mode was asked for, but the device is behind a real IOMMU.
    #[error(
        "{bdf}: no-IOMMU mode was asked for, but the device is in IOMMU group {group} behind a \
         real IOMMU, which confines its DMA: open it without `,noiommu` (and without \
         VfioOptions::noiommu). No-IOMMU mode is only for hosts that have no IOMMU"
    )]
    NoIommuNotNeeded {
        /// The PCI address.
        bdf: String,
        /// The (real) IOMMU group.
        group: u32,
    },
    /// No-IOMMU mode was asked for, but the kernel's VFIO does not offer it.
    #[error(
        "{bdf}: no-IOMMU mode was asked for, but {}", noiommu_off_advice(bdf, sysfs, *state)
    )]
    NoIommuModeOff {
        /// The PCI address.
        bdf: String,
        /// What `enable_unsafe_noiommu_mode` looks like.
        state: NoIommuParam,
        /// The sysfs root (`/sys`).
        sysfs: PathBuf,
    },
    /// No-IOMMU mode is on and the device is bound to vfio-pci, but it has
    /// no group: it was bound before the mode was turned on.
    #[error(
        "{bdf}: no-IOMMU mode was asked for and vfio's enable_unsafe_noiommu_mode is on, but \
         the device has no IOMMU group ({} is missing): vfio-pci creates the no-IOMMU group \
         when it binds, so bind it again: `echo {bdf} > {}; echo {bdf} > {}`",
        path.display(),
        sysfs.join("bus/pci/drivers/vfio-pci/unbind").display(),
        sysfs.join("bus/pci/drivers_probe").display()
    )]
    NoIommuNoGroup {
        /// The PCI address.
        bdf: String,
        /// The `iommu_group` link looked for.
        path: PathBuf,
        /// The sysfs root (`/sys`).
        sysfs: PathBuf,
    },
    /// The kernel refused a no-IOMMU operation for lack of privilege.
    #[error(
        "{bdf}: {what} was refused ({source}): VFIO's no-IOMMU mode needs CAP_SYS_RAWIO, and \
         reading the physical addresses of DMA memory from /proc/self/pagemap needs \
         CAP_SYS_ADMIN: run the program as root (there is no non-root no-IOMMU mode)"
    )]
    NoIommuNotPermitted {
        /// The PCI address.
        bdf: String,
        /// What was being done.
        what: String,
        /// The OS error (EPERM or EACCES).
        #[source]
        source: io::Error,
    },
    /// Another device in the group is bound to a host driver.
    #[error(
        "IOMMU group {group} of {bdf} is not viable: VFIO can only take a group whose every \
         device is bound to vfio-pci or to no driver, and these are not: {}. Fix: bind them to \
         vfio-pci too (`isonvme setup bind <BDF>` for each) or unbind them, or move the \
         controller to a slot with its own IOMMU group (ACS)",
        list(others)
    )]
    GroupNotViable {
        /// The PCI address.
        bdf: String,
        /// The group number.
        group: u32,
        /// The devices that keep the group from being viable.
        others: Vec<GroupMember>,
    },
    /// This process may not open the group's device node.
    #[error(
        "no permission to open {} for {bdf}: run as root, or hand the group to your user with \
         `isonvme setup bind --user NAME {bdf}`", path.display()
    )]
    PermissionDenied {
        /// The PCI address.
        bdf: String,
        /// The device node (`/dev/vfio/N` or `/dev/vfio/vfio`).
        path: PathBuf,
    },
    /// The group or device is already open elsewhere.
    #[error(
        "{bdf} (IOMMU group {group}) is in use: another process (an isonvme program, a VM, \
         another VFIO user) or another handle in this process has it open; close that first"
    )]
    Busy {
        /// The PCI address.
        bdf: String,
        /// The group number.
        group: u32,
    },
    /// The iommufd route was asked for, but this kernel or device does not
    /// offer it.
    #[error(
        "{bdf}: the iommufd route was asked for, but {reason}: it needs a kernel built with \
         CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV (Linux 6.6 or later) with iommufd and \
         vfio-pci loaded (`modprobe iommufd vfio-pci`), and the device bound to vfio-pci; or \
         open the device through the legacy VFIO container (device name `{bdf},container`, \
         or no option)"
    )]
    IommufdUnavailable {
        /// The PCI address.
        bdf: String,
        /// What is missing.
        reason: String,
    },
    /// This process may not open `/dev/iommu` or the device's VFIO cdev.
    #[error(
        "no permission to open {} for {bdf} (the iommufd route): run as root, or give your \
         user both iommufd nodes (`chown USER /dev/iommu {}`; /dev/iommu lets its owner pin \
         memory up to its memlock limit), or use the legacy container route that `isonvme \
         setup bind --user NAME {bdf}` prepares (device name `{bdf},container`)",
        path.display(),
        cdev.display()
    )]
    IommufdNotPermitted {
        /// The PCI address.
        bdf: String,
        /// The node that could not be opened.
        path: PathBuf,
        /// The device's VFIO cdev (`/dev/vfio/devices/vfioN`).
        cdev: PathBuf,
    },
    /// Binding the device to the iommufd or attaching it to the I/O
    /// address space failed.
    #[error("{bdf}: {what} failed ({source}): {advice}")]
    IommufdBind {
        /// The PCI address.
        bdf: String,
        /// The step that failed.
        what: String,
        /// The likely cause and the fix.
        advice: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The VFIO device nodes are missing.
    #[error(
        "{} does not exist: load the VFIO driver with `modprobe vfio-pci` (and check the \
         IOMMU is enabled: VT-d/AMD-Vi in the firmware, and intel_iommu=on on Intel hosts)", path.display()
    )]
    VfioMissing {
        /// The node looked for.
        path: PathBuf,
    },
    /// A VFIO operation failed.
    #[error("{bdf}: {what}: {source}")]
    Vfio {
        /// The PCI address.
        bdf: String,
        /// What was being done.
        what: String,
        /// The error from the VFIO layer.
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// BAR0 cannot be used as the register window.
    #[error("{bdf}: BAR0 (the NVMe registers) cannot be used: {reason}")]
    Bar {
        /// The PCI address.
        bdf: String,
        /// Why.
        reason: String,
    },
    /// PCI configuration space could not be read or set up.
    #[error("{bdf}: PCI configuration space: {reason}")]
    Config {
        /// The PCI address.
        bdf: String,
        /// Why.
        reason: String,
    },
    /// A sysfs file could not be read.
    #[error("reading {}: {source}", path.display())]
    Sysfs {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An operating-system call failed.
    #[error("{bdf}: {what}: {source}")]
    Io {
        /// The PCI address.
        bdf: String,
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl VfioError {
    /// The closest `std::io::ErrorKind`, for callers that only look at
    /// kinds.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            VfioError::InvalidAddress(_) => io::ErrorKind::InvalidInput,
            VfioError::NoSuchDevice { .. } | VfioError::VfioMissing { .. } => {
                io::ErrorKind::NotFound
            }
            VfioError::PermissionDenied { .. } => io::ErrorKind::PermissionDenied,
            VfioError::IommufdNotPermitted { .. } => io::ErrorKind::PermissionDenied,
            VfioError::IommufdUnavailable { .. } => io::ErrorKind::Unsupported,
            VfioError::IommufdBind { source, .. } => source.kind(),
            VfioError::Busy { .. } => io::ErrorKind::ResourceBusy,
            VfioError::NoIommuNotPermitted { .. } => io::ErrorKind::PermissionDenied,
            VfioError::NotNvme { .. }
            | VfioError::NoIommuModeOff { .. }
            | VfioError::Bar { .. } => io::ErrorKind::Unsupported,
            VfioError::Sysfs { source, .. } | VfioError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::Other,
        }
    }
}

/// VFIO errors reach the driver's callers as transport errors whose source
/// is the [`VfioError`] (recover it with `std::io::Error::get_ref` and
/// `downcast_ref`).
impl From<VfioError> for TransportError {
    fn from(error: VfioError) -> Self {
        TransportError::Io {
            what: "VFIO".to_owned(),
            source: io::Error::new(error.kind(), error),
        }
    }
}

impl From<VfioError> for crate::Error {
    fn from(error: VfioError) -> Self {
        crate::Error::Transport(error.into())
    }
}

fn list(members: &[GroupMember]) -> String {
    members
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What vfio's `enable_unsafe_noiommu_mode` parameter looks like in sysfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoIommuParam {
    /// It reads `Y`.
    On,
    /// It reads `N`.
    Off,
    /// The vfio module is loaded but has no such parameter: the kernel was
    /// built without `CONFIG_VFIO_NOIOMMU`.
    Missing,
    /// There is no vfio module in sysfs at all.
    VfioNotLoaded,
}

/// The rest of the message when no-IOMMU mode is unavailable: why, and
/// the fix.
fn noiommu_off_advice(bdf: &str, sysfs: &Path, state: NoIommuParam) -> String {
    let param = sysfs.join("module/vfio/parameters/enable_unsafe_noiommu_mode");
    let rebind = format!(
        "then bind {bdf} to vfio-pci (`isonvme setup bind` refuses devices without an IOMMU \
         group; by hand: {})",
        bind_commands(sysfs, bdf)
    );
    match state {
        NoIommuParam::On => format!(
            "vfio's enable_unsafe_noiommu_mode is on ({} reads Y) and yet the device is not \
             usable in no-IOMMU mode; {rebind}",
            param.display()
        ),
        NoIommuParam::Off => format!(
            "vfio's enable_unsafe_noiommu_mode is off ({} reads N): turn it on with \
             `echo 1 > {}` (or boot with vfio.enable_unsafe_noiommu_mode=1, or put `options \
             vfio enable_unsafe_noiommu_mode=1` in /etc/modprobe.d/), {rebind}",
            param.display(),
            param.display()
        ),
        NoIommuParam::Missing => format!(
            "this kernel's vfio module has no enable_unsafe_noiommu_mode parameter ({} is \
             missing): it was built without CONFIG_VFIO_NOIOMMU (Debian's kernels, for one). \
             Use a kernel built with it, or better, enable the IOMMU (VT-d/AMD-Vi in the \
             firmware, intel_iommu=on)",
            param.display()
        ),
        NoIommuParam::VfioNotLoaded => format!(
            "the vfio module is not loaded ({} does not exist): load it with `modprobe vfio \
             enable_unsafe_noiommu_mode=1`, {rebind}",
            sysfs.join("module/vfio").display()
        ),
    }
}

/// The manual commands that move a bound device to vfio-pci.
fn rebind_commands(sysfs: &Path, bdf: &str) -> String {
    let device = sysfs.join("bus/pci/devices").join(bdf);
    format!(
        "`modprobe vfio-pci; echo vfio-pci > {}; echo {bdf} > {}; echo {bdf} > {}`",
        device.join("driver_override").display(),
        device.join("driver/unbind").display(),
        sysfs.join("bus/pci/drivers_probe").display()
    )
}

/// The manual commands that bind an unbound device to vfio-pci.
fn bind_commands(sysfs: &Path, bdf: &str) -> String {
    let device = sysfs.join("bus/pci/devices").join(bdf);
    format!(
        "`modprobe vfio-pci; echo vfio-pci > {}; echo {bdf} > {}`",
        device.join("driver_override").display(),
        sysfs.join("bus/pci/drivers_probe").display()
    )
}

/// Classifies a failure to open a VFIO device node (`/dev/vfio/vfio` or
/// `/dev/vfio/N`).
pub(crate) fn open_node_error(
    bdf: &str,
    group: u32,
    path: PathBuf,
    error: &io::Error,
) -> Option<VfioError> {
    let bdf = bdf.to_owned();
    match error.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EPERM) => Some(VfioError::PermissionDenied { bdf, path }),
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            Some(VfioError::VfioMissing { path })
        }
        Some(libc::EBUSY) => Some(VfioError::Busy { bdf, group }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebind_hint_names_the_driver_and_the_commands() {
        let error = VfioError::BoundToNvme {
            bdf: "0000:01:00.0".into(),
            sysfs: "/sys".into(),
        }
        .to_string();
        assert!(error.contains("`nvme`"), "{error}");
        assert!(error.contains("isonvme setup bind 0000:01:00.0"), "{error}");
        assert!(
            error.contains("echo vfio-pci > /sys/bus/pci/devices/0000:01:00.0/driver_override"),
            "{error}"
        );
        assert!(
            error.contains("echo 0000:01:00.0 > /sys/bus/pci/devices/0000:01:00.0/driver/unbind"),
            "{error}"
        );
        assert!(
            error.contains("echo 0000:01:00.0 > /sys/bus/pci/drivers_probe"),
            "{error}"
        );
    }

    #[test]
    fn node_errors_are_classified() {
        let path = PathBuf::from("/dev/vfio/7");
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        let error = open_node_error("0000:01:00.0", 7, path.clone(), &denied).unwrap();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        let text = error.to_string();
        assert!(text.contains("/dev/vfio/7"), "{text}");
        assert!(text.contains("run as root"), "{text}");
        assert!(text.contains("isonvme setup bind --user NAME"), "{text}");
        let busy = io::Error::from_raw_os_error(libc::EBUSY);
        let text = open_node_error("0000:01:00.0", 7, path.clone(), &busy)
            .unwrap()
            .to_string();
        assert!(text.contains("in use"), "{text}");
        let missing = io::Error::from_raw_os_error(libc::ENOENT);
        let text = open_node_error("0000:01:00.0", 7, path.clone(), &missing)
            .unwrap()
            .to_string();
        assert!(text.contains("modprobe vfio-pci"), "{text}");
        let other = io::Error::from_raw_os_error(libc::EIO);
        assert!(open_node_error("0000:01:00.0", 7, path, &other).is_none());
    }

    #[test]
    fn errors_convert_into_the_driver_error_and_back() {
        let error: crate::Error = VfioError::NoSuchDevice {
            bdf: "0000:09:00.0".into(),
            path: "/sys/bus/pci/devices/0000:09:00.0".into(),
        }
        .into();
        let text = error.to_string();
        assert!(text.contains("no such device: 0000:09:00.0"), "{text}");
        let crate::Error::Transport(TransportError::Io { source, .. }) = error else {
            panic!("unexpected variant");
        };
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(source
            .get_ref()
            .and_then(|e| e.downcast_ref::<VfioError>())
            .is_some());
    }
}
