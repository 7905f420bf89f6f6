//! Controller bring-up, admin commands and teardown.
//!
//! Bring-up follows the NVMe initialisation sequence: disable and wait for
//! CSTS.RDY=0 within CAP.TO, program the admin queue (AQA/ASQ/ACQ), enable
//! with the queue entry sizes, page size and command set, wait for
//! CSTS.RDY=1, then Identify and Set Features (Number of Queues).
//! Shutdown notifies the controller (CC.SHN), waits for CSTS.SHST and
//! disables it; deleting I/O queues first is the owner's job
//! (`Runtime::close` does it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zerocopy::FromBytes;

use crate::dma::{DmaBuffer, DmaPool, PAGE_SIZE};
use crate::error::{DeviceError, Error, Result};
use crate::events::AsyncEvent;
use crate::mmio::Mmio;
use crate::nvme::command::{num_queues_from_dw0, IdentifyCns, QueuePriority, SubmissionEntry};
use crate::nvme::completion::CompletionEntry;
use crate::nvme::identify::{ActiveNamespaceList, IdentifyController, IdentifyNamespace};
use crate::nvme::regs::{
    doorbell_offset, offset, Aqa, Cap, Cc, Csts, ShutdownNotification, ShutdownStatus, Version,
};
use crate::queue::{CompletionQueue, ShadowBuffers, SubmissionQueue};
use crate::transport::Transport;

/// Largest command isonvme issues when the controller sets no MDTS limit.
pub const UNLIMITED_TRANSFER_CAP: usize = 8 << 20;

/// How a controller is opened.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Admin queue depth (clamped to what the controller supports).
    pub admin_depth: u32,
    /// I/O queue pairs to ask for in Set Features (Number of Queues); the
    /// controller may grant fewer, or more.
    pub io_queues: u16,
    /// How long a command may take before it is considered lost.
    pub command_timeout: Duration,
    /// Use shadow doorbells (Doorbell Buffer Config) where the controller
    /// supports them: doorbell values go to memory and a register is
    /// written only when the controller's EventIdx asks, which saves a
    /// hypervisor exit per doorbell on virtualised NVMe.
    pub shadow_doorbells: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            admin_depth: 32,
            io_queues: 64,
            command_timeout: Duration::from_secs(30),
            shadow_doorbells: true,
        }
    }
}

/// An active namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Namespace identifier (1-based).
    pub id: u32,
    /// Size in logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
}

