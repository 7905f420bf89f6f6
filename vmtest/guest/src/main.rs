//! `isonvme-vmtest`: the checks the VM test (`vmtest/run.sh`) runs inside a
//! QEMU guest against QEMU's emulated NVMe controller, bound to vfio-pci
//! behind an emulated Intel IOMMU.
//!
//! ```sh
//! isonvme-vmtest all --device 0000:00:04.0 --namespaces 1,2 --cpus 4 --isolated 2-3
//! ```
//!
//! Subcommands, each a self-contained check that opens and closes the
//! controller: `preflight` (sysfs: bound to vfio-pci, IOMMU group node,
//! hugepages), `vfio-probe` (raw VFIO and one polled admin command, without
//! the driver: tells a broken VM from a broken driver), `identify`, `io` (write/read/verify on every namespace
//! through one polled queue pair), `runtime` (the isolation runtime in each
//! completion mode — interrupt, poll, hybrid, and inline on the isolated
//! CPUs: queue layout against the plan, I/O from a thread pinned to every
//! CPU including the isolated ones, and no interrupt of any of the device's
//! `vfio-msix` vectors, the admin vector included, counted on an isolated
//! CPU in `/proc/interrupts` from before the runtime opens to after it
//! closes), and `all` (every check in that order).
//! Exit status: 0 when every check passed, 1 when a check failed, 2 on bad
//! arguments.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use isonvme::dma::DmaBuffer;
use isonvme::mapping::CpuSet;
use isonvme::runtime::{CompletionMode, CpuHandle, InlineCpus, Runtime, RuntimeOptions};
use isonvme::{Controller, ControllerOptions, IoCommand, IoQueuePair};

#[derive(Parser)]
#[command(about = "isonvme checks run inside the VM test's guest")]
struct Cli {
    #[command(subcommand)]
    check: Check,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// The device is bound to vfio-pci, its IOMMU group node exists, and
    /// hugepages are reserved.
    Preflight,
    /// Raw VFIO without the driver: container, group, BAR0, MSI-X count,
    /// a DMA mapping, and Identify Controller by polling through the IOMMU.
    VfioProbe,
    /// Identify the controller and check its namespaces (and serial).
    Identify,
    /// Write, read back and verify on every namespace (polled queue pair).
    Io,
    /// The isolation runtime: queue layout, I/O from every CPU, interrupts.
    Runtime,
    /// Controller resets during I/O: a thread on the first isolated CPU
    /// writes blocks at queue depth 8 while the controller is reset
    /// `--resets` times; each reset's time and the longest write are
    /// reported, and every block written must read back intact. Not part
    /// of `all`.
    Reset,
    /// Every check above, in order.
    All,
}

#[derive(clap::Args, Clone)]
struct Opts {
    /// PCI address of the controller under test (bound to vfio-pci).
    #[arg(long, global = true, default_value = "0000:00:04.0")]
    device: String,
    /// Namespaces to exercise (they must all be active).
    #[arg(long, global = true, value_delimiter = ',', default_value = "1,2")]
    namespaces: Vec<u32>,
    /// The serial number QEMU was given (`-device nvme,serial=...`).
    #[arg(long, global = true)]
    expect_serial: Option<String>,
    /// CPUs the guest has (`-smp`): one SQ per CPU is expected.
    #[arg(long, global = true, default_value_t = 4)]
    cpus: usize,
    /// The isolated CPUs of the guest (`isolcpus=` on its command line).
    #[arg(long, global = true, default_value = "2-3")]
    isolated: CpuSet,
    /// I/O vectors the plan must use (one per housekeeping CPU here).
    #[arg(long, global = true, default_value_t = 2)]
    io_vectors: usize,
    /// Bytes per write/read command.
    #[arg(long, global = true, default_value_t = 16 * 1024)]
    bytes: usize,
    /// How long one I/O may take (TCG is slow).
    #[arg(long, global = true, default_value_t = 60)]
    io_timeout_secs: u64,
    /// `reset`: how many controller resets.
    #[arg(long, global = true, default_value_t = 5)]
    resets: usize,
}

