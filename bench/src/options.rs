//! Job options with fio's names and meanings.
//!
//! Every option a job may carry is in [`OPTIONS`]; anything else is an
//! error naming it (with the nearest known name), never silently ignored.
//! Values are checked when set, so a bad value names its option too.

use std::fmt;
use std::time::Duration;

use isonvme::runtime::{CompletionMode, InlineCpus};
use isonvme_mapping::CpuSet;

use crate::units::{self, SizeSpec};

/// What went wrong with an option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError(pub String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

/// fio's `rw=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rw {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Sequential mixed reads and writes (`rw`, `readwrite`).
    ReadWrite,
    /// Random mixed reads and writes.
    RandRw,
}

impl Rw {
    /// fio's name.
    pub fn name(self) -> &'static str {
        match self {
            Rw::Read => "read",
            Rw::Write => "write",
            Rw::RandRead => "randread",
            Rw::RandWrite => "randwrite",
            Rw::ReadWrite => "rw",
            Rw::RandRw => "randrw",
        }
    }

    /// Whether offsets are random.
    pub fn random(self) -> bool {
        matches!(self, Rw::RandRead | Rw::RandWrite | Rw::RandRw)
    }

    /// Whether the job reads.
    pub fn reads(self) -> bool {
        !matches!(self, Rw::Write | Rw::RandWrite)
    }

    /// Whether the job writes.
    pub fn writes(self) -> bool {
        !matches!(self, Rw::Read | Rw::RandRead)
    }

    /// The letter fio's progress line shows for a running job.
    pub fn status_char(self) -> char {
        match self {
            Rw::Read => 'R',
            Rw::Write => 'W',
            Rw::RandRead => 'r',
            Rw::RandWrite => 'w',
            Rw::ReadWrite => 'M',
            Rw::RandRw => 'm',
        }
    }
}

/// `ioengine=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// The isonvme driver (simulator or a VFIO PCI device).
    Isonvme,
    /// pread/pwrite on a file or block device.
    Psync,
    /// io_uring on a file or block device.
    IoUring,
}

impl EngineKind {
    /// fio's name.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Isonvme => "isonvme",
            EngineKind::Psync => "psync",
            EngineKind::IoUring => "io_uring",
        }
    }
}

/// `cpus_allowed_policy=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpusPolicy {
    /// Every job thread may run on every CPU of the set.
    Shared,
    /// Job thread `i` runs on the `i`-th CPU of the set (wrapping).
    Split,
}

/// `verify=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyKind {
    /// A CRC-32C over each block, with a header naming its offset.
    Crc32c,
}

/// fio's default `percentile_list`.
pub const DEFAULT_PERCENTILES: [f64; 17] = [
    1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95,
    99.99,
];

