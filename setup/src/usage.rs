//! Who uses a controller on this host: mounted filesystems, swap, stacked
//! block devices (device-mapper, md) and processes with its device nodes
//! open. `bind` refuses a controller with any of these; `unbind` refuses
//! one whose VFIO group a process holds.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::pci::{dir_names, read_trimmed, KernelDevices};
use crate::roots::Roots;

/// One way the host uses a controller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Use {
    /// A filesystem on one of its block devices is mounted.
    Mounted {
        /// The block device (`nvme0n1p2`).
        device: String,
        /// Where it is mounted.
        mount_point: String,
        /// The filesystem type.
        fstype: String,
    },
    /// One of its block devices is active swap.
    Swap {
        /// The block device.
        device: String,
    },
    /// A stacked block device (device-mapper: LVM, dm-crypt, multipath;
    /// md RAID) sits on one of its block devices.
    Holder {
        /// The block device held.
        device: String,
        /// The holder's kernel name (`dm-0`, `md127`).
        holder: String,
        /// The holder's friendlier name (`vg-root` for device-mapper).
        label: Option<String>,
    },
    /// A process has one of its device nodes open.
    Open(OpenBy),
}

impl Use {
    /// Whether `--force` may override this use: only open files. Mounts,
    /// swap and holders would be corrupted or crash.
    pub fn forceable(&self) -> bool {
        matches!(self, Use::Open(_))
    }

    /// How to end this use.
    pub fn fix(&self) -> String {
        match self {
            Use::Mounted { mount_point, .. } => format!("unmount it (`umount {mount_point}`)"),
            Use::Swap { device } => format!("`swapoff /dev/{device}`"),
            Use::Holder { holder, label, .. } => {
                if holder.starts_with("md") {
                    format!("stop the RAID array (`mdadm --stop /dev/{holder}`)")
                } else {
                    let name = label.as_deref().unwrap_or(holder);
                    format!(
                        "deactivate the device-mapper device (`dmsetup info {name}`; for LVM \
                         `vgchange -an <vg>`, for dm-crypt `cryptsetup close {name}`)"
                    )
                }
            }
            Use::Open(open) => format!("stop `{}` (pid {})", open.command, open.pid),
        }
    }
}

impl fmt::Display for Use {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Use::Mounted {
                device,
                mount_point,
                fstype,
            } => write!(f, "{device} is mounted on {mount_point} ({fstype})"),
            Use::Swap { device } => write!(f, "{device} is active swap"),
            Use::Holder {
                device,
                holder,
                label,
            } => match label {
                Some(label) => write!(f, "{device} is held by {holder} ({label})"),
                None => write!(f, "{device} is held by {holder}"),
            },
            Use::Open(open) => open.fmt(f),
        }
    }
}

/// A process with a device node open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpenBy {
    /// The node (`/dev/nvme0n1`, `/dev/vfio/12`).
    pub path: String,
    /// The process.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`).
    pub command: String,
}

impl fmt::Display for OpenBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is open by pid {} ({})",
            self.path, self.pid, self.command
        )
    }
}

/// What a scan found, and whether it could look everywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Scan {
    /// Every use found.
    pub uses: Vec<Use>,
    /// Why the scan may have missed something (other users' processes
    /// cannot be inspected without root).
    pub incomplete: Option<String>,
}

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// `major:minor` of the filesystem's device (0:N for btrfs and
    /// pseudo filesystems).
    pub dev: String,
    /// Where it is mounted.
    pub mount_point: String,
    /// The filesystem type.
    pub fstype: String,
    /// The mount source (`/dev/nvme0n1p2`, `nodev`).
    pub source: String,
    /// Per-mount options (`rw,relatime`).
    pub mount_options: String,
    /// Per-superblock options (`rw,pagesize=2M`).
    pub super_options: String,
}

impl MountEntry {
    /// The value of `key=` in the superblock or mount options.
    pub fn option(&self, key: &str) -> Option<&str> {
        self.super_options
            .split(',')
            .chain(self.mount_options.split(','))
            .find_map(|opt| opt.strip_prefix(key)?.strip_prefix('='))
    }
}

