//! `latency`: QD1 4 KiB random reads from a thread pinned to an isolated
//! CPU, with latency percentiles and where the completion work ran.
//!
//! ```sh
//! cargo run --release -p isonvme-examples --bin latency -- --ios 20000
//! cargo run --release -p isonvme-examples --bin latency -- --device 0000:01:00.0 --time 10s --mode poll
//! ```
//!
//! The CPU measured on is an isolated one (`isolcpus=` / `nohz_full=` /
//! the kernel's isolated list), `--cpu N`, or — on a host without CPU
//! isolation — the highest online CPU, which the runtime then treats as
//! isolated for this run. Helper threads (the simulator's device thread,
//! the runtime's completion threads) are started on the housekeeping CPUs.
//! Reads only; on a real drive, blocks that were never written often read
//! back without touching flash, so precondition the drive for realistic
//! numbers.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use isonvme::runtime::{CpuHandle, DeviceState, Runtime, RuntimeOptions};
use isonvme::{ControllerOptions, IoCommand};
use isonvme_examples::{
    host_interrupts, or_none, parse_mode, parse_switch, parse_time, pin_to, prepare_host,
    report_host_interrupts, report_where, Choice, Completions, Result,
};

const IO_BYTES: usize = 4096;

#[derive(Parser)]
#[command(about = "QD1 4 KiB random-read latency from an isolated CPU, and where completions ran")]
struct Args {
    /// `sim[,key=value...]` or a PCI address bound to vfio-pci.
    #[arg(long, default_value = "sim")]
    device: String,
    /// Namespace to read from.
    #[arg(long, default_value_t = 1)]
    namespace: u32,
    /// The CPU to measure on (default: an isolated CPU, else the highest).
    #[arg(long)]
    cpu: Option<usize>,
    /// How completions reach the measuring thread: interrupt, poll or
    /// hybrid (a housekeeping completion thread hands them over), or inline
    /// (the thread reaps its own interrupt-less CQ: the lowest latency).
    #[arg(long, default_value = "interrupt", value_parser = parse_mode)]
    mode: Completions,
    /// Shadow doorbells (Doorbell Buffer Config) where the controller
    /// supports them: on or off.
    #[arg(long, default_value = "on", value_parser = parse_switch)]
    shadow_doorbells: bool,
    /// Reads to measure.
    #[arg(long, default_value_t = 100_000)]
    ios: u64,
    /// Measure for this long instead of a number of reads (`10s`, `500ms`, `2m`).
    #[arg(long, value_parser = parse_time, conflicts_with = "ios")]
    time: Option<Duration>,
    /// Reads before measuring (not recorded).
    #[arg(long, default_value_t = 1000)]
    warmup: u64,
    /// Seed of the random block sequence.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() -> ExitCode {
    isonvme::os::exit_quietly_on_closed_stdout();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("latency: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<()> {
    let (topology, choice) = prepare_host(args.cpu)?;

    let controller_options = ControllerOptions {
        shadow_doorbells: args.shadow_doorbells,
        ..ControllerOptions::default()
    };
    let controller = isonvme::device::open(&args.device, controller_options)
        .map_err(|e| format!("opening {}: {e}", args.device))?;
    let ns = controller.namespace(args.namespace)?.clone();
    let block_size = ns.block_size as usize;
    if block_size > IO_BYTES || !IO_BYTES.is_multiple_of(block_size) {
        return Err(format!(
            "namespace {} has {block_size}-byte blocks: 4 KiB reads need blocks of at most 4 KiB",
            ns.id
        )
        .into());
    }
    let blocks_per_io = (IO_BYTES / block_size) as u32;
    let units = ns.bytes() / IO_BYTES as u64;
    if units == 0 {
        return Err(format!("namespace {} is smaller than 4 KiB", ns.id).into());
    }
    println!(
        "opened {}: namespace {} has {} blocks of {} bytes ({:.2} GiB)",
        controller.info().name,
        ns.id,
        ns.blocks,
        ns.block_size,
        ns.bytes() as f64 / f64::from(1u32 << 30)
    );
    let timeout = controller.command_timeout();

    let runtime = Runtime::open(
        controller,
        RuntimeOptions {
            topology: Some(topology.clone()),
            isolated: Some(choice.isolated.clone()),
            mode: args.mode.mode,
            inline: args.mode.inline_cpus(),
            depth: 2,
            ..RuntimeOptions::default()
        },
    )
    .map_err(|e| format!("starting the runtime: {e}"))?;
    println!(
        "runtime: {} completions, {} doorbells, isolated CPUs {}, housekeeping CPUs {}",
        args.mode.name(),
        if runtime.controller().info().shadow_doorbells {
            "shadow"
        } else {
            "register"
        },
        or_none(&runtime.plan().isolated),
        runtime.plan().housekeeping
    );
    for line in runtime.layout().to_string().lines() {
        println!("  {line}");
    }

    let name = runtime.controller().info().name.clone();
    let interrupts_before = host_interrupts(&name);
    let measured = measure(
        &runtime,
        &args,
        &choice,
        ns.id,
        blocks_per_io,
        units,
        timeout,
    );
    let report = measured.map(|latencies| {
        if !latencies.histogram.is_empty() {
            print_latency(&latencies);
        }
        report_where(&runtime, &choice);
        report_host_interrupts(&name, interrupts_before, &runtime.plan().isolated);
        latencies.removed
    });
    // Closing lets the host finish a hot-unplug that waits for us.
    let closed = runtime.close();
    if let Some(why) = report? {
        return Err(format!("the device went away during the run ({why}); it was let go").into());
    }
    closed.map_err(|e| format!("closing the runtime: {e}"))?;
    Ok(())
}

/// Latencies in nanoseconds, with the exact extremes.
struct Latencies {
    histogram: Histogram<u64>,
    min: u64,
    max: u64,
    elapsed: Duration,
    /// The run stopped early: the device went away (why).
    removed: Option<String>,
}

fn measure(
    runtime: &Runtime,
    args: &Args,
    choice: &Choice,
    nsid: u32,
    blocks_per_io: u32,
    units: u64,
    timeout: Duration,
) -> Result<Latencies> {
    let cpu = choice.cpu;
    let mut handle = runtime.handle(cpu)?;
    pin_to(cpu)?;
    println!("pinned to CPU {cpu}");
    let mut buffer = Some(handle.pool().alloc(IO_BYTES)?);
    let mut random = XorShift::new(args.seed);
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut min, mut max) = (u64::MAX, 0);

