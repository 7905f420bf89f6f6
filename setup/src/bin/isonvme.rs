//! `isonvme`: the command-line tool of isonvme. Today it has one command,
//! `isonvme setup`, which prepares a host: see `isonvme setup --help` and
//! docs/setup.md.
//!
//! Exit status: 0 done; 1 an operation failed or did not take effect;
//! 2 bad command line (also no such device, node or user, not an NVMe
//! controller); 3 needs root; 4 refused because the device is in use;
//! 5 the host is not ready (no IOMMU, a module or page size missing).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use isonvme_setup::actions::{self, BindOptions, HugepageRequest};
use isonvme_setup::error::exit;
use isonvme_setup::host::parse_size_kb;
use isonvme_setup::user::UserSpec;
use isonvme_setup::{status, HostSystem, Roots, SetupError, Target};

/// The exit codes, for `--help`.
const EXIT_HELP: &str = "Exit status: 0 done, 1 failed, 2 bad usage, 3 needs root, 4 device in \
                         use, 5 host not ready (see docs/setup.md).";

#[derive(Parser)]
#[command(
    name = "isonvme",
    version,
    about = "isonvme's command-line tool",
    after_help = EXIT_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prepare this host for isonvme: bind NVMe controllers to vfio-pci,
    /// reserve hugepages, check the IOMMU and CPU isolation.
    #[command(after_help = EXIT_HELP)]
    Setup {
        #[command(flatten)]
        roots: RootArgs,
        #[command(subcommand)]
        command: SetupCommand,
    },
}

/// Where the kernel's trees are; only tests point these elsewhere.
#[derive(Args)]
struct RootArgs {
    /// sysfs root.
    #[arg(long, global = true, default_value = "/sys", hide = true)]
    sysfs_root: PathBuf,
    /// procfs root.
    #[arg(long, global = true, default_value = "/proc", hide = true)]
    procfs_root: PathBuf,
    /// /dev root.
    #[arg(long, global = true, default_value = "/dev", hide = true)]
    dev_root: PathBuf,
}

#[derive(Subcommand)]
enum SetupCommand {
    /// Show every NVMe controller (driver, IOMMU group, NUMA node,
    /// namespaces and whether they are in use) and the host's IOMMU,
    /// hugepages, memlock limit and CPU isolation.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Hand a controller (or all) to vfio-pci. Refuses controllers with
    /// mounted filesystems, swap, stacked devices (LVM, md, dm-crypt) or
    /// open files; `all` skips them.
    Bind {
        /// A PCI address (0000:01:00.0) or `all`.
        #[arg(value_parser = parse_target)]
        target: Target,
        /// Give the VFIO group node to this user (name or uid), so they can
        /// run isonvme programs without root.
        #[arg(long, value_name = "NAME", value_parser = parse_user)]
        user: Option<UserSpec>,
        /// Take the controller although processes have its device nodes
        /// open (their I/O fails). Never overrides mounted filesystems,
        /// swap or stacked devices.
        #[arg(long)]
        force: bool,
    },
    /// Give a controller (or all) back to the kernel's nvme driver.
    /// Refuses while a process holds its VFIO group.
    Unbind {
        /// A PCI address (0000:01:00.0) or `all`.
        #[arg(value_parser = parse_target)]
        target: Target,
    },
    /// Like `unbind`; without an address, every controller bound to
    /// vfio-pci.
    Reset {
        /// A PCI address (0000:01:00.0) or `all` (the default).
        #[arg(value_parser = parse_target, default_value = "all")]
        target: Target,
    },
    /// Set the number of hugepages, report what the kernel granted, and
    /// mount hugetlbfs if it is not mounted.
    Hugepages {
        /// The number of pages wanted in the pool (0 frees them).
        count: u64,
        /// Only on this NUMA node (default: the kernel spreads them).
        #[arg(long, value_name = "K")]
        node: Option<u32>,
        /// The page size.
        #[arg(long, default_value = "2M", value_parser = parse_page_size)]
        size: u64,
        /// Give the hugetlbfs mount to this user (name or uid).
        #[arg(long, value_name = "NAME", value_parser = parse_user)]
        user: Option<UserSpec>,
    },
}

fn parse_target(text: &str) -> Result<Target, String> {
    text.parse().map_err(|e: SetupError| e.to_string())
}

fn parse_user(text: &str) -> Result<UserSpec, String> {
    text.parse().map_err(|e: SetupError| e.to_string())
}

/// `2M` or `1G` (in any of the spellings sysfs uses) → KiB.
fn parse_page_size(text: &str) -> Result<u64, String> {
    match parse_size_kb(text) {
        Some(kb @ (2048 | 1_048_576)) => Ok(kb),
        _ => Err(SetupError::InvalidPageSize(text.to_owned()).to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Setup { roots, command } = cli.command;
    let roots = Roots {
        sys: roots.sysfs_root,
        proc: roots.procfs_root,
        dev: roots.dev_root,
    };
    let mut system = HostSystem;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = match command {
        SetupCommand::Status { json } => status::collect(&roots).map(|status| {
            let text = if json {
                serde_json::to_string_pretty(&status)
                    .map(|mut t| {
                        t.push('\n');
                        t
                    })
                    .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}\n"))
            } else {
                status::render(&status)
            };
            // A closed pipe (`| head`) is not an error worth reporting.
            let _ = out.write_all(text.as_bytes());
        }),
        SetupCommand::Bind {
            target,
            user,
            force,
        } => actions::bind(
            &roots,
            &mut system,
            &target,
            &BindOptions { user, force },
            &mut out,
        ),
        SetupCommand::Unbind { target } => {
            actions::unbind(&roots, &mut system, &target, "unbind", &mut out)
        }
        SetupCommand::Reset { target } => {
            actions::unbind(&roots, &mut system, &target, "reset", &mut out)
        }
        SetupCommand::Hugepages {
            count,
            node,
            size,
            user,
        } => actions::hugepages(
            &roots,
            &mut system,
            &HugepageRequest {
                count,
                node,
                size_kb: size,
                user,
            },
            &mut out,
        ),
    };
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(error) => {
            // Not eprintln!: it panics when stderr is closed.
            let _ = writeln!(std::io::stderr(), "isonvme setup: error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
