//! The built-in simulated NVMe controller.
//!
//! A faithful NVMe 1.4 controller model running in-process on its own
//! device thread. The driver reaches it only through the [`Transport`]
//! seam — a register window, DMA memory with IOVAs, and one eventfd per
//! interrupt vector — so the code the simulator exercises is exactly the
//! code that drives real hardware:
//!
//! * **Registers.** BAR0 is a page-aligned anonymous mapping (registers at
//!   0..0x1000, doorbells after it with the CAP.DSTRD stride). The device
//!   thread polls it like hardware: CC.EN/CSTS.RDY handshake, CC.SHN →
//!   CSTS.SHST, SQ tail and CQ head doorbells (invalid values are ignored
//!   with a warning). An idle device thread spins briefly after activity
//!   ([`SimOptions::spin`]) and then sleeps with a growing back-off up to
//!   [`SimOptions::idle`].
//! * **DMA.** [`DmaMapper::map_dma`] hands out anonymous memory at IOVAs
//!   from [`IOVA_BASE`] up (never equal to host addresses); the device
//!   reaches guest memory only through that map, and any address outside
//!   it fails the command with Data Transfer Error, like an IOMMU fault.
//! * **Interrupts.** [`Transport::enable_vectors`] creates one eventfd per
//!   vector; the device thread writes a CQ's vector once per pass in which
//!   it posted to that CQ (if the CQ has interrupts enabled).
//! * **Commands.** Admin: Identify (namespace, controller, active
//!   namespace list, namespace descriptors), Set/Get Features, Create and
//!   Delete I/O SQ/CQ, Get Log Page, Abort, Asynchronous Event Request.
//!   I/O: Read, Write, Flush, Write Zeroes, Dataset Management. Every
//!   invalid field gets the status code a controller posts for it.
//! * **Storage.** Namespaces live in RAM (kept across controller resets)
//!   or, for namespace 1, in a file (kept across restarts).
//! * **Latency and faults.** A per-operation latency and IOPS model, and
//!   [`Faults`] to fail, delay or drop chosen commands, post bogus
//!   completions, or put the controller in fatal status.
//!
//! ```no_run
//! use isonvme::sim::SimController;
//! use isonvme::transport::Transport;
//!
//! let sim = SimController::open("sim,size=64M,lba=512,latency=10us").unwrap();
//! let regs = sim.registers();
//! assert_eq!(regs.read32(0x08), 0x0001_0400); // VS = 1.4
//! ```

use crate::transport::AffinityOutcome;
use isonvme_mapping::CpuSet;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::MmapRegion;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::dma::DmaRegion;
use crate::mmio::Mmio;
use crate::transport::{DmaMapper, Transport, TransportError};

mod admin;
mod device;
mod fault_plan;
mod faults;
mod io;
mod iommu;
mod namespace;
mod options;
mod prp;
mod stats;
#[cfg(test)]
mod tests;

pub use admin::SIM_VENDOR_ID;
pub use fault_plan::{FaultPlan, IoFaultKind};
pub use faults::{FaultScope, Faults, SpuriousCompletion};
pub use iommu::IOVA_BASE;
pub use options::{LatencyModel, SimOptions};
pub use stats::SimStats;

use device::Device;
use iommu::IovaMap;
use namespace::Namespace;

/// Shortest idle sleep; doubles up to [`SimOptions::idle`].
const MIN_IDLE_SLEEP: Duration = Duration::from_micros(10);

/// A delayed completion due within this is waited for by spinning, since
/// sleeping overshoots by tens of microseconds.
const DUE_SPIN: Duration = Duration::from_micros(200);

/// Why a simulated controller could not be configured or created.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The device name is not a simulator name.
    #[error("{0:?} is not a simulator device name (expected `sim[,key=value...]`)")]
    NotSim(String),
    /// An option key the simulator does not know.
    #[error("unknown simulator option `{key}` (known options: {known})")]
    UnknownOption {
        /// The key as given.
        key: String,
        /// The keys the simulator accepts.
        known: &'static str,
    },
    /// A known option written without its value.
    #[error("simulator option `{key}` needs a value: write {key}=<value> (e.g. {example})")]
    MissingValue {
        /// The key as given.
        key: String,
        /// An example of the option with a value.
        example: &'static str,
    },
    /// An option with a value out of range or unparsable.
    #[error("invalid value {value:?} for simulator option `{key}`: expected {expected}")]
    InvalidOption {
        /// The option.
        key: &'static str,
        /// The value as given.
        value: String,
        /// What the option accepts.
        expected: &'static str,
    },
    /// A file operation failed (the backing file).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping memory (registers or a RAM namespace) failed.
    #[error("cannot map {what}: {reason}")]
    Memory {
        /// What was being mapped.
        what: String,
        /// Why it failed.
        reason: String,
    },
}