    let what = match args.time {
        Some(time) => format!("for {time:?}"),
        None => format!("{} times", args.ios),
    };
    println!(
        "{} warm-up reads, then QD1 4 KiB random reads {what} over {:.2} GiB",
        args.warmup,
        (units * IO_BYTES as u64) as f64 / f64::from(1u32 << 30)
    );
    for _ in 0..args.warmup {
        let lba = random.below(units) * u64::from(blocks_per_io);
        read_one(&mut handle, &mut buffer, nsid, lba, blocks_per_io, timeout)?;
    }
    let start = Instant::now();
    let deadline = args.time.map(|time| start + time);
    let mut done = 0u64;
    let mut removed = None;
    loop {
        match deadline {
            Some(deadline) => {
                if Instant::now() >= deadline {
                    break;
                }
            }
            None => {
                if done >= args.ios {
                    break;
                }
            }
        }
        let lba = random.below(units) * u64::from(blocks_per_io);
        let nanos = match read_one(&mut handle, &mut buffer, nsid, lba, blocks_per_io, timeout) {
            Ok(nanos) => nanos,
            Err(error) if handle.device_state() != DeviceState::Alive => {
                // Hot-unplugged or gone: report what was measured, then let
                // the device go (closing the runtime and the controller is
                // what lets the host finish the removal).
                println!("stopped after {done} reads: {error}");
                removed = Some(error.to_string());
                break;
            }
            Err(error) => return Err(error),
        };
        histogram.saturating_record(nanos.max(1));
        min = min.min(nanos);
        max = max.max(nanos);
        done += 1;
    }
    let elapsed = start.elapsed();
    if done == 0 && removed.is_none() {
        return Err("no read was measured (give --ios or --time larger)".into());
    }
    Ok(Latencies {
        histogram,
        min,
        max,
        elapsed,
        removed,
    })
}

/// One read, submitted and spun on until it completes; its latency in ns.
fn read_one(
    handle: &mut CpuHandle,
    buffer: &mut Option<isonvme::dma::DmaBuffer>,
    nsid: u32,
    lba: u64,
    blocks: u32,
    timeout: Duration,
) -> Result<u64> {
    let command = IoCommand::Read { nsid, lba, blocks };
    let start = Instant::now();
    handle
        .submit(command, buffer.take(), lba)
        .map_err(|rejected| rejected.error)?;
    handle.ring();
    let mut completion = None;
    let mut spins = 0u32;
    while completion.is_none() {
        handle.poll(|c| completion = Some(c))?;
        if completion.is_none() {
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(4096) && start.elapsed() > timeout {
                // Dropping the handle with the read in flight stops the
                // controller, so it cannot DMA into reused memory later.
                return Err(
                    format!("the read of LBA {lba} did not complete within {timeout:?}").into(),
                );
            }
            std::hint::spin_loop();
        }
    }
    let nanos = start.elapsed().as_nanos() as u64;
    let completion = completion.expect("loop exits with a completion");
    *buffer = completion.buffer;
    completion
        .result
        .map_err(|status| format!("the read of LBA {lba} failed: {status}"))?;
    Ok(nanos)
}

fn print_latency(latencies: &Latencies) {
    let h = &latencies.histogram;
    let count = h.len();
    println!(
        "{count} reads in {:.3} s ({:.0} IOPS); latency in microseconds:",
        latencies.elapsed.as_secs_f64(),
        count as f64 / latencies.elapsed.as_secs_f64()
    );
    let us = |nanos: u64| nanos as f64 / 1000.0;
    println!("  min     {:>10.2}", us(latencies.min));
    println!("  mean    {:>10.2}", h.mean() / 1000.0);
    for (name, quantile) in [
        ("p50", 0.5),
        ("p90", 0.9),
        ("p99", 0.99),
        ("p99.9", 0.999),
        ("p99.99", 0.9999),
    ] {
        println!("  {name:<7} {:>10.2}", us(h.value_at_quantile(quantile)));
    }
    println!("  max     {:>10.2}", us(latencies.max));
}

/// xorshift64*: cheap, good enough to spread reads over the namespace.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform enough in `0..bound` (bound > 0).
    fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(bound)) >> 64) as u64
    }
}
