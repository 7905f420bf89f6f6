//! What sysfs says about a PCI function before VFIO is touched: does it
//! exist, is it an NVMe controller, which driver owns it, which IOMMU group
//! it is in and whether that group can be handed to userspace.
//!
//! Everything works under a configurable root (normally `/sys`) so the
//! checks can be tested against a fake tree.

use std::path::{Path, PathBuf};

use super::error::{GroupMember, NoIommuParam, VfioError};

/// PCI class code of an NVMe controller: mass storage (0x01),
/// non-volatile memory (0x08), NVMe programming interface (0x02).
pub const NVME_CLASS: u32 = 0x01_08_02;

/// The driver VFIO needs a device bound to.
pub const VFIO_PCI: &str = "vfio-pci";

/// The kernel's own NVMe driver.
pub const KERNEL_NVME: &str = "nvme";

/// What sysfs says about one PCI function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciFunction {
    /// The PCI address, `dddd:bb:dd.f`.
    pub bdf: String,
    /// Its sysfs directory.
    pub path: PathBuf,
    /// The 24-bit class code (`0x010802` for NVMe).
    pub class: u32,
    /// PCI vendor ID, if readable.
    pub vendor: Option<u16>,
    /// PCI device ID, if readable.
    pub device: Option<u16>,
    /// The driver bound to it, if any.
    pub driver: Option<String>,
    /// The driver forced with `driver_override`, if any.
    pub driver_override: Option<String>,
    /// Its IOMMU group, if the host has an IOMMU (or no-IOMMU VFIO).
    pub iommu_group: Option<u32>,
    /// The NUMA node it is attached to (`None` when unknown or -1).
    pub numa_node: Option<u32>,
}

impl PciFunction {
    /// Reads what sysfs knows about the function `bdf` whose sysfs
    /// directory is `path` (a `bus/pci/devices` link or the directory it
    /// resolves to). Only [`VfioError::Sysfs`] comes from here.
    pub fn read(bdf: &str, path: PathBuf) -> Result<PciFunction, VfioError> {
        let class_path = path.join("class");
        let class_text = read_trimmed(&class_path)?;
        let class = parse_hex(&class_text).ok_or_else(|| VfioError::Sysfs {
            path: class_path.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("`{class_text}` is not a class code"),
            ),
        })? & 0x00ff_ffff;
        let id = |name: &str| {
            read_trimmed(&path.join(name))
                .ok()
                .and_then(|text| parse_hex(&text))
                .and_then(|value| u16::try_from(value).ok())
        };
        let driver_override = read_trimmed(&path.join("driver_override"))
            .ok()
            .filter(|text| !text.is_empty() && text != "(null)");
        let numa_node = read_trimmed(&path.join("numa_node"))
            .ok()
            .and_then(|text| text.parse::<u32>().ok());
        Ok(PciFunction {
            bdf: bdf.to_owned(),
            vendor: id("vendor"),
            device: id("device"),
            driver: link_name(&path.join("driver")),
            driver_override,
            iommu_group: link_name(&path.join("iommu_group")).and_then(|n| n.parse().ok()),
            numa_node,
            class,
            path,
        })
    }

    /// Whether this is an NVMe controller.
    pub fn is_nvme(&self) -> bool {
        self.class == NVME_CLASS
    }
}

/// Counts of 2 MiB hugepages, from
/// `kernel/mm/hugepages/hugepages-2048kB` under the sysfs root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HugePages {
    /// Pages reserved in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use (`free_hugepages`).
    pub free: u64,
    /// Free pages already promised to mappings (`resv_hugepages`).
    pub reserved: u64,
}

impl HugePages {
    /// Pages a new mapping can still get.
    pub fn available(&self) -> u64 {
        self.free.saturating_sub(self.reserved)
    }
}

/// A sysfs tree: `/sys`, or a fake one in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciSysfs {
    root: PathBuf,
}

