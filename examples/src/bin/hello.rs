//! `hello`: write a pattern, read it back, verify, and say what happened.
//!
//! ```sh
//! cargo run -p isonvme-examples --bin hello -- --device sim
//! cargo run -p isonvme-examples --bin hello -- --device 0000:01:00.0 --lba 1000
//! ```
//! On a real drive this overwrites the blocks it writes.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use isonvme::{ControllerOptions, IoQueuePair};

#[derive(Parser)]
#[command(about = "Write a pattern to an NVMe namespace, read it back and verify it")]
struct Args {
    /// `sim[,key=value...]` or a PCI address bound to vfio-pci.
    #[arg(long, default_value = "sim")]
    device: String,
    /// Namespace to use.
    #[arg(long, default_value_t = 1)]
    namespace: u32,
    /// First block to write.
    #[arg(long, default_value_t = 0)]
    lba: u64,
    /// Bytes to write (a whole number of blocks).
    #[arg(long, default_value_t = 256 * 1024)]
    bytes: usize,
}

fn main() -> ExitCode {
    isonvme::os::exit_quietly_on_closed_stdout();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hello: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), isonvme::Error> {
    let controller = isonvme::device::open(&args.device, ControllerOptions::default())?;
    let ns = controller.namespace(args.namespace)?.clone();
    println!(
        "opened {}: namespace {} has {} blocks of {} bytes; MDTS {} KiB",
        controller.info().name,
        ns.id,
        ns.blocks,
        ns.block_size,
        controller.info().max_transfer / 1024
    );
    let mut queue = IoQueuePair::create(&controller, 1, 64, None)?;
    let mut data = controller.pool().alloc(args.bytes)?;
    // A pattern that differs per block and per run position, so a read of
    // the wrong block or stale data cannot pass.
    for (index, byte) in data.as_mut_slice().iter_mut().enumerate() {
        *byte = (index as u64 ^ (index as u64 >> 9) ^ args.lba).wrapping_mul(31) as u8;
    }
    let blocks = args.bytes / ns.block_size as usize;
    let start = Instant::now();
    queue.write(ns.id, args.lba, &data)?;
    let wrote = start.elapsed();
    let mut back = controller.pool().alloc(args.bytes)?;
    let start = Instant::now();
    queue.read(ns.id, args.lba, &mut back)?;
    let read = start.elapsed();
    println!(
        "wrote {} bytes ({blocks} blocks at LBA {}) in {wrote:?}, read them back in {read:?}",
        args.bytes, args.lba
    );
    if let Some(offset) = data
        .as_slice()
        .iter()
        .zip(back.as_slice())
        .position(|(a, b)| a != b)
    {
        return Err(isonvme::Error::InvalidArgument(format!(
            "verify FAILED: first mismatch at byte {offset} (block {})",
            args.lba + (offset / ns.block_size as usize) as u64
        )));
    }
    println!("verified: all {} bytes match", args.bytes);
    controller.shutdown()?;
    println!("controller shut down cleanly");
    Ok(())
}
