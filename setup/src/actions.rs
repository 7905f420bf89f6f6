//! The commands that change the host: `bind`, `unbind`/`reset` and
//! `hugepages`. Each validates what it can first (the device exists and is
//! an NVMe controller, the user exists, the page size exists), then checks
//! for root, then refuses what would hurt the host (a device in use), and
//! only then writes — through [`System`], so tests can watch the writes and
//! play the kernel's part.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bdf::Target;
use crate::error::SetupError;
use crate::host::{self, show_size_kb};
use crate::pci::{
    self, blocking_members, group_members, kernel_devices, link_name, read_controller,
    read_trimmed, PciDevice, KERNEL_NVME, VFIO_PCI,
};
use crate::roots::Roots;
use crate::system::System;
use crate::usage::{device_users, vfio_nodes, vfio_users, Use};
use crate::user::{memlock_advice, resolve, User, UserSpec};

/// How many times the kernel's state is looked at (with
/// [`System::pause`] between) before a bind is declared failed.
pub const POLLS: u32 = 100;

/// Options of `bind`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Hand the VFIO group node to this user.
    pub user: Option<UserSpec>,
    /// Take a device although processes have its nodes open (never one
    /// with mounted filesystems, swap or holders).
    pub force: bool,
}

fn say(out: &mut dyn Write, text: impl Display) {
    // Progress output is best effort: a closed stdout must not leave a
    // device half-moved.
    let _ = writeln!(out, "{text}");
}

fn write_attr(system: &mut dyn System, path: &Path, contents: &str) -> Result<(), SetupError> {
    system
        .write_attr(path, contents)
        .map_err(|source| SetupError::Write {
            path: path.to_path_buf(),
            contents: contents.to_owned(),
            source,
        })
}

fn require_root(system: &dyn System, command: String) -> Result<(), SetupError> {
    if system.is_root() {
        Ok(())
    } else {
        Err(SetupError::NotRoot { command })
    }
}

/// The controllers `target` names, validated (they exist and are NVMe
/// controllers).
fn select(roots: &Roots, target: &Target) -> Result<Vec<PciDevice>, SetupError> {
    match target {
        Target::One(bdf) => Ok(vec![read_controller(roots, bdf)?]),
        Target::All => {
            let all = pci::nvme_controllers(roots)?;
            if all.is_empty() {
                return Err(SetupError::NoControllers {
                    path: roots.pci_devices(),
                });
            }
            Ok(all)
        }
    }
}

/// Polls the device's driver until `done` says yes or [`POLLS`] runs
/// out; returns the last driver seen and whether `done` said yes.
fn wait_for_driver(
    system: &mut dyn System,
    device: &PciDevice,
    done: impl Fn(Option<&str>) -> bool,
) -> (Option<String>, bool) {
    let link = device.path.join("driver");
    let mut now = link_name(&link);
    for _ in 0..POLLS {
        if done(now.as_deref()) {
            return (now, true);
        }
        system.pause();
        now = link_name(&link);
    }
    let ok = done(now.as_deref());
    (now, ok)
}

/// Loads `module` if its PCI driver `driver` is not registered yet.
fn ensure_module(
    roots: &Roots,
    system: &mut dyn System,
    module: &str,
    driver: &str,
    config: &'static str,
    out: &mut dyn Write,
) -> Result<(), SetupError> {
    if roots.pci_driver(driver).exists() {
        return Ok(());
    }
    say(
        out,
        format_args!("loading the {module} module (modprobe {module})"),
    );
    let failed = |detail: String| SetupError::Module {
        module: module.to_owned(),
        detail,
        config,
    };
    system.modprobe(module).map_err(failed)?;
    if roots.pci_driver(driver).exists() {
        Ok(())
    } else {
        Err(failed(format!(
            "it loaded, but {} did not appear",
            roots.pci_driver(driver).display()
        )))
    }
}

