//! The isolation runtime against the zero-latency simulator, on the
//! submitting thread's side, set beside a baseline where every thread
//! shares one queue pair behind a mutex.
//!
//! * `runtime_submitter_cpu`: one thread pinned to CPU 1 (the isolated
//!   CPU) reads 4 KiB blocks through its `CpuHandle` at QD1 and QD32,
//!   refilling the queue after every poll and ringing the doorbell once per
//!   batch. Criterion's figure is the thread's CPU time
//!   (`CLOCK_THREAD_CPUTIME_ID`) per I/O over the whole loop; that includes
//!   spinning in `poll` while waiting. The summary adds the time spent
//!   only inside `submit()`+`ring()` and only inside `poll()` calls that
//!   returned at least one completion (`Instant` around each span; the
//!   cost of reading the clock is measured and printed with them).
//! * `iops_qd32`: 1 and 2 submitting threads (pinned to CPU 1, then
//!   CPU 0), QD32 each, each thread with its own `CpuHandle`, a fixed
//!   200,000 reads per thread per sample (2,000 in poll mode); criterion
//!   reports wall time per I/O (its thrpt is IOPS). `mutex_*`: the same
//!   threads share one `IoQueuePair` behind a `std::sync::Mutex` (lock,
//!   reap for everyone, submit own batch, ring, unlock).
//!
//! Every runtime case runs twice: completion threads in poll mode, then in
//! interrupt mode. The machine has 2 CPUs: CPU 0 is housekeeping (it runs
//! the runtime's completion thread), CPU 1 is isolated. The simulator's
//! device thread is left unpinned and spins for the whole run (`spin=1s`).
//! In poll mode that makes three spinning threads (submitter, completion
//! thread, device) on two CPUs, so every hand-off waits for a scheduler
//! time slice and the figures measure the oversubscription (a few
//! thousand IOPS), not the driver; interrupt mode lets the completion
//! thread sleep. The mutex baseline has no completion thread (the
//! submitters reap the CQ themselves, and a waiter sleeps in the futex).
//!
//! Run: `cargo bench -p isonvme --bench runtime` (about a minute); a
//! summary table is printed to stderr at the end.

use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use isonvme::dma::{DmaBuffer, DmaPool};
use isonvme::mapping::sysfs::SysfsRoot;
use isonvme::mapping::CpuSet;
use isonvme::runtime::{CompletionMode, CpuHandle, Runtime, RuntimeOptions};
use isonvme::sim::SimController;
use isonvme::{Controller, ControllerOptions, IoCommand, IoQueuePair};

const SIM: &str = "sim,size=64M,spin=1s";
/// Reads per thread in each sample of the IOPS benchmarks.
const IOS_PER_THREAD: u64 = 200_000;
/// The same in poll mode, where this 2-CPU machine manages only a few
/// thousand IOPS (see the module comment): a shorter fixed run keeps the
/// benchmark within about a minute.
const POLL_IOS_PER_THREAD: u64 = 2_000;
/// Submitting CPUs in order: the isolated one first.
const CPUS: [usize; 2] = [1, 0];
/// LBAs the reads wander over (the 64 MiB namespace has 16,384).
const LBAS: u64 = 8192;

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn read(n: u64) -> IoCommand {
    IoCommand::Read {
        nsid: 1,
        lba: n.wrapping_mul(7919) % LBAS,
        blocks: 1,
    }
}

/// CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the clock id is a
    // constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn pin(cpu: usize) {
    isonvme::os::pin_current_thread(&CpuSet::single(cpu)).expect("pin the submitting thread");
}

/// What one run of a loop measured.
#[derive(Debug, Default, Clone, Copy)]
struct Run {
    ios: u64,
    /// `CLOCK_THREAD_CPUTIME_ID` over the whole loop.
    thread_cpu: Duration,
    /// Inside `submit()`s and the `ring()` of batches (timed runs only).
    submit_ring: Duration,
    /// Inside `poll()` calls that returned ≥ 1 completion (timed runs only).
    poll_busy: Duration,
    /// Doorbell writes.
    rings: u64,
    /// Timed spans (each costs one clock read).
    spans: u64,
    /// Loop start and end.
    start: Option<Instant>,
    end: Option<Instant>,
}

/// Totals of one benchmark case over every criterion call.
#[derive(Debug, Default, Clone)]
struct Case {
    name: String,
    threads: usize,
    ios: u64,
    wall: Duration,
    thread_cpu: Duration,
    submit_ring: Duration,
    poll_busy: Duration,
    rings: u64,
    spans: u64,
    timed: bool,
}

