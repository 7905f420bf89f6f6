//! What the example programs share: choosing and pinning the I/O thread's
//! CPU the way an isolated application would, and reporting where the
//! driver's completion work ran.

#![warn(missing_docs)]

use std::time::Duration;

use isonvme::mapping::isolation::{self, Isolation};
use isonvme::mapping::sysfs::SysfsRoot;
use isonvme::mapping::{CpuSet, Topology};
use isonvme::runtime::{CompletionMode, Runtime};

/// The examples' error type: every error is a message for a person.
pub type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// This machine's topology and the I/O thread's CPU ([`choose_cpu`]), with
/// the calling thread moved to the housekeeping CPUs
/// ([`start_helpers_on_housekeeping`]): what every example does before it
/// opens the controller.
pub fn prepare_host(wanted: Option<usize>) -> Result<(Topology, Choice)> {
    let root = SysfsRoot::host();
    let topology = root
        .topology()
        .map_err(|e| format!("reading this machine's CPUs: {e}"))?;
    let host = isolation::detect(&root, &topology)
        .map_err(|e| format!("reading this host's CPU isolation: {e}"))?;
    let choice = choose_cpu(wanted, &topology, &host)?;
    start_helpers_on_housekeeping(&topology, &choice);
    Ok((topology, choice))
}

/// Pins the calling thread to `cpu` and checks it now runs there.
pub fn pin_to(cpu: usize) -> Result<()> {
    isonvme::os::pin_current_thread(&CpuSet::single(cpu)).map_err(|e| {
        format!(
            "pinning this thread to CPU {cpu}: {e} (is the CPU outside this process's cpuset? \
             check `taskset -p $$` and the cgroup's cpuset.cpus)"
        )
    })?;
    std::thread::yield_now();
    match isonvme::os::current_cpu() {
        Some(now) if now == cpu => Ok(()),
        now => Err(format!("pinned to CPU {cpu}, but the thread runs on CPU {now:?}").into()),
    }
}

/// Moves the calling thread to the housekeeping CPUs so the threads it
/// starts next (the simulator's device thread, the runtime's watcher)
/// inherit that affinity; completion threads pin themselves.
pub fn start_helpers_on_housekeeping(topology: &Topology, choice: &Choice) {
    if choice.isolated.is_empty() {
        return;
    }
    let housekeeping = topology.online().difference(&choice.isolated);
    match isonvme::os::pin_current_thread(&housekeeping) {
        Ok(()) => println!("helper threads start on the housekeeping CPUs {housekeeping}"),
        Err(error) => println!(
            "note: cannot move helper threads to the housekeeping CPUs {housekeeping}: {error}"
        ),
    }
}

/// How the measured CPU gets its completions: from a housekeeping
/// completion thread in `mode`, or inline from its own interrupt-less CQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completions {
    /// How completion threads wait (for the CPUs without inline queues).
    pub mode: CompletionMode,
    /// Whether the isolated CPUs reap their own CQs inline.
    pub inline: bool,
}

impl Completions {
    /// The runtime's per-CPU inline choice.
    pub fn inline_cpus(self) -> isonvme::runtime::InlineCpus {
        if self.inline {
            isonvme::runtime::InlineCpus::Isolated
        } else {
            isonvme::runtime::InlineCpus::None
        }
    }

    /// In words.
    pub fn name(self) -> String {
        if self.inline {
            "inline (the isolated CPU reaps its own interrupt-less CQ)".into()
        } else {
            mode_name(self.mode)
        }
    }
}

/// Parses a completion mode (`interrupt`, `poll`, `hybrid`, `inline`) for
/// clap.
pub fn parse_mode(text: &str) -> Result<Completions, String> {
    if text == "inline" {
        return Ok(Completions {
            mode: CompletionMode::Interrupt,
            inline: true,
        });
    }
    text.parse()
        .map(|mode| Completions {
            mode,
            inline: false,
        })
        .map_err(|e: isonvme::Error| format!("{e}, or inline"))
}

/// Parses `on`/`off` for clap.
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text {
        "on" | "1" | "true" | "yes" => Ok(true),
        "off" | "0" | "false" | "no" => Ok(false),
        other => Err(format!("`{other}`: expected on or off")),
    }
}

