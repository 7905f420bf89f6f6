//! Topology discovery from sysfs and procfs.
//!
//! Every path is taken below a configurable root so that tests, and users
//! debugging another machine, can point the discovery at a copied or fake
//! tree instead of the live `/sys` and `/proc`. [`FakeSysfs`] builds such
//! trees.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::{CpuListError, CpuSet, Topology, TopologyError, TopologySpec};

/// The hint appended to errors about files under `/sys`.
const SYSFS_HINT: &str = "is sysfs mounted? (pass --sysfs-root for a copied tree)";
/// The hint appended to errors about files under `/proc`.
const PROCFS_HINT: &str = "is procfs mounted? (pass --sysfs-root for a copied tree)";

/// Why the machine's topology or isolation settings could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A required file or directory is missing or unreadable.
    #[error("cannot read {}: {source} — {hint}", path.display())]
    Read {
        /// The full path that failed.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
        /// What to check to fix it.
        hint: &'static str,
    },
    /// A file that should hold a cpulist holds something else.
    #[error("{} does not hold a valid CPU list: {source}", path.display())]
    BadList {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        #[source]
        source: CpuListError,
    },
    /// The files read are individually valid but inconsistent together.
    #[error("the CPU topology read below {} is inconsistent: {source} (if CPUs were hot-plugged during discovery, retry)", root.display())]
    Topology {
        /// The root the files were read below.
        root: PathBuf,
        /// The rule the topology breaks.
        #[source]
        source: TopologyError,
    },
}

/// A root directory below which `sys/devices/system/...` and
/// `proc/cmdline` are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRoot {
    root: PathBuf,
}

impl SysfsRoot {
    /// The running machine (root `/`).
    pub fn host() -> Self {
        Self::new("/")
    }

    /// A copied or fake tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/sys/devices/system/cpu`.
    pub fn cpu_dir(&self) -> PathBuf {
        self.root.join("sys/devices/system/cpu")
    }

    /// `<root>/sys/devices/system/node`.
    pub fn node_dir(&self) -> PathBuf {
        self.root.join("sys/devices/system/node")
    }

    /// `<root>/proc/cmdline`.
    pub fn cmdline_path(&self) -> PathBuf {
        self.root.join("proc/cmdline")
    }

    /// Reads the CPU topology: possible, present and online CPUs, NUMA
    /// nodes (CPU-less ones included), SMT sibling groups and clusters.
    pub fn topology(&self) -> Result<Topology, DiscoveryError> {
        let cpu_dir = self.cpu_dir();
        let possible = read_list(&cpu_dir.join("possible"))?;
        let present = read_list(&cpu_dir.join("present"))?;
        let online = read_list(&cpu_dir.join("online"))?;
        let nodes = self.nodes(&possible)?;

        let mut siblings = GroupCollector::default();
        let mut clusters = GroupCollector::default();
        let mut any_cluster_file = false;
        for cpu in possible.iter() {
            // An offline or absent CPU has no topology directory: the kernel
            // gives it empty masks, so it stays in no group.
            let topo_dir = cpu_dir.join(format!("cpu{cpu}/topology"));
            if let Some(list) = read_optional_list(&topo_dir.join("thread_siblings_list"))? {
                siblings.add(list, &possible);
            }
            if let Some(list) = read_optional_list(&topo_dir.join("cluster_cpus_list"))? {
                any_cluster_file = true;
                clusters.add(list, &possible);
            }
        }
        // Kernels before cluster masks have no cluster_cpus_list at all;
        // that differs from a CPU merely lacking one (cluster grouping off).
        let clusters = any_cluster_file.then_some(clusters.groups);

        Topology::new(TopologySpec {
            possible,
            present,
            online,
            nodes,
            siblings: siblings.groups,
            clusters,
        })
        .map_err(|source| DiscoveryError::Topology {
            root: self.root.clone(),
            source,
        })
    }

