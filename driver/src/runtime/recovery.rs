//! Recovery, as the kernel's nvme driver does it (`nvme_timeout` → Abort →
//! `nvme_reset_ctrl`), run by one watchdog thread on the housekeeping CPUs.
//!
//! The watchdog publishes a coarse millisecond clock the isolated CPUs stamp
//! each command's deadline with (a load and a store on the hot path, no
//! system call, no TSC). Every [`WATCHDOG_TICK`] it reads CSTS and the
//! deadlines, and climbs the ladder:
//!
//! 1. a command past its deadline gets an Abort (admin opcode 0x08); an
//!    aborted command completes with "command abort requested", which its
//!    handle retries;
//! 2. still outstanding `abort_timeout` later, or CSTS.CFS set: controller
//!    reset. The watchdog disables the controller (all DMA stops), bumps the
//!    reset epoch to odd, waits for every completion thread to drain and
//!    reset its CQs and shared SQs, enables the controller again in the same
//!    admin memory, re-creates the vectors' CQs and shared SQs with the same
//!    ids, depths, memory and vectors (MSI-X and IRQ affinity are untouched
//!    by a controller reset), and bumps the epoch to even;
//! 3. each handle notices the new epoch in its next `poll()`, takes the
//!    completions reaped before the reset, starts its own rings over and
//!    acknowledges; the watchdog then re-creates that handle's queues and
//!    the handle resubmits what was in flight (or fails it when its retry
//!    budget is spent). Handles stay valid; no buffer is handed back while
//!    the device may still write it.
//!
//! The watchdog also services Asynchronous Event Requests
//! ([`crate::events`]): the events land in [`crate::Controller::take_events`].
//!
//! All-ones register reads mean the device is gone: every command in flight
//! fails at once with "command aborted by host" and later calls say the
//! device was removed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use isonvme_mapping::CpuSet;
use vmm_sys_util::eventfd::EventFd;

use crate::controller::Controller;
use crate::error::{Error, Result};
use crate::nvme::SubmissionEntry;
use crate::os;

/// For this long after a reset the watchdog looks every 100 us, so the
/// handles that acknowledge get their queues back at once.
const AFTER_RESET_FAST_MS: u64 = 50;

/// `Health::reset_requested`: a protocol violation.
const RESET_PROTOCOL: u8 = 1;
/// `Health::reset_requested`: the application asked.
const RESET_ASKED: u8 = 2;

/// How often the watchdog wakes: publishes the clock, reads CSTS, looks at
/// the deadlines and the asynchronous events. 1 ms cost the simulator's
/// inline QD1 p99.9 6.6 -> 39 us on a 2-CPU machine (each wake-up preempts
/// the device thread sharing the housekeeping CPU); 4 ms keeps a fatal
/// status noticed "within milliseconds" at a quarter of the wake-ups.
pub const WATCHDOG_TICK: Duration = Duration::from_millis(4);

/// How long a reset waits for the completion threads to drain their CQs.
const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// The controller's life as the handles see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceState {
    /// Serving I/O (possibly between resets).
    Alive,
    /// Gone from the bus: registers read all-ones.
    Removed,
    /// A reset did not bring the controller back.
    Failed,
}

/// What recovery has done, for reports and tests.
#[derive(Debug, Default)]
pub struct RecoveryCounters {
    /// Commands found past their deadline.
    pub timeouts: AtomicU64,
    /// Abort commands sent.
    pub aborts_sent: AtomicU64,
    /// Aborts the controller reported as done (the command then completed
    /// with "command abort requested").
    pub aborts_done: AtomicU64,
    /// Controller resets started.
    pub resets: AtomicU64,
    /// Fatal statuses (CSTS.CFS) seen.
    pub fatal_status: AtomicU64,
    /// Duration of the last completed reset, disable to queues back, in
    /// microseconds.
    pub last_reset_micros: AtomicU64,
    /// The longest completed reset, in microseconds.
    pub max_reset_micros: AtomicU64,
}

