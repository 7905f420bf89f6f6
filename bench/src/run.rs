//! A run: resolve the jobs, open the devices and files, place the job
//! threads on CPUs, start them together, show progress, collect results and
//! the isolation report.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{IsTerminal, Seek, SeekFrom, Write as _};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use isonvme::runtime::{CompletionMode, Runtime, RuntimeOptions};
use isonvme::sim::SimController;
use isonvme::{Controller, ControllerOptions};
use isonvme_mapping::sysfs::SysfsRoot;
use isonvme_mapping::{isolation, CpuSet, Topology};

use crate::config::{self, Config, Eta, RawOption};
use crate::job::{self, EngineSetup, KernelEngine, Live, StartGate, State, ThreadPlan};
use crate::options::{CpusPolicy, EngineKind, JobOptions, Rw};
use crate::report::{self, CpuActivity, IsolationReport};
use crate::stats::JobResult;
use crate::units::{self, SizeSpec};

/// Why a run could not be done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunError {
    /// A usage error (bad options) rather than a failure while running.
    pub usage: bool,
    /// What went wrong.
    pub message: String,
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RunError {}

fn usage(message: impl Into<String>) -> RunError {
    RunError {
        usage: true,
        message: message.into(),
    }
}

fn failure(message: impl Into<String>) -> RunError {
    RunError {
        usage: false,
        message: message.into(),
    }
}

/// The isolated/housekeeping split a run uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Isolated CPUs.
    pub isolated: CpuSet,
    /// Housekeeping CPUs.
    pub housekeeping: CpuSet,
    /// Where the split came from, in words.
    pub source: String,
}

/// What the report says about one isonvme device.
#[derive(Debug, Clone)]
pub struct DeviceReport {
    /// `filename=` as given.
    pub filename: String,
    /// The controller's model number.
    pub model: String,
    /// Namespace id, blocks, block size.
    pub namespace: (u32, u64, u32),
    /// MDTS in bytes.
    pub max_transfer: usize,
    /// Completion mode.
    pub completion: String,
    /// The plan (the specification's JSON shape).
    pub plan: serde_json::Value,
    /// The queues built, as text.
    pub layout: String,
    /// The split the plan used (after the kernel's boot-CPU rule).
    pub split: Split,
    /// Per vector: number, CPUs it targets, interrupts and completions
    /// during the run.
    pub vectors: Vec<(u16, CpuSet, u64, u64)>,
    /// Things the bench did to keep the run honest (thread pinning).
    pub notes: Vec<String>,
}

/// Everything a run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// One result per job thread, in start order.
    pub jobs: Vec<JobResult>,
    /// The isonvme devices.
    pub devices: Vec<DeviceReport>,
    /// The isolation report.
    pub isolation: IsolationReport,
    /// When the jobs started.
    pub started: SystemTime,
    /// Notes for the reader (fallbacks, substitutions).
    pub notes: Vec<String>,
    /// The global options, for the JSON.
    pub global_options: Vec<(String, String)>,
    /// Whether this was the no-argument default run.
    pub default_run: bool,
}

impl Outcome {
    /// Whether every job ran without error or verify mismatch.
    pub fn ok(&self) -> bool {
        self.jobs.iter().all(|job| job.errno() == 0)
    }
}

/// The split for `job` on `topology`: `isolated=` or `housekeeping=` if
/// given, else the host's configuration, else — on a machine with several
/// online CPUs and no isolation — the last online CPU as a what-if.
pub fn split_for(job: &JobOptions, topology: &Topology) -> Result<Split, RunError> {
    let possible = topology.possible().clone();
    let (isolated, source) = if let Some(isolated) = &job.isolated {
        (isolated.clone(), format!("isolated={}", or_none(isolated)))
    } else if let Some(housekeeping) = &job.housekeeping {
        (
            possible.difference(housekeeping),
            format!("housekeeping={housekeeping}"),
        )
    } else {
        let detected = isolation::detect(&SysfsRoot::host(), topology)
            .map_err(|e| failure(format!("reading this machine's isolated CPUs: {e}")))?;
        if !detected.isolated.is_empty() {
            let source = detected.source.to_string();
            (detected.isolated, source)
        } else {
            let online = topology.online();
            match online.last() {
                Some(last) if online.len() >= 2 => (
                    CpuSet::single(last),
                    format!(
                        "what-if: this machine isolates no CPU, so CPU {last} is treated as isolated (isolated=none turns this off)"
                    ),
                ),
                _ => (CpuSet::new(), "no CPU isolation (one CPU online)".to_owned()),
            }
        }
    };
    if !isolated.is_empty() {
        isolation::explicit(isolated.clone(), topology)
            .map_err(|e| usage(format!("job `{}`: {e}", job.name)))?;
    }
    Ok(Split {
        housekeeping: possible.difference(&isolated),
        isolated,
        source,
    })
}

fn or_none(set: &CpuSet) -> String {
    if set.is_empty() {
        "none".into()
    } else {
        set.to_string()
    }
}

/// Pins every thread of this process whose name starts with `prefix` to
/// `cpus`; returns how many.
fn pin_threads_named(prefix: &str, cpus: &CpuSet) -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    let mut pinned = 0;
    for task in tasks.flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<i32>().ok())
        else {
            continue;
        };
        if set_affinity(tid, cpus).is_ok() {
            pinned += 1;
        }
    }
    pinned
}

fn set_affinity(tid: i32, cpus: &CpuSet) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    for cpu in cpus.iter() {
        set.set(cpu)?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set)
}

/// The CPUs the calling thread may run on.
fn get_affinity() -> Option<CpuSet> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    Some(
        (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
    )
}

/// An open isonvme device.
struct OpenDevice {
    runtime: Runtime,
    _sim: Option<Arc<SimController>>,
    report: DeviceReport,
    taken: CpuSet,
    baseline: Vec<(u64, u64, Vec<u64>)>,
    vfio_irqs: Vec<u32>,
}