/// `isonvme setup bind <BDF|all>`: hands controllers to vfio-pci with
/// `driver_override` (so no other device with the same IDs is affected,
/// unlike `new_id`), after refusing any the host is using.
pub fn bind(
    roots: &Roots,
    system: &mut dyn System,
    target: &Target,
    options: &BindOptions,
    out: &mut dyn Write,
) -> Result<(), SetupError> {
    let user = options
        .user
        .as_ref()
        .map(|spec| resolve(system, spec))
        .transpose()?;
    let devices = select(roots, target)?;
    let command = match &options.user {
        Some(spec) => format!("bind {target} --user {spec}"),
        None => format!("bind {target}"),
    };
    require_root(system, command)?;

    let mut bound: Vec<(PciDevice, u32)> = Vec::new();
    let mut failed: Vec<(String, SetupError)> = Vec::new();
    for device in devices {
        match bind_one(roots, system, &device, options.force, out) {
            Ok(group) => bound.push((device, group)),
            Err(error @ SetupError::InUse { .. }) if *target == Target::All => {
                say(out, format_args!("{}: skipped: {error}", device.bdf));
            }
            Err(error) if *target == Target::All => {
                say(out, format_args!("{}: failed: {error}", device.bdf));
                failed.push((device.bdf.clone(), error));
            }
            Err(error) => return Err(error),
        }
    }

    // Ownership, viability and the next step, once per group.
    let groups: BTreeSet<u32> = bound.iter().map(|(_, group)| *group).collect();
    for &group in &groups {
        let node = roots.vfio_group_node(group);
        if let Some(user) = &user {
            if let Err(error) = hand_over(
                system,
                &node,
                user,
                "until the device is unbound or the host reboots; docs/setup.md has a udev \
                 rule that makes it permanent",
                out,
            ) {
                failed.push((format!("group {group}"), error));
            }
        }
        let members = group_members(roots, group).unwrap_or_default();
        let ours: Vec<&str> = bound
            .iter()
            .filter(|(_, g)| *g == group)
            .map(|(d, _)| d.bdf.as_str())
            .collect();
        let blocking: Vec<String> = blocking_members(&members, "")
            .into_iter()
            .filter(|m| !ours.contains(&m.bdf.as_str()))
            .map(|m| m.to_string())
            .collect();
        if !blocking.is_empty() {
            say(
                out,
                format_args!(
                    "warning: IOMMU group {group} is not viable yet: VFIO can only open a group \
                     whose every device is bound to vfio-pci or to no driver, and these are \
                     not: {}. Fix: `isonvme setup bind <BDF>` for NVMe ones, unbind the others \
                     (`echo <BDF> > /sys/bus/pci/devices/<BDF>/driver/unbind`), or move the \
                     controller to a slot with its own IOMMU group",
                    blocking.join(", ")
                ),
            );
        }
    }
    if let Some(user) = &user {
        let pinned: u64 = host::hugepage_pools(roots)
            .iter()
            .map(|p| p.total.saturating_mul(p.size_kb))
            .sum();
        say(out, memlock_advice(user, pinned, host::memlock(roots)));
    }
    if let Some((device, _)) = bound.first() {
        say(
            out,
            format_args!(
                "next: check with `isonvme setup status`, then try it: `cargo run -p \
                 isonvme-examples --bin identify -- --device {}`",
                device.bdf
            ),
        );
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(SetupError::Partial { failed })
    }
}