impl PciSysfs {
    /// Sysfs under `root`, a directory laid out like `/sys`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PciSysfs { root: root.into() }
    }

    /// This host's sysfs, `/sys`.
    pub fn host() -> Self {
        PciSysfs::new("/sys")
    }

    /// The root this reads under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The sysfs directory of the PCI function `bdf`.
    pub fn device_path(&self, bdf: &str) -> PathBuf {
        self.root.join("bus/pci/devices").join(bdf)
    }

    /// The sysfs directory of IOMMU group `group`.
    pub fn group_path(&self, group: u32) -> PathBuf {
        self.root
            .join("kernel/iommu_groups")
            .join(group.to_string())
    }

    /// Reads what sysfs knows about `bdf` (a normalised PCI address).
    pub fn inspect(&self, bdf: &str) -> Result<PciFunction, VfioError> {
        let path = self.device_path(bdf);
        if !path.exists() {
            return Err(VfioError::NoSuchDevice {
                bdf: bdf.to_owned(),
                path,
            });
        }
        PciFunction::read(bdf, path)
    }

    /// The devices of IOMMU group `group`, each with its driver.
    pub fn group_members(&self, group: u32) -> Result<Vec<GroupMember>, VfioError> {
        let dir = self.group_path(group).join("devices");
        let entries = std::fs::read_dir(&dir).map_err(|source| VfioError::Sysfs {
            path: dir.clone(),
            source,
        })?;
        let mut members = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| VfioError::Sysfs {
                path: dir.clone(),
                source,
            })?;
            let path = entry.path();
            members.push(GroupMember {
                bdf: entry.file_name().to_string_lossy().into_owned(),
                class: read_trimmed(&path.join("class"))
                    .ok()
                    .and_then(|text| parse_hex(&text)),
                driver: link_name(&path.join("driver")),
            });
        }
        members.sort_by(|a, b| a.bdf.cmp(&b.bdf));
        Ok(members)
    }

    /// Whether `group` is a VFIO no-IOMMU group (one VFIO made up for a
    /// device on a host without IOMMU, in enable_unsafe_noiommu_mode).
    pub fn is_noiommu_group(&self, group: u32) -> bool {
        read_trimmed(&self.group_path(group).join("name"))
            .map(|name| name == "vfio-noiommu")
            .unwrap_or(false)
    }

    /// What vfio's `enable_unsafe_noiommu_mode` parameter says.
    pub fn noiommu_param(&self) -> NoIommuParam {
        let module = self.root.join("module/vfio");
        match read_trimmed(&module.join("parameters/enable_unsafe_noiommu_mode")) {
            // Bool module parameters read Y or N; 1 is accepted for safety.
            Ok(value) if value == "Y" || value == "1" => NoIommuParam::On,
            Ok(_) => NoIommuParam::Off,
            Err(_) if module.exists() => NoIommuParam::Missing,
            Err(_) => NoIommuParam::VfioNotLoaded,
        }
    }

    /// Every check that can be made before opening VFIO, in the order a
    /// user fixes them: the device exists, is an NVMe controller, is bound
    /// to vfio-pci, has an IOMMU group (a real one unless `noiommu`), and
    /// the group is viable. Returns the function and its group.
    ///
    /// With `noiommu` (VFIO's unsafe no-IOMMU mode, asked for explicitly)
    /// the device must *not* be behind a real IOMMU, and vfio's
    /// `enable_unsafe_noiommu_mode` must be on; both are checked before the
    /// driver, because their fixes come first (the mode decides whether
    /// vfio-pci can take the device at all).
    pub fn check_vfio_ready(
        &self,
        bdf: &str,
        noiommu: bool,
    ) -> Result<(PciFunction, u32), VfioError> {
        let function = self.inspect(bdf)?;
        let owned = || bdf.to_owned();
        if function.class != NVME_CLASS {
            return Err(VfioError::NotNvme {
                bdf: owned(),
                class: function.class,
            });
        }
        if noiommu {
            if let Some(group) = function.iommu_group {
                if !self.is_noiommu_group(group) {
                    return Err(VfioError::NoIommuNotNeeded {
                        bdf: owned(),
                        group,
                    });
                }
            }
            let state = self.noiommu_param();
            if state != NoIommuParam::On {
                return Err(VfioError::NoIommuModeOff {
                    bdf: owned(),
                    state,
                    sysfs: self.root.clone(),
                });
            }
        }
        match function.driver.as_deref() {
            Some(VFIO_PCI) => {}
            Some(KERNEL_NVME) => {
                return Err(VfioError::BoundToNvme {
                    bdf: owned(),
                    sysfs: self.root.clone(),
                })
            }
            Some(other) => {
                return Err(VfioError::WrongDriver {
                    bdf: owned(),
                    driver: other.to_owned(),
                    sysfs: self.root.clone(),
                })
            }
            None => {
                return Err(VfioError::Unbound {
                    bdf: owned(),
                    sysfs: self.root.clone(),
                })
            }
        }
        let Some(group) = function.iommu_group else {
            let path = function.path.join("iommu_group");
            return Err(if noiommu {
                VfioError::NoIommuNoGroup {
                    bdf: owned(),
                    path,
                    sysfs: self.root.clone(),
                }
            } else {
                VfioError::NoIommu { bdf: owned(), path }
            });
        };
        if !noiommu && self.is_noiommu_group(group) {
            return Err(VfioError::NoIommuGroup {
                bdf: owned(),
                group,
            });
        }
        let others: Vec<GroupMember> = self
            .group_members(group)?
            .into_iter()
            .filter(|member| member.bdf != bdf)
            .filter(|member| !member.allows_vfio())
            .collect();
        if !others.is_empty() {
            return Err(VfioError::GroupNotViable {
                bdf: owned(),
                group,
                others,
            });
        }
        Ok((function, group))
    }

    /// The 2 MiB hugepage counts, if the kernel has 2 MiB hugepages.
    pub fn hugepages_2m(&self) -> Option<HugePages> {
        let dir = self.root.join("kernel/mm/hugepages/hugepages-2048kB");
        let count = |name: &str| {
            read_trimmed(&dir.join(name))
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
        };
        Some(HugePages {
            total: count("nr_hugepages")?,
            free: count("free_hugepages")?,
            reserved: count("resv_hugepages").unwrap_or(0),
        })
    }
}