/// State shared by the watchdog, the completion threads and the handles.
pub(crate) struct Health {
    /// Milliseconds since the runtime opened, published by the watchdog.
    pub now_ms: AtomicU64,
    /// Even: queues exist; odd: the controller is disabled for a reset.
    /// Also bumped when the device is removed or given up on.
    pub epoch: AtomicU64,
    state: AtomicU8,
    /// Why a reset was asked for (0: it was not): a thread saw the
    /// controller break the protocol (an impossible SQ head), or the
    /// application asked.
    reset_requested: AtomicU8,
    /// When the last reset brought the queues back (ms), so commands
    /// resubmitted by a completion thread get a fresh deadline.
    pub last_reset_ms: AtomicU64,
    /// What recovery did.
    pub counters: RecoveryCounters,
}

impl Health {
    pub fn new() -> Self {
        Health {
            now_ms: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            state: AtomicU8::new(0),
            reset_requested: AtomicU8::new(0),
            last_reset_ms: AtomicU64::new(0),
            counters: RecoveryCounters::default(),
        }
    }

    pub fn state(&self) -> DeviceState {
        match self.state.load(Ordering::Acquire) {
            0 => DeviceState::Alive,
            1 => DeviceState::Removed,
            _ => DeviceState::Failed,
        }
    }

    /// Ends the device's life and wakes everyone that watches the epoch.
    fn end(&self, state: DeviceState) {
        let value = match state {
            DeviceState::Alive => return,
            DeviceState::Removed => 1,
            DeviceState::Failed => 2,
        };
        if self
            .state
            .compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // Release: the state is visible to whoever sees the new epoch.
            self.epoch.fetch_add(2, Ordering::AcqRel);
        }
    }

    /// The error for a submission once the device is no longer alive.
    /// Asks the watchdog for a controller reset (a protocol violation).
    pub fn request_reset(&self) {
        self.reset_requested
            .store(RESET_PROTOCOL, Ordering::Release);
    }

    /// Asks the watchdog for a controller reset the application wants.
    pub fn request_reset_by_application(&self) {
        let _ = self.reset_requested.compare_exchange(
            0,
            RESET_ASKED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub fn error(&self) -> Option<Error> {
        match self.state() {
            DeviceState::Alive => None,
            DeviceState::Removed => Some(Error::DeviceRemoved),
            DeviceState::Failed => Some(Error::Unusable(
                "a controller reset did not bring the controller back (see the log); reopen it",
            )),
        }
    }
}

/// An I/O queue to create again after a reset, exactly as at open.
#[derive(Debug, Clone, Copy)]
pub(crate) enum QueueSpec {
    /// A completion queue (with its MSI-X vector, or polled).
    Cq {
        qid: u16,
        depth: u32,
        iova: u64,
        vector: Option<u16>,
    },
    /// A submission queue completing to `cq`.
    Sq {
        qid: u16,
        depth: u32,
        iova: u64,
        cq: u16,
    },
}

impl QueueSpec {
    fn announce(&self, controller: &Controller, bound: Duration) -> Result<()> {
        // Within `bound`, without stopping the controller on a timeout:
        // the watchdog decides what follows.
        match *self {
            QueueSpec::Cq {
                qid,
                depth,
                iova,
                vector,
            } => controller.announce_io_cq(qid, depth, iova, vector, Some(bound)),
            QueueSpec::Sq {
                qid,
                depth,
                iova,
                cq,
            } => controller.announce_io_sq(qid, depth, iova, cq, Some(bound)),
        }
    }
}

/// One CPU's handle as the watchdog sees it: the deadlines of its
/// commands, and the handshake that brings its queues back after a reset.
pub(crate) struct HandleWatch {
    /// The hardware SQ its commands go to (for Abort).
    pub sq: u16,
    /// Command ids are `cid_base + slot`.
    pub cid_base: u16,
    /// Per slot: the coarse-clock millisecond after which the command is
    /// late; 0 when the slot is free. Written by the handle only.
    pub deadlines: Box<[AtomicU64]>,
    /// The epoch whose reset the handle has taken in (its rings start
    /// over): its own queues may be created.
    pub acked: AtomicU64,
    /// The epoch for which its queues exist again.
    pub ready: AtomicU64,
    /// The queues the handle owns (created after its acknowledgement), in
    /// creation order.
    pub own_queues: Vec<QueueSpec>,
}

impl HandleWatch {
    pub fn new(sq: u16, cid_base: u16, slots: u16, own_queues: Vec<QueueSpec>) -> Self {
        HandleWatch {
            sq,
            cid_base,
            deadlines: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            acked: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            own_queues,
        }
    }
}

/// The timing the watchdog applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// How long a command may take.
    pub command_timeout: Duration,
    /// How long an aborted command may stay outstanding before the reset.
    pub abort_timeout: Duration,
}