fn is_sim(name: &str) -> bool {
    name == "sim" || name.starts_with("sim,")
}

fn open_device(
    name: &str,
    jobs: &[&JobOptions],
    topology: &Topology,
) -> Result<OpenDevice, RunError> {
    let first = jobs[0];
    for other in &jobs[1..] {
        let same = other.completion == first.completion
            && other.inline == first.inline
            && other.shadow_doorbells == first.shadow_doorbells
            && other.isolated == first.isolated
            && other.housekeeping == first.housekeeping;
        if !same {
            return Err(usage(format!(
                "jobs `{}` and `{}` share filename={name} but differ in completion=/inline_cpus=/shadow_doorbells=/isolated=/housekeeping=: one device runs one plan",
                first.name, other.name
            )));
        }
    }
    let split = split_for(first, topology)?;
    let mut notes = Vec::new();
    let controller_options = ControllerOptions {
        shadow_doorbells: first.shadow_doorbells,
        ..ControllerOptions::default()
    };
    let (controller, sim) = if is_sim(name) {
        let sim = SimController::open(name).map_err(|e| usage(format!("filename={name}: {e}")))?;
        let controller = Controller::open(sim.clone(), controller_options)
            .map_err(|e| failure(format!("{name}: {e}")))?;
        (controller, Some(sim))
    } else {
        let controller = isonvme::device::open(name, controller_options)
            .map_err(|e| failure(format!("filename={name}: {e}")))?;
        (controller, None)
    };
    let info = controller.info().clone();
    let namespace = info
        .namespaces
        .first()
        .cloned()
        .ok_or_else(|| failure(format!("{name}: the controller has no active namespace")))?;
    let max_bs = jobs.iter().map(|job| job.bs).max().unwrap_or(4096);
    for job in jobs {
        if job.bs % u64::from(namespace.block_size) != 0 {
            return Err(usage(format!(
                "job `{}`: bs={} is not a multiple of {name}'s {}-byte blocks",
                job.name, job.bs, namespace.block_size
            )));
        }
        if job.bs as usize > info.max_transfer {
            notes.push(format!(
                "job `{}`: bs={} is larger than {name}'s maximum transfer ({} bytes, MDTS): the driver splits each I/O into {} commands",
                job.name,
                job.bs,
                info.max_transfer,
                (job.bs as usize).div_ceil(info.max_transfer)
            ));
        }
    }
    // Commands one I/O of `bs` takes (the driver splits at MDTS).
    let parts = |bs: u64| (bs as usize).div_ceil(info.max_transfer.max(1)) as u32;
    // A CPU's queue holds one command less than its depth (one SQ slot
    // stays empty); the runtime caps queues at 4096 entries.
    let most = info.max_queue_depth.min(4096).saturating_sub(1);
    if let Some(job) = jobs
        .iter()
        .find(|job| job.iodepth.saturating_mul(parts(job.bs)) > most)
    {
        return Err(usage(format!(
            "job `{}`: iodepth={} of {} commands each (bs={} split at MDTS) is more than {name}'s queues hold ({most} commands per CPU): lower iodepth or bs{}",
            job.name,
            job.iodepth,
            parts(job.bs),
            job.bs,
            if sim.is_some() {
                " or raise the simulator's qdepth="
            } else {
                ""
            }
        )));
    }
    let depth = jobs
        .iter()
        .map(|job| job.iodepth * parts(job.bs))
        .max()
        .unwrap_or(1)
        + 1;
    let runtime = Runtime::open(
        controller,
        RuntimeOptions {
            isolated: Some(split.isolated.clone()),
            mode: first.completion,
            inline: first.inline.clone(),
            depth,
            max_transfer: max_bs as usize,
            command_timeout: first
                .command_timeout
                .unwrap_or(RuntimeOptions::default().command_timeout),
            ..RuntimeOptions::default()
        },
    )
    .map_err(|e| failure(format!("{name}: starting the isolation runtime: {e}")))?;
    let plan = runtime.plan();
    let split = Split {
        isolated: plan.isolated.clone(),
        housekeeping: plan.housekeeping.clone(),
        source: split.source,
    };
    // The simulated device and the runtime's hotplug watcher are
    // housekeeping work too: keep them off the isolated CPUs.
    let housekeeping_here = split
        .housekeeping
        .intersection(&isonvme::os::runnable_cpus());
    if !split.isolated.is_empty() && !housekeeping_here.is_empty() {
        if sim.is_some() && pin_threads_named("isonvme-sim", &housekeeping_here) > 0 {
            notes.push(format!(
                "the simulator's device thread is pinned to housekeeping CPUs {housekeeping_here}"
            ));
            let spinning = runtime.vectors().len();
            if first.completion != CompletionMode::Interrupt && housekeeping_here.len() <= spinning
            {
                notes.push(format!(
                    "completion threads that spin share housekeeping CPUs {housekeeping_here} with the simulator's device thread, so they slow each other down; real devices need no CPU, and more housekeeping CPUs avoid this"
                ));
            }
        }
        pin_threads_named("isonvme-hotplug", &housekeeping_here);
    }
    let threads = match first.completion {
        CompletionMode::Interrupt => "interrupt".to_owned(),
        CompletionMode::Poll => "poll".to_owned(),
        CompletionMode::Hybrid { spin } => format!("hybrid (spin {spin:?})"),
    };
    let layout = runtime.layout();
    let mut completion = if layout.inline.is_empty() {
        threads.clone()
    } else if layout.sqs.iter().all(|(_, _, cpus)| cpus.is_empty()) {
        "inline on every CPU".to_owned()
    } else {
        format!(
            "inline on CPUs {}, {threads} elsewhere",
            layout.inline_cpus()
        )
    };
    if !layout.inline_refused.is_empty() {
        notes.push(format!(
            "{name}: the controller granted too few queues for inline queue pairs on CPUs {}: they use their vector's shared CQ ({threads})",
            layout.inline_refused
        ));
    }
    completion.push_str(if info.shadow_doorbells {
        "; shadow doorbells"
    } else {
        "; register doorbells"
    });
    let vfio_irqs = if sim.is_none() {
        isonvme::irq::HostIrqs::host()
            .find_vfio_msix(name)
            .map(|map| map.into_values().collect())
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let report = DeviceReport {
        filename: name.to_owned(),
        model: info.identify.model(),
        namespace: (namespace.id, namespace.blocks, namespace.block_size),
        max_transfer: info.max_transfer,
        completion,
        plan: plan.to_spec_json(),
        layout: runtime.layout().to_string(),
        split,
        vectors: Vec::new(),
        notes,
    };
    let baseline = vector_snapshot(&runtime);
    Ok(OpenDevice {
        runtime,
        _sim: sim,
        report,
        taken: CpuSet::new(),
        baseline,
        vfio_irqs,
    })
}

fn vector_snapshot(runtime: &Runtime) -> Vec<(u64, u64, Vec<u64>)> {
    use std::sync::atomic::Ordering::Relaxed;
    runtime
        .vectors()
        .iter()
        .map(|v| {
            (
                v.counters.interrupts.load(Relaxed),
                v.counters.completions.load(Relaxed),
                v.counters
                    .handled_on
                    .iter()
                    .map(|c| c.load(Relaxed))
                    .collect(),
            )
        })
        .collect()
}

/// A file or block device for the kernel engines.
struct KernelTarget {
    total: u64,
    direct: bool,
    irqs: Vec<u32>,
}

/// The IRQs of the PCI device behind a file or block device (its
/// `msi_irqs`), to count its interrupts per CPU.
fn device_irqs(path: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let dev = if meta.file_type().is_block_device() {
        meta.rdev()
    } else {
        meta.dev()
    };
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let Ok(mut block) = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")) else {
        return Vec::new();
    };
    if block.join("partition").exists() {
        block.pop();
    }
    let Ok(mut device) = std::fs::canonicalize(block.join("device")) else {
        return Vec::new();
    };
    for _ in 0..4 {
        if let Ok(entries) = std::fs::read_dir(device.join("msi_irqs")) {
            let mut irqs: Vec<u32> = entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect();
            irqs.sort_unstable();
            return irqs;
        }
        if !device.pop() {
            break;
        }
    }
    Vec::new()
}