impl Namespace {
    /// Size in bytes.
    pub fn bytes(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}

/// What bring-up learned about the controller.
#[derive(Debug, Clone)]
pub struct ControllerInfo {
    /// The transport's name (`sim` or a PCI address).
    pub name: String,
    /// NVMe version (VS register).
    pub version: Version,
    /// Capabilities (CAP register).
    pub cap: Cap,
    /// Identify Controller data.
    pub identify: Box<IdentifyController>,
    /// Active namespaces.
    pub namespaces: Vec<Namespace>,
    /// Largest transfer one command may carry (MDTS), in bytes.
    pub max_transfer: usize,
    /// I/O submission queues granted by Set Features.
    pub granted_sqs: u16,
    /// I/O completion queues granted by Set Features.
    pub granted_cqs: u16,
    /// Interrupt vectors the device has (MSI-X table size).
    pub max_vectors: u16,
    /// Largest queue depth (CAP.MQES + 1).
    pub max_queue_depth: u32,
    /// Whether doorbells go through the shadow doorbell buffer (the
    /// controller supports Doorbell Buffer Config and it was not switched
    /// off in [`ControllerOptions::shadow_doorbells`]).
    pub shadow_doorbells: bool,
}

struct AdminQueue {
    sq: SubmissionQueue,
    cq: CompletionQueue,
    next_cid: u16,
    /// One page for Identify data and other admin payloads.
    scratch: DmaBuffer,
    /// Per Asynchronous Event Request slot (command id
    /// `AER_CID_BASE + slot`): whether it is outstanding.
    aer_armed: Vec<bool>,
    /// Dword 0 of AERs that completed, waiting for `service_events`.
    aer_done: Vec<u32>,
    /// The controller refused an AER: stop sending them.
    aer_refused: bool,
}

/// Command ids of Asynchronous Event Requests, above any id the admin
/// queue's own commands use (they cycle below its depth, at most 4096).
const AER_CID_BASE: u16 = 0xFFF0;

/// Asynchronous Event Requests kept outstanding (at most AERL + 1).
const MAX_AERS: usize = 4;

impl AdminQueue {
    /// Takes an AER's completion; `false` when `entry` is not one.
    fn take_aer(&mut self, entry: &CompletionEntry) -> bool {
        let Some(slot) = entry
            .cid
            .checked_sub(AER_CID_BASE)
            .map(usize::from)
            .filter(|&slot| slot < self.aer_armed.len() && self.aer_armed[slot])
        else {
            return false;
        };
        self.aer_armed[slot] = false;
        match entry.result() {
            Ok(()) => self.aer_done.push(entry.dw0),
            Err(status) => {
                // Aborted by a reset or shutdown: armed again after it.
                // Anything else (Asynchronous Event Request Limit
                // Exceeded): stop asking.
                if !matches!(
                    status.code,
                    crate::nvme::StatusCode::Generic(
                        crate::nvme::GenericStatus::AbortedSqDeletion
                            | crate::nvme::GenericStatus::AbortRequested
                    )
                ) {
                    tracing::warn!(%status, "the controller refused an Asynchronous Event Request; events will not be reported");
                    self.aer_refused = true;
                }
            }
        }
        true
    }
}

/// Register access plus the knowledge needed to stop the controller, shared
/// with I/O queues so a lost command can halt DMA before its buffer is
/// reused.
pub(crate) struct Registers {
    pub mmio: Mmio,
    pub cap: Cap,
    /// Set when the controller was stopped (a lost command) or shut down:
    /// queues must not submit any more.
    pub failed: AtomicBool,
    /// Why `failed` is set.
    pub stopped_because: Mutex<&'static str>,
}

impl Registers {
    pub(crate) fn csts(&self) -> Csts {
        Csts(self.mmio.read32(offset::CSTS))
    }

    /// Disables the controller (stops all DMA), waiting up to CAP.TO.
    pub fn disable(&self) -> Result<()> {
        let cc = Cc(self.mmio.read32(offset::CC));
        if cc.en() {
            self.mmio.write32(offset::CC, cc.with_en(false).0);
        }
        self.wait(|csts| !csts.rdy(), "did not become disabled (CSTS.RDY=0)")
    }

