//! `identify`: what a controller and its namespaces say about themselves,
//! like `nvme id-ctrl` / `nvme id-ns`.
//!
//! ```sh
//! cargo run -p isonvme-examples --bin identify -- --device sim,size=4G
//! cargo run -p isonvme-examples --bin identify -- --device 0000:01:00.0
//! ```

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use isonvme::ControllerOptions;

#[derive(Parser)]
#[command(about = "Identify an NVMe controller and its namespaces")]
struct Args {
    /// `sim[,key=value...]` or a PCI address bound to vfio-pci.
    #[arg(long, default_value = "sim")]
    device: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let controller = match isonvme::device::open(&args.device, ControllerOptions::default()) {
        Ok(controller) => controller,
        Err(error) => {
            eprintln!("identify: {error}");
            return ExitCode::from(2);
        }
    };
    let info = controller.info();
    let id = &info.identify;
    let mut lines = Vec::new();
    lines.push(format!("NVMe controller {}", info.name));
    lines.push(format!("  vid      : {:#06x}", id.vid));
    lines.push(format!("  ssvid    : {:#06x}", id.ssvid));
    lines.push(format!("  sn       : {}", id.serial()));
    lines.push(format!("  mn       : {}", id.model()));
    lines.push(format!("  fr       : {}", id.firmware()));
    lines.push(format!("  ver      : {}", info.version));
    match id.max_transfer_bytes(4096) {
        Some(bytes) => lines.push(format!(
            "  mdts     : {} ({} KiB per command)",
            id.mdts,
            bytes / 1024
        )),
        None => lines.push("  mdts     : 0 (no limit)".to_owned()),
    }
    lines.push(format!("  cntlid   : {:#x}", id.cntlid));
    lines.push(format!("  nn       : {}", id.nn));
    lines.push(format!(
        "  oncs     : {:#06x} (write zeroes: {}, dataset management: {})",
        id.oncs,
        yes(id.supports_write_zeroes()),
        yes(id.supports_dsm())
    ));
    lines.push(format!("  vwc      : {}", yes(id.volatile_write_cache())));
    lines.push(format!("  sqes/cqes: {:#04x}/{:#04x}", id.sqes, id.cqes));
    lines.push(format!(
        "  queues   : {} I/O SQs and {} CQs granted, up to {} entries each, {} MSI-X vectors",
        info.granted_sqs, info.granted_cqs, info.max_queue_depth, info.max_vectors
    ));
    lines.push(format!(
        "  doorbell : stride {} bytes, ready timeout {:?}",
        info.cap.doorbell_stride_bytes(),
        info.cap.ready_timeout()
    ));
    for ns in &info.namespaces {
        lines.push(format!(
            "namespace {}: {} blocks of {} bytes ({:.2} GiB)",
            ns.id,
            ns.blocks,
            ns.block_size,
            ns.bytes() as f64 / f64::from(1u32 << 30)
        ));
    }
    // Everything is printed after it was gathered, and a closed pipe
    // (`identify | head`) is not an error: the controller still shuts down.
    let mut stdout = std::io::stdout().lock();
    let printed = lines.iter().try_for_each(|line| writeln!(stdout, "{line}"));
    if let Err(error) = printed.and_then(|()| stdout.flush()) {
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("identify: writing the report: {error}");
        }
    }
    if let Err(error) = controller.shutdown() {
        eprintln!("identify: shutdown: {error}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn yes(flag: bool) -> &'static str {
    if flag {
        "yes"
    } else {
        "no"
    }
}