impl Case {
    fn new(name: &str, threads: usize, timed: bool) -> Self {
        Case {
            name: name.to_owned(),
            threads,
            timed,
            ..Case::default()
        }
    }

    fn add(&mut self, runs: &[Run]) -> Duration {
        let start = runs.iter().filter_map(|r| r.start).min().expect("start");
        let end = runs.iter().filter_map(|r| r.end).max().expect("end");
        let wall = end - start;
        self.wall += wall;
        for run in runs {
            self.ios += run.ios;
            self.thread_cpu += run.thread_cpu;
            self.submit_ring += run.submit_ring;
            self.poll_busy += run.poll_busy;
            self.rings += run.rings;
            self.spans += run.spans;
        }
        wall
    }

    fn per_io(&self, total: Duration) -> f64 {
        total.as_nanos() as f64 / self.ios.max(1) as f64
    }

    /// Wall time per I/O over all threads (1 / IOPS).
    fn wall_per_io(&self) -> f64 {
        self.per_io(self.wall)
    }

    fn iops(&self) -> f64 {
        1e9 / self.wall_per_io()
    }
}

/// Reads `ios` blocks through `handle` at `depth`, refilling the queue
/// after every poll and ringing once per batch. With `TIMED`, the spans
/// inside submit+ring and inside productive polls are timed too.
fn handle_loop<const TIMED: bool>(
    handle: &mut CpuHandle,
    depth: usize,
    ios: u64,
    ready: Option<&Barrier>,
) -> Run {
    let mut free: Vec<DmaBuffer> = (0..depth)
        .map(|_| handle.pool().alloc(4096).expect("buffer"))
        .collect();
    let mut run = Run {
        ios,
        ..Run::default()
    };
    let (mut submitted, mut completed, mut failed) = (0u64, 0u64, 0u64);
    if let Some(barrier) = ready {
        barrier.wait();
    }
    let cpu_start = thread_cpu();
    let start = Instant::now();
    while completed < ios {
        let t0 = TIMED.then(Instant::now);
        let mut batch = 0;
        while submitted < ios {
            let Some(buffer) = free.pop() else { break };
            handle
                .submit(read(submitted), Some(buffer), submitted)
                .expect("submit");
            submitted += 1;
            batch += 1;
        }
        if batch > 0 {
            handle.ring();
            run.rings += 1;
            if let Some(t0) = t0 {
                run.submit_ring += t0.elapsed();
                run.spans += 1;
            }
        }
        let t1 = TIMED.then(Instant::now);
        let reaped = handle
            .poll(|completion| {
                failed += u64::from(completion.result.is_err());
                free.push(completion.buffer.expect("buffer back"));
                completed += 1;
            })
            .expect("poll");
        if reaped > 0 {
            if let Some(t1) = t1 {
                run.poll_busy += t1.elapsed();
                run.spans += 1;
            }
        } else {
            std::hint::spin_loop();
        }
    }
    run.end = Some(Instant::now());
    run.thread_cpu = thread_cpu() - cpu_start;
    run.start = Some(start);
    assert_eq!(failed, 0, "reads failed");
    run
}

/// The baseline: every thread shares one queue pair behind a mutex.
struct Shared {
    queue: IoQueuePair,
    pool: DmaPool,
    /// Free buffers of each thread (completions go back to their owner).
    free: Vec<Vec<DmaBuffer>>,
    done: Vec<u64>,
    failed: u64,
}

const OWNER_SHIFT: u32 = 48;

/// Thread `me` reads `ios` blocks through the shared queue pair at
/// `depth`: lock, reap (for everyone), submit its own batch, ring, unlock.
fn mutex_loop(shared: &Mutex<Shared>, me: usize, depth: usize, ios: u64, ready: &Barrier) -> Run {
    {
        let mut guard = shared.lock().expect("lock");
        let state = &mut *guard;
        state.done[me] = 0;
        state.free[me] = (0..depth)
            .map(|_| state.pool.alloc(4096).expect("buffer"))
            .collect();
    }
    let mut run = Run {
        ios,
        ..Run::default()
    };
    let mut submitted = 0u64;
    ready.wait();
    let cpu_start = thread_cpu();
    let start = Instant::now();
    loop {
        let mut guard = shared.lock().expect("lock");
        let Shared {
            queue,
            free,
            done,
            failed,
            ..
        } = &mut *guard;
        queue
            .poll(|completion| {
                let owner = (completion.tag >> OWNER_SHIFT) as usize;
                *failed += u64::from(completion.result.is_err());
                free[owner].push(completion.buffer.expect("buffer back"));
                done[owner] += 1;
            })
            .expect("poll");
        if done[me] >= ios {
            break;
        }
        let mut batch = 0;
        while submitted < ios {
            let Some(buffer) = free[me].pop() else { break };
            let tag = (me as u64) << OWNER_SHIFT | submitted;
            queue
                .submit(read(submitted), Some(buffer), tag)
                .expect("submit");
            submitted += 1;
            batch += 1;
        }
        if batch > 0 {
            queue.ring();
            run.rings += 1;
        }
        drop(guard);
        std::hint::spin_loop();
    }
    run.end = Some(Instant::now());
    run.thread_cpu = thread_cpu() - cpu_start;
    run.start = Some(start);
    run
}

