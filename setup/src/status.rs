//! `isonvme setup status`: every NVMe controller and what stands between
//! it and isonvme, and the host's state — as text on 80 columns or JSON.

use std::fmt::Write as _;

use serde::Serialize;

use crate::error::SetupError;
use crate::host::{host_state, show_limit, show_size_kb, HostState};
use crate::pci::{
    blocking_members, group_members, group_type, kernel_devices, nvme_controllers, GroupMember,
    KernelDevices, PciDevice, KERNEL_NVME, VFIO_PCI,
};
use crate::roots::Roots;
use crate::usage::{device_users, vfio_nodes, vfio_users, OpenBy, Use};

/// One controller as `status` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControllerStatus {
    /// What sysfs says about the PCI function.
    #[serde(flatten, serialize_with = "crate::pci::serialize_device")]
    pub pci: PciDevice,
    /// The IOMMU group's domain type (`DMA`, `DMA-FQ`, `identity`).
    pub group_type: Option<String>,
    /// The other devices of its IOMMU group.
    #[serde(serialize_with = "crate::pci::serialize_members")]
    pub group_others: Vec<GroupMember>,
    /// Whether VFIO could take the group (every other member bound to
    /// vfio-pci, a VFIO-safe driver or nothing); none without a group.
    pub group_viable: Option<bool>,
    /// `/dev/vfio/<group>` if it exists.
    pub vfio_node: Option<String>,
    /// Processes holding its VFIO nodes open (isonvme programs, VMs).
    pub vfio_users: Vec<OpenBy>,
    /// The kernel devices its driver created.
    pub kernel: KernelDevices,
    /// How the host uses it.
    pub in_use: Vec<Use>,
    /// Why `in_use` may be incomplete.
    pub in_use_incomplete: Option<String>,
    /// Whether isonvme can open it now.
    pub ready: bool,
    /// What to do next, in words.
    pub next: String,
}

/// Everything `status` reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The NVMe controllers.
    pub controllers: Vec<ControllerStatus>,
    /// The host.
    pub host: HostState,
    /// Problems found, each with its fix.
    pub notes: Vec<String>,
}

/// Collects the status of the host under `roots`. Reads only.
pub fn collect(roots: &Roots) -> Result<Status, SetupError> {
    let host = host_state(roots);
    let controllers = nvme_controllers(roots)?
        .into_iter()
        .map(|pci| controller_status(roots, pci, &host))
        .collect::<Vec<_>>();
    let notes = host_notes(&host, &controllers);
    Ok(Status {
        controllers,
        host,
        notes,
    })
}

fn controller_status(roots: &Roots, pci: PciDevice, host: &HostState) -> ControllerStatus {
    let bdf = pci.bdf.clone();
    let (group_others, group_viable, group_kind, vfio_node, users) = match pci.iommu_group {
        Some(group) => {
            let others: Vec<GroupMember> = group_members(roots, group)
                .unwrap_or_default()
                .into_iter()
                .filter(|m| m.bdf != bdf)
                .collect();
            let viable = blocking_members(&others, &bdf).is_empty();
            let node = roots.vfio_group_node(group);
            let node = node.exists().then(|| node.display().to_string());
            let users = if pci.driver.as_deref() == Some(VFIO_PCI) {
                vfio_users(roots, &vfio_nodes(group, &pci.path)).0
            } else {
                Vec::new()
            };
            (others, Some(viable), group_type(roots, group), node, users)
        }
        None => (Vec::new(), None, None, None, Vec::new()),
    };
    let kernel = kernel_devices(roots, &pci);
    let scan = device_users(roots, &kernel);
    let ready = pci.driver.as_deref() == Some(VFIO_PCI)
        && group_viable == Some(true)
        && vfio_node.is_some()
        && users.is_empty();
    let next = if pci.iommu_group.is_none() {
        "no IOMMU group: enable the IOMMU (see the notes)".to_owned()
    } else if ready {
        format!("ready: --device {bdf}")
    } else if pci.driver.as_deref() == Some(VFIO_PCI) {
        if !users.is_empty() {
            "in use by a VFIO program (see vfio users)".to_owned()
        } else if group_viable == Some(false) {
            "bind or unbind the other devices of its IOMMU group".to_owned()
        } else {
            "its /dev/vfio node is missing: check devtmpfs/udev".to_owned()
        }
    } else if !scan.uses.is_empty() {
        "in use by this host: free it before `isonvme setup bind`".to_owned()
    } else if !host.iommu.present() {
        "enable the IOMMU (see the notes), then bind it".to_owned()
    } else {
        format!("isonvme setup bind {bdf}")
    };
    ControllerStatus {
        group_type: group_kind,
        group_others,
        group_viable,
        vfio_node,
        vfio_users: users,
        kernel,
        in_use: scan.uses,
        in_use_incomplete: scan.incomplete,
        ready,
        next,
        pci,
    }
}