/// One job's options, resolved.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// `name=`.
    pub name: String,
    /// `rw=` / `readwrite=`.
    pub rw: Rw,
    /// `rwmixread=` (percent of mixed I/O that reads).
    pub rwmixread: u32,
    /// `bs=` / `blocksize=`.
    pub bs: u64,
    /// `iodepth=`.
    pub iodepth: u32,
    /// `numjobs=`.
    pub numjobs: u32,
    /// `cpus_allowed=`.
    pub cpus_allowed: Option<CpuSet>,
    /// `cpus_allowed_policy=`.
    pub cpus_allowed_policy: CpusPolicy,
    /// `runtime=` / `timeout=`.
    pub runtime: Option<Duration>,
    /// `time_based`.
    pub time_based: bool,
    /// `ramp_time=`.
    pub ramp_time: Duration,
    /// `size=`.
    pub size: Option<SizeSpec>,
    /// `offset=`.
    pub offset: SizeSpec,
    /// `filename=`.
    pub filename: Option<String>,
    /// `ioengine=`; `None` picks isonvme for `sim`/PCI names, psync for paths.
    pub ioengine: Option<EngineKind>,
    /// `norandommap`.
    pub norandommap: bool,
    /// `randrepeat=`.
    pub randrepeat: bool,
    /// `rate_iops=`.
    pub rate_iops: Option<u64>,
    /// `verify=`.
    pub verify: Option<VerifyKind>,
    /// `percentile_list=`.
    pub percentile_list: Vec<f64>,
    /// `group_reporting`.
    pub group_reporting: bool,
    /// `direct=` (kernel engines; default 1, unlike fio's 0).
    pub direct: bool,
    /// isonvme `completion=` for the CPUs without inline queues.
    pub completion: CompletionMode,
    /// isonvme `inline_cpus=` (or `completion=inline`): CPUs that reap their
    /// own interrupt-less CQ inside poll().
    pub inline: InlineCpus,
    /// isonvme `shadow_doorbells=`: use Doorbell Buffer Config where the
    /// controller supports it (default on).
    pub shadow_doorbells: bool,
    /// isonvme `command_timeout=`: how long a command may take before the
    /// runtime aborts it and, failing that, resets the controller
    /// (default 30 s, as the kernel's `nvme.io_timeout`).
    pub command_timeout: Option<Duration>,
    /// io_uring `hipri`: polled completions (IORING_SETUP_IOPOLL; the
    /// kernel needs poll queues, `nvme.poll_queues=`).
    pub hipri: bool,
    /// `isolated=`: the isolated CPUs (default: the host's configuration).
    pub isolated: Option<CpuSet>,
    /// `housekeeping=`: the housekeeping CPUs (the complement of isolated).
    pub housekeeping: Option<CpuSet>,
    /// Options set explicitly, in order, as (key, value) — fio's "job options".
    pub given: Vec<(String, String)>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            name: String::new(),
            rw: Rw::Read,
            rwmixread: 50,
            bs: 4096,
            iodepth: 1,
            numjobs: 1,
            cpus_allowed: None,
            cpus_allowed_policy: CpusPolicy::Shared,
            runtime: None,
            time_based: false,
            ramp_time: Duration::ZERO,
            size: None,
            offset: SizeSpec::Bytes(0),
            filename: None,
            ioengine: None,
            norandommap: false,
            randrepeat: true,
            rate_iops: None,
            verify: None,
            percentile_list: DEFAULT_PERCENTILES.to_vec(),
            group_reporting: false,
            direct: true,
            completion: CompletionMode::Interrupt,
            inline: InlineCpus::None,
            shadow_doorbells: true,
            command_timeout: None,
            hipri: false,
            isolated: None,
            housekeeping: None,
            given: Vec::new(),
        }
    }
}

/// What an option's value looks like, for `--help`.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// fio's name.
    pub name: &'static str,
    /// Other accepted names.
    pub aliases: &'static [&'static str],
    /// Whether it may be given without a value (`--time_based`).
    pub flag: bool,
    /// One line of help.
    pub help: &'static str,
}

