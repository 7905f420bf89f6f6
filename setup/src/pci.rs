//! What sysfs says about PCI functions: class, IDs, driver, IOMMU group,
//! NUMA node, and the kernel devices (controllers, namespaces, partitions)
//! an NVMe controller's driver created.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};

use isonvme::vfio::{PciFunction, PciSysfs, VfioError};
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

use crate::bdf::Bdf;
use crate::error::SetupError;
use crate::roots::Roots;

pub(crate) use isonvme::vfio::{link_name, parse_hex};
pub use isonvme::vfio::{GroupMember, KERNEL_NVME, NVME_CLASS, VFIO_PCI};

/// What sysfs says about one PCI function: the driver's reading, with
/// `path` resolved so descendants can be recognised.
pub type PciDevice = PciFunction;

/// Reads what sysfs knows about `bdf`.
pub fn read_device(roots: &Roots, bdf: &str) -> Result<PciDevice, SetupError> {
    let link = roots.pci_device(bdf);
    if !link.exists() {
        return Err(SetupError::NoSuchDevice {
            bdf: bdf.to_owned(),
            path: link,
        });
    }
    let path = std::fs::canonicalize(&link).unwrap_or_else(|_| link.clone());
    PciFunction::read(bdf, path).map_err(read_error)
}

/// A failed sysfs read of the driver's as setup's error (the readers used
/// here fail only with [`VfioError::Sysfs`]).
fn read_error(error: VfioError) -> SetupError {
    match error {
        VfioError::Sysfs { path, source } => SetupError::read(path, source),
        other => SetupError::read(PathBuf::new(), io::Error::other(other.to_string())),
    }
}

/// `status --json`'s view of a [`PciDevice`] (its path left out).
pub(crate) fn serialize_device<S: Serializer>(
    device: &PciDevice,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut out = serializer.serialize_struct("PciDevice", 8)?;
    out.serialize_field("bdf", &device.bdf)?;
    out.serialize_field("class", &device.class)?;
    out.serialize_field("vendor", &device.vendor)?;
    out.serialize_field("device", &device.device)?;
    out.serialize_field("driver", &device.driver)?;
    out.serialize_field("driver_override", &device.driver_override)?;
    out.serialize_field("iommu_group", &device.iommu_group)?;
    out.serialize_field("numa_node", &device.numa_node)?;
    out.end()
}

/// `status --json`'s view of [`GroupMember`]s.
pub(crate) fn serialize_members<S: Serializer>(
    members: &[GroupMember],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    struct Member<'a>(&'a GroupMember);
    impl Serialize for Member<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut out = serializer.serialize_struct("GroupMember", 3)?;
            out.serialize_field("bdf", &self.0.bdf)?;
            out.serialize_field("class", &self.0.class)?;
            out.serialize_field("driver", &self.0.driver)?;
            out.end()
        }
    }
    serializer.collect_seq(members.iter().map(Member))
}

/// Reads `bdf` and checks it is an NVMe controller.
pub fn read_controller(roots: &Roots, bdf: &Bdf) -> Result<PciDevice, SetupError> {
    let device = read_device(roots, &bdf.to_string())?;
    if !device.is_nvme() {
        return Err(SetupError::NotNvme {
            bdf: device.bdf,
            class: device.class,
        });
    }
    Ok(device)
}

/// Every NVMe controller of the host, in address order.
pub fn nvme_controllers(roots: &Roots) -> Result<Vec<PciDevice>, SetupError> {
    let dir = roots.pci_devices();
    let entries = std::fs::read_dir(&dir).map_err(|e| SetupError::read(&dir, e))?;
    let mut controllers = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // A device that vanished or has an unreadable class is not one we
        // could act on; skip it rather than fail the whole listing.
        if let Ok(device) = read_device(roots, &name) {
            if device.is_nvme() {
                controllers.push(device);
            }
        }
    }
    controllers.sort_by(|a, b| a.bdf.cmp(&b.bdf));
    Ok(controllers)
}

/// The devices of IOMMU group `group`, in address order.
pub fn group_members(roots: &Roots, group: u32) -> Result<Vec<GroupMember>, SetupError> {
    PciSysfs::new(&roots.sys)
        .group_members(group)
        .map_err(read_error)
}

/// The members of `group` other than `bdf` that keep VFIO from taking it.
pub fn blocking_members(members: &[GroupMember], bdf: &str) -> Vec<GroupMember> {
    members
        .iter()
        .filter(|m| m.bdf != bdf && !m.allows_vfio())
        .cloned()
        .collect()
}

/// The domain type of an IOMMU group (`DMA`, `DMA-FQ`, `identity`).
pub fn group_type(roots: &Roots, group: u32) -> Option<String> {
    read_trimmed(&roots.iommu_groups().join(group.to_string()).join("type")).ok()
}

/// A disk or partition the kernel created for a controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDevice {
    /// Its kernel name (`nvme0n1`, `nvme0n1p2`).
    pub name: String,
    /// `major:minor`.
    pub dev: Option<String>,
    /// Size in bytes.
    pub size_bytes: Option<u64>,
    /// For a partition, the disk it is on.
    pub partition_of: Option<String>,
}