    fn wait(&self, done: impl Fn(Csts) -> bool, what: &'static str) -> Result<()> {
        let timeout = self.cap.ready_timeout().max(Duration::from_millis(500));
        let start = Instant::now();
        loop {
            let csts = self.csts();
            // All-ones means the device fell off the bus (surprise removal,
            // a dead link): no state change will ever show, so say so now
            // instead of waiting out CAP.TO, as the kernel's driver does.
            if csts.0 == u32::MAX {
                return Err(Error::DeviceRemoved);
            }
            if done(csts) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::Timeout {
                    what,
                    waited: timeout,
                    hint: " (CAP.TO); check the device is healthy and not held by another driver",
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Stops the controller after a lost command so no DMA can land in a
    /// buffer that is about to be reused.
    pub fn fail(&self) {
        self.stop("an earlier command timed out and the controller was stopped");
        let _ = self.disable();
    }

    /// Marks the controller unusable for `reason`.
    pub fn stop(&self, reason: &'static str) {
        *self
            .stopped_because
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = reason;
        self.failed.store(true, Ordering::SeqCst);
    }

    pub fn check(&self) -> Result<()> {
        if self.failed.load(Ordering::SeqCst) {
            return Err(Error::Unusable(
                *self
                    .stopped_because
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()),
            ));
        }
        let csts = self.csts();
        if csts.0 == u32::MAX {
            return Err(Error::DeviceRemoved);
        }
        if csts.cfs() {
            return Err(Error::ControllerFatal);
        }
        Ok(())
    }
}

/// An NVMe controller, brought up and ready to create I/O queues.
pub struct Controller {
    transport: Arc<dyn Transport>,
    regs: Arc<Registers>,
    pool: DmaPool,
    admin: Mutex<AdminQueue>,
    info: ControllerInfo,
    options: ControllerOptions,
    stride: usize,
    closed: AtomicBool,
    shadow: Option<Arc<ShadowBuffers>>,
    /// Asynchronous events reported and not yet taken.
    events: Mutex<Vec<AsyncEvent>>,
}

impl Controller {
    /// Resets and brings up the controller behind `transport`.
    pub fn open(transport: Arc<dyn Transport>, options: ControllerOptions) -> Result<Controller> {
        let mmio = transport.registers();
        if !mmio.contains(offset::ACQ + 4) {
            return Err(DeviceError::Unsupported(format!(
                "BAR0 is only {} bytes, too small for the NVMe registers",
                mmio.len()
            ))
            .into());
        }
        let cap = Cap(mmio.read64(offset::CAP));
        if cap.0 == u64::MAX {
            return Err(DeviceError::Unsupported(
                "CAP reads as all ones: the device is not responding (check it is bound to vfio-pci and powered)".into(),
            )
            .into());
        }
        if cap.css() & Cap::CSS_NVM == 0 {
            return Err(DeviceError::Unsupported(
                "the controller does not support the NVM command set".into(),
            )
            .into());
        }
        if cap.min_page_size() > PAGE_SIZE || cap.max_page_size() < PAGE_SIZE {
            return Err(DeviceError::Unsupported(format!(
                "the controller does not support {PAGE_SIZE}-byte memory pages (CAP.MPSMIN/MPSMAX)"
            ))
            .into());
        }
        let version = Version(mmio.read32(offset::VS));
        let stride = cap.doorbell_stride_bytes();
        let regs = Arc::new(Registers {
            mmio: mmio.clone(),
            cap,
            failed: AtomicBool::new(false),
            stopped_because: Mutex::new(""),
        });
        regs.disable()?;

        let pool = DmaPool::new(transport.clone());
        let max_queue_depth = cap.max_queue_entries();
        let admin_depth = options.admin_depth.clamp(2, max_queue_depth.min(4096));
        check_doorbell(&mmio, 0, stride)?;
        let sq = SubmissionQueue::new(
            0,
            admin_depth,
            &pool,
            mmio.clone(),
            doorbell_offset(0, false, stride),
        )?;
        let cq = CompletionQueue::new(
            0,
            admin_depth,
            &pool,
            mmio.clone(),
            doorbell_offset(0, true, stride),
        )?;
        let zero_based = (admin_depth - 1) as u16;
        mmio.write32(offset::AQA, Aqa::new(zero_based, zero_based).0);
        mmio.write64(offset::ASQ, sq.iova());
        mmio.write64(offset::ACQ, cq.iova());
        mmio.write32(offset::CC, enabled_cc().0);
        regs.wait(
            |csts| csts.rdy() || csts.cfs(),
            "did not become ready (CSTS.RDY=1)",
        )?;
        if regs.csts().cfs() {
            return Err(Error::ControllerFatal);
        }

        let admin = AdminQueue {
            sq,
            cq,
            next_cid: 0,
            scratch: pool.alloc(PAGE_SIZE)?,
            aer_armed: Vec::new(),
            aer_done: Vec::new(),
            aer_refused: false,
        };
        let placeholder = ControllerInfo {
            name: transport.name().to_string(),
            version,
            cap,
            identify: Box::new(IdentifyController::new_zeroed()),
            namespaces: Vec::new(),
            max_transfer: 0,
            granted_sqs: 0,
            granted_cqs: 0,
            max_vectors: transport.max_vectors(),
            max_queue_depth,
            shadow_doorbells: false,
        };
        let mut controller = Controller {
            transport,
            regs,
            pool,
            admin: Mutex::new(admin),
            info: placeholder,
            options,
            stride,
            closed: AtomicBool::new(false),
            shadow: None,
            events: Mutex::new(Vec::new()),
        };
        controller.identify()?;
        if controller.options.shadow_doorbells
            && controller.info.identify.oacs & IdentifyController::OACS_DOORBELL_BUFFER_CONFIG != 0
        {
            controller.configure_shadow_doorbells();
        }
        let aers = (usize::from(controller.info.identify.aerl) + 1).min(MAX_AERS);
        controller.admin().aer_armed = vec![false; aers];
        controller.arm_async_events();
        Ok(controller)
    }

    /// Sends an Asynchronous Event Request for every slot that has none
    /// outstanding (they complete only when an event happens).
    fn arm_async_events(&self) {
        let mut admin = self.admin();
        if admin.aer_refused {
            return;
        }
        let mut sent = false;
        for slot in 0..admin.aer_armed.len() {
            if admin.aer_armed[slot] {
                continue;
            }
            let mut request = SubmissionEntry::async_event_request();
            request.set_cid(AER_CID_BASE + slot as u16);
            if admin.sq.push(&request).is_err() {
                break;
            }
            admin.aer_armed[slot] = true;
            sent = true;
        }
        if sent {
            admin.sq.ring_doorbell();
        }
    }

    /// Looks for completed Asynchronous Event Requests: reads the log page
    /// each names (clearing the event at the controller), records the
    /// event for [`Controller::take_events`] and sends a new request.
    /// Returns how many events were recorded. The isolation runtime calls
    /// this from its watchdog; without the runtime, call it now and then.
    pub fn service_events(&self) -> Result<usize> {
        self.regs.check()?;
        let raw = {
            let mut admin = self.admin();
            let mut consumed = false;
            while let Some(entry) = admin.cq.pop() {
                consumed = true;
                let _ = admin.sq.update_head(entry.sq_head);
                if !admin.take_aer(&entry) {
                    tracing::warn!(
                        cid = entry.cid,
                        "admin completion for no outstanding command ignored"
                    );
                }
            }
            if consumed {
                admin.cq.ring_doorbell();
            }
            std::mem::take(&mut admin.aer_done)
        };
        if raw.is_empty() {
            return Ok(0);
        }
        let scratch = self.admin().scratch.iova();
        for &dw0 in &raw {
            let event = AsyncEvent::from_dw0(dw0);
            // Reading the log (RAE clear) is what re-enables this event
            // type at the controller.
            if let Err(error) = self.admin_command(
                "Get Log Page (asynchronous event)",
                SubmissionEntry::get_log_page(event.log_page, 128, false, scratch),
            ) {
                tracing::warn!(%event, %error, "reading the log page of an asynchronous event failed");
            }
            tracing::warn!(%event, "asynchronous event");
            self.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(event);
        }
        self.arm_async_events();
        Ok(raw.len())
    }

    /// The asynchronous events reported since the last call, oldest first.
    pub fn take_events(&self) -> Vec<AsyncEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn identify(&mut self) -> Result<()> {
        let scratch_iova = self.admin().scratch.iova();
        self.admin_command(
            "Identify Controller",
            SubmissionEntry::identify(IdentifyCns::CONTROLLER, 0, scratch_iova),
        )?;
        let identify = {
            let admin = self.admin();
            IdentifyController::read_from_bytes(&admin.scratch.as_slice()[..4096])
                .map_err(|_| Error::InvalidArgument("identify data has the wrong size".into()))?
        };
        let max_transfer = identify
            .max_transfer_bytes(PAGE_SIZE)
            .unwrap_or(usize::MAX)
            // Without a controller limit, commands still stay a size whose
            // PRP lists (a handful of chained pages) are cheap to build.
            .min(UNLIMITED_TRANSFER_CAP);
        self.admin_command(
            "Identify active namespace list",
            SubmissionEntry::identify(IdentifyCns::ACTIVE_NAMESPACE_LIST, 0, scratch_iova),
        )?;
        let ids: Vec<u32> = {
            let admin = self.admin();
            ActiveNamespaceList::read_from_bytes(&admin.scratch.as_slice()[..4096])
                .map(|list| list.iter().collect())
                .unwrap_or_default()
        };
        let mut namespaces = Vec::new();
        for id in ids {
            self.admin_command(
                "Identify Namespace",
                SubmissionEntry::identify(IdentifyCns::NAMESPACE, id, scratch_iova),
            )?;
            let admin = self.admin();
            if let Ok(ns) = IdentifyNamespace::read_from_bytes(&admin.scratch.as_slice()[..4096]) {
                if ns.size_in_blocks() > 0 && ns.lba_size() <= u64::from(u32::MAX) {
                    namespaces.push(Namespace {
                        id,
                        blocks: ns.size_in_blocks(),
                        block_size: u32::try_from(ns.lba_size()).unwrap_or(0),
                    });
                }
            }
        }
        let (sqs, cqs) = self.ask_queue_count()?;
        *self.info.identify = identify;
        self.info.max_transfer = max_transfer;
        self.info.namespaces = namespaces;
        // Queue ids are 16-bit and queue 0 is the admin queue.
        self.info.granted_sqs = sqs.min(65535) as u16;
        self.info.granted_cqs = cqs.min(65535) as u16;
        Ok(())
    }

    /// Doorbell Buffer Config. A controller that refuses it keeps working
    /// with register doorbells, said once.
    fn configure_shadow_doorbells(&mut self) {
        let max_qid = self.info.granted_sqs.max(self.info.granted_cqs);
        let buffers = match ShadowBuffers::new(&self.pool, max_qid, self.stride) {
            Ok(buffers) => Arc::new(buffers),
            Err(error) => {
                tracing::warn!(%error, "no memory for shadow doorbells; using register doorbells");
                return;
            }
        };
        let (doorbells, event_indexes) = buffers.iovas();
        if let Err(error) = self.admin_command(
            "Doorbell Buffer Config",
            SubmissionEntry::doorbell_buffer_config(doorbells, event_indexes),
        ) {
            tracing::warn!(%error, "the controller refused shadow doorbells; using register doorbells");
            return;
        }
        // The admin queue writes its shadow and its registers: controllers
        // differ in which of the two they read for queue 0.
        let mut admin = self.admin();
        if let (Some(sq), Some(cq)) = (buffers.slot(0, false, true), buffers.slot(0, true, true)) {
            let (tail, head) = (admin.sq.published(), admin.cq.published());
            sq.seed(tail);
            cq.seed(head);
            admin.sq.use_shadow(sq);
            admin.cq.use_shadow(cq);
        }
        drop(admin);
        self.shadow = Some(buffers);
        self.info.shadow_doorbells = true;
    }

    fn admin(&self) -> std::sync::MutexGuard<'_, AdminQueue> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Submits an admin command and waits for its completion (the admin
    /// queue is polled; it has no interrupt). `what` names it in errors.
    pub fn admin_command(
        &self,
        what: &'static str,
        command: SubmissionEntry,
    ) -> Result<CompletionEntry> {
        self.admin_command_within(what, command, None)
    }

    /// An admin command the recovery watchdog sends (Abort, queue
    /// re-creation): after `bound` it gives up with `Timeout` without
    /// stopping the controller, whose reset comes next.
    pub(crate) fn admin_command_bounded(
        &self,
        what: &'static str,
        command: SubmissionEntry,
        bound: Duration,
    ) -> Result<CompletionEntry> {
        self.admin_command_within(what, command, Some(bound))
    }

    fn admin_command_within(
        &self,
        what: &'static str,
        mut command: SubmissionEntry,
        bound: Option<Duration>,
    ) -> Result<CompletionEntry> {
        self.regs.check()?;
        let mut admin = self.admin();
        let cid = admin.next_cid;
        admin.next_cid = admin.next_cid.wrapping_add(1) % admin.sq.depth() as u16;
        command.set_cid(cid);
        admin.sq.push(&command).map_err(|_| Error::QueueFull)?;
        admin.sq.ring_doorbell();
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            if let Some(entry) = admin.cq.pop() {
                admin.cq.ring_doorbell();
                if entry.sq_id == 0 && entry.cid != cid && admin.take_aer(&entry) {
                    // An event arrived while this command waits.
                    let _ = admin.sq.update_head(entry.sq_head);
                    continue;
                }
                if entry.sq_id != 0 {
                    tracing::warn!(sq = entry.sq_id, "admin completion names a non-admin SQ");
                    return Err(DeviceError::WrongSubmissionQueue {
                        cq: 0,
                        reported: entry.sq_id,
                    }
                    .into());
                }
                admin
                    .sq
                    .update_head(entry.sq_head)
                    .map_err(DeviceError::from)?;
                if entry.cid != cid {
                    tracing::warn!(
                        cid = entry.cid,
                        expected = cid,
                        "admin completion for an unknown command"
                    );
                    return Err(DeviceError::UnknownCommandId {
                        queue: 0,
                        cid: entry.cid,
                    }
                    .into());
                }
                return match entry.result() {
                    Ok(()) => Ok(entry),
                    Err(status) => Err(Error::Command {
                        command: what,
                        status,
                    }),
                };
            }
            spins += 1;
            if spins.is_multiple_of(64) {
                self.regs.check()?;
                if let Some(bound) = bound.filter(|&bound| start.elapsed() > bound) {
                    return Err(Error::Timeout {
                        what: "did not complete an admin command",
                        waited: bound,
                        hint: "; a controller reset follows",
                    });
                }
                if start.elapsed() > self.options.command_timeout {
                    drop(admin);
                    self.regs.fail();
                    return Err(Error::Timeout {
                        what: "did not complete an admin command",
                        waited: self.options.command_timeout,
                        hint: "; the controller was disabled to stop its DMA",
                    });
                }
                std::thread::sleep(Duration::from_micros(20));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// What bring-up learned.
    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    /// The active namespace `id`.
    pub fn namespace(&self, id: u32) -> Result<&Namespace> {
        self.info
            .namespaces
            .iter()
            .find(|ns| ns.id == id)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "namespace {id} is not active on {} (active: {:?})",
                    self.info.name,
                    self.info
                        .namespaces
                        .iter()
                        .map(|ns| ns.id)
                        .collect::<Vec<_>>()
                ))
            })
    }