/// `error` from opening `name`, with what to do about it.
fn open_error(name: &std::path::Display<'_>, error: &std::io::Error) -> String {
    let hint = match error.raw_os_error() {
        Some(libc::ENOENT) => " (check the path; a regular file is created when size= is given)",
        Some(libc::EACCES) | Some(libc::EPERM) => {
            " (permission denied: run as root, or give your user access to it, e.g. the `disk` group for block devices)"
        }
        Some(libc::EROFS) => " (read-only: use a read workload, rw=read or randread)",
        Some(libc::EBUSY) => " (in use: a mounted file system or another program holds it)",
        _ => "",
    };
    format!("opening {name}: {error}{hint}")
}

fn prepare_kernel_target(
    path: &Path,
    jobs: &[&JobOptions],
    notes: &mut Vec<String>,
) -> Result<KernelTarget, RunError> {
    let name = path.display();
    if path.to_str().is_some_and(|text| text.contains(':')) && !path.exists() {
        // fio reads `a:b` as two files; jobs here run on one file each.
        return Err(usage(format!(
            "filename={name}: a `:`-separated list of files is not supported (one file per job: give each its own job, or numjobs= on one file); a file whose name contains `:` must exist"
        )));
    }
    let meta = std::fs::metadata(path);
    if meta.as_ref().is_ok_and(|m| m.is_dir()) {
        return Err(usage(format!(
            "filename={name} is a directory: give a file or a block device"
        )));
    }
    if meta.is_err() && path.starts_with("/dev") {
        return Err(usage(format!(
            "filename={name}: no such device (list block devices with `lsblk`)"
        )));
    }
    let is_block = meta.as_ref().is_ok_and(|m| m.file_type().is_block_device());
    let writes = jobs.iter().any(|job| job.rw.writes());
    if meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) {
        return char_device_target(path, jobs, writes, notes);
    }
    let total = if is_block {
        let mut file = std::fs::File::open(path).map_err(|e| failure(open_error(&name, &e)))?;
        file.seek(SeekFrom::End(0))
            .map_err(|e| failure(format!("sizing {name}: {e}")))?
    } else {
        let current = meta.as_ref().map_or(0, |m| m.len());
        // fio lays out a regular file up to the largest region a job needs.
        let mut needed = 0u64;
        for job in jobs {
            match job.size {
                None | Some(SizeSpec::Percent(_)) if current == 0 => {
                    return Err(usage(format!(
                        "job `{}`: {name} does not exist or is empty: give size= in bytes (e.g. size=1g) so it can be laid out",
                        job.name
                    )));
                }
                None => {}
                Some(size) => {
                    let offset = job.offset.resolve(current);
                    needed = needed.max(offset.saturating_add(size.resolve(current)));
                }
            }
        }
        if needed > current {
            notes.push(format!(
                "laying out IO file {name} ({})",
                units::bytes_binary(needed)
            ));
            layout_file(path, current, needed).map_err(|e| {
                failure(format!(
                    "laying out {name}: {e}{}",
                    if e.raw_os_error() == Some(libc::ENOSPC) {
                        " (no space left: lower size=)"
                    } else {
                        ""
                    }
                ))
            })?;
        }
        needed.max(current)
    };
    if is_block && writes {
        // O_EXCL on a block device fails with EBUSY while a file system is
        // mounted on it (or a partition of it) or a RAID/LVM/dm device holds
        // it, as mkfs checks.
        let probe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL)
            .open(path);
        match probe {
            Err(error) if error.raw_os_error() == Some(libc::EBUSY) => {
                return Err(usage(format!(
                    "refusing to write to {name}: it is in use (a mounted file system, or part of a RAID/LVM/dm device), and writing would destroy that data; use a read workload or an unused device"
                )));
            }
            Err(error) => return Err(failure(open_error(&name, &error))),
            Ok(_) => {}
        }
    }
    // Open it as the jobs will, so a missing permission shows now.
    let open = |direct: bool| {
        let mut options = OpenOptions::new();
        options.read(true).write(writes);
        if direct {
            options.custom_flags(libc::O_DIRECT);
        }
        options.open(path)
    };
    let mut direct = jobs.iter().any(|job| job.direct);
    match open(direct) {
        Ok(_) => {}
        Err(error) if direct && error.raw_os_error() == Some(libc::EINVAL) => {
            notes.push(format!(
                "{name}: the file system refuses O_DIRECT, so the run uses buffered I/O (the page cache answers, not the device)"
            ));
            direct = false;
            open(false).map_err(|e| failure(open_error(&name, &e)))?;
        }
        Err(error) => return Err(failure(open_error(&name, &error))),
    }
    Ok(KernelTarget {
        total,
        direct,
        irqs: device_irqs(path),
    })
}

