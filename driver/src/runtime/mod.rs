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
//!
//! Inline CPUs (the kernel's poll queues, in userspace) instead own a queue
//! pair whose CQ has no interrupt vector — outside the housekeeping vector
//! cap — and reap it themselves inside [`CpuHandle::poll`].
//!
//! The modules: [`handle`] is the submitting CPU's hot path, `completion`
//! the housekeeping threads, `hotplug` the online-CPU watcher and IRQ
//! steering, [`layout`] what was built.

mod completion;
pub mod handle;
mod hotplug;
pub mod layout;
mod recovery;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use isonvme_mapping::sysfs::SysfsRoot;
use isonvme_mapping::{
    isolation, plan, CpuSet, OfflineVerdict, Plan, PlanParams, Policy, Topology,
};

use crate::controller::Controller;
use crate::dma::DmaPool;
use crate::error::{DeviceError, Error, Result};
use crate::io::CommandBuilder;
use crate::os;
use crate::spsc;

pub use completion::{VectorCounters, VectorState, POLL_PARK_AFTER, POLL_PARK_NAP};
pub use handle::{CpuCounters, CpuHandle};
pub use hotplug::{ManualOnline, OnlineSource};
pub use layout::{InlineQueue, QueueLayout};
pub use recovery::{DeviceState, RecoveryCounters, WATCHDOG_TICK};

use completion::{SharedSq, VectorWork};
use handle::{CompletionPath, HandleParts, RetryPolicy, SubmitPath};
use layout::Granted;
use recovery::{HandleWatch, Health, QueueSpec};

/// How completion threads wait for work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompletionMode {
    /// Block on the vector's eventfd until the device interrupts.
    Interrupt,
    /// Spin on the completion queue while commands are in flight (lowest
    /// latency of the shared-CQ modes); nap when nothing has been in flight
    /// for [`POLL_PARK_AFTER`].
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
            "inline" => Err(Error::InvalidArgument(
                "completion mode `inline` is chosen per CPU: set RuntimeOptions::inline (InlineCpus::All or ::Isolated); the completion mode then applies to the other CPUs".into(),
            )),
            other => Err(Error::InvalidArgument(format!(
                "completion mode `{other}`: use interrupt, poll or hybrid"
            ))),
        }
    }
}

/// Which CPUs reap their own completions inline, from a queue pair whose CQ
/// has no interrupt (the kernel's poll queues, io_uring's IOPOLL).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum InlineCpus {
    /// None: every CPU's completions come from a housekeeping thread.
    #[default]
    None,
    /// The isolated CPUs; housekeeping CPUs keep the completion mode.
    Isolated,
    /// Every CPU.
    All,
    /// These CPUs.
    Only(CpuSet),
}

impl InlineCpus {
    /// The CPUs asking, isolated ones first (they get inline pairs first
    /// when the controller grants too few), each group in CPU order.
    fn asking(&self, cpus: &[usize], isolated: &CpuSet) -> Vec<usize> {
        let wants = |cpu: usize| match self {
            InlineCpus::None => false,
            InlineCpus::Isolated => isolated.contains(cpu),
            InlineCpus::All => true,
            InlineCpus::Only(set) => set.contains(cpu),
        };
        let mut asking: Vec<usize> = cpus.iter().copied().filter(|&c| wants(c)).collect();
        asking.sort_by_key(|&cpu| (!isolated.contains(cpu), cpu));
        asking
    }
}