/// Every job option.
pub const OPTIONS: &[OptionSpec] = &[
    OptionSpec {
        name: "name",
        aliases: &[],
        flag: false,
        help: "job name (on the command line, starts a new job)",
    },
    OptionSpec {
        name: "rw",
        aliases: &["readwrite"],
        flag: false,
        help: "read, write, randread, randwrite, rw/readwrite, randrw (default read)",
    },
    OptionSpec {
        name: "rwmixread",
        aliases: &[],
        flag: false,
        help: "percent of mixed I/O that reads (default 50)",
    },
    OptionSpec {
        name: "rwmixwrite",
        aliases: &[],
        flag: false,
        help: "percent of mixed I/O that writes (100 - rwmixread)",
    },
    OptionSpec {
        name: "bs",
        aliases: &["blocksize"],
        flag: false,
        help: "block size, e.g. 4k (default 4k)",
    },
    OptionSpec {
        name: "iodepth",
        aliases: &[],
        flag: false,
        help: "I/Os in flight per job (default 1)",
    },
    OptionSpec {
        name: "numjobs",
        aliases: &[],
        flag: false,
        help: "clones of this job, each its own thread (default 1)",
    },
    OptionSpec {
        name: "cpus_allowed",
        aliases: &[],
        flag: false,
        help: "CPUs the job threads run on (cpulist, e.g. 1-3)",
    },
    OptionSpec {
        name: "cpus_allowed_policy",
        aliases: &[],
        flag: false,
        help: "shared (each thread on the whole set) or split (one CPU per thread)",
    },
    OptionSpec {
        name: "runtime",
        aliases: &["timeout"],
        flag: false,
        help: "stop after this long (seconds unless suffixed: 500ms, 2m)",
    },
    OptionSpec {
        name: "time_based",
        aliases: &[],
        flag: true,
        help: "run for the whole runtime, repeating the workload",
    },
    OptionSpec {
        name: "ramp_time",
        aliases: &[],
        flag: false,
        help: "run this long before recording (not counted in runtime)",
    },
    OptionSpec {
        name: "size",
        aliases: &[],
        flag: false,
        help: "bytes of I/O per job and the region it covers (e.g. 1g, 50%)",
    },
    OptionSpec {
        name: "offset",
        aliases: &[],
        flag: false,
        help: "start of the region (bytes or percent)",
    },
    OptionSpec {
        name: "filename",
        aliases: &[],
        flag: false,
        help: "isonvme: sim[,opts] or a PCI address; psync/io_uring: a file or block device",
    },
    OptionSpec {
        name: "ioengine",
        aliases: &[],
        flag: false,
        help: "isonvme, psync or io_uring (default isonvme for sim/PCI names, psync for paths)",
    },
    OptionSpec {
        name: "norandommap",
        aliases: &[],
        flag: true,
        help: "random offsets may repeat before every block was touched",
    },
    OptionSpec {
        name: "randrepeat",
        aliases: &[],
        flag: false,
        help: "same random sequence every run (default 1)",
    },
    OptionSpec {
        name: "rate_iops",
        aliases: &[],
        flag: false,
        help: "cap each job at this many IOPS",
    },
    OptionSpec {
        name: "verify",
        aliases: &[],
        flag: false,
        help: "crc32c (alias crc32c-intel) or 0: checksum written blocks and check them",
    },
    OptionSpec {
        name: "percentile_list",
        aliases: &[],
        flag: false,
        help: "percentiles to report, colon-separated (e.g. 50:99:99.9)",
    },
    OptionSpec {
        name: "group_reporting",
        aliases: &[],
        flag: true,
        help: "report the jobs of a group as one",
    },
    OptionSpec {
        name: "thread",
        aliases: &[],
        flag: true,
        help: "jobs run as threads (always; accepted so fio job files work unchanged)",
    },
    OptionSpec {
        name: "direct",
        aliases: &[],
        flag: false,
        help: "psync/io_uring: O_DIRECT (default 1; isonvme is always direct)",
    },
    OptionSpec {
        name: "completion",
        aliases: &[],
        flag: false,
        help: "isonvme: interrupt, poll or hybrid completion threads, or inline (every job CPU reaps its own interrupt-less CQ); default interrupt",
    },
    OptionSpec {
        name: "inline_cpus",
        aliases: &[],
        flag: false,
        help: "isonvme: CPUs with inline-polled queues (none, isolated, all or a cpulist); the others use completion=",
    },
    OptionSpec {
        name: "shadow_doorbells",
        aliases: &[],
        flag: false,
        help: "isonvme: shadow doorbells (Doorbell Buffer Config) where the controller supports them (default 1)",
    },
    OptionSpec {
        name: "command_timeout",
        aliases: &[],
        flag: false,
        help: "isonvme: time a command may take before it is aborted, then the controller reset (default 30s)",
    },
    OptionSpec {
        name: "hipri",
        aliases: &[],
        flag: true,
        help: "io_uring: polled completions (IORING_SETUP_IOPOLL; boot with nvme.poll_queues=N)",
    },
    OptionSpec {
        name: "isolated",
        aliases: &["isolated_cpus"],
        flag: false,
        help:
            "isolated CPUs (cpulist or none; default: the host's, else the last CPU as a what-if)",
    },
    OptionSpec {
        name: "housekeeping",
        aliases: &["housekeeping_cpus"],
        flag: false,
        help: "housekeeping CPUs (the complement of isolated)",
    },
];

/// The canonical name of `key`, if it is an option.
pub fn canonical(key: &str) -> Option<&'static OptionSpec> {
    let key = key.trim();
    OPTIONS
        .iter()
        .find(|spec| spec.name == key || spec.aliases.contains(&key))
}

