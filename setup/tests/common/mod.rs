//! Shared fixtures: a fake host with the usual shapes of NVMe controllers.

#![allow(dead_code)]

use isonvme_setup::fake::FakeHost;

pub const IDLE: &str = "0000:01:00.0";
pub const BUSY: &str = "0000:02:00.0";
pub const VFIO: &str = "0000:03:00.0";
pub const AUDIO: &str = "0000:03:00.1";
pub const NIC: &str = "0000:04:00.0";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub host: FakeHost,
}

/// An empty host with an IOMMU and the nvme driver loaded.
pub fn empty() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    // Canonical, so paths the library resolves and the roots agree.
    let root = std::fs::canonicalize(dir.path()).expect("canonical tempdir");
    let host = FakeHost::new(&root).expect("fake host");
    host.add_iommu_unit("dmar0").unwrap();
    host.add_driver("nvme").unwrap();
    host.add_node(0).unwrap();
    Fixture { dir, host }
}

/// IDLE: an NVMe controller on `nvme` (group 1) with one namespace and
/// nothing using it.
pub fn with_idle() -> Fixture {
    let f = empty();
    f.host.add_nvme(IDLE, Some("nvme"), Some(1)).unwrap();
    f.host.add_kernel_controller(IDLE, "nvme0").unwrap();
    f.host
        .add_namespace(IDLE, "nvme0", "nvme0n1", "259:0", &[])
        .unwrap();
    f.host.add_generic(IDLE, "nvme0", "ng0n1").unwrap();
    f
}

/// IDLE plus BUSY: an NVMe controller on `nvme` (group 2) whose namespace
/// `nvme1n1` has partitions p1 (mounted on /data) and p2.
pub fn with_busy() -> Fixture {
    let f = with_idle();
    f.host.add_nvme(BUSY, Some("nvme"), Some(2)).unwrap();
    f.host.add_kernel_controller(BUSY, "nvme1").unwrap();
    f.host
        .add_namespace(
            BUSY,
            "nvme1",
            "nvme1n1",
            "259:1",
            &[("nvme1n1p1", "259:2"), ("nvme1n1p2", "259:3")],
        )
        .unwrap();
    f.host
        .add_mount("259:2", "/dev/nvme1n1p1", "/data", "ext4", "rw")
        .unwrap();
    f
}

/// Adds VFIO: an NVMe controller on vfio-pci (group 3, node present)
/// sharing its group with an audio function on snd_hda_intel.
pub fn add_vfio(f: &Fixture) {
    f.host.add_driver("vfio-pci").unwrap();
    f.host.add_nvme(VFIO, Some("vfio-pci"), Some(3)).unwrap();
    f.host
        .add_pci(AUDIO, 0x040300, Some("snd_hda_intel"), Some(3))
        .unwrap();
    f.host.add_vfio_node(3).unwrap();
}
