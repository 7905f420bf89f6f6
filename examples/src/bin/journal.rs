//! `journal`: an append-only log writer of the kind a trading system keeps
//! for its orders — fixed-size records, written in batches from a thread on
//! an isolated CPU, made durable with a Flush on demand, and read back and
//! verified on every start.
//!
//! ```sh
//! # a journal in a file-backed simulated namespace, surviving restarts
//! cargo run --release -p isonvme-examples --bin journal -- --device sim,file=/tmp/journal.img --records 100000
//! cargo run --release -p isonvme-examples --bin journal -- --device sim,file=/tmp/journal.img --records 1000
//! # a real drive (overwrites the journal region!)
//! cargo run --release -p isonvme-examples --bin journal -- --device 0000:01:00.0 --start-lba 0 --pages 262144
//! ```
//!
//! On-media format, in pages of 4 KiB (or the namespace's block size if
//! larger) inside `[--start-lba, --start-lba + pages)`:
//! - page 0, the superblock: magic, epoch (a new one for every `--reset`,
//!   so pages of an older journal are never mistaken for this one's),
//!   record size, region size, the durable mark (log pages known flushed),
//!   CRC-32C. It is rewritten (one block: atomic, NVMe's AWUPF is at least
//!   one block) after every Flush completes, with the mark the Flush just
//!   earned; the next Flush, or the final one at exit, makes it durable;
//! - pages 1.., the log: a header (magic, epoch, page sequence number,
//!   sequence number of its first record, record count, record size,
//!   CRC-32C of the whole page) followed by whole records. A page is never
//!   rewritten once written: a flush that ends inside a page pads it, and
//!   the next record starts a new page, so a torn write can only lose
//!   records that were never reported durable.
//!
//! Recovery reads pages in order and stops at the first one that is not
//! the next valid page of this journal (wrong magic or epoch, bad CRC, a
//! sequence that does not follow). At or after the durable mark that is a
//! torn tail (records never reported durable, or the last flush's when the
//! process died before its mark reached the media), and appending resumes
//! there. Before the mark it is damage to records that were reported
//! durable: refused without `--salvage`, like a damaged page with intact
//! pages after it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use isonvme::dma::DmaBuffer;
use isonvme::runtime::{CpuHandle, Runtime, RuntimeOptions};
use isonvme::{ControllerOptions, IoCommand};
use isonvme_examples::{parse_mode, pin_to, prepare_host, report_where, Completions, Result};

const SUPER_MAGIC: [u8; 8] = *b"ISOJSUP2";
/// The superblock of the format before the durable mark.
const OLD_SUPER_MAGIC: [u8; 8] = *b"ISOJSUP1";
const PAGE_MAGIC: [u8; 8] = *b"ISOJPAG1";
/// Bytes of a page header; records follow it.
const HEADER_BYTES: usize = 40;
/// Offset of the CRC-32C in both the superblock and page headers.
const CRC_OFFSET: usize = 36;
/// The smallest record: its sequence number plus a little payload.
const MIN_RECORD: usize = 16;

#[derive(Parser)]
#[command(
    about = "An append-only journal: batched fixed-size records, flush on demand, verified on start"
)]
struct Args {
    /// `sim[,key=value...]` or a PCI address bound to vfio-pci. A simulated
    /// namespace keeps the journal across runs only with `file=PATH`.
    #[arg(long, default_value = "sim")]
    device: String,
    /// Namespace holding the journal.
    #[arg(long, default_value_t = 1)]
    namespace: u32,
    /// First block of the journal region.
    #[arg(long, default_value_t = 0)]
    start_lba: u64,
    /// Size of the journal region in pages (4 KiB, or the block size if
    /// larger), the superblock included.
    #[arg(long, default_value_t = 16384)]
    pages: u64,
    /// Bytes per record (16 ..= page size - 40).
    #[arg(long, default_value_t = 128)]
    record_size: usize,
    /// Records to append in this run.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Pages per write command (a batch; capped by the controller's
    /// maximum transfer).
    #[arg(long, default_value_t = 16)]
    batch_pages: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    depth: usize,
    /// Make the journal durable (pad, write, Flush) every this many
    /// records; 0: only at the end of the run.
    #[arg(long, default_value_t = 1000)]
    flush_every: u64,
    /// Start a new journal (new epoch) instead of recovering the old one.
    #[arg(long)]
    reset: bool,
    /// Accept a damaged page followed by intact ones as the tail (keeping
    /// the records before it, overwriting those after it).
    #[arg(long)]
    salvage: bool,
    /// The CPU the writer runs on (default: an isolated CPU, else the highest).
    #[arg(long)]
    cpu: Option<usize>,
    /// How completions reach the writer: interrupt, poll or hybrid (a
    /// housekeeping completion thread hands them over), or inline (the
    /// writer reaps its own interrupt-less CQ).
    #[arg(long, default_value = "interrupt", value_parser = parse_mode)]
    mode: Completions,
}

