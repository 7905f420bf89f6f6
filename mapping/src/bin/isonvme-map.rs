//! `isonvme-map`: the isolcpus=io_queue policy for a file or for this
//! machine.
//!
//! Exit status: 0 on success (and for `can-offline`, "may go offline"),
//! 1 when `can-offline` answers "must stay online", 2 on any error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use isonvme_mapping::input::PlanInput;
use isonvme_mapping::isolation::{self, Isolation};
use isonvme_mapping::report::Report;
use isonvme_mapping::sysfs::SysfsRoot;
use isonvme_mapping::{plan, CpuSet, Plan, PlanParams, Policy, Topology};

#[derive(Parser)]
#[command(
    name = "isonvme-map",
    version,
    about = "The isolcpus=io_queue CPU -> vector -> queue policy, as the kernel computes it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan from a JSON request ({"topology": ..., "params": ...}) and print
    /// the result object of the specification.
    Plan {
        /// The request file, or `-` for standard input.
        #[arg(long)]
        input: PathBuf,
        /// The kernel behaviour to reproduce.
        #[arg(long, default_value = "io_queue", value_parser = parse_policy)]
        policy: Policy,
        /// Indent the JSON (the default on a terminal; piped or redirected
        /// output is compact, a third of the size for large machines).
        #[arg(long)]
        pretty: bool,
    },
    /// Show the plan for this machine.
    Show {
        #[command(flatten)]
        machine: MachineArgs,
        /// Print JSON instead of the text report.
        #[arg(long)]
        json: bool,
    },
    /// Say whether a CPU may go offline under the policy, and why
    /// (exit 0: it may, 1: it must stay online).
    CanOffline {
        /// The CPU number.
        cpu: String,
        #[command(flatten)]
        machine: MachineArgs,
    },
}

#[derive(Args)]
struct MachineArgs {
    /// I/O queues the device asks for (default: one per possible CPU, as
    /// the kernel's NVMe driver asks).
    #[arg(long)]
    queues: Option<usize>,
    /// Treat these CPUs as isolated instead of reading the kernel's
    /// configuration (cpulist, e.g. `2-7`).
    #[arg(long)]
    isolated: Option<String>,
    /// The kernel behaviour to reproduce.
    #[arg(long, default_value = "io_queue", value_parser = parse_policy)]
    policy: Policy,
    /// Read sysfs and /proc/cmdline under this directory instead of `/`.
    #[arg(long, value_name = "DIR", default_value = "/")]
    sysfs_root: PathBuf,
}

fn parse_policy(text: &str) -> Result<Policy, String> {
    text.parse()
}

/// Largest `plan --input` accepted: a request for 8192 CPUs is about
/// 1 MiB, so this leaves room while bounding what a wrong file costs.
const MAX_INPUT_BYTES: u64 = 64 << 20;

/// Reads the request from `input` (`-`: standard input), at most
/// [`MAX_INPUT_BYTES`].
fn read_request(input: &std::path::Path) -> Result<String, Failure> {
    use std::io::Read;
    let mut size_hint = 0;
    let reader: Box<dyn Read> = if input.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        let file = std::fs::File::open(input).map_err(|e| {
            Failure(format!(
                "cannot read {}: {e} — give the path of a JSON request",
                input.display()
            ))
        })?;
        // One allocation of the right size, not a doubling series (each
        // step a fresh set of pages to fault in).
        size_hint = file.metadata().map_or(0, |m| m.len().min(MAX_INPUT_BYTES)) as usize;
        Box::new(file)
    };
    let mut bytes = Vec::with_capacity(size_hint + 1);
    reader
        .take(MAX_INPUT_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure(format!("cannot read {}: {e}", input.display())))?;
    if bytes.len() as u64 > MAX_INPUT_BYTES {
        return Err(Failure(format!(
            "{} is larger than {} MiB: a plan request (even for 8192 CPUs, about 1 MiB) is far smaller; check that the file is the JSON request",
            input.display(),
            MAX_INPUT_BYTES >> 20
        )));
    }
    String::from_utf8(bytes).map_err(|_| {
        Failure(format!(
            "{} is not UTF-8 text: give the JSON request",
            input.display()
        ))
    })
}

/// Writes `text` to standard output. A closed pipe (`| head -1`) ends the
/// program quietly, as it does `cat`.
fn emit(text: &str) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => Err(Failure(format!("cannot write the output: {error}"))),
    }
}

/// An error for the user: the message names the cause and the fix.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure(error.to_string())
    }
}

struct Machine {
    topology: Topology,
    isolation: Isolation,
    plan: Plan,
}

impl MachineArgs {
    fn load(&self) -> Result<Machine, Failure> {
        let root = SysfsRoot::new(&self.sysfs_root);
        let topology = root.topology()?;
        let isolation = match &self.isolated {
            Some(list) => {
                let cpus = CpuSet::parse_list(list, Some(topology.nr_cpu_ids()))
                    .map_err(|e| Failure(format!("--isolated: {e}")))?;
                isolation::explicit(cpus, &topology)?
            }
            None => isolation::detect(&root, &topology)?,
        };
        let queues = self.queues.unwrap_or(topology.possible().len());
        let plan = plan(
            &topology,
            &isolation.isolated,
            &PlanParams::nvme(queues),
            self.policy,
        )?;
        Ok(Machine {
            topology,
            isolation,
            plan,
        })
    }
}

fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match cli.command {
        Command::Plan {
            input,
            policy,
            pretty,
        } => {
            let text = read_request(&input)?;
            let request = PlanInput::from_json(&text)
                .map_err(|e| Failure(format!("{}: {e}", input.display())))?;
            let plan = plan(
                &request.topology,
                &request.isolated,
                &request.params,
                policy,
            )
            .map_err(|e| Failure(format!("{}: {e}", input.display())))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            let written = plan
                .write_spec_json(&mut out, pretty || std::io::stdout().is_terminal())
                .map_err(std::io::Error::from)
                .and_then(|()| std::io::Write::write_all(&mut out, b"\n"))
                .and_then(|()| std::io::Write::flush(&mut out));
            match written {
                Ok(()) => Ok(ExitCode::SUCCESS),
                Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => {
                    std::process::exit(0)
                }
                Err(error) => Err(Failure(format!("cannot write the output: {error}"))),
            }
        }
        Command::Show { machine, json } => {
            let loaded = machine.load()?;
            let report = Report {
                topology: &loaded.topology,
                isolation: &loaded.isolation,
                plan: &loaded.plan,
            };
            if json {
                let mut json = serde_json::to_string_pretty(&report.json())?;
                json.push('\n');
                emit(&json)?;
            } else {
                emit(&report.text())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CanOffline { cpu, machine } => {
            let loaded = machine.load()?;
            let cpu_number: usize = cpu.trim().parse().map_err(|_| {
                Failure(format!(
                    "`{cpu}` is not a CPU number: give one CPU, e.g. `isonvme-map can-offline 3`"
                ))
            })?;
            let verdict = loaded
                .plan
                .can_offline(&loaded.topology, cpu_number)
                .ok_or_else(|| {
                    Failure(format!(
                        "CPU {cpu_number} does not exist on this machine (possible CPUs: {})",
                        loaded.topology.possible()
                    ))
                })?;
            if verdict.allowed() {
                emit(&format!("CPU {cpu_number} may go offline: {verdict}\n"))?;
                Ok(ExitCode::SUCCESS)
            } else {
                emit(&format!("CPU {cpu_number} must stay online: {verdict}\n"))?;
                Ok(ExitCode::from(1))
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("isonvme-map: error: {message}");
            ExitCode::from(2)
        }
    }
}