/// The host's problems, each with its fix.
fn host_notes(host: &HostState, controllers: &[ControllerStatus]) -> Vec<String> {
    let mut notes = Vec::new();
    if controllers.is_empty() {
        notes.push(
            "no NVMe controllers (PCI class 0x010802) found: check `lspci -D -d ::0108`; \
             controllers behind Intel VMD/RST need VMD disabled in the firmware"
                .to_owned(),
        );
    }
    if !host.iommu.present() {
        notes.push(
            "no IOMMU: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup and \
             boot with `intel_iommu=on iommu=pt` (Intel) or `iommu=pt` (AMD)"
                .to_owned(),
        );
    }
    if host.iommu.noiommu_mode {
        notes.push(
            "vfio's enable_unsafe_noiommu_mode is on: devices get no DMA protection; isonvme \
             opens a no-IOMMU group only when asked (`<BDF>,noiommu`). Where an IOMMU \
             exists, turn it off (`echo N > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode`)"
                .to_owned(),
        );
    }
    if !host.vfio_pci_loaded {
        notes.push(
            "vfio-pci is not loaded: `isonvme setup bind` loads it (`modprobe vfio-pci`)"
                .to_owned(),
        );
    }
    match host.hugepages.iter().find(|p| p.size_kb == 2048) {
        None => notes.push(
            "this kernel offers no 2M hugepages (CONFIG_HUGETLBFS): isonvme needs them for DMA \
             memory"
                .to_owned(),
        ),
        Some(pool) if pool.total == 0 => notes.push(
            "no 2M hugepages reserved: isonvme needs them for DMA memory; reserve some with \
             `isonvme setup hugepages 512` (1 GiB) or `hugepages=512` on the kernel command \
             line"
                .to_owned(),
        ),
        Some(pool) if pool.free.saturating_sub(pool.reserved) == 0 => notes.push(format!(
            "all {} 2M hugepages are in use: reserve more with `isonvme setup hugepages {}`",
            pool.total,
            pool.total.saturating_mul(2).max(512)
        )),
        Some(_) => {}
    }
    if controllers.iter().any(|c| c.in_use_incomplete.is_some()) {
        notes.push(
            "not root: other users' processes could not be inspected, so \"in use\" may miss \
             open files (run `sudo isonvme setup status`)"
                .to_owned(),
        );
    }
    notes
}

/// The text report, on 80 columns.
pub fn render(status: &Status) -> String {
    let mut text = String::new();
    let _ = writeln!(text, "NVMe controllers ({})", status.controllers.len());
    if status.controllers.is_empty() {
        text.push_str("  none\n");
    }
    for c in &status.controllers {
        render_controller(&mut text, c);
    }
    text.push_str("\nHost\n");
    render_host(&mut text, &status.host);
    if !status.notes.is_empty() {
        text.push_str("\nNotes\n");
        for note in &status.notes {
            wrap_into(&mut text, "  - ", "    ", note);
        }
    }
    text
}