    /// The NUMA nodes; without a `node` directory (no NUMA support in the
    /// kernel) every possible CPU is on node 0.
    fn nodes(&self, possible: &CpuSet) -> Result<BTreeMap<usize, CpuSet>, DiscoveryError> {
        let node_dir = self.node_dir();
        let entries = match fs::read_dir(&node_dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Ok(BTreeMap::from([(0, possible.clone())]));
            }
            Err(source) => return Err(read_error(node_dir, source, SYSFS_HINT)),
        };
        let mut nodes = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|source| read_error(node_dir.clone(), source, SYSFS_HINT))?;
            let name = entry.file_name();
            // The directory also holds files such as `online` and
            // `has_cpu`; only `node<N>` entries are nodes.
            let Some(id) = name
                .to_str()
                .and_then(|name| name.strip_prefix("node"))
                .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<usize>().ok())
            else {
                continue;
            };
            let cpus = read_list(&entry.path().join("cpulist"))?;
            nodes.insert(id, cpus);
        }
        Ok(nodes)
    }

    /// The kernel command line (`/proc/cmdline`), without the trailing
    /// newline.
    pub fn cmdline(&self) -> Result<String, DiscoveryError> {
        let path = self.cmdline_path();
        let text = read_text(&path, PROCFS_HINT)?;
        Ok(text.trim_end_matches(['\n', '\r']).to_string())
    }

    /// The CPUs the kernel reports as isolated from scheduler domains
    /// (`/sys/devices/system/cpu/isolated`); `None` when the file does not
    /// exist.
    pub fn isolated_file(&self) -> Result<Option<CpuSet>, DiscoveryError> {
        read_optional_list(&self.cpu_dir().join("isolated"))
    }

    /// The adaptive-tick CPUs (`/sys/devices/system/cpu/nohz_full`); `None`
    /// when the file does not exist (kernel built without `NO_HZ_FULL`).
    /// Older kernels print `(null)` when `nohz_full=` is unset; that reads
    /// as the empty set.
    pub fn nohz_full_file(&self) -> Result<Option<CpuSet>, DiscoveryError> {
        let path = self.cpu_dir().join("nohz_full");
        let Some(text) = read_optional_text(&path)? else {
            return Ok(None);
        };
        if text.trim() == "(null)" {
            return Ok(Some(CpuSet::new()));
        }
        parse_file_list(&path, &text).map(Some)
    }
}

/// Deduplicated groups: every CPU of a core reports the same list, which
/// must be kept once.
#[derive(Default)]
struct GroupCollector {
    seen: HashSet<CpuSet>,
    groups: Vec<CpuSet>,
}

impl GroupCollector {
    fn add(&mut self, mut list: CpuSet, possible: &CpuSet) {
        list.intersect_with(possible);
        if !list.is_empty() && self.seen.insert(list.clone()) {
            self.groups.push(list);
        }
    }
}

fn read_error(path: PathBuf, source: io::Error, hint: &'static str) -> DiscoveryError {
    DiscoveryError::Read { path, source, hint }
}

/// Reads a file as text. Invalid UTF-8 is replaced rather than refused:
/// the content is then reported as malformed by the parser, which names
/// the offending token.
fn read_text(path: &Path, hint: &'static str) -> Result<String, DiscoveryError> {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .map_err(|source| read_error(path.to_path_buf(), source, hint))
}

/// Like [`read_text`], but a missing file (or missing parent directory) is
/// `None`.
fn read_optional_text(path: &Path) -> Result<Option<String>, DiscoveryError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(read_error(path.to_path_buf(), source, SYSFS_HINT)),
    }
}

fn parse_file_list(path: &Path, text: &str) -> Result<CpuSet, DiscoveryError> {
    // sysfs never prints `N`, so it is not accepted here.
    CpuSet::parse_list(text, None).map_err(|source| DiscoveryError::BadList {
        path: path.to_path_buf(),
        source,
    })
}

fn read_list(path: &Path) -> Result<CpuSet, DiscoveryError> {
    let text = read_text(path, SYSFS_HINT)?;
    parse_file_list(path, &text)
}

fn read_optional_list(path: &Path) -> Result<Option<CpuSet>, DiscoveryError> {
    read_optional_text(path)?
        .map(|text| parse_file_list(path, &text))
        .transpose()
}

/// Builds a fake sysfs/procfs tree for tests.
///
/// Public so that other crates' tests can reuse it; it is not meant for
/// production use. Lists use the kernel cpulist syntax. What it writes:
///
/// - `cpu/{possible,present,online}` from [`FakeSysfs::cpus`];
/// - a `cpu<N>` directory for every present CPU, with a `topology`
///   directory only for online CPUs (as the kernel removes it on offline).
///   There `thread_siblings_list` holds the CPU's [`FakeSysfs::siblings`]
///   group (or the CPU alone), and, once [`FakeSysfs::clusters`] was
///   called, `cluster_cpus_list` likewise;
/// - `node/node<N>/cpulist` for each [`FakeSysfs::node`]; without any node
///   there is no `node` directory (a kernel without NUMA);
/// - `cpu/isolated` (empty unless [`FakeSysfs::isolated`] is given),
///   `cpu/nohz_full` only when [`FakeSysfs::nohz_full`] is given, and
///   `proc/cmdline` (empty unless [`FakeSysfs::cmdline`] is given).
#[derive(Debug, Clone, Default)]
pub struct FakeSysfs {
    possible: String,
    present: String,
    online: String,
    nodes: BTreeMap<usize, String>,
    siblings: Vec<String>,
    clusters: Option<Vec<String>>,
    cmdline: String,
    isolated: String,
    nohz_full: Option<String>,
}