/// Binds one validated controller; returns its IOMMU group.
fn bind_one(
    roots: &Roots,
    system: &mut dyn System,
    device: &PciDevice,
    force: bool,
    out: &mut dyn Write,
) -> Result<u32, SetupError> {
    let bdf = device.bdf.as_str();
    let Some(group) = device.iommu_group else {
        return Err(SetupError::NoIommu {
            bdf: bdf.to_owned(),
            path: device.path.join("iommu_group"),
            noiommu_mode: host::iommu(roots).noiommu_mode,
        });
    };
    if device.driver.as_deref() == Some(VFIO_PCI) {
        say(
            out,
            format_args!("{bdf}: already bound to vfio-pci (IOMMU group {group})"),
        );
        return Ok(group);
    }

    let scan = device_users(roots, &kernel_devices(roots, device));
    if !scan.uses.is_empty() {
        let force_allowed = scan.uses.iter().all(Use::forceable);
        if !(force && force_allowed) {
            return Err(SetupError::InUse {
                bdf: bdf.to_owned(),
                uses: scan.uses,
                force_allowed,
            });
        }
        for use_ in &scan.uses {
            say(
                out,
                format_args!("{bdf}: --force: taking it although {use_}"),
            );
        }
    }
    if let Some(why) = &scan.incomplete {
        say(
            out,
            format_args!("{bdf}: warning: the in-use check is incomplete: {why}"),
        );
    }

    ensure_module(roots, system, "vfio-pci", VFIO_PCI, "CONFIG_VFIO_PCI", out)?;

    let from = device
        .driver
        .as_deref()
        .map_or_else(String::new, |d| format!(" from {d}"));
    say(out, format_args!("{bdf}: moving it{from} to vfio-pci"));
    // The order matters: the override first, so that when the current
    // driver lets go, the probe that follows (and any the kernel does on
    // its own) can only pick vfio-pci.
    let override_path = device.path.join("driver_override");
    write_attr(system, &override_path, VFIO_PCI)?;
    let moved = (|| {
        if device.driver.is_some() {
            write_attr(system, &device.path.join("driver/unbind"), bdf)?;
        }
        write_attr(system, &roots.drivers_probe(), bdf)
    })();
    if let Err(error) = moved {
        let restored = restore(roots, system, device);
        say(out, format_args!("{bdf}: {restored}"));
        return Err(error);
    }

    let (_, ok) = wait_for_driver(system, device, |d| d == Some(VFIO_PCI));
    if !ok {
        let restored = restore(roots, system, device);
        let now = link_name(&device.path.join("driver"));
        return Err(SetupError::DidNotBind {
            bdf: bdf.to_owned(),
            wanted: VFIO_PCI.to_owned(),
            now,
            hint: format!(
                "vfio-pci did not take it; {restored}. Check `dmesg | tail` for the reason \
                 (an IOMMU fault, a failed reset), and `modinfo vfio-pci`"
            ),
        });
    }

    let node = roots.vfio_group_node(group);
    let mut appeared = node.exists();
    for _ in 0..POLLS {
        if appeared {
            break;
        }
        system.pause();
        appeared = node.exists();
    }
    if appeared {
        say(
            out,
            format_args!(
                "{bdf}: bound to vfio-pci (IOMMU group {group}, {})",
                node.display()
            ),
        );
    } else {
        say(
            out,
            format_args!(
                "{bdf}: bound to vfio-pci (IOMMU group {group}), but {} did not appear: is \
                 devtmpfs mounted on /dev and udev running? (`ls -l /dev/vfio`)",
                node.display()
            ),
        );
    }
    Ok(group)
}

/// Undoes a half-done bind: clears the override and lets the kernel probe
/// again. Returns what became of the device, for the error message.
fn restore(roots: &Roots, system: &mut dyn System, device: &PciDevice) -> String {
    let bdf = device.bdf.as_str();
    let cleared = system
        .write_attr(&device.path.join("driver_override"), "\n")
        .is_ok();
    if link_name(&device.path.join("driver")).is_none() {
        let _ = system.write_attr(&roots.drivers_probe(), bdf);
    }
    let (now, _) = wait_for_driver(system, device, |d| d.is_some() && d != Some(VFIO_PCI));
    match (now, cleared) {
        (Some(driver), true) if driver != VFIO_PCI => {
            format!("it was handed back to {driver}")
        }
        (Some(driver), _) => format!("it is left bound to {driver}"),
        (None, _) => {
            format!("it is left without a driver: give it back with `isonvme setup unbind {bdf}`")
        }
    }
}

/// Changes the owner of `path` to `user`.
/// `lasts` says how long the change holds, for the message.
fn hand_over(
    system: &mut dyn System,
    path: &Path,
    user: &User,
    lasts: &str,
    out: &mut dyn Write,
) -> Result<(), SetupError> {
    system
        .chown(path, user.uid, user.gid)
        .map_err(|source| SetupError::Chown {
            path: path.to_path_buf(),
            user: user.name.clone(),
            source,
        })?;
    say(
        out,
        format_args!("{} now belongs to {} ({lasts})", path.display(), user.name),
    );
    Ok(())
}

