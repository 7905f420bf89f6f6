//! Completion paths side by side, in one run against the zero-latency
//! simulator: a bare `IoQueuePair` (the thread owns an interrupt-less queue
//! pair, no runtime at all), the runtime's `inline` mode (the isolated
//! CPU's handle reaps its own interrupt-less CQ), and the shared-CQ modes
//! `interrupt` and `poll` (a housekeeping completion thread reaps and hands
//! completions over).
//!
//! * `qd1_read_4k`: criterion's wall time per QD1 4 KiB read round trip
//!   (submit, ring, poll until done) from a thread pinned to CPU 1.
//! * `qd32_read_4k`: the same thread keeps 32 reads in flight; criterion's
//!   thrpt is IOPS.
//!
//! After criterion, a fixed pass of 100,000 QD1 reads per path records
//! every round trip and prints p50/p99/p99.9 and the ratios the issue's
//! targets are stated in (inline vs bare, interrupt vs inline), with
//! QD32 IOPS per path.
//!
//! The machine this was written on has 2 CPUs: CPU 1 stands in for an
//! isolated CPU, CPU 0 is housekeeping and also runs the simulator's device
//! thread (which spins: `spin=1s`), so the completion thread of the shared
//! modes competes with the device for CPU 0.
//!
//! Run: `cargo bench -p isonvme --bench completion` (about a minute).

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput};
use isonvme::dma::DmaBuffer;
use isonvme::mapping::sysfs::SysfsRoot;
use isonvme::mapping::CpuSet;
use isonvme::runtime::{CompletionMode, CpuHandle, InlineCpus, Runtime, RuntimeOptions};
use isonvme::sim::SimController;
use isonvme::{Completion, Controller, ControllerOptions, IoCommand, IoQueuePair, Rejected};

const SIM: &str = "sim,size=64M,spin=1s";
const ISOLATED_CPU: usize = 1;
const HOUSEKEEPING_CPU: usize = 0;
const LBAS: u64 = 8192;
const PERCENTILE_READS: usize = 100_000;
const QD32_READS: u64 = 200_000;

/// One of the paths under test: what the submitting thread holds.
enum Path {
    Bare {
        queue: IoQueuePair,
        _controller: Controller,
    },
    Runtime {
        handle: CpuHandle,
        runtime: Runtime,
    },
}

impl Path {
    fn open(name: &str) -> Path {
        let sim = SimController::open(SIM).expect("simulator");
        let controller = Controller::open(sim, ControllerOptions::default()).expect("bring-up");
        let (mode, inline) = match name {
            "bare" => {
                let queue = IoQueuePair::create(&controller, 1, 64, None).expect("queue pair");
                return Path::Bare {
                    queue,
                    _controller: controller,
                };
            }
            "inline" => (CompletionMode::Interrupt, InlineCpus::Isolated),
            "interrupt" => (CompletionMode::Interrupt, InlineCpus::None),
            "poll" => (CompletionMode::Poll, InlineCpus::None),
            other => unreachable!("path {other}"),
        };
        let runtime = Runtime::open(
            controller,
            RuntimeOptions {
                topology: Some(SysfsRoot::host().topology().expect("host topology")),
                isolated: Some(CpuSet::single(ISOLATED_CPU)),
                mode,
                inline,
                depth: 64,
                ..RuntimeOptions::default()
            },
        )
        .expect("runtime");
        let handle = runtime.handle(ISOLATED_CPU).expect("handle");
        assert_eq!(handle.is_inline(), name == "inline");
        Path::Runtime { handle, runtime }
    }

    fn submit(&mut self, n: u64, buffer: DmaBuffer) -> Result<(), Rejected> {
        let command = IoCommand::Read {
            nsid: 1,
            lba: n.wrapping_mul(7919) % LBAS,
            blocks: 1,
        };
        match self {
            Path::Bare { queue, .. } => queue.submit(command, Some(buffer), n),
            Path::Runtime { handle, .. } => handle.submit(command, Some(buffer), n),
        }
    }

    fn ring(&mut self) {
        match self {
            Path::Bare { queue, .. } => queue.ring(),
            Path::Runtime { handle, .. } => handle.ring(),
        }
    }

    fn poll(&mut self, deliver: impl FnMut(Completion)) -> usize {
        match self {
            Path::Bare { queue, .. } => queue.poll(deliver),
            Path::Runtime { handle, .. } => handle.poll(deliver),
        }
        .expect("poll")
    }