    /// The DMA pool buffers come from.
    pub fn pool(&self) -> &DmaPool {
        &self.pool
    }

    /// The back-end.
    pub fn transport(&self) -> &Arc<dyn Transport> {
        &self.transport
    }

    pub(crate) fn registers(&self) -> &Arc<Registers> {
        &self.regs
    }

    /// How long an I/O command may take before it is considered lost.
    pub fn command_timeout(&self) -> Duration {
        self.options.command_timeout
    }

    /// Creates I/O completion queue `qid` with `depth` entries, signalling
    /// MSI-X `vector` when given (polled otherwise).
    pub fn create_io_cq(
        &self,
        qid: u16,
        depth: u32,
        vector: Option<u16>,
    ) -> Result<CompletionQueue> {
        self.check_queue_id(qid, self.info.granted_cqs, "completion")?;
        let depth = self.check_depth(depth)?;
        check_doorbell(&self.regs.mmio, qid, self.stride)?;
        let mut cq = CompletionQueue::new(
            qid,
            depth,
            &self.pool,
            self.regs.mmio.clone(),
            doorbell_offset(qid, true, self.stride),
        )?;
        // The slot is zeroed before the queue exists, as a new queue's
        // doorbell is.
        if let Some(slot) = self.shadow.as_ref().and_then(|s| s.slot(qid, true, false)) {
            cq.use_shadow(slot);
        }
        self.announce_io_cq(qid, depth, cq.iova(), vector, None)?;
        Ok(cq)
    }