fn main() -> ExitCode {
    isonvme::os::exit_quietly_on_closed_stdout();
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("journal: {error}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<()> {
    let (topology, choice) = prepare_host(args.cpu)?;

    let controller = isonvme::device::open(&args.device, ControllerOptions::default())
        .map_err(|e| format!("opening {}: {e}", args.device))?;
    let ns = controller.namespace(args.namespace)?.clone();
    let block_size = ns.block_size as usize;
    let page_size = block_size.max(4096);
    if !page_size.is_multiple_of(block_size) {
        return Err(format!(
            "namespace {} has {block_size}-byte blocks, which do not divide a 4 KiB page",
            ns.id
        )
        .into());
    }
    let max_record = page_size - HEADER_BYTES;
    if !(MIN_RECORD..=max_record).contains(&args.record_size) {
        return Err(format!(
            "--record-size {} is out of range: give {MIN_RECORD} ..= {max_record} bytes",
            args.record_size
        )
        .into());
    }
    if args.pages < 2 {
        return Err("--pages must be at least 2 (the superblock and one log page)".into());
    }
    if args.depth == 0 || args.batch_pages == 0 {
        return Err("--depth and --batch-pages must be at least 1".into());
    }
    // The runtime's queues hold at most 4096 entries, one of them always
    // empty and one kept for the flush: refuse more before allocating.
    const MOST_IN_FLIGHT: usize = 4094;
    if args.depth > MOST_IN_FLIGHT {
        return Err(format!(
            "--depth {} is more than the {MOST_IN_FLIGHT} batches a queue can hold in flight: give at most {MOST_IN_FLIGHT} (or less, for a controller with shallower queues)",
            args.depth
        )
        .into());
    }
    let blocks_per_page = (page_size / block_size) as u64;
    let region_end = args
        .pages
        .checked_mul(blocks_per_page)
        .and_then(|blocks| blocks.checked_add(args.start_lba));
    if region_end.is_none_or(|end| end > ns.blocks) {
        return Err(format!(
            "the journal region (LBA {} + {} pages of {page_size} bytes) does not fit namespace {} \
             ({} blocks): lower --pages or --start-lba",
            args.start_lba, args.pages, ns.id, ns.blocks
        )
        .into());
    }
    let max_batch = (controller.info().max_transfer / page_size).max(1);
    let batch_pages = args.batch_pages.min(max_batch);
    if batch_pages < args.batch_pages {
        println!(
            "batches capped at {batch_pages} pages: the controller transfers at most {} KiB per command",
            controller.info().max_transfer / 1024
        );
    }
    println!(
        "opened {}: namespace {}, journal at LBA {} .. {} ({} pages of {page_size} bytes, {} records of {} bytes per page)",
        controller.info().name,
        ns.id,
        args.start_lba,
        region_end.unwrap_or(0),
        args.pages,
        (page_size - HEADER_BYTES) / args.record_size,
        args.record_size,
    );
    let timeout = controller.command_timeout();
    let deepest = controller.info().max_queue_depth.min(4096) as usize;
    if args.depth + 2 > deepest {
        return Err(format!(
            "--depth {} needs queues of {} entries, and {}'s hold at most {deepest} (CAP.MQES + 1): give --depth {} or less",
            args.depth,
            args.depth + 2,
            controller.info().name,
            deepest - 2
        )
        .into());
    }

    let runtime = Runtime::open(
        controller,
        RuntimeOptions {
            topology: Some(topology.clone()),
            isolated: Some(choice.isolated.clone()),
            mode: args.mode.mode,
            inline: args.mode.inline_cpus(),
            depth: u32::try_from(args.depth + 2).unwrap_or(u32::MAX),
            ..RuntimeOptions::default()
        },
    )
    .map_err(|e| format!("starting the runtime: {e}"))?;
    println!(
        "runtime: {} completions; the writer runs on CPU {}",
        args.mode.name(),
        choice.cpu
    );

    let geometry = Geometry {
        nsid: ns.id,
        start_lba: args.start_lba,
        blocks_per_page: u32::try_from(blocks_per_page)?,
        page_size,
        pages: args.pages,
        record_size: args.record_size,
        max_pages_per_command: max_batch,
        timeout,
    };
    let outcome = write_journal(&runtime, &args, &geometry, choice.cpu);
    if outcome.is_ok() {
        report_where(&runtime, &choice);
    }
    let closed = runtime.close();
    outcome?;
    closed.map_err(|e| format!("closing the runtime: {e}"))?;
    Ok(())
}

/// Where the journal lives and how it is cut up.
struct Geometry {
    nsid: u32,
    start_lba: u64,
    blocks_per_page: u32,
    page_size: usize,
    pages: u64,
    record_size: usize,
    /// Pages one command may transfer (the controller's MDTS).
    max_pages_per_command: usize,
    timeout: Duration,
}

impl Geometry {
    fn records_per_page(&self) -> usize {
        (self.page_size - HEADER_BYTES) / self.record_size
    }

    /// First block of journal page `page` (0 = superblock).
    fn lba(&self, page: u64) -> u64 {
        self.start_lba + page * u64::from(self.blocks_per_page)
    }
}

/// What recovery found.
struct Recovered {
    epoch: u64,
    /// Log pages the superblock says were flushed.
    durable_pages: u64,
    /// Log pages of this journal (the next page to write is `pages + 1`).
    pages: u64,
    /// Records in them (the next record's sequence number).
    records: u64,
}

fn write_journal(runtime: &Runtime, args: &Args, geometry: &Geometry, cpu: usize) -> Result<()> {
    let mut handle = runtime.handle(cpu)?;
    pin_to(cpu)?;
    println!("writer pinned to CPU {cpu}");

    let recovered = open_journal(&mut handle, args, geometry)?;
    let mut writer = Writer::new(
        &mut handle,
        geometry,
        &recovered,
        args.depth,
        args.batch_pages,
    )?;
    let start = Instant::now();
    let mut since_flush = 0u64;
    for _ in 0..args.records {
        writer.append()?;
        since_flush += 1;
        if args.flush_every > 0 && since_flush == args.flush_every {
            writer.make_durable()?;
            since_flush = 0;
        }
    }
    writer.make_durable()?;
    writer.seal_mark()?;
    let elapsed = start.elapsed();
    let stats = writer.finish();
    let bytes = args.records * args.record_size as u64;
    println!(
        "appended {} records ({:.1} MiB of records, {} pages in {} write commands) in {:.3} s: \
         {:.0} records/s, {} flushes",
        args.records,
        bytes as f64 / f64::from(1u32 << 20),
        stats.pages_written,
        stats.writes.len(),
        elapsed.as_secs_f64(),
        args.records as f64 / elapsed.as_secs_f64(),
        stats.flushes.len(),
    );
    print_latencies("write command (submit to completion)", &stats.writes);
    print_latencies("make durable (pad, write, Flush)", &stats.flushes);

    let reread = recover(
        &mut handle,
        geometry,
        recovered.epoch,
        recovered.durable_pages,
    )?;
    let expected = recovered.records + args.records;
    if reread.records != expected {
        return Err(format!(
            "read back {} records, expected {expected}: the journal lost data",
            reread.records
        )
        .into());
    }
    println!(
        "read back and verified {} records in {} pages (CRC, sequence numbers and contents)",
        reread.records, reread.pages
    );
    Ok(())
}

/// Reads the superblock and recovers the log, or starts a new journal.
fn open_journal(handle: &mut CpuHandle, args: &Args, geometry: &Geometry) -> Result<Recovered> {
    let mut page = handle.pool().alloc(geometry.page_size)?;
    page = read_pages(handle, geometry, 0, page)?;
    let existing = if args.reset {
        println!("--reset: starting a new journal");
        None
    } else {
        match parse_superblock(page.as_slice(), geometry) {
            Ok(found) => Some(found),
            // Never overwrite a journal made with other parameters.
            Err(why)
                if (page.as_slice()[0..8] == SUPER_MAGIC
                    || page.as_slice()[0..8] == OLD_SUPER_MAGIC)
                    && sealed(page.as_slice()) =>
            {
                return Err(
                    format!("a journal exists at LBA {}, but {why}", geometry.start_lba).into(),
                );
            }
            Err(why) => {
                println!(
                    "no journal found at LBA {} ({why}): starting a new one",
                    geometry.start_lba
                );
                None
            }
        }
    };
    if let Some((epoch, durable_pages)) = existing {
        let start = Instant::now();
        let mut recovered = recover(handle, geometry, epoch, durable_pages)?;
        check_durable(geometry, &recovered, args.salvage)?;
        check_tail(handle, geometry, &recovered, args.salvage)?;
        if recovered.durable_pages > recovered.pages {
            // Salvaged: the mark comes back to what is there.
            recovered.durable_pages = recovered.pages;
            write_superblock(handle, geometry, &recovered)?;
        }
        println!(
            "recovered journal epoch {epoch:#x}: {} records in {} pages, verified in {:.3} s \
             (CRC, sequence numbers and contents); appending from record {}",
            recovered.records,
            recovered.pages,
            start.elapsed().as_secs_f64(),
            recovered.records
        );
        return Ok(recovered);
    }
    // A new epoch: distinct from any earlier journal in this region with
    // overwhelming likelihood, so its pages are never taken for ours.
    let epoch = crc32c::crc32c(&std::process::id().to_le_bytes()) as u64
        | (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64)
            << 32);
    drop(page);
    let recovered = Recovered {
        epoch,
        durable_pages: 0,
        pages: 0,
        records: 0,
    };
    write_superblock(handle, geometry, &recovered)?;
    println!("new journal epoch {epoch:#x} written and flushed");
    Ok(recovered)
}