/// `isonvme setup unbind <BDF|all>` (and `reset`): gives controllers back
/// to the kernel's driver, refusing any whose VFIO group a process holds
/// (the kernel would block the unbind until it is closed).
pub fn unbind(
    roots: &Roots,
    system: &mut dyn System,
    target: &Target,
    command: &str,
    out: &mut dyn Write,
) -> Result<(), SetupError> {
    let mut devices = select(roots, target)?;
    if *target == Target::All {
        devices.retain(|d| {
            d.driver.as_deref() == Some(VFIO_PCI) || d.driver_override.as_deref() == Some(VFIO_PCI)
        });
        if devices.is_empty() {
            say(
                out,
                "no NVMe controller is bound to vfio-pci: nothing to do",
            );
            return Ok(());
        }
    }
    require_root(system, format!("{command} {target}"))?;

    let mut failed: Vec<(String, SetupError)> = Vec::new();
    for device in devices {
        match unbind_one(roots, system, &device, out) {
            Ok(()) => {}
            Err(error @ SetupError::VfioInUse { .. }) if *target == Target::All => {
                say(out, format_args!("{}: skipped: {error}", device.bdf));
            }
            Err(error) if *target == Target::All => {
                say(out, format_args!("{}: failed: {error}", device.bdf));
                failed.push((device.bdf.clone(), error));
            }
            Err(error) => return Err(error),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(SetupError::Partial { failed })
    }
}

fn unbind_one(
    roots: &Roots,
    system: &mut dyn System,
    device: &PciDevice,
    out: &mut dyn Write,
) -> Result<(), SetupError> {
    let bdf = device.bdf.as_str();
    let on_vfio = device.driver.as_deref() == Some(VFIO_PCI);
    let overridden = device.driver_override.is_some();
    if !on_vfio && device.driver.is_some() {
        let driver = device.driver.as_deref().unwrap_or_default();
        if overridden {
            // Bound elsewhere but still pinned for a later probe: unpin it.
            write_attr(system, &device.path.join("driver_override"), "\n")?;
            say(
                out,
                format_args!("{bdf}: bound to {driver}; cleared its driver_override"),
            );
        } else {
            say(
                out,
                format_args!("{bdf}: bound to {driver}, not vfio-pci: nothing to do"),
            );
        }
        return Ok(());
    }
    if on_vfio {
        if let Some(group) = device.iommu_group {
            let nodes = vfio_nodes(group, &device.path);
            let (users, _) = vfio_users(roots, &nodes);
            if let Some(first) = users.first() {
                return Err(SetupError::VfioInUse {
                    bdf: bdf.to_owned(),
                    node: PathBuf::from(&first.path),
                    users,
                });
            }
        }
    }
    if let Err(error) = ensure_module(
        roots,
        system,
        KERNEL_NVME,
        KERNEL_NVME,
        "CONFIG_BLK_DEV_NVME",
        out,
    ) {
        // Still take it from vfio-pci: the user asked for that, and the
        // verification below reports the missing driver with this cause.
        say(out, format_args!("{bdf}: warning: {error}"));
    }
    say(
        out,
        format_args!(
            "{bdf}: giving it back to the kernel{}",
            if on_vfio { " (from vfio-pci)" } else { "" }
        ),
    );
    // The override first: with it cleared, the probe below picks the
    // device's own driver.
    write_attr(system, &device.path.join("driver_override"), "\n")?;
    if on_vfio {
        write_attr(system, &device.path.join("driver/unbind"), bdf)?;
    }
    write_attr(system, &roots.drivers_probe(), bdf)?;
    let (now, ok) = wait_for_driver(system, device, |d| d.is_some() && d != Some(VFIO_PCI));
    if !ok {
        return Err(SetupError::DidNotBind {
            bdf: bdf.to_owned(),
            wanted: "the kernel's nvme driver".to_owned(),
            now,
            hint: format!(
                "load the driver and probe again: `modprobe nvme; echo {bdf} > {}`; see \
                 `dmesg | tail` for why it failed",
                roots.drivers_probe().display()
            ),
        });
    }
    let driver = now.unwrap_or_default();
    say(out, format_args!("{bdf}: bound to {driver}"));
    Ok(())
}

/// What `isonvme setup hugepages` is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HugepageRequest {
    /// The number of pages wanted in the pool.
    pub count: u64,
    /// The NUMA node, or every node (the kernel spreads them).
    pub node: Option<u32>,
    /// The page size in KiB (2048 or 1048576).
    pub size_kb: u64,
    /// Hand the hugetlbfs mount to this user.
    pub user: Option<UserSpec>,
}