/// fio options people commonly use that this tool does not implement, so
/// the error can say so rather than suggest a near name.
const KNOWN_FIO_UNSUPPORTED: &[&str] = &[
    "bssplit",
    "bsrange",
    "blockalign",
    "iodepth_batch",
    "iodepth_batch_submit",
    "iodepth_batch_complete",
    "iodepth_low",
    "stonewall",
    "new_group",
    "zonemode",
    "zonesize",
    "loops",
    "io_size",
    "io_limit",
    "fill_device",
    "random_distribution",
    "random_generator",
    "randseed",
    "rate",
    "rate_min",
    "rate_process",
    "thinktime",
    "do_verify",
    "verify_pattern",
    "verify_fatal",
    "verify_backlog",
    "buffered",
    "sync",
    "fsync",
    "fdatasync",
    "hipri",
    "fixedbufs",
    "registerfiles",
    "sqthread_poll",
    "nrfiles",
    "directory",
    "filesize",
    "startdelay",
    "write_bw_log",
    "write_lat_log",
    "write_iops_log",
    "log_avg_msec",
    "lat_percentiles",
    "clat_percentiles",
    "slat_percentiles",
    "cpumask",
    "numa_cpu_nodes",
    "invalidate",
    "create_on_open",
    "allow_file_create",
    "unlink",
    "refill_buffers",
    "scramble_buffers",
    "buffer_compress_percentage",
    "dedupe_percentage",
    "exitall",
    "wait_for",
    "description",
    "kb_base",
    "unit_base",
    "continue_on_error",
];

/// The error for a key that is not an option.
pub fn unsupported(key: &str) -> OptionError {
    if KNOWN_FIO_UNSUPPORTED.contains(&key) {
        return OptionError(format!(
            "option `{key}` is a fio option that isonvme-bench does not support"
        ));
    }
    let nearest = OPTIONS
        .iter()
        .flat_map(|spec| std::iter::once(spec.name).chain(spec.aliases.iter().copied()))
        .map(|name| (edit_distance(key, name), name))
        .min();
    match nearest {
        Some((distance, name)) if distance <= 2 => OptionError(format!(
            "unsupported option `{key}` (did you mean `{name}`?)"
        )),
        _ => OptionError(format!(
            "unsupported option `{key}` (see `isonvme-bench --help` for the options)"
        )),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = (previous + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            previous = current;
        }
    }
    row[b.len()]
}

fn bad(key: &str, value: &str, expected: &str) -> OptionError {
    OptionError(format!("{key}={value}: expected {expected}"))
}

fn cpuset(key: &str, value: &str) -> Result<CpuSet, OptionError> {
    value
        .trim()
        .parse::<CpuSet>()
        .map_err(|e| OptionError(format!("{key}={value}: {e}")))
}