    /// Sends Create I/O Completion Queue for a ring that already exists on
    /// the host (bring-up, and again after a controller reset, where
    /// `bound` limits the wait without stopping the controller).
    pub(crate) fn announce_io_cq(
        &self,
        qid: u16,
        depth: u32,
        iova: u64,
        vector: Option<u16>,
        bound: Option<Duration>,
    ) -> Result<()> {
        self.admin_command_within(
            "Create I/O Completion Queue",
            SubmissionEntry::create_io_cq(qid, depth, iova, vector.unwrap_or(0), vector.is_some()),
            bound,
        )
        .map(drop)
    }

    /// Creates I/O submission queue `qid` with `depth` entries, completing
    /// to completion queue `cq_id`.
    pub fn create_io_sq(&self, qid: u16, depth: u32, cq_id: u16) -> Result<SubmissionQueue> {
        self.check_queue_id(qid, self.info.granted_sqs, "submission")?;
        let depth = self.check_depth(depth)?;
        check_doorbell(&self.regs.mmio, qid, self.stride)?;
        let mut sq = SubmissionQueue::new(
            qid,
            depth,
            &self.pool,
            self.regs.mmio.clone(),
            doorbell_offset(qid, false, self.stride),
        )?;
        if let Some(slot) = self.shadow.as_ref().and_then(|s| s.slot(qid, false, false)) {
            sq.use_shadow(slot);
        }
        self.announce_io_sq(qid, depth, sq.iova(), cq_id, None)?;
        Ok(sq)
    }