/// State shared by the controller handle and its device thread.
pub(crate) struct Shared {
    pub(crate) options: SimOptions,
    pub(crate) bar: Mmio,
    pub(crate) iommu: IovaMap,
    pub(crate) vectors: RwLock<Vec<Arc<EventFd>>>,
    pub(crate) faults: Faults,
    pub(crate) stats: SimStats,
    /// Where the host was told to deliver each vector (IRQ affinity).
    vector_affinity: std::sync::Mutex<std::collections::BTreeMap<u16, CpuSet>>,
    stop: AtomicBool,
    /// Signalled by [`SimController::request_removal`], as VFIO's device
    /// request is by a hot-unplug.
    removal: Arc<EventFd>,
    /// The device thread's id, once it runs (0 before).
    device_tid: std::sync::atomic::AtomicI32,
}

impl Shared {
    /// The shared state and a device model (without a thread) for `options`.
    pub(crate) fn build(options: SimOptions) -> Result<(Arc<Shared>, Device), SimError> {
        options.validate()?;
        let bar_len = (0x1000 + options.doorbell_bytes()).next_multiple_of(4096);
        let bar = Arc::new(
            MmapRegion::<()>::new(bar_len).map_err(|e| SimError::Memory {
                what: "the register page".to_owned(),
                reason: e.to_string(),
            })?,
        );
        let base = NonNull::new(bar.as_ptr()).ok_or_else(|| SimError::Memory {
            what: "the register page".to_owned(),
            reason: "null mapping".to_owned(),
        })?;
        // SAFETY: `base` is the start of `bar`, a fresh page-aligned
        // read/write anonymous mapping of `bar_len` bytes, owned by `bar`,
        // which the Mmio keeps alive. Nothing else ever touches the
        // mapping: the simulator's device thread and the driver both use it
        // only through Mmio's volatile aligned 32-bit accesses.
        let mmio = unsafe { Mmio::new(base, bar_len, bar) };
        let mut namespaces = Vec::with_capacity(options.namespaces as usize);
        for i in 0..options.namespaces {
            let ns = match (&options.file, i) {
                (Some(path), 0) => Namespace::file(path, options.size, options.lba_size)?,
                _ => Namespace::ram(options.size, options.lba_size)?,
            };
            namespaces.push(ns);
        }
        let shared = Arc::new(Shared {
            stats: SimStats::new(options.vectors),
            device_tid: std::sync::atomic::AtomicI32::new(0),
            removal: Arc::new(
                EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(|e| SimError::Io {
                    what: "creating the removal notice eventfd".to_owned(),
                    source: e,
                })?,
            ),
            bar: mmio.clone(),
            iommu: IovaMap::new(),
            vectors: RwLock::new(Vec::new()),
            faults: Faults::new(),
            vector_affinity: std::sync::Mutex::new(std::collections::BTreeMap::new()),
            stop: AtomicBool::new(false),
            options,
        });
        let device = Device::new(Arc::clone(&shared), mmio, namespaces);
        Ok((shared, device))
    }
}

/// A simulated NVMe controller: a [`Transport`] whose device is a thread
/// in this process.
///
/// Dropping it stops the device thread (flushing file-backed namespaces).
/// DMA regions and register windows handed out stay valid (they own their
/// mappings) but nothing processes commands any more.
pub struct SimController {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SimController {
    /// Asks the driver to give the device up, as the host does through
    /// VFIO's device request when the device is being hot-unplugged (the
    /// device itself keeps working until then).
    pub fn request_removal(&self) {
        let _ = self.shared.removal.write(1);
    }

    /// Creates the controller and starts its device thread. The controller
    /// starts disabled (CC.EN = 0), as after a power-on reset.
    pub fn new(options: SimOptions) -> Result<Arc<SimController>, SimError> {
        let (shared, device) = Shared::build(options)?;
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("isonvme-sim".to_owned())
            .spawn(move || run(device, thread_shared))
            .map_err(|e| SimError::Io {
                what: "starting the simulator's device thread".to_owned(),
                source: e,
            })?;
        Ok(Arc::new(SimController {
            shared,
            thread: Some(thread),
        }))
    }

    /// Parses a device name (`sim[,key=value...]`, see [`SimOptions`]) and
    /// creates the controller.
    pub fn open(name: &str) -> Result<Arc<SimController>, SimError> {
        SimController::new(name.parse()?)
    }

    /// Whether `name` selects the simulator (`sim` or `sim,...`).
    #[must_use]
    pub fn is_sim_name(name: &str) -> bool {
        name.split(',').next().map(str::trim) == Some("sim")
    }

    /// The options the controller was created with.
    #[must_use]
    pub fn options(&self) -> &SimOptions {
        &self.shared.options
    }