/// Writes the superblock with `recovered`'s epoch and durable mark, and
/// flushes it.
fn write_superblock(
    handle: &mut CpuHandle,
    geometry: &Geometry,
    recovered: &Recovered,
) -> Result<()> {
    let mut page = handle.pool().alloc(geometry.page_size)?;
    fill_superblock(
        page.as_mut_slice(),
        geometry,
        recovered.epoch,
        recovered.durable_pages,
    );
    handle.run(
        IoCommand::Write {
            nsid: geometry.nsid,
            lba: geometry.lba(0),
            blocks: geometry.blocks_per_page,
        },
        Some(page),
        geometry.timeout,
    )?;
    handle.run(
        IoCommand::Flush {
            nsid: geometry.nsid,
        },
        None,
        geometry.timeout,
    )?;
    Ok(())
}

fn fill_superblock(bytes: &mut [u8], geometry: &Geometry, epoch: u64, durable_pages: u64) {
    bytes.fill(0);
    bytes[0..8].copy_from_slice(&SUPER_MAGIC);
    bytes[8..16].copy_from_slice(&epoch.to_le_bytes());
    bytes[16..20].copy_from_slice(&(geometry.record_size as u32).to_le_bytes());
    bytes[20..28].copy_from_slice(&geometry.pages.to_le_bytes());
    bytes[28..36].copy_from_slice(&durable_pages.to_le_bytes());
    seal(bytes);
}