    /// Sends Create I/O Submission Queue for a ring that already exists on
    /// the host (bring-up, and again after a controller reset).
    pub(crate) fn announce_io_sq(
        &self,
        qid: u16,
        depth: u32,
        iova: u64,
        cq_id: u16,
        bound: Option<Duration>,
    ) -> Result<()> {
        self.admin_command_within(
            "Create I/O Submission Queue",
            SubmissionEntry::create_io_sq(qid, depth, iova, cq_id, QueuePriority::Medium),
            bound,
        )
        .map(drop)
    }

    /// Set Features (Number of Queues) with the count the options ask for;
    /// returns the SQs and CQs granted.
    fn ask_queue_count(&self) -> Result<(u32, u32)> {
        let wanted = u32::from(self.options.io_queues.max(1));
        let completion = self.admin_command(
            "Set Features (Number of Queues)",
            SubmissionEntry::set_features_num_queues(wanted, wanted),
        )?;
        Ok(num_queues_from_dw0(completion.dw0))
    }

    /// Controller reset, the second half (the kernel's `nvme_reset_work`):
    /// with the controller already disabled (CC.EN=0, CSTS.RDY=0), start the
    /// admin queue over in the same memory, enable, and configure what
    /// bring-up configured (queue count, shadow doorbells). I/O queues are
    /// created again by their owners' code. Fails with the reason when the
    /// controller does not come back (CAP.TO, fatal status, all-ones).
    pub(crate) fn reinitialize(&self) -> Result<()> {
        let mmio = &self.regs.mmio;
        let mut admin = self.admin();
        // What the controller posted before it stopped (it no longer
        // writes): an asynchronous event among it was handed out and is
        // reported after the reset, as the kernel's nvme_dev_disable reaps
        // pending admin completions. Anything else had no waiter left.
        while let Some(entry) = admin.cq.pop() {
            admin.take_aer(&entry);
        }
        admin.sq.reset();
        admin.cq.reset();
        admin.next_cid = 0;
        // The reset dropped every outstanding request.
        admin.aer_armed.fill(false);
        if let Some(shadow) = &self.shadow {
            shadow.clear();
        }
        let zero_based = (admin.sq.depth() - 1) as u16;
        mmio.write32(offset::AQA, Aqa::new(zero_based, zero_based).0);
        mmio.write64(offset::ASQ, admin.sq.iova());
        mmio.write64(offset::ACQ, admin.cq.iova());
        drop(admin);
        mmio.write32(offset::CC, enabled_cc().0);
        self.regs.wait(
            |csts| csts.rdy() || csts.cfs(),
            "did not become ready again after a reset (CSTS.RDY=1)",
        )?;
        if self.regs.csts().cfs() {
            return Err(Error::ControllerFatal);
        }
        let (sqs, cqs) = self.ask_queue_count()?;
        if sqs < u32::from(self.info.granted_sqs) || cqs < u32::from(self.info.granted_cqs) {
            return Err(DeviceError::Unsupported(format!(
                "after a reset the controller grants {sqs} SQs and {cqs} CQs, fewer than the {} and {} the queues were built for",
                self.info.granted_sqs, self.info.granted_cqs
            ))
            .into());
        }
        if let Some(shadow) = &self.shadow {
            let (doorbells, event_indexes) = shadow.iovas();
            self.admin_command(
                "Doorbell Buffer Config",
                SubmissionEntry::doorbell_buffer_config(doorbells, event_indexes),
            )?;
        }
        self.arm_async_events();
        Ok(())
    }