    /// The fault injection handle.
    #[must_use]
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Live counters: commands per opcode, interrupts per vector, ...
    #[must_use]
    pub fn stats(&self) -> &SimStats {
        &self.shared.stats
    }
}

impl DmaMapper for SimController {
    fn map_dma(&self, len: usize) -> Result<DmaRegion, TransportError> {
        self.shared.iommu.map(len)
    }
}

impl Transport for SimController {
    fn name(&self) -> &str {
        "sim"
    }

    fn registers(&self) -> Mmio {
        self.shared.bar.clone()
    }

    fn max_vectors(&self) -> u16 {
        self.shared.options.vectors
    }

    fn removal_notice(&self) -> Option<Arc<EventFd>> {
        Some(Arc::clone(&self.shared.removal))
    }

    fn helper_threads(&self) -> Vec<i32> {
        // The thread records its id first thing; wait the moment it takes.
        let start = Instant::now();
        loop {
            let tid = self.shared.device_tid.load(Ordering::Acquire);
            if tid != 0 || start.elapsed() > Duration::from_secs(1) {
                return (tid != 0).then_some(tid).into_iter().collect();
            }
            std::thread::yield_now();
        }
    }

    fn enable_vectors(&self, count: u16) -> Result<Vec<Arc<EventFd>>, TransportError> {
        if count > self.max_vectors() {
            return Err(TransportError::Vectors {
                count,
                reason: format!(
                    "the simulated controller's MSI-X table has {} vectors (option vectors=)",
                    self.max_vectors()
                ),
            });
        }
        let fds = (0..count)
            .map(|_| EventFd::new(EFD_NONBLOCK).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TransportError::Io {
                what: "creating an interrupt eventfd".to_owned(),
                source,
            })?;
        *self
            .shared
            .vectors
            .write()
            .unwrap_or_else(|e| e.into_inner()) = fds.clone();
        Ok(fds)
    }

    fn set_vector_affinity(
        &self,
        vector: u16,
        cpus: &CpuSet,
    ) -> Result<AffinityOutcome, TransportError> {
        if vector >= self.max_vectors() {
            return Err(TransportError::Vectors {
                count: vector + 1,
                reason: format!(
                    "vector {vector} is beyond the {}-entry MSI-X table",
                    self.max_vectors()
                ),
            });
        }
        self.shared
            .vector_affinity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(vector, cpus.clone());
        Ok(AffinityOutcome::Applied)
    }
}

impl SimController {
    /// The CPUs vector `vector` was last told to target (the simulator's
    /// record of IRQ affinity), if it was set.
    #[must_use]
    pub fn vector_affinity(&self, vector: u16) -> Option<CpuSet> {
        self.shared
            .vector_affinity
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&vector)
            .cloned()
    }
}

impl Drop for SimController {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            if thread.join().is_err() {
                tracing::error!("simulated controller: device thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for SimController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimController")
            .field("options", &self.shared.options.to_string())
            .finish_non_exhaustive()
    }
}

/// Empty polls of the spinning device thread between two offers of its
/// CPU: often enough that a host thread waiting for that CPU is not held
/// up for a time slice (on the 2-CPU machine: QD1 p99 78 µs → 8–16 µs),
/// rarely enough that the system calls cost a device thread with a CPU to
/// itself nothing measurable (`cargo bench --bench io`).
const SIM_YIELD_INTERVAL: u32 = 64;

/// The device thread: poll, spin for a while after activity, then sleep
/// with a growing back-off so an idle simulator costs next to nothing.
fn run(mut device: Device, shared: Arc<Shared>) {
    shared
        .device_tid
        .store(crate::os::current_thread_id(), Ordering::Release);
    let spin = shared.options.spin;
    let max_sleep = shared.options.idle;
    let mut last_activity = Instant::now();
    let mut backoff = MIN_IDLE_SLEEP.min(max_sleep);
    let mut spin_yield = crate::os::SpinYield::always(SIM_YIELD_INTERVAL);
    while !shared.stop.load(Ordering::Acquire) {
        let now = Instant::now();
        shared.stats.count_poll();
        if device.poll(now) {
            last_activity = now;
            backoff = MIN_IDLE_SLEEP.min(max_sleep);
            spin_yield.worked();
            continue;
        }
        let next_due = device.next_due();
        if now.duration_since(last_activity) < spin || next_due.is_some_and(|d| d <= now + DUE_SPIN)
        {
            // Offer the CPU now and then when it is shared: on a small
            // machine this thread shares a CPU with the host's threads,
            // and spinning through a whole time slice would stall the
            // very submissions it waits for (see `os::SpinYield`).
            spin_yield.idle();
            continue;
        }
        let mut sleep = backoff;
        if let Some(due) = next_due {
            sleep = sleep.min(due.saturating_duration_since(now + DUE_SPIN / 2));
        }
        std::thread::park_timeout(sleep);
        backoff = (backoff * 2).min(max_sleep);
    }
    device.stop();
}