/// Refuses a log that ends before its durable mark: records reported
/// durable are damaged or gone, and appending would overwrite the rest.
fn check_durable(geometry: &Geometry, recovered: &Recovered, salvage: bool) -> Result<()> {
    if recovered.pages >= recovered.durable_pages {
        return Ok(());
    }
    let damaged = 1 + recovered.pages;
    if salvage {
        println!(
            "--salvage: journal page {damaged} is damaged although it was flushed (the superblock marks pages 1..={} durable); keeping the {} records before it and overwriting from there",
            recovered.durable_pages, recovered.records
        );
        return Ok(());
    }
    Err(format!(
        "journal page {damaged} (LBA {}) is damaged, but the superblock marks pages 1..={} as flushed: records reported durable were lost to media damage, not to a torn write. Appending would overwrite what follows. Copy the region away if it matters, then rerun with --salvage to keep the {} records before the damaged page",
        geometry.lba(damaged),
        recovered.durable_pages,
        recovered.records
    )
    .into())
}

/// The superblock's epoch and durable mark, or why the page is not this
/// journal's superblock.
fn parse_superblock(bytes: &[u8], geometry: &Geometry) -> std::result::Result<(u64, u64), String> {
    if bytes[0..8] == OLD_SUPER_MAGIC && sealed(bytes) {
        return Err("it is in the format before the durable mark: --reset to replace it".into());
    }
    if bytes[0..8] != SUPER_MAGIC {
        return Err("no superblock magic".into());
    }
    if !sealed(bytes) {
        return Err("the superblock's CRC does not match".into());
    }
    let record_size = u32::from_le_bytes(field(bytes, 16)) as usize;
    let pages = u64::from_le_bytes(field(bytes, 20));
    if record_size != geometry.record_size || pages != geometry.pages {
        return Err(format!(
            "it was made with --record-size {record_size} --pages {pages}; give those, or --reset to replace it"
        ));
    }
    Ok((
        u64::from_le_bytes(field(bytes, 8)),
        u64::from_le_bytes(field(bytes, 28)),
    ))
}

