//! The plan as a person reads it (`isonvme-map show`): nodes, housekeeping
//! and isolated CPUs, each vector and queue with its CPUs, and the offline
//! rule — within 80 columns.

use std::fmt::Write as _;

use serde_json::json;

use crate::isolation::Isolation;
use crate::{CpuSet, Plan, QueueMap, Topology};

/// Width the report keeps to.
const WIDTH: usize = 80;

/// Everything `show` prints, for both the text and the JSON form.
pub struct Report<'a> {
    /// The machine.
    pub topology: &'a Topology,
    /// The isolated set as configured, and where it came from.
    pub isolation: &'a Isolation,
    /// The plan.
    pub plan: &'a Plan,
}

/// Appends `label` then `text`, wrapping `text` at commas so no line passes
/// [`WIDTH`]; continuation lines are indented under the first.
fn wrapped(out: &mut String, label: &str, text: &str) {
    let indent = label.chars().count();
    let mut line = String::from(label);
    let mut line_len = indent;
    let pieces: Vec<&str> = text.split_inclusive(',').collect();
    for piece in pieces {
        let piece_len = piece.chars().count();
        if line_len + piece_len > WIDTH && line_len > indent {
            out.push_str(line.trim_end());
            out.push('\n');
            line = " ".repeat(indent);
            line_len = indent;
        }
        line.push_str(piece);
        line_len += piece_len;
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

fn or_dash(set: &CpuSet) -> String {
    if set.is_empty() {
        "-".to_string()
    } else {
        set.to_string()
    }
}

impl Report<'_> {
    /// The text form.
    pub fn text(&self) -> String {
        let Report {
            topology,
            isolation,
            plan,
        } = self;
        let mut out = String::new();
        let params = &plan.params;
        let _ = writeln!(
            out,
            "Plan for this machine: policy {}, {} I/O queue{} requested",
            plan.policy,
            params.queues,
            if params.queues == 1 { "" } else { "s" }
        );
        out.push('\n');
        wrapped(&mut out, "Possible      ", &topology.possible().to_string());
        wrapped(&mut out, "Online        ", &or_dash(topology.online()));
        wrapped(&mut out, "Housekeeping  ", &or_dash(&plan.housekeeping));
        wrapped(&mut out, "Isolated      ", &or_dash(&plan.isolated));
        wrapped(&mut out, "  from        ", &isolation.source.to_string());
        if plan.isolated != isolation.isolated {
            wrapped(
                &mut out,
                "  note        ",
                &format!(
                    "configured {} left no present housekeeping CPU; the boot CPU stays housekeeping",
                    or_dash(&isolation.isolated)
                ),
            );
        }

        out.push_str("\nNUMA nodes\n");
        for (node, cpus) in topology.nodes() {
            let housekeeping = cpus.intersection(&plan.housekeeping);
            let isolated = cpus.intersection(&plan.isolated);
            wrapped(
                &mut out,
                &format!("  node {node:<3} "),
                &format!(
                    "CPUs {}  housekeeping {}  isolated {}",
                    or_dash(cpus),
                    or_dash(&housekeeping),
                    or_dash(&isolated)
                ),
            );
        }

        let resv = params.pre_vectors + params.post_vectors;
        let spread = plan.nr_vecs.saturating_sub(resv);
        out.push('\n');
        if plan.enospc {
            let _ = writeln!(
                out,
                "Interrupt vectors: allocation fails (ENOSPC): {} vectors < min_vectors",
                plan.nr_vecs
            );
        } else {
            let cap = if plan.isolation_active && plan.policy == crate::Policy::IoQueue {
                let count = plan.housekeeping.len();
                let plural = if count == 1 { "" } else { "s" };
                format!(", capped at {count} housekeeping CPU{plural}")
            } else {
                String::new()
            };
            wrapped(
                &mut out,
                "",
                &format!(
                    "Interrupt vectors: {} ({} unmanaged + {} spread{})",
                    plan.nr_vecs, resv, spread, cap
                ),
            );
            out.push_str("  vector  kind       CPUs\n");
            for (index, vector) in plan.vectors.iter().enumerate() {
                let kind = if !vector.managed {
                    if index < params.pre_vectors {
                        "admin/pre"
                    } else {
                        "post"
                    }
                } else {
                    "I/O"
                };
                wrapped(
                    &mut out,
                    &format!("  {index:<7} {kind:<10} "),
                    &vector.cpus.to_string(),
                );
            }
        }

        let maps = plan.hardware_maps();
        for (set, map) in maps.iter().enumerate() {
            out.push('\n');
            let title = if plan.irq_queue_maps.is_empty() {
                "I/O queues (generic map; no vectors)".to_string()
            } else if maps.len() > 1 {
                format!("I/O queues of vector set {set}")
            } else {
                "I/O queues".to_string()
            };
            let _ = writeln!(out, "{title}: completions are served on the vector's CPUs");
            out.push_str("  queue  vector  completions on   submitted from\n");
            self.queue_rows(&mut out, map);
            if map.fallback {
                let _ = writeln!(
                    out,
                    "  (no usable mapping under these constraints: every CPU uses queue {})",
                    map.queue_offset
                );
            }
        }

        out.push_str("\nOffline rule\n");
        let (allowed, refused) = self.offline_split();
        wrapped(&mut out, "  may go offline    ", &or_dash(&allowed));
        wrapped(&mut out, "  must stay online  ", &or_dash(&refused));
        if !refused.is_empty() {
            out.push_str(
                "  (each is the last online housekeeping CPU of a queue that online\n   isolated CPUs submit to; see `isonvme-map can-offline CPU`)\n",
            );
        }
        out
    }

    fn queue_rows(&self, out: &mut String, map: &QueueMap) {
        let plan = self.plan;
        let first_vector = plan.params.pre_vectors
            + plan
                .irq_queue_maps
                .iter()
                .take_while(|m| !std::ptr::eq(*m, map))
                .map(|m| m.nr_queues)
                .sum::<usize>();
        for (index, submitters) in map.queues().iter().enumerate() {
            let queue = map.queue_offset + index;
            let (vector, completions) = if plan.irq_queue_maps.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                let vector = first_vector + index;
                let cpus = plan
                    .vectors
                    .get(vector)
                    .map(|v| v.cpus.to_string())
                    .unwrap_or_default();
                (vector.to_string(), cpus)
            };
            // The completion column is narrow; a long list goes on its own
            // wrapped line so the submitters column stays readable.
            if completions.chars().count() <= 16 {
                wrapped(
                    out,
                    &format!("  {queue:<6} {vector:<7} {completions:<16} "),
                    &or_dash(submitters),
                );
            } else {
                wrapped(out, &format!("  {queue:<6} {vector:<7} "), &completions);
                wrapped(
                    out,
                    &format!("  {:<6} {:<7} {:<16} ", "", "", ""),
                    &or_dash(submitters),
                );
            }
        }
    }

    /// Online CPUs that may go offline, and those that may not.
    pub fn offline_split(&self) -> (CpuSet, CpuSet) {
        let mut allowed = CpuSet::new();
        let mut refused = CpuSet::new();
        for cpu in self.topology.online().iter() {
            match self.plan.can_offline(self.topology, cpu) {
                Some(verdict) if verdict.allowed() => allowed.insert(cpu),
                _ => refused.insert(cpu),
            };
        }
        (allowed, refused)
    }

    /// The JSON form: the machine, the isolation source, the plan in the
    /// specification's shape, and the offline split.
    pub fn json(&self) -> serde_json::Value {
        let (allowed, refused) = self.offline_split();
        let nodes: serde_json::Map<String, serde_json::Value> = self
            .topology
            .nodes()
            .iter()
            .map(|(node, cpus)| (node.to_string(), json!(cpus)))
            .collect();
        json!({
            "policy": self.plan.policy,
            "topology": {
                "possible": self.topology.possible(),
                "present": self.topology.present(),
                "online": self.topology.online(),
                "nodes": nodes,
            },
            "isolation": {
                "configured": self.isolation.isolated,
                "effective": self.plan.isolated,
                "source": self.isolation.source,
            },
            "params": self.plan.params,
            "plan": self.plan.to_spec_json(),
            "offline": { "allowed": allowed, "refused": refused },
        })
    }
}
