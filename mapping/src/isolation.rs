//! Where the isolated CPU set comes from.
//!
//! The set is taken, in order of preference, from an explicit user choice,
//! from `isolcpus=` or `nohz_full=` on the kernel command line, or from the
//! kernel's own report in sysfs. The command line comes first because it is
//! the only place that tells which isolation flags (`managed_irq`,
//! `io_queue`, …) are in force; sysfs `isolated` only shows the scheduler
//! `domain` isolation.

use std::fmt;

use serde::Serialize;

use crate::sysfs::{DiscoveryError, SysfsRoot};
use crate::{CpuListError, CpuSet, Topology};

/// A flag of `isolcpus=` (see `kernel/sched/isolation.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IsolcpusFlag {
    /// `domain`: CPUs are removed from scheduler domains (the default when
    /// no flag is given).
    Domain,
    /// `nohz`: CPUs run in adaptive-tick mode, like `nohz_full=`.
    Nohz,
    /// `managed_irq`: managed interrupts avoid the CPUs where possible.
    ManagedIrq,
    /// `io_queue`: block multiqueue does not map hardware queues to the
    /// CPUs.
    IoQueue,
}

impl IsolcpusFlag {
    /// Every flag, in the order the kernel checks them.
    pub const ALL: [IsolcpusFlag; 4] = [
        IsolcpusFlag::Nohz,
        IsolcpusFlag::Domain,
        IsolcpusFlag::ManagedIrq,
        IsolcpusFlag::IoQueue,
    ];

    /// The kernel spelling, e.g. `managed_irq`.
    pub fn kernel_name(self) -> &'static str {
        match self {
            IsolcpusFlag::Domain => "domain",
            IsolcpusFlag::Nohz => "nohz",
            IsolcpusFlag::ManagedIrq => "managed_irq",
            IsolcpusFlag::IoQueue => "io_queue",
        }
    }

    /// The flag spelled `name` on the command line, if any. The kernel
    /// compares case-sensitively.
    pub fn from_kernel_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|flag| flag.kernel_name() == name)
    }
}

impl fmt::Display for IsolcpusFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kernel_name())
    }
}

/// Where an isolated CPU set came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IsolationSource {
    /// Given explicitly by the user.
    Explicit,
    /// `isolcpus=` on the kernel command line, with its flags (`domain`
    /// alone when none was written, as the kernel assumes).
    Isolcpus {
        /// The flags, each once, in the order first written.
        flags: Vec<IsolcpusFlag>,
    },
    /// `nohz_full=` on the kernel command line, or the sysfs `nohz_full`
    /// file.
    NohzFull,
    /// The sysfs `isolated` file.
    SysfsIsolated,
    /// No isolation is configured.
    None,
}

impl fmt::Display for IsolationSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IsolationSource::Explicit => f.write_str("the explicitly given CPU set"),
            IsolationSource::Isolcpus { flags } => {
                f.write_str("isolcpus=")?;
                for (i, flag) in flags.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{flag}")?;
                }
                f.write_str(" on the kernel command line")
            }
            IsolationSource::NohzFull => f.write_str("nohz_full= (adaptive-tick CPUs)"),
            IsolationSource::SysfsIsolated => {
                f.write_str("the kernel's isolated CPU list (/sys/devices/system/cpu/isolated)")
            }
            IsolationSource::None => f.write_str("this host has no CPU isolation configured"),
        }
    }
}

/// The isolated CPUs and where they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Isolation {
    /// The isolated CPUs (possibly empty).
    pub isolated: CpuSet,
    /// Where they came from.
    pub source: IsolationSource,
}

