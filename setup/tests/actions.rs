//! bind, unbind/reset and hugepages against fake sysfs/procfs trees, with
//! the fake kernel of `isonvme_setup::fake`.

mod common;

use common::*;
use isonvme_setup::actions::{self, BindOptions, HugepageRequest, POLLS};
use isonvme_setup::error::exit;
use isonvme_setup::fake::{Event, FakeSystem};
use isonvme_setup::pci::read_device;
use isonvme_setup::usage::Use;
use isonvme_setup::user::UserSpec;
use isonvme_setup::{SetupError, Target};

fn target(text: &str) -> Target {
    text.parse().unwrap()
}

fn bind(
    f: &Fixture,
    system: &mut FakeSystem,
    what: &str,
    options: BindOptions,
) -> (Result<(), SetupError>, String) {
    let mut out = Vec::new();
    let result = actions::bind(&f.host.roots(), system, &target(what), &options, &mut out);
    (result, String::from_utf8(out).unwrap())
}

fn unbind(f: &Fixture, system: &mut FakeSystem, what: &str) -> (Result<(), SetupError>, String) {
    let mut out = Vec::new();
    let result = actions::unbind(&f.host.roots(), system, &target(what), "unbind", &mut out);
    (result, String::from_utf8(out).unwrap())
}

fn driver_of(f: &Fixture, bdf: &str) -> Option<String> {
    read_device(&f.host.roots(), bdf).unwrap().driver
}

fn dev_path(bdf: &str) -> String {
    format!("devices/pci0000:00/{bdf}")
}

#[test]
fn bind_writes_override_then_unbind_then_probe_and_verifies() {
    let f = with_idle();
    f.host.add_driver("vfio-pci").unwrap();
    let mut system = FakeSystem::new(&f.host);
    let (result, out) = bind(&f, &mut system, IDLE, BindOptions::default());
    result.unwrap();
    assert_eq!(
        system.writes(),
        [
            (
                format!("{}/driver_override", dev_path(IDLE)),
                "vfio-pci".to_owned()
            ),
            (format!("{}/driver/unbind", dev_path(IDLE)), IDLE.to_owned()),
            ("bus/pci/drivers_probe".to_owned(), IDLE.to_owned()),
        ]
    );
    assert_eq!(driver_of(&f, IDLE).as_deref(), Some("vfio-pci"));
    assert!(f.host.roots().vfio_group_node(1).exists());
    assert!(out.contains("moving it from nvme to vfio-pci"), "{out}");
    assert!(out.contains("bound to vfio-pci (IOMMU group 1"), "{out}");
    assert!(
        out.contains("--bin identify -- --device 0000:01:00.0"),
        "{out}"
    );
    // Nothing was loaded: vfio-pci was there.
    assert!(!system
        .events
        .iter()
        .any(|e| matches!(e, Event::Modprobe(_))));
}

#[test]
fn bind_loads_vfio_pci_first_when_absent() {
    let f = with_idle();
    let mut system = FakeSystem::new(&f.host);
    bind(&f, &mut system, IDLE, BindOptions::default())
        .0
        .unwrap();
    assert_eq!(system.events[0], Event::Modprobe("vfio-pci".into()));
    assert_eq!(driver_of(&f, IDLE).as_deref(), Some("vfio-pci"));
}

#[test]
fn a_missing_vfio_module_is_a_host_problem_and_nothing_is_written() {
    let f = with_idle();
    let mut system = FakeSystem::new(&f.host);
    system.modprobe_works = false;
    let (result, _) = bind(&f, &mut system, IDLE, BindOptions::default());
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), exit::HOST);
    let text = error.to_string();
    assert!(text.contains("modprobe vfio-pci"), "{text}");
    assert!(text.contains("Module vfio-pci not found"), "{text}");
    assert!(text.contains("CONFIG_VFIO_PCI"), "{text}");
    assert!(system.writes().is_empty());
    assert_eq!(driver_of(&f, IDLE).as_deref(), Some("nvme"));
}