impl FakeSysfs {
    /// An empty description; call [`FakeSysfs::cpus`] at least.
    pub fn new() -> Self {
        Self::default()
    }

    /// The possible, present and online CPU lists.
    pub fn cpus(mut self, possible: &str, present: &str, online: &str) -> Self {
        self.possible = possible.to_string();
        self.present = present.to_string();
        self.online = online.to_string();
        self
    }

    /// A NUMA node and its CPUs (may be empty for a CPU-less node).
    pub fn node(mut self, id: usize, list: &str) -> Self {
        self.nodes.insert(id, list.to_string());
        self
    }

    /// One SMT sibling group, written for each online CPU it names.
    pub fn siblings(mut self, list: &str) -> Self {
        self.siblings.push(list.to_string());
        self
    }

    /// One cluster group; the first call turns `cluster_cpus_list` files on.
    pub fn clusters(mut self, list: &str) -> Self {
        self.clusters
            .get_or_insert_with(Vec::new)
            .push(list.to_string());
        self
    }

    /// The content of `proc/cmdline`.
    pub fn cmdline(mut self, cmdline: &str) -> Self {
        self.cmdline = cmdline.to_string();
        self
    }

    /// The content of `cpu/isolated`.
    pub fn isolated(mut self, list: &str) -> Self {
        self.isolated = list.to_string();
        self
    }

    /// The content of `cpu/nohz_full` (the file exists only if given).
    pub fn nohz_full(mut self, list: &str) -> Self {
        self.nohz_full = Some(list.to_string());
        self
    }

    /// Writes the tree below `dir` and returns the root to read it from.
    /// Fails with `InvalidInput` if a list given to the builder is malformed.
    pub fn write(&self, dir: &Path) -> io::Result<SysfsRoot> {
        let root = SysfsRoot::new(dir);
        let cpu_dir = root.cpu_dir();
        fs::create_dir_all(&cpu_dir)?;
        let line = |text: &str| format!("{text}\n");
        fs::write(cpu_dir.join("possible"), line(&self.possible))?;
        fs::write(cpu_dir.join("present"), line(&self.present))?;
        fs::write(cpu_dir.join("online"), line(&self.online))?;
        fs::write(cpu_dir.join("isolated"), line(&self.isolated))?;
        if let Some(nohz_full) = &self.nohz_full {
            fs::write(cpu_dir.join("nohz_full"), line(nohz_full))?;
        }

        let present = parse_for_builder(&self.present)?;
        let online = parse_for_builder(&self.online)?;
        let group_lists = |lists: &[String]| -> io::Result<Vec<(CpuSet, String)>> {
            lists
                .iter()
                .map(|list| Ok((parse_for_builder(list)?, list.clone())))
                .collect()
        };
        let siblings = group_lists(&self.siblings)?;
        let clusters = self.clusters.as_deref().map(group_lists).transpose()?;
        let group_of = |groups: &[(CpuSet, String)], cpu: usize| {
            groups
                .iter()
                .find(|(set, _)| set.contains(cpu))
                .map_or_else(|| cpu.to_string(), |(_, list)| list.clone())
        };
        for cpu in present.iter() {
            let dir = cpu_dir.join(format!("cpu{cpu}"));
            fs::create_dir_all(&dir)?;
            if !online.contains(cpu) {
                continue;
            }
            let topo = dir.join("topology");
            fs::create_dir_all(&topo)?;
            fs::write(
                topo.join("thread_siblings_list"),
                line(&group_of(&siblings, cpu)),
            )?;
            if let Some(clusters) = &clusters {
                fs::write(
                    topo.join("cluster_cpus_list"),
                    line(&group_of(clusters, cpu)),
                )?;
            }
        }

        if !self.nodes.is_empty() {
            let node_dir = root.node_dir();
            fs::create_dir_all(&node_dir)?;
            // Real node directories hold these non-node files too.
            fs::write(node_dir.join("possible"), "0\n")?;
            fs::write(node_dir.join("has_cpu"), "0\n")?;
            for (id, list) in &self.nodes {
                let dir = node_dir.join(format!("node{id}"));
                fs::create_dir_all(&dir)?;
                fs::write(dir.join("cpulist"), line(list))?;
            }
        }

        let proc_dir = dir.join("proc");
        fs::create_dir_all(&proc_dir)?;
        fs::write(proc_dir.join("cmdline"), line(&self.cmdline))?;
        Ok(root)
    }
}

