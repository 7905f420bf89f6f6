//! A fake host for tests: sysfs, procfs and /dev trees in a directory,
//! and a [`FakeSystem`] that records every change and plays the kernel's
//! part (binding on `drivers_probe`, granting hugepages up to a limit).
//! Public so this crate's integration tests, and tools built on it, can
//! use it; it never touches the real host.

use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::pci::{link_name, read_trimmed, NVME_CLASS};
use crate::roots::Roots;
use crate::system::System;
use crate::user::{User, UserSpec};

/// Fake `/sys`, `/proc` and `/dev` trees under one directory.
#[derive(Debug, Clone)]
pub struct FakeHost {
    roots: Roots,
}

fn write(path: &Path, text: &str) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)
}

fn append(path: &Path, text: &str) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}

impl FakeHost {
    /// An empty host under `dir`: no devices, no IOMMU, no hugepages, no
    /// mounts, no processes.
    pub fn new(dir: &Path) -> io::Result<Self> {
        let roots = Roots::under(dir);
        for sub in [
            "bus/pci/devices",
            "bus/pci/drivers",
            "kernel/iommu_groups",
            "kernel/mm/hugepages",
            "class/block",
            "class/iommu",
            "devices/system/cpu",
            "devices/system/node",
        ] {
            std::fs::create_dir_all(roots.sys.join(sub))?;
        }
        write(&roots.drivers_probe(), "")?;
        std::fs::create_dir_all(roots.dev.join("vfio"))?;
        write(&roots.mountinfo(), "")?;
        write(
            &roots.proc.join("swaps"),
            "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n",
        )?;
        write(
            &roots.proc.join("cmdline"),
            "BOOT_IMAGE=/vmlinuz ro quiet\n",
        )?;
        write(&roots.proc.join("meminfo"), "Hugepagesize:       2048 kB\n")?;
        let host = FakeHost { roots };
        host.set_memlock(Some(8 << 20), Some(8 << 20))?;
        Ok(host)
    }

    /// The roots to pass to the library.
    pub fn roots(&self) -> Roots {
        self.roots.clone()
    }

    fn device_dir(&self, bdf: &str) -> PathBuf {
        self.roots.sys.join("devices/pci0000:00").join(bdf)
    }

    /// Registers a PCI driver (its directory with `bind`/`unbind`).
    pub fn add_driver(&self, name: &str) -> io::Result<()> {
        let dir = self.roots.pci_driver(name);
        std::fs::create_dir_all(&dir)?;
        write(&dir.join("bind"), "")?;
        write(&dir.join("unbind"), "")
    }

    /// Adds a PCI function of class `class`, bound to `driver`, in IOMMU
    /// group `group`, on NUMA node 0.
    pub fn add_pci(
        &self,
        bdf: &str,
        class: u32,
        driver: Option<&str>,
        group: Option<u32>,
    ) -> io::Result<()> {
        let dir = self.device_dir(bdf);
        std::fs::create_dir_all(&dir)?;
        write(&dir.join("class"), &format!("{class:#08x}\n"))?;
        write(&dir.join("vendor"), "0x1b36\n")?;
        write(&dir.join("device"), "0x0010\n")?;
        write(&dir.join("numa_node"), "0\n")?;
        write(&dir.join("driver_override"), "(null)\n")?;
        symlink(&dir, self.roots.pci_device(bdf))?;
        if let Some(driver) = driver {
            self.add_driver(driver)?;
            symlink(self.roots.pci_driver(driver), dir.join("driver"))?;
        }
        if let Some(group) = group {
            let group_dir = self.roots.iommu_groups().join(group.to_string());
            std::fs::create_dir_all(group_dir.join("devices"))?;
            write(&group_dir.join("type"), "DMA-FQ\n")?;
            symlink(&group_dir, dir.join("iommu_group"))?;
            symlink(&dir, group_dir.join("devices").join(bdf))?;
        }
        Ok(())
    }

    /// Adds an NVMe controller bound to `driver`, in `group`.
    pub fn add_nvme(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) -> io::Result<()> {
        self.add_pci(bdf, NVME_CLASS, driver, group)
    }

