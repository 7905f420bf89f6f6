//! I/O engines: `isonvme` (a per-CPU handle of the isolation runtime),
//! `io_uring` and `psync` (pread/pwrite) on a file or block device.
//!
//! The job loop drives every engine the same way: `queue` some I/Os into
//! free slots, `commit` them (one doorbell / one `io_uring_enter`), then
//! `reap` completions. Each slot owns one buffer of `bs` bytes for the
//! whole run, so the hot loop never allocates.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use isonvme::dma::DmaBuffer;
use isonvme::runtime::CpuHandle;
use isonvme::IoCommand;

/// Read or write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read.
    Read,
    /// Write.
    Write,
}

impl Op {
    /// Index in per-direction arrays (fio's order: read, write).
    pub fn index(self) -> usize {
        match self {
            Op::Read => 0,
            Op::Write => 1,
        }
    }
}

/// A finished I/O.
#[derive(Debug)]
pub struct Done {
    /// The slot it was queued in.
    pub slot: usize,
    /// Whether it succeeded (with the device's or kernel's error if not).
    pub result: Result<(), String>,
}

/// How long [`Engine::reap`] may wait for a completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Return at once with whatever has finished.
    No,
    /// Until at least one I/O has finished.
    Any,
    /// Until at least one I/O has finished or this moment has passed
    /// (`rate_iops`: the next I/O is due then).
    Until(Instant),
}

/// What the job loop needs from an engine.
pub trait Engine {
    /// Whether I/O completes inside `queue` (psync): depth 1, no slat.
    fn synchronous(&self) -> bool {
        false
    }
    /// The buffer of an idle slot.
    fn buffer(&self, slot: usize) -> &[u8];
    /// The buffer of an idle slot, to fill before a write.
    fn buffer_mut(&mut self, slot: usize) -> &mut [u8];
    /// Prepares an I/O of `len` bytes at byte `offset` in `slot`.
    fn queue(&mut self, slot: usize, op: Op, offset: u64, len: usize) -> Result<(), String>;
    /// Hands the queued I/Os to the device.
    fn commit(&mut self) -> Result<(), String>;
    /// Appends finished I/Os to `out`, waiting as `wait` says (never
    /// longer than [`COMPLETION_TIMEOUT`] for a lost I/O).
    fn reap(&mut self, wait: Wait, out: &mut Vec<Done>) -> Result<(), String>;
}

/// How long an engine waits for a completion before calling the I/O lost.
pub const COMPLETION_TIMEOUT: Duration = Duration::from_secs(30);

/// A page-aligned heap buffer (O_DIRECT needs aligned memory): a slice of
/// an over-allocated `Vec` that starts on a 4 KiB boundary. The `Vec` never
/// grows, so the memory stays put for as long as the buffer lives.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    /// A zeroed buffer of `len` bytes, 4 KiB aligned; an error when the
    /// memory cannot be had.
    pub fn new(len: usize) -> Result<AlignedBuf, String> {
        let total = len
            .checked_add(Self::ALIGN)
            .ok_or_else(|| format!("an I/O buffer of {len} bytes is too large"))?;
        let mut storage = Vec::new();
        storage
            .try_reserve_exact(total)
            .map_err(|_| format!("out of memory allocating a {len}-byte I/O buffer"))?;
        storage.resize(total, 0);
        let start = storage.as_ptr().align_offset(Self::ALIGN);
        Ok(AlignedBuf {
            storage,
            start,
            len,
        })
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.storage[self.start..self.start + self.len]
    }

    /// The bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_slice().as_mut_ptr()
    }
}

/// Opens a file or block device for a kernel engine, with O_DIRECT if
/// `direct`.
pub fn open_file(path: &Path, direct: bool, write: bool) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(write);
    if direct {
        options.custom_flags(libc::O_DIRECT);
    }
    options.open(path)
}

fn short(op: Op, done: usize, wanted: usize, offset: u64) -> String {
    let what = if op == Op::Read { "read" } else { "write" };
    format!("short {what}: {done} of {wanted} bytes at offset {offset}")
}

/// `ioengine=psync`: pread/pwrite, one I/O at a time.
pub struct Psync {
    file: File,
    buffers: Vec<AlignedBuf>,
    finished: Option<Done>,
}