fn parse_for_builder(list: &str) -> io::Result<CpuSet> {
    CpuSet::parse_list(list, None).map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &str) -> CpuSet {
        list.parse().unwrap()
    }

    /// Two populated nodes (0 and 2), a CPU-less node 3 and a gap at node
    /// 1; 8 CPUs in SMT pairs (n, n+4), clusters of two cores.
    fn two_node_smt2() -> FakeSysfs {
        FakeSysfs::new()
            .cpus("0-7", "0-7", "0-7")
            .node(0, "0-1,4-5")
            .node(2, "2-3,6-7")
            .node(3, "")
            .siblings("0,4")
            .siblings("1,5")
            .siblings("2,6")
            .siblings("3,7")
            .clusters("0-1,4-5")
            .clusters("2-3,6-7")
    }

    #[test]
    fn reads_two_node_smt2_machine_with_cpu_less_node_and_gap() {
        let dir = tempfile::tempdir().unwrap();
        let root = two_node_smt2().write(dir.path()).unwrap();
        let topo = root.topology().unwrap();
        assert_eq!(topo.possible(), &set("0-7"));
        assert_eq!(topo.online(), &set("0-7"));
        assert_eq!(topo.nr_node_ids(), 4);
        assert_eq!(
            topo.nodes().keys().copied().collect::<Vec<_>>(),
            vec![0, 2, 3]
        );
        assert!(topo.nodes()[&3].is_empty());
        assert_eq!(topo.node_of(6), Some(2));
        // Every CPU reports its pair; each pair is kept once.
        assert_eq!(topo.siblings().groups().len(), 4);
        assert_eq!(topo.siblings().of(5), &[1, 5]);
        let clusters = topo.clusters().unwrap();
        assert_eq!(clusters.groups().len(), 2);
        assert_eq!(clusters.of(7), &[2, 3, 6, 7]);
    }

    #[test]
    fn no_node_directory_puts_every_cpu_on_node_zero() {
        let dir = tempfile::tempdir().unwrap();
        let root = FakeSysfs::new()
            .cpus("0-3", "0-3", "0-3")
            .write(dir.path())
            .unwrap();
        assert!(!root.node_dir().exists());
        let topo = root.topology().unwrap();
        assert_eq!(topo.nodes().len(), 1);
        assert_eq!(topo.nodes()[&0], set("0-3"));
        // No cluster file anywhere: a kernel without cluster masks.
        assert!(topo.clusters().is_none());
        // Without SMT every CPU is its own sibling group.
        assert_eq!(topo.siblings().of(2), &[2]);
    }

    #[test]
    fn offline_cpu_without_topology_dir_is_in_no_group() {
        let dir = tempfile::tempdir().unwrap();
        // CPU 5 is offline, CPUs 6-7 possible but not present; the online
        // sibling of 5 reports itself alone, as the kernel does.
        let root = FakeSysfs::new()
            .cpus("0-7", "0-5", "0-4")
            .node(0, "0-7")
            .siblings("0,2")
            .siblings("1")
            .siblings("3")
            .siblings("4")
            .clusters("0-3")
            .clusters("4")
            .write(dir.path())
            .unwrap();
        assert!(!root.cpu_dir().join("cpu5/topology").exists());
        let topo = root.topology().unwrap();
        assert!(topo.siblings().of(5).is_empty());
        assert!(topo.siblings().of(6).is_empty());
        assert!(topo.clusters().unwrap().of(5).is_empty());
        assert_eq!(topo.siblings().of(2), &[0, 2]);
        assert_eq!(topo.online(), &set("0-4"));
        assert_eq!(topo.present(), &set("0-5"));
    }

    #[test]
    fn group_lists_are_intersected_with_possible_cpus() {
        let dir = tempfile::tempdir().unwrap();
        let root = FakeSysfs::new()
            .cpus("0-3", "0-3", "0-3")
            .siblings("0-1,8")
            .write(dir.path())
            .unwrap();
        let topo = root.topology().unwrap();
        assert_eq!(topo.siblings().of(1), &[0, 1]);
    }

    #[test]
    fn missing_online_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = two_node_smt2().write(dir.path()).unwrap();
        let online = root.cpu_dir().join("online");
        fs::remove_file(&online).unwrap();
        let err = root.topology().unwrap_err();
        assert!(matches!(&err, DiscoveryError::Read { path, .. } if *path == online));
        let message = err.to_string();
        assert!(
            message.contains(&format!("cannot read {}", online.display())),
            "{message}"
        );
        assert!(message.contains("is sysfs mounted?"), "{message}");
        assert!(message.contains("--sysfs-root"), "{message}");
    }

    #[test]
    fn missing_node_cpulist_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = two_node_smt2().write(dir.path()).unwrap();
        let cpulist = root.node_dir().join("node2/cpulist");
        fs::remove_file(&cpulist).unwrap();
        let err = root.topology().unwrap_err();
        assert!(matches!(&err, DiscoveryError::Read { path, .. } if *path == cpulist));
    }

    #[test]
    fn malformed_list_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = two_node_smt2().write(dir.path()).unwrap();
        let siblings = root.cpu_dir().join("cpu3/topology/thread_siblings_list");
        fs::write(&siblings, "3,x\n").unwrap();
        let err = root.topology().unwrap_err();
        match &err {
            DiscoveryError::BadList { path, source } => {
                assert_eq!(path, &siblings);
                assert!(matches!(source, CpuListError::Malformed { token, .. } if token == "x"));
            }
            other => panic!("expected BadList, got {other:?}"),
        }
        assert!(err.to_string().contains(&siblings.display().to_string()));
    }

    #[test]
    fn binary_garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let root = two_node_smt2().write(dir.path()).unwrap();
        fs::write(root.cpu_dir().join("possible"), [0xff, 0xfe, 0x00, b'\n']).unwrap();
        assert!(matches!(
            root.topology(),
            Err(DiscoveryError::BadList { .. })
        ));
        fs::write(root.cpu_dir().join("possible"), "0-99999999\n").unwrap();
        assert!(matches!(
            root.topology(),
            Err(DiscoveryError::BadList { .. })
        ));
    }

    #[test]
    fn inconsistent_files_are_a_topology_error() {
        let dir = tempfile::tempdir().unwrap();
        let root = two_node_smt2().write(dir.path()).unwrap();
        fs::write(root.cpu_dir().join("online"), "0-8\n").unwrap();
        let err = root.topology().unwrap_err();
        assert!(matches!(
            err,
            DiscoveryError::Topology {
                source: TopologyError::NotSubset { .. },
                ..
            }
        ));
    }

    #[test]
    fn cmdline_isolated_and_nohz_full_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = two_node_smt2()
            .cmdline("BOOT_IMAGE=/vmlinuz isolcpus=2-3")
            .isolated("2-3")
            .write(dir.path())
            .unwrap();
        assert_eq!(root.cmdline().unwrap(), "BOOT_IMAGE=/vmlinuz isolcpus=2-3");
        assert_eq!(root.isolated_file().unwrap(), Some(set("2-3")));
        assert_eq!(root.nohz_full_file().unwrap(), None);

        fs::write(root.cpu_dir().join("nohz_full"), "(null)\n").unwrap();
        assert_eq!(root.nohz_full_file().unwrap(), Some(CpuSet::new()));
        fs::write(root.cpu_dir().join("nohz_full"), "4-7\n").unwrap();
        assert_eq!(root.nohz_full_file().unwrap(), Some(set("4-7")));

        fs::remove_file(root.cpu_dir().join("isolated")).unwrap();
        assert_eq!(root.isolated_file().unwrap(), None);
        fs::remove_file(root.cmdline_path()).unwrap();
        let err = root.cmdline().unwrap_err();
        assert!(err.to_string().contains("is procfs mounted?"), "{err}");
    }

    #[test]
    fn builder_refuses_malformed_lists() {
        let dir = tempfile::tempdir().unwrap();
        let err = FakeSysfs::new()
            .cpus("0-3", "0-3", "0-x")
            .write(dir.path())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn host_root_is_slash() {
        assert_eq!(SysfsRoot::host().root(), Path::new("/"));
        assert_eq!(
            SysfsRoot::new("/x").cpu_dir(),
            PathBuf::from("/x/sys/devices/system/cpu")
        );
    }
}
