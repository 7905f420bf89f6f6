//! The host's readiness for a VFIO driver: IOMMU, vfio-pci, hugepages,
//! hugetlbfs mounts, the locked-memory limit, and the CPU isolation the
//! kernel was booted with.

use std::os::unix::fs::MetadataExt;

use isonvme::vfio::{memlock_limit, parse_memlock_limit, MemlockLimit};
use serde::Serialize;

pub use isonvme::vfio::show_limit;

use crate::pci::{dir_names, read_trimmed};
use crate::roots::Roots;
use crate::usage::mounts;

/// The IOMMU as the kernel exposes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IommuState {
    /// The IOMMU units (`/sys/class/iommu`: `dmar0`, `ivhd0`, ...).
    pub units: Vec<String>,
    /// How many IOMMU groups exist.
    pub groups: usize,
    /// Whether vfio's `enable_unsafe_noiommu_mode` is on.
    pub noiommu_mode: bool,
}

impl IommuState {
    /// Whether a real IOMMU is present and enabled.
    pub fn present(&self) -> bool {
        !self.units.is_empty() || (self.groups > 0 && !self.noiommu_mode)
    }
}

/// Reads the IOMMU state.
pub fn iommu(roots: &Roots) -> IommuState {
    IommuState {
        units: dir_names(&roots.sys.join("class/iommu")),
        groups: dir_names(&roots.iommu_groups()).len(),
        noiommu_mode: read_trimmed(
            &roots
                .sys
                .join("module/vfio/parameters/enable_unsafe_noiommu_mode"),
        )
        .is_ok_and(|v| v == "Y" || v == "1"),
    }
}

/// One hugepage pool on one NUMA node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodePages {
    /// The node.
    pub node: u32,
    /// Pages in the pool.
    pub total: u64,
    /// Pages not in use.
    pub free: u64,
}

/// The pool of one hugepage size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugepagePool {
    /// The page size in KiB (2048, 1048576).
    pub size_kb: u64,
    /// Pages in the pool (`nr_hugepages`).
    pub total: u64,
    /// Pages not in use.
    pub free: u64,
    /// Free pages already promised to mappings.
    pub reserved: u64,
    /// Pages allocated beyond the pool (overcommit).
    pub surplus: u64,
    /// Per NUMA node.
    pub nodes: Vec<NodePages>,
}

