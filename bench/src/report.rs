//! The isolation report: for each CPU that matters, device interrupts and
//! completions handled during the run, the job threads on it and their
//! context switches, and a one-line verdict.

use std::collections::BTreeMap;

use isonvme_mapping::CpuSet;
use serde_json::{json, Value};

use crate::run::Split;
use crate::stats::JobResult;

/// What was counted per CPU during the run.
#[derive(Debug, Clone, Default)]
pub struct CpuActivity {
    /// Device interrupts by CPU.
    pub interrupts: BTreeMap<usize, u64>,
    /// Completions handled by CPU (isonvme's completion threads).
    pub completions: BTreeMap<usize, u64>,
    /// Whether completions were counted at all (not for kernel engines).
    pub completion_counted: bool,
    /// Completions a job thread reaped itself from its CPU's own
    /// interrupt-less CQ (inline mode), by CPU: not foreign work.
    pub inline: BTreeMap<usize, u64>,
    /// Where the interrupt counts come from.
    pub interrupt_sources: Vec<String>,
}

/// One CPU's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuRow {
    /// The CPU.
    pub cpu: usize,
    /// Whether it is isolated.
    pub isolated: bool,
    /// Device interrupts, if counted.
    pub interrupts: Option<u64>,
    /// Completions handled by isonvme's completion threads, if counted.
    pub completions: Option<u64>,
    /// Completions the CPU's own job thread reaped inline, if counted.
    pub inline: Option<u64>,
    /// Job threads that ran on it ("name/jobnum").
    pub threads: Vec<String>,
    /// Their voluntary context switches.
    pub voluntary: u64,
    /// Their involuntary context switches.
    pub involuntary: u64,
}

/// The report.
#[derive(Debug, Clone)]
pub struct IsolationReport {
    /// The split.
    pub split: Split,
    /// Where interrupt counts come from.
    pub interrupt_sources: Vec<String>,
    /// One row per CPU.
    pub rows: Vec<CpuRow>,
    /// Interrupts on isolated CPUs (if counted).
    pub isolated_interrupts: Option<u64>,
    /// Completions handled by completion threads on isolated CPUs (if
    /// counted).
    pub isolated_completions: Option<u64>,
    /// Completions the job threads on isolated CPUs reaped inline from
    /// their own CQs.
    pub isolated_inline: u64,
    /// The verdict line.
    pub verdict: String,
    /// Why the figures may be unreliable (job threads preempted often, a
    /// machine busier than its CPUs), if they may.
    pub disturbed: Option<String>,
    /// Whether the isolated CPUs stayed clear (`None`: nothing to check).
    pub clean: Option<bool>,
}

