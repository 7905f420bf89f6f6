//! `identify`: what a controller and its namespaces say about themselves,
//! like `nvme id-ctrl` / `nvme id-ns`.
//!
//! ```sh
//! cargo run -p isonvme-examples --bin identify -- --device sim,size=4G
//! cargo run -p isonvme-examples --bin identify -- --device 0000:01:00.0
//! ```

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
    println!("NVMe controller {}", info.name);
    println!("  vid      : {:#06x}", id.vid);
    println!("  ssvid    : {:#06x}", id.ssvid);
    println!("  sn       : {}", id.serial());
    println!("  mn       : {}", id.model());
    println!("  fr       : {}", id.firmware());
    println!("  ver      : {}", info.version);
    match id.max_transfer_bytes(4096) {
        Some(bytes) => println!(
            "  mdts     : {} ({} KiB per command)",
            id.mdts,
            bytes / 1024
        ),
        None => println!("  mdts     : 0 (no limit)"),
    }
    println!("  cntlid   : {:#x}", id.cntlid);
    println!("  nn       : {}", id.nn);
    println!(
        "  oncs     : {:#06x} (write zeroes: {}, dataset management: {})",
        id.oncs,
        yes(id.supports_write_zeroes()),
        yes(id.supports_dsm())
    );
    println!("  vwc      : {}", yes(id.volatile_write_cache()));
    println!("  sqes/cqes: {:#04x}/{:#04x}", id.sqes, id.cqes);
    println!(
        "  queues   : {} I/O SQs and {} CQs granted, up to {} entries each, {} MSI-X vectors",
        info.granted_sqs, info.granted_cqs, info.max_queue_depth, info.max_vectors
    );
    println!(
        "  doorbell : stride {} bytes, ready timeout {:?}",
        info.cap.doorbell_stride_bytes(),
        info.cap.ready_timeout()
    );
    for ns in &info.namespaces {
        println!(
            "namespace {}: {} blocks of {} bytes ({:.2} GiB)",
            ns.id,
            ns.blocks,
            ns.block_size,
            ns.bytes() as f64 / f64::from(1u32 << 30)
        );
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