impl Timing {
    /// How long an admin command of the watchdog's (Abort, queue
    /// re-creation) may take: the abort timeout, at least a second, as a
    /// loaded housekeeping CPU may be slow to run the controller's side.
    fn admin_bound(&self) -> Duration {
        self.abort_timeout.max(Duration::from_secs(1))
    }
}

/// What the watchdog thread runs over.
pub(crate) struct Watchdog {
    pub controller: Arc<Controller>,
    pub health: Arc<Health>,
    pub handles: Vec<Arc<HandleWatch>>,
    /// Each completion thread's acknowledgement of an odd epoch.
    pub group_acks: Vec<Arc<AtomicU64>>,
    /// The vectors' CQs and the shared SQs, re-created by the watchdog.
    pub group_queues: Vec<QueueSpec>,
    /// Wakes completion threads blocked on their interrupts.
    pub kick: Vec<Arc<EventFd>>,
    pub stop: Arc<AtomicBool>,
    pub timing: Timing,
    /// Where the watchdog runs.
    pub housekeeping: CpuSet,
}

impl Watchdog {
    /// The thread body.
    pub fn run(self) {
        let removal_notice = self.controller.transport().removal_notice();
        if let Err(error) =
            os::pin_current_thread(&self.housekeeping.intersection(&os::placeable_cpus()))
        {
            tracing::warn!(%error, "cannot pin the recovery watchdog to the housekeeping CPUs");
        }
        os::set_timer_slack(Duration::from_micros(50));
        let start = Instant::now();
        let mut aborted: HashMap<(usize, usize), (u64, u64)> = HashMap::new();
        while !self.stop.load(Ordering::Acquire) {
            // Right after a reset, handles acknowledge and wait for their
            // queues: serve them within 100 us, not a tick.
            let since_reset = millis(start.elapsed())
                .saturating_sub(self.health.last_reset_ms.load(Ordering::Acquire));
            let catching_up = self.health.counters.resets.load(Ordering::Relaxed) > 0
                && since_reset < AFTER_RESET_FAST_MS;
            std::thread::sleep(if catching_up {
                Duration::from_micros(100)
            } else {
                WATCHDOG_TICK
            });
            let now = millis(start.elapsed());
            // Release: pairs with the handles' loads; a late clock only
            // makes deadlines late, never early.
            self.health.now_ms.store(now, Ordering::Release);
            let regs = self.controller.registers();
            if regs.failed.load(Ordering::Acquire) || self.health.state() != DeviceState::Alive {
                continue;
            }
            if removal_notice
                .as_ref()
                .is_some_and(|notice| notice.read().is_ok())
            {
                // A hot-unplug waits for us: stop the controller's DMA while
                // it is still there, then let go as for a removal.
                tracing::error!("the host asks for the device back (hot-unplug)");
                let _ = regs.disable();
                self.removed(start);
                continue;
            }
            let csts = regs.csts();
            if csts.0 == u32::MAX {
                self.removed(start);
                continue;
            }
            if csts.cfs() {
                self.health
                    .counters
                    .fatal_status
                    .fetch_add(1, Ordering::Relaxed);
                self.reset(start, "the controller reported a fatal status (CSTS.CFS=1)");
                aborted.clear();
                continue;
            }
            let why = match self.health.reset_requested.swap(0, Ordering::AcqRel) {
                0 => None,
                RESET_PROTOCOL => Some("the controller broke the protocol (an impossible SQ head)"),
                _ => Some("the application asked for it"),
            };
            if let Some(why) = why {
                self.reset(start, why);
                aborted.clear();
                continue;
            }
            self.serve_acknowledgements();
            if let Err(error) = self.controller.service_events() {
                tracing::debug!(%error, "asynchronous events not serviced");
            }
            if self.scan(now, &mut aborted) {
                self.reset(start, "a command stayed outstanding after its Abort");
                aborted.clear();
            }
        }
    }