    /// Deletes I/O submission queue `qid`.
    pub fn delete_io_sq(&self, qid: u16) -> Result<()> {
        self.admin_command(
            "Delete I/O Submission Queue",
            SubmissionEntry::delete_io_sq(qid),
        )
        .map(drop)
    }

    /// Deletes I/O completion queue `qid` (its SQs must be deleted first).
    pub fn delete_io_cq(&self, qid: u16) -> Result<()> {
        self.admin_command(
            "Delete I/O Completion Queue",
            SubmissionEntry::delete_io_cq(qid),
        )
        .map(drop)
    }

    fn check_queue_id(&self, qid: u16, granted: u16, kind: &str) -> Result<()> {
        if qid == 0 || qid > granted {
            return Err(Error::InvalidArgument(format!(
                "I/O {kind} queue id {qid} is outside the 1..={granted} the controller granted"
            )));
        }
        Ok(())
    }

    fn check_depth(&self, depth: u32) -> Result<u32> {
        // A ring lives in one DMA chunk: 2 MiB holds 32768 SQ entries.
        let limit = self
            .info
            .max_queue_depth
            .min((crate::dma::CHUNK_SIZE / crate::queue::SQ_ENTRY_SIZE) as u32);
        if depth < 2 || depth > limit {
            return Err(Error::InvalidArgument(format!(
                "queue depth {depth} is outside 2..={limit} (CAP.MQES + 1 = {}, and a ring must fit one {} KiB DMA chunk)",
                self.info.max_queue_depth,
                crate::dma::CHUNK_SIZE / 1024
            )));
        }
        Ok(depth)
    }