/// A failed check, with what was expected and what was seen.
struct Failure(String);

impl<E: Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure(error.to_string())
    }
}

type Outcome<T = ()> = Result<T, Failure>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(Failure(format!($($fmt)+)));
        }
    };
}

mod probe;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let checks: &[Check] = match cli.check {
        Check::All => &[
            Check::Preflight,
            Check::VfioProbe,
            Check::Identify,
            Check::Io,
            Check::Runtime,
        ],
        ref one => std::slice::from_ref(one),
    };
    let mut failed = 0;
    for &check in checks {
        let name = check_name(check);
        println!("isonvme-vmtest: --- {name} ---");
        let start = Instant::now();
        let outcome = match check {
            Check::Preflight => preflight(&cli.opts),
            Check::VfioProbe => probe::vfio_probe(&cli.opts),
            Check::Identify => identify(&cli.opts),
            Check::Io => io(&cli.opts),
            Check::Runtime => runtime(&cli.opts),
            Check::Reset => reset(&cli.opts),
            Check::All => unreachable!("expanded above"),
        };
        match outcome {
            Ok(()) => println!(
                "isonvme-vmtest: PASS {name} ({:.1} s)",
                start.elapsed().as_secs_f64()
            ),
            Err(Failure(why)) => {
                failed += 1;
                println!("isonvme-vmtest: FAIL {name}: {why}");
                if why.contains("no VFIO back-end") {
                    println!(
                        "isonvme-vmtest: (expected until the VFIO back-end, driver/src/vfio/, lands)"
                    );
                }
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn check_name(check: Check) -> &'static str {
    match check {
        Check::Preflight => "preflight",
        Check::VfioProbe => "vfio-probe",
        Check::Identify => "identify",
        Check::Io => "io",
        Check::Runtime => "runtime",
        Check::Reset => "reset",
        Check::All => "all",
    }
}

fn open(opts: &Opts) -> Outcome<Controller> {
    isonvme::device::open(&opts.device, ControllerOptions::default())
        .map_err(|e| Failure(format!("opening {}: {e}", opts.device)))
}

/// What sysfs says about the device, before the driver touches it.
fn preflight(opts: &Opts) -> Outcome {
    let dev = Path::new("/sys/bus/pci/devices").join(&opts.device);
    ensure!(dev.exists(), "{} does not exist", dev.display());
    let class = std::fs::read_to_string(dev.join("class"))?;
    ensure!(
        class.trim() == "0x010802",
        "{}: class {} is not an NVMe controller (0x010802)",
        opts.device,
        class.trim()
    );
    let driver = link_name(&dev.join("driver")).unwrap_or_else(|| "(none)".into());
    ensure!(
        driver == "vfio-pci",
        "{} is bound to {driver}, not vfio-pci",
        opts.device
    );
    let group = link_name(&dev.join("iommu_group"))
        .ok_or_else(|| Failure(format!("{} has no IOMMU group", opts.device)))?;
    let node = Path::new("/dev/vfio").join(&group);
    ensure!(node.exists(), "{} does not exist", node.display());
    let hugepages =
        std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
            .unwrap_or_default();
    let hugepages: u64 = hugepages.trim().parse().unwrap_or(0);
    ensure!(
        hugepages > 0,
        "no free 2 MiB hugepages (boot the guest with hugepages=N)"
    );
    println!(
        "  {} bound to {driver}, IOMMU group {group} ({}), {hugepages} free 2 MiB hugepages",
        opts.device,
        node.display()
    );
    Ok(())
}

fn link_name(path: &Path) -> Option<String> {
    std::fs::read_link(path)
        .ok()?
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
}

fn identify(opts: &Opts) -> Outcome {
    let controller = open(opts)?;
    let info = controller.info();
    let id = &info.identify;
    println!(
        "  {}: vid {:#06x} sn `{}` mn `{}` fr `{}` ver {}, nn {}, {} SQs/{} CQs granted, {} MSI-X vectors, MDTS {} KiB",
        info.name,
        id.vid,
        id.serial().trim(),
        id.model().trim(),
        id.firmware().trim(),
        info.version,
        id.nn,
        info.granted_sqs,
        info.granted_cqs,
        info.max_vectors,
        info.max_transfer / 1024
    );
    for ns in &info.namespaces {
        println!(
            "  namespace {}: {} blocks of {} bytes",
            ns.id, ns.blocks, ns.block_size
        );
    }
    let result = (|| -> Outcome {
        if let Some(serial) = &opts.expect_serial {
            ensure!(
                id.serial().trim() == serial,
                "serial `{}`, expected `{serial}`",
                id.serial().trim()
            );
        }
        for &nsid in &opts.namespaces {
            ensure!(
                info.namespaces.iter().any(|ns| ns.id == nsid),
                "namespace {nsid} is not active (active: {:?})",
                info.namespaces.iter().map(|ns| ns.id).collect::<Vec<_>>()
            );
        }
        Ok(())
    })();
    let shutdown = controller.shutdown();
    result?;
    shutdown.map_err(|e| Failure(format!("shutdown: {e}")))
}

/// A pattern no other block, namespace or run position produces.
fn fill(buffer: &mut DmaBuffer, nsid: u32, lba: u64, salt: u64) {
    for (index, byte) in buffer.as_mut_slice().iter_mut().enumerate() {
        let x = (index as u64) ^ (lba << 20) ^ (u64::from(nsid) << 40) ^ (salt << 48);
        *byte = (x ^ (x >> 9) ^ (x >> 17)).wrapping_mul(0x9e37_79b9) as u8;
    }
}

fn first_mismatch(a: &DmaBuffer, b: &DmaBuffer) -> Option<usize> {
    a.as_slice()
        .iter()
        .zip(b.as_slice())
        .position(|(x, y)| x != y)
}

fn io(opts: &Opts) -> Outcome {
    let controller = open(opts)?;
    let result = io_on(&controller, opts);
    let shutdown = controller.shutdown();
    result?;
    shutdown.map_err(|e| Failure(format!("shutdown: {e}")))
}

fn io_on(controller: &Controller, opts: &Opts) -> Outcome {
    let mut queue = IoQueuePair::create(controller, 1, 64, None)?;
    let pool = controller.pool();
    // Same LBAs on every namespace with different data: a controller that
    // mixed namespaces up would fail the verify.
    let mut written = Vec::new();
    for &nsid in &opts.namespaces {
        let ns = controller.namespace(nsid)?.clone();
        ensure!(
            opts.bytes.is_multiple_of(ns.block_size as usize),
            "--bytes {} is not a multiple of namespace {nsid}'s {}-byte blocks",
            opts.bytes,
            ns.block_size
        );
        let blocks = (opts.bytes / ns.block_size as usize) as u64;
        ensure!(ns.blocks >= 2 * blocks, "namespace {nsid} is too small");
        for lba in [0, ns.blocks - blocks] {
            let mut data = pool.alloc(opts.bytes)?;
            fill(&mut data, nsid, lba, 1);
            queue.write(nsid, lba, &data)?;
            written.push((nsid, lba, data));
        }
    }
    for (nsid, lba, data) in &written {
        let mut back = pool.alloc(opts.bytes)?;
        queue.read(*nsid, *lba, &mut back)?;
        if let Some(offset) = first_mismatch(data, &back) {
            return Err(Failure(format!(
                "namespace {nsid} LBA {lba}: read back differs at byte {offset}"
            )));
        }
        println!(
            "  namespace {nsid} LBA {lba}: wrote, read back and verified {} bytes",
            opts.bytes
        );
    }
    Ok(())
}

fn runtime(opts: &Opts) -> Outcome {
    let modes = [
        ("interrupt", CompletionMode::Interrupt, InlineCpus::None),
        ("poll", CompletionMode::Poll, InlineCpus::None),
        (
            "hybrid",
            CompletionMode::Hybrid {
                spin: Duration::from_micros(50),
            },
            InlineCpus::None,
        ),
        (
            "inline on isolated CPUs",
            CompletionMode::Interrupt,
            InlineCpus::Isolated,
        ),
    ];
    for (name, mode, inline) in modes {
        println!("  mode {name}:");
        runtime_in_mode(opts, mode, inline)
            .map_err(|Failure(why)| Failure(format!("mode {name}: {why}")))?;
    }
    Ok(())
}

/// One mode: open, check the layout, I/O from every CPU, close; then the
/// device's interrupts counted on each CPU over the whole life of the
/// runtime. The VFIO device is kept open past `close` (a clone of the
/// transport) so its `vfio-msix` lines are still in `/proc/interrupts`.
fn runtime_in_mode(opts: &Opts, mode: CompletionMode, inline: InlineCpus) -> Outcome {
    let before = Interrupts::read()?;
    let controller = open(opts)?;
    let transport = std::sync::Arc::clone(controller.transport());
    let runtime_options = RuntimeOptions {
        mode,
        inline: inline.clone(),
        depth: 16,
        ..RuntimeOptions::default()
    };
    let runtime = Runtime::open(controller, runtime_options)
        .map_err(|e| Failure(format!("starting the runtime: {e}")))?;
    let result = runtime_checks(&runtime, opts, &inline);
    let close = runtime.close();
    let after = Interrupts::read();
    drop(transport);
    result?;
    close.map_err(|e| Failure(format!("closing the runtime: {e}")))?;
    let after = after?;

    // What the guest kernel counted, every vector of this device.
    let device = format!("({})", opts.device);
    let delta = after.delta(&before, |name| {
        name.contains("vfio-msix") && name.contains(&device)
    });
    let mut total = 0;
    for (line, per_cpu) in &delta {
        println!("    /proc/interrupts {line}: {per_cpu:?} (by CPU, open to close)");
        total += per_cpu.values().sum::<u64>();
        for cpu in opts.isolated.iter() {
            let count = per_cpu.get(&cpu).copied().unwrap_or(0);
            ensure!(
                count == 0,
                "{count} interrupts of `{line}` were counted on isolated CPU {cpu}"
            );
        }
    }
    ensure!(
        total > 0,
        "no vfio-msix interrupt of {} was counted from open to close: the check proves nothing \
         (admin commands alone should fire vector 0)",
        opts.device
    );
    println!(
        "    {total} vfio-msix interrupts from open to close, none on isolated CPUs {}",
        opts.isolated
    );
    Ok(())
}

fn runtime_checks(runtime: &Runtime, opts: &Opts, inline: &InlineCpus) -> Outcome {
    let plan = runtime.plan();
    let layout = runtime.layout().clone();
    for line in layout.to_string().lines() {
        println!("    {line}");
    }
    let all: CpuSet = (0..opts.cpus).collect();
    let housekeeping = all.difference(&opts.isolated);
    ensure!(
        plan.isolated == opts.isolated,
        "the plan isolates CPUs {}, expected {} (guest command line: {})",
        plan.isolated,
        opts.isolated,
        std::fs::read_to_string("/proc/cmdline")
            .unwrap_or_default()
            .trim()
    );
    ensure!(
        plan.housekeeping == housekeeping,
        "the plan's housekeeping CPUs are {}, expected {housekeeping}",
        plan.housekeeping
    );
    ensure!(
        layout.vectors.len() == opts.io_vectors,
        "{} I/O vectors, expected {}",
        layout.vectors.len(),
        opts.io_vectors
    );
    for (vector, _, home) in &layout.vectors {
        ensure!(
            !home.is_empty() && home.is_subset(&housekeeping),
            "vector {vector} is served on CPUs {home}, not within the housekeeping CPUs {housekeeping}"
        );
    }
    ensure!(
        !layout.shared_sqs,
        "SQs are shared: the controller granted fewer SQs than the {} CPUs (raise max_ioqpairs)",
        opts.cpus
    );
    let expected_inline = match inline {
        InlineCpus::Isolated => opts.isolated.clone(),
        _ => CpuSet::new(),
    };
    ensure!(
        layout.inline_cpus() == expected_inline && layout.inline_refused.is_empty(),
        "inline queue pairs on CPUs {} (refused {}), expected {expected_inline}",
        layout.inline_cpus(),
        layout.inline_refused
    );
    ensure!(
        layout.sqs.len() + layout.inline.len() == opts.cpus,
        "{} SQs, expected one per CPU ({})",
        layout.sqs.len() + layout.inline.len(),
        opts.cpus
    );
    let mut covered = layout.inline_cpus();
    for (sq, cq, cpus) in &layout.sqs {
        ensure!(
            layout.vectors.iter().any(|v| v.1 == *cq),
            "SQ {sq} completes to CQ {cq}, which no I/O vector serves"
        );
        covered.union_with(cpus);
    }
    ensure!(covered == all, "SQs serve CPUs {covered}, expected {all}");
    println!("    layout follows the plan");

    let timeout = Duration::from_secs(opts.io_timeout_secs);
    let mut handles = Vec::new();
    for cpu in 0..opts.cpus {
        handles.push(runtime.handle(cpu)?);
    }
    let namespaces: Vec<_> = opts
        .namespaces
        .iter()
        .map(|&nsid| runtime.controller().namespace(nsid).cloned())
        .collect::<Result<_, _>>()?;
    let bytes = opts.bytes;
    let results: Vec<Outcome<String>> = std::thread::scope(|scope| {
        let workers: Vec<_> = handles
            .into_iter()
            .map(|handle| {
                let namespaces = &namespaces;
                let isolated = opts.isolated.contains(handle.cpu());
                scope.spawn(move || io_from_cpu(handle, isolated, namespaces, bytes, timeout))
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|_| Err(Failure("an I/O thread panicked".into())))
            })
            .collect()
    });
    let mut failures = Vec::new();
    for result in results {
        match result {
            Ok(report) => println!("    {report}"),
            Err(Failure(why)) => failures.push(why),
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("; "));

    // Where completions were reaped, by the runtime's own count.
    for state in runtime.vectors() {
        let on_isolated: u64 = opts
            .isolated
            .iter()
            .filter_map(|cpu| state.counters.handled_on.get(cpu))
            .map(|count| count.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        let completions = state
            .counters
            .completions
            .load(std::sync::atomic::Ordering::Relaxed);
        let interrupts = state
            .counters
            .interrupts
            .load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "    vector {}: {completions} completions, {interrupts} interrupt wake-ups, {on_isolated} reaped on isolated CPUs",
            state.vector
        );
        ensure!(
            on_isolated == 0,
            "vector {} reaped {on_isolated} completions on isolated CPUs {}",
            state.vector,
            opts.isolated
        );
    }
    // Inline CPUs reaped their own completions, all of them.
    for queue in &runtime.layout().inline {
        let counters = runtime
            .cpu_counters(queue.cpu)
            .ok_or_else(|| Failure(format!("no counters for inline CPU {}", queue.cpu)))?;
        let reaped = counters
            .reaped_inline
            .load(std::sync::atomic::Ordering::Relaxed);
        let completed = counters
            .completed
            .load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "    CPU {}: {reaped} of {completed} completions reaped inline from its own CQ {}",
            queue.cpu, queue.cq
        );
        ensure!(
            reaped > 0 && reaped == completed,
            "inline CPU {} reaped {reaped} of its {completed} completions itself",
            queue.cpu
        );
    }
    Ok(())
}

/// Write, read back and verify on every namespace from a thread pinned to
/// the handle's CPU.
fn io_from_cpu(
    mut handle: CpuHandle,
    isolated: bool,
    namespaces: &[isonvme::Namespace],
    bytes: usize,
    timeout: Duration,
) -> Outcome<String> {
    let cpu = handle.cpu();
    isonvme::os::pin_current_thread(&CpuSet::single(cpu))
        .map_err(|e| Failure(format!("pinning a thread to CPU {cpu}: {e}")))?;
    let running_on = isonvme::os::current_cpu();
    ensure!(
        running_on == Some(cpu),
        "a thread pinned to CPU {cpu} runs on {running_on:?}"
    );
    let start = Instant::now();
    for ns in namespaces {
        let blocks = (bytes / ns.block_size as usize) as u32;
        // Each CPU its own blocks.
        let lba = 1024 + cpu as u64 * u64::from(blocks) * 2;
        let mut data = handle.pool().alloc(bytes)?;
        fill(&mut data, ns.id, lba, 2 + cpu as u64);
        let write = IoCommand::Write {
            nsid: ns.id,
            lba,
            blocks,
        };
        let (_, data) = handle
            .run(write, Some(data), timeout)
            .map_err(|e| Failure(format!("CPU {cpu}: write to namespace {}: {e}", ns.id)))?;
        let data = data.ok_or_else(|| Failure("the write's buffer did not come back".into()))?;
        let back = handle.pool().alloc(bytes)?;
        let read = IoCommand::Read {
            nsid: ns.id,
            lba,
            blocks,
        };
        let (_, back) = handle
            .run(read, Some(back), timeout)
            .map_err(|e| Failure(format!("CPU {cpu}: read from namespace {}: {e}", ns.id)))?;
        let back = back.ok_or_else(|| Failure("the read's buffer did not come back".into()))?;
        if let Some(offset) = first_mismatch(&data, &back) {
            return Err(Failure(format!(
                "CPU {cpu}: namespace {} LBA {lba}: read back differs at byte {offset}",
                ns.id
            )));
        }
    }
    Ok(format!(
        "CPU {cpu}{}: write/read/verify on {} namespaces completed in {:.1} ms",
        if isolated { " (isolated)" } else { "" },
        namespaces.len(),
        start.elapsed().as_secs_f64() * 1e3
    ))
}

/// Resets during I/O (see [`Check::Reset`]).
fn reset(opts: &Opts) -> Outcome {
    let controller = open(opts)?;
    let nsid = opts.namespaces.first().copied().unwrap_or(1);
    let runtime = Runtime::open(
        controller,
        RuntimeOptions {
            depth: 16,
            ..RuntimeOptions::default()
        },
    )
    .map_err(|e| Failure(format!("starting the runtime: {e}")))?;
    let result = resets_during_io(&runtime, opts, nsid);
    let close = runtime.close();
    let report = result?;
    close.map_err(|e| Failure(format!("closing the runtime: {e}")))?;
    println!("    {report}");
    Ok(())
}

fn resets_during_io(runtime: &Runtime, opts: &Opts, nsid: u32) -> Outcome<String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let cpu = opts
        .isolated
        .first()
        .ok_or_else(|| Failure("no isolated CPU given".into()))?;
    let mut handle = runtime.handle(cpu)?;
    let block_size = runtime.controller().namespace(nsid)?.block_size as usize;
    let blocks_per_io = (4096 / block_size).max(1) as u32;
    let timeout = Duration::from_secs(opts.io_timeout_secs);
    let stop = AtomicBool::new(false);
    let started = AtomicBool::new(false);
    let (writer, durations) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| -> Outcome<(u64, Duration, u64)> {
            isonvme::os::pin_current_thread(&CpuSet::single(cpu))
                .map_err(|e| Failure(format!("pinning to CPU {cpu}: {e}")))?;
            // Block n (4 KiB) holds n, in 4096 consecutive blocks.
            const SPAN: u64 = 4096;
            let mut idle: Vec<DmaBuffer> = (0..8)
                .map(|_| handle.pool().alloc(4096))
                .collect::<Result<_, _>>()?;
            let mut sent_at = [Instant::now(); 8];
            let mut slots: Vec<usize> = (0..8).collect();
            let (mut next, mut written, mut longest) = (0u64, 0u64, Duration::ZERO);
            let mut failure = None;
            let last = Instant::now();
            while !(stop.load(Ordering::Acquire) && handle.outstanding() == 0) {
                while !stop.load(Ordering::Acquire) {
                    let (Some(mut buffer), Some(&slot)) = (idle.pop(), slots.last()) else {
                        break;
                    };
                    let block = next % SPAN;
                    buffer.as_mut_slice().fill(0);
                    buffer.as_mut_slice()[..8].copy_from_slice(&block.to_le_bytes());
                    let write = IoCommand::Write {
                        nsid,
                        lba: block * u64::from(blocks_per_io),
                        blocks: blocks_per_io,
                    };
                    match handle.submit(write, Some(buffer), slot as u64) {
                        Ok(()) => {
                            slots.pop();
                            sent_at[slot] = Instant::now();
                            next += 1;
                        }
                        Err(rejected) => {
                            idle.extend(rejected.buffer);
                            break;
                        }
                    }
                }
                handle.ring();
                started.store(true, Ordering::Release);
                handle.poll(|completion| {
                    let slot = completion.tag as usize;
                    longest = longest.max(sent_at[slot].elapsed());
                    slots.push(slot);
                    idle.extend(completion.buffer);
                    match completion.result {
                        Ok(_) => written += 1,
                        Err(status) => {
                            failure.get_or_insert(status);
                        }
                    }
                })?;
                ensure!(
                    last.elapsed() < timeout * 4,
                    "the writer ran for {:?}: hung",
                    last.elapsed()
                );
            }
            if let Some(status) = failure {
                return Err(Failure(format!("a write failed across a reset: {status}")));
            }
            Ok((written, longest, next.min(SPAN)))
        });
        while !started.load(Ordering::Acquire) && !writer.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut durations = Vec::new();
        for _ in 0..opts.resets {
            std::thread::sleep(Duration::from_millis(200));
            match runtime.reset_controller(timeout) {
                Ok(took) => durations.push(took),
                Err(e) => {
                    stop.store(true, Ordering::Release);
                    return (writer.join(), Err(Failure(format!("reset: {e}"))));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        stop.store(true, Ordering::Release);
        (writer.join(), Ok(durations))
    });
    let (written, longest, span) = writer.map_err(|_| Failure("the writer panicked".into()))??;
    let durations = durations?;
    // Every block written reads back with its number.
    let mut buffer = Some(handle.pool().alloc(4096)?);
    for block in 0..span {
        let read = IoCommand::Read {
            nsid,
            lba: block * u64::from(blocks_per_io),
            blocks: blocks_per_io,
        };
        let (_, back) = handle.run(read, buffer.take(), timeout)?;
        let back = back.ok_or_else(|| Failure("the read buffer did not come back".into()))?;
        ensure!(
            back.as_slice()[..8] == block.to_le_bytes(),
            "block {block} reads back wrong after the resets"
        );
        buffer = Some(back);
    }
    let recovery = runtime.recovery();
    let resubmitted = runtime.cpu_counters(cpu).map_or(0, |c| {
        c.resubmitted.load(std::sync::atomic::Ordering::Relaxed)
    });
    let ms: Vec<String> = durations
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64() * 1e3))
        .collect();
    ensure!(
        recovery.resets.load(std::sync::atomic::Ordering::Relaxed) == opts.resets as u64,
        "{} resets counted, {} asked for",
        recovery.resets.load(std::sync::atomic::Ordering::Relaxed),
        opts.resets
    );
    Ok(format!(
        "{} resets during I/O from CPU {cpu}, each (disable to queues back) {} ms; {written} writes at QD8 completed, {resubmitted} resubmitted after a reset, the longest {:.1} ms; {span} blocks verified",
        durations.len(),
        ms.join(", "),
        longest.as_secs_f64() * 1e3
    ))
}