impl Psync {
    /// An engine on `file` with one `bs`-byte buffer.
    pub fn new(file: File, bs: usize) -> Result<Psync, String> {
        Ok(Psync {
            file,
            buffers: vec![AlignedBuf::new(bs)?],
            finished: None,
        })
    }
}

impl Engine for Psync {
    fn synchronous(&self) -> bool {
        true
    }

    fn buffer(&self, slot: usize) -> &[u8] {
        self.buffers[slot].as_slice()
    }

    fn buffer_mut(&mut self, slot: usize) -> &mut [u8] {
        self.buffers[slot].as_mut_slice()
    }

    fn queue(&mut self, slot: usize, op: Op, offset: u64, len: usize) -> Result<(), String> {
        let buffer = &mut self.buffers[slot].as_mut_slice()[..len];
        let outcome = match op {
            Op::Read => self.file.read_at(buffer, offset),
            Op::Write => self.file.write_at(buffer, offset),
        };
        let result = match outcome {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(short(op, n, len, offset)),
            Err(error) => Err(format!("{error} at offset {offset}")),
        };
        self.finished = Some(Done { slot, result });
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn reap(&mut self, _wait: Wait, out: &mut Vec<Done>) -> Result<(), String> {
        out.extend(self.finished.take());
        Ok(())
    }
}

/// `ioengine=io_uring`: one ring per job, plain reads and writes.
pub struct Uring {
    ring: IoUring,
    file: File,
    buffers: Vec<AlignedBuf>,
    lens: Vec<usize>,
    ops: Vec<Op>,
    offsets: Vec<u64>,
    inflight: usize,
    waiting_since: Option<Instant>,
    /// Whether `io_uring_enter` takes a timeout (IORING_FEAT_EXT_ARG, 5.11).
    timed_waits: bool,
    /// Polled completions (`hipri`, IORING_SETUP_IOPOLL): the kernel finds
    /// them only when asked, so reaping always enters the kernel to poll.
    polled: bool,
}

impl Uring {
    /// A ring of `depth` entries on `file`, with `depth` buffers of `bs`;
    /// `polled` sets it up for polled I/O (fio's `hipri`).
    pub fn new(file: File, depth: usize, bs: usize, polled: bool) -> Result<Uring, String> {
        let entries = u32::try_from(depth.next_power_of_two().max(1)).unwrap_or(u32::MAX);
        let mut builder = IoUring::builder();
        if polled {
            builder.setup_iopoll();
        }
        let ring = builder.build(entries).map_err(|e| {
            format!(
                "setting up an io_uring of {entries} entries (iodepth={depth}{}): {e}",
                if polled { ", hipri" } else { "" }
            )
        })?;
        let timed_waits = ring.params().is_feature_ext_arg();
        let buffers = (0..depth)
            .map(|_| AlignedBuf::new(bs))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Uring {
            ring,
            file,
            buffers,
            lens: vec![0; depth],
            ops: vec![Op::Read; depth],
            offsets: vec![0; depth],
            inflight: 0,
            waiting_since: None,
            timed_waits,
            polled,
        })
    }

    /// Submits what is queued and waits for one completion, at most
    /// `limit` (without timed waits: a short sleep stands in for the wait
    /// when a limit is set).
    fn enter_and_wait(&mut self, limit: Option<Duration>) -> Result<(), String> {
        // Polled rings: the kernel spins on the device's poll queue until a
        // completion arrives (or it must reschedule); no timeout applies.
        let limit = if self.polled { None } else { limit };
        let outcome = match limit {
            None => self.ring.submit_and_wait(1).map(|_| ()),
            Some(limit) if self.timed_waits => {
                let timeout = types::Timespec::from(limit);
                let args = types::SubmitArgs::new().timespec(&timeout);
                self.ring.submitter().submit_with_args(1, &args).map(|_| ())
            }
            Some(limit) => self.ring.submit().map(|_| {
                std::thread::sleep(limit.min(Duration::from_micros(50)));
            }),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(e.raw_os_error(), Some(libc::ETIME) | Some(libc::EINTR))
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                Ok(())
            }
            Err(e) => Err(format!("io_uring_enter: {e}")),
        }
    }

    /// Whether this kernel lets us set up a ring at all.
    pub fn available() -> Result<(), String> {
        IoUring::new(2).map(|_| ()).map_err(|e| e.to_string())
    }
}