    /// Adds the kernel's controller device `nvmeN` under the PCI function.
    pub fn add_kernel_controller(&self, bdf: &str, name: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.device_dir(bdf).join("nvme").join(name))
    }

    /// Adds namespace `disk` (`nvme0n1`, device number `dev`) of
    /// controller `ctrl` with `partitions` (name, device number).
    pub fn add_namespace(
        &self,
        bdf: &str,
        ctrl: &str,
        disk: &str,
        dev: &str,
        partitions: &[(&str, &str)],
    ) -> io::Result<()> {
        let ctrl_dir = self.device_dir(bdf).join("nvme").join(ctrl);
        let disk_dir = ctrl_dir.join(disk);
        self.add_block(&disk_dir, disk, dev, false)?;
        for (name, dev) in partitions {
            self.add_block(&disk_dir.join(name), name, dev, true)?;
        }
        Ok(())
    }

    /// Adds a native-multipath namespace: the hidden path device
    /// `path_name` (`nvme0c0n1`) under the controller, and the head `disk`
    /// under the NVMe subsystem, with `partitions`.
    pub fn add_multipath_namespace(
        &self,
        bdf: &str,
        ctrl: &str,
        path_name: &str,
        disk: &str,
        dev: &str,
        partitions: &[(&str, &str)],
    ) -> io::Result<()> {
        let path_dir = self.device_dir(bdf).join("nvme").join(ctrl).join(path_name);
        self.add_block(&path_dir, path_name, "259:99", false)?;
        let head_dir = self
            .roots
            .sys
            .join("devices/virtual/nvme-subsystem/nvme-subsys0")
            .join(disk);
        self.add_block(&head_dir, disk, dev, false)?;
        std::fs::create_dir_all(head_dir.join("multipath"))?;
        symlink(&path_dir, head_dir.join("multipath").join(path_name))?;
        for (name, dev) in partitions {
            self.add_block(&head_dir.join(name), name, dev, true)?;
        }
        Ok(())
    }

    fn add_block(&self, dir: &Path, name: &str, dev: &str, partition: bool) -> io::Result<()> {
        std::fs::create_dir_all(dir.join("holders"))?;
        write(&dir.join("dev"), &format!("{dev}\n"))?;
        write(&dir.join("size"), "131072\n")?;
        if partition {
            write(&dir.join("partition"), "1\n")?;
        }
        symlink(dir, self.roots.class_block().join(name))
    }

    /// Adds a generic namespace character device (`ng0n1`).
    pub fn add_generic(&self, bdf: &str, ctrl: &str, name: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.device_dir(bdf).join("nvme").join(ctrl).join(name))
    }

    /// Adds a mount to `/proc/self/mountinfo`.
    pub fn add_mount(
        &self,
        dev: &str,
        source: &str,
        mount_point: &str,
        fstype: &str,
        super_options: &str,
    ) -> io::Result<()> {
        let id = read_trimmed(&self.roots.mountinfo())
            .map(|t| t.lines().count())
            .unwrap_or(0)
            + 20;
        let mount_point = mount_point.replace(' ', "\\040");
        append(
            &self.roots.mountinfo(),
            &format!(
                "{id} 1 {dev} / {mount_point} rw,relatime shared:1 - {fstype} {source} \
                 {super_options}\n"
            ),
        )
    }

    /// Adds an active swap device or file to `/proc/swaps`.
    pub fn add_swap(&self, path: &str) -> io::Result<()> {
        append(
            &self.roots.proc.join("swaps"),
            &format!("{path}\t\t\t\tpartition\t8388604\t\t0\t\t-2\n"),
        )
    }

    /// Makes `holder` (`dm-0`, with device-mapper name `dm_name`) hold
    /// block device `device`.
    pub fn add_holder(&self, device: &str, holder: &str, dm_name: Option<&str>) -> io::Result<()> {
        let holder_dir = self.roots.sys.join("devices/virtual/block").join(holder);
        std::fs::create_dir_all(&holder_dir)?;
        if let Some(name) = dm_name {
            write(&holder_dir.join("dm/name"), &format!("{name}\n"))?;
        }
        let link = self.roots.class_block().join(holder);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(&holder_dir, link)?;
        }
        symlink(
            &holder_dir,
            self.roots
                .class_block()
                .join(device)
                .join("holders")
                .join(holder),
        )
    }

    /// Gives process `pid` (command `comm`) file descriptor `fd` open on
    /// `target` (a kernel path such as `/dev/nvme0n1`).
    pub fn add_open_fd(&self, pid: u32, comm: &str, fd: u32, target: &str) -> io::Result<()> {
        let dir = self.roots.proc.join(pid.to_string());
        std::fs::create_dir_all(dir.join("fd"))?;
        write(&dir.join("comm"), &format!("{comm}\n"))?;
        symlink(target, dir.join("fd").join(fd.to_string()))
    }

    /// Sets the kernel command line.
    pub fn set_cmdline(&self, cmdline: &str) -> io::Result<()> {
        write(&self.roots.proc.join("cmdline"), &format!("{cmdline}\n"))
    }

    /// Sets `/sys/devices/system/cpu/{isolated,nohz_full}`.
    pub fn set_isolated(&self, isolated: &str, nohz_full: &str) -> io::Result<()> {
        let dir = self.roots.sys.join("devices/system/cpu");
        write(&dir.join("isolated"), &format!("{isolated}\n"))?;
        write(&dir.join("nohz_full"), &format!("{nohz_full}\n"))
    }

    /// Sets the pool of `size_kb` pages: `total`/`free` overall and per
    /// node (`(node, total, free)`).
    pub fn set_hugepages(
        &self,
        size_kb: u64,
        total: u64,
        free: u64,
        nodes: &[(u32, u64, u64)],
    ) -> io::Result<()> {
        let dir = self
            .roots
            .hugepages()
            .join(format!("hugepages-{size_kb}kB"));
        write(&dir.join("nr_hugepages"), &format!("{total}\n"))?;
        write(&dir.join("free_hugepages"), &format!("{free}\n"))?;
        write(&dir.join("resv_hugepages"), "0\n")?;
        write(&dir.join("surplus_hugepages"), "0\n")?;
        for &(node, total, free) in nodes {
            let dir = crate::host::node_pool_dir(&self.roots, node, size_kb);
            write(&dir.join("nr_hugepages"), &format!("{total}\n"))?;
            write(&dir.join("free_hugepages"), &format!("{free}\n"))?;
            write(&dir.join("surplus_hugepages"), "0\n")?;
        }
        Ok(())
    }

    /// Adds NUMA node `node`.
    pub fn add_node(&self, node: u32) -> io::Result<()> {
        std::fs::create_dir_all(self.roots.nodes().join(format!("node{node}")))
    }

    /// Adds an IOMMU unit (`dmar0`).
    pub fn add_iommu_unit(&self, name: &str) -> io::Result<()> {
        std::fs::create_dir_all(self.roots.sys.join("class/iommu").join(name))
    }

    /// Creates `/dev/vfio/<group>`.
    pub fn add_vfio_node(&self, group: u32) -> io::Result<()> {
        write(&self.roots.vfio_group_node(group), "")
    }

    /// Sets `Max locked memory` in `/proc/self/limits` (bytes, `None`
    /// for unlimited).
    pub fn set_memlock(&self, soft: Option<u64>, hard: Option<u64>) -> io::Result<()> {
        let show = |v: Option<u64>| v.map_or_else(|| "unlimited".to_owned(), |v| v.to_string());
        write(
            &self.roots.proc.join("self/limits"),
            &format!(
                "Limit                     Soft Limit           Hard Limit           Units\n\
                 Max locked memory         {:<20} {:<20} bytes\n",
                show(soft),
                show(hard)
            ),
        )
    }
}