/// Every hugepage size the kernel offers, smallest first.
pub fn hugepage_pools(roots: &Roots) -> Vec<HugepagePool> {
    let count = |path: std::path::PathBuf| {
        read_trimmed(&path)
            .ok()
            .and_then(|t| t.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let nodes = numa_nodes(roots);
    let mut pools: Vec<HugepagePool> = dir_names(&roots.hugepages())
        .into_iter()
        .filter_map(|name| {
            let size_kb = parse_pool_dir(&name)?;
            let dir = roots.hugepages().join(&name);
            let per_node = nodes
                .iter()
                .filter_map(|&node| {
                    let dir = node_pool_dir(roots, node, size_kb);
                    dir.exists().then(|| NodePages {
                        node,
                        total: count(dir.join("nr_hugepages")),
                        free: count(dir.join("free_hugepages")),
                    })
                })
                .collect();
            Some(HugepagePool {
                size_kb,
                total: count(dir.join("nr_hugepages")),
                free: count(dir.join("free_hugepages")),
                reserved: count(dir.join("resv_hugepages")),
                surplus: count(dir.join("surplus_hugepages")),
                nodes: per_node,
            })
        })
        .collect();
    pools.sort_by_key(|p| p.size_kb);
    pools
}

/// `hugepages-2048kB` → 2048.
pub fn parse_pool_dir(name: &str) -> Option<u64> {
    name.strip_prefix("hugepages-")?
        .strip_suffix("kB")?
        .parse()
        .ok()
}

/// `/sys/devices/system/node/node<N>/hugepages/hugepages-<size>kB`.
pub fn node_pool_dir(roots: &Roots, node: u32, size_kb: u64) -> std::path::PathBuf {
    roots
        .nodes()
        .join(format!("node{node}"))
        .join("hugepages")
        .join(format!("hugepages-{size_kb}kB"))
}

/// The NUMA nodes sysfs lists.
pub fn numa_nodes(roots: &Roots) -> Vec<u32> {
    let mut nodes: Vec<u32> = dir_names(&roots.nodes())
        .iter()
        .filter_map(|n| n.strip_prefix("node")?.parse().ok())
        .collect();
    nodes.sort_unstable();
    nodes
}

/// The default hugepage size in KiB (`Hugepagesize:` in /proc/meminfo).
pub fn default_hugepage_kb(roots: &Roots) -> Option<u64> {
    let text = std::fs::read_to_string(roots.proc.join("meminfo")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Hugepagesize:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A mounted hugetlbfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HugetlbfsMount {
    /// Where it is mounted.
    pub mount_point: String,
    /// Its page size in KiB (from `pagesize=`, else the default size).
    pub page_kb: Option<u64>,
    /// The owner of its root directory.
    pub uid: Option<u32>,
    /// The group of its root directory.
    pub gid: Option<u32>,
    /// The permission bits of its root directory.
    pub mode: Option<u32>,
}

/// Every hugetlbfs mount.
pub fn hugetlbfs_mounts(roots: &Roots) -> Vec<HugetlbfsMount> {
    let default_kb = default_hugepage_kb(roots);
    mounts(roots)
        .into_iter()
        .filter(|m| m.fstype == "hugetlbfs")
        .map(|m| {
            let meta = std::fs::metadata(&m.mount_point).ok();
            HugetlbfsMount {
                page_kb: m.option("pagesize").and_then(parse_size_kb).or(default_kb),
                uid: meta.as_ref().map(|m| m.uid()),
                gid: meta.as_ref().map(|m| m.gid()),
                mode: meta.as_ref().map(|m| m.mode() & 0o7777),
                mount_point: m.mount_point,
            }
        })
        .collect()
}

/// `2M`, `1024M`, `1G`, `2048k`, `2048kB` → KiB.
pub fn parse_size_kb(text: &str) -> Option<u64> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let (digits, unit) = match lower.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => lower.split_at(at),
        None => (lower.as_str(), "k"),
    };
    let number: u64 = digits.parse().ok()?;
    let factor = match unit {
        "k" | "kb" | "kib" => 1,
        "m" | "mb" | "mib" => 1024,
        "g" | "gb" | "gib" => 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(factor).filter(|&kb| kb > 0)
}

/// `2048` → `2M`, `1048576` → `1G`.
pub fn show_size_kb(kb: u64) -> String {
    if kb.is_multiple_of(1024 * 1024) {
        format!("{}G", kb / (1024 * 1024))
    } else if kb.is_multiple_of(1024) {
        format!("{}M", kb / 1024)
    } else {
        format!("{kb}k")
    }
}

/// The locked-memory limit (`ulimit -l`) of this process, in bytes;
/// `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Memlock {
    /// The soft limit.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

impl From<MemlockLimit> for Memlock {
    fn from(limit: MemlockLimit) -> Self {
        Memlock {
            soft: limit.soft,
            hard: limit.hard,
        }
    }
}

/// Reads `Max locked memory` from `/proc/self/limits`.
pub fn memlock(roots: &Roots) -> Option<Memlock> {
    memlock_limit(&roots.proc).map(Memlock::from)
}

/// Parses the `Max locked memory` line of a limits file.
pub fn parse_memlock(text: &str) -> Option<Memlock> {
    parse_memlock_limit(text).map(Memlock::from)
}

/// A kernel command-line parameter that matters to isonvme.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KernelParam {
    /// Its name.
    pub name: String,
    /// Its value, if it has one.
    pub value: Option<String>,
}

impl std::fmt::Display for KernelParam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The parameters reported by `status`, in command-line order.
const INTERESTING: &[&str] = &[
    "intel_iommu",
    "amd_iommu",
    "iommu",
    "iommu.passthrough",
    "iommu.strict",
    "isolcpus",
    "nohz_full",
    "irqaffinity",
    "rcu_nocbs",
    "managed_irq",
    "default_hugepagesz",
    "hugepagesz",
    "hugepages",
    "vfio-pci.ids",
    "vfio.enable_unsafe_noiommu_mode",
];

/// The interesting parameters of a kernel command line. Parameters after
/// a bare `--` belong to init and are ignored.
pub fn parse_cmdline(cmdline: &str) -> Vec<KernelParam> {
    cmdline
        .split_whitespace()
        .take_while(|word| *word != "--")
        .filter_map(|word| {
            let (name, value) = match word.split_once('=') {
                Some((name, value)) => (name, Some(value.trim_matches('"').to_owned())),
                None => (word, None),
            };
            INTERESTING.contains(&name).then(|| KernelParam {
                name: name.to_owned(),
                value,
            })
        })
        .collect()
}

/// The host's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostState {
    /// The IOMMU.
    pub iommu: IommuState,
    /// Whether the vfio-pci driver is loaded.
    pub vfio_pci_loaded: bool,
    /// Hugepage pools per size.
    pub hugepages: Vec<HugepagePool>,
    /// The default hugepage size in KiB.
    pub default_hugepage_kb: Option<u64>,
    /// Mounted hugetlbfs instances.
    pub hugetlbfs: Vec<HugetlbfsMount>,
    /// This process's locked-memory limit.
    pub memlock: Option<Memlock>,
    /// The kernel parameters that matter (IOMMU, isolation, hugepages).
    pub kernel_params: Vec<KernelParam>,
    /// `/sys/devices/system/cpu/isolated`: CPUs isolated from the
    /// scheduler (`isolcpus=`).
    pub isolated: Option<String>,
    /// `/sys/devices/system/cpu/nohz_full`.
    pub nohz_full: Option<String>,
    /// The NUMA nodes.
    pub numa_nodes: Vec<u32>,
}

/// Reads the host's state.
pub fn host_state(roots: &Roots) -> HostState {
    let cpu_file = |name: &str| {
        read_trimmed(&roots.sys.join("devices/system/cpu").join(name))
            .ok()
            .filter(|t| !t.is_empty() && t != "(null)")
    };
    HostState {
        iommu: iommu(roots),
        vfio_pci_loaded: roots.pci_driver(crate::pci::VFIO_PCI).exists(),
        hugepages: hugepage_pools(roots),
        default_hugepage_kb: default_hugepage_kb(roots),
        hugetlbfs: hugetlbfs_mounts(roots),
        memlock: memlock(roots),
        kernel_params: std::fs::read_to_string(roots.proc.join("cmdline"))
            .map(|t| parse_cmdline(&t))
            .unwrap_or_default(),
        isolated: cpu_file("isolated"),
        nohz_full: cpu_file("nohz_full"),
        numa_nodes: numa_nodes(roots),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_show() {
        assert_eq!(parse_size_kb("2M"), Some(2048));
        assert_eq!(parse_size_kb("2m"), Some(2048));
        assert_eq!(parse_size_kb("1024M"), Some(1 << 20));
        assert_eq!(parse_size_kb("1G"), Some(1 << 20));
        assert_eq!(parse_size_kb("2048kB"), Some(2048));
        assert_eq!(parse_size_kb("2048"), Some(2048));
        assert_eq!(parse_size_kb("2T"), None);
        assert_eq!(parse_size_kb("0M"), None);
        assert_eq!(parse_size_kb("M"), None);
        assert_eq!(show_size_kb(2048), "2M");
        assert_eq!(show_size_kb(1 << 20), "1G");
        assert_eq!(show_size_kb(64), "64k");
        assert_eq!(parse_pool_dir("hugepages-1048576kB"), Some(1 << 20));
        assert_eq!(parse_pool_dir("hugepages-x"), None);
    }

    #[test]
    fn memlock_is_parsed() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max locked memory         8388608              unlimited            bytes\n";
        assert_eq!(
            parse_memlock(text),
            Some(Memlock {
                soft: Some(8 << 20),
                hard: None
            })
        );
        assert_eq!(parse_memlock("nothing"), None);
        assert_eq!(show_limit(Some(8 << 20)), "8192 KiB");
        assert_eq!(show_limit(None), "unlimited");
    }

    #[test]
    fn cmdline_keeps_what_matters() {
        let params = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz root=UUID=x ro intel_iommu=on iommu=pt \
             isolcpus=io_queue,managed_irq,domain,2-7 nohz_full=2-7 irqaffinity=0-1 \
             hugepagesz=1G hugepages=4 quiet -- isolcpus=9",
        );
        let shown: Vec<String> = params.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "intel_iommu=on",
                "iommu=pt",
                "isolcpus=io_queue,managed_irq,domain,2-7",
                "nohz_full=2-7",
                "irqaffinity=0-1",
                "hugepagesz=1G",
                "hugepages=4"
            ]
        );
    }
}