/// Why the isolated CPU set could not be determined or was refused.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// `isolcpus=` names a flag the kernel does not know.
    #[error("isolcpus={value}: unknown flag `{flag}`: the flags are domain, nohz, managed_irq and io_queue, each followed by a comma, then the CPU list (e.g. isolcpus=managed_irq,io_queue,2-7)")]
    UnknownFlag {
        /// The unknown flag.
        flag: String,
        /// The whole `isolcpus=` value.
        value: String,
    },
    /// `isolcpus=` ends with a flag instead of a CPU list.
    #[error("isolcpus={value} has no CPU list after its flags: end it with the CPUs to isolate (e.g. isolcpus={value},2-7)")]
    MissingCpuList {
        /// The whole `isolcpus=` value.
        value: String,
    },
    /// The CPU list of a command-line parameter is malformed.
    #[error("{param}={value}: {source}")]
    BadCpuList {
        /// `isolcpus` or `nohz_full`.
        param: &'static str,
        /// The whole value.
        value: String,
        /// What is wrong with the list.
        #[source]
        source: CpuListError,
    },
    /// A command-line parameter names CPUs the machine cannot have; the
    /// kernel then ignores the whole parameter.
    #[error("{param}={value} names CPUs {cpus}, but this machine only has CPU numbers below {nr_cpu_ids}: the kernel ignores the whole parameter (\"incorrect CPU range\"); fix the kernel command line or give the isolated CPUs explicitly")]
    BeyondNrCpuIds {
        /// `isolcpus` or `nohz_full`.
        param: &'static str,
        /// The whole value.
        value: String,
        /// The CPUs at or above `nr_cpu_ids`.
        cpus: CpuSet,
        /// The number of CPU ids of the machine.
        nr_cpu_ids: usize,
    },
    /// An explicit set names CPUs that are not possible.
    #[error("cannot isolate CPUs {cpus}: they are not possible CPUs on this machine (possible CPUs: {possible}); choose isolated CPUs among the possible ones")]
    NotPossible {
        /// The CPUs that are not possible.
        cpus: CpuSet,
        /// The possible CPUs.
        possible: CpuSet,
    },
    /// An explicit set leaves no online CPU for housekeeping.
    #[error("isolating CPUs {isolated} leaves no online housekeeping CPU: keep at least one online CPU out of the isolated set")]
    NoHousekeeping {
        /// The requested isolated set.
        isolated: CpuSet,
    },
    /// The command line or a sysfs file could not be read.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
}

/// Parses the value of `isolcpus=`: a leading list of flags, each followed
/// by a comma, then a cpulist in which `N` is CPU `nr_cpu_ids - 1`.
///
/// Without any flag the kernel assumes `domain`. Unlike the kernel, which
/// skips an unknown flag with a log message, an unknown flag is an error
/// here: it is almost always a typo that silently changes the isolation.
/// CPUs at or above `nr_cpu_ids` are an error because the kernel then
/// rejects the whole parameter. An empty CPU list yields an empty set
/// (the kernel then isolates nothing).
pub fn parse_isolcpus(
    value: &str,
    nr_cpu_ids: usize,
) -> Result<(Vec<IsolcpusFlag>, CpuSet), IsolationError> {
    let mut flags = Vec::new();
    let mut rest = value;
    // As in the kernel, a flag starts with a letter and must be followed
    // by a comma; the rest is the CPU list.
    while rest.starts_with(|c: char| c.is_ascii_alphabetic()) {
        let Some((word, after)) = rest.split_once(',') else {
            break;
        };
        // `N` (the last CPU) also starts with a letter but opens the list.
        if word == "N" || word.starts_with("N-") || word.starts_with("N:") {
            break;
        }
        let flag =
            IsolcpusFlag::from_kernel_name(word).ok_or_else(|| IsolationError::UnknownFlag {
                flag: word.to_string(),
                value: value.to_string(),
            })?;
        if !flags.contains(&flag) {
            flags.push(flag);
        }
        rest = after;
    }
    if flags.is_empty() {
        flags.push(IsolcpusFlag::Domain);
    }
    let cpus = parse_cpus("isolcpus", value, rest, nr_cpu_ids).map_err(|err| {
        // `isolcpus=managed_irq` (flag without comma and list) reads as a
        // malformed list; say what is really missing.
        if IsolcpusFlag::from_kernel_name(rest.trim()).is_some() {
            IsolationError::MissingCpuList {
                value: value.to_string(),
            }
        } else {
            err
        }
    })?;
    Ok((flags, cpus))
}

/// Parses a command-line CPU list as the kernel's `cpulist_parse` does:
/// `N` is the last CPU id and CPUs at or above `nr_cpu_ids` are refused.
fn parse_cpus(
    param: &'static str,
    value: &str,
    list: &str,
    nr_cpu_ids: usize,
) -> Result<CpuSet, IsolationError> {
    let cpus = CpuSet::parse_list(list, Some(nr_cpu_ids)).map_err(|source| {
        IsolationError::BadCpuList {
            param,
            value: value.to_string(),
            source,
        }
    })?;
    let beyond = cpus.difference(&CpuSet::range(0, nr_cpu_ids));
    if !beyond.is_empty() {
        return Err(IsolationError::BeyondNrCpuIds {
            param,
            value: value.to_string(),
            cpus: beyond,
            nr_cpu_ids,
        });
    }
    Ok(cpus)
}

