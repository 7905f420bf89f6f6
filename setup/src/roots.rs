//! Where the kernel's trees are: `/sys`, `/proc` and `/dev` on a real
//! host, directories in a tempdir in tests. Every read and write of this
//! crate goes through these roots, so nothing in a test touches the host.

use std::path::{Path, PathBuf};

/// The sysfs, procfs and devtmpfs roots.
///
/// Paths the kernel itself reports (mount sources in `mountinfo`, swap
/// devices, `/proc/<pid>/fd` link targets) are always in the kernel's view
/// (`/dev/nvme0n1`); the `dev` root is only where this crate touches files
/// itself (`/dev/vfio/<group>`, the hugetlbfs mount point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
    /// devtmpfs, normally `/dev`.
    pub dev: PathBuf,
}

impl Roots {
    /// This host: `/sys`, `/proc`, `/dev`.
    pub fn host() -> Self {
        Roots {
            sys: PathBuf::from("/sys"),
            proc: PathBuf::from("/proc"),
            dev: PathBuf::from("/dev"),
        }
    }

    /// `dir/sys`, `dir/proc`, `dir/dev`: a fake host in one directory.
    pub fn under(dir: &Path) -> Self {
        Roots {
            sys: dir.join("sys"),
            proc: dir.join("proc"),
            dev: dir.join("dev"),
        }
    }

    /// `/sys/bus/pci/devices`.
    pub fn pci_devices(&self) -> PathBuf {
        self.sys.join("bus/pci/devices")
    }

    /// `/sys/bus/pci/devices/<bdf>`.
    pub fn pci_device(&self, bdf: &str) -> PathBuf {
        self.pci_devices().join(bdf)
    }

    /// `/sys/bus/pci/drivers/<name>`: exists when the driver is loaded.
    pub fn pci_driver(&self, name: &str) -> PathBuf {
        self.sys.join("bus/pci/drivers").join(name)
    }

    /// `/sys/bus/pci/drivers_probe`: writing a PCI address makes the
    /// kernel find a driver for it (honouring `driver_override`).
    pub fn drivers_probe(&self) -> PathBuf {
        self.sys.join("bus/pci/drivers_probe")
    }

    /// `/sys/kernel/iommu_groups`.
    pub fn iommu_groups(&self) -> PathBuf {
        self.sys.join("kernel/iommu_groups")
    }

    /// `/sys/class/block`: every disk and partition.
    pub fn class_block(&self) -> PathBuf {
        self.sys.join("class/block")
    }

    /// `/sys/kernel/mm/hugepages`.
    pub fn hugepages(&self) -> PathBuf {
        self.sys.join("kernel/mm/hugepages")
    }

    /// `/sys/devices/system/node`.
    pub fn nodes(&self) -> PathBuf {
        self.sys.join("devices/system/node")
    }

    /// `/dev/vfio/<group>`: the VFIO group node a program opens.
    pub fn vfio_group_node(&self, group: u32) -> PathBuf {
        self.dev.join("vfio").join(group.to_string())
    }

    /// `/proc/self/mountinfo`.
    pub fn mountinfo(&self) -> PathBuf {
        self.proc.join("self/mountinfo")
    }
}