/// A character device such as `/dev/null` or `/dev/zero`: nothing to lay
/// out, no O_DIRECT, and the size comes from `size=`.
fn char_device_target(
    path: &Path,
    jobs: &[&JobOptions],
    writes: bool,
    notes: &mut Vec<String>,
) -> Result<KernelTarget, RunError> {
    let name = path.display();
    if path == Path::new("/dev/null") && jobs.iter().any(|job| job.rw.reads()) {
        return Err(usage(format!(
            "reads from {name} return nothing: read from /dev/zero, write to /dev/null"
        )));
    }
    let mut total = 0u64;
    for job in jobs {
        match job.size {
            Some(SizeSpec::Bytes(bytes)) => total = total.max(job.offset.resolve(bytes).saturating_add(bytes)),
            _ => {
                return Err(usage(format!(
                    "job `{}`: {name} is a character device with no size: give size= in bytes (e.g. size=1g)",
                    job.name
                )))
            }
        }
    }
    OpenOptions::new()
        .read(true)
        .write(writes)
        .open(path)
        .map_err(|e| failure(open_error(&name, &e)))?;
    notes.push(format!(
        "{name} is a character device: buffered I/O (no O_DIRECT), nothing laid out; it measures the system call path, not storage"
    ));
    Ok(KernelTarget {
        total,
        direct: false,
        irqs: Vec::new(),
    })
}

fn layout_file(path: &Path, from: u64, to: u64) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut rng = crate::pattern::Rng::new(0x1a70_u64 ^ to);
    let mut chunk = vec![0u8; 1 << 20];
    let mut position = from;
    while position < to {
        // Ctrl-C / SIGTERM stops laying out too (a large offset= can take
        // minutes), leaving the file as far as it got.
        if crate::job::INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "interrupted while laying out the file",
            ));
        }
        for word in chunk.chunks_mut(8) {
            word.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        let len = ((to - position) as usize).min(chunk.len());
        file.write_all(&chunk[..len])?;
        position += len as u64;
    }
    file.sync_all()
}

/// Places job threads on CPUs, as fio's `cpus_allowed` and
/// `cpus_allowed_policy` say; without `cpus_allowed`, one CPU per thread,
/// isolated CPUs first (the CPUs latency-critical threads belong on), then
/// housekeeping ones, the least used first. isonvme threads each take
/// their CPU's handle, so two threads of one device never share a CPU.
struct Placer {
    /// The CPUs to use without `cpus_allowed`, in order of preference.
    preferred: Vec<usize>,
    /// Job threads placed per CPU so far.
    load: BTreeMap<usize, usize>,
    /// The CPUs this process may be placed on (its cpuset, online).
    placeable: CpuSet,
}

impl Placer {
    fn new(split: &Split) -> Placer {
        // The cpuset, not the inherited affinity: under isolcpus=domain the
        // latter leaves out the isolated CPUs job threads belong on.
        let placeable = isonvme::os::placeable_cpus();
        let mut preferred: Vec<usize> = split
            .isolated
            .iter()
            .chain(split.housekeeping.iter())
            .filter(|cpu| placeable.contains(*cpu))
            .collect();
        if preferred.is_empty() {
            preferred = placeable.iter().collect();
        }
        Placer {
            preferred,
            load: BTreeMap::new(),
            placeable,
        }
    }

    /// The CPUs thread `clone` of `job` may pick from, in order.
    fn candidates(&self, job: &JobOptions, clone: u32) -> Vec<usize> {
        match (&job.cpus_allowed, job.cpus_allowed_policy) {
            (Some(set), CpusPolicy::Split) => {
                let cpus: Vec<usize> = set.iter().collect();
                vec![cpus[clone as usize % cpus.len()]]
            }
            (Some(set), CpusPolicy::Shared) => set.iter().collect(),
            (None, _) => self.preferred.clone(),
        }
    }

    /// Refuses a `cpus_allowed` that names CPUs this process cannot run on
    /// (not on this machine, offline, or outside its cpuset).
    fn check_cpus_allowed(&self, job: &JobOptions) -> Result<(), RunError> {
        let Some(allowed) = &job.cpus_allowed else {
            return Ok(());
        };
        let here = &self.placeable;
        let missing = allowed.difference(here);
        if missing.is_empty() {
            return Ok(());
        }
        Err(usage(format!(
            "job `{}`: cpus_allowed={allowed} names CPUs {missing} that this process cannot run on (online CPUs of its cpuset: {here}); choose among those",
            job.name
        )))
    }

