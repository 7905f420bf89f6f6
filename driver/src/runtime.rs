//! The isolation runtime: queues laid out by the `isolcpus=io_queue`
//! policy, completions served only on housekeeping CPUs, and per-CPU
//! handles that submit and poll without locks, allocation or system calls.
//!
//! Layout: one I/O completion queue per I/O vector of the plan; one
//! submission queue per CPU, created against the CQ of the queue the plan
//! maps that CPU to. When the controller grants fewer SQs than CPUs, each
//! queue gets one hardware SQ and its CPUs hand commands to the queue's
//! completion thread through per-CPU rings (blk-mq's software/hardware
//! context split). A completion thread per vector, pinned to the vector's
//! housekeeping CPUs, reaps the CQ and hands every completion — with the
//! SQ head it reports — to the submitting CPU's ring.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use isonvme_mapping::sysfs::SysfsRoot;
use isonvme_mapping::{
    isolation, plan, CpuSet, OfflineVerdict, Plan, PlanParams, Policy, Topology,
};
use vmm_sys_util::eventfd::EventFd;

use crate::controller::{Controller, Registers};
use crate::dma::{DmaBuffer, DmaPool};
use crate::error::{DeviceError, Error, Result};
use crate::io::{CommandBuilder, Completion, IoCommand, Rejected};
use crate::nvme::{NvmeStatus, Status, SubmissionEntry};
use crate::os;
use crate::prp::{self, PrpLists, Segment};
use crate::queue::{CompletionQueue, SubmissionQueue};
use crate::spsc::{self, Consumer, Producer};
use crate::transport::AffinityOutcome;

/// How completion threads wait for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionMode {
    /// Block on the vector's eventfd until the device interrupts.
    Interrupt,
    /// Spin on the completion queue (lowest latency, burns the CPU).
    Poll,
    /// Spin for `spin` after the last completion, then block.
    Hybrid {
        /// How long to keep spinning after activity.
        spin: Duration,
    },
}

impl std::str::FromStr for CompletionMode {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "interrupt" => Ok(CompletionMode::Interrupt),
            "poll" => Ok(CompletionMode::Poll),
            "hybrid" => Ok(CompletionMode::Hybrid {
                spin: Duration::from_micros(50),
            }),
            other => Err(Error::InvalidArgument(format!(
                "completion mode `{other}`: use interrupt, poll or hybrid"
            ))),
        }
    }
}

/// Where the runtime learns which CPUs are online, so tests can inject
/// hotplug events.
pub trait OnlineSource: Send + Sync {
    /// The online CPUs now.
    fn online(&self) -> std::io::Result<CpuSet>;
}

impl OnlineSource for SysfsRoot {
    fn online(&self) -> std::io::Result<CpuSet> {
        let path = self.cpu_dir().join("online");
        let text = std::fs::read_to_string(&path)?;
        text.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// An online set changed by hand (tests, "what if" runs).
#[derive(Debug, Default)]
pub struct ManualOnline(Mutex<CpuSet>);

impl ManualOnline {
    /// Starts with `online`.
    pub fn new(online: CpuSet) -> Self {
        ManualOnline(Mutex::new(online))
    }

    /// Replaces the online set (a hotplug event).
    pub fn set(&self, online: CpuSet) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = online;
    }
}

impl OnlineSource for ManualOnline {
    fn online(&self) -> std::io::Result<CpuSet> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// How the runtime is set up.
#[derive(Clone)]
pub struct RuntimeOptions {
    /// The machine; `None` reads this host's sysfs.
    pub topology: Option<Topology>,
    /// The isolated CPUs; `None` reads the host's configuration
    /// (isolcpus=, nohz_full=, /sys/devices/system/cpu/isolated).
    pub isolated: Option<CpuSet>,
    /// How completion threads wait.
    pub mode: CompletionMode,
    /// Commands each CPU may have in flight.
    pub depth: u32,
    /// Use at most this many hardware SQs (default: what the controller
    /// granted); fewer SQs than CPUs switches to shared SQs.
    pub max_sqs: Option<u16>,
    /// Largest transfer per command (bounded by MDTS); PRP list pages for
    /// it are preallocated per slot so submission never allocates.
    pub max_transfer: usize,
    /// Where online CPUs are read for hotplug; `None`: sysfs.
    pub online_source: Option<Arc<dyn OnlineSource>>,
    /// How often the hotplug watcher looks.
    pub watch_interval: Duration,
    /// Completion threads to run (default: one per vector); with fewer,
    /// vector `i` is served by thread `i mod threads`.
    pub completion_threads: Option<usize>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            topology: None,
            isolated: None,
            mode: CompletionMode::Interrupt,
            depth: 128,
            max_sqs: None,
            max_transfer: 128 * 1024,
            online_source: None,
            watch_interval: Duration::from_millis(100),
            completion_threads: None,
        }
    }
}