fn read_trimmed(path: &Path) -> Result<String, VfioError> {
    std::fs::read_to_string(path)
        .map(|text| text.trim().to_owned())
        .map_err(|source| VfioError::Sysfs {
            path: path.to_path_buf(),
            source,
        })
}

/// The last component of a symlink's target (`driver` → `vfio-pci`).
pub fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Parses a hexadecimal sysfs value, `0x010802` or `010802`.
pub fn parse_hex(text: &str) -> Option<u32> {
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    u32::from_str_radix(digits, 16).ok()
}

/// A fake sysfs tree for tests.
#[cfg(test)]
pub(crate) mod fake {
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    /// A temporary directory laid out like `/sys`.
    pub(crate) struct FakeSysfs {
        dir: tempfile::TempDir,
    }

    impl FakeSysfs {
        pub(crate) fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            for sub in ["bus/pci/devices", "bus/pci/drivers", "kernel/iommu_groups"] {
                std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            }
            FakeSysfs { dir }
        }

        pub(crate) fn root(&self) -> &Path {
            self.dir.path()
        }

        fn device_dir(&self, bdf: &str) -> PathBuf {
            self.root().join("devices/pci0000:00").join(bdf)
        }

        /// Adds a PCI function with a class, optional driver and group.
        pub(crate) fn add(&self, bdf: &str, class: u32, driver: Option<&str>, group: Option<u32>) {
            let dir = self.device_dir(bdf);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("class"), format!("{class:#08x}\n")).unwrap();
            std::fs::write(dir.join("vendor"), "0x1b36\n").unwrap();
            std::fs::write(dir.join("device"), "0x0010\n").unwrap();
            std::fs::write(dir.join("numa_node"), "-1\n").unwrap();
            symlink(&dir, self.root().join("bus/pci/devices").join(bdf)).unwrap();
            if let Some(driver) = driver {
                let driver_dir = self.root().join("bus/pci/drivers").join(driver);
                std::fs::create_dir_all(&driver_dir).unwrap();
                symlink(&driver_dir, dir.join("driver")).unwrap();
            }
            if let Some(group) = group {
                let group_dir = self
                    .root()
                    .join("kernel/iommu_groups")
                    .join(group.to_string());
                std::fs::create_dir_all(group_dir.join("devices")).unwrap();
                symlink(&group_dir, dir.join("iommu_group")).unwrap();
                symlink(&dir, group_dir.join("devices").join(bdf)).unwrap();
            }
        }

        /// Marks a group as a VFIO no-IOMMU group.
        pub(crate) fn make_noiommu(&self, group: u32) {
            let dir = self
                .root()
                .join("kernel/iommu_groups")
                .join(group.to_string());
            std::fs::write(dir.join("name"), "vfio-noiommu\n").unwrap();
        }

        /// Sets vfio's `enable_unsafe_noiommu_mode` (`Some("Y")`, `Some("N")`),
        /// or creates the vfio module without the parameter (`None`).
        pub(crate) fn noiommu_param(&self, value: Option<&str>) {
            let dir = self.root().join("module/vfio/parameters");
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(value) = value {
                std::fs::write(dir.join("enable_unsafe_noiommu_mode"), format!("{value}\n"))
                    .unwrap();
            }
        }

        /// Writes the 2 MiB hugepage counters.
        pub(crate) fn hugepages(&self, total: u64, free: u64) {
            let dir = self.root().join("kernel/mm/hugepages/hugepages-2048kB");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("nr_hugepages"), format!("{total}\n")).unwrap();
            std::fs::write(dir.join("free_hugepages"), format!("{free}\n")).unwrap();
            std::fs::write(dir.join("resv_hugepages"), "0\n").unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeSysfs;
    use super::*;

    const BDF: &str = "0000:01:00.0";

    fn check(fake: &FakeSysfs, noiommu: bool) -> Result<(PciFunction, u32), VfioError> {
        PciSysfs::new(fake.root()).check_vfio_ready(BDF, noiommu)
    }

    #[test]
    fn a_ready_device_passes_and_is_described() {
        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, Some(VFIO_PCI), Some(12));
        let (function, group) = check(&fake, false).unwrap();
        assert_eq!(group, 12);
        assert_eq!(function.class, NVME_CLASS);
        assert_eq!(function.vendor, Some(0x1b36));
        assert_eq!(function.device, Some(0x0010));
        assert_eq!(function.driver.as_deref(), Some(VFIO_PCI));
        assert_eq!(function.numa_node, None);
    }

    #[test]
    fn a_missing_device_says_so() {
        let fake = FakeSysfs::new();
        let error = check(&fake, false).unwrap_err();
        assert!(matches!(error, VfioError::NoSuchDevice { .. }));
        let text = error.to_string();
        assert!(text.contains("no such device: 0000:01:00.0"), "{text}");
        assert!(text.contains("lspci"), "{text}");
    }

    #[test]
    fn a_device_of_another_class_is_refused() {
        let fake = FakeSysfs::new();
        fake.add(BDF, 0x020000, Some(VFIO_PCI), Some(3));
        let text = check(&fake, false).unwrap_err().to_string();
        assert!(text.contains("not an NVMe controller"), "{text}");
        assert!(text.contains("0x020000"), "{text}");
    }

    #[test]
    fn a_device_bound_to_nvme_names_the_driver_and_the_rebind() {
        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, Some("nvme"), Some(3));
        let error = check(&fake, false).unwrap_err();
        assert!(matches!(error, VfioError::BoundToNvme { .. }));
        let text = error.to_string();
        assert!(text.contains("`nvme`"), "{text}");
        assert!(text.contains("isonvme setup bind 0000:01:00.0"), "{text}");
        assert!(text.contains("driver_override"), "{text}");
        assert!(text.contains("drivers_probe"), "{text}");
    }

    #[test]
    fn other_drivers_and_no_driver_are_refused_with_the_fix() {
        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, Some("uio_pci_generic"), Some(3));
        let text = check(&fake, false).unwrap_err().to_string();
        assert!(text.contains("bound to `uio_pci_generic`"), "{text}");
        assert!(text.contains("isonvme setup bind"), "{text}");

        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, None, Some(3));
        let text = check(&fake, false).unwrap_err().to_string();
        assert!(text.contains("not bound to any driver"), "{text}");
        assert!(text.contains("driver_override"), "{text}");
        assert!(!text.contains("unbind"), "{text}");
    }

    #[test]
    fn no_iommu_group_means_no_iommu() {
        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, Some(VFIO_PCI), None);
        let text = check(&fake, false).unwrap_err().to_string();
        assert!(text.starts_with("no IOMMU"), "{text}");
        assert!(text.contains("intel_iommu=on"), "{text}");
        assert!(text.contains("iommu=pt"), "{text}");
        assert!(text.contains("no-IOMMU mode explicitly"), "{text}");
    }

    #[test]
    fn noiommu_groups_need_the_explicit_option() {
        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, Some(VFIO_PCI), Some(0));
        fake.make_noiommu(0);
        fake.noiommu_param(Some("Y"));
        let error = check(&fake, false).unwrap_err();
        assert!(
            matches!(error, VfioError::NoIommuGroup { group: 0, .. }),
            "{error}"
        );
        let text = error.to_string();
        assert!(text.contains("0000:01:00.0,noiommu"), "{text}");
        // Asked for explicitly, with the mode on, the group is accepted.
        let (function, group) = check(&fake, true).unwrap();
        assert_eq!((function.bdf.as_str(), group), (BDF, 0));
    }

    #[test]
    fn noiommu_is_refused_behind_a_real_iommu() {
        let fake = FakeSysfs::new();
        // Even bound to nvme: the fix (drop `,noiommu`) comes first.
        fake.add(BDF, NVME_CLASS, Some(KERNEL_NVME), Some(7));
        fake.noiommu_param(Some("Y"));
        let error = check(&fake, true).unwrap_err();
        assert!(
            matches!(error, VfioError::NoIommuNotNeeded { group: 7, .. }),
            "{error}"
        );
        let text = error.to_string();
        assert!(text.contains("real IOMMU"), "{text}");
        assert!(text.contains("without `,noiommu`"), "{text}");
    }

    #[test]
    fn noiommu_needs_the_module_parameter_and_names_the_fix() {
        // No IOMMU, device left unbound because vfio-pci could not take it.
        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, None, None);
        let sysfs = PciSysfs::new(fake.root());
        assert_eq!(sysfs.noiommu_param(), NoIommuParam::VfioNotLoaded);
        let text = check(&fake, true).unwrap_err().to_string();
        assert!(
            text.contains("modprobe vfio enable_unsafe_noiommu_mode=1"),
            "{text}"
        );
        assert!(text.contains("drivers_probe"), "{text}");

        fake.noiommu_param(None);
        assert_eq!(sysfs.noiommu_param(), NoIommuParam::Missing);
        let text = check(&fake, true).unwrap_err().to_string();
        assert!(text.contains("CONFIG_VFIO_NOIOMMU"), "{text}");

        fake.noiommu_param(Some("N"));
        assert_eq!(sysfs.noiommu_param(), NoIommuParam::Off);
        let error = check(&fake, true).unwrap_err();
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
        let text = error.to_string();
        assert!(text.contains("reads N"), "{text}");
        assert!(
            text.contains("module/vfio/parameters/enable_unsafe_noiommu_mode"),
            "{text}"
        );
        assert!(text.contains("vfio.enable_unsafe_noiommu_mode=1"), "{text}");
        assert!(text.contains("driver_override"), "{text}");

        // Mode on, but still unbound: the ordinary binding advice.
        fake.noiommu_param(Some("Y"));
        assert_eq!(sysfs.noiommu_param(), NoIommuParam::On);
        let error = check(&fake, true).unwrap_err();
        assert!(matches!(error, VfioError::Unbound { .. }), "{error}");
    }

    #[test]
    fn noiommu_bound_without_a_group_asks_for_a_rebind() {
        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, Some(VFIO_PCI), None);
        fake.noiommu_param(Some("Y"));
        let error = check(&fake, true).unwrap_err();
        assert!(matches!(error, VfioError::NoIommuNoGroup { .. }), "{error}");
        let text = error.to_string();
        assert!(text.contains("drivers/vfio-pci/unbind"), "{text}");
        // Without the option it stays the plain "no IOMMU" advice.
        let text = check(&fake, false).unwrap_err().to_string();
        assert!(text.starts_with("no IOMMU"), "{text}");
        assert!(text.contains("0000:01:00.0,noiommu"), "{text}");
    }

    #[test]
    fn a_group_with_host_drivers_is_not_viable_and_lists_them() {
        let fake = FakeSysfs::new();
        fake.add(BDF, NVME_CLASS, Some(VFIO_PCI), Some(5));
        fake.add("0000:01:00.1", 0x040300, Some("snd_hda_intel"), Some(5));
        fake.add("0000:01:00.2", 0x0c0330, None, Some(5));
        fake.add("0000:01:00.3", 0x0c0330, Some(VFIO_PCI), Some(5));
        fake.add("0000:00:01.0", 0x060400, Some("pcieport"), Some(5));
        fake.add("0000:01:00.4", 0x010802, Some("nvme"), Some(5));
        let error = check(&fake, false).unwrap_err();
        let VfioError::GroupNotViable { group, others, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(*group, 5);
        let listed: Vec<&str> = others.iter().map(|m| m.bdf.as_str()).collect();
        assert_eq!(listed, ["0000:01:00.1", "0000:01:00.4"]);
        let text = error.to_string();
        assert!(
            text.contains("0000:01:00.1 (bound to snd_hda_intel)"),
            "{text}"
        );
        assert!(text.contains("0000:01:00.4 (bound to nvme)"), "{text}");
        assert!(!text.contains("0000:01:00.2"), "{text}");
        assert!(text.contains("isonvme setup bind"), "{text}");
    }

    #[test]
    fn hugepage_counts_are_read() {
        let fake = FakeSysfs::new();
        let sysfs = PciSysfs::new(fake.root());
        assert_eq!(sysfs.hugepages_2m(), None);
        fake.hugepages(64, 10);
        let pages = sysfs.hugepages_2m().unwrap();
        assert_eq!((pages.total, pages.free, pages.available()), (64, 10, 10));
    }

    #[test]
    fn hex_parsing_accepts_sysfs_forms() {
        assert_eq!(parse_hex("0x010802"), Some(0x010802));
        assert_eq!(parse_hex("010802"), Some(0x010802));
        assert_eq!(parse_hex("0xzz"), None);
    }
}
