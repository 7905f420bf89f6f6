//! Fault injection and counters, shared between test code and the device
//! thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::nvme::NvmeStatus;

/// Which commands a "fail the Nth command" fault counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultScope {
    /// Every command, admin and I/O.
    Any,
    /// Admin commands only.
    Admin,
    /// I/O commands only.
    Io,
}

/// A completion that no command asked for, to test how the driver copes
/// with a misbehaving device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpuriousCompletion {
    /// A successful completion on CQ `cqid` whose CID is not outstanding on
    /// any SQ of that CQ (neither executing nor waiting in the SQ).
    UnknownCid {
        /// Completion queue to post to.
        cqid: u16,
    },
    /// A successful completion on CQ `cqid` naming an SQ that does not exist.
    BogusSqId {
        /// Completion queue to post to.
        cqid: u16,
    },
    /// Exactly this entry (phase tag supplied by the controller).
    Raw {
        /// Completion queue to post to.
        cqid: u16,
        /// SQ identifier field.
        sq_id: u16,
        /// SQ head field.
        sq_head: u16,
        /// Command identifier field.
        cid: u16,
        /// Status field (15 bits, without the phase tag).
        status: u16,
        /// Command specific DW0.
        dw0: u32,
    },
}

/// What happens to one completion, decided when its command has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompletionFault {
    /// Posted normally.
    None,
    /// Never posted.
    Drop,
    /// Posted this much later than the latency model says.
    Delay(Duration),
}

#[derive(Default)]
struct Armed {
    fail: Vec<(FaultScope, u64, NvmeStatus)>,
    delay: Vec<(u64, Duration)>,
    drop: Vec<u64>,
    spurious: VecDeque<SpuriousCompletion>,
}

impl Armed {
    fn is_empty(&self) -> bool {
        self.fail.is_empty()
            && self.delay.is_empty()
            && self.drop.is_empty()
            && self.spurious.is_empty()
    }
}

/// Fault injection handle of a simulated controller
/// ([`super::SimController::faults`]).
///
/// "The Nth from now" counts from the moment the fault is armed: `n = 1`
/// is the next command (or completion) the device produces. Faults fire
/// once.
pub struct Faults {
    armed: Mutex<Armed>,
    any_armed: AtomicBool,
    fatal: AtomicBool,
    commands_any: AtomicU64,
    commands_admin: AtomicU64,
    commands_io: AtomicU64,
    completions: AtomicU64,
}

impl Faults {
    pub(crate) fn new() -> Self {
        Faults {
            armed: Mutex::new(Armed::default()),
            any_armed: AtomicBool::new(false),
            fatal: AtomicBool::new(false),
            commands_any: AtomicU64::new(0),
            commands_admin: AtomicU64::new(0),
            commands_io: AtomicU64::new(0),
            completions: AtomicU64::new(0),
        }
    }