/// Parses a duration such as `10s`, `500ms`, `2m` or `250us` for clap.
pub fn parse_time(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a duration such as 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "" | "s" => number,
        "ms" => number / 1e3,
        "us" | "µs" => number / 1e6,
        "m" | "min" => number * 60.0,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use us, ms, s or m)"
            ))
        }
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("`{text}`: the duration must be positive"));
    }
    // Deadlines are computed from it; a longer run is not a benchmark.
    const LONGEST: f64 = 30.0 * 24.0 * 3600.0;
    if seconds > LONGEST {
        return Err(format!(
            "`{text}` is too long: give at most 30 days (at most 43200m)"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// The CPU an example's I/O thread runs on and the CPUs the runtime keeps
/// completion work off.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The CPU the I/O thread is pinned to.
    pub cpu: usize,
    /// The isolated CPUs of this run (the host's, plus `cpu` if the host
    /// isolates nothing or not it).
    pub isolated: CpuSet,
}

/// Chooses the I/O thread's CPU: `wanted`, else the highest isolated CPU,
/// else the highest online CPU (then treated as isolated for the run), and
/// says on stdout which and why.
pub fn choose_cpu(wanted: Option<usize>, topology: &Topology, host: &Isolation) -> Result<Choice> {
    let online = topology.online();
    let host_isolated = host.isolated.intersection(online);
    if online.len() == 1 {
        let cpu = online.first().unwrap_or(0);
        if wanted.is_some_and(|wanted| wanted != cpu) {
            return Err(format!(
                "CPU {} is not online (online: {online})",
                wanted.unwrap_or(0)
            )
            .into());
        }
        println!(
            "only CPU {cpu} is online: no CPU can be isolated, so completion work shares it with the measurement"
        );
        return Ok(Choice {
            cpu,
            isolated: CpuSet::new(),
        });
    }
    let choice = match wanted {
        Some(cpu) => {
            if !online.contains(cpu) {
                return Err(format!("CPU {cpu} is not online (online CPUs: {online})").into());
            }
            if host_isolated.contains(cpu) {
                println!("measuring on CPU {cpu}, isolated by {}", host.source);
                Choice {
                    cpu,
                    isolated: host.isolated.clone(),
                }
            } else {
                if host_isolated.is_empty() {
                    println!(
                        "measuring on CPU {cpu}; {}, so the runtime treats CPU {cpu} as isolated for this run",
                        host.source
                    );
                } else {
                    println!(
                        "measuring on CPU {cpu}, which is NOT isolated on this host (isolated: {host_isolated}, \
                         by {}); the runtime keeps completion work off it too",
                        host.source
                    );
                }
                let mut isolated = host.isolated.clone();
                isolated.insert(cpu);
                Choice { cpu, isolated }
            }
        }
        None => match host_isolated.last() {
            Some(cpu) => {
                println!(
                    "measuring on CPU {cpu}, the highest of the isolated CPUs {host_isolated} ({})",
                    host.source
                );
                Choice {
                    cpu,
                    isolated: host.isolated.clone(),
                }
            }
            None => {
                let cpu = online.last().unwrap_or(0);
                println!(
                    "{}: measuring on CPU {cpu}, the highest online CPU, \
                     which the runtime treats as isolated for this run (the kernel still schedules other work there; \
                     boot with isolcpus=io_queue,managed_irq,domain,{cpu} nohz_full={cpu} rcu_nocbs={cpu} \
                     for real isolation, see docs/isolation.md)",
                    host.source
                );
                Choice {
                    cpu,
                    isolated: CpuSet::single(cpu),
                }
            }
        },
    };
    // Every isolated CPU possible, and one online CPU left for housekeeping.
    isolation::explicit(choice.isolated.clone(), topology)?;
    Ok(choice)
}

/// A completion mode in words.
pub fn mode_name(mode: CompletionMode) -> String {
    match mode {
        CompletionMode::Interrupt => "interrupt-driven".into(),
        CompletionMode::Poll => "polled".into(),
        CompletionMode::Hybrid { spin } => format!("hybrid ({spin:?} spin, then interrupt)"),
    }
}

/// A CPU list, or `none` for the empty set.
pub fn or_none(cpus: &CpuSet) -> String {
    if cpus.is_empty() {
        "none".into()
    } else {
        cpus.to_string()
    }
}

/// Prints where the runtime's completion threads reaped completions, per CPU, and
/// the verdict on the isolated CPUs.
pub fn report_where(runtime: &Runtime, choice: &Choice) {
    let isolated = &runtime.plan().isolated;
    let mut per_cpu: Vec<u64> = Vec::new();
    for state in runtime.vectors() {
        let counters = &state.counters;
        let completions = counters
            .completions
            .load(std::sync::atomic::Ordering::Relaxed);
        let interrupts = counters
            .interrupts
            .load(std::sync::atomic::Ordering::Relaxed);
        println!(
            "vector {} (CQ {}, served on CPUs {}): {completions} completions, {interrupts} interrupt wake-ups",
            state.vector,
            state.cq,
            state.target()
        );
        for (cpu, count) in counters.handled_on.iter().enumerate() {
            let count = count.load(std::sync::atomic::Ordering::Relaxed);
            if per_cpu.len() <= cpu {
                per_cpu.resize(cpu + 1, 0);
            }
            per_cpu[cpu] += count;
        }
    }
    let mut parts = Vec::new();
    let mut on_isolated = CpuSet::new();
    let mut total_isolated = 0;
    for (cpu, &count) in per_cpu.iter().enumerate() {
        if count == 0 {
            continue;
        }
        let kind = if isolated.contains(cpu) {
            on_isolated.insert(cpu);
            total_isolated += count;
            "ISOLATED"
        } else {
            "housekeeping"
        };
        parts.push(format!("CPU {cpu}: {count} ({kind})"));
    }
    let mut inline_reaped = 0;
    for queue in &runtime.layout().inline {
        let reaped = runtime.cpu_counters(queue.cpu).map_or(0, |c| {
            c.reaped_inline.load(std::sync::atomic::Ordering::Relaxed)
        });
        if reaped > 0 {
            inline_reaped += reaped;
            parts.push(format!(
                "CPU {}: {reaped} reaped inline by its own thread (own CQ {}, no interrupt)",
                queue.cpu, queue.cq
            ));
        }
    }
    if parts.is_empty() {
        parts.push("nowhere (no completion was reaped)".into());
    }
    println!("completions handled on: {}", parts.join(", "));
    if inline_reaped > 0 && total_isolated == 0 && !isolated.is_empty() {
        println!(
            "verdict: no other thread's completion work ran on an isolated CPU; the measuring thread reaped its own {inline_reaped} completions inline (isolated: {isolated})"
        );
        return;
    }
    if isolated.is_empty() {
        println!(
            "verdict: no CPU is isolated in this run, so completion work shared CPU {} with the reads",
            choice.cpu
        );
    } else if total_isolated == 0 {
        println!(
            "verdict: no completion work ran on an isolated CPU (isolated: {isolated}; measured on CPU {})",
            choice.cpu
        );
    } else {
        println!(
            "verdict: COMPLETION WORK RAN ON ISOLATED CPUs {on_isolated}: {total_isolated} completions \
             (were CPUs offlined or the affinity refused? see the log)"
        );
    }
}

/// The device's vfio-msix interrupts per CPU as the host counts them
/// (`/proc/interrupts`); `None` when it lists none (the simulator, or
/// another kernel naming).
pub fn host_interrupts(address: &str) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string("/proc/interrupts").ok()?;
    let mut lines = text.lines();
    let cpus: Vec<usize> = lines
        .next()?
        .split_whitespace()
        .filter_map(|column| column.strip_prefix("CPU")?.parse().ok())
        .collect();
    let mut per_cpu = vec![0u64; cpus.iter().max().map_or(0, |max| max + 1)];
    let mut found = false;
    for line in lines.filter(|l| l.contains("vfio-msix") && l.contains(address)) {
        found = true;
        let counts = line.split_whitespace().skip(1).take(cpus.len());
        for (column, count) in counts.enumerate() {
            if let Ok(count) = count.parse::<u64>() {
                per_cpu[cpus[column]] += count;
            }
        }
    }
    found.then_some(per_cpu)
}

/// Prints what the host counted for the device's vectors since `before`.
pub fn report_host_interrupts(address: &str, before: Option<Vec<u64>>, isolated: &CpuSet) {
    let (Some(before), Some(after)) = (before, host_interrupts(address)) else {
        return;
    };
    let mut parts = Vec::new();
    let mut on_isolated = 0;
    for (cpu, &count) in after.iter().enumerate() {
        let delta = count.saturating_sub(before.get(cpu).copied().unwrap_or(0));
        if delta == 0 {
            continue;
        }
        let mark = if isolated.contains(cpu) {
            on_isolated += delta;
            " (ISOLATED)"
        } else {
            ""
        };
        parts.push(format!("CPU {cpu}: {delta}{mark}"));
    }
    if parts.is_empty() {
        parts.push("none".into());
    }
    println!(
        "host vfio-msix interrupts of {address} during the run (/proc/interrupts): {}",
        parts.join(", ")
    );
    if on_isolated > 0 {
        println!(
            "verdict: THE HOST DELIVERED {on_isolated} OF THE DEVICE'S INTERRUPTS TO ISOLATED CPUs \
             (check /proc/irq/*/smp_affinity_list and irqbalance)"
        );
    }
}