/// Parses `/proc/<pid>/mountinfo` (see proc(5)); malformed lines are
/// skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            if fields.len() < 6 {
                return None;
            }
            Some(MountEntry {
                dev: fields[2].to_owned(),
                mount_point: unescape(fields[4]),
                mount_options: fields[5].to_owned(),
                fstype: right.next()?.to_owned(),
                source: unescape(right.next()?),
                super_options: right.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

/// The mounts of this process's mount namespace.
pub fn mounts(roots: &Roots) -> Vec<MountEntry> {
    std::fs::read_to_string(roots.mountinfo())
        .map(|text| parse_mountinfo(&text))
        .unwrap_or_default()
}

/// Undoes the kernel's octal escapes of white space and backslashes
/// (`\040` is a space) in mountinfo and /proc/swaps.
pub fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(value) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every way the host uses `devices`: mounts, swap, holders, open files.
pub fn device_users(roots: &Roots, devices: &KernelDevices) -> Scan {
    let mut scan = Scan::default();
    let block_names: BTreeSet<&str> = devices.block.iter().map(|b| b.name.as_str()).collect();
    let by_dev: Vec<(&str, &str)> = devices
        .block
        .iter()
        .filter_map(|b| Some((b.dev.as_deref()?, b.name.as_str())))
        .collect();

    // Mounts: match the device number (what the kernel really mounted)
    // and, for filesystems that report an anonymous device number (btrfs),
    // the source path.
    for mount in mounts(roots) {
        let by_number = by_dev
            .iter()
            .find(|(dev, _)| *dev == mount.dev)
            .map(|(_, name)| *name);
        let by_source = mount
            .source
            .strip_prefix("/dev/")
            .filter(|name| block_names.contains(name));
        if let Some(device) = by_number.or(by_source) {
            scan.uses.push(Use::Mounted {
                device: device.to_owned(),
                mount_point: mount.mount_point,
                fstype: mount.fstype,
            });
        }
    }

    // Swap.
    if let Ok(text) = std::fs::read_to_string(roots.proc.join("swaps")) {
        for line in text.lines().skip(1) {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let name = unescape(name);
            if let Some(device) = name
                .strip_prefix("/dev/")
                .filter(|n| block_names.contains(n))
            {
                scan.uses.push(Use::Swap {
                    device: device.to_owned(),
                });
            }
        }
    }

    // Holders: device-mapper and md devices stacked on top.
    for block in &devices.block {
        let dir = roots.class_block().join(&block.name).join("holders");
        for holder in dir_names(&dir) {
            let holder_dir = roots.class_block().join(&holder);
            let label = read_trimmed(&holder_dir.join("dm/name"))
                .ok()
                .filter(|n| !n.is_empty());
            scan.uses.push(Use::Holder {
                device: block.name.clone(),
                holder,
                label,
            });
        }
    }

    // Open files.
    let wanted: BTreeSet<String> = devices
        .dev_names()
        .into_iter()
        .map(|n| format!("/dev/{n}"))
        .collect();
    let (open, incomplete) = open_files(roots, &wanted);
    scan.uses.extend(open.into_iter().map(Use::Open));
    scan.incomplete = incomplete;
    scan
}

/// Processes that have any of `paths` (kernel view, `/dev/...`) open,
/// found from the `/proc/<pid>/fd/*` links; and, if some processes could
/// not be inspected, why.
pub fn open_files(roots: &Roots, paths: &BTreeSet<String>) -> (Vec<OpenBy>, Option<String>) {
    let mut found: Vec<OpenBy> = Vec::new();
    let mut denied = 0usize;
    for name in dir_names(&roots.proc) {
        let Ok(pid) = name.parse::<u32>() else {
            continue;
        };
        let fd_dir = roots.proc.join(&name).join("fd");
        let entries = match std::fs::read_dir(&fd_dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                denied += 1;
                continue;
            }
            // The process exited meanwhile, or is a kernel thread.
            Err(_) => continue,
        };
        let mut seen: BTreeSet<String> = BTreeSet::new();
        for entry in entries.flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if paths.contains(&target) && seen.insert(target.clone()) {
                let command = read_trimmed(&roots.proc.join(&name).join("comm"))
                    .unwrap_or_else(|_| "?".to_owned());
                found.push(OpenBy {
                    path: target,
                    pid,
                    command,
                });
            }
        }
    }
    found.sort_by(|a, b| (a.pid, &a.path).cmp(&(b.pid, &b.path)));
    let incomplete = (denied > 0).then(|| {
        format!(
            "the open files of {denied} process{} could not be read (run as root to see them)",
            if denied == 1 { "" } else { "es" }
        )
    });
    (found, incomplete)
}

/// The VFIO nodes of a device: its group node, and the per-device cdev
/// (`/dev/vfio/devices/vfioN`) on kernels that have it.
pub fn vfio_nodes(group: u32, device_path: &Path) -> Vec<String> {
    let mut nodes = vec![format!("/dev/vfio/{group}")];
    nodes.extend(
        dir_names(&device_path.join("vfio-dev"))
            .into_iter()
            .map(|name| format!("/dev/vfio/devices/{name}")),
    );
    nodes
}

/// Processes that hold any of `nodes` open.
pub fn vfio_users(roots: &Roots, nodes: &[String]) -> (Vec<OpenBy>, Option<String>) {
    let wanted: BTreeSet<String> = nodes.iter().cloned().collect();
    open_files(roots, &wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
40 22 0:45 / /srv/my\\040data rw,relatime shared:30 - btrfs /dev/nvme1n1 rw,space_cache=v2
41 22 0:46 / /dev/hugepages rw,relatime shared:31 - hugetlbfs hugetlbfs rw,pagesize=2M
garbage line
";

    #[test]
    fn mountinfo_is_parsed_with_escapes_and_options() {
        let mounts = parse_mountinfo(MOUNTINFO);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[0].dev, "259:2");
        assert_eq!(mounts[0].mount_point, "/");
        assert_eq!(mounts[0].fstype, "ext4");
        assert_eq!(mounts[0].source, "/dev/nvme0n1p2");
        assert_eq!(mounts[2].mount_point, "/srv/my data");
        assert_eq!(mounts[3].option("pagesize"), Some("2M"));
        assert_eq!(mounts[3].option("uid"), None);
    }

    #[test]
    fn unescape_leaves_plain_text_alone() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/trailing\\04"), "/trailing\\04");
    }

    #[test]
    fn fixes_name_the_command() {
        let mount = Use::Mounted {
            device: "nvme0n1p2".into(),
            mount_point: "/data".into(),
            fstype: "xfs".into(),
        };
        assert_eq!(mount.fix(), "unmount it (`umount /data`)");
        assert!(!mount.forceable());
        let md = Use::Holder {
            device: "nvme0n1".into(),
            holder: "md127".into(),
            label: None,
        };
        assert!(md.fix().contains("mdadm --stop /dev/md127"));
        let dm = Use::Holder {
            device: "nvme0n1p3".into(),
            holder: "dm-0".into(),
            label: Some("vg-root".into()),
        };
        assert!(dm.fix().contains("dmsetup info vg-root"));
        assert_eq!(dm.to_string(), "nvme0n1p3 is held by dm-0 (vg-root)");
    }
}