/// A completion on its way from a completion thread to a CPU.
#[derive(Debug, Clone, Copy)]
struct Record {
    cid: u16,
    sq_head: u16,
    status: u16,
    dw0: u32,
}

/// Counters of one CPU's handle.
#[derive(Debug, Default)]
pub struct CpuCounters {
    /// Commands submitted.
    pub submitted: AtomicU64,
    /// Completions delivered to the handle.
    pub completed: AtomicU64,
    /// Submissions refused because the CPU's queue was full.
    pub ring_full: AtomicU64,
}

/// Counters of one interrupt vector.
#[derive(Debug)]
pub struct VectorCounters {
    /// Wake-ups by the vector's interrupt (interrupt and hybrid modes).
    pub interrupts: AtomicU64,
    /// Completions reaped from the vector's CQ.
    pub completions: AtomicU64,
    /// Completions reaped, by the CPU the completion thread ran on.
    pub handled_on: Vec<AtomicU64>,
    /// Completions the protocol does not allow (unknown SQ), dropped.
    pub device_errors: AtomicU64,
}

/// One vector as the runtime runs it.
pub struct VectorState {
    /// MSI-X vector number.
    pub vector: u16,
    /// Its completion queue id.
    pub cq: u16,
    /// The housekeeping CPUs the plan gives it.
    pub home: CpuSet,
    target: Mutex<CpuSet>,
    generation: AtomicU64,
    eventfd: Arc<EventFd>,
    /// Its counters.
    pub counters: VectorCounters,
}

impl VectorState {
    /// The CPUs its completion thread and interrupt target now.
    pub fn target(&self) -> CpuSet {
        self.target
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The queues the runtime built, for display and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLayout {
    /// Per I/O vector: (vector, CQ id, housekeeping CPUs serving it).
    pub vectors: Vec<(u16, u16, CpuSet)>,
    /// Per hardware SQ: (SQ id, CQ id, CPUs submitting through it).
    pub sqs: Vec<(u16, u16, CpuSet)>,
    /// Whether CPUs share hardware SQs through software rings.
    pub shared_sqs: bool,
}

impl fmt::Display for QueueLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} I/O vectors, {} SQs ({})",
            self.vectors.len(),
            self.sqs.len(),
            if self.shared_sqs {
                "shared through per-CPU rings"
            } else {
                "one per CPU"
            }
        )?;
        for (vector, cq, cpus) in &self.vectors {
            let sqs: Vec<String> = self
                .sqs
                .iter()
                .filter(|s| s.1 == *cq)
                .map(|s| format!("{}[{}]", s.0, s.2))
                .collect();
            writeln!(
                f,
                "  vector {vector} -> CQ {cq} served on CPUs {cpus}; SQs {}",
                sqs.join(" ")
            )?;
        }
        Ok(())
    }
}

/// A CPU's submission path, prepared at open and handed out once.
enum SubmitPath {
    /// The CPU owns a hardware SQ.
    Direct(SubmissionQueue),
    /// The CPU hands entries to its queue's thread.
    Shared(Producer<SubmissionEntry>),
}

struct HandleParts {
    path: SubmitPath,
    completions: Consumer<Record>,
    cid_base: u16,
    slots: u16,
}

/// What a completion thread owns for one vector.
struct VectorWork {
    state: Arc<VectorState>,
    cq: CompletionQueue,
    /// SQ id → ring of the CPU owning that SQ (direct mode).
    direct: BTreeMap<u16, Producer<Record>>,
    /// Shared mode: the hardware SQ, the CPUs' submission rings and their
    /// completion rings, indexed by `cid / per_cpu_slots`.
    shared: Option<SharedSq>,
}

struct SharedSq {
    sq: SubmissionQueue,
    per_cpu_slots: u16,
    submissions: Vec<Consumer<SubmissionEntry>>,
    completions: Vec<Producer<Record>>,
    /// An entry taken from a ring that did not fit the SQ yet.
    held: Option<SubmissionEntry>,
}

/// The running isolation runtime.
pub struct Runtime {
    controller: Arc<Controller>,
    plan: Plan,
    topology: Arc<Mutex<Topology>>,
    layout: QueueLayout,
    parts: Mutex<BTreeMap<usize, HandleParts>>,
    counters: BTreeMap<usize, Arc<CpuCounters>>,
    vectors: Vec<Arc<VectorState>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    commands: CommandBuilder,
    max_transfer: usize,
    sq_ids: Vec<u16>,
    cq_ids: Vec<u16>,
}