/// Reads the log from the start and verifies every page until the tail.
fn recover(
    handle: &mut CpuHandle,
    geometry: &Geometry,
    epoch: u64,
    durable_pages: u64,
) -> Result<Recovered> {
    let chunk_pages = geometry
        .max_pages_per_command
        .min(64)
        .min((geometry.pages - 1) as usize)
        .max(1);
    let mut buffer = handle.pool().alloc(chunk_pages * geometry.page_size)?;
    let mut recovered = Recovered {
        epoch,
        durable_pages,
        pages: 0,
        records: 0,
    };
    let mut next_page = 1u64;
    while next_page < geometry.pages {
        let count = (chunk_pages as u64).min(geometry.pages - next_page) as usize;
        buffer = read_pages(handle, geometry, next_page, buffer)?;
        for index in 0..count {
            let bytes = &buffer.as_slice()[index * geometry.page_size..][..geometry.page_size];
            match check_page(bytes, geometry, epoch, recovered.pages, recovered.records) {
                Some(records) => {
                    recovered.pages += 1;
                    recovered.records += records;
                }
                None => return Ok(recovered),
            }
        }
        next_page += count as u64;
    }
    Ok(recovered)
}

/// Refuses to append after a damaged page that intact pages follow: a
/// torn tail ends the log, but a hole in the middle means lost data, which
/// appending would make permanent.
fn check_tail(
    handle: &mut CpuHandle,
    geometry: &Geometry,
    recovered: &Recovered,
    salvage: bool,
) -> Result<()> {
    let damaged = 1 + recovered.pages;
    if damaged + 1 >= geometry.pages {
        return Ok(());
    }
    let page = handle.pool().alloc(geometry.page_size)?;
    let page = read_pages(handle, geometry, damaged + 1, page)?;
    let bytes = page.as_slice();
    let intact_after = bytes[0..8] == PAGE_MAGIC
        && u64::from_le_bytes(field(bytes, 8)) == recovered.epoch
        && u64::from_le_bytes(field(bytes, 16)) == recovered.pages + 1
        && sealed(bytes);
    if !intact_after {
        return Ok(());
    }
    if salvage {
        println!(
            "--salvage: journal page {damaged} is damaged; keeping the {} records before it and overwriting from there",
            recovered.records
        );
        return Ok(());
    }
    Err(format!(
        "journal page {damaged} (LBA {}) is damaged, but page {} after it is intact: either the media corrupted \
         it, or a crash interrupted unflushed writes that completed out of order. Appending would overwrite \
         the later records. Copy the region away if they matter, then rerun with --salvage to keep the {} \
         records before the damaged page",
        geometry.lba(damaged),
        damaged + 1,
        recovered.records
    )
    .into())
}