fn open_runtime(mode: CompletionMode) -> Runtime {
    let sim = SimController::open(SIM).expect("simulator");
    let controller = Controller::open(sim, ControllerOptions::default()).expect("bring-up");
    let topology = SysfsRoot::host().topology().expect("host topology");
    Runtime::open(
        controller,
        RuntimeOptions {
            topology: Some(topology),
            isolated: Some(CpuSet::single(1)),
            mode,
            ..RuntimeOptions::default()
        },
    )
    .expect("runtime")
}

/// Criterion's figure: submitting-thread CPU time per read.
fn submitter_cpu(
    group: &mut Group<'_>,
    id: &str,
    handle: &mut CpuHandle,
    depth: usize,
    case: &mut Case,
) {
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let run = std::thread::scope(|s| {
                s.spawn(|| {
                    pin(CPUS[0]);
                    handle_loop::<true>(handle, depth, iters, None)
                })
                .join()
                .expect("submitter")
            });
            case.add(&[run]);
            run.thread_cpu
        })
    });
}

/// Criterion's figure: wall time per read over all threads, for a fixed
/// run of `per_thread` reads per thread.
fn iops_runtime(
    group: &mut Group<'_>,
    id: &str,
    handles: &mut [CpuHandle],
    per_thread: u64,
    case: &mut Case,
) {
    let threads = handles.len();
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(threads);
            let runs: Vec<Run> = std::thread::scope(|s| {
                let workers: Vec<_> = handles
                    .iter_mut()
                    .zip(CPUS)
                    .map(|(handle, cpu)| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            pin(cpu);
                            handle_loop::<false>(handle, 32, per_thread, Some(barrier))
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("submitter"))
                    .collect()
            });
            let wall = case.add(&runs);
            wall.div_f64((per_thread * threads as u64) as f64)
                .mul_f64(iters as f64)
        })
    });
}

fn iops_mutex(group: &mut Group<'_>, shared: &Mutex<Shared>, threads: usize, case: &mut Case) {
    group.bench_function(format!("mutex_{threads}t"), |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(threads);
            let runs: Vec<Run> = std::thread::scope(|s| {
                let workers: Vec<_> = (0..threads)
                    .map(|me| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            pin(CPUS[me]);
                            mutex_loop(shared, me, 32, IOS_PER_THREAD, barrier)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("submitter"))
                    .collect()
            });
            let mut guard = shared.lock().expect("lock");
            assert_eq!(guard.failed, 0, "reads failed");
            assert_eq!(guard.queue.outstanding(), 0);
            for free in &mut guard.free {
                free.clear();
            }
            drop(guard);
            let wall = case.add(&runs);
            wall.div_f64((IOS_PER_THREAD * threads as u64) as f64)
                .mul_f64(iters as f64)
        })
    });
}

/// Cost of one `Instant::now()` (each timed span pays about one).
fn clock_read_ns() -> f64 {
    const N: u32 = 1_000_000;
    let start = Instant::now();
    let mut last = start;
    for _ in 0..N {
        last = std::hint::black_box(Instant::now());
    }
    (last - start).as_nanos() as f64 / f64::from(N)
}

