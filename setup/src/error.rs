//! Why a setup command failed. Every variant names the cause and the fix,
//! and maps to one of the documented exit codes ([`exit`]).

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::usage::{OpenBy, Use};

/// The exit codes of `isonvme setup`, one per kind of failure, so scripts
/// can tell "fix your command" from "fix your host" from "try again later".
pub mod exit {
    /// Done (for `all`: every device done or deliberately skipped as in
    /// use).
    pub const OK: u8 = 0;
    /// An operation was tried and failed, or did not take effect (the
    /// device did not end bound, the kernel granted fewer hugepages).
    pub const FAILED: u8 = 1;
    /// Bad command line: malformed arguments, no such device, node or
    /// user, not an NVMe controller. (clap's own usage errors are 2 too.)
    pub const USAGE: u8 = 2;
    /// The command changes the kernel's configuration and needs root.
    pub const NOT_ROOT: u8 = 3;
    /// Refused: the device is in use (mounted, swap, holders, open files,
    /// an open VFIO group).
    pub const IN_USE: u8 = 4;
    /// The host is not ready: no IOMMU, a kernel module or page size is
    /// missing.
    pub const HOST: u8 = 5;
}

/// Why a setup command failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The text given is not a PCI address.
    #[error(
        "`{0}` is not a PCI address: expected domain:bus:device.function such as 0000:01:00.0 \
         (or `all`); list the NVMe controllers with `isonvme setup status`"
    )]
    InvalidAddress(String),
    /// Nothing at that address.
    #[error(
        "no such device: {bdf} ({} does not exist); list the NVMe controllers with \
         `isonvme setup status` or `lspci -D -d ::0108`",
        path.display()
    )]
    NoSuchDevice {
        /// The PCI address.
        bdf: String,
        /// The sysfs directory looked for.
        path: PathBuf,
    },
    /// The device is not an NVMe controller.
    #[error(
        "{bdf} is not an NVMe controller: its PCI class is {class:#08x}, NVMe is 0x010802; \
         isonvme setup only moves NVMe controllers (list them with `isonvme setup status`)"
    )]
    NotNvme {
        /// The PCI address.
        bdf: String,
        /// Its class code.
        class: u32,
    },
    /// `all` was asked for and there is no NVMe controller at all.
    #[error(
        "no NVMe controllers (PCI class 0x010802) in {}: check `lspci -D -d ::0108`; a \
         controller behind Intel VMD/RST needs VMD disabled (AHCI/NVMe mode) in the firmware",
        path.display()
    )]
    NoControllers {
        /// The directory scanned.
        path: PathBuf,
    },
    /// The command needs root.
    #[error(
        "`isonvme setup {command}` changes the kernel's configuration and needs root: run it \
         with sudo (`sudo isonvme setup {command}`); to let a user run isonvme programs \
         afterwards, add `--user NAME`"
    )]
    NotRoot {
        /// The command as typed (without `isonvme setup`).
        command: String,
    },
    /// The device is in use by the host.
    #[error("{}", in_use_message(bdf, uses, *force_allowed))]
    InUse {
        /// The PCI address.
        bdf: String,
        /// What uses it.
        uses: Vec<Use>,
        /// Whether `--force` would override (only when every use is an
        /// open file: never for mounts, swap or holders).
        force_allowed: bool,
    },
    /// A process holds the device's VFIO group (or device) node open.
    #[error(
        "refusing to give {bdf} back to the kernel: {}; VFIO would block the unbind until {} \
         is closed. Fix: stop that program (or close the device in it), then run the command \
         again",
        list(users), node.display()
    )]
    VfioInUse {
        /// The PCI address.
        bdf: String,
        /// The node that is open.
        node: PathBuf,
        /// Who has it open.
        users: Vec<OpenBy>,
    },
    /// The device has no IOMMU group.
    #[error(
        "no IOMMU: {bdf} has no IOMMU group ({} is missing){}. Fix: enable VT-d (Intel) or \
         AMD-Vi/IOMMU (AMD) in the firmware setup and boot with `intel_iommu=on iommu=pt` \
         (Intel) or `iommu=pt` (AMD, whose IOMMU driver is on once the firmware enables it; \
         make sure nothing passes `amd_iommu=off`); check with \
         `isonvme setup status`. Without any IOMMU, VFIO's unsafe no-IOMMU mode is the only \
         way (bind by hand and open `<BDF>,noiommu`; see docs/setup.md)",
        path.display(),
        if *noiommu_mode { " and vfio's enable_unsafe_noiommu_mode is on" } else { "" }
    )]
    NoIommu {
        /// The PCI address.
        bdf: String,
        /// The `iommu_group` link looked for.
        path: PathBuf,
        /// Whether vfio's unsafe no-IOMMU mode is enabled.
        noiommu_mode: bool,
    },
    /// A kernel module could not be loaded.
    #[error(
        "the kernel module {module} is not loaded and `modprobe {module}` failed ({detail}). \
         Fix: install this kernel's modules (`linux-modules-extra-$(uname -r)` on Ubuntu, \
         `kernel-modules-extra` on Fedora/RHEL) or build a kernel with {config}"
    )]
    Module {
        /// The module.
        module: String,
        /// What modprobe said.
        detail: String,
        /// The kernel configuration option that provides it.
        config: &'static str,
    },
    /// The device did not end bound to the driver wanted.
    #[error(
        "{bdf} did not end bound to {wanted} (it is now {}): {hint}",
        now.as_deref().map_or_else(|| "bound to no driver".to_owned(), |d| format!("bound to {d}"))
    )]
    DidNotBind {
        /// The PCI address.
        bdf: String,
        /// The driver wanted.
        wanted: String,
        /// The driver it ended with.
        now: Option<String>,
        /// What happened and what to do.
        hint: String,
    },
    /// A sysfs/procfs attribute could not be written.
    #[error("writing `{}` to {}: {source}{}", contents.trim(), path.display(), write_hint(source))]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        contents: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A sysfs/procfs file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The page size is not one of the sizes asked for.
    #[error("`{0}` is not a hugepage size: use 2M or 1G")]
    InvalidPageSize(String),
    /// The kernel has no hugepages of this size.
    #[error(
        "this kernel offers no {size} hugepages ({} does not exist). Fix: {}",
        path.display(),
        if size == "1G" {
            "1 GiB pages need a CPU with the pdpe1gb flag (`grep -c pdpe1gb /proc/cpuinfo`) and \
             usually a reservation at boot (`default_hugepagesz=1G hugepagesz=1G hugepages=N`); \
             or use --size 2M"
        } else {
            "the kernel needs CONFIG_HUGETLBFS; use a distribution kernel or enable it"
        }
    )]
    NoHugepageSize {
        /// The size, `2M` or `1G`.
        size: String,
        /// The directory looked for.
        path: PathBuf,
    },
    /// No such NUMA node.
    #[error(
        "no NUMA node {node} ({} does not exist); this host's nodes: {}",
        path.display(),
        if available.is_empty() { "none listed (not a NUMA kernel: omit --node)".to_owned() }
        else { available.iter().map(u32::to_string).collect::<Vec<_>>().join(", ") }
    )]
    NoSuchNode {
        /// The node asked for.
        node: u32,
        /// The directory looked for.
        path: PathBuf,
        /// The nodes that exist.
        available: Vec<u32>,
    },
    /// The kernel granted a different number of hugepages than asked for.
    #[error("{}", short_message(*asked, *granted, size, *node))]
    HugepagesShort {
        /// Pages asked for.
        asked: u64,
        /// Pages the kernel holds now.
        granted: u64,
        /// The page size, `2M` or `1G`.
        size: String,
        /// The node, if one was asked for.
        node: Option<u32>,
    },
    /// The `--user` value is malformed.
    #[error("`--user {spec}`: {reason}; give a user name such as `alice` or a numeric uid")]
    InvalidUser {
        /// The text given.
        spec: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The user does not exist.
    #[error(
        "`--user {spec}`: no such user on this host (check the spelling with `getent passwd \
         {spec}`, or create it with `useradd`)"
    )]
    NoSuchUser {
        /// The text given.
        spec: String,
    },
    /// The user database could not be read.
    #[error("`--user {spec}`: looking the user up failed: {detail}")]
    UserLookup {
        /// The text given.
        spec: String,
        /// The error.
        detail: String,
    },
    /// Mounting hugetlbfs failed.
    #[error(
        "mounting hugetlbfs on {}: {source}. Fix: check the kernel has CONFIG_HUGETLBFS \
         (`grep hugetlbfs /proc/filesystems`) and mount it by hand: `mkdir -p {}; mount -t \
         hugetlbfs -o pagesize={pagesize} nodev {}`",
        path.display(), path.display(), path.display()
    )]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// The page size option.
        pagesize: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Changing the owner of a node or mount point failed.
    #[error("changing the owner of {} to {user}: {source}", path.display())]
    Chown {
        /// The file.
        path: PathBuf,
        /// The user.
        user: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Some of the devices of an `all` command failed.
    #[error("{}", partial_message(failed))]
    Partial {
        /// Each failed device and why.
        failed: Vec<(String, SetupError)>,
    },
}