    /// Looks for late commands: aborts each once, and asks for a reset when
    /// an aborted one is still outstanding `abort_timeout` later.
    fn scan(&self, now: u64, aborted: &mut HashMap<(usize, usize), (u64, u64)>) -> bool {
        let timeout = millis(self.timing.command_timeout);
        let abort_timeout = millis(self.timing.abort_timeout);
        // A command a completion thread resubmitted after a reset keeps its
        // old stamp: no deadline before the reset's end plus a timeout.
        let floor = self
            .health
            .last_reset_ms
            .load(Ordering::Acquire)
            .saturating_add(timeout);
        aborted.retain(|&(handle, slot), (deadline, _)| {
            self.handles[handle].deadlines[slot].load(Ordering::Relaxed) == *deadline
        });
        for (index, handle) in self.handles.iter().enumerate() {
            for (slot, deadline) in handle.deadlines.iter().enumerate() {
                let deadline = deadline.load(Ordering::Relaxed);
                if deadline == 0 || now < deadline.max(floor) {
                    continue;
                }
                match aborted.get(&(index, slot)) {
                    Some(&(_, sent)) => {
                        if now >= sent.saturating_add(abort_timeout) {
                            return true;
                        }
                    }
                    None => {
                        self.health
                            .counters
                            .timeouts
                            .fetch_add(1, Ordering::Relaxed);
                        aborted.insert((index, slot), (deadline, now));
                        let cid = handle.cid_base.wrapping_add(slot as u16);
                        if !self.abort(handle.sq, cid) {
                            // The admin queue does not answer either: no
                            // point aborting the others.
                            return true;
                        }
                    }
                }
            }
        }
        false
    }

