//! Tests of the device model on its own: a hand-written "host" pokes the
//! registers through the Mmio, writes raw submission entries into DMA
//! memory, rings doorbells and reads raw completion entries. Nothing here
//! uses the driver's queue code.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, MemoryRegionAddress};
use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::nvme::regs::offset;
use crate::nvme::{
    doorbell_offset, num_queues_from_dw0, ActiveNamespaceList, Aqa, Cap, Cc, CommandSpecificStatus,
    CompletionEntry, Csts, DsmRange, GenericStatus, IdentifyCns, IdentifyController,
    IdentifyNamespace, IoOpcode, MediaStatus, NvmeStatus, QueuePriority, ShutdownNotification,
    ShutdownStatus, StatusCode, SubmissionEntry,
};

const TIMEOUT: Duration = Duration::from_secs(5);
const PAGE: u64 = 4096;

struct Sq {
    off: u64,
    size: u32,
    tail: u32,
    cqid: u16,
}

struct Cq {
    off: u64,
    size: u32,
    head: u32,
    phase: bool,
}

/// A minimal hand-rolled host.
struct Host {
    sim: Arc<SimController>,
    regs: Mmio,
    mem: DmaRegion,
    next_page: u64,
    stride: usize,
    sqs: HashMap<u16, Sq>,
    cqs: HashMap<u16, Cq>,
    next_cid: u16,
}

impl Host {
    fn new(options: &str) -> Host {
        let sim = SimController::open(options).unwrap();
        let regs = sim.registers();
        let mem = sim.map_dma(4 << 20).unwrap();
        let stride = Cap(regs.read64(offset::CAP)).doorbell_stride_bytes();
        Host {
            sim,
            regs,
            mem,
            next_page: 0,
            stride,
            sqs: HashMap::new(),
            cqs: HashMap::new(),
            next_cid: 1,
        }
    }

    /// Page-aligned DMA memory: (offset in the region, IOVA).
    fn alloc(&mut self, bytes: u64) -> (u64, u64) {
        let off = self.next_page;
        self.next_page += bytes.div_ceil(PAGE) * PAGE;
        assert!(self.next_page <= self.mem.len() as u64);
        (off, self.mem.iova() + off)
    }

    fn write(&self, off: u64, data: &[u8]) {
        self.mem
            .guest_region()
            .write_slice(data, MemoryRegionAddress(off))
            .unwrap();
    }

    fn read(&self, off: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem
            .guest_region()
            .read_slice(&mut buf, MemoryRegionAddress(off))
            .unwrap();
        buf
    }

    fn csts(&self) -> Csts {
        Csts(self.regs.read32(offset::CSTS))
    }