impl SetupError {
    /// The exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            SetupError::InvalidAddress(_)
            | SetupError::NoSuchDevice { .. }
            | SetupError::NotNvme { .. }
            | SetupError::NoControllers { .. }
            | SetupError::InvalidPageSize(_)
            | SetupError::NoSuchNode { .. }
            | SetupError::InvalidUser { .. }
            | SetupError::NoSuchUser { .. } => exit::USAGE,
            SetupError::NotRoot { .. } => exit::NOT_ROOT,
            SetupError::InUse { .. } | SetupError::VfioInUse { .. } => exit::IN_USE,
            SetupError::NoIommu { .. }
            | SetupError::Module { .. }
            | SetupError::NoHugepageSize { .. } => exit::HOST,
            SetupError::DidNotBind { .. }
            | SetupError::Write { .. }
            | SetupError::Read { .. }
            | SetupError::HugepagesShort { .. }
            | SetupError::UserLookup { .. }
            | SetupError::Mount { .. }
            | SetupError::Chown { .. } => exit::FAILED,
            SetupError::Partial { failed } => failed
                .first()
                .map_or(exit::FAILED, |(_, error)| error.exit_code()),
        }
    }

    /// A read failure of `path`.
    pub(crate) fn read(path: impl Into<PathBuf>, source: io::Error) -> Self {
        SetupError::Read {
            path: path.into(),
            source,
        }
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn in_use_message(bdf: &str, uses: &[Use], force_allowed: bool) -> String {
    let mut fixes: Vec<String> = Vec::new();
    for fix in uses.iter().map(Use::fix) {
        if !fixes.contains(&fix) {
            fixes.push(fix);
        }
    }
    let force = if force_allowed {
        " (or pass --force to take it from under those processes: their I/O will fail)"
    } else if uses.iter().any(|u| matches!(u, Use::Mounted { .. })) {
        " (there is no --force for mounted filesystems: taking the device would corrupt them)"
    } else {
        " (there is no --force for swap and stacked devices: taking the device would crash \
         whatever sits on top)"
    };
    format!(
        "refusing to take {bdf} from the kernel: it is in use by this host: {}. Fix: {}; then \
         run the command again{force}",
        list(uses),
        fixes.join("; ")
    )
}

fn write_hint(error: &io::Error) -> &'static str {
    match error.raw_os_error() {
        Some(libc_code) if libc_code == nix::libc::EACCES || libc_code == nix::libc::EPERM => {
            " (run as root: `sudo isonvme setup ...`)"
        }
        Some(libc_code) if libc_code == nix::libc::ENODEV => {
            " (the driver refused the device; see `dmesg | tail`)"
        }
        Some(libc_code) if libc_code == nix::libc::EBUSY => {
            " (the kernel says the device is busy; see `dmesg | tail`)"
        }
        _ => match error.kind() {
            io::ErrorKind::NotFound => " (the file is missing: is this kernel's sysfs complete?)",
            _ => "",
        },
    }
}