    /// Sends Abort for command `cid` of `sq`; returns whether the admin
    /// queue answered.
    fn abort(&self, sq: u16, cid: u16) -> bool {
        let counters = &self.health.counters;
        counters.aborts_sent.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(sq, cid, timeout = ?self.timing.command_timeout, "I/O command timed out; aborting it");
        match self.controller.admin_command_bounded(
            "Abort",
            SubmissionEntry::abort(sq, cid),
            self.timing.admin_bound(),
        ) {
            Ok(entry) if entry.dw0 & 1 == 0 => {
                counters.aborts_done.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(_) => {
                tracing::warn!(sq, cid, "the controller did not abort the command");
                true
            }
            Err(Error::Command { status, .. }) => {
                // Abort Command Limit Exceeded and the like: the command
                // gets its abort timeout all the same.
                tracing::warn!(sq, cid, %status, "Abort refused");
                true
            }
            Err(error) => {
                tracing::warn!(sq, cid, %error, "Abort got no answer");
                false
            }
        }
    }

    /// Creates the queues of handles that took in the current reset.
    fn serve_acknowledgements(&self) {
        let epoch = self.health.epoch.load(Ordering::Acquire);
        if epoch == 0 || !epoch.is_multiple_of(2) {
            return;
        }
        for handle in &self.handles {
            if handle.acked.load(Ordering::Acquire) != epoch
                || handle.ready.load(Ordering::Acquire) == epoch
            {
                continue;
            }
            for spec in &handle.own_queues {
                if let Err(error) = spec.announce(&self.controller, self.timing.admin_bound()) {
                    tracing::error!(%error, "re-creating a CPU's queue after a reset failed");
                    self.give_up();
                    return;
                }
            }
            // Release: the queue exists before the handle pushes into it.
            handle.ready.store(epoch, Ordering::Release);
        }
    }

    /// The reset (see the module text). On failure the device is given up
    /// on and every command in flight fails.
    fn reset(&self, start: Instant, why: &'static str) {
        let began = Instant::now();
        let counters = &self.health.counters;
        counters.resets.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(reason = why, "resetting the controller");
        let regs = self.controller.registers();
        match regs.disable() {
            Ok(()) => {}
            Err(Error::DeviceRemoved) => return self.removed(start),
            Err(error) => {
                tracing::error!(%error, "the controller did not stop for its reset");
                return self.give_up();
            }
        }
        let Some(odd) = self.drain_completion_threads(start) else {
            tracing::error!("completion threads did not drain for the reset");
            return self.give_up();
        };
        let bound = self.timing.admin_bound();
        let back = self.controller.reinitialize().and_then(|()| {
            self.group_queues
                .iter()
                .try_for_each(|spec| spec.announce(&self.controller, bound))
        });
        match back {
            Ok(()) => {}
            Err(Error::DeviceRemoved) => return self.removed(start),
            Err(error) => {
                tracing::error!(%error, "the controller did not come back from its reset");
                return self.give_up();
            }
        }
        let now = millis(start.elapsed());
        self.health.now_ms.store(now, Ordering::Release);
        self.health.last_reset_ms.store(now, Ordering::Release);
        let took = began.elapsed().as_micros() as u64;
        counters.last_reset_micros.store(took, Ordering::Relaxed);
        counters.max_reset_micros.fetch_max(took, Ordering::Relaxed);
        // Even: the vectors' queues exist; handles acknowledge and get
        // theirs back one by one. (Release: the counters above are seen by
        // whoever sees the epoch.)
        self.health.epoch.store(odd + 1, Ordering::Release);
        self.wake_completion_threads();
        tracing::warn!(micros = took, "controller reset done; resubmitting");
    }

    /// Odd epoch: every completion thread hands over what the controller
    /// completed, starts its rings over and acknowledges. Returns the odd
    /// epoch, or `None` when they did not within [`DRAIN_BOUND`].
    fn drain_completion_threads(&self, start: Instant) -> Option<u64> {
        let odd = self.health.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake_completion_threads();
        let drain_deadline = Instant::now() + DRAIN_BOUND;
        while self
            .group_acks
            .iter()
            .any(|ack| ack.load(Ordering::Acquire) < odd)
        {
            if Instant::now() > drain_deadline || self.stop.load(Ordering::Acquire) {
                tracing::error!(
                    epoch = odd,
                    acknowledged = ?self.group_acks.iter().map(|a| a.load(Ordering::Relaxed)).collect::<Vec<_>>(),
                    "completion threads did not drain"
                );
                return None;
            }
            self.health
                .now_ms
                .store(millis(start.elapsed()), Ordering::Release);
            std::thread::sleep(Duration::from_micros(50));
        }
        Some(odd)
    }

    fn removed(&self, start: Instant) {
        tracing::error!(
            "the device is gone (hot-unplug, or registers reading all-ones); failing every command in flight"
        );
        // Completions it posted before it went are real: hand them over
        // before the rest fail.
        if self.health.epoch.load(Ordering::Acquire).is_multiple_of(2) {
            let _ = self.drain_completion_threads(start);
        }
        self.controller
            .registers()
            .stop("the device was removed (its registers read all-ones)");
        self.health.end(DeviceState::Removed);
        self.wake_completion_threads();
    }

    fn give_up(&self) {
        let regs = self.controller.registers();
        regs.stop("a controller reset did not bring the controller back");
        let _ = regs.disable();
        self.health.end(DeviceState::Failed);
        self.wake_completion_threads();
    }

    fn wake_completion_threads(&self) {
        for eventfd in &self.kick {
            let _ = eventfd.write(1);
        }
    }
}

/// Whole milliseconds, saturating.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