/// `isonvme setup hugepages N [--node K] [--size 2M|1G] [--user NAME]`:
/// sets the pool size, reports what the kernel granted (it may grant
/// fewer), and mounts hugetlbfs if no mount of that page size exists.
pub fn hugepages(
    roots: &Roots,
    system: &mut dyn System,
    request: &HugepageRequest,
    out: &mut dyn Write,
) -> Result<(), SetupError> {
    let size = show_size_kb(request.size_kb);
    let pool_name = format!("hugepages-{}kB", request.size_kb);
    let global = roots.hugepages().join(&pool_name);
    if !global.is_dir() {
        return Err(SetupError::NoHugepageSize { size, path: global });
    }
    let pool = match request.node {
        None => global.clone(),
        Some(node) => {
            let node_dir = roots.nodes().join(format!("node{node}"));
            if !node_dir.is_dir() {
                return Err(SetupError::NoSuchNode {
                    node,
                    path: node_dir,
                    available: host::numa_nodes(roots),
                });
            }
            let dir = host::node_pool_dir(roots, node, request.size_kb);
            if !dir.is_dir() {
                return Err(SetupError::NoHugepageSize { size, path: dir });
            }
            dir
        }
    };
    let user = request
        .user
        .as_ref()
        .map(|spec| resolve(system, spec))
        .transpose()?;
    let mut command = format!("hugepages {}", request.count);
    if let Some(node) = request.node {
        command.push_str(&format!(" --node {node}"));
    }
    command.push_str(&format!(" --size {size}"));
    if let Some(spec) = &request.user {
        command.push_str(&format!(" --user {spec}"));
    }
    require_root(system, command)?;

    let file = pool.join("nr_hugepages");
    write_attr(system, &file, &request.count.to_string())?;
    // The kernel grants what it can find; the file says what it holds.
    let granted = read_trimmed(&file)
        .map_err(|e| SetupError::read(&file, e))?
        .parse::<u64>()
        .map_err(|e| {
            SetupError::read(
                &file,
                std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
    let free = read_trimmed(&pool.join("free_hugepages"))
        .ok()
        .and_then(|t| t.parse::<u64>().ok());
    let place = request
        .node
        .map_or_else(String::new, |n| format!(" on node {n}"));
    say(
        out,
        format_args!(
            "{size} hugepages{place}: asked for {}, the kernel holds {granted}{}",
            request.count,
            free.map_or_else(String::new, |f| format!(" ({f} free)"))
        ),
    );

    if granted > 0 {
        let mount = ensure_hugetlbfs(roots, system, request.size_kb, out)?;
        if let Some(user) = &user {
            hand_over(
                system,
                &mount,
                user,
                "until it is unmounted or the host reboots",
                out,
            )?;
        }
    }
    if let Some(user) = &user {
        let pinned: u64 = host::hugepage_pools(roots)
            .iter()
            .map(|p| p.total.saturating_mul(p.size_kb))
            .sum();
        say(out, memlock_advice(user, pinned, host::memlock(roots)));
    }
    if granted != request.count {
        return Err(SetupError::HugepagesShort {
            asked: request.count,
            granted,
            size: show_size_kb(request.size_kb),
            node: request.node,
        });
    }
    Ok(())
}

/// Finds a hugetlbfs mount of page size `size_kb`, or mounts one on
/// `/dev/hugepages` (or `/dev/hugepages-<size>` when `/dev/hugepages`
/// already holds another size). Returns the mount point.
fn ensure_hugetlbfs(
    roots: &Roots,
    system: &mut dyn System,
    size_kb: u64,
    out: &mut dyn Write,
) -> Result<PathBuf, SetupError> {
    let mounts = host::hugetlbfs_mounts(roots);
    if let Some(mount) = mounts.iter().find(|m| m.page_kb == Some(size_kb)) {
        say(
            out,
            format_args!(
                "hugetlbfs ({}) is mounted on {}",
                show_size_kb(size_kb),
                mount.mount_point
            ),
        );
        return Ok(PathBuf::from(&mount.mount_point));
    }
    let default = roots.dev.join("hugepages");
    let default_text = default.to_string_lossy();
    let target = if mounts.iter().any(|m| m.mount_point == default_text) {
        roots
            .dev
            .join(format!("hugepages-{}", show_size_kb(size_kb)))
    } else {
        default
    };
    let pagesize = show_size_kb(size_kb);
    system
        .mount_hugetlbfs(&target, &pagesize)
        .map_err(|source| SetupError::Mount {
            path: target.clone(),
            pagesize: pagesize.clone(),
            source,
        })?;
    say(
        out,
        format_args!("mounted hugetlbfs ({pagesize}) on {}", target.display()),
    );
    Ok(target)
}