/// `/proc/interrupts`: per interrupt line, its name and count per CPU.
struct Interrupts {
    lines: BTreeMap<String, BTreeMap<usize, u64>>,
}

impl Interrupts {
    fn read() -> Outcome<Self> {
        let text = std::fs::read_to_string("/proc/interrupts")
            .map_err(|e| Failure(format!("/proc/interrupts: {e}")))?;
        Self::parse(&text).map_err(|e| Failure(format!("/proc/interrupts: {e}")))
    }

    /// The header names the CPU of each column (`CPU0 CPU1 ...`, online
    /// CPUs only); each line is `IRQ: count... chip hwirq name`.
    fn parse(text: &str) -> Result<Self, String> {
        let mut rows = text.lines();
        let header = rows.next().ok_or("empty")?;
        let cpus: Vec<usize> = header
            .split_whitespace()
            .map(|column| {
                column
                    .strip_prefix("CPU")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("header column `{column}`"))
            })
            .collect::<Result<_, _>>()?;
        let mut lines = BTreeMap::new();
        for row in rows {
            let mut fields = row.split_whitespace();
            let Some(irq) = fields.next() else { continue };
            let fields: Vec<&str> = fields.collect();
            if fields.len() < cpus.len() {
                continue; // ERR:, MIS: and the like carry one number.
            }
            let Ok(counts) = fields[..cpus.len()]
                .iter()
                .map(|count| count.parse::<u64>())
                .collect::<Result<Vec<_>, _>>()
            else {
                continue;
            };
            let name = format!("{irq} {}", fields[cpus.len()..].join(" "));
            lines.insert(name, cpus.iter().copied().zip(counts).collect());
        }
        Ok(Interrupts { lines })
    }

    /// Per matching line, the counts added since `before` (a line absent
    /// then counted from zero).
    fn delta(
        &self,
        before: &Interrupts,
        select: impl Fn(&str) -> bool,
    ) -> BTreeMap<String, BTreeMap<usize, u64>> {
        self.lines
            .iter()
            .filter(|(name, _)| select(name))
            .map(|(name, counts)| {
                let old = before.lines.get(name);
                let added = counts
                    .iter()
                    .map(|(&cpu, &count)| {
                        let was = old.and_then(|o| o.get(&cpu)).copied().unwrap_or(0);
                        (cpu, count.saturating_sub(was))
                    })
                    .collect();
                (name.clone(), added)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
           CPU0       CPU1       CPU2       CPU3
  0:         40          0          0          0  IR-IO-APIC    2-edge      timer
 40:          3          0          0          0  IR-PCI-MSIX-0000:00:04.0    0-edge      vfio-msix[0](0000:00:04.0)
 41:          0          7          1          0  IR-PCI-MSIX-0000:00:04.0    1-edge      vfio-msix[1](0000:00:04.0)
NMI:          0          0          0          0   Non-maskable interrupts
ERR:          0
";

    #[test]
    fn proc_interrupts_is_parsed_and_diffed() {
        let before = Interrupts::parse(SAMPLE).unwrap();
        assert_eq!(before.lines.len(), 4);
        let later = SAMPLE.replace(
            " 41:          0          7          1",
            " 41:          0         17          4",
        );
        let after = Interrupts::parse(&later).unwrap();
        let delta = after.delta(&before, |name| name.contains("vfio-msix"));
        assert_eq!(delta.len(), 2);
        let line = delta
            .iter()
            .find(|(name, _)| name.contains("vfio-msix[1]"))
            .unwrap()
            .1;
        assert_eq!(line[&1], 10);
        assert_eq!(line[&2], 3);
        assert_eq!(line[&3], 0);
        let fresh = after.delta(&Interrupts::parse("CPU0 CPU1 CPU2 CPU3\n").unwrap(), |n| {
            n.contains("vfio-msix[0]")
        });
        assert_eq!(fresh.values().next().unwrap()[&0], 3);
    }
}