/// Builds the report from the counts and the job threads' results.
pub fn isolation_report(
    split: &Split,
    activity: &CpuActivity,
    jobs: &[JobResult],
) -> IsolationReport {
    let interrupts_counted = !activity.interrupt_sources.is_empty();
    let mut cpus: CpuSet = split.isolated.clone();
    cpus.union_with(
        &split
            .housekeeping
            .intersection(&isonvme::os::placeable_cpus()),
    );
    for job in jobs {
        if let Some(cpu) = job.ran_on {
            cpus.insert(cpu);
        }
    }
    let mut rows = Vec::new();
    for cpu in cpus.iter() {
        let mut row = CpuRow {
            cpu,
            isolated: split.isolated.contains(cpu),
            interrupts: interrupts_counted
                .then(|| activity.interrupts.get(&cpu).copied().unwrap_or(0)),
            completions: activity
                .completion_counted
                .then(|| activity.completions.get(&cpu).copied().unwrap_or(0)),
            inline: activity
                .completion_counted
                .then(|| activity.inline.get(&cpu).copied().unwrap_or(0)),
            threads: Vec::new(),
            voluntary: 0,
            involuntary: 0,
        };
        for job in jobs {
            let on_this = match &job.pinned {
                Some(pinned) if pinned.len() == 1 => pinned.contains(cpu),
                _ => job.ran_on == Some(cpu),
            };
            if on_this {
                row.threads
                    .push(format!("{}/{}", job.options.name, job.jobnum));
                row.voluntary += job.lifetime_usage.voluntary;
                row.involuntary += job.lifetime_usage.involuntary;
            }
        }
        rows.push(row);
    }
    let sum = |f: fn(&CpuRow) -> Option<u64>| -> Option<u64> {
        rows.iter()
            .filter(|r| r.isolated)
            .map(f)
            .try_fold(0u64, |acc, v| v.map(|v| acc + v))
    };
    let isolated_interrupts = if interrupts_counted {
        sum(|r| r.interrupts)
    } else {
        None
    };
    let isolated_completions = if activity.completion_counted {
        sum(|r| r.completions)
    } else {
        None
    };
    let isolated_inline: u64 = rows
        .iter()
        .filter(|r| r.isolated)
        .filter_map(|r| r.inline)
        .sum();
    let (verdict, clean) = if split.isolated.is_empty() {
        ("no isolated CPUs: nothing to keep clear".to_owned(), None)
    } else {
        match (isolated_interrupts, isolated_completions) {
            (Some(0), Some(0)) if isolated_inline > 0 => (
                format!(
                    "0 interrupts and 0 completion work by other threads on isolated CPUs; their job threads reaped {isolated_inline} completions inline from their own CQs"
                ),
                Some(true),
            ),
            (Some(0), Some(0)) => (
                "0 interrupts and 0 completion work on isolated CPUs".to_owned(),
                Some(true),
            ),
            (Some(0), None) => (
                "0 device interrupts on isolated CPUs (completion work of the kernel's driver is not counted)".to_owned(),
                Some(true),
            ),
            (None, Some(0)) => (
                "0 completion work on isolated CPUs (device interrupts not counted)".to_owned(),
                Some(true),
            ),
            (None, None) => (
                "device interrupts and completion work were not counted".to_owned(),
                None,
            ),
            (irqs, completions) => {
                let mut parts = Vec::new();
                if let Some(irqs) = irqs.filter(|&n| n > 0) {
                    parts.push(format!("{irqs} device interrupts"));
                }
                if let Some(completions) = completions.filter(|&n| n > 0) {
                    parts.push(format!("{completions} completions handled"));
                }
                (
                    format!(
                        "NOT CLEAN: {} on isolated CPUs {}",
                        parts.join(" and "),
                        split.isolated
                    ),
                    Some(false),
                )
            }
        }
    };
    IsolationReport {
        split: split.clone(),
        interrupt_sources: activity.interrupt_sources.clone(),
        rows,
        isolated_interrupts,
        isolated_completions,
        isolated_inline,
        verdict,
        clean,
        disturbed: disturbance(
            jobs,
            std::fs::read_to_string("/proc/loadavg").ok().as_deref(),
        ),
    }
}

/// Involuntary context switches per second of run time above which a job
/// thread counts as disturbed. Measured on the 2-vCPU development VM: a
/// job thread on a CPU that is not isolated but otherwise idle, 30-35/s
/// (kernel threads, timers); sharing its CPU with a spinning thread,
/// 600+/s.
const PREEMPTIONS_PER_SECOND: f64 = 100.0;

/// Share of the measured period an isonvme job thread must have had its
/// CPU: it polls without sleeping, so it runs all of the time unless other
/// work takes its CPU (sharing it with one spinning thread: about half).
const MIN_CPU_SHARE: f64 = 0.8;