#[test]
fn a_mounted_partition_is_refused_even_with_force() {
    let f = with_busy();
    f.host.add_driver("vfio-pci").unwrap();
    for force in [false, true] {
        let mut system = FakeSystem::new(&f.host);
        let (result, _) = bind(
            &f,
            &mut system,
            BUSY,
            BindOptions {
                force,
                ..BindOptions::default()
            },
        );
        let error = result.unwrap_err();
        assert_eq!(error.exit_code(), exit::IN_USE);
        let SetupError::InUse {
            uses,
            force_allowed,
            ..
        } = &error
        else {
            panic!("{error}");
        };
        assert!(!force_allowed);
        assert_eq!(
            uses,
            &[Use::Mounted {
                device: "nvme1n1p1".into(),
                mount_point: "/data".into(),
                fstype: "ext4".into()
            }]
        );
        let text = error.to_string();
        assert!(text.contains("refusing to take 0000:02:00.0"), "{text}");
        assert!(
            text.contains("nvme1n1p1 is mounted on /data (ext4)"),
            "{text}"
        );
        assert!(text.contains("umount /data"), "{text}");
        assert!(
            text.contains("no --force for mounted filesystems"),
            "{text}"
        );
        assert!(system.events.is_empty(), "{:?}", system.events);
        assert_eq!(driver_of(&f, BUSY).as_deref(), Some("nvme"));
    }
}

#[test]
fn a_btrfs_mount_is_found_by_its_source() {
    // btrfs reports an anonymous device number in mountinfo.
    let f = with_idle();
    f.host
        .add_mount("0:45", "/dev/nvme0n1", "/srv/my data", "btrfs", "rw")
        .unwrap();
    let mut system = FakeSystem::new(&f.host);
    let error = bind(&f, &mut system, IDLE, BindOptions::default())
        .0
        .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("nvme0n1 is mounted on /srv/my data (btrfs)"),
        "{error}"
    );
}

#[test]
fn holders_swap_and_open_files_are_named() {
    let f = with_busy();
    f.host.add_driver("vfio-pci").unwrap();
    f.host
        .add_holder("nvme1n1p2", "dm-0", Some("vg-root"))
        .unwrap();
    f.host.add_swap("/dev/nvme0n1").unwrap();
    f.host.add_open_fd(812, "smartd", 3, "/dev/nvme0").unwrap();
    f.host.add_open_fd(900, "fio", 5, "/dev/ng0n1").unwrap();
    f.host.add_open_fd(901, "bash", 1, "/dev/pts/0").unwrap();
    let mut system = FakeSystem::new(&f.host);

    let text = bind(&f, &mut system, BUSY, BindOptions::default())
        .0
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("nvme1n1p2 is held by dm-0 (vg-root)"),
        "{text}"
    );
    assert!(text.contains("dmsetup info vg-root"), "{text}");

    let error = bind(&f, &mut system, IDLE, BindOptions::default())
        .0
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("nvme0n1 is active swap"), "{text}");
    assert!(text.contains("swapoff /dev/nvme0n1"), "{text}");
    assert!(
        text.contains("/dev/nvme0 is open by pid 812 (smartd)"),
        "{text}"
    );
    assert!(
        text.contains("/dev/ng0n1 is open by pid 900 (fio)"),
        "{text}"
    );
    assert!(!text.contains("bash"), "{text}");
    assert!(system.events.is_empty());
}

