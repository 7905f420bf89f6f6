//! One job thread: pin, build the engine, wait for the others, run the
//! ramp and the measured period, drain, verify.
//!
//! Timing follows fio: an I/O's start is taken when it is prepared, its
//! issue after the batch was handed to the device (one doorbell or one
//! `io_uring_enter` per batch), its completion when the engine returned it.
//! slat = issue − start, clat = completion − issue, lat = completion −
//! start. Only I/Os issued after the ramp are recorded; those still in
//! flight when the time is up are waited for and counted.
//!
//! With `verify`, no two writes to one block are in flight at once (so the
//! block holds one whole write when it is read back), reads of read-only
//! jobs are checked as they complete (data an earlier job wrote), and a job
//! that writes reads back every block it wrote once its workload is done.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use isonvme::runtime::CpuHandle;
use isonvme_mapping::CpuSet;

use crate::engine::{self, Done, Engine, Op, Wait};
use crate::options::{EngineKind, JobOptions};
use crate::pattern::{Pattern, Rng};
use crate::stats::{self, DirStats, JobResult, Usage, VerifyOutcome, MAX_VERIFY_MESSAGES};
use crate::verify::{self, WrittenMap};

/// Interval of the bandwidth and IOPS samples (fio's `bwavgtime`).
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(500);

/// A job thread's state, for the progress line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Not started yet.
    Setup = 0,
    /// In the ramp.
    Ramp = 1,
    /// Measuring.
    Running = 2,
    /// Reading back what it wrote.
    Verifying = 3,
    /// Finished.
    Done = 4,
}

/// Set when the user interrupts the run (Ctrl-C, SIGTERM): every job stops
/// issuing, waits for what it has in flight and reports what it measured,
/// as fio does. Relaxed is enough: it is a flag polled by every job loop
/// and published by the signal-handling thread, with no data attached.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Counters the job thread publishes while it runs.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Live {
    /// Completed I/Os per direction.
    pub ios: [AtomicU64; 2],
    /// Completed bytes per direction.
    pub bytes: [AtomicU64; 2],
    /// A [`State`].
    pub state: AtomicU8,
}

impl Live {
    /// The state now.
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            0 => State::Setup,
            1 => State::Ramp,
            2 => State::Running,
            3 => State::Verifying,
            _ => State::Done,
        }
    }

    fn set(&self, state: State) {
        self.state.store(state as u8, Ordering::Relaxed);
    }
}

/// The kernel engines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEngine {
    /// pread/pwrite.
    Psync,
    /// io_uring.
    IoUring,
}

impl KernelEngine {
    /// The engine's `ioengine=` name.
    pub fn kind(self) -> EngineKind {
        match self {
            KernelEngine::Psync => EngineKind::Psync,
            KernelEngine::IoUring => EngineKind::IoUring,
        }
    }
}

/// How a job thread reaches its target.
pub enum EngineSetup {
    /// A CPU handle of an isonvme runtime.
    Isonvme {
        /// The handle (of the CPU the thread is pinned to).
        handle: Box<CpuHandle>,
        /// Namespace.
        nsid: u32,
        /// Its block size.
        block_size: u32,
    },
    /// A file or block device for a kernel engine.
    Kernel {
        /// psync or io_uring.
        engine: KernelEngine,
        /// The path.
        path: PathBuf,
        /// Whether to open it O_DIRECT.
        direct: bool,
        /// Whether to open it for writing too.
        write: bool,
        /// io_uring: polled completions (`hipri`).
        hipri: bool,
    },
}

impl EngineSetup {
    /// The `ioengine=` name.
    pub fn name(&self) -> &'static str {
        match self {
            EngineSetup::Isonvme { .. } => EngineKind::Isonvme.name(),
            EngineSetup::Kernel { engine, .. } => engine.kind().name(),
        }
    }
}

/// Everything one job thread needs.
pub struct ThreadPlan {
    /// The job's options.
    pub options: JobOptions,
    /// Thread number.
    pub jobnum: usize,
    /// CPUs to pin the thread to.
    pub pin: Option<CpuSet>,
    /// The engine.
    pub engine: EngineSetup,
    /// First byte of the region.
    pub region_start: u64,
    /// Bytes of the region (a multiple of bs).
    pub region_len: u64,
    /// What the target is called in messages.
    pub target: String,
    /// Seed of the offsets and payloads.
    pub seed: u64,
}