/// The kernel devices an NVMe controller's driver created: what can be in
/// use by the host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KernelDevices {
    /// Controller character devices (`nvme0`).
    pub controllers: Vec<String>,
    /// Namespace generic character devices (`ng0n1`).
    pub generic: Vec<String>,
    /// Namespaces (disks) and their partitions, disks first then each
    /// disk's partitions, in name order.
    pub block: Vec<BlockDevice>,
}

impl KernelDevices {
    /// Every `/dev` name that refers to the controller.
    pub fn dev_names(&self) -> BTreeSet<String> {
        self.controllers
            .iter()
            .chain(&self.generic)
            .cloned()
            .chain(self.block.iter().map(|b| b.name.clone()))
            .collect()
    }

    /// The namespaces (whole disks).
    pub fn disks(&self) -> impl Iterator<Item = &BlockDevice> {
        self.block.iter().filter(|b| b.partition_of.is_none())
    }

    /// The partitions of `disk`.
    pub fn partitions_of<'a>(&'a self, disk: &'a str) -> impl Iterator<Item = &'a BlockDevice> {
        self.block
            .iter()
            .filter(move |b| b.partition_of.as_deref() == Some(disk))
    }
}

/// Finds the kernel devices of `device`: its `nvme/nvmeN` controllers, and
/// every entry of `/sys/class/block` that lives under the PCI device, plus
/// native-multipath heads (`/sys/devices/virtual/nvme-subsystem/...`)
/// whose `multipath/` lists one of its hidden path devices (`nvme0c0n1`),
/// and their partitions.
pub fn kernel_devices(roots: &Roots, device: &PciDevice) -> KernelDevices {
    let mut found = KernelDevices::default();
    let ctrl_dir = device.path.join("nvme");
    for controller in dir_names(&ctrl_dir) {
        found.generic.extend(
            dir_names(&ctrl_dir.join(&controller))
                .into_iter()
                .filter(|name| is_generic_name(name)),
        );
        found.controllers.push(controller);
    }
    // Resolve every block device once: (name, resolved sysfs dir).
    let all: Vec<(String, PathBuf)> = dir_names(&roots.class_block())
        .into_iter()
        .filter_map(|name| {
            let path = std::fs::canonicalize(roots.class_block().join(&name)).ok()?;
            Some((name, path))
        })
        .collect();
    let mut own_paths: Vec<PathBuf> = Vec::new();
    let mut hidden: BTreeSet<String> = BTreeSet::new();
    for (name, path) in &all {
        if path.starts_with(&device.path) {
            if is_path_device_name(name) {
                hidden.insert(name.clone());
            } else {
                own_paths.push(path.clone());
            }
        }
    }
    // Multipath heads: a head is ours when one of its paths is ours. A
    // head shared with another controller (dual-port) counts too: taking
    // one path away is still taking the namespace from its users.
    if !hidden.is_empty() {
        for (_, path) in &all {
            if dir_names(&path.join("multipath"))
                .iter()
                .any(|p| hidden.contains(p))
            {
                own_paths.push(path.clone());
            }
        }
        // Partitions of those heads.
        let heads = own_paths.clone();
        for (_, path) in &all {
            if !own_paths.contains(path) && heads.iter().any(|h| path.starts_with(h)) {
                own_paths.push(path.clone());
            }
        }
    }
    for (name, path) in &all {
        if !own_paths.contains(path) || is_path_device_name(name) {
            continue;
        }
        let partition_of = path
            .join("partition")
            .exists()
            .then(|| path.parent().and_then(|p| p.file_name()))
            .flatten()
            .map(|n| n.to_string_lossy().into_owned());
        found.block.push(BlockDevice {
            name: name.clone(),
            dev: read_trimmed(&path.join("dev")).ok(),
            size_bytes: read_trimmed(&path.join("size"))
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .map(|sectors| sectors.saturating_mul(512)),
            partition_of,
        });
    }
    // Disks first (in name order), each followed by nothing: callers use
    // `partitions_of`; a stable order keeps messages and tests stable.
    found.block.sort_by(|a, b| {
        (a.partition_of.is_some(), &a.name).cmp(&(b.partition_of.is_some(), &b.name))
    });
    found
}

/// `nvme0c0n1`: a hidden per-path device of native NVMe multipath.
fn is_path_device_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("nvme") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match rest.split_once('c') {
        Some((subsys, tail)) => match tail.split_once('n') {
            Some((ctrl, ns)) => digits(subsys) && digits(ctrl) && digits(ns),
            None => false,
        },
        None => false,
    }
}

/// `ng0n1`: a namespace's generic character device.
fn is_generic_name(name: &str) -> bool {
    name.strip_prefix("ng")
        .and_then(|rest| rest.split_once('n'))
        .is_some_and(|(a, b)| {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
}

/// The names in a directory, sorted; empty if it cannot be read.
pub(crate) fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A file's contents without surrounding white space.
pub(crate) fn read_trimmed(path: &Path) -> io::Result<String> {
    std::fs::read_to_string(path).map(|text| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_classified() {
        assert!(is_path_device_name("nvme0c0n1"));
        assert!(is_path_device_name("nvme12c3n45"));
        assert!(!is_path_device_name("nvme0n1"));
        assert!(!is_path_device_name("nvme0n1p1"));
        assert!(!is_path_device_name("nvmec0n1"));
        assert!(is_generic_name("ng0n1"));
        assert!(!is_generic_name("ng0"));
        assert!(!is_generic_name("nvme0n1"));
    }
}