/// The record count of `bytes` if it is the next valid page of the journal.
fn check_page(
    bytes: &[u8],
    geometry: &Geometry,
    epoch: u64,
    page_seq: u64,
    first_record: u64,
) -> Option<u64> {
    let valid = bytes[0..8] == PAGE_MAGIC
        && u64::from_le_bytes(field(bytes, 8)) == epoch
        && u64::from_le_bytes(field(bytes, 16)) == page_seq
        && u64::from_le_bytes(field(bytes, 24)) == first_record
        && usize::from(u16::from_le_bytes(field(bytes, 34))) == geometry.record_size
        && sealed(bytes);
    if !valid {
        return None;
    }
    let count = usize::from(u16::from_le_bytes(field(bytes, 32)));
    if count == 0 || count > geometry.records_per_page() {
        return None;
    }
    let mut expected = vec![0u8; geometry.record_size];
    for index in 0..count {
        let record = &bytes[HEADER_BYTES + index * geometry.record_size..][..geometry.record_size];
        fill_record(first_record + index as u64, &mut expected);
        if record != expected.as_slice() {
            return None;
        }
    }
    Some(count as u64)
}

/// A record's contents, a function of its sequence number so that recovery
/// can check contents as well as the CRC: the sequence number, then an
/// "order" derived from it.
fn fill_record(seq: u64, record: &mut [u8]) {
    record[0..8].copy_from_slice(&seq.to_le_bytes());
    let mut state = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in record[8..].chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

fn field<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    bytes[offset..offset + N]
        .try_into()
        .expect("offsets are within the header")
}

/// Writes the CRC-32C of the page (with a zero CRC field) into it.
fn seal(bytes: &mut [u8]) {
    bytes[CRC_OFFSET..CRC_OFFSET + 4].fill(0);
    let crc = crc32c::crc32c(bytes);
    bytes[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

fn sealed(bytes: &[u8]) -> bool {
    let stored = u32::from_le_bytes(field(bytes, CRC_OFFSET));
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[..CRC_OFFSET]), &[0; 4]);
    crc32c::crc32c_append(crc, &bytes[CRC_OFFSET + 4..]) == stored
}

/// Reads journal pages `first..` into `buffer` (its length says how many).
fn read_pages(
    handle: &mut CpuHandle,
    geometry: &Geometry,
    first: u64,
    buffer: DmaBuffer,
) -> Result<DmaBuffer> {
    let pages = buffer.len() / geometry.page_size;
    let (_, buffer) = handle
        .run(
            IoCommand::Read {
                nsid: geometry.nsid,
                lba: geometry.lba(first),
                blocks: geometry.blocks_per_page * pages as u32,
            },
            Some(buffer),
            geometry.timeout,
        )
        .map_err(|e| {
            format!(
                "reading journal pages {first}..{}: {e}",
                first + pages as u64
            )
        })?;
    Ok(buffer.ok_or("the driver did not hand the read buffer back")?)
}

/// What the writer measured.
struct WriterStats {
    pages_written: u64,
    writes: Histogram<u64>,
    flushes: Histogram<u64>,
}

/// Fills batches of pages with records and keeps up to `depth` of them in
/// flight on the CPU's queue.
struct Writer<'a> {
    handle: &'a mut CpuHandle,
    geometry: &'a Geometry,
    epoch: u64,
    /// The superblock, rewritten with the durable mark after each Flush.
    superblock: Option<DmaBuffer>,
    /// Buffers not in flight; the last one is being filled.
    idle: Vec<DmaBuffer>,
    /// Submission time of each batch in flight, by tag.
    in_flight: Vec<Option<Instant>>,
    batch_pages: usize,
    /// Pages filled in the current batch, and records in its last page.
    filled_pages: usize,
    records_in_page: usize,
    /// Next page sequence number and record sequence number.
    next_page: u64,
    next_record: u64,
    /// Journal page where the current batch starts.
    batch_start: u64,
    stats: WriterStats,
}