/// Where the job threads wait until every one of them is set up, so they
/// start together; the caller opens it, or calls the run off.
#[derive(Debug, Default)]
pub struct StartGate {
    /// Threads that arrived, and the decision once made.
    state: Mutex<(usize, Option<bool>)>,
    changed: Condvar,
}

impl StartGate {
    /// A closed gate.
    pub fn new() -> StartGate {
        StartGate::default()
    }

    /// A job thread is set up: waits for the decision; `true` means run.
    pub fn arrive_and_wait(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.0 += 1;
        self.changed.notify_all();
        loop {
            if let Some(go) = state.1 {
                return go;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The caller: waits until `count` threads arrived and opens the gate;
    /// calls the run off instead (returning `false`) as soon as `gave_up`
    /// says a thread will never arrive. `gave_up` runs with the gate's lock
    /// held (every 20 ms while waiting), so it must not use the gate.
    pub fn open_when(&self, count: usize, mut gave_up: impl FnMut() -> bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if state.0 >= count {
                state.1 = Some(true);
                self.changed.notify_all();
                return true;
            }
            if gave_up() {
                state.1 = Some(false);
                self.changed.notify_all();
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(20))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Calls the run off: threads waiting (or arriving later) return.
    pub fn cancel(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.1 = Some(false);
        self.changed.notify_all();
    }
}

#[derive(Clone, Copy)]
struct Slot {
    start: Instant,
    issue: Instant,
    op: Op,
    block: u64,
    measured: bool,
    verify_read: bool,
}

struct Sampler {
    next: Instant,
    last: Instant,
    ios: [u64; 2],
    bytes: [u64; 2],
}

impl Sampler {
    fn new(now: Instant) -> Sampler {
        Sampler {
            next: now + SAMPLE_INTERVAL,
            last: now,
            ios: [0; 2],
            bytes: [0; 2],
        }
    }

    fn tick(&mut self, now: Instant, dirs: &mut [DirStats; 2], active: [bool; 2]) {
        if now < self.next {
            return;
        }
        let seconds = now.duration_since(self.last).as_secs_f64();
        for (index, dir) in dirs.iter_mut().enumerate() {
            if !active[index] {
                continue;
            }
            let bytes = dir.bytes - self.bytes[index];
            let ios = dir.ios - self.ios[index];
            dir.bw_samples.push(bytes as f64 / 1024.0 / seconds);
            dir.iops_samples.push(ios as f64 / seconds);
            self.bytes[index] = dir.bytes;
            self.ios[index] = dir.ios;
        }
        self.last = now;
        self.next = now + SAMPLE_INTERVAL;
    }
}

fn build_engine(setup: EngineSetup, depth: usize, bs: usize) -> Result<Box<dyn Engine>, String> {
    match setup {
        EngineSetup::Isonvme {
            handle,
            nsid,
            block_size,
        } => Ok(Box::new(engine::Isonvme::new(
            *handle, nsid, block_size, depth, bs,
        )?)),
        EngineSetup::Kernel {
            engine,
            path,
            direct,
            write,
            hipri,
        } => {
            let file = engine::open_file(&path, direct, write)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            Ok(match engine {
                KernelEngine::Psync => Box::new(engine::Psync::new(file, bs)?),
                KernelEngine::IoUring => Box::new(engine::Uring::new(file, depth, bs, hipri)?),
            })
        }
    }
}

/// Runs one job thread: sets up, meets the others at `gate`, runs.
pub fn run(plan: ThreadPlan, live: &Live, gate: &StartGate) -> JobResult {
    let ThreadPlan {
        options,
        jobnum,
        pin,
        engine: setup,
        region_start,
        region_len,
        target,
        seed,
    } = plan;
    let mut result = JobResult {
        options: options.clone(),
        jobnum,
        jobs: 1,
        groupid: 0,
        engine: setup.name(),
        target: target.clone(),
        dirs: Default::default(),
        runtime: Duration::ZERO,
        usage: Usage::default(),
        lifetime_usage: Usage::default(),
        pinned: pin.clone(),
        ran_on: None,
        depth: [0; 7],
        submit: [0; 7],
        complete: [0; 7],
        issued: [0; 2],
        verify: options.verify.map(|_| VerifyOutcome::default()),
        error: None,
        synchronous: false,
        iodepth: options.iodepth,
        started_ms: 0,
    };
    let born = Usage::thread();
    let bs = options.bs as usize;
    let prepared = (|| {
        if let Some(cpus) = &pin {
            isonvme::os::pin_current_thread(cpus)
                .map_err(|e| format!("pinning the job thread to CPUs {cpus}: {e}"))?;
        }
        let depth = match &setup {
            EngineSetup::Kernel {
                engine: KernelEngine::Psync,
                ..
            } => 1,
            _ => options.iodepth as usize,
        };
        let mut engine = build_engine(setup, depth, bs)?;
        // fio fills write buffers with random data once.
        let mut rng = Rng::new(seed ^ 0xb0ff_e2ed);
        for slot in 0..depth {
            for chunk in engine.buffer_mut(slot).chunks_mut(8) {
                let bytes = rng.next_u64().to_le_bytes();
                chunk.copy_from_slice(&bytes[..chunk.len()]);
            }
        }
        Ok::<_, String>((engine, depth))
    })();
    let go = gate.arrive_and_wait();
    let (mut engine, depth) = match (prepared, go) {
        (Ok(ready), true) => ready,
        (Err(error), _) => {
            result.error = Some(error);
            live.set(State::Done);
            return result;
        }
        (Ok(_), false) => {
            result.error = Some("the run was called off before it started".into());
            live.set(State::Done);
            return result;
        }
    };
    result.started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    result.synchronous = engine.synchronous();
    result.iodepth = depth as u32;
    let mut written = options
        .verify
        .map(|_| WrittenMap::new(region_len / options.bs));
    let region = Region {
        start: region_start,
        len: region_len,
    };
    workload(
        &options,
        engine.as_mut(),
        depth,
        region,
        seed,
        &target,
        &mut written,
        live,
        &mut result,
    );
    if let (Some(written), None) = (&written, &result.error) {
        if written.count() > 0 {
            live.set(State::Verifying);
            verify_phase(
                &options,
                engine.as_mut(),
                depth,
                region_start,
                written,
                &target,
                &mut result,
            );
        }
    }
    drop(engine);
    result.lifetime_usage = Usage::thread().since(&born);
    result.ran_on = isonvme::os::current_cpu();
    live.set(State::Done);
    result
}

fn note_verify(result: &mut JobResult, outcome: Result<(), String>) {
    let verify = result.verify.get_or_insert_with(VerifyOutcome::default);
    verify.checked += 1;
    if let Err(message) = outcome {
        verify.errors += 1;
        if verify.messages.len() < MAX_VERIFY_MESSAGES {
            verify.messages.push(message);
        }
    }
}

/// The bytes a job thread works on.
#[derive(Debug, Clone, Copy)]
struct Region {
    start: u64,
    len: u64,
}

#[allow(clippy::too_many_arguments)]
fn workload(
    options: &JobOptions,
    engine: &mut dyn Engine,
    depth: usize,
    region: Region,
    seed: u64,
    target: &str,
    written: &mut Option<WrittenMap>,
    live: &Live,
    result: &mut JobResult,
) {
    let bs = options.bs;
    let blocks = region.len / bs;
    let synchronous = engine.synchronous();
    let verifying = options.verify.is_some();
    // Reads of a read-only job check data an earlier job wrote; a job that
    // writes checks its own writes afterwards (a read racing a write to the
    // same block could see either).
    let verify_reads = verifying && !options.rw.writes();
    let active = [options.rw.reads(), options.rw.writes()];
    let mut pattern = Pattern::new(
        options.rw,
        options.rwmixread,
        blocks,
        options.norandommap,
        seed,
    );
    let rate_interval_ns = options.rate_iops.map(|rate| 1_000_000_000 / rate.max(1));
    let due = |phase_start: Instant, issued: u64, interval_ns: u64| {
        phase_start + Duration::from_nanos(interval_ns.saturating_mul(issued))
    };

    let epoch = Instant::now();
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut slots = vec![
        Slot {
            start: epoch,
            issue: epoch,
            op: Op::Read,
            block: 0,
            measured: false,
            verify_read: false,
        };
        depth
    ];
    let mut queued: Vec<usize> = Vec::with_capacity(depth);
    let mut done: Vec<Done> = Vec::with_capacity(depth);
    // With verify: blocks with a write in flight, and the next I/O when it
    // had to wait for one of them.
    let mut writing: HashSet<u64> = HashSet::new();
    let mut pending: Option<(Op, u64)> = None;
    let mut inflight = 0usize;
    let ramp_end = epoch + options.ramp_time;
    let mut measuring = options.ramp_time.is_zero();
    let mut measure_start = epoch;
    let mut measure_end = options.runtime.map(|runtime| ramp_end + runtime);
    let mut usage_start = Usage::thread();
    let mut sampler = Sampler::new(epoch);
    let mut phase_start = epoch;
    let mut phase_issued = 0u64;
    let mut measured_bytes = 0u64;
    let mut stopping = false;
    let mut write_generation = 0u64;
    live.set(if measuring {
        State::Running
    } else {
        State::Ramp
    });

    loop {
        let now = Instant::now();
        if !measuring && now >= ramp_end {
            measuring = true;
            measure_start = now;
            measure_end = options.runtime.map(|runtime| now + runtime);
            usage_start = Usage::thread();
            sampler = Sampler::new(now);
            phase_start = now;
            phase_issued = 0;
            live.set(State::Running);
        }
        if !stopping && INTERRUPTED.load(Ordering::Relaxed) {
            stopping = true;
        }
        if measuring && !stopping {
            let out_of_time = measure_end.is_some_and(|end| now >= end);
            let size_done = !options.time_based && measured_bytes >= region.len;
            stopping = out_of_time || size_done;
        }
        if stopping && inflight == 0 {
            break;
        }
        if measuring {
            sampler.tick(now, &mut result.dirs, active);
        }

        // Fill the free slots.
        let mut rate_due: Option<Instant> = None;
        let mut blocked_on_write = false;
        if !stopping {
            while let Some(&slot) = free.last() {
                if let Some(interval_ns) = rate_interval_ns {
                    let next = due(phase_start, phase_issued, interval_ns);
                    if now < next {
                        rate_due = Some(next);
                        break;
                    }
                }
                if measuring && !options.time_based && measured_bytes >= region.len {
                    break;
                }
                let (op, block) = pending.take().unwrap_or_else(|| {
                    let op = pattern.next_op();
                    (op, pattern.next_block(op))
                });
                if verifying && op == Op::Write && writing.contains(&block) {
                    pending = Some((op, block));
                    blocked_on_write = true;
                    break;
                }
                let offset = region.start + block * bs;
                if op == Op::Write && verifying {
                    write_generation += 1;
                    verify::fill(
                        engine.buffer_mut(slot),
                        offset,
                        seed.wrapping_add(write_generation),
                    );
                }
                let prepared = Instant::now();
                if let Err(error) = engine.queue(slot, op, offset, bs as usize) {
                    result.error = Some(error);
                    stopping = true;
                    break;
                }
                free.pop();
                inflight += 1;
                if verifying && op == Op::Write {
                    writing.insert(block);
                }
                slots[slot] = Slot {
                    start: prepared,
                    issue: prepared,
                    op,
                    block,
                    measured: measuring,
                    verify_read: op == Op::Read && verify_reads,
                };
                queued.push(slot);
                phase_issued += 1;
                if measuring {
                    measured_bytes += bs;
                    result.issued[op.index()] += 1;
                }
                if synchronous {
                    break;
                }
            }
        }
        if !queued.is_empty() {
            if let Err(error) = engine.commit() {
                result.error = Some(error);
                stopping = true;
            }
            if !synchronous {
                let issued = Instant::now();
                for &slot in &queued {
                    slots[slot].issue = issued;
                }
            }
            if measuring {
                // fio counts a batch at the depth it brought the queue to.
                result.depth[stats::depth_bucket(inflight)] += queued.len() as u64;
                result.submit[stats::batch_bucket(queued.len())] += 1;
            }
            queued.clear();
        }

        if inflight == 0 {
            if let Some(next) = rate_due {
                // Nothing to wait for but the clock: sleep most of the gap.
                let wait = next.saturating_duration_since(Instant::now());
                if wait > Duration::from_micros(200) {
                    std::thread::sleep(wait - Duration::from_micros(100));
                }
            }
            continue;
        }
        let wait = if free.is_empty() || stopping || blocked_on_write {
            Wait::Any
        } else if let Some(next) = rate_due {
            Wait::Until(next)
        } else {
            Wait::No
        };
        if let Err(error) = engine.reap(wait, &mut done) {
            result.error = Some(error);
            break;
        }
        if done.is_empty() {
            continue;
        }
        let completed = Instant::now();
        if measuring {
            result.complete[stats::batch_bucket(done.len())] += 1;
        }
        let mut live_ios = [0u64; 2];
        for finished in done.drain(..) {
            let slot = slots[finished.slot];
            inflight -= 1;
            free.push(finished.slot);
            let direction = slot.op.index();
            live_ios[direction] += 1;
            if slot.op == Op::Write && verifying {
                writing.remove(&slot.block);
            }
            if let Err(error) = finished.result {
                if result.error.is_none() {
                    result.error = Some(error);
                }
                stopping = true;
                continue;
            }
            let offset = region.start + slot.block * bs;
            if slot.op == Op::Write {
                if let Some(written) = written.as_mut() {
                    written.set(slot.block);
                }
            }
            if slot.verify_read {
                let outcome =
                    verify::check(&engine.buffer(finished.slot)[..bs as usize], offset, target);
                note_verify(result, outcome);
            }
            if slot.measured {
                let dir = &mut result.dirs[direction];
                dir.ios += 1;
                dir.bytes += bs;
                if !synchronous {
                    dir.slat
                        .record(slot.issue.duration_since(slot.start).as_nanos() as u64);
                }
                dir.clat
                    .record(completed.duration_since(slot.issue).as_nanos() as u64);
                dir.lat
                    .record(completed.duration_since(slot.start).as_nanos() as u64);
            }
        }
        for (direction, ios) in live_ios.into_iter().enumerate() {
            if ios > 0 {
                live.ios[direction].fetch_add(ios, Ordering::Relaxed);
                live.bytes[direction].fetch_add(ios * bs, Ordering::Relaxed);
            }
        }
    }
    if measuring {
        // fio's runtime: from the end of the ramp until the job stopped
        // (its last I/O completed, or the time ran out with none in flight).
        result.runtime = Instant::now().duration_since(measure_start);
        result.usage = Usage::thread().since(&usage_start);
    }
}

/// Reads back every block the job wrote and checks it.
fn verify_phase(
    options: &JobOptions,
    engine: &mut dyn Engine,
    depth: usize,
    region_start: u64,
    written: &WrittenMap,
    target: &str,
    result: &mut JobResult,
) {
    let bs = options.bs;
    let mut free: Vec<usize> = (0..depth).rev().collect();
    let mut blocks = vec![0u64; depth];
    let mut next = written.next_from(0);
    let mut inflight = 0;
    let mut done = Vec::with_capacity(depth);
    while next.is_some() || inflight > 0 {
        let mut queued = 0;
        while let (Some(block), Some(&slot)) = (next, free.last()) {
            let offset = region_start + block * bs;
            if let Err(error) = engine.queue(slot, Op::Read, offset, bs as usize) {
                result.error = Some(format!("verify: {error}"));
                return;
            }
            free.pop();
            blocks[slot] = block;
            inflight += 1;
            queued += 1;
            next = written.next_from(block + 1);
            if engine.synchronous() {
                break;
            }
        }
        if queued > 0 {
            if let Err(error) = engine.commit() {
                result.error = Some(format!("verify: {error}"));
                return;
            }
        }
        if let Err(error) = engine.reap(Wait::Any, &mut done) {
            result.error = Some(format!("verify: {error}"));
            return;
        }
        for finished in done.drain(..) {
            inflight -= 1;
            free.push(finished.slot);
            let offset = region_start + blocks[finished.slot] * bs;
            let outcome = match finished.result {
                Ok(()) => {
                    verify::check(&engine.buffer(finished.slot)[..bs as usize], offset, target)
                }
                Err(error) => Err(format!("verify: reading offset {offset}: {error}")),
            };
            note_verify(result, outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_opens_for_everyone_or_nobody() {
        let gate = StartGate::new();
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..3)
                .map(|_| scope.spawn(|| gate.arrive_and_wait()))
                .collect();
            assert!(gate.open_when(3, || false));
            assert!(threads.into_iter().all(|t| t.join().unwrap()));
        });
        let gate = StartGate::new();
        std::thread::scope(|scope| {
            let waiting = scope.spawn(|| gate.arrive_and_wait());
            // The second thread never comes: the caller gives up, and the
            // thread that did come (or comes later) does not run.
            let mut asked = 0;
            let gave_up = || {
                asked += 1;
                asked > 2
            };
            assert!(!gate.open_when(2, gave_up));
            assert!(!waiting.join().unwrap());
            assert!(!gate.arrive_and_wait(), "late arrivals do not run either");
        });
    }
}