/// Says why the run's figures may be unreliable: isonvme job threads that
/// did not get their CPU for the whole run, job threads that other work
/// preempted often (involuntary context switches), or a 1-minute load
/// average above the CPUs there are. `loadavg` is `/proc/loadavg`'s text.
pub fn disturbance(jobs: &[JobResult], loadavg: Option<&str>) -> Option<String> {
    let mut reasons = Vec::new();
    for job in jobs {
        let seconds = job.runtime.as_secs_f64().max(1e-3);
        let on_cpu = (job.usage.user + job.usage.system).as_secs_f64() / seconds;
        if job.engine == "isonvme" && on_cpu < MIN_CPU_SHARE {
            reasons.push(format!(
                "job thread {}/{} had its CPU for only {:.0}% of the run{}",
                job.options.name,
                job.jobnum,
                on_cpu * 100.0,
                job.ran_on
                    .map_or(String::new(), |cpu| format!(" (CPU {cpu})"))
            ));
        }
        let rate = job.lifetime_usage.involuntary as f64 / seconds;
        if rate > PREEMPTIONS_PER_SECOND {
            reasons.push(format!(
                "job thread {}/{} was preempted {} times ({rate:.0}/s{})",
                job.options.name,
                job.jobnum,
                job.lifetime_usage.involuntary,
                job.ran_on
                    .map_or(String::new(), |cpu| format!(" on CPU {cpu}"))
            ));
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    if let Some(load) = loadavg
        .and_then(|text| text.split_whitespace().next())
        .and_then(|first| first.parse::<f64>().ok())
        .filter(|&load| load > cpus)
    {
        reasons.push(format!(
            "the 1-minute load average is {load:.2} on {cpus:.0} CPUs"
        ));
    }
    (!reasons.is_empty()).then(|| {
        format!(
            "the run was disturbed, so its figures are unreliable: {}; rerun on a quiet machine, with the job threads on isolated CPUs",
            reasons.join("; ")
        )
    })
}

impl IsolationReport {
    /// The report as text.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let dash = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
        out.push_str(&format!(
            "  isolated CPUs: {} ({}); housekeeping CPUs: {}\n",
            or_dash(&self.split.isolated),
            self.split.source,
            or_dash(&self.split.housekeeping)
        ));
        out.push_str(
            "    CPU  role          device irqs  completions  inline reaps  job threads (ctx vol/invol)\n",
        );
        for row in &self.rows {
            let threads = if row.threads.is_empty() {
                "-".to_owned()
            } else {
                format!(
                    "{} ({}/{})",
                    row.threads.join(","),
                    row.voluntary,
                    row.involuntary
                )
            };
            out.push_str(&format!(
                "  {:>5}  {:<12}  {:>11}  {:>11}  {:>12}  {}\n",
                row.cpu,
                if row.isolated {
                    "isolated"
                } else {
                    "housekeeping"
                },
                dash(row.interrupts),
                dash(row.completions),
                dash(row.inline),
                threads
            ));
        }
        for source in &self.interrupt_sources {
            out.push_str(&format!("  interrupts: {source}\n"));
        }
        out.push_str(&format!("  verdict: {}\n", self.verdict));
        if let Some(disturbed) = &self.disturbed {
            out.push_str(&format!("  WARNING: {disturbed}\n"));
        }
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> Value {
        json!({
            "isolated": self.split.isolated.to_string(),
            "housekeeping": self.split.housekeeping.to_string(),
            "isolation_source": self.split.source,
            "interrupt_sources": self.interrupt_sources,
            "cpus": self.rows.iter().map(|row| json!({
                "cpu": row.cpu,
                "role": if row.isolated { "isolated" } else { "housekeeping" },
                "interrupts": row.interrupts,
                "completions": row.completions,
                "inline_reaps": row.inline,
                "job_threads": row.threads,
                "voluntary_ctx": row.voluntary,
                "involuntary_ctx": row.involuntary,
            })).collect::<Vec<_>>(),
            "isolated_interrupts": self.isolated_interrupts,
            "isolated_completions": self.isolated_completions,
            "isolated_inline_reaps": self.isolated_inline,
            "verdict": self.verdict,
            "clean": self.clean,
            "disturbed": self.disturbed,
        })
    }
}

fn or_dash(set: &CpuSet) -> String {
    if set.is_empty() {
        "-".to_owned()
    } else {
        set.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::disturbance;

    #[test]
    fn a_machine_busier_than_its_cpus_is_reported_as_disturbed() {
        let busy = disturbance(&[], Some("999.00 10.00 5.00 3/200 1234"));
        let message = busy.expect("a load far above the CPUs is a disturbance");
        assert!(message.contains("load average is 999.00"), "{message}");
        assert!(message.contains("unreliable"), "{message}");
        assert_eq!(disturbance(&[], Some("0.00 0.00 0.00 1/100 1")), None);
        assert_eq!(disturbance(&[], None), None);
    }
}