/// Finds the isolated CPUs on a kernel command line.
///
/// `isolcpus=` wins over `nohz_full=`; given several times, their CPU
/// lists and flags are united. A parameter with an empty CPU list is
/// ignored, as the kernel ignores it. Parameters after a bare `--` belong
/// to init and are not looked at. `None` when neither parameter isolates a
/// CPU.
pub fn from_cmdline(cmdline: &str, nr_cpu_ids: usize) -> Result<Option<Isolation>, IsolationError> {
    let mut isolcpus: Option<(Vec<IsolcpusFlag>, CpuSet)> = None;
    let mut nohz_full: Option<CpuSet> = None;
    for (param, value) in kernel_params(cmdline) {
        // `isolcpus` without `=` does not match the kernel's `isolcpus=`.
        let Some(value) = value else { continue };
        // The kernel matches `__setup` names treating `-` and `_` alike.
        let name = param.replace('-', "_");
        if name == "isolcpus" {
            let (flags, cpus) = parse_isolcpus(&value, nr_cpu_ids)?;
            if cpus.is_empty() {
                continue;
            }
            let (all_flags, all_cpus) = isolcpus.get_or_insert_with(Default::default);
            for flag in flags {
                if !all_flags.contains(&flag) {
                    all_flags.push(flag);
                }
            }
            all_cpus.union_with(&cpus);
        } else if name == "nohz_full" {
            let cpus = parse_cpus("nohz_full", &value, &value, nr_cpu_ids)?;
            if !cpus.is_empty() {
                nohz_full.get_or_insert_with(CpuSet::new).union_with(&cpus);
            }
        }
    }
    Ok(match (isolcpus, nohz_full) {
        (Some((flags, isolated)), _) => Some(Isolation {
            isolated,
            source: IsolationSource::Isolcpus { flags },
        }),
        (None, Some(isolated)) => Some(Isolation {
            isolated,
            source: IsolationSource::NohzFull,
        }),
        (None, None) => None,
    })
}

/// The kernel's `isspace` for command-line splitting.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r')
}

/// Splits a command line into `(name, value)` pairs as the kernel's
/// `parse_args`/`next_arg` do: whitespace separates parameters except
/// inside double quotes, the quotes around a value or a whole parameter
/// are dropped (they cannot be escaped), and a bare `--` ends the kernel's
/// part of the line.
fn kernel_params(cmdline: &str) -> Vec<(String, Option<String>)> {
    let mut params = Vec::new();
    let mut rest = cmdline.trim_start_matches(is_space);
    while !rest.is_empty() {
        let quoted = rest.starts_with('"');
        let args = if quoted { &rest[1..] } else { rest };
        let mut in_quote = quoted;
        let mut end = args.len();
        let mut equals = None;
        for (i, c) in args.char_indices() {
            if is_space(c) && !in_quote {
                end = i;
                break;
            }
            // The kernel ignores an `=` in first position (`equals == 0`
            // means "none yet").
            if equals.is_none() && c == '=' && i > 0 {
                equals = Some(i);
            }
            if c == '"' {
                in_quote = !in_quote;
            }
        }
        let mut token = &args[..end];
        let value_quoted = equals.is_some_and(|e| token[e + 1..].starts_with('"'));
        // One closing quote is dropped if the value or the whole parameter
        // was opened by a quote, but never the value's opening quote.
        let keep = equals.map_or(0, |e| if value_quoted { e + 2 } else { 0 });
        if (quoted || value_quoted) && token.len() > keep && token.ends_with('"') {
            token = &token[..token.len() - 1];
        }
        let (param, value) = match equals {
            Some(e) => {
                let value = &token[e + 1..];
                let value = if value_quoted { &value[1..] } else { value };
                (&token[..e], Some(value))
            }
            None => (token, None),
        };
        if value.is_none() && param == "--" {
            break;
        }
        params.push((param.to_string(), value.map(str::to_string)));
        rest = args[end..].trim_start_matches(is_space);
    }
    params
}