    fn wait_csts(&self, what: &str, pred: impl Fn(Csts) -> bool) {
        let start = Instant::now();
        while !pred(self.csts()) {
            assert!(
                start.elapsed() < TIMEOUT,
                "timed out waiting for {what}: {:?}",
                self.csts()
            );
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn cc() -> Cc {
        Cc::new().with_iosqes(6).with_iocqes(4)
    }

    /// Admin queues of `entries` entries, then CC.EN = 1 and wait for RDY.
    fn enable(&mut self, entries: u32) {
        let (sq_off, asq) = self.alloc(u64::from(entries) * 64);
        let (cq_off, acq) = self.alloc(u64::from(entries) * 16);
        self.regs.write32(
            offset::AQA,
            Aqa::new(entries as u16 - 1, entries as u16 - 1).0,
        );
        self.regs.write64(offset::ASQ, asq);
        self.regs.write64(offset::ACQ, acq);
        self.sqs.insert(
            0,
            Sq {
                off: sq_off,
                size: entries,
                tail: 0,
                cqid: 0,
            },
        );
        self.cqs.insert(
            0,
            Cq {
                off: cq_off,
                size: entries,
                head: 0,
                phase: true,
            },
        );
        self.regs.write32(offset::CC, Self::cc().with_en(true).0);
        self.wait_csts("CSTS.RDY=1", |c| c.rdy());
    }

    fn disable(&mut self) {
        self.regs.write32(offset::CC, Self::cc().0);
        self.wait_csts("CSTS.RDY=0", |c| !c.rdy());
        self.sqs.clear();
        self.cqs.clear();
    }

    fn submit(&mut self, qid: u16, mut sqe: SubmissionEntry) -> u16 {
        let cid = self.next_cid;
        self.next_cid = self.next_cid.wrapping_add(1);
        sqe.set_cid(cid);
        let sq = self.sqs.get_mut(&qid).unwrap();
        let off = sq.off + u64::from(sq.tail) * 64;
        sq.tail = (sq.tail + 1) % sq.size;
        let tail = sq.tail;
        self.write(off, sqe.as_bytes());
        self.regs
            .ring_doorbell(doorbell_offset(qid, false, self.stride), tail);
        cid
    }

    /// The next completion on `cqid`, if one was posted (consumes it).
    fn try_reap(&mut self, cqid: u16) -> Option<CompletionEntry> {
        let cq = self.cqs.get_mut(&cqid).unwrap();
        let off = cq.off + u64::from(cq.head) * 16;
        let status: u16 = self
            .mem
            .guest_region()
            .load(MemoryRegionAddress(off + 14), Ordering::Acquire)
            .unwrap();
        if (status & 1 != 0) != cq.phase {
            return None;
        }
        let mut raw = [0u8; 16];
        self.mem
            .guest_region()
            .read_slice(&mut raw, MemoryRegionAddress(off))
            .unwrap();
        cq.head = (cq.head + 1) % cq.size;
        if cq.head == 0 {
            cq.phase = !cq.phase;
        }
        let head = cq.head;
        self.regs
            .ring_doorbell(doorbell_offset(cqid, true, self.stride), head);
        Some(CompletionEntry::read_from_bytes(&raw).unwrap())
    }

    fn reap(&mut self, cqid: u16) -> CompletionEntry {
        let start = Instant::now();
        loop {
            if let Some(c) = self.try_reap(cqid) {
                return c;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "no completion on CQ {cqid}; CSTS {:?}",
                self.csts()
            );
            std::thread::yield_now();
        }
    }

    /// Submits and waits; checks the CID and SQ id of the completion.
    fn cmd(&mut self, qid: u16, sqe: SubmissionEntry) -> CompletionEntry {
        let cid = self.submit(qid, sqe);
        let cqid = self.sqs[&qid].cqid;
        let c = self.reap(cqid);
        assert_eq!(
            (c.cid, c.sq_id),
            (cid, qid),
            "completion for the wrong command: {c:?}"
        );
        c
    }

    fn status(&mut self, qid: u16, sqe: SubmissionEntry) -> Result<u32, StatusCode> {
        let c = self.cmd(qid, sqe);
        c.result().map(|()| c.dw0).map_err(|e| e.code)
    }

    fn ok(&mut self, qid: u16, sqe: SubmissionEntry) -> u32 {
        self.status(qid, sqe)
            .unwrap_or_else(|e| panic!("{sqe:?} failed: {e}"))
    }

    /// Creates CQ `qid` and SQ `qid` on it.
    fn create_pair(&mut self, qid: u16, entries: u32, vector: u16, interrupts: bool) {
        let (cq_off, cq_iova) = self.alloc(u64::from(entries) * 16);
        self.ok(
            0,
            SubmissionEntry::create_io_cq(qid, entries, cq_iova, vector, interrupts),
        );
        self.cqs.insert(
            qid,
            Cq {
                off: cq_off,
                size: entries,
                head: 0,
                phase: true,
            },
        );
        let (sq_off, sq_iova) = self.alloc(u64::from(entries) * 64);
        self.ok(
            0,
            SubmissionEntry::create_io_sq(qid, entries, sq_iova, qid, QueuePriority::Medium),
        );
        self.sqs.insert(
            qid,
            Sq {
                off: sq_off,
                size: entries,
                tail: 0,
                cqid: qid,
            },
        );
    }

    fn identify<T: FromBytes>(&mut self, cns: IdentifyCns, nsid: u32) -> Result<T, StatusCode> {
        let (off, iova) = self.alloc(PAGE);
        self.status(0, SubmissionEntry::identify(cns, nsid, iova))?;
        Ok(T::read_from_bytes(&self.read(off, 4096)).unwrap())
    }
}

fn wait_irq(fd: &vmm_sys_util::eventfd::EventFd) {
    let start = Instant::now();
    while fd.read().is_err() {
        assert!(start.elapsed() < TIMEOUT, "interrupt never signalled");
        std::thread::sleep(Duration::from_micros(50));
    }
}

fn generic(s: GenericStatus) -> Result<u32, StatusCode> {
    Err(s.into())
}

fn specific(s: CommandSpecificStatus) -> Result<u32, StatusCode> {
    Err(s.into())
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

#[test]
fn enable_ready_handshake() {
    let mut h = Host::new("sim,qdepth=256,dstrd=1");
    let cap = Cap(h.regs.read64(offset::CAP));
    assert_eq!(cap.max_queue_entries(), 256);
    assert!(cap.cqr());
    assert_eq!(cap.dstrd(), 1);
    assert!(cap.to() > 0);
    assert_eq!(cap.css() & Cap::CSS_NVM, Cap::CSS_NVM);
    assert_eq!(h.regs.read32(offset::VS), 0x0001_0400);
    assert!(!h.csts().rdy());
    assert!(h.regs.len() >= 0x1000 + 2 * 65 * 8);
    h.enable(32);
    assert_eq!(h.csts(), Csts::new().with_rdy(true));
    h.disable();
    assert!(!h.csts().cfs());
    // Admin queue not page aligned: the controller fails to start.
    h.regs.write64(offset::ASQ, h.mem.iova() + 64);
    h.regs.write32(offset::CC, Host::cc().with_en(true).0);
    h.wait_csts("CSTS.CFS=1", |c| c.cfs());
    assert!(!h.csts().rdy());
    // Reset clears the fatal status; a good configuration then works.
    h.regs.write32(offset::CC, Host::cc().0);
    h.wait_csts("CSTS.CFS=0", |c| !c.cfs());
    h.enable(2);
    // Admin queue outside the DMA map also fails.
    h.disable();
    h.regs.write64(offset::ACQ, 0x1000);
    h.regs.write32(offset::CC, Host::cc().with_en(true).0);
    h.wait_csts("CSTS.CFS=1", |c| c.cfs());
    assert_eq!(h.sim.stats().resets(), 3);
}

#[test]
fn identify_controller_and_namespaces() {
    let mut h = Host::new("sim,size=64M,lba=512,namespaces=3,mdts=6,serial=SER42,model=Model X");
    h.enable(8);
    let id: IdentifyController = h.identify(IdentifyCns::CONTROLLER, 0).unwrap();
    assert_eq!(id.vid, SIM_VENDOR_ID);
    assert_eq!(id.serial(), "SER42");
    assert_eq!(id.model(), "Model X");
    assert!(!id.firmware().is_empty());
    assert_eq!(id.mdts, 6);
    assert_eq!(id.max_transfer_bytes(4096), Some(256 << 10));
    assert_eq!(id.nn, 3);
    assert_eq!((id.sqes, id.cqes), (0x66, 0x44));
    assert!(id.supports_write_zeroes() && id.supports_dsm() && id.volatile_write_cache());
    assert_eq!(id.version().0, 0x0001_0400);
    assert!(id.subsystem_nqn().contains("SER42"));

    let ns: IdentifyNamespace = h.identify(IdentifyCns::NAMESPACE, 2).unwrap();
    assert_eq!(ns.nsze, (64 << 20) / 512);
    assert_eq!(ns.lba_size(), 512);
    assert_eq!(ns.size_in_bytes(), Some(64 << 20));
    assert_eq!(ns.dlfeat & 0b111, 0b001);

    let list: ActiveNamespaceList = h.identify(IdentifyCns::ACTIVE_NAMESPACE_LIST, 0).unwrap();
    assert_eq!(list.iter().collect::<Vec<_>>(), [1, 2, 3]);
    let list: ActiveNamespaceList = h.identify(IdentifyCns::ACTIVE_NAMESPACE_LIST, 2).unwrap();
    assert_eq!(list.iter().collect::<Vec<_>>(), [3]);

    for nsid in [0, 4, 0xFFFF_FFFF] {
        assert_eq!(
            h.identify::<IdentifyNamespace>(IdentifyCns::NAMESPACE, nsid)
                .err(),
            Some(GenericStatus::InvalidNamespace.into())
        );
    }
    assert_eq!(
        h.identify::<IdentifyNamespace>(IdentifyCns(0x55), 1).err(),
        Some(GenericStatus::InvalidField.into())
    );
    assert_eq!(h.sim.stats().admin_commands(0x06), 8);
}

#[test]
fn number_of_queues_and_features() {
    let mut h = Host::new("sim,queues=8");
    h.enable(8);
    let dw0 = h.ok(0, SubmissionEntry::set_features_num_queues(4, 2));
    assert_eq!(num_queues_from_dw0(dw0), (4, 2));
    let dw0 = h.ok(0, SubmissionEntry::set_features_num_queues(100, 200));
    assert_eq!(num_queues_from_dw0(dw0), (8, 8));
    let dw0 = h.ok(0, SubmissionEntry::set_features_num_queues(3, 3));
    assert_eq!(num_queues_from_dw0(dw0), (3, 3));
    let dw0 = h.ok(
        0,
        SubmissionEntry::get_features(crate::nvme::FeatureId::NUMBER_OF_QUEUES),
    );
    assert_eq!(num_queues_from_dw0(dw0), (3, 3));
    // Queue ids above the granted count are refused.
    let (_, iova) = h.alloc(PAGE);
    assert_eq!(
        h.status(0, SubmissionEntry::create_io_cq(4, 16, iova, 0, false)),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
    h.create_pair(3, 16, 0, false);
    // Too late to change the count now.
    assert_eq!(
        h.status(0, SubmissionEntry::set_features_num_queues(8, 8)),
        generic(GenericStatus::CommandSequenceError)
    );
    // Plain features round-trip; unknown ones are refused.
    use crate::nvme::FeatureId;
    h.ok(
        0,
        SubmissionEntry::set_features(FeatureId::VOLATILE_WRITE_CACHE, 0),
    );
    assert_eq!(
        h.ok(
            0,
            SubmissionEntry::get_features(FeatureId::VOLATILE_WRITE_CACHE)
        ),
        0
    );
    h.ok(
        0,
        SubmissionEntry::set_features(FeatureId::INTERRUPT_COALESCING, 0x0105),
    );
    assert_eq!(
        h.ok(
            0,
            SubmissionEntry::get_features(FeatureId::INTERRUPT_COALESCING)
        ),
        0x0105
    );
    assert_eq!(
        h.status(0, SubmissionEntry::set_features(FeatureId(0x7E), 1)),
        generic(GenericStatus::InvalidField)
    );
    // Abort: completes, "not aborted".
    let mut abort = SubmissionEntry::with_opcode(0x08);
    abort.cdw10 = 1 << 16 | 3;
    assert_eq!(h.ok(0, abort), 1);
    // Log pages.
    let (off, iova) = h.alloc(PAGE);
    let mut log = SubmissionEntry::with_opcode(0x02);
    log.prp1 = iova;
    log.cdw10 = (512 / 4 - 1) << 16 | 0x02;
    h.ok(0, log);
    let smart = h.read(off, 512);
    assert_eq!(smart[3], 100);
    log.cdw10 = (512 / 4 - 1) << 16 | 0x7F;
    assert_eq!(
        h.status(0, log),
        specific(CommandSpecificStatus::InvalidLogPage)
    );
    // Unknown admin opcode; an I/O opcode on the admin queue.
    assert_eq!(
        h.status(0, SubmissionEntry::with_opcode(0xC3)),
        generic(GenericStatus::InvalidOpcode)
    );
    assert_eq!(
        h.status(0, SubmissionEntry::with_opcode(0x80)),
        generic(GenericStatus::InvalidOpcode)
    );
}

#[test]
fn write_read_round_trip_with_interrupts() {
    let mut h = Host::new("sim,size=16M,vectors=4");
    let fds = h.sim.enable_vectors(4).unwrap();
    assert!(h.sim.enable_vectors(5).is_err());
    h.enable(16);
    h.create_pair(1, 64, 2, true);
    // The admin CQ always interrupts on vector 0.
    wait_irq(&fds[0]);
    assert!(fds[2].read().is_err(), "nothing posted on CQ 1 yet");

    // 5 blocks of 4 KiB starting 512 bytes into a page span 6 pages:
    // PRP1 plus a PRP list of 5 entries.
    let len = 5 * 4096;
    let (buf_off, buf) = h.alloc(6 * PAGE);
    let (list_off, list) = h.alloc(PAGE);
    let data = pattern(len, 7);
    h.write(buf_off + 512, &data);
    let entries: Vec<u64> = (1..=5).map(|i| buf + i * PAGE).collect();
    h.write(list_off, entries.as_bytes());
    let w = SubmissionEntry::write(1, 100, 5, buf + 512, list);
    let c = h.cmd(1, w);
    assert!(c.is_success(), "{c:?}");
    assert_eq!(c.sq_head, 1);
    wait_irq(&fds[2]);
    assert_eq!(h.sim.stats().interrupts(2), 1);

    let (rd_off, rd) = h.alloc(5 * PAGE);
    let (rl_off, rl) = h.alloc(PAGE);
    let entries: Vec<u64> = (1..5).map(|i| rd + i * PAGE).collect();
    h.write(rl_off, entries.as_bytes());
    h.ok(1, SubmissionEntry::read(1, 100, 5, rd, rl));
    assert_eq!(h.read(rd_off, len), data);
    h.ok(1, SubmissionEntry::flush(1));
    h.ok(1, SubmissionEntry::flush(crate::nvme::NSID_ALL));
    assert_eq!(h.sim.stats().io_commands(0x01), 1);
    assert_eq!(h.sim.stats().io_commands(0x02), 1);
    assert_eq!(h.sim.stats().bytes_written(), len as u64);

    // Write Zeroes and DSM deallocate read back as zeros.
    h.ok(1, SubmissionEntry::write_zeroes(1, 101, 1, false));
    let (r_off, r) = h.alloc(PAGE);
    h.ok(1, SubmissionEntry::read(1, 101, 1, r, 0));
    assert!(h.read(r_off, 4096).iter().all(|&b| b == 0));
    let (dsm_off, dsm) = h.alloc(PAGE);
    let ranges = [DsmRange::new(102, 2), DsmRange::new(104, 1)];
    h.write(dsm_off, ranges.as_bytes());
    h.ok(1, SubmissionEntry::dataset_management(1, 2, dsm, true));
    h.ok(1, SubmissionEntry::read(1, 100, 5, rd, rl));
    let back = h.read(rd_off, len);
    assert_eq!(&back[..4096], &data[..4096]);
    assert!(back[4096..].iter().all(|&b| b == 0));
    // A DSM range past the end fails without deallocating anything.
    let ranges = [DsmRange::new(0, 1), DsmRange::new(4095, 2)];
    h.write(dsm_off, ranges.as_bytes());
    assert_eq!(
        h.status(1, SubmissionEntry::dataset_management(1, 2, dsm, true)),
        generic(GenericStatus::LbaOutOfRange)
    );
}

#[test]
fn queue_creation_errors() {
    let mut h = Host::new("sim,queues=4,qdepth=64,vectors=3");
    h.enable(8);
    let (_, q) = h.alloc(64 * 64);
    assert_eq!(
        h.status(0, SubmissionEntry::create_io_cq(1, 16, q, 3, true)),
        specific(CommandSpecificStatus::InvalidInterruptVector)
    );
    assert_eq!(
        h.status(0, SubmissionEntry::create_io_cq(1, 65, q, 0, true)),
        specific(CommandSpecificStatus::InvalidQueueSize)
    );
    let mut one_entry = SubmissionEntry::create_io_cq(1, 2, q, 0, true);
    one_entry.cdw10 &= 0xFFFF;
    assert_eq!(
        h.status(0, one_entry),
        specific(CommandSpecificStatus::InvalidQueueSize)
    );
    assert_eq!(
        h.status(0, SubmissionEntry::create_io_cq(0, 16, q, 0, true)),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
    assert_eq!(
        h.status(0, SubmissionEntry::create_io_cq(5, 16, q, 0, true)),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
    let mut not_contiguous = SubmissionEntry::create_io_cq(1, 16, q, 0, true);
    not_contiguous.cdw11 &= !1;
    assert_eq!(
        h.status(0, not_contiguous),
        generic(GenericStatus::InvalidField)
    );
    assert_eq!(
        h.status(0, SubmissionEntry::create_io_cq(1, 16, q + 256, 0, true)),
        generic(GenericStatus::InvalidPrpOffset)
    );
    assert_eq!(
        h.status(
            0,
            SubmissionEntry::create_io_cq(1, 16, 0x4000_0000, 0, true)
        ),
        generic(GenericStatus::DataTransferError)
    );
    // SQ before its CQ.
    assert_eq!(
        h.status(
            0,
            SubmissionEntry::create_io_sq(1, 16, q, 1, QueuePriority::Medium)
        ),
        specific(CommandSpecificStatus::CompletionQueueInvalid)
    );
    h.create_pair(1, 16, 1, true);
    // Existing ids.
    assert_eq!(
        h.status(0, SubmissionEntry::create_io_cq(1, 16, q, 0, true)),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
    assert_eq!(
        h.status(
            0,
            SubmissionEntry::create_io_sq(1, 16, q, 1, QueuePriority::Medium)
        ),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
    // A second SQ sharing CQ 1.
    let (sq2_off, sq2) = h.alloc(16 * 64);
    h.ok(
        0,
        SubmissionEntry::create_io_sq(2, 16, sq2, 1, QueuePriority::Medium),
    );
    h.sqs.insert(
        2,
        Sq {
            off: sq2_off,
            size: 16,
            tail: 0,
            cqid: 1,
        },
    );
    h.ok(2, SubmissionEntry::flush(1));
    // Deleting: CQ with SQs attached, unknown ids, then in the right order.
    assert_eq!(
        h.status(0, SubmissionEntry::delete_io_cq(1)),
        specific(CommandSpecificStatus::InvalidQueueDeletion)
    );
    assert_eq!(
        h.status(0, SubmissionEntry::delete_io_sq(3)),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
    assert_eq!(
        h.status(0, SubmissionEntry::delete_io_sq(0)),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
    assert_eq!(
        h.status(0, SubmissionEntry::delete_io_cq(0)),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
    h.ok(0, SubmissionEntry::delete_io_sq(1));
    h.ok(0, SubmissionEntry::delete_io_sq(2));
    h.ok(0, SubmissionEntry::delete_io_cq(1));
    assert_eq!(
        h.status(0, SubmissionEntry::delete_io_cq(1)),
        specific(CommandSpecificStatus::InvalidQueueIdentifier)
    );
}

#[test]
fn io_command_errors() {
    let mut h = Host::new("sim,size=1M,mdts=1");
    h.enable(8);
    h.create_pair(1, 8, 0, false);
    let (_, buf) = h.alloc(4 * PAGE);
    // PRP pointing to an unmapped IOVA, and to the host address itself.
    assert_eq!(
        h.status(1, SubmissionEntry::read(1, 0, 1, 0x7000_0000, 0)),
        generic(GenericStatus::DataTransferError)
    );
    let host = h.mem.host_ptr() as u64;
    assert_eq!(
        h.status(1, SubmissionEntry::write(1, 0, 1, host, 0)),
        generic(GenericStatus::DataTransferError)
    );
    // Second page unmapped.
    assert_eq!(
        h.status(1, SubmissionEntry::read(1, 0, 2, buf, 0x7000_0000)),
        generic(GenericStatus::DataTransferError)
    );
    assert_eq!(
        h.status(1, SubmissionEntry::read(1, 0, 2, buf, buf + 8)),
        generic(GenericStatus::InvalidPrpOffset)
    );
    assert_eq!(
        h.status(1, SubmissionEntry::read(1, 0, 1, buf + 2, 0)),
        generic(GenericStatus::InvalidPrpOffset)
    );
    for nsid in [0, 2] {
        assert_eq!(
            h.status(1, SubmissionEntry::read(nsid, 0, 1, buf, 0)),
            generic(GenericStatus::InvalidNamespace)
        );
    }
    assert_eq!(
        h.status(1, SubmissionEntry::read(1, 255, 2, buf, buf + PAGE)),
        generic(GenericStatus::LbaOutOfRange)
    );
    assert_eq!(
        h.status(1, SubmissionEntry::write_zeroes(1, u64::MAX, 2, false)),
        generic(GenericStatus::LbaOutOfRange)
    );
    // MDTS 1 = 8 KiB: three blocks is too much.
    assert_eq!(
        h.status(1, SubmissionEntry::read(1, 0, 3, buf, buf + PAGE)),
        generic(GenericStatus::InvalidField)
    );
    assert_eq!(
        h.status(1, SubmissionEntry::with_opcode(0x7F)),
        generic(GenericStatus::InvalidOpcode)
    );
    let mut sgl = SubmissionEntry::read(1, 0, 1, buf, 0);
    sgl.flags = 1 << 6;
    assert_eq!(h.status(1, sgl), generic(GenericStatus::InvalidField));
    // Errors carry DNR.
    let c = h.cmd(1, SubmissionEntry::read(1, 0, 1, 0x7000_0000, 0));
    assert!(c.result().unwrap_err().dnr);
}

#[test]
fn phase_tag_wraps_on_a_small_queue() {
    let mut h = Host::new("sim");
    h.enable(2);
    h.create_pair(1, 2, 0, false);
    let mut phases = Vec::new();
    for i in 0..9u16 {
        let phase = h.cqs[&1].phase;
        let c = h.cmd(1, SubmissionEntry::flush(1));
        assert!(c.is_success());
        assert_eq!(c.phase(), phase);
        assert_eq!(u32::from(c.sq_head), u32::from(i + 1) % 2);
        phases.push(c.phase());
    }
    assert_eq!(
        phases,
        [true, true, false, false, true, true, false, false, true]
    );
    // The admin queue (2 entries) wrapped the same way many times.
    for _ in 0..5 {
        h.ok(
            0,
            SubmissionEntry::get_features(crate::nvme::FeatureId::ARBITRATION),
        );
    }
}

#[test]
fn full_completion_queue_stalls() {
    let mut h = Host::new("sim");
    h.enable(4);
    // A CQ of 2 entries holds one completion at a time.
    h.create_pair(1, 2, 0, false);
    let (sq_off, sq) = h.alloc(8 * 64);
    h.ok(
        0,
        SubmissionEntry::create_io_sq(2, 8, sq, 1, QueuePriority::Medium),
    );
    h.sqs.insert(
        2,
        Sq {
            off: sq_off,
            size: 8,
            tail: 0,
            cqid: 1,
        },
    );
    let cids: Vec<u16> = (0..3)
        .map(|_| h.submit(2, SubmissionEntry::flush(1)))
        .collect();
    std::thread::sleep(Duration::from_millis(20));
    // Only one entry is visible: the slot after it still has phase 0.
    let cq_off = h.cqs[&1].off;
    assert_eq!(h.read(cq_off + 16, 16), [0u8; 16]);
    let first = h.reap(1);
    assert_eq!(first.cid, cids[0]);
    let second = h.reap(1);
    assert_eq!(second.cid, cids[1]);
    let third = h.reap(1);
    assert_eq!(third.cid, cids[2]);
    assert_eq!(third.sq_head, 3);
    assert!(h.try_reap(1).is_none());
}

#[test]
fn invalid_doorbells_are_ignored() {
    let mut h = Host::new("sim");
    h.enable(4);
    h.create_pair(1, 4, 0, false);
    // A tail beyond the queue.
    h.regs.ring_doorbell(doorbell_offset(1, false, h.stride), 9);
    // A CQ head past anything posted.
    h.regs.ring_doorbell(doorbell_offset(1, true, h.stride), 2);
    let start = Instant::now();
    while h.sim.stats().invalid_doorbell_writes() < 2 {
        assert!(start.elapsed() < TIMEOUT);
        std::thread::sleep(Duration::from_millis(1));
    }
    // Restore the real values and carry on.
    h.regs.ring_doorbell(doorbell_offset(1, true, h.stride), 0);
    h.regs.ring_doorbell(doorbell_offset(1, false, h.stride), 0);
    std::thread::sleep(Duration::from_millis(5));
    h.ok(1, SubmissionEntry::flush(1));
    assert!(h.sim.stats().invalid_doorbell_writes() >= 2);
}

fn write_block(h: &mut Host, qid: u16, lba: u64, data: &[u8]) {
    let (off, iova) = h.alloc(PAGE);
    h.write(off, data);
    h.ok(qid, SubmissionEntry::write(1, lba, 1, iova, 0));
}

fn read_block(h: &mut Host, qid: u16, lba: u64) -> Vec<u8> {
    let (off, iova) = h.alloc(PAGE);
    h.ok(qid, SubmissionEntry::read(1, lba, 1, iova, 0));
    h.read(off, 4096)
}

#[test]
fn reset_keeps_ram_data() {
    let mut h = Host::new("sim,size=8M");
    h.enable(4);
    h.create_pair(1, 8, 0, false);
    let data = pattern(4096, 3);
    write_block(&mut h, 1, 42, &data);
    h.disable();
    h.enable(4);
    // The old I/O queues are gone (so id 1 can be created again)...
    h.create_pair(1, 8, 0, false);
    // ...the data is not.
    assert_eq!(read_block(&mut h, 1, 42), data);
}

#[test]
fn file_backing_survives_restart_and_shutdown_completes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns1.img");
    let name = format!("sim,size=4M,namespaces=2,file={}", path.display());
    let data = pattern(4096, 9);
    {
        let mut h = Host::new(&name);
        h.enable(4);
        h.create_pair(1, 8, 0, false);
        write_block(&mut h, 1, 7, &data);
        // Orderly shutdown.
        h.regs.write32(
            offset::CC,
            Host::cc()
                .with_en(true)
                .with_shn(ShutdownNotification::Normal)
                .0,
        );
        h.wait_csts("CSTS.SHST complete", |c| {
            c.shst() == Some(ShutdownStatus::Complete)
        });
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 4 << 20);
    let mut h = Host::new(&name);
    h.enable(4);
    h.create_pair(1, 8, 0, false);
    assert_eq!(read_block(&mut h, 1, 7), data);
}

#[test]
fn fatal_fault_sets_cfs() {
    let mut h = Host::new("sim");
    h.enable(4);
    h.sim.faults().set_fatal();
    h.wait_csts("CSTS.CFS=1", |c| c.cfs());
    // Nothing is processed any more.
    h.submit(
        0,
        SubmissionEntry::get_features(crate::nvme::FeatureId::ARBITRATION),
    );
    std::thread::sleep(Duration::from_millis(20));
    assert!(h.try_reap(0).is_none());
    // A reset recovers.
    h.disable();
    assert!(!h.csts().cfs());
    h.enable(4);
    h.ok(
        0,
        SubmissionEntry::get_features(crate::nvme::FeatureId::ARBITRATION),
    );
}

#[test]
fn injected_errors_delays_drops_and_bogus_completions() {
    let mut h = Host::new("sim");
    h.enable(8);
    h.create_pair(1, 16, 0, false);
    let sim = Arc::clone(&h.sim);
    let faults = sim.faults();
    // Fail the 2nd I/O command from now; admin commands don't count.
    faults.fail_nth_command(
        2,
        FaultScope::Io,
        NvmeStatus::from(MediaStatus::UnrecoveredReadError),
    );
    h.ok(1, SubmissionEntry::flush(1));
    h.ok(
        0,
        SubmissionEntry::get_features(crate::nvme::FeatureId::ARBITRATION),
    );
    assert_eq!(
        h.status(1, SubmissionEntry::flush(1)),
        Err(MediaStatus::UnrecoveredReadError.into())
    );
    h.ok(1, SubmissionEntry::flush(1));

    // Drop the next completion: it never shows up; the one after does.
    faults.drop_nth_completion(1);
    let lost = h.submit(1, SubmissionEntry::flush(1));
    std::thread::sleep(Duration::from_millis(20));
    assert!(h.try_reap(1).is_none());
    let c = h.cmd(1, SubmissionEntry::flush(1));
    assert_ne!(c.cid, lost);

    // Delay the next completion by 30 ms: the one after overtakes it.
    faults.delay_nth_completion(1, Duration::from_millis(30));
    let start = Instant::now();
    let slow = h.submit(1, SubmissionEntry::flush(1));
    let fast = h.submit(1, SubmissionEntry::flush(1));
    assert_eq!(h.reap(1).cid, fast);
    assert_eq!(h.reap(1).cid, slow);
    assert!(start.elapsed() >= Duration::from_millis(30));

    // Spurious completions.
    faults.post_unknown_cid(1);
    let c = h.reap(1);
    assert_eq!(c.sq_id, 1);
    assert!(c.cid > h.next_cid, "{c:?}");
    faults.post_bogus_sq_id(1);
    let c = h.reap(1);
    assert!(c.sq_id != 1 && c.sq_id != 0, "{c:?}");
    assert_eq!(h.sim.stats().spurious_completions(), 2);
}

#[test]
fn latency_model_delays_completions() {
    let mut h = Host::new("sim,latency=read:20ms/write:0");
    h.enable(4);
    h.create_pair(1, 8, 0, false);
    let start = Instant::now();
    write_block(&mut h, 1, 0, &pattern(4096, 1));
    let write_time = start.elapsed();
    let start = Instant::now();
    read_block(&mut h, 1, 0);
    let read_time = start.elapsed();
    assert!(read_time >= Duration::from_millis(20), "{read_time:?}");
    assert!(write_time < Duration::from_millis(20), "{write_time:?}");
}

#[test]
fn deleting_an_sq_aborts_its_delayed_commands() {
    let mut h = Host::new("sim,latency=flush:10s");
    h.enable(4);
    h.create_pair(1, 8, 0, false);
    let cid = h.submit(1, SubmissionEntry::flush(1));
    // The delete must find the flush fetched and pending (not merely
    // queued, which it would drop unfetched): wait for the fetch itself
    // rather than for a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.sim.stats().io_commands(IoOpcode::Flush as u8) == 0 {
        assert!(Instant::now() < deadline, "the flush was never fetched");
        std::thread::sleep(Duration::from_micros(100));
    }
    h.ok(0, SubmissionEntry::delete_io_sq(1));
    let c = h.reap(1);
    assert_eq!(c.cid, cid);
    assert_eq!(
        c.result().unwrap_err().code,
        GenericStatus::AbortedSqDeletion.into()
    );
}

#[test]
fn idle_device_thread_sleeps() {
    let h = Host::new("sim,spin=0,idle=1ms");
    // Let it settle into the back-off, then count its passes.
    std::thread::sleep(Duration::from_millis(20));
    let before = h.sim.stats().device_polls();
    std::thread::sleep(Duration::from_millis(200));
    let polls = h.sim.stats().device_polls() - before;
    // About one pass per millisecond; a spinning thread would make millions.
    assert!(
        polls <= 400,
        "idle simulator polled {polls} times in 200 ms"
    );
    assert!(polls >= 10, "the device thread stopped polling: {polls}");
}

mod executor {
    //! Random commands straight into the device model: whatever the
    //! guest writes, the model answers with a status and never panics.

    use super::*;
    use proptest::prelude::*;

    fn addr(base: u64) -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            (0u64..(1 << 21)).prop_map(move |o| base + o),
            (0u64..512).prop_map(move |p| base + p * PAGE),
            Just(0u64),
        ]
    }

    fn sqe(base: u64) -> impl Strategy<Value = SubmissionEntry> {
        let opcode = prop_oneof![
            prop::sample::select(vec![
                0x00u8, 0x01, 0x02, 0x04, 0x05, 0x06, 0x08, 0x09, 0x0A, 0x0C
            ]),
            any::<u8>(),
        ];
        let small = prop_oneof![
            any::<u32>(),
            0u32..16,
            (0u32..16).prop_map(|q| (15 << 16) | q)
        ];
        (
            opcode,
            prop_oneof![Just(0u8), any::<u8>()],
            prop_oneof![0u32..4, any::<u32>()],
            addr(base),
            addr(base),
            small.clone(),
            small.clone(),
            small,
            any::<u32>(),
        )
            .prop_map(
                |(opcode, flags, nsid, prp1, prp2, cdw10, cdw11, cdw12, cdw13)| SubmissionEntry {
                    opcode,
                    flags,
                    nsid,
                    prp1,
                    prp2,
                    cdw10,
                    cdw11,
                    cdw12,
                    cdw13,
                    ..SubmissionEntry::with_opcode(0)
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn random_commands_never_panic(
            cmds in prop::collection::vec((0u16..4, sqe(IOVA_BASE)), 1..40)
        ) {
            let options: SimOptions = "sim,size=4M,mdts=0,queues=4,qdepth=32".parse().unwrap();
            let (shared, mut device) = Shared::build(options).unwrap();
            let region = shared.iommu.map(2 << 20).unwrap();
            prop_assert_eq!(region.iova(), IOVA_BASE);
            // Admin queues at the top of the region; enable through the registers.
            let asq = IOVA_BASE + (2 << 20) - 2 * PAGE;
            shared.bar.write32(offset::AQA, Aqa::new(31, 31).0);
            shared.bar.write64(offset::ASQ, asq);
            shared.bar.write64(offset::ACQ, asq + PAGE);
            shared.bar.write32(offset::CC, Host::cc().with_en(true).0);
            let now = Instant::now();
            device.poll(now);
            prop_assert!(Csts(shared.bar.read32(offset::CSTS)).rdy());
            for (sqid, sqe) in cmds {
                let mem = shared.iommu.memory();
                device.handle(&mem, sqid, sqe, now);
                drop(mem);
                device.poll(now);
            }
            // The admin queue still answers.
            let mem = shared.iommu.memory();
            let id = device.identify_controller();
            prop_assert_eq!(id.sqes, 0x66);
            drop(mem);
        }
    }
}