fn render_controller(text: &mut String, c: &ControllerStatus) {
    let hex = |v: Option<u16>| v.map_or_else(|| "?".to_owned(), |v| format!("{v:04x}"));
    let node = c
        .pci
        .numa_node
        .map_or_else(|| "no NUMA node".to_owned(), |n| format!("NUMA node {n}"));
    let _ = writeln!(
        text,
        "\n{}  {}:{}  {node}",
        c.pci.bdf,
        hex(c.pci.vendor),
        hex(c.pci.device)
    );
    let mut driver = c.pci.driver.clone().unwrap_or_else(|| "none".to_owned());
    if let Some(over) = &c.pci.driver_override {
        driver.push_str(&format!(" (driver_override {over})"));
    }
    field(text, "driver", &driver);
    let group = match c.pci.iommu_group {
        None => "none (no IOMMU)".to_owned(),
        Some(group) => {
            let kind = c
                .group_type
                .as_deref()
                .map_or_else(String::new, |t| format!(" ({t})"));
            let others = if c.group_others.is_empty() {
                "alone in its group".to_owned()
            } else {
                format!(
                    "with {}",
                    c.group_others
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let viable = if c.group_viable == Some(true) {
                "viable"
            } else {
                "NOT viable"
            };
            format!("{group}{kind}, {viable}, {others}")
        }
    };
    field(text, "iommu group", &group);
    if let Some(node) = &c.vfio_node {
        field(text, "vfio node", node);
    }
    for user in &c.vfio_users {
        field(text, "vfio users", &user.to_string());
    }
    if !c.kernel.controllers.is_empty() {
        field(text, "kernel dev", &c.kernel.controllers.join(" "));
    }
    let disks: Vec<String> = c
        .kernel
        .disks()
        .map(|disk| {
            let size = disk
                .size_bytes
                .map_or_else(String::new, |b| format!(" {}", human_bytes(b)));
            let parts: Vec<&str> = c
                .kernel
                .partitions_of(&disk.name)
                .map(|p| p.name.as_str())
                .collect();
            let parts = if parts.is_empty() {
                String::new()
            } else {
                format!(" ({})", parts.join(" "))
            };
            format!("{}{size}{parts}", disk.name)
        })
        .collect();
    if !disks.is_empty() {
        field(text, "namespaces", &disks.join(", "));
    } else if c.pci.driver.as_deref() == Some(KERNEL_NVME) {
        field(text, "namespaces", "none");
    }
    if c.in_use.is_empty() {
        if c.pci.driver.as_deref() == Some(KERNEL_NVME) {
            let caveat = if c.in_use_incomplete.is_some() {
                " (as far as a non-root user can see)"
            } else {
                ""
            };
            field(text, "in use", &format!("no{caveat}"));
        }
    } else {
        for use_ in &c.in_use {
            field(text, "in use", &use_.to_string());
        }
    }
    field(text, "next", &c.next);
}

fn render_host(text: &mut String, host: &HostState) {
    let iommu = if host.iommu.present() {
        let units = if host.iommu.units.is_empty() {
            String::new()
        } else {
            format!(" ({})", host.iommu.units.join(" "))
        };
        format!("on{units}, {} groups", host.iommu.groups)
    } else {
        "OFF (no IOMMU units or groups)".to_owned()
    };
    field(text, "iommu", &iommu);
    field(
        text,
        "vfio-pci",
        if host.vfio_pci_loaded {
            "loaded"
        } else {
            "not loaded"
        },
    );
    if host.hugepages.is_empty() {
        field(text, "hugepages", "none (no hugetlbfs support)");
    }
    for (i, pool) in host.hugepages.iter().enumerate() {
        let mut line = format!(
            "{}: {} total, {} free",
            show_size_kb(pool.size_kb),
            pool.total,
            pool.free
        );
        if pool.reserved > 0 {
            line.push_str(&format!(", {} reserved", pool.reserved));
        }
        if pool.surplus > 0 {
            line.push_str(&format!(", {} surplus", pool.surplus));
        }
        if host.default_hugepage_kb == Some(pool.size_kb) {
            line.push_str(" (default size)");
        }
        if pool.nodes.len() > 1 || (pool.total > 0 && !pool.nodes.is_empty()) {
            let nodes: Vec<String> = pool
                .nodes
                .iter()
                .map(|n| format!("node {}: {} of {} free", n.node, n.free, n.total))
                .collect();
            line.push_str(&format!("; {}", nodes.join(", ")));
        }
        field(text, if i == 0 { "hugepages" } else { "" }, &line);
    }
    if host.hugetlbfs.is_empty() {
        field(text, "hugetlbfs", "not mounted");
    }
    for (i, mount) in host.hugetlbfs.iter().enumerate() {
        let size = mount.page_kb.map_or_else(|| "?".to_owned(), show_size_kb);
        let owner = match (mount.uid, mount.mode) {
            (Some(uid), Some(mode)) => format!(", owner {}, mode {mode:o}", user_name(uid)),
            _ => String::new(),
        };
        field(
            text,
            if i == 0 { "hugetlbfs" } else { "" },
            &format!("{} ({size} pages{owner})", mount.mount_point),
        );
    }
    let memlock = host.memlock.map_or_else(
        || "unknown".to_owned(),
        |m| {
            format!(
                "{} soft, {} hard (this shell; root is exempt)",
                show_limit(m.soft),
                show_limit(m.hard)
            )
        },
    );
    field(text, "memlock", &memlock);
    let params: Vec<String> = host.kernel_params.iter().map(ToString::to_string).collect();
    field(
        text,
        "cmdline",
        &if params.is_empty() {
            "no IOMMU, isolation or hugepage parameters".to_owned()
        } else {
            params.join(" ")
        },
    );
    field(text, "isolated", host.isolated.as_deref().unwrap_or("none"));
    field(
        text,
        "nohz_full",
        host.nohz_full.as_deref().unwrap_or("none"),
    );
    let irqaffinity = host
        .kernel_params
        .iter()
        .find(|p| p.name == "irqaffinity")
        .and_then(|p| p.value.clone())
        .unwrap_or_else(|| "not set (all CPUs)".to_owned());
    field(text, "irqaffinity", &irqaffinity);
    if !host.numa_nodes.is_empty() {
        let nodes: Vec<String> = host.numa_nodes.iter().map(u32::to_string).collect();
        field(text, "numa nodes", &nodes.join(" "));
    }
}

/// The name of `uid`, or the number when it has none.
fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| uid.to_string(), |u| u.name)
}