/// Finds the isolated CPUs of the machine at `root`: the kernel command
/// line first (see [`from_cmdline`]), then the sysfs `isolated` file, then
/// the sysfs `nohz_full` file; no isolation when all are empty.
///
/// The set is reported as configured (minus CPUs that are not possible:
/// they can never run); the planner applies the kernel's rule that puts the
/// boot CPU back into housekeeping when nothing present would remain.
pub fn detect(root: &SysfsRoot, topology: &Topology) -> Result<Isolation, IsolationError> {
    let possible = topology.possible();
    let cmdline = root.cmdline()?;
    if let Some(mut isolation) = from_cmdline(&cmdline, topology.nr_cpu_ids())? {
        isolation.isolated.intersect_with(possible);
        return Ok(isolation);
    }
    let sysfs_sources = [
        (root.isolated_file()?, IsolationSource::SysfsIsolated),
        (root.nohz_full_file()?, IsolationSource::NohzFull),
    ];
    for (cpus, source) in sysfs_sources {
        if let Some(mut isolated) = cpus.filter(|cpus| !cpus.is_empty()) {
            isolated.intersect_with(possible);
            return Ok(Isolation { isolated, source });
        }
    }
    Ok(Isolation {
        isolated: CpuSet::new(),
        source: IsolationSource::None,
    })
}