impl Engine for Uring {
    fn buffer(&self, slot: usize) -> &[u8] {
        self.buffers[slot].as_slice()
    }

    fn buffer_mut(&mut self, slot: usize) -> &mut [u8] {
        self.buffers[slot].as_mut_slice()
    }

    fn queue(&mut self, slot: usize, op: Op, offset: u64, len: usize) -> Result<(), String> {
        let fd = types::Fd(self.file.as_raw_fd());
        let ptr = self.buffers[slot].as_mut_ptr();
        let entry = match op {
            Op::Read => opcode::Read::new(fd, ptr, len as u32)
                .offset(offset)
                .build(),
            Op::Write => opcode::Write::new(fd, ptr, len as u32)
                .offset(offset)
                .build(),
        }
        .user_data(slot as u64);
        self.lens[slot] = len;
        self.ops[slot] = op;
        self.offsets[slot] = offset;
        // SAFETY: the entry points at `len` bytes of `self.buffers[slot]`, a
        // heap allocation of at least `bs` bytes that does not move. The job
        // loop neither touches nor requeues `slot` until its completion has
        // been reaped, and `Drop` waits for every I/O in flight (or leaks
        // the buffers) before that memory can be freed.
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.ring
                .submit()
                .map_err(|e| format!("io_uring_enter: {e}"))?;
            // SAFETY: as above: the same entry, the same buffer.
            unsafe { self.ring.submission().push(&entry) }
                .map_err(|_| "io_uring submission queue full".to_owned())?;
        }
        self.inflight += 1;
        Ok(())
    }

    fn commit(&mut self) -> Result<(), String> {
        self.ring
            .submit()
            .map(|_| ())
            .map_err(|e| format!("io_uring_enter: {e}"))
    }

    fn reap(&mut self, wait: Wait, out: &mut Vec<Done>) -> Result<(), String> {
        loop {
            let before = out.len();
            for cqe in self.ring.completion() {
                let slot = cqe.user_data() as usize;
                let len = self.lens[slot];
                let op = self.ops[slot];
                let offset = self.offsets[slot];
                let result = match cqe.result() {
                    n if n < 0 => Err(format!(
                        "{} at offset {offset}",
                        std::io::Error::from_raw_os_error(-n)
                    )),
                    n if n as usize == len => Ok(()),
                    n => Err(short(op, n as usize, len, offset)),
                };
                out.push(Done { slot, result });
            }
            let reaped = out.len() - before;
            self.inflight = self.inflight.saturating_sub(reaped);
            // A polled ring has no completion to find unless the kernel is
            // asked to poll, so "do not wait" still polls.
            let may_return = wait == Wait::No && !self.polled;
            if reaped > 0 || may_return || self.inflight == 0 {
                self.waiting_since = None;
                return Ok(());
            }
            let now = Instant::now();
            let since = *self.waiting_since.get_or_insert(now);
            let lost_in = COMPLETION_TIMEOUT.saturating_sub(now.duration_since(since));
            if lost_in.is_zero() {
                return Err(format!(
                    "io_uring: no completion within {}s ({} I/Os in flight)",
                    COMPLETION_TIMEOUT.as_secs(),
                    self.inflight
                ));
            }
            let limit = match wait {
                Wait::Until(deadline) => {
                    let left = deadline.saturating_duration_since(now);
                    if left.is_zero() {
                        return Ok(());
                    }
                    left.min(lost_in)
                }
                _ => lost_in,
            };
            let limit = (self.timed_waits || matches!(wait, Wait::Until(_))).then_some(limit);
            self.enter_and_wait(limit)?;
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // Never free buffers the kernel may still write into.
        let deadline = Instant::now() + COMPLETION_TIMEOUT;
        while self.inflight > 0 && Instant::now() < deadline {
            let mut sink = Vec::new();
            if self.reap(Wait::Any, &mut sink).is_err() {
                break;
            }
        }
        if self.inflight > 0 {
            // Leak the buffers rather than let the kernel scribble on freed memory.
            std::mem::forget(std::mem::take(&mut self.buffers));
        }
    }
}