impl JobOptions {
    /// Sets option `key` (any accepted name) to `value` (`None` for a bare
    /// flag such as `time_based`).
    pub fn set(&mut self, key: &str, value: Option<&str>) -> Result<(), OptionError> {
        let key = key.trim();
        let spec = canonical(key).ok_or_else(|| unsupported(key))?;
        let name = spec.name;
        let value = match value {
            Some(value) => value.trim(),
            None if spec.flag => "1",
            None => {
                return Err(OptionError(format!(
                    "option `{name}` needs a value ({name}=...)"
                )))
            }
        };
        let size = |v: &str| {
            units::parse_size(v).ok_or_else(|| bad(name, v, "a size such as 4096, 4k, 1m"))
        };
        let uint = |v: &str| -> Result<u64, OptionError> {
            v.parse::<u64>().map_err(|_| bad(name, v, "a whole number"))
        };
        let boolean = |v: &str| units::parse_bool(v).ok_or_else(|| bad(name, v, "0 or 1"));
        let time = |v: &str| {
            units::parse_time(v, Duration::from_secs(1))
                .ok_or_else(|| bad(name, v, "a time such as 10, 10s, 500ms, 2m"))
        };
        match name {
            "name" => {
                if value.is_empty() {
                    return Err(bad(name, value, "a job name"));
                }
                self.name = value.to_owned();
            }
            "rw" => {
                self.rw = match value {
                    "read" => Rw::Read,
                    "write" => Rw::Write,
                    "randread" => Rw::RandRead,
                    "randwrite" => Rw::RandWrite,
                    "rw" | "readwrite" => Rw::ReadWrite,
                    "randrw" => Rw::RandRw,
                    other if other.contains(':') => {
                        return Err(OptionError(format!(
                            "rw={other}: the `:<nr>` offset modifier is not supported"
                        )))
                    }
                    "trim" | "randtrim" | "trimwrite" | "randtrimwrite" => {
                        return Err(OptionError(format!(
                            "rw={value}: trim workloads are not supported"
                        )))
                    }
                    _ => {
                        return Err(bad(
                            name,
                            value,
                            "read, write, randread, randwrite, rw, readwrite or randrw",
                        ))
                    }
                }
            }
            "rwmixread" | "rwmixwrite" => {
                let percent = uint(value)?;
                if percent > 100 {
                    return Err(bad(name, value, "a percentage 0..100"));
                }
                self.rwmixread = if name == "rwmixread" {
                    percent as u32
                } else {
                    100 - percent as u32
                };
            }
            "bs" => {
                if value.contains(',') || value.contains(':') {
                    return Err(OptionError(format!(
                        "bs={value}: separate read/write block sizes are not supported; give one size"
                    )));
                }
                let bs = size(value)?;
                if bs == 0 || bs % 512 != 0 || bs > 1 << 30 {
                    return Err(bad(name, value, "a multiple of 512 bytes up to 1g"));
                }
                self.bs = bs;
            }
            "iodepth" => {
                let depth = uint(value)?;
                if !(1..=65535).contains(&depth) {
                    return Err(bad(name, value, "1..65535"));
                }
                self.iodepth = depth as u32;
            }
            "numjobs" => {
                let jobs = uint(value)?;
                if !(1..=1024).contains(&jobs) {
                    return Err(bad(name, value, "1..1024"));
                }
                self.numjobs = jobs as u32;
            }
            "cpus_allowed" => {
                let set = cpuset(name, value)?;
                if set.is_empty() {
                    return Err(bad(name, value, "a non-empty CPU list"));
                }
                self.cpus_allowed = Some(set);
            }
            "cpus_allowed_policy" => {
                self.cpus_allowed_policy = match value {
                    "shared" => CpusPolicy::Shared,
                    "split" => CpusPolicy::Split,
                    _ => return Err(bad(name, value, "shared or split")),
                }
            }
            "runtime" => {
                let runtime = time(value)?;
                self.runtime = (!runtime.is_zero()).then_some(runtime);
            }
            "time_based" => self.time_based = boolean(value)?,
            "ramp_time" => self.ramp_time = time(value)?,
            "size" => {
                let spec = units::parse_size_spec(value).ok_or_else(|| {
                    bad(name, value, "a size such as 1g or a percentage such as 50%")
                })?;
                if spec == SizeSpec::Bytes(0) {
                    return Err(bad(name, value, "a size above 0"));
                }
                self.size = Some(spec);
            }
            "offset" => {
                self.offset = units::parse_size_spec(value)
                    .ok_or_else(|| bad(name, value, "a size such as 1g or a percentage"))?;
            }
            "filename" => {
                if value.is_empty() {
                    return Err(bad(
                        name,
                        value,
                        "a file, block device, `sim[,opts]` or PCI address",
                    ));
                }
                self.filename = Some(value.to_owned());
            }
            "ioengine" => {
                self.ioengine = Some(match value {
                    "isonvme" => EngineKind::Isonvme,
                    "psync" | "sync" | "pvsync" => EngineKind::Psync,
                    "io_uring" => EngineKind::IoUring,
                    // The kernel's other asynchronous engines: the same
                    // requests, run on io_uring (said in a note).
                    "libaio" | "posixaio" => EngineKind::IoUring,
                    other => {
                        return Err(OptionError(format!(
                            "ioengine={other} is not supported: use isonvme, psync or io_uring (libaio and posixaio run on io_uring)"
                        )))
                    }
                });
            }
            "norandommap" => self.norandommap = boolean(value)?,
            "randrepeat" => self.randrepeat = boolean(value)?,
            "rate_iops" => {
                if value.contains(',') {
                    return Err(OptionError(format!(
                        "rate_iops={value}: separate read/write rates are not supported; give one rate"
                    )));
                }
                let rate = uint(value)?;
                self.rate_iops = (rate > 0).then_some(rate);
            }
            "verify" => {
                self.verify = match value {
                    "0" | "none" => None,
                    "crc32c" | "crc32c-intel" => Some(VerifyKind::Crc32c),
                    other => {
                        return Err(OptionError(format!(
                            "verify={other} is not supported: use crc32c (or 0)"
                        )))
                    }
                }
            }
            "percentile_list" => {
                let mut list = Vec::new();
                for part in value.split(':').filter(|p| !p.trim().is_empty()) {
                    let p: f64 = part.trim().parse().map_err(|_| {
                        bad(
                            name,
                            value,
                            "percentiles separated by colons, e.g. 50:99:99.9",
                        )
                    })?;
                    if !(0.0..=100.0).contains(&p) {
                        return Err(bad(name, value, "percentiles between 0 and 100"));
                    }
                    list.push(p);
                }
                if list.is_empty() || list.len() > 20 {
                    return Err(bad(name, value, "1 to 20 percentiles"));
                }
                // fio reports them in ascending order.
                list.sort_by(f64::total_cmp);
                list.dedup();
                self.percentile_list = list;
            }
            "group_reporting" => self.group_reporting = boolean(value)?,
            "direct" => self.direct = boolean(value)?,
            "thread" => {
                if !boolean(value)? {
                    return Err(OptionError(
                        "thread=0: isonvme-bench runs every job as a thread of one process (fio's processes are not supported)".into(),
                    ));
                }
            }
            "completion" => {
                if value == "inline" {
                    self.completion = CompletionMode::Interrupt;
                    if self.inline == InlineCpus::None {
                        self.inline = InlineCpus::All;
                    }
                } else {
                    self.completion = value
                        .parse::<CompletionMode>()
                        .map_err(|_| bad(name, value, "interrupt, poll, hybrid or inline"))?;
                }
            }
            "inline_cpus" => {
                self.inline = value.parse::<InlineCpus>().map_err(|_| {
                    bad(name, value, "none, isolated, all or a CPU list such as 2-3")
                })?;
            }
            "shadow_doorbells" => self.shadow_doorbells = boolean(value)?,
            "command_timeout" => {
                let timeout = time(value)?;
                if timeout < Duration::from_millis(1) || timeout > Duration::from_secs(3600) {
                    return Err(bad(name, value, "a time from 1ms to 3600s, such as 100ms"));
                }
                self.command_timeout = Some(timeout);
            }
            "hipri" => self.hipri = boolean(value)?,
            "isolated" => {
                self.isolated = Some(if value == "none" || value.is_empty() {
                    CpuSet::new()
                } else {
                    cpuset(name, value)?
                });
            }
            "housekeeping" => {
                let set = cpuset(name, value)?;
                if set.is_empty() {
                    return Err(bad(name, value, "a non-empty CPU list"));
                }
                self.housekeeping = Some(set);
            }
            _ => unreachable!("option table and match disagree on `{name}`"),
        }
        self.given.retain(|(k, _)| k != name);
        self.given.push((name.to_owned(), value.to_owned()));
        Ok(())
    }