    /// Orderly shutdown: CC.SHN normal, wait for CSTS.SHST complete, then
    /// disable. Called by `Drop` when not called explicitly.
    pub fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let mmio = &self.regs.mmio;
        let cc = Cc(mmio.read32(offset::CC));
        let was_running = !self.regs.failed.load(Ordering::SeqCst);
        // Queues still around fail fast instead of waiting out a timeout.
        self.regs.stop("the controller was shut down");
        if cc.en() && was_running {
            mmio.write32(offset::CC, cc.with_shn(ShutdownNotification::Normal).0);
            let result = self.regs.wait(
                |csts| csts.shst() == Some(ShutdownStatus::Complete),
                "did not complete its shutdown (CSTS.SHST)",
            );
            if let Err(error) = result {
                tracing::warn!(%error, "shutdown notification not acknowledged; disabling anyway");
            }
        }
        self.regs.disable()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "controller shutdown failed");
        }
    }
}

/// The controller configuration isonvme runs with, enable bit set.
fn enabled_cc() -> Cc {
    Cc::new()
        .with_css(Cc::CSS_NVM)
        .with_mps(0) // 2^(12+0) = 4 KiB pages
        .with_ams(0) // round robin
        .with_iosqes(6) // 64-byte SQ entries
        .with_iocqes(4) // 16-byte CQ entries
        .with_en(true)
}

fn check_doorbell(mmio: &Mmio, qid: u16, stride: usize) -> Result<()> {
    let completion = doorbell_offset(qid, true, stride);
    if !mmio.contains(completion) {
        return Err(DeviceError::Unsupported(format!(
            "the doorbells of queue {qid} (offset {completion:#x}) lie outside the {}-byte BAR0",
            mmio.len()
        ))
        .into());
    }
    Ok(())
}