fn short_message(asked: u64, granted: u64, size: &str, node: Option<u32>) -> String {
    let place = node.map_or_else(String::new, |n| format!(" on NUMA node {n}"));
    let per_node = node.map_or_else(String::new, |n| {
        format!("; per node: `hugepages={n}:{asked}`")
    });
    if granted > asked {
        return format!(
            "asked for {asked} {size} hugepages{place}, but the kernel still holds {granted}: \
             pages in use are only freed when the programs using them exit (see `isonvme setup \
             status`); run the command again after that"
        );
    }
    let boot = if size == "1G" {
        format!("`default_hugepagesz=1G hugepagesz=1G hugepages={asked}`")
    } else {
        format!("`hugepagesz=2M hugepages={asked}`")
    };
    let kept = if granted == 0 {
        "None were granted.".to_owned()
    } else {
        format!("The {granted} granted are reserved.")
    };
    format!(
        "the kernel granted only {granted} of the {asked} {size} hugepages asked for{place}: it \
         could not find enough free, unfragmented memory. {kept} \
         Fix: free memory and compact it, then ask again (`sync; echo 3 > \
         /proc/sys/vm/drop_caches; echo 1 > /proc/sys/vm/compact_memory; isonvme setup \
         hugepages {asked}{}`), or reserve them at boot before memory fragments: add {boot} to \
         the kernel command line{per_node}",
        node.map_or_else(String::new, |n| format!(" --node {n}")),
    )
}