    /// The engine this job runs: `ioengine=`, else isonvme for `sim`/PCI
    /// names (and no filename), psync (fio's default) for paths.
    pub fn engine(&self) -> EngineKind {
        if let Some(engine) = self.ioengine {
            return engine;
        }
        match &self.filename {
            None => EngineKind::Isonvme,
            Some(name)
                if name == "sim"
                    || name.starts_with("sim,")
                    || name.parse::<isonvme::device::DeviceName>().is_ok() =>
            {
                EngineKind::Isonvme
            }
            Some(_) => EngineKind::Psync,
        }
    }

    /// The target the job opens (`sim` when no filename is given to isonvme).
    pub fn target(&self) -> String {
        match (&self.filename, self.engine()) {
            (Some(name), _) => name.clone(),
            (None, EngineKind::Isonvme) => "sim".to_owned(),
            (None, _) => String::new(),
        }
    }

    /// Cross-option checks, once every option is set; returns notes to
    /// print (settings that run differently from how they read).
    pub fn validate(&self) -> Result<Vec<String>, OptionError> {
        let mut notes = Vec::new();
        let engine = self.engine();
        let given = |key: &str| self.given.iter().any(|(k, _)| k == key);
        let asked_engine = self
            .given
            .iter()
            .rev()
            .find(|(k, _)| k == "ioengine")
            .map(|(_, v)| v.as_str());
        match asked_engine {
            Some(asked @ ("libaio" | "posixaio")) => notes.push(format!(
                "job `{}`: ioengine={asked} runs on io_uring (the same requests and queue depth through the kernel's newer interface)",
                self.name
            )),
            Some(asked @ ("sync" | "pvsync")) => notes.push(format!(
                "job `{}`: ioengine={asked} runs as psync (one positioned read or write per I/O)",
                self.name
            )),
            _ => {}
        }
        match engine {
            EngineKind::Isonvme => {
                if given("direct") && !self.direct {
                    notes.push(format!(
                        "job `{}`: direct=0 has no meaning for ioengine=isonvme: the driver always transfers by DMA straight to the device (there is no page cache)",
                        self.name
                    ));
                }
                if self.hipri {
                    return Err(OptionError(format!(
                        "job `{}`: hipri applies to ioengine=io_uring; isonvme's polled completions are completion=inline",
                        self.name
                    )));
                }
                let target = self.target();
                if let Err(error) = target.parse::<isonvme::device::DeviceName>() {
                    return Err(OptionError(format!(
                        "job `{}`: filename={target} for ioengine=isonvme: {error}",
                        self.name
                    )));
                }
            }
            EngineKind::Psync | EngineKind::IoUring => {
                if self.filename.is_none() {
                    return Err(OptionError(format!(
                        "job `{}`: ioengine={} needs filename= (a file or block device)",
                        self.name,
                        engine.name()
                    )));
                }
                for isonvme_only in [
                    "completion",
                    "inline_cpus",
                    "shadow_doorbells",
                    "command_timeout",
                ] {
                    if given(isonvme_only) {
                        return Err(OptionError(format!(
                            "job `{}`: {isonvme_only}= applies to ioengine=isonvme only",
                            self.name
                        )));
                    }
                }
                if self.hipri && engine != EngineKind::IoUring {
                    return Err(OptionError(format!(
                        "job `{}`: hipri applies to ioengine=io_uring only",
                        self.name
                    )));
                }
            }
        }
        if engine == EngineKind::Psync && self.iodepth > 1 {
            // fio runs sync engines at depth 1 too; say so rather than mislead.
            notes.push(format!(
                "job `{}`: ioengine=psync is synchronous, so iodepth={} runs as iodepth=1",
                self.name, self.iodepth
            ));
        }
        if let (Some(isolated), Some(housekeeping)) = (&self.isolated, &self.housekeeping) {
            if isolated.intersects(housekeeping) {
                return Err(OptionError(format!(
                    "job `{}`: isolated={isolated} and housekeeping={housekeeping} overlap",
                    self.name
                )));
            }
        }
        if self.time_based && self.runtime.is_none() {
            return Err(OptionError(format!(
                "job `{}`: time_based needs runtime=",
                self.name
            )));
        }
        if let SizeSpec::Bytes(size) = self.size.unwrap_or(SizeSpec::Bytes(u64::MAX)) {
            if size < self.bs {
                return Err(OptionError(format!(
                    "job `{}`: size={size} is smaller than bs={}",
                    self.name, self.bs
                )));
            }
        }
        Ok(notes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_option_in_the_table_is_settable() {
        for spec in OPTIONS {
            let value = match spec.name {
                "name" => "x",
                "rw" => "randrw",
                "bs" => "8k",
                "cpus_allowed" | "isolated" | "housekeeping" => "0",
                "cpus_allowed_policy" => "split",
                "runtime" | "ramp_time" => "1s",
                "size" | "offset" => "1m",
                "filename" => "sim",
                "ioengine" => "isonvme",
                "verify" => "crc32c",
                "percentile_list" => "50:99",
                "completion" => "poll",
                "inline_cpus" => "isolated",
                _ => "1",
            };
            let mut job = JobOptions::default();
            job.set(spec.name, Some(value))
                .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        }
    }

    #[test]
    fn unknown_options_are_named() {
        let mut job = JobOptions::default();
        let error = job.set("iodepht", Some("4")).unwrap_err().0;
        assert!(
            error.contains("`iodepht`") && error.contains("iodepth"),
            "{error}"
        );
        let error = job.set("stonewall", None).unwrap_err().0;
        assert!(error.contains("`stonewall`"), "{error}");
    }
}