impl Runtime {
    /// Builds queues for `controller` by the policy and starts the
    /// completion threads.
    pub fn open(controller: Controller, options: RuntimeOptions) -> Result<Runtime> {
        let root = SysfsRoot::host();
        let topology = match options.topology.clone() {
            Some(topology) => topology,
            None => root.topology().map_err(|e| {
                Error::InvalidArgument(format!("reading this machine's topology: {e}"))
            })?,
        };
        let isolated = match options.isolated.clone() {
            Some(isolated) => isolated,
            None => {
                isolation::detect(&root, &topology)
                    .map_err(|e| Error::InvalidArgument(format!("reading the isolated CPUs: {e}")))?
                    .isolated
            }
        };
        let info = controller.info().clone();
        // Queues to ask the policy for: bounded by the CQs granted and the
        // vectors the device has (one goes to the admin queue).
        let queues = usize::from(info.granted_cqs)
            .min(usize::from(info.max_vectors.saturating_sub(1)))
            .min(topology.possible().len());
        if queues == 0 {
            return Err(DeviceError::Unsupported(format!(
                "{} granted {} I/O CQs with {} MSI-X vectors: at least one I/O queue and two vectors are needed",
                info.name, info.granted_cqs, info.max_vectors
            ))
            .into());
        }
        let plan = plan(
            &topology,
            &isolated,
            &PlanParams::nvme(queues),
            Policy::IoQueue,
        )
        .map_err(|e| Error::InvalidArgument(format!("planning queues: {e}")))?;
        if plan.enospc || plan.irq_queue_maps.is_empty() {
            return Err(Error::InvalidArgument(
                "the policy could not allocate interrupt vectors for this device".into(),
            ));
        }
        let map = plan.irq_queue_maps[0].clone();
        let nr_io_vectors = plan.nr_vecs - 1;
        let eventfds = controller.transport().enable_vectors(plan.nr_vecs as u16)?;
        let pool = controller.pool().clone();
        let depth = options.depth.clamp(2, info.max_queue_depth.min(4096));
        let max_transfer = options.max_transfer.min(info.max_transfer).max(4096);
        let online = topology.online().clone();
        let runnable = os::runnable_cpus();
        let max_cpu = runnable.last().unwrap_or(0).max(topology.nr_cpu_ids());

        // The CPUs of each queue, and which CPUs get a handle at all.
        let cpus: Vec<usize> = topology.possible().iter().collect();
        let mut queue_cpus: BTreeMap<usize, CpuSet> = BTreeMap::new();
        for &cpu in &cpus {
            if let Some(queue) = map.queue_of(cpu) {
                queue_cpus.entry(queue).or_default().insert(cpu);
            }
        }
        let sq_budget = options
            .max_sqs
            .unwrap_or(info.granted_sqs)
            .min(info.granted_sqs);
        let shared_sqs = usize::from(sq_budget) < cpus.len();
        if shared_sqs && usize::from(sq_budget) < nr_io_vectors {
            return Err(DeviceError::Unsupported(format!(
                "{sq_budget} SQs cannot serve {nr_io_vectors} queues even when shared"
            ))
            .into());
        }

        // Completion queues, one per I/O vector, deep enough for every SQ
        // that completes to it.
        let mut vectors = Vec::new();
        let mut work: Vec<VectorWork> = Vec::new();
        let mut layout = QueueLayout {
            vectors: Vec::new(),
            sqs: Vec::new(),
            shared_sqs,
        };
        let mut cq_ids = Vec::new();
        for index in 0..nr_io_vectors {
            let vector = (index + 1) as u16;
            let home = plan.vectors[index + 1].cpus.clone();
            let members = queue_cpus.get(&index).map_or(0, CpuSet::len).max(1) as u32;
            let cq_depth = (depth * members + 1).clamp(2, info.max_queue_depth);
            let irq = options.mode != CompletionMode::Poll;
            let cq = controller.create_io_cq(vector, cq_depth, irq.then_some(vector))?;
            cq_ids.push(vector);
            let target = home.intersection(&online);
            let state = Arc::new(VectorState {
                vector,
                cq: vector,
                home: home.clone(),
                target: Mutex::new(target.clone()),
                generation: AtomicU64::new(0),
                eventfd: Arc::clone(&eventfds[index + 1]),
                counters: VectorCounters {
                    interrupts: AtomicU64::new(0),
                    completions: AtomicU64::new(0),
                    handled_on: (0..=max_cpu).map(|_| AtomicU64::new(0)).collect(),
                    device_errors: AtomicU64::new(0),
                },
            });
            steer(&controller, vector, &target);
            layout.vectors.push((vector, vector, home));
            vectors.push(Arc::clone(&state));
            work.push(VectorWork {
                state,
                cq,
                direct: BTreeMap::new(),
                shared: None,
            });
        }
        // The admin vector is polled, but keep it off isolated CPUs too.
        steer(&controller, 0, &plan.housekeeping.intersection(&online));

        // Submission side.
        let mut parts = BTreeMap::new();
        let mut counters = BTreeMap::new();
        let mut sq_ids = Vec::new();
        let slots = (depth - 1) as u16;
        if !shared_sqs {
            for (position, &cpu) in cpus.iter().enumerate() {
                let queue = map.queue_of(cpu).unwrap_or(0).min(nr_io_vectors - 1);
                let sq_id = (position + 1) as u16;
                let cq_id = (queue + 1) as u16;
                let sq = controller.create_io_sq(sq_id, depth, cq_id)?;
                sq_ids.push(sq_id);
                let (producer, consumer) = spsc::ring(depth as usize);
                work[queue].direct.insert(sq_id, producer);
                parts.insert(
                    cpu,
                    HandleParts {
                        path: SubmitPath::Direct(sq),
                        completions: consumer,
                        cid_base: 0,
                        slots,
                    },
                );
                counters.insert(cpu, Arc::new(CpuCounters::default()));
                layout.sqs.push((sq_id, cq_id, CpuSet::single(cpu)));
            }
        } else {
            for (queue, members) in &queue_cpus {
                let queue = (*queue).min(nr_io_vectors - 1);
                let sq_id = (queue + 1) as u16;
                let per_cpu_slots =
                    (u32::from(u16::MAX) / members.len() as u32).min(u32::from(slots)) as u16;
                let hw_depth = (u32::from(per_cpu_slots) * members.len() as u32 + 1)
                    .clamp(2, info.max_queue_depth);
                let sq = controller.create_io_sq(sq_id, hw_depth, sq_id)?;
                sq_ids.push(sq_id);
                let mut shared = SharedSq {
                    sq,
                    per_cpu_slots,
                    submissions: Vec::new(),
                    completions: Vec::new(),
                    held: None,
                };
                for (local, cpu) in members.iter().enumerate() {
                    let (sub_tx, sub_rx) = spsc::ring(usize::from(per_cpu_slots));
                    let (done_tx, done_rx) = spsc::ring(usize::from(per_cpu_slots));
                    shared.submissions.push(sub_rx);
                    shared.completions.push(done_tx);
                    parts.insert(
                        cpu,
                        HandleParts {
                            path: SubmitPath::Shared(sub_tx),
                            completions: done_rx,
                            cid_base: local as u16 * per_cpu_slots,
                            slots: per_cpu_slots,
                        },
                    );
                    counters.insert(cpu, Arc::new(CpuCounters::default()));
                }
                layout.sqs.push((sq_id, sq_id, members.clone()));
                work[queue].shared = Some(shared);
            }
        }
        tracing::info!(layout = %layout, "isonvme runtime queues");

        let stop = Arc::new(AtomicBool::new(false));
        let regs = Arc::clone(controller.registers());
        let mut threads = Vec::new();
        let thread_count = options
            .completion_threads
            .unwrap_or(work.len())
            .clamp(1, work.len());
        let mut groups: Vec<Vec<VectorWork>> = (0..thread_count).map(|_| Vec::new()).collect();
        for (index, vector_work) in work.into_iter().enumerate() {
            groups[index % thread_count].push(vector_work);
        }
        for group in groups {
            let stop = Arc::clone(&stop);
            let regs = Arc::clone(&regs);
            let mode = options.mode;
            let name = format!("isonvme-cq{}", group[0].state.vector);
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || completion_thread(group, mode, &stop, &regs))
                .map_err(|source| crate::transport::TransportError::Io {
                    what: "starting a completion thread".into(),
                    source,
                })?;
            threads.push(thread);
        }
        let controller = Arc::new(controller);
        let runtime_topology = topology.clone();
        let mut runtime = Runtime {
            commands: CommandBuilder {
                namespaces: info.namespaces.clone(),
                max_transfer,
            },
            controller,
            plan,
            topology: Arc::new(Mutex::new(runtime_topology)),
            layout,
            parts: Mutex::new(parts),
            counters,
            vectors,
            stop,
            threads,
            max_transfer,
            sq_ids,
            cq_ids,
        };
        runtime.start_watcher(
            options
                .online_source
                .unwrap_or_else(|| Arc::new(SysfsRoot::host())),
            options.watch_interval,
        )?;
        drop(pool);
        Ok(runtime)
    }

    fn start_watcher(&mut self, source: Arc<dyn OnlineSource>, interval: Duration) -> Result<()> {
        let stop = Arc::clone(&self.stop);
        let vectors = self.vectors.clone();
        let controller = Arc::clone(&self.controller);
        let housekeeping = self.plan.housekeeping.clone();
        let topology = self
            .topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut last = topology.online().clone();
        let watcher_topology = Arc::clone(&self.topology);
        let thread = std::thread::Builder::new()
            .name("isonvme-hotplug".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(interval);
                    let Ok(online) = source.online() else { continue };
                    if online == last || online.is_empty() {
                        continue;
                    }
                    tracing::info!(from = %last, to = %online, "online CPUs changed");
                    last = online.clone();
                    if let Ok(updated) = topology.with_online(online.clone()) {
                        *watcher_topology.lock().unwrap_or_else(|e| e.into_inner()) = updated;
                    }
                    for state in &vectors {
                        let target = retarget(&state.home, &housekeeping, &online, &topology);
                        let mut current = state.target.lock().unwrap_or_else(|e| e.into_inner());
                        if *current != target {
                            tracing::info!(vector = state.vector, from = %current, to = %target, "moving completion work");
                            *current = target.clone();
                            state.generation.fetch_add(1, Ordering::Release);
                            drop(current);
                            steer(&controller, state.vector, &target);
                        }
                    }
                }
            })
            .map_err(|source| crate::transport::TransportError::Io {
                what: "starting the hotplug watcher".into(),
                source,
            })?;
        self.threads.push(thread);
        Ok(())
    }
}