/// Label column width: two spaces, the label, padding to column 15.
const LABEL: usize = 15;
/// The page width.
const WIDTH: usize = 80;

/// `  label        value`, wrapped with the value's column as indent.
fn field(text: &mut String, label: &str, value: &str) {
    let first = format!("  {label:<width$}", width = LABEL - 3);
    let first = format!("{first} ");
    let rest = " ".repeat(LABEL);
    wrap_into(text, &first, &rest, value);
}

/// Word-wraps `value` to [`WIDTH`] columns after `first` (first line) or
/// `rest` (following lines). A word longer than a line stays whole.
fn wrap_into(text: &mut String, first: &str, rest: &str, value: &str) {
    let mut line = first.to_owned();
    let mut empty = true;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if !empty && line.chars().count() + 1 + word.chars().count() > WIDTH {
            text.push_str(line.trim_end());
            text.push('\n');
            line = rest.to_owned();
            empty = true;
        }
        if !empty {
            line.push(' ');
        }
        line.push_str(word);
        empty = false;
    }
    text.push_str(line.trim_end());
    text.push('\n');
}

/// `2000398934016` → `1.8 TiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_to_80_columns() {
        let mut text = String::new();
        field(&mut text, "in use", &"word ".repeat(60));
        for line in text.lines() {
            assert!(line.chars().count() <= WIDTH, "{line}");
        }
        assert!(text.starts_with("  in use       word"), "{text}");
        assert!(text.lines().nth(1).unwrap().starts_with(&" ".repeat(LABEL)));
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(2_000_398_934_016), "1.8 TiB");
    }
}