    /// The least used of `candidates` (the first on a tie) that `usable`
    /// accepts.
    fn least_used(&self, candidates: &[usize], usable: impl Fn(usize) -> bool) -> Option<usize> {
        candidates
            .iter()
            .copied()
            .filter(|&cpu| usable(cpu))
            .min_by_key(|cpu| self.load.get(cpu).copied().unwrap_or(0))
    }

    /// The CPUs a kernel-engine thread is pinned to: the whole set with
    /// `cpus_allowed_policy=shared`, else one CPU.
    fn kernel_cpus(&mut self, job: &JobOptions, clone: u32) -> CpuSet {
        if let (Some(set), CpusPolicy::Shared) = (&job.cpus_allowed, job.cpus_allowed_policy) {
            for cpu in set.iter() {
                *self.load.entry(cpu).or_default() += 1;
            }
            return set.clone();
        }
        let candidates = self.candidates(job, clone);
        let cpu = self.least_used(&candidates, |_| true).unwrap_or(0);
        *self.load.entry(cpu).or_default() += 1;
        CpuSet::single(cpu)
    }

    /// The CPU whose isonvme handle thread `clone` of `job` takes (and is
    /// pinned to).
    fn isonvme_cpu(
        &mut self,
        job: &JobOptions,
        clone: u32,
        device: &mut OpenDevice,
    ) -> Result<usize, RunError> {
        let candidates = self.candidates(job, clone);
        let runtime = &device.runtime;
        let taken = &device.taken;
        let cpu = self
            .least_used(&candidates, |cpu| {
                !taken.contains(cpu) && runtime.cpu_counters(cpu).is_some()
            })
            .ok_or_else(|| {
                let listed = candidates
                    .iter()
                    .map(usize::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                usage(format!(
                    "job `{}` (thread {}): no CPU left for it on {}: every CPU it may use ({listed}) already runs a job thread there, and isonvme gives each CPU one handle; give cpus_allowed more CPUs or lower numjobs",
                    job.name,
                    clone + 1,
                    device.report.filename
                ))
            })?;
        device.taken.insert(cpu);
        *self.load.entry(cpu).or_default() += 1;
        Ok(cpu)
    }
}

fn seed(job: &JobOptions, jobnum: usize) -> u64 {
    let base = if job.randrepeat {
        0x0f10_5eed_0000_0001
    } else {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    };
    base ^ (jobnum as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

fn region(job: &JobOptions, total: u64, align: u64) -> Result<(u64, u64), RunError> {
    let start = job.offset.resolve(total);
    if !start.is_multiple_of(align) {
        return Err(usage(format!(
            "job `{}`: offset={start} is not a multiple of {align} bytes",
            job.name
        )));
    }
    if start >= total {
        return Err(usage(format!(
            "job `{}`: offset={start} is beyond the end ({total} bytes)",
            job.name
        )));
    }
    let len = job
        .size
        .map_or(total - start, |size| size.resolve(total))
        .min(total - start);
    let len = len / job.bs * job.bs;
    if len == 0 {
        return Err(usage(format!(
            "job `{}`: the region ({} bytes from offset {start}) holds no block of bs={}",
            job.name,
            total - start,
            job.bs
        )));
    }
    Ok((start, len))
}

/// Refuses jobs whose I/O buffers (bs × iodepth per thread) would not fit
/// in the memory this machine has available.
fn check_memory(jobs: &[JobOptions]) -> Result<(), RunError> {
    let needed: u128 = jobs
        .iter()
        .map(|job| {
            let depth = if job.engine() == EngineKind::Psync {
                1
            } else {
                job.iodepth
            };
            u128::from(job.bs) * u128::from(depth) * u128::from(job.numjobs)
        })
        .sum();
    let Some(available) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("MemAvailable:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .map(|kib| u128::from(kib) * 1024)
    else {
        return Ok(());
    };
    if needed > available {
        return Err(usage(format!(
            "the jobs need {} of I/O buffers (bs x iodepth x numjobs) but this machine has {} available: lower bs, iodepth or numjobs",
            units::bytes_binary(u64::try_from(needed).unwrap_or(u64::MAX)),
            units::bytes_binary(u64::try_from(available).unwrap_or(u64::MAX))
        )));
    }
    Ok(())
}

/// Resolves the jobs of `config` with `overrides` applied.
pub fn resolve_jobs(
    config: &Config,
    overrides: &[RawOption],
) -> Result<(Vec<JobOptions>, Vec<String>), RunError> {
    let mut jobs = Vec::new();
    let mut notes = Vec::new();
    for (index, recipe) in config.recipes.iter().enumerate() {
        let origins = config.origins.get(index).map_or(&[][..], Vec::as_slice);
        let job =
            config::resolve_with_origins(recipe, origins, overrides).map_err(|e| usage(e.0))?;
        notes.extend(job.validate().map_err(|e| usage(e.0))?);
        jobs.push(job);
    }
    Ok((jobs, notes))
}

/// Runs `config` (with `overrides` applied to every job).
pub fn execute(config: &Config, overrides: &[RawOption]) -> Result<Outcome, RunError> {
    let (jobs, mut notes) = resolve_jobs(config, overrides)?;
    let topology = SysfsRoot::host()
        .topology()
        .map_err(|e| failure(format!("reading this machine's CPU topology: {e}")))?;

    // isonvme devices, one per filename.
    let mut devices: BTreeMap<String, OpenDevice> = BTreeMap::new();
    let mut by_device: BTreeMap<String, Vec<&JobOptions>> = BTreeMap::new();
    let mut by_path: BTreeMap<PathBuf, Vec<&JobOptions>> = BTreeMap::new();
    for job in &jobs {
        match job.engine() {
            EngineKind::Isonvme => by_device.entry(job.target()).or_default().push(job),
            _ => by_path
                .entry(PathBuf::from(job.target()))
                .or_default()
                .push(job),
        }
    }
    if jobs.iter().any(|j| j.engine() == EngineKind::IoUring) {
        if let Err(error) = crate::engine::Uring::available() {
            return Err(failure(format!(
                "ioengine=io_uring is not available here: {error} (io_uring may be disabled by /proc/sys/kernel/io_uring_disabled or a container's seccomp policy); use ioengine=psync"
            )));
        }
    }
    check_memory(&jobs)?;
    for (name, device_jobs) in &by_device {
        devices.insert(name.clone(), open_device(name, device_jobs, &topology)?);
    }
    let mut kernel: BTreeMap<PathBuf, KernelTarget> = BTreeMap::new();
    for (path, path_jobs) in &by_path {
        kernel.insert(
            path.clone(),
            prepare_kernel_target(path, path_jobs, &mut notes)?,
        );
    }
    let split = match devices.values().next() {
        Some(device) => device.report.split.clone(),
        None => split_for(&jobs[0], &topology)?,
    };

    // Job threads.
    let mut placer = Placer::new(&split);
    for job in &jobs {
        placer.check_cpus_allowed(job)?;
    }
    let mut plans = Vec::new();
    for job in &jobs {
        for clone in 0..job.numjobs {
            let jobnum = plans.len();
            let (engine, pin, total, align) = match job.engine() {
                EngineKind::Isonvme => {
                    let target = job.target();
                    let Some(device) = devices.get_mut(&target) else {
                        return Err(failure(format!("{target}: the device was not opened")));
                    };
                    let cpu = placer.isonvme_cpu(job, clone, device)?;
                    let handle = device.runtime.handle(cpu).map_err(|e| {
                        failure(format!("job `{}`: the handle of CPU {cpu}: {e}", job.name))
                    })?;
                    let (nsid, blocks, block_size) = device.report.namespace;
                    (
                        EngineSetup::Isonvme {
                            handle: Box::new(handle),
                            nsid,
                            block_size,
                        },
                        CpuSet::single(cpu),
                        blocks * u64::from(block_size),
                        u64::from(block_size),
                    )
                }
                kind => {
                    let path = PathBuf::from(job.target());
                    let Some(target) = kernel.get(&path) else {
                        return Err(failure(format!("{}: not prepared", path.display())));
                    };
                    let direct = job.direct && target.direct;
                    let engine = if kind == EngineKind::IoUring {
                        KernelEngine::IoUring
                    } else {
                        KernelEngine::Psync
                    };
                    (
                        EngineSetup::Kernel {
                            engine,
                            path,
                            direct,
                            write: job.rw.writes(),
                            hipri: job.hipri,
                        },
                        placer.kernel_cpus(job, clone),
                        target.total,
                        if direct { 512 } else { 1 },
                    )
                }
            };
            let (region_start, region_len) = region(job, total, align)?;
            plans.push(ThreadPlan {
                options: job.clone(),
                jobnum,
                pin: Some(pin),
                engine,
                region_start,
                region_len,
                target: job.target(),
                seed: seed(job, jobnum),
            });
        }
    }

    // Baselines for the isolation report.
    let host_irqs = isonvme::irq::HostIrqs::host();
    let mut kernel_irqs: Vec<u32> = kernel.values().flat_map(|t| t.irqs.clone()).collect();
    for device in devices.values() {
        kernel_irqs.extend(&device.vfio_irqs);
    }
    kernel_irqs.sort_unstable();
    kernel_irqs.dedup();
    let irq_before = (!kernel_irqs.is_empty())
        .then(|| host_irqs.interrupt_counts(&kernel_irqs).ok())
        .flatten();

    // The main thread shows progress; keep it off the isolated CPUs.
    let saved_affinity = get_affinity();
    let housekeeping_here = split
        .housekeeping
        .intersection(&isonvme::os::runnable_cpus());
    if !split.isolated.is_empty() && !housekeeping_here.is_empty() {
        let _ = isonvme::os::pin_current_thread(&housekeeping_here);
    }

    let show_progress = match config.eta {
        Eta::Always => true,
        Eta::Never => false,
        Eta::Auto => std::io::stdout().is_terminal(),
    };
    let lives: Vec<Live> = plans.iter().map(|_| Live::default()).collect();
    let gate = StartGate::new();
    let summaries: Vec<JobSummary> = plans
        .iter()
        .map(|p| JobSummary {
            rw: p.options.rw,
            total: p.options.runtime.map(|r| r + p.options.ramp_time),
            time_based: p.options.time_based,
            region: p.region_len,
        })
        .collect();
    let started = SystemTime::now();
    let threads = plans.len();
    let joined: Result<Vec<JobResult>, RunError> = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(threads);
        for (plan, live) in plans.into_iter().zip(&lives) {
            let gate = &gate;
            let name = format!("bench-{}", plan.jobnum);
            match std::thread::Builder::new()
                .name(name)
                .spawn_scoped(scope, move || job::run(plan, live, gate))
            {
                Ok(handle) => handles.push(handle),
                Err(error) => {
                    gate.cancel();
                    return Err(failure(format!(
                        "starting job thread {} of {threads}: {error} (lower numjobs?)",
                        handles.len() + 1
                    )));
                }
            }
        }
        // A thread that finished before the start can only have panicked.
        let opened = gate.open_when(threads, || handles.iter().any(|h| h.is_finished()));
        let mut progress = Progress::new(show_progress && opened);
        while !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
            progress.tick(&lives, &summaries);
        }
        progress.finish();
        let mut results = Vec::with_capacity(threads);
        for (index, handle) in handles.into_iter().enumerate() {
            match handle.join() {
                Ok(result) => results.push(result),
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "no message".to_owned());
                    return Err(failure(format!(
                        "job thread {index} failed unexpectedly ({what}); please report this as a bug"
                    )));
                }
            }
        }
        Ok(results)
    });
    if let Some(saved) = saved_affinity {
        let _ = isonvme::os::pin_current_thread(&saved);
    }
    let results = joined?;

    // The isolation report.
    let mut activity = CpuActivity::default();
    let irq_after = irq_before
        .as_ref()
        .and_then(|_| host_irqs.interrupt_counts(&kernel_irqs).ok());
    if let (Some(before), Some(after)) = (&irq_before, &irq_after) {
        for (irq, counts) in after {
            let base = before.get(irq);
            for (cpu, count) in counts.iter().enumerate() {
                let old = base.and_then(|b| b.get(cpu)).copied().unwrap_or(0);
                *activity.interrupts.entry(cpu).or_default() += count.saturating_sub(old);
            }
        }
        activity.interrupt_sources.push(format!(
            "/proc/interrupts deltas of IRQs {}",
            kernel_irqs
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let mut reports = Vec::new();
    for (_, device) in devices {
        let after = vector_snapshot(&device.runtime);
        let mut report_entry = device.report;
        for ((state, old), new) in device
            .runtime
            .vectors()
            .iter()
            .zip(&device.baseline)
            .zip(&after)
        {
            let interrupts = new.0 - old.0;
            let completions = new.1 - old.1;
            let handled: Vec<u64> = new
                .2
                .iter()
                .zip(old.2.iter().chain(std::iter::repeat(&0)))
                .map(|(n, o)| n - o)
                .collect();
            for (cpu, &count) in handled.iter().enumerate() {
                if count > 0 {
                    *activity.completions.entry(cpu).or_default() += count;
                }
            }
            // Without /proc/interrupts (the simulator), a vector's
            // interrupts are the wake-ups of its completion thread: count
            // them where that thread handled the completions.
            if device.vfio_irqs.is_empty() {
                let total: u64 = handled.iter().sum();
                if total > 0 {
                    for (cpu, &count) in handled.iter().enumerate() {
                        let share = (interrupts as u128 * count as u128 / total as u128) as u64;
                        if count > 0 {
                            *activity.interrupts.entry(cpu).or_default() += share;
                        }
                    }
                } else if let Some(cpu) = state.target().first() {
                    *activity.interrupts.entry(cpu).or_default() += interrupts;
                }
            }
            report_entry
                .vectors
                .push((state.vector, state.target(), interrupts, completions));
        }
        if device.vfio_irqs.is_empty() {
            activity.interrupt_sources.push(format!(
                "{}: the runtime's vector counters (interrupt wake-ups of the completion threads)",
                report_entry.filename
            ));
        }
        for queue in &device.runtime.layout().inline {
            if let Some(counters) = device.runtime.cpu_counters(queue.cpu) {
                let reaped = counters
                    .reaped_inline
                    .load(std::sync::atomic::Ordering::Relaxed);
                if reaped > 0 {
                    *activity.inline.entry(queue.cpu).or_default() += reaped;
                }
            }
        }
        activity.completion_counted = true;
        if let Some(recovery) = recovery_note(&device.runtime) {
            notes.push(format!("{}: {recovery}", report_entry.filename));
        }
        let events = device.runtime.async_events();
        if !events.is_empty() {
            let events: Vec<String> = events.iter().map(ToString::to_string).collect();
            notes.push(format!(
                "{}: asynchronous events from the controller: {}",
                report_entry.filename,
                events.join("; ")
            ));
        }
        if let Err(error) = device.runtime.close() {
            notes.push(format!("{}: closing: {error}", report_entry.filename));
        }
        reports.push(report_entry);
    }
    let isolation = report::isolation_report(&split, &activity, &results);
    Ok(Outcome {
        jobs: results,
        devices: reports,
        isolation,
        started,
        notes,
        global_options: config.global_options.clone(),
        default_run: config.default_run,
    })
}

/// What the progress line needs to know about a job thread.
struct JobSummary {
    rw: Rw,
    /// Ramp plus runtime, if limited by time.
    total: Option<Duration>,
    time_based: bool,
    /// Bytes of its region.
    region: u64,
}

/// fio's live status line, on stdout (only when it is a terminal, unless
/// `--eta=always`), overwritten in place and erased before the report.
struct Progress {
    enabled: bool,
    started: Instant,
    last: Instant,
    last_bytes: [u64; 2],
    last_ios: [u64; 2],
    shown: usize,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        let now = Instant::now();
        Progress {
            enabled,
            started: now,
            last: now,
            last_bytes: [0; 2],
            last_ios: [0; 2],
            shown: 0,
        }
    }

    fn tick(&mut self, lives: &[Live], jobs: &[JobSummary]) {
        if !self.enabled || self.last.elapsed() < Duration::from_millis(500) {
            return;
        }
        let now = Instant::now();
        let seconds = now.duration_since(self.last).as_secs_f64();
        let mut bytes = [0u64; 2];
        let mut ios = [0u64; 2];
        for live in lives {
            for d in 0..2 {
                bytes[d] += live.bytes[d].load(std::sync::atomic::Ordering::Relaxed);
                ios[d] += live.ios[d].load(std::sync::atomic::Ordering::Relaxed);
            }
        }
        let rate = |d: usize| (bytes[d] - self.last_bytes[d]) as f64 / seconds;
        let iops = |d: usize| (ios[d] - self.last_ios[d]) as f64 / seconds;
        let line = progress_line(
            lives,
            jobs,
            now.duration_since(self.started),
            [rate(0), rate(1)],
            [iops(0), iops(1)],
        );
        self.last = now;
        self.last_bytes = bytes;
        self.last_ios = ios;
        let pad = self.shown.saturating_sub(line.len());
        let mut stdout = std::io::stdout().lock();
        let _ = write!(stdout, "\r{line}{}", " ".repeat(pad));
        let _ = stdout.flush();
        self.shown = line.len();
    }

    fn finish(&mut self) {
        if self.enabled && self.shown > 0 {
            let mut stdout = std::io::stdout().lock();
            let _ = write!(stdout, "\r{}\r", " ".repeat(self.shown));
            let _ = stdout.flush();
        }
    }
}

/// `Jobs: 1 (f=1): [r(1)][45.0%][r=1234MiB/s][r=316k IOPS][eta 00m:05s]`.
fn progress_line(
    lives: &[Live],
    jobs: &[JobSummary],
    elapsed: Duration,
    rate: [f64; 2],
    iops: [f64; 2],
) -> String {
    let mut states = String::new();
    let mut running = 0;
    let mut last: Option<(char, usize)> = None;
    let mut fraction: f64 = 0.0;
    let mut remaining = Duration::ZERO;
    for (live, job) in lives.iter().zip(jobs) {
        let c = match live.state() {
            State::Setup => 'P',
            State::Ramp => '/',
            State::Running => job.rw.status_char(),
            State::Verifying => 'V',
            State::Done => '_',
        };
        if !matches!(live.state(), State::Done) {
            running += 1;
        }
        match &mut last {
            Some((prev, count)) if *prev == c => *count += 1,
            _ => {
                if let Some((prev, count)) = last.take() {
                    states.push_str(&format!("{prev}({count})"));
                }
                last = Some((c, 1));
            }
        }
        let done_bytes: u64 = live
            .bytes
            .iter()
            .map(|b| b.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let by_size = done_bytes as f64 / job.region.max(1) as f64;
        let job_fraction = match job.total {
            Some(total) if job.time_based || done_bytes < job.region => {
                let by_time = elapsed.as_secs_f64() / total.as_secs_f64().max(1e-9);
                remaining = remaining.max(total.saturating_sub(elapsed));
                if job.time_based {
                    by_time
                } else {
                    by_time.max(by_size)
                }
            }
            _ => by_size,
        };
        fraction = fraction.max(job_fraction.min(1.0));
    }
    if let Some((prev, count)) = last {
        states.push_str(&format!("{prev}({count})"));
    }
    let mut line = format!(
        "Jobs: {running} (f={running}): [{states}][{:.1}%]",
        fraction * 100.0
    );
    let parts: Vec<String> = ["r", "w"]
        .iter()
        .enumerate()
        .filter(|(d, _)| rate[*d] > 0.0)
        .map(|(d, name)| format!("{name}={}", units::rate_binary(rate[d])))
        .collect();
    if !parts.is_empty() {
        line.push_str(&format!("[{}]", parts.join(",")));
        let parts: Vec<String> = ["r", "w"]
            .iter()
            .enumerate()
            .filter(|(d, _)| rate[*d] > 0.0)
            .map(|(d, name)| format!("{name}={}", units::count(iops[d])))
            .collect();
        line.push_str(&format!("[{} IOPS]", parts.join(",")));
    }
    line.push_str(&format!("[eta {}]", units::eta(remaining)));
    line
}

/// What the runtime's recovery did during the run, when it did anything:
/// timeouts, aborts, resets and their duration, retries, commands failed.
fn recovery_note(runtime: &Runtime) -> Option<String> {
    use std::sync::atomic::Ordering::Relaxed;
    let recovery = runtime.recovery();
    let (mut retried, mut resubmitted, mut failed) = (0, 0, 0);
    for cpu in runtime
        .plan()
        .housekeeping
        .union(&runtime.plan().isolated)
        .iter()
    {
        if let Some(counters) = runtime.cpu_counters(cpu) {
            retried += counters.retried.load(Relaxed);
            resubmitted += counters.resubmitted.load(Relaxed);
            failed += counters.failed_by_host.load(Relaxed);
        }
    }
    let timeouts = recovery.timeouts.load(Relaxed);
    let resets = recovery.resets.load(Relaxed);
    let fatal = recovery.fatal_status.load(Relaxed);
    if timeouts + resets + retried + failed + fatal == 0
        && runtime.device_state() == isonvme::runtime::DeviceState::Alive
    {
        return None;
    }
    let mut text = format!(
        "recovery: {timeouts} commands timed out, {} aborts sent ({} done), {fatal} fatal statuses, {resets} controller resets",
        recovery.aborts_sent.load(Relaxed),
        recovery.aborts_done.load(Relaxed),
    );
    if resets > 0 {
        text.push_str(&format!(
            " (last {:.1} ms, longest {:.1} ms)",
            recovery.last_reset_micros.load(Relaxed) as f64 / 1000.0,
            recovery.max_reset_micros.load(Relaxed) as f64 / 1000.0
        ));
    }
    text.push_str(&format!(
        ", {retried} commands retried after an error status, {resubmitted} resubmitted after a reset, {failed} failed by the driver"
    ));
    match runtime.device_state() {
        isonvme::runtime::DeviceState::Alive => {}
        isonvme::runtime::DeviceState::Removed => text.push_str("; the device was removed"),
        isonvme::runtime::DeviceState::Failed => {
            text.push_str("; a reset did not bring the controller back")
        }
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_reads_like_fio() {
        let lives = [Live::default()];
        lives[0]
            .state
            .store(State::Running as u8, std::sync::atomic::Ordering::Relaxed);
        let line = progress_line(
            &lives,
            &[JobSummary {
                rw: Rw::RandRead,
                total: Some(Duration::from_secs(10)),
                time_based: true,
                region: 1 << 30,
            }],
            Duration::from_millis(4500),
            [1234.0 * 1048576.0, 0.0],
            [316_000.0, 0.0],
        );
        assert_eq!(
            line,
            "Jobs: 1 (f=1): [r(1)][45.0%][r=1234MiB/s][r=316k IOPS][eta 00m:05s]"
        );
    }
}