    fn arm(&self, f: impl FnOnce(&mut Armed)) {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut armed);
        self.any_armed.store(true, Ordering::Release);
    }

    fn counter(&self, scope: FaultScope) -> &AtomicU64 {
        match scope {
            FaultScope::Any => &self.commands_any,
            FaultScope::Admin => &self.commands_admin,
            FaultScope::Io => &self.commands_io,
        }
    }

    /// Fails the `n`th command from now (counting only `scope`; `n` ≥ 1)
    /// with `status`, without executing it.
    pub fn fail_nth_command(&self, n: u64, scope: FaultScope, status: NvmeStatus) {
        let target = self.counter(scope).load(Ordering::Acquire) + n.max(1);
        self.arm(|a| a.fail.push((scope, target, status)));
    }

    /// Posts the `n`th completion from now (`n` ≥ 1) `by` later than the
    /// latency model would.
    pub fn delay_nth_completion(&self, n: u64, by: Duration) {
        let target = self.completions.load(Ordering::Acquire) + n.max(1);
        self.arm(|a| a.delay.push((target, by)));
    }

    /// Never posts the `n`th completion from now (`n` ≥ 1): its command
    /// runs, but the host never hears of it.
    pub fn drop_nth_completion(&self, n: u64) {
        let target = self.completions.load(Ordering::Acquire) + n.max(1);
        self.arm(|a| a.drop.push(target));
    }

    /// Puts the controller in fatal status: CSTS.CFS = 1 and no more
    /// command processing until the host resets it (CC.EN 1 → 0).
    pub fn set_fatal(&self) {
        self.fatal.store(true, Ordering::Release);
    }

    /// Posts a completion nobody asked for (see [`SpuriousCompletion`]).
    pub fn post_spurious(&self, completion: SpuriousCompletion) {
        self.arm(|a| a.spurious.push_back(completion));
    }

    /// Posts a completion with an unknown CID on CQ `cqid`.
    pub fn post_unknown_cid(&self, cqid: u16) {
        self.post_spurious(SpuriousCompletion::UnknownCid { cqid });
    }

    /// Posts a completion naming a non-existent SQ on CQ `cqid`.
    pub fn post_bogus_sq_id(&self, cqid: u16) {
        self.post_spurious(SpuriousCompletion::BogusSqId { cqid });
    }

    /// Disarms every pending fault (a requested fatal status included, if
    /// the device has not acted on it yet).
    pub fn clear(&self) {
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        *armed = Armed::default();
        self.any_armed.store(false, Ordering::Release);
        self.fatal.store(false, Ordering::Release);
    }

    /// Device side: a command was fetched; returns the status to fail it
    /// with, if a fault says so.
    pub(crate) fn on_command(&self, admin: bool) -> Option<NvmeStatus> {
        let any = self.commands_any.fetch_add(1, Ordering::AcqRel) + 1;
        let scoped = if admin {
            self.commands_admin.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.commands_io.fetch_add(1, Ordering::AcqRel) + 1
        };
        if !self.any_armed.load(Ordering::Acquire) {
            return None;
        }
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let hit = armed
            .fail
            .iter()
            .position(|&(scope, target, _)| match scope {
                FaultScope::Any => target == any,
                FaultScope::Admin => admin && target == scoped,
                FaultScope::Io => !admin && target == scoped,
            });
        let status = hit.map(|i| armed.fail.swap_remove(i).2);
        self.refresh(&armed);
        status
    }

    /// Device side: a command produced its completion.
    pub(crate) fn on_completion(&self) -> CompletionFault {
        let n = self.completions.fetch_add(1, Ordering::AcqRel) + 1;
        if !self.any_armed.load(Ordering::Acquire) {
            return CompletionFault::None;
        }
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let fault = if let Some(i) = armed.drop.iter().position(|&t| t == n) {
            armed.drop.swap_remove(i);
            CompletionFault::Drop
        } else if let Some(i) = armed.delay.iter().position(|&(t, _)| t == n) {
            CompletionFault::Delay(armed.delay.swap_remove(i).1)
        } else {
            CompletionFault::None
        };
        self.refresh(&armed);
        fault
    }

    /// Device side: the next spurious completion to post.
    pub(crate) fn take_spurious(&self) -> Option<SpuriousCompletion> {
        if !self.any_armed.load(Ordering::Acquire) {
            return None;
        }
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let next = armed.spurious.pop_front();
        self.refresh(&armed);
        next
    }

    /// Device side: whether a fatal status was requested (and clears the request).
    pub(crate) fn take_fatal(&self) -> bool {
        self.fatal.load(Ordering::Acquire) && self.fatal.swap(false, Ordering::AcqRel)
    }

    fn refresh(&self, armed: &Armed) {
        if armed.is_empty() {
            self.any_armed.store(false, Ordering::Release);
        }
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("armed", &self.any_armed.load(Ordering::Relaxed))
            .field("fatal_requested", &self.fatal.load(Ordering::Relaxed))
            .field("commands", &self.commands_any.load(Ordering::Relaxed))
            .field("completions", &self.completions.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::GenericStatus;

    #[test]
    fn counting_from_now() {
        let f = Faults::new();
        assert_eq!(f.on_command(true), None);
        let st = NvmeStatus::from(GenericStatus::InternalError);
        f.fail_nth_command(2, FaultScope::Io, st);
        assert_eq!(f.on_command(false), None); // io #1
        assert_eq!(f.on_command(true), None); // admin: not counted
        assert_eq!(f.on_command(false), Some(st)); // io #2
        assert_eq!(f.on_command(false), None); // fires once
        f.drop_nth_completion(1);
        f.delay_nth_completion(2, Duration::from_millis(3));
        assert_eq!(f.on_completion(), CompletionFault::Drop);
        assert_eq!(
            f.on_completion(),
            CompletionFault::Delay(Duration::from_millis(3))
        );
        assert_eq!(f.on_completion(), CompletionFault::None);
        assert!(!f.any_armed.load(Ordering::Relaxed));
        f.set_fatal();
        assert!(f.take_fatal());
        assert!(!f.take_fatal());
    }
}