/// Where a vector's completion work should run given the online CPUs: its
/// own housekeeping CPUs that are online, else the online housekeeping CPUs
/// of the same NUMA node, else any online housekeeping CPU.
fn retarget(home: &CpuSet, housekeeping: &CpuSet, online: &CpuSet, topology: &Topology) -> CpuSet {
    let own = home.intersection(online);
    if !own.is_empty() {
        return own;
    }
    let online_housekeeping = housekeeping.intersection(online);
    let node = home.first().and_then(|cpu| topology.node_of(cpu));
    if let Some(node_cpus) = node.and_then(|node| topology.nodes().get(&node)) {
        let same_node = online_housekeeping.intersection(node_cpus);
        if !same_node.is_empty() {
            return same_node;
        }
    }
    online_housekeeping
}

/// Points a vector's interrupt at `cpus`, saying once and clearly when the
/// host will not allow it.
fn steer(controller: &Controller, vector: u16, cpus: &CpuSet) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if cpus.is_empty() {
        return;
    }
    match controller.transport().set_vector_affinity(vector, cpus) {
        Ok(AffinityOutcome::Applied) => {}
        Ok(AffinityOutcome::NotPermitted(why)) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!("cannot restrict interrupt affinity: {why}");
            }
        }
        Err(error) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "cannot restrict interrupt affinity");
            }
        }
    }
}

