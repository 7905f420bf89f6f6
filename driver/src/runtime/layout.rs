//! The queues a runtime builds, for display and checks, and the rule that
//! decides how many CPUs get an inline-polled queue pair when the
//! controller grants too few queues for all that ask.

use std::fmt;

use isonvme_mapping::CpuSet;

/// A CPU's inline queue pair: its own SQ and a CQ created with interrupts
/// disabled, reaped by the CPU's own thread inside `poll()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineQueue {
    /// The CPU owning it.
    pub cpu: usize,
    /// Its submission queue id.
    pub sq: u16,
    /// Its completion queue id (no interrupt vector).
    pub cq: u16,
}

/// The queues the runtime built, for display and checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueLayout {
    /// Per I/O vector: (vector, CQ id, housekeeping CPUs serving it).
    pub vectors: Vec<(u16, u16, CpuSet)>,
    /// Per hardware SQ of the interrupt-driven path: (SQ id, CQ id, CPUs
    /// submitting through it).
    pub sqs: Vec<(u16, u16, CpuSet)>,
    /// Whether CPUs share hardware SQs through software rings.
    pub shared_sqs: bool,
    /// The CPUs with inline-polled queue pairs.
    pub inline: Vec<InlineQueue>,
    /// CPUs that asked for an inline queue pair but did not get one because
    /// the controller granted too few queues; they use the shared-CQ path.
    pub inline_refused: CpuSet,
}

impl QueueLayout {
    /// The CPUs that reap their own completions inline.
    pub fn inline_cpus(&self) -> CpuSet {
        self.inline.iter().map(|q| q.cpu).collect()
    }
}

impl fmt::Display for QueueLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} I/O vectors, {} SQs ({}), {} inline queue pairs",
            self.vectors.len(),
            self.sqs.len(),
            if self.shared_sqs {
                "shared through per-CPU rings"
            } else {
                "one per CPU"
            },
            self.inline.len()
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
                if sqs.is_empty() {
                    "none".to_owned()
                } else {
                    sqs.join(" ")
                }
            )?;
        }
        if !self.inline.is_empty() {
            let pairs: Vec<String> = self
                .inline
                .iter()
                .map(|q| format!("CPU {}: SQ {}/CQ {}", q.cpu, q.sq, q.cq))
                .collect();
            writeln!(
                f,
                "  inline (no vector; each CPU reaps its own CQ in poll()): {}",
                pairs.join(", ")
            )?;
        }
        if !self.inline_refused.is_empty() {
            writeln!(
                f,
                "  inline refused for CPUs {} (the controller granted too few queues): they use their vector's shared CQ",
                self.inline_refused
            )?;
        }
        Ok(())
    }
}

/// The queues the controller granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Granted {
    pub sqs: usize,
    pub cqs: usize,
}

/// How many of the CPUs asking for inline queue pairs get one: as many as
/// fit, in the order asked, after the interrupt-driven path keeps a CQ per
/// I/O vector and an SQ for each of the remaining CPUs — or, when those do
/// not fit, one shared SQ per queue they use (`shared_sqs_for(k)`, the
/// queues the CPUs left after granting `k` map to). `None` when even no
/// inline pair leaves the interrupt-driven path enough SQs.
///
/// Like the kernel's `nvme.poll_queues`, inline pairs come first: every
/// CQ beyond the vectors' goes to them.
pub(super) fn grant_inline(
    asking: usize,
    all_cpus: usize,
    io_vectors: usize,
    granted: Granted,
    shared_sqs_for: impl Fn(usize) -> usize,
) -> Option<usize> {
    let most = asking.min(granted.cqs.saturating_sub(io_vectors));
    (0..=most).rev().find(|&k| {
        let others = all_cpus - k;
        let needed = if others == 0 {
            0
        } else if others + k <= granted.sqs {
            others
        } else {
            shared_sqs_for(k)
        };
        k + needed <= granted.sqs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cpu_asking_gets_a_pair_when_the_controller_grants_enough() {
        let granted = Granted { sqs: 64, cqs: 64 };
        assert_eq!(grant_inline(6, 8, 2, granted, |_| 2), Some(6));
        assert_eq!(grant_inline(8, 8, 2, granted, |_| 0), Some(8));
    }

    #[test]
    fn completion_queues_beyond_the_vectors_bound_the_inline_pairs() {
        // 4 CQs, 2 for the vectors: 2 of the 6 asking get inline pairs.
        let granted = Granted { sqs: 64, cqs: 4 };
        assert_eq!(grant_inline(6, 8, 2, granted, |_| 2), Some(2));
        // No CQ to spare: nobody.
        let granted = Granted { sqs: 64, cqs: 2 };
        assert_eq!(grant_inline(6, 8, 2, granted, |_| 2), Some(0));
    }

    #[test]
    fn submission_queues_fall_back_to_sharing_before_inline_pairs_are_refused() {
        // 8 CPUs, 6 SQs: 4 inline + 4 others do not fit one SQ each, but
        // the others fit 2 shared SQs.
        let granted = Granted { sqs: 6, cqs: 64 };
        assert_eq!(grant_inline(4, 8, 2, granted, |_| 2), Some(4));
        // 6 SQs, 6 asking: 6 inline + 2 others sharing 2 SQs = 8 > 6;
        // 4 inline + 2 shared = 6 fits.
        assert_eq!(grant_inline(6, 8, 2, granted, |_| 2), Some(4));
        // Too few SQs even without inline pairs.
        let granted = Granted { sqs: 1, cqs: 64 };
        assert_eq!(grant_inline(0, 8, 2, granted, |_| 2), None);
    }
}
