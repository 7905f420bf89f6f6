//! `status` against a fake host: what it finds, the text on 80 columns,
//! and the JSON.

mod common;

use common::*;
use isonvme_setup::status::{collect, render};
use isonvme_setup::usage::Use;

/// A host with every shape `status` has to describe.
fn busy_host() -> Fixture {
    let f = with_busy();
    add_vfio(&f);
    f.host.add_swap("/dev/nvme1n1p2").unwrap();
    f.host.add_node(1).unwrap();
    f.host
        .set_hugepages(2048, 512, 500, &[(0, 256, 250), (1, 256, 250)])
        .unwrap();
    f.host.set_hugepages(1 << 20, 0, 0, &[]).unwrap();
    let mount = f.host.roots().dev.join("hugepages");
    std::fs::create_dir_all(&mount).unwrap();
    f.host
        .add_mount(
            "0:50",
            "hugetlbfs",
            mount.to_str().unwrap(),
            "hugetlbfs",
            "rw,pagesize=2M",
        )
        .unwrap();
    f.host
        .set_cmdline(
            "BOOT_IMAGE=/vmlinuz ro intel_iommu=on iommu=pt \
             isolcpus=io_queue,managed_irq,domain,2-7 nohz_full=2-7 irqaffinity=0-1 \
             hugepages=512",
        )
        .unwrap();
    f.host.set_isolated("2-7", "2-7").unwrap();
    f.host.set_memlock(Some(65536), Some(65536)).unwrap();
    f
}

#[test]
fn status_describes_controllers_and_their_users() {
    let f = busy_host();
    let status = collect(&f.host.roots()).unwrap();
    let bdfs: Vec<&str> = status
        .controllers
        .iter()
        .map(|c| c.pci.bdf.as_str())
        .collect();
    assert_eq!(bdfs, [IDLE, BUSY, VFIO]);

    let idle = &status.controllers[0];
    assert_eq!(idle.pci.driver.as_deref(), Some("nvme"));
    assert_eq!(idle.pci.iommu_group, Some(1));
    assert_eq!(idle.pci.numa_node, Some(0));
    assert_eq!(idle.group_viable, Some(true));
    assert_eq!(idle.kernel.controllers, ["nvme0"]);
    assert_eq!(idle.kernel.generic, ["ng0n1"]);
    assert!(idle.in_use.is_empty());
    assert!(!idle.ready);
    assert_eq!(idle.next, "isonvme setup bind 0000:01:00.0");

    let busy = &status.controllers[1];
    let names: Vec<&str> = busy.kernel.block.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["nvme1n1", "nvme1n1p1", "nvme1n1p2"]);
    assert_eq!(
        busy.kernel.block[1].partition_of.as_deref(),
        Some("nvme1n1")
    );
    assert_eq!(busy.kernel.block[0].size_bytes, Some(64 << 20));
    assert_eq!(
        busy.in_use,
        [
            Use::Mounted {
                device: "nvme1n1p1".into(),
                mount_point: "/data".into(),
                fstype: "ext4".into()
            },
            Use::Swap {
                device: "nvme1n1p2".into()
            }
        ]
    );
    assert!(busy.next.contains("in use by this host"));

    let vfio = &status.controllers[2];
    assert_eq!(vfio.group_viable, Some(false));
    assert_eq!(vfio.group_others.len(), 1);
    assert_eq!(vfio.group_others[0].bdf, AUDIO);
    assert!(vfio.vfio_node.is_some());
    assert!(!vfio.ready);
    assert!(vfio.next.contains("other devices of its IOMMU group"));
}

#[test]
fn status_describes_the_host() {
    let f = busy_host();
    let host = collect(&f.host.roots()).unwrap().host;
    assert!(host.iommu.present());
    assert_eq!(host.iommu.units, ["dmar0"]);
    assert_eq!(host.iommu.groups, 3);
    assert!(host.vfio_pci_loaded);
    assert_eq!(host.hugepages.len(), 2);
    assert_eq!(host.hugepages[0].size_kb, 2048);
    assert_eq!(
        (host.hugepages[0].total, host.hugepages[0].free),
        (512, 500)
    );
    assert_eq!(host.hugepages[0].nodes.len(), 2);
    assert_eq!(host.hugepages[0].nodes[1].free, 250);
    assert_eq!(host.hugetlbfs.len(), 1);
    assert_eq!(host.hugetlbfs[0].page_kb, Some(2048));
    assert_eq!(host.memlock.unwrap().soft, Some(65536));
    assert_eq!(host.isolated.as_deref(), Some("2-7"));
    assert_eq!(host.nohz_full.as_deref(), Some("2-7"));
    let params: Vec<String> = host.kernel_params.iter().map(|p| p.to_string()).collect();
    assert!(params.contains(&"isolcpus=io_queue,managed_irq,domain,2-7".to_owned()));
    assert!(params.contains(&"irqaffinity=0-1".to_owned()));
    assert_eq!(host.numa_nodes, [0, 1]);
}

#[test]
fn the_text_fits_80_columns_and_says_what_matters() {
    let f = busy_host();
    let text = render(&collect(&f.host.roots()).unwrap());
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line}");
    }
    for wanted in [
        "NVMe controllers (3)",
        "0000:01:00.0  1b36:0010  NUMA node 0",
        "nvme1n1p1 is mounted on /data (ext4)",
        "nvme1n1p2 is active swap",
        "NOT viable, with 0000:03:00.1 (bound to",
        "next         isonvme setup bind 0000:01:00.0",
        "2M: 512 total, 500 free (default size); node 0: 250 of",
        "isolated     2-7",
        "irqaffinity  0-1",
        "64 KiB soft",
    ] {
        assert!(text.contains(wanted), "missing `{wanted}` in\n{text}");
    }
}

#[test]
fn the_json_has_every_part() {
    let f = busy_host();
    let json = serde_json::to_value(collect(&f.host.roots()).unwrap()).unwrap();
    let first = &json["controllers"][0];
    assert_eq!(first["bdf"], IDLE);
    assert_eq!(first["driver"], "nvme");
    assert_eq!(first["iommu_group"], 1);
    assert_eq!(first["class"], 0x010802);
    assert_eq!(json["controllers"][1]["in_use"][0]["kind"], "mounted");
    assert_eq!(json["controllers"][1]["in_use"][1]["kind"], "swap");
    assert_eq!(json["host"]["hugepages"][0]["size_kb"], 2048);
    assert_eq!(json["host"]["iommu"]["units"][0], "dmar0");
    assert!(json["notes"].is_array());
}

#[test]
fn a_bare_host_gets_notes_with_fixes() {
    let f = empty();
    std::fs::remove_dir_all(f.host.roots().sys.join("class/iommu/dmar0")).unwrap();
    f.host.add_nvme(IDLE, Some("nvme"), None).unwrap();
    f.host.set_hugepages(2048, 0, 0, &[]).unwrap();
    let status = collect(&f.host.roots()).unwrap();
    let notes = status.notes.join("\n");
    assert!(notes.contains("no IOMMU: enable VT-d"), "{notes}");
    assert!(notes.contains("intel_iommu=on iommu=pt"), "{notes}");
    assert!(notes.contains("vfio-pci is not loaded"), "{notes}");
    assert!(notes.contains("isonvme setup hugepages 512"), "{notes}");
    assert!(status.controllers[0].next.contains("no IOMMU group"));
    let text = render(&status);
    assert!(text.contains("iommu group  none (no IOMMU)"), "{text}");
    assert!(text.contains("iommu        OFF"), "{text}");
}