/// `ioengine=isonvme`: the job thread's CPU handle of the isolation runtime.
pub struct Isonvme {
    handle: CpuHandle,
    nsid: u32,
    lba_shift: u32,
    buffers: Vec<Option<DmaBuffer>>,
    waiting_since: Option<Instant>,
}

impl Isonvme {
    /// An engine on `handle`, namespace `nsid` with `block_size`-byte
    /// blocks, and `depth` DMA buffers of `bs` bytes.
    pub fn new(
        handle: CpuHandle,
        nsid: u32,
        block_size: u32,
        depth: usize,
        bs: usize,
    ) -> Result<Isonvme, String> {
        if handle.capacity() < depth {
            return Err(format!(
                "CPU {}'s queue holds {} commands, fewer than iodepth={depth}",
                handle.cpu(),
                handle.capacity()
            ));
        }
        let mut buffers = Vec::with_capacity(depth);
        for _ in 0..depth {
            let buffer = handle
                .pool()
                .alloc(bs)
                .map_err(|e| format!("allocating a {bs}-byte DMA buffer: {e}"))?;
            buffers.push(Some(buffer));
        }
        Ok(Isonvme {
            handle,
            nsid,
            lba_shift: block_size.trailing_zeros(),
            buffers,
            waiting_since: None,
        })
    }

    fn idle(&self, slot: usize) -> &DmaBuffer {
        self.buffers[slot]
            .as_ref()
            .expect("the job loop only touches buffers of idle slots")
    }
}

impl Engine for Isonvme {
    fn buffer(&self, slot: usize) -> &[u8] {
        self.idle(slot).as_slice()
    }

    fn buffer_mut(&mut self, slot: usize) -> &mut [u8] {
        self.buffers[slot]
            .as_mut()
            .expect("the job loop only touches buffers of idle slots")
            .as_mut_slice()
    }

    fn queue(&mut self, slot: usize, op: Op, offset: u64, len: usize) -> Result<(), String> {
        let lba = offset >> self.lba_shift;
        let blocks = (len >> self.lba_shift) as u32;
        let command = match op {
            Op::Read => IoCommand::Read {
                nsid: self.nsid,
                lba,
                blocks,
            },
            Op::Write => IoCommand::Write {
                nsid: self.nsid,
                lba,
                blocks,
            },
        };
        let buffer = self.buffers[slot].take();
        self.handle
            .submit(command, buffer, slot as u64)
            .map_err(|rejected| {
                self.buffers[slot] = rejected.buffer;
                format!("submitting at offset {offset}: {}", rejected.error)
            })
    }

    fn commit(&mut self) -> Result<(), String> {
        self.handle.ring();
        Ok(())
    }

    fn reap(&mut self, wait: Wait, out: &mut Vec<Done>) -> Result<(), String> {
        let mut spins = 0u32;
        loop {
            let buffers = &mut self.buffers;
            let count = self
                .handle
                .poll(|completion| {
                    let slot = completion.tag as usize;
                    buffers[slot] = completion.buffer;
                    out.push(Done {
                        slot,
                        result: completion.result.map(|_| ()).map_err(|s| s.to_string()),
                    });
                })
                .map_err(|e| e.to_string())?;
            if count > 0 || wait == Wait::No || self.handle.outstanding() == 0 {
                self.waiting_since = None;
                return Ok(());
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) {
                let now = Instant::now();
                if matches!(wait, Wait::Until(deadline) if now >= deadline) {
                    return Ok(());
                }
                let since = *self.waiting_since.get_or_insert(now);
                if now.duration_since(since) > COMPLETION_TIMEOUT {
                    return Err(format!(
                        "isonvme: no completion within {}s on CPU {} ({} commands in flight); the device lost them",
                        COMPLETION_TIMEOUT.as_secs(),
                        self.handle.cpu(),
                        self.handle.outstanding()
                    ));
                }
            }
            std::hint::spin_loop();
        }
    }
}