/// A change [`FakeSystem`] saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An attribute write: the path relative to the sysfs root when under
    /// it, and the contents.
    Write(String, String),
    /// `modprobe <module>`.
    Modprobe(String),
    /// hugetlbfs mounted on a path with a page size.
    Mount(PathBuf, String),
    /// An owner change.
    Chown(PathBuf, u32, u32),
}

/// The [`System`] of a [`FakeHost`]: records every change as an
/// [`Event`] and plays the kernel's part on the fake tree.
#[derive(Debug)]
pub struct FakeSystem {
    roots: Roots,
    /// Every change, in order.
    pub events: Vec<Event>,
    /// Whether this "process" is root.
    pub root: bool,
    /// Drivers the fake kernel will not bind (their probe "fails").
    pub refuse: Vec<String>,
    /// The most hugepages the fake kernel can find, per pool file.
    pub hugepage_limit: Option<u64>,
    /// Whether `modprobe` succeeds (registering the driver).
    pub modprobe_works: bool,
    /// Whether binding to vfio-pci creates `/dev/vfio/<group>`.
    pub creates_vfio_nodes: bool,
    /// The users that exist.
    pub users: Vec<User>,
    /// How many times the code waited for the kernel.
    pub pauses: u32,
}

impl FakeSystem {
    /// A root process on `host`, whose kernel binds whatever is asked, has
    /// all the memory it wants, and knows the user `alice` (uid 1000).
    pub fn new(host: &FakeHost) -> Self {
        FakeSystem {
            roots: host.roots(),
            events: Vec::new(),
            root: true,
            refuse: Vec::new(),
            hugepage_limit: None,
            modprobe_works: true,
            creates_vfio_nodes: true,
            users: vec![User {
                name: "alice".into(),
                uid: 1000,
                gid: 1000,
            }],
            pauses: 0,
        }
    }

