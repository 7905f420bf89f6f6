//! Admin command set of the simulated controller.

use vm_memory::{GuestAddress, GuestMemory as _};
use zerocopy::IntoBytes;

use crate::nvme::regs::offset;
use crate::nvme::{
    ActiveNamespaceList, AdminOpcode, Cc, CommandSpecificStatus, CompletionEntry, FeatureId,
    GenericStatus, IdentifyCns, IdentifyController, IdentifyNamespace, LbaFormat, StatusCode,
    SubmissionEntry, Version,
};

use super::device::{Device, Exec, AERL};
use super::iommu::GuestMemory;
use super::prp;

/// PCI vendor ID the simulator reports. 0x1B36 would be QEMU's (Red Hat);
/// this is a made-up value in the unassigned range, so nothing mistakes the
/// simulator for real hardware.
pub const SIM_VENDOR_ID: u16 = 0xFFFE;

type CmdResult = Result<u32, StatusCode>;

fn invalid_field() -> StatusCode {
    GenericStatus::InvalidField.into()
}

fn specific(s: CommandSpecificStatus) -> StatusCode {
    s.into()
}

impl Device {
    /// Runs one admin command.
    pub(crate) fn execute_admin(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> Exec {
        if sqe.fuse() != 0 || sqe.psdt() != 0 {
            // No fused operations and no SGLs (FUSES = 0, SGLS = 0).
            return Exec::from_result(Err(invalid_field()));
        }
        let Ok(op) = AdminOpcode::try_from(sqe.opcode) else {
            return Exec::from_result(Err(GenericStatus::InvalidOpcode.into()));
        };
        let result = match op {
            AdminOpcode::DeleteIoSq => self.delete_io_sq(mem, sqe),
            AdminOpcode::CreateIoSq => self.create_io_sq(mem, sqe),
            AdminOpcode::GetLogPage => self.get_log_page(mem, sqe),
            AdminOpcode::DeleteIoCq => self.delete_io_cq(sqe),
            AdminOpcode::CreateIoCq => self.create_io_cq(mem, sqe),
            AdminOpcode::Identify => self.identify(mem, sqe),
            AdminOpcode::Abort => Ok(self.abort(mem, sqe)),
            AdminOpcode::SetFeatures => self.set_features(sqe),
            AdminOpcode::GetFeatures => self.get_features(sqe),
            AdminOpcode::DoorbellBufferConfig => self.doorbell_buffer_config(mem, sqe),
            AdminOpcode::AsyncEventRequest => {
                if self.aers.len() > usize::from(AERL) {
                    Err(specific(CommandSpecificStatus::AsyncEventLimitExceeded))
                } else {
                    // Held until an event occurs (`fault=event:...`).
                    self.aers.push(sqe.cid);
                    return Exec::Held;
                }
            }
        };
        Exec::from_result(result)
    }

    /// Abort: a command whose completion is still waiting (a latency or
    /// an injected delay) completes now with "command abort requested" and
    /// DW0 bit 0 = 0; anything else has completed, or was lost, and is not
    /// aborted (DW0 bit 0 = 1), as controllers answer.
    fn abort(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> u32 {
        let sqid = (sqe.cdw10 & 0xFFFF) as u16;
        let cid = (sqe.cdw10 >> 16) as u16;
        let Some(cqe) = self.take_pending(sqid, cid) else {
            return 1;
        };
        let aborted = super::device::Cqe {
            status: StatusCode::from(GenericStatus::AbortRequested).to_status_field(false),
            dw0: 0,
            ..cqe
        };
        self.post(mem, aborted);
        0
    }

    /// The live CC register (entry sizes may be set after enabling).
    fn live_cc(&self) -> Cc {
        Cc(self.mmio.read32(offset::CC))
    }

    /// The 1-based queue size of a Create I/O queue command, checked against CAP.MQES.
    fn queue_size(&self, sqe: &SubmissionEntry) -> Result<u32, StatusCode> {
        let size = (sqe.cdw10 >> 16) + 1;
        if size < 2 || size > self.cap.max_queue_entries() {
            return Err(specific(CommandSpecificStatus::InvalidQueueSize));
        }
        Ok(size)
    }

    /// Checks a Create I/O queue's memory: page aligned, physically
    /// contiguous (CAP.CQR = 1), and inside mapped DMA memory.
    fn check_queue_memory(
        &self,
        mem: &GuestMemory,
        sqe: &SubmissionEntry,
        bytes: usize,
    ) -> Result<(), StatusCode> {
        if !sqe.prp1.is_multiple_of(self.page_size() as u64) {
            return Err(GenericStatus::InvalidPrpOffset.into());
        }
        if sqe.cdw11 & 1 == 0 {
            return Err(invalid_field());
        }
        // Where an IOMMU would fault on the first access.
        mem.get_slice(GuestAddress(sqe.prp1), bytes)
            .map_err(|_| GenericStatus::DataTransferError)?;
        Ok(())
    }

    fn create_io_cq(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> CmdResult {
        let qid = sqe.cdw10 as u16;
        if qid == 0 || qid > self.granted_cqs || self.cqs[usize::from(qid)].is_some() {
            return Err(specific(CommandSpecificStatus::InvalidQueueIdentifier));
        }
        let size = self.queue_size(sqe)?;
        let interrupts = sqe.cdw11 & 0b10 != 0;
        let vector = (sqe.cdw11 >> 16) as u16;
        if vector >= self.shared.options.vectors {
            return Err(specific(CommandSpecificStatus::InvalidInterruptVector));
        }
        if self.live_cc().iocqes() != CompletionEntry::SIZE_LOG2 {
            return Err(invalid_field());
        }
        self.check_queue_memory(mem, sqe, size as usize * 16)?;
        self.add_cq(qid, sqe.prp1, size, interrupts, vector);
        self.io_queues_created = true;
        Ok(0)
    }

    fn create_io_sq(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> CmdResult {
        let qid = sqe.cdw10 as u16;
        let cqid = (sqe.cdw11 >> 16) as u16;
        if cqid == 0 || self.cqs.get(usize::from(cqid)).is_none_or(Option::is_none) {
            return Err(specific(CommandSpecificStatus::CompletionQueueInvalid));
        }
        if qid == 0 || qid > self.granted_sqs || self.sqs[usize::from(qid)].is_some() {
            return Err(specific(CommandSpecificStatus::InvalidQueueIdentifier));
        }
        let size = self.queue_size(sqe)?;
        if self.live_cc().iosqes() != SubmissionEntry::SIZE_LOG2 {
            return Err(invalid_field());
        }
        self.check_queue_memory(mem, sqe, size as usize * 64)?;
        self.add_sq(qid, sqe.prp1, size, cqid);
        self.io_queues_created = true;
        Ok(0)
    }

    /// Doorbell Buffer Config: page-aligned shadow doorbell and EventIdx
    /// buffers in mapped memory, large enough for every queue id; the
    /// current tails and heads are copied in, as QEMU's controller does.
    fn doorbell_buffer_config(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> CmdResult {
        if !self.shared.options.dbbuf {
            return Err(GenericStatus::InvalidOpcode.into());
        }
        let page = self.page_size() as u64;
        let len = self.sqs.len() * 2 * self.dstrd_bytes();
        for base in [sqe.prp1, sqe.prp2] {
            if base == 0 || base % page != 0 || mem.get_slice(GuestAddress(base), len).is_err() {
                return Err(invalid_field());
            }
        }
        self.dbbuf = Some((sqe.prp1, sqe.prp2));
        self.sync_shadow_doorbells(mem);
        Ok(0)
    }

    fn delete_io_sq(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> CmdResult {
        let qid = sqe.cdw10 as u16;
        if qid == 0 || self.sqs.get(usize::from(qid)).is_none_or(Option::is_none) {
            return Err(specific(CommandSpecificStatus::InvalidQueueIdentifier));
        }
        self.remove_sq(mem, qid);
        Ok(0)
    }

    fn delete_io_cq(&mut self, sqe: &SubmissionEntry) -> CmdResult {
        let qid = sqe.cdw10 as u16;
        let Some(cq) = self
            .cqs
            .get(usize::from(qid))
            .and_then(Option::as_ref)
            .filter(|_| qid != 0)
        else {
            return Err(specific(CommandSpecificStatus::InvalidQueueIdentifier));
        };
        if cq.sq_count != 0 {
            return Err(specific(CommandSpecificStatus::InvalidQueueDeletion));
        }
        self.remove_cq(qid);
        Ok(0)
    }

    /// Sends `data` (padded with zeros to `len`) to the host buffer of `sqe`.
    fn send(
        &mut self,
        mem: &GuestMemory,
        sqe: &SubmissionEntry,
        data: &[u8],
        len: usize,
    ) -> CmdResult {
        let mut segments = std::mem::take(&mut self.segments);
        let page = self.page_size();
        let result = prp::walk(mem, sqe.prp1, sqe.prp2, len, page, &mut segments)
            .and_then(|()| prp::write_bytes(mem, &segments, data));
        self.segments = segments;
        result.map(|()| 0)
    }

    fn identify(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> CmdResult {
        let cns = IdentifyCns(sqe.cdw10 as u8);
        let nn = self.namespaces.len() as u32;
        let page = match cns {
            IdentifyCns::NAMESPACE => {
                if sqe.nsid == 0 || sqe.nsid > nn {
                    return Err(GenericStatus::InvalidNamespace.into());
                }
                self.identify_namespace(sqe.nsid).as_bytes().to_vec()
            }
            IdentifyCns::CONTROLLER => self.identify_controller().as_bytes().to_vec(),
            IdentifyCns::ACTIVE_NAMESPACE_LIST => {
                if sqe.nsid >= 0xFFFF_FFFE {
                    return Err(GenericStatus::InvalidNamespace.into());
                }
                let ids: Vec<u32> = (sqe.nsid.saturating_add(1)..=nn)
                    .take(ActiveNamespaceList::CAPACITY)
                    .collect();
                ActiveNamespaceList::from_ids(&ids).as_bytes().to_vec()
            }
            // Namespace Identification Descriptor list: the NGUID.
            IdentifyCns(0x03) => {
                if sqe.nsid == 0 || sqe.nsid > nn {
                    return Err(GenericStatus::InvalidNamespace.into());
                }
                let mut list = vec![0u8; 4096];
                list[0] = 0x02; // NIDT: NGUID
                list[1] = 16; // NIDL
                list[4..20].copy_from_slice(&self.nguid(sqe.nsid));
                list
            }
            _ => return Err(invalid_field()),
        };
        self.send(mem, sqe, &page, 4096)
    }

    fn nguid(&self, nsid: u32) -> [u8; 16] {
        // Stable per serial number and namespace.
        let mut g = [0u8; 16];
        let serial = self.shared.options.serial.as_bytes();
        for (i, b) in serial.iter().enumerate() {
            g[i % 12] ^= b.rotate_left(i as u32 / 12);
        }
        g[12..].copy_from_slice(&nsid.to_be_bytes());
        g
    }

    pub(crate) fn identify_controller(&self) -> IdentifyController {
        let o = &self.shared.options;
        let mut id = IdentifyController::new_zeroed();
        id.vid = SIM_VENDOR_ID;
        id.ssvid = SIM_VENDOR_ID;
        id.set_serial(&o.serial);
        id.set_model(&o.model);
        let version = env!("CARGO_PKG_VERSION");
        id.set_firmware(&version[..version.len().min(8)]);
        id.rab = 6;
        id.mdts = o.mdts;
        id.cntlid = 1;
        id.ver = Version::V1_4.0;
        id.cntrltype = 1;
        id.acl = 3;
        id.aerl = AERL;
        // One firmware slot, read only.
        id.frmw = 0b0000_0011;
        id.elpe = 0;
        id.npss = 0;
        id.wctemp = 0x157;
        id.cctemp = 0x175;
        let total: u128 = self
            .namespaces
            .iter()
            .map(|n| u128::from(n.blocks() << n.lba_shift()))
            .sum();
        id.tnvmcap = total.to_le_bytes();
        id.sqes = (SubmissionEntry::SIZE_LOG2 << 4) | SubmissionEntry::SIZE_LOG2;
        id.cqes = (CompletionEntry::SIZE_LOG2 << 4) | CompletionEntry::SIZE_LOG2;
        id.nn = self.namespaces.len() as u32;
        id.oncs = IdentifyController::ONCS_DSM | IdentifyController::ONCS_WRITE_ZEROES;
        if o.dbbuf {
            id.oacs |= IdentifyController::OACS_DOORBELL_BUFFER_CONFIG;
        }
        // Volatile write cache present; Flush to NSID FFFFFFFFh supported.
        id.vwc = 0b111;
        let nqn = format!("nqn.2024-01.io.isonvme:sim:{}", o.serial);
        let n = nqn.len().min(id.subnqn.len() - 1);
        id.subnqn[..n].copy_from_slice(&nqn.as_bytes()[..n]);
        // Power state 0: maximum power 25.00 W (0.01 W units).
        id.psd[..2].copy_from_slice(&2500u16.to_le_bytes());
        id
    }

    pub(crate) fn identify_namespace(&self, nsid: u32) -> IdentifyNamespace {
        let ns = &self.namespaces[nsid as usize - 1];
        let mut id = IdentifyNamespace::new_zeroed();
        id.nsze = ns.blocks();
        id.ncap = ns.blocks();
        id.nuse = ns.blocks();
        id.nlbaf = 0;
        id.lbaf[0] = LbaFormat::new(ns.lba_shift() as u8);
        id.set_current_lba_format(0);
        // Deallocated blocks read as zeros; Write Zeroes may deallocate.
        id.dlfeat = 0b1001;
        id.nvmcap = u128::from(ns.blocks() << ns.lba_shift()).to_le_bytes();
        id.nguid = self.nguid(nsid);
        id
    }

    fn set_features(&mut self, sqe: &SubmissionEntry) -> CmdResult {
        if sqe.cdw10 & (1 << 31) != 0 {
            return Err(specific(CommandSpecificStatus::FeatureIdNotSaveable));
        }
        let value = sqe.cdw11;
        let f = &mut self.features;
        match FeatureId(sqe.cdw10 as u8) {
            FeatureId::NUMBER_OF_QUEUES => {
                if self.io_queues_created {
                    return Err(GenericStatus::CommandSequenceError.into());
                }
                let (nsqr, ncqr) = (value & 0xFFFF, value >> 16);
                if nsqr == 0xFFFF || ncqr == 0xFFFF {
                    return Err(invalid_field());
                }
                let max = u32::from(self.shared.options.queues);
                let (sqs, cqs) = ((nsqr + 1).min(max), (ncqr + 1).min(max));
                self.granted_sqs = sqs as u16;
                self.granted_cqs = cqs as u16;
                Ok(((cqs - 1) << 16) | (sqs - 1))
            }
            FeatureId::ARBITRATION => {
                f.arbitration = value;
                Ok(0)
            }
            FeatureId::POWER_MANAGEMENT => {
                // Only power state 0 exists (NPSS = 0).
                if value & 0x1F != 0 {
                    return Err(invalid_field());
                }
                f.power_management = value;
                Ok(0)
            }
            FeatureId::TEMPERATURE_THRESHOLD => {
                f.temperature_threshold = value;
                Ok(0)
            }
            FeatureId(0x05) => {
                f.error_recovery = value;
                Ok(0)
            }
            FeatureId::VOLATILE_WRITE_CACHE => {
                f.volatile_write_cache = value & 1;
                Ok(0)
            }
            FeatureId::INTERRUPT_COALESCING => {
                f.interrupt_coalescing = value & 0xFFFF;
                Ok(0)
            }
            FeatureId::INTERRUPT_VECTOR_CONFIG => {
                if (value & 0xFFFF) as u16 >= self.shared.options.vectors {
                    return Err(invalid_field());
                }
                Ok(0)
            }
            FeatureId::ASYNC_EVENT_CONFIG => {
                f.async_event_config = value;
                Ok(0)
            }
            _ => Err(invalid_field()),
        }
    }

    fn get_features(&mut self, sqe: &SubmissionEntry) -> CmdResult {
        let select = (sqe.cdw10 >> 8) & 0b111;
        let fid = FeatureId(sqe.cdw10 as u8);
        let defaults = super::device::Features::default();
        let known = matches!(
            fid,
            FeatureId::ARBITRATION
                | FeatureId::POWER_MANAGEMENT
                | FeatureId::TEMPERATURE_THRESHOLD
                | FeatureId(0x05)
                | FeatureId::VOLATILE_WRITE_CACHE
                | FeatureId::NUMBER_OF_QUEUES
                | FeatureId::INTERRUPT_COALESCING
                | FeatureId::INTERRUPT_VECTOR_CONFIG
                | FeatureId::ASYNC_EVENT_CONFIG
        );
        if !known {
            return Err(invalid_field());
        }
        let features = match select {
            0 => self.features,
            // Default and saved values are the same: nothing is saveable.
            1 | 2 => defaults,
            // Supported capabilities: changeable, not saveable, not
            // namespace specific.
            3 => return Ok(0b100),
            _ => return Err(invalid_field()),
        };
        Ok(match fid {
            FeatureId::ARBITRATION => features.arbitration,
            FeatureId::POWER_MANAGEMENT => features.power_management,
            FeatureId::TEMPERATURE_THRESHOLD => features.temperature_threshold,
            FeatureId::VOLATILE_WRITE_CACHE => features.volatile_write_cache,
            FeatureId::NUMBER_OF_QUEUES => {
                let (sqs, cqs) = if select == 0 {
                    (self.granted_sqs, self.granted_cqs)
                } else {
                    (self.shared.options.queues, self.shared.options.queues)
                };
                (u32::from(cqs - 1) << 16) | u32::from(sqs - 1)
            }
            FeatureId::INTERRUPT_COALESCING => features.interrupt_coalescing,
            FeatureId::INTERRUPT_VECTOR_CONFIG => {
                let vector = sqe.cdw11 & 0xFFFF;
                if vector >= u32::from(self.shared.options.vectors) {
                    return Err(invalid_field());
                }
                vector
            }
            FeatureId::ASYNC_EVENT_CONFIG => features.async_event_config,
            _ => features.error_recovery,
        })
    }

    fn get_log_page(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> CmdResult {
        let lid = sqe.cdw10 as u8;
        let numd = ((u64::from(sqe.cdw11 & 0xFFFF) << 16) | u64::from(sqe.cdw10 >> 16)) + 1;
        let offset = (u64::from(sqe.cdw13) << 32) | u64::from(sqe.cdw12);
        let len = numd * 4;
        if offset % 4 != 0 {
            return Err(invalid_field());
        }
        let log: Vec<u8> = match lid {
            // Error Information: ELPE + 1 = 1 entry of 64 bytes, no errors.
            0x01 => vec![0; 64],
            0x02 => self.smart_log(),
            0x03 => {
                let mut log = vec![0u8; 512];
                log[0] = 1; // active firmware slot 1
                let version = env!("CARGO_PKG_VERSION").as_bytes();
                let n = version.len().min(8);
                log[8..16].fill(b' ');
                log[8..8 + n].copy_from_slice(&version[..n]);
                log
            }
            // Changed Namespace List: namespace 1 (the simulator raises
            // the event without changing anything).
            0x04 => {
                let mut log = vec![0u8; 4096];
                log[..4].copy_from_slice(&1u32.to_le_bytes());
                log
            }
            _ => return Err(specific(CommandSpecificStatus::InvalidLogPage)),
        };
        if offset > log.len() as u64 {
            return Err(invalid_field());
        }
        let len = usize::try_from(len).map_err(|_| invalid_field())?;
        if self.shared.options.mdts != 0 && len > (4096usize << self.shared.options.mdts) {
            return Err(invalid_field());
        }
        // Only the log's bytes are transferred; the rest of the host buffer
        // is left alone.
        let data = &log[offset as usize..];
        let transfer = len.min(data.len());
        if transfer == 0 {
            return Ok(0);
        }
        self.send(mem, sqe, &data[..transfer], transfer)
    }

    fn smart_log(&self) -> Vec<u8> {
        let stats = &self.shared.stats;
        let mut log = vec![0u8; 512];
        // Composite temperature 308 K (35 °C).
        log[1..3].copy_from_slice(&308u16.to_le_bytes());
        log[3] = 100; // available spare %
        log[4] = 10; // available spare threshold %
                     // Data units are thousands of 512-byte units, rounded up.
        let units = |bytes: u64| u128::from(bytes.div_ceil(512 * 1000));
        log[32..48].copy_from_slice(&units(stats.bytes_read()).to_le_bytes());
        log[48..64].copy_from_slice(&units(stats.bytes_written()).to_le_bytes());
        let reads = u128::from(stats.io_commands(0x02));
        let writes = u128::from(stats.io_commands(0x01));
        log[64..80].copy_from_slice(&reads.to_le_bytes());
        log[80..96].copy_from_slice(&writes.to_le_bytes());
        log
    }
}