impl std::str::FromStr for InlineCpus {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "none" | "" => Ok(InlineCpus::None),
            "isolated" => Ok(InlineCpus::Isolated),
            "all" => Ok(InlineCpus::All),
            list => list.parse::<CpuSet>().map(InlineCpus::Only).map_err(|e| {
                Error::InvalidArgument(format!(
                    "inline CPUs `{list}`: {e}; use none, isolated, all or a CPU list such as 2-3"
                ))
            }),
        }
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
    /// Which CPUs get an inline-polled queue pair instead of a housekeeping
    /// thread's completions.
    pub inline: InlineCpus,
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
    /// Completion threads to run (default: one per vector in interrupt
    /// mode, one per housekeeping CPU in poll and hybrid modes); with a
    /// count, vector `i` is served by thread `i mod threads`.
    pub completion_threads: Option<usize>,
    /// How long an I/O command may take before the watchdog aborts it
    /// (the kernel's `nvme.io_timeout`, 30 s by default).
    pub command_timeout: Duration,
    /// How long an aborted command may stay outstanding before the
    /// controller is reset.
    pub abort_timeout: Duration,
    /// Times a command is submitted again — after an error status without
    /// Do Not Retry, or a reset that dropped it — before it fails (the
    /// kernel's `nvme.max_retries`, 5).
    pub max_retries: u8,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            topology: None,
            isolated: None,
            mode: CompletionMode::Interrupt,
            inline: InlineCpus::None,
            depth: 128,
            max_sqs: None,
            max_transfer: 128 * 1024,
            online_source: None,
            watch_interval: Duration::from_millis(100),
            completion_threads: None,
            command_timeout: Duration::from_secs(30),
            abort_timeout: Duration::from_secs(1),
            max_retries: 5,
        }
    }
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
    health: Arc<Health>,
    retry: RetryPolicy,
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
        let cpus: Vec<usize> = topology.possible().iter().collect();
        let sq_budget = options
            .max_sqs
            .unwrap_or(info.granted_sqs)
            .min(info.granted_sqs);
        let granted = Granted {
            sqs: usize::from(sq_budget),
            cqs: usize::from(info.granted_cqs),
        };
        let asking = options.inline.asking(&cpus, &isolated);
        // Inline pairs come first, as the kernel's poll queues do, but the
        // interrupt-driven path keeps at least one CQ and one SQ.
        let inline_first = asking
            .len()
            .min(granted.cqs.saturating_sub(1))
            .min(granted.sqs.saturating_sub(1));
        // Queues to ask the policy for: bounded by the CQs left and the
        // vectors the device has (one goes to the admin queue).
        let queues = (granted.cqs - inline_first.min(granted.cqs))
            .min(usize::from(info.max_vectors.saturating_sub(1)))
            .min(cpus.len());
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
        let queue_of = |cpu: usize| map.queue_of(cpu).unwrap_or(0).min(nr_io_vectors - 1);
        let inline_count =
            layout::grant_inline(asking.len(), cpus.len(), nr_io_vectors, granted, |k| {
                let granted_inline: CpuSet = asking[..k].iter().copied().collect();
                let queues: std::collections::BTreeSet<usize> = cpus
                    .iter()
                    .filter(|&&cpu| !granted_inline.contains(cpu))
                    .map(|&cpu| queue_of(cpu))
                    .collect();
                queues.len()
            })
            .ok_or_else(|| {
                Error::from(DeviceError::Unsupported(format!(
                    "{sq_budget} SQs cannot serve {nr_io_vectors} queues even when shared"
                )))
            })?;
        let inline_cpus: CpuSet = asking[..inline_count].iter().copied().collect();
        let inline_refused: CpuSet = asking[inline_count..].iter().copied().collect();
        if !inline_refused.is_empty() {
            tracing::warn!(
                refused = %inline_refused,
                granted_sqs = granted.sqs,
                granted_cqs = granted.cqs,
                "the controller granted too few queues for every inline CPU: these use their vector's shared CQ"
            );
        }
        let interrupt_cpus: Vec<usize> = cpus
            .iter()
            .copied()
            .filter(|&cpu| !inline_cpus.contains(cpu))
            .collect();

        // The back-end's busy threads (the simulated device) are
        // housekeeping work too.
        let helper_cpus = plan.housekeeping.intersection(&os::placeable_cpus());
        if !plan.isolated.is_empty() && !helper_cpus.is_empty() {
            for tid in controller.transport().helper_threads() {
                if let Err(error) = os::pin_thread(tid, &helper_cpus) {
                    tracing::warn!(tid, %error, "cannot confine the back-end's thread to the housekeeping CPUs");
                }
            }
        }
        let eventfds = controller.transport().enable_vectors(plan.nr_vecs as u16)?;
        let online = topology.online().clone();
        // Steer every vector, the admin vector included, before any command
        // can make it fire: the admin commands below complete on vector 0.
        let housekeeping_online = plan.housekeeping.intersection(&online);
        hotplug::steer(&controller, 0, &housekeeping_online);
        for index in 0..nr_io_vectors {
            let target = plan.vectors[index + 1].cpus.intersection(&online);
            hotplug::steer(&controller, (index + 1) as u16, &target);
        }

        let depth = options.depth.clamp(2, info.max_queue_depth.min(4096));
        let max_transfer = options.max_transfer.min(info.max_transfer).max(4096);
        let runnable = os::runnable_cpus();
        let max_cpu = runnable.last().unwrap_or(0).max(topology.nr_cpu_ids());

        // The interrupt-driven CPUs of each queue.
        let mut queue_cpus: BTreeMap<usize, CpuSet> = BTreeMap::new();
        for &cpu in &interrupt_cpus {
            queue_cpus.entry(queue_of(cpu)).or_default().insert(cpu);
        }
        let shared_sqs = interrupt_cpus.len() + inline_count > granted.sqs;

        let counters: BTreeMap<usize, Arc<CpuCounters>> = cpus
            .iter()
            .map(|&cpu| (cpu, Arc::new(CpuCounters::default())))
            .collect();
        // Completion queues, one per I/O vector, deep enough for every SQ
        // that completes to it.
        let mut vectors = Vec::new();
        let mut work: Vec<VectorWork> = Vec::new();
        let mut layout = QueueLayout {
            vectors: Vec::new(),
            sqs: Vec::new(),
            shared_sqs,
            inline: Vec::new(),
            inline_refused,
        };
        let mut cq_ids = Vec::new();
        // What a reset re-creates: the vectors' CQs and the shared SQs (by
        // the watchdog), each CPU's own queues (after it acknowledges).
        let mut group_queues = Vec::new();
        let mut shared_sq_specs = Vec::new();
        let mut watches: BTreeMap<usize, Arc<HandleWatch>> = BTreeMap::new();
        for index in 0..nr_io_vectors {
            let vector = (index + 1) as u16;
            let home = plan.vectors[index + 1].cpus.clone();
            let feeders: Vec<Arc<CpuCounters>> = queue_cpus
                .get(&index)
                .map(|members| {
                    members
                        .iter()
                        .map(|cpu| Arc::clone(&counters[&cpu]))
                        .collect()
                })
                .unwrap_or_default();
            let members = feeders.len().max(1) as u32;
            let cq_depth = (depth * members + 1).clamp(2, info.max_queue_depth);
            let irq = options.mode != CompletionMode::Poll;
            let cq = controller.create_io_cq(vector, cq_depth, irq.then_some(vector))?;
            cq_ids.push(vector);
            group_queues.push(QueueSpec::Cq {
                qid: vector,
                depth: cq.depth(),
                iova: cq.iova(),
                vector: irq.then_some(vector),
            });
            let state = Arc::new(VectorState {
                vector,
                cq: vector,
                home: home.clone(),
                target: Mutex::new(home.intersection(&online)),
                generation: AtomicU64::new(0),
                eventfd: Arc::clone(&eventfds[index + 1]),
                counters: VectorCounters::new(max_cpu),
            });
            layout.vectors.push((vector, vector, home));
            vectors.push(Arc::clone(&state));
            work.push(VectorWork {
                state,
                cq,
                direct: BTreeMap::new(),
                shared: None,
                feeders,
            });
        }

        // Submission side of the interrupt-driven CPUs.
        let mut parts = BTreeMap::new();
        let mut sq_ids = Vec::new();
        let slots = (depth - 1) as u16;
        if !shared_sqs {
            for &cpu in &interrupt_cpus {
                let queue = queue_of(cpu);
                let sq_id = (sq_ids.len() + 1) as u16;
                let cq_id = (queue + 1) as u16;
                let sq = controller.create_io_sq(sq_id, depth, cq_id)?;
                sq_ids.push(sq_id);
                let (producer, consumer) = spsc::ring(depth as usize);
                work[queue].direct.insert(sq_id, producer);
                let watch = Arc::new(HandleWatch::new(
                    sq_id,
                    0,
                    slots,
                    vec![QueueSpec::Sq {
                        qid: sq_id,
                        depth: sq.depth(),
                        iova: sq.iova(),
                        cq: cq_id,
                    }],
                ));
                watches.insert(cpu, Arc::clone(&watch));
                parts.insert(
                    cpu,
                    HandleParts {
                        path: SubmitPath::Direct(sq),
                        completions: CompletionPath::Handed(consumer),
                        cid_base: 0,
                        slots,
                        watch,
                    },
                );
                layout.sqs.push((sq_id, cq_id, CpuSet::single(cpu)));
            }
        } else {
            for (queue, members) in &queue_cpus {
                let queue = *queue;
                let sq_id = (sq_ids.len() + 1) as u16;
                let cq_id = (queue + 1) as u16;
                let per_cpu_slots =
                    (u32::from(u16::MAX) / members.len() as u32).min(u32::from(slots)) as u16;
                let hw_depth = (u32::from(per_cpu_slots) * members.len() as u32 + 1)
                    .clamp(2, info.max_queue_depth);
                let sq = controller.create_io_sq(sq_id, hw_depth, cq_id)?;
                sq_ids.push(sq_id);
                shared_sq_specs.push(QueueSpec::Sq {
                    qid: sq_id,
                    depth: sq.depth(),
                    iova: sq.iova(),
                    cq: cq_id,
                });
                let mut shared = SharedSq {
                    sq,
                    per_cpu_slots,
                    submissions: Vec::new(),
                    completions: Vec::new(),
                    held: None,
                    in_flight: vec![None; usize::from(per_cpu_slots) * members.len()],
                    max_retries: options.max_retries,
                };
                for (local, cpu) in members.iter().enumerate() {
                    let (sub_tx, sub_rx) = spsc::ring(usize::from(per_cpu_slots));
                    let (done_tx, done_rx) = spsc::ring(usize::from(per_cpu_slots));
                    shared.submissions.push(sub_rx);
                    shared.completions.push(done_tx);
                    let cid_base = local as u16 * per_cpu_slots;
                    let watch =
                        Arc::new(HandleWatch::new(sq_id, cid_base, per_cpu_slots, Vec::new()));
                    watches.insert(cpu, Arc::clone(&watch));
                    parts.insert(
                        cpu,
                        HandleParts {
                            path: SubmitPath::Shared(sub_tx),
                            completions: CompletionPath::Handed(done_rx),
                            cid_base,
                            slots: per_cpu_slots,
                            watch,
                        },
                    );
                }
                layout.sqs.push((sq_id, cq_id, members.clone()));
                work[queue].shared = Some(shared);
            }
        }

        // Inline CPUs: an SQ and a CQ without interrupts each, after the
        // vectors' queues.
        for cpu in inline_cpus.iter() {
            let cq_id = (cq_ids.len() + 1) as u16;
            let sq_id = (sq_ids.len() + 1) as u16;
            let cq = controller.create_io_cq(cq_id, depth, None)?;
            cq_ids.push(cq_id);
            let sq = controller.create_io_sq(sq_id, depth, cq_id)?;
            sq_ids.push(sq_id);
            let watch = Arc::new(HandleWatch::new(
                sq_id,
                0,
                slots,
                vec![
                    QueueSpec::Cq {
                        qid: cq_id,
                        depth: cq.depth(),
                        iova: cq.iova(),
                        vector: None,
                    },
                    QueueSpec::Sq {
                        qid: sq_id,
                        depth: sq.depth(),
                        iova: sq.iova(),
                        cq: cq_id,
                    },
                ],
            ));
            watches.insert(cpu, Arc::clone(&watch));
            parts.insert(
                cpu,
                HandleParts {
                    path: SubmitPath::Direct(sq),
                    completions: CompletionPath::Inline(cq),
                    cid_base: 0,
                    slots,
                    watch,
                },
            );
            layout.inline.push(InlineQueue {
                cpu,
                sq: sq_id,
                cq: cq_id,
            });
        }
        tracing::info!(layout = %layout, "isonvme runtime queues");

        group_queues.extend(shared_sq_specs);
        let stop = Arc::new(AtomicBool::new(false));
        let regs = Arc::clone(controller.registers());
        let health = Arc::new(Health::new());
        let mut threads = Vec::new();
        let mut group_acks = Vec::new();
        for group in completion::group_vectors(work, options.mode, options.completion_threads) {
            if group.is_empty() {
                continue;
            }
            let stop = Arc::clone(&stop);
            let regs = Arc::clone(&regs);
            let health = Arc::clone(&health);
            let ack = Arc::new(AtomicU64::new(0));
            group_acks.push(Arc::clone(&ack));
            let mode = options.mode;
            let name = format!("isonvme-cq{}", group[0].state.vector);
            let thread = std::thread::Builder::new()
                .name(name)
                .spawn(move || {
                    completion::completion_thread(group, mode, &stop, &regs, &health, &ack)
                })
                .map_err(|source| crate::transport::TransportError::Io {
                    what: "starting a completion thread".into(),
                    source,
                })?;
            threads.push(thread);
        }
        let controller = Arc::new(controller);
        let crdt = controller.info().identify.crdt;
        let retry = RetryPolicy {
            timeout_ms: recovery::millis(options.command_timeout).max(1),
            max_retries: options.max_retries,
            retry_delay_ms: crdt.map(|units| u64::from(units) * 100),
        };
        let watchdog = recovery::Watchdog {
            controller: Arc::clone(&controller),
            health: Arc::clone(&health),
            handles: watches.values().cloned().collect(),
            group_acks,
            group_queues,
            kick: vectors.iter().map(|v| Arc::clone(&v.eventfd)).collect(),
            stop: Arc::clone(&stop),
            timing: recovery::Timing {
                command_timeout: options.command_timeout,
                abort_timeout: options.abort_timeout.min(options.command_timeout),
            },
            housekeeping: plan.housekeeping.clone(),
        };
        threads.push(
            std::thread::Builder::new()
                .name("isonvme-watchdog".into())
                .spawn(move || watchdog.run())
                .map_err(|source| crate::transport::TransportError::Io {
                    what: "starting the recovery watchdog".into(),
                    source,
                })?,
        );
        let mut runtime = Runtime {
            commands: CommandBuilder {
                namespaces: info.namespaces.clone(),
                max_transfer,
            },
            controller: Arc::clone(&controller),
            plan,
            topology: Arc::new(Mutex::new(topology)),
            layout,
            parts: Mutex::new(parts),
            counters,
            vectors,
            stop,
            threads,
            max_transfer,
            sq_ids,
            cq_ids,
            health,
            retry,
        };
        let watcher = hotplug::start_watcher(hotplug::Watch {
            source: options
                .online_source
                .unwrap_or_else(|| Arc::new(SysfsRoot::host())),
            interval: options.watch_interval,
            stop: Arc::clone(&runtime.stop),
            vectors: runtime.vectors.clone(),
            controller,
            housekeeping: runtime.plan.housekeeping.clone(),
            topology: Arc::clone(&runtime.topology),
        })
        .map_err(|source| crate::transport::TransportError::Io {
            what: "starting the hotplug watcher".into(),
            source,
        })?;
        runtime.threads.push(watcher);
        Ok(runtime)
    }

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
        let ctx = handle::HandleContext {
            counters: Arc::clone(&self.counters[&cpu]),
            watch: Arc::clone(&parts.watch),
            health: Arc::clone(&self.health),
            policy: self.retry,
        };
        CpuHandle::new(
            cpu,
            parts,
            ctx,
            self.commands.clone(),
            self.controller.pool().clone(),
            Arc::clone(self.controller.registers()),
            self.max_transfer,
        )
    }
    /// The handle of the CPU the calling thread runs on now.
    pub fn current_handle(&self) -> Result<CpuHandle> {
        let cpu = os::current_cpu().ok_or_else(|| {
            Error::InvalidArgument("cannot tell which CPU this thread runs on".into())
        })?;
        self.handle(cpu)
    }

    /// What recovery has done: timeouts, aborts, resets and how long they
    /// took.
    pub fn recovery(&self) -> &RecoveryCounters {
        &self.health.counters
    }

    /// Resets the controller now, as `nvme reset` does for the kernel's
    /// driver, while I/O goes on: the watchdog disables and re-enables it,
    /// creates the queues again and the handles resubmit what was in flight
    /// (in their next `poll()`). Returns how long the reset took (disable
    /// to queues back), or the error when the controller did not come back
    /// or `timeout` passed first.
    pub fn reset_controller(&self, timeout: Duration) -> Result<Duration> {
        if let Some(error) = self.health.error() {
            return Err(error);
        }
        // Done when the epoch has gone two steps (odd: disabled, even:
        // back) past the even one it is at or heading to now.
        let seen = self.health.epoch.load(Ordering::Acquire);
        let done_at = if seen.is_multiple_of(2) {
            seen + 2
        } else {
            // One is under way: ours follows it.
            seen + 3
        };
        self.health.request_reset_by_application();
        let start = std::time::Instant::now();
        while self.health.epoch.load(Ordering::Acquire) < done_at {
            if let Some(error) = self.health.error() {
                return Err(error);
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    what: "did not come back from a reset",
                    waited: timeout,
                    hint: "; the watchdog goes on trying",
                });
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        Ok(Duration::from_micros(
            self.health
                .counters
                .last_reset_micros
                .load(Ordering::Acquire),
        ))
    }

    /// The asynchronous events the controller reported since the last
    /// call (namespace changed, health warnings, firmware activation),
    /// oldest first; the watchdog services the requests.
    pub fn async_events(&self) -> Vec<crate::events::AsyncEvent> {
        self.controller.take_events()
    }

    /// Whether the device still serves I/O, was removed, or was given up
    /// on after a reset that failed.
    pub fn device_state(&self) -> DeviceState {
        self.health.state()
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
        if self.health.state() != DeviceState::Alive {
            // Removed or given up on: there is no controller to tidy.
            return Ok(());
        }
        // After a reset, a CPU that never polled again has no queues at the
        // controller: deleting them fails harmlessly.
        let reset = self.health.counters.resets.load(Ordering::Relaxed) > 0;
        let mut first_error = None;
        for &sq in &self.sq_ids {
            if let Err(error) = self.controller.delete_io_sq(sq) {
                if !reset {
                    first_error.get_or_insert(error);
                }
            }
        }
        for &cq in &self.cq_ids {
            if let Err(error) = self.controller.delete_io_cq(cq) {
                if !reset {
                    first_error.get_or_insert(error);
                }
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