    fn buffers(&self, count: usize) -> Vec<DmaBuffer> {
        let pool = match self {
            Path::Bare { _controller, .. } => _controller.pool().clone(),
            Path::Runtime { handle, .. } => handle.pool().clone(),
        };
        (0..count)
            .map(|_| pool.alloc(4096).expect("buffer"))
            .collect()
    }

    fn close(self) {
        if let Path::Runtime { handle, runtime } = self {
            drop(handle);
            runtime.close().expect("close");
        }
    }

    /// `ios` reads at `depth`; with `latencies`, records each QD1 round trip.
    fn run(&mut self, depth: usize, ios: u64, mut latencies: Option<&mut Vec<u32>>) -> Duration {
        let mut free = self.buffers(depth);
        let (mut submitted, mut completed) = (0u64, 0u64);
        let start = Instant::now();
        while completed < ios {
            let issued = Instant::now();
            while submitted < ios {
                let Some(buffer) = free.pop() else { break };
                self.submit(submitted, buffer)
                    .map_err(|r| r.error)
                    .expect("submit");
                submitted += 1;
            }
            self.ring();
            loop {
                let got = self.poll(|completion| {
                    assert!(completion.result.is_ok(), "read failed");
                    free.extend(completion.buffer);
                    completed += 1;
                });
                if got > 0 || depth > 1 {
                    break;
                }
                std::hint::spin_loop();
            }
            if let Some(latencies) = latencies.as_deref_mut() {
                latencies.push(u32::try_from(issued.elapsed().as_nanos()).unwrap_or(u32::MAX));
            }
        }
        start.elapsed()
    }
}

fn pin(cpu: usize) {
    isonvme::os::pin_current_thread(&CpuSet::single(cpu)).expect("pin the benchmark thread");
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p / 100.0) as usize).min(sorted.len() - 1);
    f64::from(sorted[index]) / 1000.0
}

struct Summary {
    name: &'static str,
    p50: f64,
    p99: f64,
    p999: f64,
    qd32_iops: f64,
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    // `cargo bench` passes `--bench`; without it (cargo test) criterion
    // runs each benchmark once as a test.
    let measuring = std::env::args().any(|a| a == "--bench");
    // One path at a time: each has its own simulator, whose device thread
    // spins, and two of them would share this machine's CPUs.
    let mut summaries = Vec::new();
    for name in ["bare", "inline", "interrupt", "poll"] {
        // Threads started while opening (the simulator's device thread,
        // the runtime's helpers) inherit this thread's affinity: open on
        // the housekeeping CPU, then move to the isolated one to measure.
        pin(HOUSEKEEPING_CPU);
        let mut path = Path::open(name);
        pin(ISOLATED_CPU);
        for (label, depth) in [("qd1_read_4k", 1usize), ("qd32_read_4k", 32)] {
            let mut group = c.benchmark_group(label);
            group
                .throughput(Throughput::Elements(1))
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10);
            group.bench_function(name, |b| b.iter_custom(|ios| path.run(depth, ios, None)));
            group.finish();
        }
        if !measuring {
            // `cargo test --all-targets`: criterion's one-pass smoke test
            // above is enough.
            path.close();
            continue;
        }
        let mut latencies = Vec::with_capacity(PERCENTILE_READS);
        path.run(1, PERCENTILE_READS as u64, Some(&mut latencies));
        latencies.sort_unstable();
        let qd32 = path.run(32, QD32_READS, None);
        summaries.push(Summary {
            name,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            p999: percentile(&latencies, 99.9),
            qd32_iops: QD32_READS as f64 / qd32.as_secs_f64(),
        });
        path.close();
    }
    c.final_summary();
    if !measuring {
        return;
    }
    eprintln!(
        "\nQD1 4 KiB read round trip ({PERCENTILE_READS} reads, µs) and QD32 IOPS ({QD32_READS} reads), thread on CPU {ISOLATED_CPU}:"
    );
    eprintln!(
        "  {:<10} {:>8} {:>8} {:>8} {:>12}",
        "path", "p50", "p99", "p99.9", "QD32 IOPS"
    );
    for s in &summaries {
        eprintln!(
            "  {:<10} {:>8.2} {:>8.2} {:>8.2} {:>12.0}",
            s.name, s.p50, s.p99, s.p999, s.qd32_iops
        );
    }
    let p50 = |name: &str| {
        summaries
            .iter()
            .find(|s| s.name == name)
            .map_or(f64::NAN, |s| s.p50)
    };
    eprintln!(
        "  inline / bare p50 = {:.2}x (target <= 1.5x); interrupt / inline p50 = {:.2}x (target >= 4x)",
        p50("inline") / p50("bare"),
        p50("interrupt") / p50("inline")
    );
}