impl<'a> Writer<'a> {
    fn new(
        handle: &'a mut CpuHandle,
        geometry: &'a Geometry,
        recovered: &Recovered,
        depth: usize,
        batch_pages: usize,
    ) -> Result<Self> {
        let idle = (0..depth)
            .map(|_| handle.pool().alloc(batch_pages * geometry.page_size))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let histogram = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3);
        let superblock = Some(handle.pool().alloc(geometry.page_size)?);
        Ok(Writer {
            handle,
            geometry,
            epoch: recovered.epoch,
            superblock,
            idle,
            in_flight: vec![None; depth],
            batch_pages,
            filled_pages: 0,
            records_in_page: 0,
            next_page: recovered.pages,
            next_record: recovered.records,
            batch_start: recovered.pages,
            stats: WriterStats {
                pages_written: 0,
                writes: histogram()?,
                flushes: histogram()?,
            },
        })
    }

    /// Appends the next record to the current batch, writing the batch out
    /// when it is full.
    fn append(&mut self) -> Result<()> {
        if self.idle.is_empty() {
            self.wait_for_one()?;
        }
        if self.filled_pages == 0 && self.records_in_page == 0 {
            // A batch is starting: is there room for its first page?
            if 1 + self.next_page >= self.geometry.pages {
                // What was appended before stays durable.
                self.make_durable()?;
                self.seal_mark()?;
                return Err(format!(
                    "the journal is full at {} records ({} pages): rerun with --reset, or a larger --pages",
                    self.next_record, self.next_page
                )
                .into());
            }
            self.batch_start = self.next_page;
        }
        let geometry = self.geometry;
        let per_page = geometry.records_per_page();
        let page_offset = self.filled_pages * geometry.page_size;
        let record_offset =
            page_offset + HEADER_BYTES + self.records_in_page * geometry.record_size;
        let buffer = self.idle.last_mut().expect("an idle buffer was ensured");
        fill_record(
            self.next_record,
            &mut buffer.as_mut_slice()[record_offset..][..geometry.record_size],
        );
        self.next_record += 1;
        self.records_in_page += 1;
        if self.records_in_page == per_page {
            self.close_page();
            let full_batch = self.filled_pages == self.batch_pages;
            let region_end = 1 + self.next_page >= self.geometry.pages;
            if full_batch || region_end {
                self.submit_batch()?;
            }
        }
        Ok(())
    }

    /// Seals the page being filled (header and CRC).
    fn close_page(&mut self) {
        let geometry = self.geometry;
        let first_record = self.next_record - self.records_in_page as u64;
        let buffer = self
            .idle
            .last_mut()
            .expect("the page being filled has a buffer");
        let bytes = &mut buffer.as_mut_slice()[self.filled_pages * geometry.page_size..]
            [..geometry.page_size];
        bytes[0..8].copy_from_slice(&PAGE_MAGIC);
        bytes[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        bytes[16..24].copy_from_slice(&self.next_page.to_le_bytes());
        bytes[24..32].copy_from_slice(&first_record.to_le_bytes());
        bytes[32..34].copy_from_slice(&(self.records_in_page as u16).to_le_bytes());
        bytes[34..36].copy_from_slice(&(geometry.record_size as u16).to_le_bytes());
        // Padding after the last record is zeroed, so a page's bytes depend
        // only on its records.
        let end = HEADER_BYTES + self.records_in_page * geometry.record_size;
        bytes[end..].fill(0);
        seal(bytes);
        self.filled_pages += 1;
        self.records_in_page = 0;
        self.next_page += 1;
    }

    /// Writes the filled pages of the current batch with one command.
    fn submit_batch(&mut self) -> Result<()> {
        if self.filled_pages == 0 {
            return Ok(());
        }
        let geometry = self.geometry;
        let slot = self
            .in_flight
            .iter()
            .position(Option::is_none)
            .expect("a batch slot is free whenever a buffer is idle");
        let mut buffer = self
            .idle
            .pop()
            .expect("the batch being filled has a buffer");
        let pages = self.filled_pages;
        let command = IoCommand::Write {
            nsid: geometry.nsid,
            lba: geometry.lba(1 + self.batch_start),
            blocks: geometry.blocks_per_page * pages as u32,
        };
        // The write covers the filled pages only (the transfer length
        // comes from the block count).
        buffer.as_mut_slice()[pages * geometry.page_size..].fill(0);
        self.handle
            .submit(command, Some(buffer), slot as u64)
            .map_err(|rejected| format!("submitting a journal write: {}", rejected.error))?;
        self.handle.ring();
        self.in_flight[slot] = Some(Instant::now());
        self.stats.pages_written += pages as u64;
        self.filled_pages = 0;
        Ok(())
    }

    /// Spins until at least one write completes; its buffer becomes idle.
    fn wait_for_one(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            // Completions are handled inside the poll callback (the fields
            // it needs are borrowed apart from the handle), so the writer
            // thread allocates nothing while it waits.
            let (in_flight, writes, idle) =
                (&mut self.in_flight, &mut self.stats.writes, &mut self.idle);
            let mut failure = None;
            let any = self.handle.poll(|completion| {
                let slot = completion.tag as usize;
                if let Some(submitted) = in_flight.get_mut(slot).and_then(Option::take) {
                    let nanos = submitted.elapsed().as_nanos() as u64;
                    writes.saturating_record(nanos.max(1));
                }
                if let Some(buffer) = completion.buffer {
                    idle.insert(0, buffer);
                }
                if let Err(status) = completion.result {
                    failure.get_or_insert(status);
                }
            })? > 0;
            if let Some(status) = failure {
                return Err(format!("a journal write failed: {status}").into());
            }
            if any {
                return Ok(());
            }
            if start.elapsed() > self.geometry.timeout {
                return Err(format!(
                    "no journal write completed within {:?}",
                    self.geometry.timeout
                )
                .into());
            }
            std::hint::spin_loop();
        }
    }

    /// Makes every appended record durable: pads and seals the page being
    /// filled, writes the batch, waits for every write, then Flush.
    fn make_durable(&mut self) -> Result<()> {
        let start = Instant::now();
        if self.records_in_page > 0 {
            self.close_page();
        }
        self.submit_batch()?;
        while self.in_flight.iter().any(Option::is_some) {
            self.wait_for_one()?;
        }
        self.flush("the journal")?;
        let nanos = start.elapsed().as_nanos() as u64;
        self.stats.flushes.saturating_record(nanos.max(1));
        // The mark this Flush earned; durable with the next Flush.
        let mut superblock = self
            .superblock
            .take()
            .ok_or("the superblock buffer was lost")?;
        fill_superblock(
            superblock.as_mut_slice(),
            self.geometry,
            self.epoch,
            self.next_page,
        );
        let (_, back) = self
            .handle
            .run(
                IoCommand::Write {
                    nsid: self.geometry.nsid,
                    lba: self.geometry.lba(0),
                    blocks: self.geometry.blocks_per_page,
                },
                Some(superblock),
                self.geometry.timeout,
            )
            .map_err(|e| format!("writing the journal's durable mark: {e}"))?;
        self.superblock = back;
        Ok(())
    }

    /// The end of the run: makes the last durable mark durable too.
    fn seal_mark(&mut self) -> Result<()> {
        self.flush("the journal's durable mark")
    }

    /// One Flush of the namespace; `what` names it in the error.
    fn flush(&mut self, what: &str) -> Result<()> {
        self.handle
            .run(
                IoCommand::Flush {
                    nsid: self.geometry.nsid,
                },
                None,
                self.geometry.timeout,
            )
            .map_err(|e| format!("flushing {what}: {e}"))?;
        Ok(())
    }

    fn finish(self) -> WriterStats {
        self.stats
    }
}

fn print_latencies(what: &str, histogram: &Histogram<u64>) {
    if histogram.is_empty() {
        return;
    }
    let us = |nanos: u64| nanos as f64 / 1000.0;
    println!(
        "  {what}, µs: min {:.1}, p50 {:.1}, p99 {:.1}, p99.9 {:.1}, max {:.1} ({} samples)",
        us(histogram.min()),
        us(histogram.value_at_quantile(0.5)),
        us(histogram.value_at_quantile(0.99)),
        us(histogram.value_at_quantile(0.999)),
        us(histogram.max()),
        histogram.len()
    );
}