#[test]
fn force_takes_a_device_that_is_only_open() {
    let f = with_idle();
    f.host.add_driver("vfio-pci").unwrap();
    f.host.add_open_fd(812, "smartd", 3, "/dev/nvme0").unwrap();
    let mut system = FakeSystem::new(&f.host);
    let error = bind(&f, &mut system, IDLE, BindOptions::default())
        .0
        .unwrap_err();
    assert!(
        matches!(
            error,
            SetupError::InUse {
                force_allowed: true,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("pass --force"), "{error}");
    let (result, out) = bind(
        &f,
        &mut system,
        IDLE,
        BindOptions {
            force: true,
            ..BindOptions::default()
        },
    );
    result.unwrap();
    assert!(out.contains("--force: taking it although /dev/nvme0 is open by pid 812"));
    assert_eq!(driver_of(&f, IDLE).as_deref(), Some("vfio-pci"));
}

#[test]
fn multipath_namespaces_count_as_the_controllers() {
    let f = empty();
    f.host.add_driver("vfio-pci").unwrap();
    f.host.add_nvme(IDLE, Some("nvme"), Some(1)).unwrap();
    f.host.add_kernel_controller(IDLE, "nvme0").unwrap();
    f.host
        .add_multipath_namespace(
            IDLE,
            "nvme0",
            "nvme0c0n1",
            "nvme0n1",
            "259:0",
            &[("nvme0n1p1", "259:1")],
        )
        .unwrap();
    f.host
        .add_mount("259:1", "/dev/nvme0n1p1", "/var", "xfs", "rw")
        .unwrap();
    let mut system = FakeSystem::new(&f.host);
    let error = bind(&f, &mut system, IDLE, BindOptions::default())
        .0
        .unwrap_err();
    assert!(
        error.to_string().contains("nvme0n1p1 is mounted on /var"),
        "{error}"
    );
}

#[test]
fn bind_all_skips_devices_in_use_and_binds_the_rest() {
    let f = with_busy();
    add_vfio(&f);
    let mut system = FakeSystem::new(&f.host);
    let (result, out) = bind(&f, &mut system, "all", BindOptions::default());
    result.unwrap();
    assert_eq!(driver_of(&f, IDLE).as_deref(), Some("vfio-pci"));
    assert_eq!(driver_of(&f, BUSY).as_deref(), Some("nvme"));
    assert!(
        out.contains("0000:02:00.0: skipped: refusing to take"),
        "{out}"
    );
    assert!(
        out.contains("0000:03:00.0: already bound to vfio-pci"),
        "{out}"
    );
    // Group 3 shares the controller with an audio function.
    assert!(
        out.contains("IOMMU group 3 is not viable yet")
            && out.contains("0000:03:00.1 (bound to snd_hda_intel)"),
        "{out}"
    );
    // Only IDLE was written.
    assert!(system.writes().iter().all(|(_, c)| c != BUSY));
}

#[test]
fn bind_needs_root_and_says_sudo_before_writing() {
    let f = with_idle();
    let mut system = FakeSystem::new(&f.host);
    system.root = false;
    let error = bind(&f, &mut system, IDLE, BindOptions::default())
        .0
        .unwrap_err();
    assert_eq!(error.exit_code(), exit::NOT_ROOT);
    assert!(error
        .to_string()
        .contains("sudo isonvme setup bind 0000:01:00.0"));
    assert!(system.events.is_empty());
}

#[test]
fn bad_devices_are_usage_errors() {
    let f = with_idle();
    f.host
        .add_pci(NIC, 0x020000, Some("ixgbe"), Some(7))
        .unwrap();
    let mut system = FakeSystem::new(&f.host);
    let error = bind(&f, &mut system, "0000:09:00.0", BindOptions::default())
        .0
        .unwrap_err();
    assert!(matches!(error, SetupError::NoSuchDevice { .. }), "{error}");
    assert_eq!(error.exit_code(), exit::USAGE);
    let error = bind(&f, &mut system, NIC, BindOptions::default())
        .0
        .unwrap_err();
    assert!(
        error.to_string().contains("not an NVMe controller")
            && error.to_string().contains("0x020000"),
        "{error}"
    );
    assert_eq!(error.exit_code(), exit::USAGE);
    let empty = empty();
    let mut system = FakeSystem::new(&empty.host);
    let error = bind(&empty, &mut system, "all", BindOptions::default())
        .0
        .unwrap_err();
    assert!(matches!(error, SetupError::NoControllers { .. }), "{error}");
    assert_eq!(error.exit_code(), exit::USAGE);
}

#[test]
fn no_iommu_group_is_refused_with_the_firmware_fix() {
    let f = empty();
    f.host.add_nvme(IDLE, Some("nvme"), None).unwrap();
    let mut system = FakeSystem::new(&f.host);
    let error = bind(&f, &mut system, IDLE, BindOptions::default())
        .0
        .unwrap_err();
    assert_eq!(error.exit_code(), exit::HOST);
    let text = error.to_string();
    assert!(text.starts_with("no IOMMU: 0000:01:00.0"), "{text}");
    assert!(text.contains("intel_iommu=on"), "{text}");
    assert!(system.events.is_empty());
}

#[test]
fn a_bind_that_does_not_take_is_rolled_back() {
    let f = with_idle();
    f.host.add_driver("vfio-pci").unwrap();
    let mut system = FakeSystem::new(&f.host);
    system.refuse = vec!["vfio-pci".into()];
    let error = bind(&f, &mut system, IDLE, BindOptions::default())
        .0
        .unwrap_err();
    assert_eq!(error.exit_code(), exit::FAILED);
    let text = error.to_string();
    assert!(
        text.contains("0000:01:00.0 did not end bound to vfio-pci (it is now bound to nvme)"),
        "{text}"
    );
    assert!(text.contains("handed back to nvme"), "{text}");
    assert!(text.contains("dmesg"), "{text}");
    // The verification polled (without sleeping: the fake pauses).
    assert!(system.pauses >= POLLS);
    let writes = system.writes();
    assert_eq!(writes.len(), 5, "{writes:?}");
    assert_eq!(
        writes[3],
        (
            format!("{}/driver_override", dev_path(IDLE)),
            "\n".to_owned()
        )
    );
    assert_eq!(
        writes[4],
        ("bus/pci/drivers_probe".to_owned(), IDLE.to_owned())
    );
    assert_eq!(driver_of(&f, IDLE).as_deref(), Some("nvme"));
    assert_eq!(
        read_device(&f.host.roots(), IDLE).unwrap().driver_override,
        None
    );
}

#[test]
fn user_gets_the_group_node_and_memlock_advice() {
    let f = with_idle();
    f.host.add_driver("vfio-pci").unwrap();
    f.host.set_hugepages(2048, 512, 512, &[]).unwrap();
    let mut system = FakeSystem::new(&f.host);
    let (result, out) = bind(
        &f,
        &mut system,
        IDLE,
        BindOptions {
            user: Some(UserSpec::Name("alice".into())),
            force: false,
        },
    );
    result.unwrap();
    let node = f.host.roots().vfio_group_node(1);
    assert!(system.events.contains(&Event::Chown(node, 1000, 1000)));
    assert!(out.contains("now belongs to alice"), "{out}");
    assert!(out.contains("alice - memlock 1048576"), "{out}");
    assert!(out.contains("ulimit -l"), "{out}");
}

#[test]
fn an_unknown_user_is_refused_before_anything_changes() {
    let f = with_idle();
    let mut system = FakeSystem::new(&f.host);
    let error = bind(
        &f,
        &mut system,
        IDLE,
        BindOptions {
            user: Some(UserSpec::Name("mallory".into())),
            force: false,
        },
    )
    .0
    .unwrap_err();
    assert_eq!(error.exit_code(), exit::USAGE);
    assert!(error.to_string().contains("no such user"), "{error}");
    assert!(
        error.to_string().contains("getent passwd mallory"),
        "{error}"
    );
    assert!(system.events.is_empty());
}

#[test]
fn unbind_gives_the_device_back_to_nvme() {
    let f = with_idle();
    add_vfio(&f);
    let mut system = FakeSystem::new(&f.host);
    let (result, out) = unbind(&f, &mut system, VFIO);
    result.unwrap();
    assert_eq!(
        system.writes(),
        [
            (
                format!("{}/driver_override", dev_path(VFIO)),
                "\n".to_owned()
            ),
            (format!("{}/driver/unbind", dev_path(VFIO)), VFIO.to_owned()),
            ("bus/pci/drivers_probe".to_owned(), VFIO.to_owned()),
        ]
    );
    assert_eq!(driver_of(&f, VFIO).as_deref(), Some("nvme"));
    assert!(out.contains("0000:03:00.0: bound to nvme"), "{out}");
}

#[test]
fn unbind_refuses_while_a_process_holds_the_group() {
    let f = with_idle();
    add_vfio(&f);
    f.host
        .add_open_fd(4242, "latency", 7, "/dev/vfio/3")
        .unwrap();
    let mut system = FakeSystem::new(&f.host);
    let error = unbind(&f, &mut system, VFIO).0.unwrap_err();
    assert_eq!(error.exit_code(), exit::IN_USE);
    let text = error.to_string();
    assert!(
        text.starts_with(
            "refusing to give 0000:03:00.0 back to the kernel: /dev/vfio/3 is open by pid 4242 \
             (latency); VFIO would block the unbind until /dev/vfio/3 is closed"
        ),
        "{text}"
    );
    assert!(system.events.is_empty());
    // `reset` (all) skips it and says why.
    let mut out = Vec::new();
    actions::unbind(
        &f.host.roots(),
        &mut system,
        &Target::All,
        "reset",
        &mut out,
    )
    .unwrap();
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("0000:03:00.0: skipped:"), "{out}");
    assert_eq!(driver_of(&f, VFIO).as_deref(), Some("vfio-pci"));
}

#[test]
fn unbind_loads_nvme_and_reports_a_device_left_without_driver() {
    let f = empty();
    f.host.add_driver("vfio-pci").unwrap();
    std::fs::remove_dir_all(f.host.roots().pci_driver("nvme")).unwrap();
    f.host.add_nvme(VFIO, Some("vfio-pci"), Some(3)).unwrap();
    let mut system = FakeSystem::new(&f.host);
    system.modprobe_works = false;
    let (result, out) = unbind(&f, &mut system, VFIO);
    assert_eq!(system.events[0], Event::Modprobe("nvme".into()));
    assert!(out.contains("warning: the kernel module nvme"), "{out}");
    let error = result.unwrap_err();
    let text = error.to_string();
    assert!(text.contains("it is now bound to no driver"), "{text}");
    assert!(text.contains("modprobe nvme"), "{text}");
    assert_eq!(error.exit_code(), exit::FAILED);
}

#[test]
fn unbind_all_with_nothing_bound_does_nothing() {
    let f = with_idle();
    let mut system = FakeSystem::new(&f.host);
    system.root = false;
    let (result, out) = unbind(&f, &mut system, "all");
    result.unwrap();
    assert!(out.contains("nothing to do"), "{out}");
    assert!(system.events.is_empty());
    // A single device not on vfio-pci is left alone too.
    system.root = true;
    let (result, out) = unbind(&f, &mut system, IDLE);
    result.unwrap();
    assert!(out.contains("bound to nvme, not vfio-pci"), "{out}");
}

fn hugepages(
    f: &Fixture,
    system: &mut FakeSystem,
    request: HugepageRequest,
) -> (Result<(), SetupError>, String) {
    let mut out = Vec::new();
    let result = actions::hugepages(&f.host.roots(), system, &request, &mut out);
    (result, String::from_utf8(out).unwrap())
}

fn request(count: u64) -> HugepageRequest {
    HugepageRequest {
        count,
        node: None,
        size_kb: 2048,
        user: None,
    }
}

#[test]
fn hugepages_granted_fewer_say_so_with_the_fix() {
    let f = empty();
    f.host.set_hugepages(2048, 0, 0, &[]).unwrap();
    let mut system = FakeSystem::new(&f.host);
    system.hugepage_limit = Some(300);
    let (result, out) = hugepages(&f, &mut system, request(512));
    let error = result.unwrap_err();
    assert_eq!(error.exit_code(), exit::FAILED);
    let text = error.to_string();
    assert!(
        text.contains("granted only 300 of the 512 2M hugepages"),
        "{text}"
    );
    assert!(text.contains("compact_memory"), "{text}");
    assert!(text.contains("hugepagesz=2M hugepages=512"), "{text}");
    assert!(out.contains("asked for 512, the kernel holds 300"), "{out}");
    // The pages granted are usable: hugetlbfs was mounted anyway.
    let target = f.host.roots().dev.join("hugepages");
    assert!(system
        .events
        .contains(&Event::Mount(target.clone(), "2M".into())));
    assert!(out.contains(&format!("mounted hugetlbfs (2M) on {}", target.display())));
}

#[test]
fn hugepages_on_a_node_use_an_existing_mount() {
    let f = empty();
    f.host.add_node(1).unwrap();
    f.host
        .set_hugepages(2048, 0, 0, &[(0, 0, 0), (1, 0, 0)])
        .unwrap();
    let mount = f.dir.path().join("mnt-huge");
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
    let mut system = FakeSystem::new(&f.host);
    let (result, out) = hugepages(
        &f,
        &mut system,
        HugepageRequest {
            node: Some(1),
            user: Some(UserSpec::Uid(1000)),
            ..request(256)
        },
    );
    result.unwrap();
    assert_eq!(
        system.writes(),
        [(
            "devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages".to_owned(),
            "256".to_owned()
        )]
    );
    assert!(!system.events.iter().any(|e| matches!(e, Event::Mount(..))));
    assert!(system
        .events
        .iter()
        .any(|e| matches!(e, Event::Chown(p, 1000, 1000) if *p == mount)));
    assert!(
        out.contains("on node 1: asked for 256, the kernel holds 256"),
        "{out}"
    );
    assert!(out.contains("alice - memlock"), "{out}");
}

#[test]
fn hugepages_of_missing_sizes_and_nodes_are_refused() {
    let f = empty();
    f.host.set_hugepages(2048, 0, 0, &[(0, 0, 0)]).unwrap();
    let mut system = FakeSystem::new(&f.host);
    let error = hugepages(
        &f,
        &mut system,
        HugepageRequest {
            size_kb: 1 << 20,
            ..request(4)
        },
    )
    .0
    .unwrap_err();
    assert_eq!(error.exit_code(), exit::HOST);
    assert!(error.to_string().contains("no 1G hugepages"), "{error}");
    assert!(error.to_string().contains("pdpe1gb"), "{error}");
    let error = hugepages(
        &f,
        &mut system,
        HugepageRequest {
            node: Some(3),
            ..request(4)
        },
    )
    .0
    .unwrap_err();
    assert_eq!(error.exit_code(), exit::USAGE);
    assert!(
        error.to_string().contains("no NUMA node 3") && error.to_string().contains("nodes: 0"),
        "{error}"
    );
    system.root = false;
    let error = hugepages(&f, &mut system, request(4)).0.unwrap_err();
    assert_eq!(error.exit_code(), exit::NOT_ROOT);
    assert!(system.events.is_empty());
}

#[test]
fn freeing_hugepages_mounts_nothing() {
    let f = empty();
    f.host.set_hugepages(2048, 64, 64, &[]).unwrap();
    let mut system = FakeSystem::new(&f.host);
    hugepages(&f, &mut system, request(0)).0.unwrap();
    assert_eq!(system.events.len(), 1);
}

#[test]
fn a_second_size_gets_its_own_mount_point() {
    let f = empty();
    f.host.set_hugepages(2048, 0, 0, &[]).unwrap();
    f.host.set_hugepages(1 << 20, 0, 0, &[]).unwrap();
    let mut system = FakeSystem::new(&f.host);
    hugepages(&f, &mut system, request(16)).0.unwrap();
    hugepages(
        &f,
        &mut system,
        HugepageRequest {
            size_kb: 1 << 20,
            ..request(2)
        },
    )
    .0
    .unwrap();
    let dev = f.host.roots().dev;
    let mounts: Vec<&Event> = system
        .events
        .iter()
        .filter(|e| matches!(e, Event::Mount(..)))
        .collect();
    assert_eq!(
        mounts,
        [
            &Event::Mount(dev.join("hugepages"), "2M".into()),
            &Event::Mount(dev.join("hugepages-1G"), "1G".into())
        ]
    );
}