/// Checks a user-given isolated set against the machine: every CPU must be
/// possible. The kernel's boot-CPU rule applies as in the planner (when no
/// present CPU would be left for housekeeping, the boot CPU, the lowest
/// online one, goes back into housekeeping); after it, at least one online
/// CPU must be left for housekeeping work.
pub fn explicit(isolated: CpuSet, topology: &Topology) -> Result<Isolation, IsolationError> {
    let impossible = isolated.difference(topology.possible());
    if !impossible.is_empty() {
        return Err(IsolationError::NotPossible {
            cpus: impossible,
            possible: topology.possible().clone(),
        });
    }
    let (isolated, _) = crate::plan::housekeeping_split(topology, &isolated);
    if topology.online().is_subset(&isolated) {
        return Err(IsolationError::NoHousekeeping { isolated });
    }
    Ok(Isolation {
        isolated,
        source: IsolationSource::Explicit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sysfs::FakeSysfs;
    use std::fs;

    use IsolcpusFlag::{Domain, IoQueue, ManagedIrq, Nohz};

    fn set(list: &str) -> CpuSet {
        list.parse().unwrap()
    }

    fn params(cmdline: &str) -> Vec<(String, Option<String>)> {
        kernel_params(cmdline)
    }

    #[test]
    fn isolcpus_flags_are_parsed() {
        let (flags, cpus) = parse_isolcpus("managed_irq,io_queue,2-7", 8).unwrap();
        assert_eq!(flags, vec![ManagedIrq, IoQueue]);
        assert_eq!(cpus, set("2-7"));
        let (flags, _) = parse_isolcpus("nohz,domain,nohz,1", 8).unwrap();
        assert_eq!(flags, vec![Nohz, Domain]);
    }

    #[test]
    fn isolcpus_without_flags_means_domain() {
        let (flags, cpus) = parse_isolcpus("1-3,5", 8).unwrap();
        assert_eq!(flags, vec![Domain]);
        assert_eq!(cpus, set("1-3,5"));
        let (flags, cpus) = parse_isolcpus("", 8).unwrap();
        assert_eq!(flags, vec![Domain]);
        assert!(cpus.is_empty());
    }

    #[test]
    fn isolcpus_unknown_flag_is_named() {
        let err = parse_isolcpus("managed_irq,io_queues,2-7", 8).unwrap_err();
        assert!(matches!(&err, IsolationError::UnknownFlag { flag, .. } if flag == "io_queues"));
        assert!(err.to_string().contains("`io_queues`"), "{err}");
        assert!(matches!(
            parse_isolcpus("Domain,1", 8),
            Err(IsolationError::UnknownFlag { .. })
        ));
        let err = parse_isolcpus("managed_irq", 8).unwrap_err();
        assert!(
            matches!(err, IsolationError::MissingCpuList { .. }),
            "{err:?}"
        );
        assert!(matches!(
            parse_isolcpus("2-3,x", 8),
            Err(IsolationError::BadCpuList {
                param: "isolcpus",
                ..
            })
        ));
    }

    #[test]
    fn isolcpus_last_cpu_and_range_limit() {
        let (flags, cpus) = parse_isolcpus("io_queue,4-N", 8).unwrap();
        assert_eq!(flags, vec![IoQueue]);
        assert_eq!(cpus, set("4-7"));
        assert_eq!(parse_isolcpus("N", 8).unwrap().1, set("7"));
        assert_eq!(parse_isolcpus("N,0", 8).unwrap().1, set("0,7"));
        let err = parse_isolcpus("2-9", 8).unwrap_err();
        assert!(
            matches!(&err, IsolationError::BeyondNrCpuIds { cpus, nr_cpu_ids: 8, .. } if *cpus == set("8-9")),
            "{err:?}"
        );
    }

    #[test]
    fn cmdline_splitting_follows_the_kernel() {
        assert_eq!(
            params("  a=1 \"b=two words\" c=\"x y\"\tflag --  isolcpus=3"),
            vec![
                ("a".to_string(), Some("1".to_string())),
                ("b".to_string(), Some("two words".to_string())),
                ("c".to_string(), Some("x y".to_string())),
                ("flag".to_string(), None),
            ]
        );
        assert_eq!(params("a=\""), vec![("a".to_string(), Some(String::new()))]);
        assert_eq!(params("\""), vec![(String::new(), None)]);
        assert!(params("").is_empty());
        // `--x` or `--=1` are ordinary parameters, not the separator.
        assert_eq!(params("--=1 b").len(), 2);
    }

    #[test]
    fn cmdline_isolcpus_with_quotes_and_repeats() {
        let iso = from_cmdline(
            "BOOT_IMAGE=/vmlinuz isolcpus=\"managed_irq,2-3\" quiet isolcpus=io_queue,6-N",
            8,
        )
        .unwrap()
        .unwrap();
        assert_eq!(iso.isolated, set("2-3,6-7"));
        assert_eq!(
            iso.source,
            IsolationSource::Isolcpus {
                flags: vec![ManagedIrq, IoQueue]
            }
        );
        assert_eq!(
            iso.source.to_string(),
            "isolcpus=managed_irq,io_queue on the kernel command line"
        );
    }

    #[test]
    fn cmdline_stops_at_double_dash() {
        assert_eq!(
            from_cmdline("root=/dev/sda -- isolcpus=2-3", 8).unwrap(),
            None
        );
        // A malformed value after `--` belongs to init and is no error.
        assert_eq!(from_cmdline("-- isolcpus=bogus,1", 8).unwrap(), None);
    }

    #[test]
    fn isolcpus_wins_over_nohz_full_which_is_the_fallback() {
        let iso = from_cmdline("nohz_full=4-7 isolcpus=2-3", 8)
            .unwrap()
            .unwrap();
        assert_eq!(iso.isolated, set("2-3"));
        assert_eq!(
            iso.source,
            IsolationSource::Isolcpus {
                flags: vec![Domain]
            }
        );
        // An empty isolcpus= is ignored by the kernel; nohz_full= remains.
        let iso = from_cmdline("isolcpus=domain, nohz-full=4-7", 8)
            .unwrap()
            .unwrap();
        assert_eq!(iso.isolated, set("4-7"));
        assert_eq!(iso.source, IsolationSource::NohzFull);
        assert_eq!(from_cmdline("quiet isolcpus", 8).unwrap(), None);
        assert!(matches!(
            from_cmdline("nohz_full=1-x", 8),
            Err(IsolationError::BadCpuList {
                param: "nohz_full",
                ..
            })
        ));
    }

    fn machine() -> FakeSysfs {
        FakeSysfs::new()
            .cpus("0-7", "0-7", "0-7")
            .node(0, "0-3")
            .node(1, "4-7")
            .siblings("0,4")
            .siblings("1,5")
            .siblings("2,6")
            .siblings("3,7")
    }

    #[test]
    fn detect_prefers_the_cmdline() {
        let dir = tempfile::tempdir().unwrap();
        let root = machine()
            .cmdline("ro isolcpus=managed_irq,io_queue,4-7")
            .isolated("1")
            .write(dir.path())
            .unwrap();
        let topo = root.topology().unwrap();
        let iso = detect(&root, &topo).unwrap();
        assert_eq!(iso.isolated, set("4-7"));
        assert_eq!(
            iso.source,
            IsolationSource::Isolcpus {
                flags: vec![ManagedIrq, IoQueue]
            }
        );
    }

    #[test]
    fn the_plan_keeps_the_boot_cpu_when_everything_is_isolated() {
        let dir = tempfile::tempdir().unwrap();
        let root = machine().cmdline("isolcpus=0-7").write(dir.path()).unwrap();
        let topo = root.topology().unwrap();
        let isolation = detect(&root, &topo).unwrap();
        assert_eq!(isolation.isolated, set("0-7"));
        let plan = crate::plan(
            &topo,
            &isolation.isolated,
            &crate::PlanParams::nvme(4),
            crate::Policy::IoQueue,
        )
        .unwrap();
        assert_eq!(plan.isolated, set("1-7"));
        assert_eq!(plan.housekeeping, set("0"));
    }

    #[test]
    fn detect_falls_back_to_sysfs_isolated_then_nohz_full() {
        let dir = tempfile::tempdir().unwrap();
        let root = machine()
            .cmdline("ro quiet")
            .isolated("2-3")
            .nohz_full("4-7")
            .write(dir.path())
            .unwrap();
        let topo = root.topology().unwrap();
        let iso = detect(&root, &topo).unwrap();
        assert_eq!(iso.isolated, set("2-3"));
        assert_eq!(iso.source, IsolationSource::SysfsIsolated);

        fs::write(root.cpu_dir().join("isolated"), "\n").unwrap();
        let iso = detect(&root, &topo).unwrap();
        assert_eq!(iso.isolated, set("4-7"));
        assert_eq!(iso.source, IsolationSource::NohzFull);

        fs::write(root.cpu_dir().join("nohz_full"), "(null)\n").unwrap();
        let iso = detect(&root, &topo).unwrap();
        assert!(iso.isolated.is_empty());
        assert_eq!(iso.source, IsolationSource::None);
    }

    #[test]
    fn detect_reports_unreadable_cmdline_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = machine().isolated("2-x").write(dir.path()).unwrap();
        let topo = root.topology().unwrap();
        let err = detect(&root, &topo).unwrap_err();
        assert!(matches!(
            err,
            IsolationError::Discovery(DiscoveryError::BadList { .. })
        ));
        fs::remove_file(root.cmdline_path()).unwrap();
        let err = detect(&root, &topo).unwrap_err();
        assert!(err.to_string().contains("proc/cmdline"), "{err}");
    }

    #[test]
    fn explicit_refuses_impossible_cpus() {
        let topo = Topology::flat(8).unwrap();
        let err = explicit(set("6-9"), &topo).unwrap_err();
        assert!(
            matches!(&err, IsolationError::NotPossible { cpus, .. } if *cpus == set("8-9")),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("8-9") && message.contains("0-7"),
            "{message}"
        );
    }

    #[test]
    fn explicit_refuses_leaving_no_online_housekeeping_cpu() {
        let topo = Topology::flat(8).unwrap().with_online(set("2-7")).unwrap();
        let err = explicit(set("2-7"), &topo).unwrap_err();
        assert_eq!(
            err.to_string(),
            "isolating CPUs 2-7 leaves no online housekeeping CPU: keep at least one online CPU out of the isolated set"
        );
        let iso = explicit(set("3-7"), &topo).unwrap();
        assert_eq!(iso.source, IsolationSource::Explicit);
        assert_eq!(iso.isolated, set("3-7"));
    }

    proptest::proptest! {
        #[test]
        fn cmdline_parsing_never_panics(cmdline in "[ \t\"=,:/a-zN_0-9-]{0,48}|\\PC{0,48}") {
            let _ = from_cmdline(&cmdline, 8);
            let _ = parse_isolcpus(&cmdline, 8);
            let _ = from_cmdline(&cmdline, 0);
        }
    }

    #[test]
    fn sources_display_and_serialize() {
        assert_eq!(ManagedIrq.to_string(), "managed_irq");
        assert_eq!(IoQueue.to_string(), "io_queue");
        let iso = Isolation {
            isolated: set("2-3"),
            source: IsolationSource::Isolcpus {
                flags: vec![IoQueue],
            },
        };
        assert_eq!(
            serde_json::to_string(&iso).unwrap(),
            r#"{"isolated":"2-3","source":{"kind":"isolcpus","flags":["io_queue"]}}"#
        );
        assert_eq!(
            serde_json::to_string(&IsolationSource::NohzFull).unwrap(),
            r#"{"kind":"nohz_full"}"#
        );
        for source in [
            IsolationSource::Explicit,
            IsolationSource::NohzFull,
            IsolationSource::SysfsIsolated,
            IsolationSource::None,
        ] {
            assert!(!source.to_string().is_empty());
        }
    }
}