/// Pins the calling completion thread to `target` as far as this machine
/// allows (a "what if" topology may name CPUs that do not exist here).
fn pin_to(target: &CpuSet, vector: u16) {
    let runnable = os::runnable_cpus();
    let usable = target.intersection(&runnable);
    if usable.is_empty() {
        tracing::warn!(vector, cpus = %target, "no CPU of the vector exists on this machine; completion thread left unpinned");
        return;
    }
    if let Err(error) = os::pin_current_thread(&usable) {
        tracing::warn!(vector, %error, "cannot pin completion thread");
    }
}

fn completion_thread(
    mut work: Vec<VectorWork>,
    mode: CompletionMode,
    stop: &AtomicBool,
    regs: &Registers,
) {
    let mut generations: Vec<u64> = work
        .iter()
        .map(|w| w.state.generation.load(Ordering::Acquire))
        .collect();
    let targets = |work: &[VectorWork]| {
        let mut all = CpuSet::new();
        for vector in work {
            all.union_with(&vector.state.target());
        }
        all
    };
    if let Some(first) = work.first() {
        pin_to(&targets(&work), first.state.vector);
    }
    // One wait covers every vector this thread serves.
    let mut interrupts = os::ReadableSet::new(work.iter().map(|w| w.state.eventfd.as_raw_fd()));
    let mut last_activity = Instant::now();
    let mut spin = os::SpinYield::new();
    while !stop.load(Ordering::Acquire) {
        let mut did_work = false;
        let mut moved = false;
        for (index, vector) in work.iter().enumerate() {
            let generation = vector.state.generation.load(Ordering::Acquire);
            if generation != generations[index] {
                generations[index] = generation;
                moved = true;
            }
        }
        if moved {
            pin_to(&targets(&work), work[0].state.vector);
        }
        for vector in work.iter_mut() {
            did_work |= vector.drain_submissions();
            did_work |= vector.reap();
        }
        if did_work {
            last_activity = Instant::now();
            spin.worked();
            continue;
        }
        let block = match mode {
            CompletionMode::Poll => false,
            CompletionMode::Interrupt => true,
            CompletionMode::Hybrid { spin } => last_activity.elapsed() > spin,
        };
        // Shared SQs are fed by CPUs that must not make system calls, so
        // their thread keeps looking at the rings instead of sleeping long.
        let shared = work.iter().any(|w| w.shared.is_some());
        if block && !shared {
            match interrupts.wait(Duration::from_millis(50)) {
                Ok(_) => {
                    for (index, vector) in work.iter().enumerate() {
                        if interrupts.is_ready(index) {
                            let _ = vector.state.eventfd.read();
                            vector
                                .state
                                .counters
                                .interrupts
                                .fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "waiting for an interrupt failed; polling instead");
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
        } else if block && shared {
            std::thread::sleep(Duration::from_micros(20));
        } else {
            // Offers the CPU now and then when it is shared (see
            // `os::SpinYield`); a dedicated CPU keeps polling.
            spin.idle();
        }
        if regs.failed.load(Ordering::Acquire) {
            break;
        }
    }
}

use std::os::fd::AsRawFd;

impl VectorWork {
    /// Moves entries from the CPUs' submission rings into the shared
    /// hardware SQ; returns whether anything moved.
    fn drain_submissions(&mut self) -> bool {
        let Some(shared) = self.shared.as_mut() else {
            return false;
        };
        let mut moved = false;
        loop {
            let mut progressed = false;
            if let Some(entry) = shared.held.take() {
                if shared.sq.push(&entry).is_err() {
                    shared.held = Some(entry);
                    break;
                }
                moved = true;
            }
            for ring in &mut shared.submissions {
                if shared.sq.is_full() {
                    break;
                }
                if let Some(entry) = ring.pop() {
                    if let Err(crate::queue::QueueFull) = shared.sq.push(&entry) {
                        shared.held = Some(entry);
                        break;
                    }
                    moved = true;
                    progressed = true;
                }
            }
            if !progressed || shared.sq.is_full() {
                break;
            }
        }
        if moved {
            shared.sq.ring_doorbell();
        }
        moved
    }

    /// Reaps the CQ and hands each completion to its CPU; returns whether
    /// anything was reaped.
    fn reap(&mut self) -> bool {
        let mut reaped = 0u64;
        while let Some(entry) = self.cq.pop() {
            reaped += 1;
            let record = Record {
                cid: entry.cid,
                sq_head: entry.sq_head,
                status: entry.status >> 1,
                dw0: entry.dw0,
            };
            let delivered = match self.shared.as_mut() {
                Some(shared) if entry.sq_id == shared.sq.id() => {
                    if shared.sq.update_head(entry.sq_head).is_err() {
                        tracing::warn!(
                            sq = entry.sq_id,
                            head = entry.sq_head,
                            "impossible SQ head"
                        );
                    }
                    let local = usize::from(entry.cid / shared.per_cpu_slots.max(1));
                    shared
                        .completions
                        .get_mut(local)
                        .map(|ring| ring.push(record).is_ok())
                }
                Some(_) => None,
                None => self
                    .direct
                    .get_mut(&entry.sq_id)
                    .map(|ring| ring.push(record).is_ok()),
            };
            match delivered {
                Some(true) => {}
                Some(false) => {
                    // The ring holds a CPU's whole depth, so only a device
                    // completing a command twice can fill it.
                    self.state
                        .counters
                        .device_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        cq = self.state.cq,
                        cid = entry.cid,
                        "completion ring full: duplicate completion dropped"
                    );
                }
                None => {
                    self.state
                        .counters
                        .device_errors
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        cq = self.state.cq,
                        sq = entry.sq_id,
                        cid = entry.cid,
                        "completion for an unknown SQ dropped"
                    );
                }
            }
        }
        if reaped == 0 {
            return false;
        }
        self.cq.ring_doorbell();
        self.state
            .counters
            .completions
            .fetch_add(reaped, Ordering::Relaxed);
        if let Some(cpu) = os::current_cpu() {
            if let Some(counter) = self.state.counters.handled_on.get(cpu) {
                counter.fetch_add(reaped, Ordering::Relaxed);
            }
        }
        true
    }
}

impl Runtime {
    /// The per-CPU handle of `cpu`, which any thread may use (one at a time;
    /// it is `Send`, not `Sync`). Each CPU's handle is handed out once.
    pub fn handle(&self, cpu: usize) -> Result<CpuHandle> {
        let parts = self
            .parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&cpu)
            .ok_or_else(|| {
                Error::InvalidArgument(if self.counters.contains_key(&cpu) {
                    format!("the handle of CPU {cpu} was already taken")
                } else {
                    format!("CPU {cpu} is not a possible CPU of this runtime's topology")
                })
            })?;
        let pool = self.controller.pool().clone();
        let pages = PrpLists::pages_needed(self.max_transfer / crate::dma::PAGE_SIZE + 1);
        let mut slots = Vec::with_capacity(usize::from(parts.slots));
        for _ in 0..parts.slots {
            let mut prp_lists = PrpLists::new();
            prp_lists.reserve(pages, &pool)?;
            slots.push(HandleSlot {
                busy: false,
                tag: 0,
                buffer: None,
                prp_lists,
            });
        }
        Ok(CpuHandle {
            cpu,
            counters: Arc::clone(&self.counters[&cpu]),
            path: parts.path,
            completions: parts.completions,
            cid_base: parts.cid_base,
            free: (0..parts.slots).rev().collect(),
            slots,
            commands: self.commands.clone(),
            pool,
            regs: Arc::clone(self.controller.registers()),
        })
    }

    /// The handle of the CPU the calling thread runs on now.
    pub fn current_handle(&self) -> Result<CpuHandle> {
        let cpu = os::current_cpu().ok_or_else(|| {
            Error::InvalidArgument("cannot tell which CPU this thread runs on".into())
        })?;
        self.handle(cpu)
    }

    /// The plan the queues follow.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The queues built.
    pub fn layout(&self) -> &QueueLayout {
        &self.layout
    }

    /// The controller.
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The DMA pool buffers come from.
    pub fn pool(&self) -> &DmaPool {
        self.controller.pool()
    }

    /// The vectors, with their current targets and counters.
    pub fn vectors(&self) -> &[Arc<VectorState>] {
        &self.vectors
    }

    /// The counters of `cpu`'s handle.
    pub fn cpu_counters(&self, cpu: usize) -> Option<&CpuCounters> {
        self.counters.get(&cpu).map(|c| &**c)
    }

    /// The policy's offline rule for `cpu`, with the current online CPUs.
    pub fn can_offline(&self, cpu: usize) -> Option<OfflineVerdict> {
        let topology = self
            .topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.plan.can_offline(&topology, cpu)
    }

    /// Stops the completion threads, deletes the I/O queues and shuts the
    /// controller down.
    pub fn close(mut self) -> Result<()> {
        self.stop_threads();
        let mut first_error = None;
        for &sq in &self.sq_ids {
            if let Err(error) = self.controller.delete_io_sq(sq) {
                first_error.get_or_insert(error);
            }
        }
        for &cq in &self.cq_ids {
            if let Err(error) = self.controller.delete_io_cq(cq) {
                first_error.get_or_insert(error);
            }
        }
        if let Err(error) = self.controller.shutdown() {
            first_error.get_or_insert(error);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn stop_threads(&mut self) {
        self.stop.store(true, Ordering::Release);
        for state in &self.vectors {
            let _ = state.eventfd.write(1);
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Adds to a counter only its handle writes: a plain load and store (no
/// locked read-modify-write on the I/O path); readers may see it late, never
/// torn.
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed) + by, Ordering::Relaxed);
}

struct HandleSlot {
    busy: bool,
    tag: u64,
    buffer: Option<DmaBuffer>,
    prp_lists: PrpLists,
}

/// One CPU's door to the device: submit and poll without locks, allocation
/// or system calls. Use it from one thread at a time (normally the thread
/// pinned to that CPU).
pub struct CpuHandle {
    cpu: usize,
    counters: Arc<CpuCounters>,
    path: SubmitPath,
    completions: Consumer<Record>,
    cid_base: u16,
    slots: Vec<HandleSlot>,
    free: Vec<u16>,
    commands: CommandBuilder,
    pool: DmaPool,
    regs: Arc<Registers>,
}

impl Drop for CpuHandle {
    fn drop(&mut self) {
        // Commands in flight may still DMA into their buffers and the SQ
        // ring: wait a moment for them, then stop the controller rather
        // than hand that memory back to the pool.
        if self.outstanding() == 0 || self.regs.failed.load(Ordering::SeqCst) {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.outstanding() > 0 && Instant::now() < deadline {
            if self.poll(|_| {}).is_err() {
                break;
            }
        }
        if self.outstanding() > 0 {
            tracing::warn!(
                cpu = self.cpu,
                outstanding = self.outstanding(),
                "CPU handle dropped with commands in flight; stopping the controller"
            );
            self.regs.fail();
        }
    }
}

impl CpuHandle {
    /// The CPU this handle belongs to.
    pub fn cpu(&self) -> usize {
        self.cpu
    }

    /// Commands that can be submitted now.
    pub fn capacity(&self) -> usize {
        self.free.len()
    }

    /// Commands in flight.
    pub fn outstanding(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The DMA pool (allocate buffers up front, outside the hot loop).
    pub fn pool(&self) -> &DmaPool {
        &self.pool
    }

    /// Queues a command; the device sees it after [`CpuHandle::ring`]
    /// (shared SQs: as soon as the queue's thread picks it up). The buffer
    /// comes back with the completion.
    pub fn submit(
        &mut self,
        command: IoCommand,
        buffer: Option<DmaBuffer>,
        tag: u64,
    ) -> std::result::Result<(), Rejected> {
        match self.push(command, buffer.as_ref(), tag) {
            Ok(slot) => {
                self.slots[slot].buffer = buffer;
                bump(&self.counters.submitted, 1);
                Ok(())
            }
            Err(error) => {
                if matches!(error, Error::QueueFull) {
                    bump(&self.counters.ring_full, 1);
                }
                Err(Rejected { error, buffer })
            }
        }
    }

    fn push(&mut self, command: IoCommand, buffer: Option<&DmaBuffer>, tag: u64) -> Result<usize> {
        if self.regs.failed.load(Ordering::Relaxed) {
            return Err(Error::Unusable(
                "the controller was stopped after a lost command",
            ));
        }
        let data_len = buffer.map_or(0, DmaBuffer::len);
        let mut entry = self.commands.entry_for(command, data_len)?;
        let slot_index = *self.free.last().ok_or(Error::QueueFull)?;
        let slot = &mut self.slots[usize::from(slot_index)];
        let transfer = self.commands.transfer_len(command);
        if let (Some(buffer), 1..) = (buffer, transfer) {
            let segment = Segment {
                iova: buffer.iova(),
                len: transfer.min(buffer.len()),
            };
            let prp = prp::build(
                std::slice::from_ref(&segment),
                &mut slot.prp_lists,
                &self.pool,
            )?;
            entry.prp1 = prp.prp1;
            entry.prp2 = prp.prp2;
        }
        entry.set_cid(self.cid_base + slot_index);
        match &mut self.path {
            SubmitPath::Direct(sq) => sq.push(&entry).map_err(|_| Error::QueueFull)?,
            SubmitPath::Shared(ring) => ring.push(entry).map_err(|_| Error::QueueFull)?,
        }
        self.free.pop();
        slot.busy = true;
        slot.tag = tag;
        Ok(usize::from(slot_index))
    }

    /// Rings the doorbell once for everything submitted since the last
    /// call (a single MMIO store; shared SQs need none).
    pub fn ring(&mut self) {
        if let SubmitPath::Direct(sq) = &mut self.path {
            sq.ring_doorbell();
        }
    }

    /// Hands every completion waiting for this CPU to `deliver`; returns
    /// how many. A completion the protocol does not allow is reported as an
    /// error after the valid ones before it.
    pub fn poll(&mut self, mut deliver: impl FnMut(Completion)) -> Result<usize> {
        let mut count = 0;
        while let Some(record) = self.completions.pop() {
            let slot_index = record.cid.wrapping_sub(self.cid_base);
            let Some(slot) = self
                .slots
                .get_mut(usize::from(slot_index))
                .filter(|slot| slot.busy)
            else {
                tracing::warn!(
                    cpu = self.cpu,
                    cid = record.cid,
                    "completion for a command that is not outstanding"
                );
                return Err(DeviceError::UnknownCommandId {
                    queue: 0,
                    cid: record.cid,
                }
                .into());
            };
            if let SubmitPath::Direct(sq) = &mut self.path {
                sq.update_head(record.sq_head).map_err(DeviceError::from)?;
            }
            slot.busy = false;
            let result = match NvmeStatus::from_status(Status(record.status)) {
                None => Ok(record.dw0),
                Some(status) => Err(status),
            };
            let completion = Completion {
                tag: slot.tag,
                result,
                buffer: slot.buffer.take(),
            };
            self.free.push(slot_index);
            count += 1;
            deliver(completion);
        }
        if count > 0 {
            self.counters
                .completed
                .fetch_add(count as u64, Ordering::Relaxed);
        }
        Ok(count)
    }

    /// Submits one command and spins until it completes (a blocking
    /// convenience on top of submit/poll; the queue must be idle).
    pub fn run(
        &mut self,
        command: IoCommand,
        buffer: Option<DmaBuffer>,
        timeout: Duration,
    ) -> Result<(u32, Option<DmaBuffer>)> {
        if self.outstanding() > 0 {
            return Err(Error::InvalidArgument(
                "run() needs a handle with no outstanding commands".into(),
            ));
        }
        self.submit(command, buffer, 0)
            .map_err(|rejected| rejected.error)?;
        self.ring();
        let start = Instant::now();
        loop {
            let mut done = None;
            self.poll(|completion| done = Some(completion))?;
            if let Some(completion) = done {
                return match completion.result {
                    Ok(dw0) => Ok((dw0, completion.buffer)),
                    Err(status) => Err(Error::Command {
                        command: "I/O",
                        status,
                    }),
                };
            }
            if start.elapsed() > timeout {
                self.regs.fail();
                return Err(Error::Timeout {
                    what: "did not complete an I/O command",
                    waited: timeout,
                    hint: "; the controller was disabled to stop its DMA",
                });
            }
            std::hint::spin_loop();
        }
    }
}