fn partial_message(failed: &[(String, SetupError)]) -> String {
    let mut text = format!(
        "{} device{} failed:",
        failed.len(),
        if failed.len() == 1 { "" } else { "s" }
    );
    for (bdf, error) in failed {
        text.push_str(&format!("\n  {bdf}: {error}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_exit_code() {
        assert_eq!(
            SetupError::InvalidAddress("x".into()).exit_code(),
            exit::USAGE
        );
        assert_eq!(
            SetupError::NotRoot {
                command: "bind all".into()
            }
            .exit_code(),
            exit::NOT_ROOT
        );
        assert_eq!(
            SetupError::NoIommu {
                bdf: "0000:01:00.0".into(),
                path: "/x".into(),
                noiommu_mode: false
            }
            .exit_code(),
            exit::HOST
        );
        let partial = SetupError::Partial {
            failed: vec![(
                "0000:01:00.0".into(),
                SetupError::NotRoot {
                    command: "bind all".into(),
                },
            )],
        };
        assert_eq!(partial.exit_code(), exit::NOT_ROOT);
        assert!(partial.to_string().starts_with("1 device failed:"));
    }

    #[test]
    fn not_root_says_sudo() {
        let text = SetupError::NotRoot {
            command: "bind 0000:01:00.0".into(),
        }
        .to_string();
        assert!(
            text.contains("sudo isonvme setup bind 0000:01:00.0"),
            "{text}"
        );
    }

    #[test]
    fn no_iommu_names_firmware_and_kernel_parameters() {
        let text = SetupError::NoIommu {
            bdf: "0000:01:00.0".into(),
            path: "/sys/bus/pci/devices/0000:01:00.0/iommu_group".into(),
            noiommu_mode: true,
        }
        .to_string();
        for wanted in ["VT-d", "AMD-Vi", "intel_iommu=on", "iommu=pt", "no-IOMMU"] {
            assert!(text.contains(wanted), "{wanted}: {text}");
        }
    }

    #[test]
    fn write_errors_name_the_file_and_the_fix() {
        let text = SetupError::Write {
            path: "/sys/bus/pci/drivers_probe".into(),
            contents: "0000:01:00.0\n".into(),
            source: io::Error::from_raw_os_error(nix::libc::EACCES),
        }
        .to_string();
        assert!(
            text.starts_with("writing `0000:01:00.0` to /sys/bus/pci/drivers_probe"),
            "{text}"
        );
        assert!(text.contains("run as root"), "{text}");
    }

    #[test]
    fn short_hugepages_say_what_was_granted_and_the_fix() {
        let text = SetupError::HugepagesShort {
            asked: 512,
            granted: 300,
            size: "2M".into(),
            node: Some(1),
        }
        .to_string();
        assert!(text.contains("granted only 300 of the 512"), "{text}");
        assert!(text.contains("on NUMA node 1"), "{text}");
        assert!(text.contains("compact_memory"), "{text}");
        assert!(text.contains("hugepagesz=2M hugepages=512"), "{text}");
        assert!(text.contains("hugepages=1:512"), "{text}");
        let text = SetupError::HugepagesShort {
            asked: 0,
            granted: 4,
            size: "2M".into(),
            node: None,
        }
        .to_string();
        assert!(text.contains("still holds 4"), "{text}");
    }
}