fn summary(cases: &[Case], clock_ns: f64) {
    eprintln!();
    eprintln!("isonvme runtime bench summary (4 KiB reads, zero-latency simulator, 2 CPUs; CPU 1 isolated)");
    eprintln!(
        "{:<24} {:>3} {:>11} {:>11} {:>11} {:>11} {:>8} {:>11}",
        "case", "thr", "wall ns/IO", "cpu ns/IO", "sub+ring/IO", "poll>0 /IO", "IO/ring", "IOPS"
    );
    let dash = "-";
    for case in cases.iter().filter(|c| c.ios > 0) {
        let span = |d: Duration| {
            if case.timed {
                format!("{:.1}", case.per_io(d))
            } else {
                dash.to_owned()
            }
        };
        eprintln!(
            "{:<24} {:>3} {:>11.1} {:>11.1} {:>11} {:>11} {:>8.1} {:>11.0}",
            case.name,
            case.threads,
            case.wall_per_io(),
            case.per_io(case.thread_cpu),
            span(case.submit_ring),
            span(case.poll_busy),
            case.ios as f64 / case.rings.max(1) as f64,
            case.iops(),
        );
    }
    eprintln!(
        "wall ns/IO = elapsed / all threads' I/Os (1/IOPS); cpu ns/IO = CLOCK_THREAD_CPUTIME_ID of the submitting threads / I/Os (includes spinning in poll);"
    );
    eprintln!(
        "sub+ring, poll>0 = Instant spans inside submit()+ring() and inside poll() calls returning >= 1, per I/O; Instant::now() costs {clock_ns:.1} ns, paid about once per span"
    );
    let find = |name: String| cases.iter().find(|c| c.name == name && c.ios > 0);
    for threads in [2, 1] {
        let Some(mutex) = find(format!("iops qd32 mutex {threads}t")) else {
            continue;
        };
        for mode in ["poll", "interrupt"] {
            if let Some(runtime) = find(format!("iops qd32 {mode} {threads}t")) {
                eprintln!(
                    "runtime ({mode}) / mutex at {threads} thread(s): {:.2}x IOPS ({:.0} vs {:.0})",
                    runtime.iops() / mutex.iops(),
                    runtime.iops(),
                    mutex.iops()
                );
            }
        }
    }
}

fn runtime_cases(c: &mut Criterion, mode: CompletionMode, cases: &mut Vec<Case>) {
    let name = match mode {
        CompletionMode::Poll => "poll",
        CompletionMode::Interrupt => "interrupt",
        CompletionMode::Hybrid { .. } => "hybrid",
    };
    let runtime = open_runtime(mode);
    eprintln!("{name} mode: {}", runtime.layout());
    let mut handles = vec![
        runtime.handle(CPUS[0]).expect("handle"),
        runtime.handle(CPUS[1]).expect("handle"),
    ];

    let mut group = c.benchmark_group("runtime_submitter_cpu");
    group
        .throughput(Throughput::Elements(1))
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for depth in [1, 32] {
        let mut case = Case::new(&format!("cpu qd{depth} {name}"), 1, true);
        let id = format!("qd{depth}_{name}");
        submitter_cpu(&mut group, &id, &mut handles[0], depth, &mut case);
        cases.push(case);
    }
    group.finish();

    let per_thread = match mode {
        CompletionMode::Poll => POLL_IOS_PER_THREAD,
        _ => IOS_PER_THREAD,
    };
    let mut group = c.benchmark_group("iops_qd32");
    group
        .throughput(Throughput::Elements(1))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .measurement_time(Duration::from_secs(2));
    for threads in [1, 2] {
        let mut case = Case::new(&format!("iops qd32 {name} {threads}t"), threads, false);
        let id = format!("runtime_{name}_{threads}t");
        iops_runtime(
            &mut group,
            &id,
            &mut handles[..threads],
            per_thread,
            &mut case,
        );
        cases.push(case);
    }
    group.finish();
    drop(handles);
    runtime.close().expect("close");
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .nresamples(20_000)
        .configure_from_args();
    let mut cases = Vec::new();

    runtime_cases(&mut c, CompletionMode::Poll, &mut cases);
    runtime_cases(&mut c, CompletionMode::Interrupt, &mut cases);

    // Baseline: one queue pair behind a mutex.
    {
        let sim = SimController::open(SIM).expect("simulator");
        let controller = Controller::open(sim, ControllerOptions::default()).expect("bring-up");
        let queue = IoQueuePair::create(&controller, 1, 128, None).expect("queue");
        let shared = Mutex::new(Shared {
            queue,
            pool: controller.pool().clone(),
            free: CPUS.iter().map(|_| Vec::new()).collect(),
            done: vec![0; CPUS.len()],
            failed: 0,
        });
        let mut group = c.benchmark_group("iops_qd32");
        group
            .throughput(Throughput::Elements(1))
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .measurement_time(Duration::from_secs(2));
        for threads in [1, 2] {
            let mut case = Case::new(&format!("iops qd32 mutex {threads}t"), threads, false);
            iops_mutex(&mut group, &shared, threads, &mut case);
            cases.push(case);
        }
        group.finish();
        drop(shared);
        controller.shutdown().expect("shutdown");
    }

    c.final_summary();
    summary(&cases, clock_read_ns());
}