    /// The attribute writes, as (path relative to the sysfs root,
    /// contents).
    pub fn writes(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Write(path, contents) => Some((path.clone(), contents.clone())),
                _ => None,
            })
            .collect()
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.roots.sys)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// The kernel's side of `drivers_probe`: the override wins, else the
    /// NVMe driver for NVMe controllers.
    fn probe(&mut self, bdf: &str) -> io::Result<()> {
        let dev = std::fs::canonicalize(self.roots.pci_device(bdf))?;
        if link_name(&dev.join("driver")).is_some() {
            return Ok(());
        }
        let wanted = match read_trimmed(&dev.join("driver_override")) {
            Ok(name) if !name.is_empty() && name != "(null)" => Some(name),
            _ => {
                let class = read_trimmed(&dev.join("class")).unwrap_or_default();
                (crate::pci::parse_hex(&class).map(|c| c & 0xff_ffff) == Some(NVME_CLASS))
                    .then(|| crate::pci::KERNEL_NVME.to_owned())
            }
        };
        let Some(driver) = wanted else {
            return Ok(());
        };
        let driver_dir = self.roots.pci_driver(&driver);
        if !driver_dir.exists() || self.refuse.contains(&driver) {
            return Ok(());
        }
        symlink(&driver_dir, dev.join("driver"))?;
        if driver == crate::pci::VFIO_PCI && self.creates_vfio_nodes {
            if let Some(group) = link_name(&dev.join("iommu_group")) {
                write(&self.roots.dev.join("vfio").join(group), "")?;
            }
        }
        Ok(())
    }
}

impl System for FakeSystem {
    fn write_attr(&mut self, path: &Path, contents: &str) -> io::Result<()> {
        self.events
            .push(Event::Write(self.relative(path), contents.to_owned()));
        // Like sysfs: the attribute must exist.
        if !path.exists() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let value = contents.trim();
        match name {
            "driver_override" => std::fs::write(
                path,
                if value.is_empty() {
                    "(null)\n".to_owned()
                } else {
                    format!("{value}\n")
                },
            ),
            "unbind" => {
                let dev = std::fs::canonicalize(self.roots.pci_device(value))?;
                std::fs::remove_file(dev.join("driver"))
            }
            "drivers_probe" => self.probe(value),
            "nr_hugepages" => {
                let asked: u64 = value
                    .parse()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                let granted = self.hugepage_limit.map_or(asked, |limit| asked.min(limit));
                std::fs::write(path, format!("{granted}\n"))?;
                if let Some(dir) = path.parent() {
                    std::fs::write(dir.join("free_hugepages"), format!("{granted}\n"))?;
                }
                Ok(())
            }
            _ => std::fs::write(path, contents),
        }
    }

    fn modprobe(&mut self, module: &str) -> Result<(), String> {
        self.events.push(Event::Modprobe(module.to_owned()));
        if !self.modprobe_works {
            return Err(format!(
                "modprobe: FATAL: Module {module} not found in directory /lib/modules/fake"
            ));
        }
        let driver = self.roots.pci_driver(module);
        std::fs::create_dir_all(&driver).map_err(|e| e.to_string())?;
        write(&driver.join("unbind"), "").map_err(|e| e.to_string())
    }

    fn mount_hugetlbfs(&mut self, target: &Path, pagesize: &str) -> io::Result<()> {
        self.events
            .push(Event::Mount(target.to_path_buf(), pagesize.to_owned()));
        std::fs::create_dir_all(target)?;
        append(
            &self.roots.mountinfo(),
            &format!(
                "99 1 0:99 / {} rw,relatime shared:9 - hugetlbfs nodev rw,pagesize={pagesize}\n",
                target.display()
            ),
        )
    }

    fn chown(&mut self, path: &Path, uid: u32, gid: u32) -> io::Result<()> {
        self.events.push(Event::Chown(path.to_path_buf(), uid, gid));
        if path.exists() {
            Ok(())
        } else {
            Err(io::Error::from(io::ErrorKind::NotFound))
        }
    }

    fn is_root(&self) -> bool {
        self.root
    }

    fn lookup_user(&self, spec: &UserSpec) -> Result<Option<User>, String> {
        Ok(self
            .users
            .iter()
            .find(|u| match spec {
                UserSpec::Name(name) => &u.name == name,
                UserSpec::Uid(uid) => u.uid == *uid,
            })
            .cloned())
    }

    fn pause(&mut self) {
        self.pauses += 1;
    }
}
