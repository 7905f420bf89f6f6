//! Counters the device thread keeps, readable at any time.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of a simulated controller ([`super::SimController::stats`]).
/// Every read is a relaxed snapshot of one counter.
pub struct SimStats {
    admin: [AtomicU64; 256],
    io: [AtomicU64; 256],
    interrupts: Box<[AtomicU64]>,
    completions: AtomicU64,
    spurious: AtomicU64,
    invalid_doorbells: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    resets: AtomicU64,
    polls: AtomicU64,
    unsteered: AtomicU64,
    mmio_doorbells: AtomicU64,
    shadow_doorbells: AtomicU64,
}

impl SimStats {
    pub(crate) fn new(vectors: u16) -> Self {
        SimStats {
            admin: [const { AtomicU64::new(0) }; 256],
            io: [const { AtomicU64::new(0) }; 256],
            interrupts: (0..vectors).map(|_| AtomicU64::new(0)).collect(),
            completions: AtomicU64::new(0),
            spurious: AtomicU64::new(0),
            invalid_doorbells: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            resets: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            unsteered: AtomicU64::new(0),
            mmio_doorbells: AtomicU64::new(0),
            shadow_doorbells: AtomicU64::new(0),
        }
    }

    /// Admin commands fetched with `opcode` (failed ones included).
    pub fn admin_commands(&self, opcode: u8) -> u64 {
        self.admin[usize::from(opcode)].load(Ordering::Relaxed)
    }

    /// I/O commands fetched with `opcode` (failed ones included).
    pub fn io_commands(&self, opcode: u8) -> u64 {
        self.io[usize::from(opcode)].load(Ordering::Relaxed)
    }

    /// Every I/O command fetched.
    pub fn total_io_commands(&self) -> u64 {
        self.io.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Times MSI-X vector `vector` was signalled (0 for a vector beyond the table).
    pub fn interrupts(&self, vector: u16) -> u64 {
        self.interrupts
            .get(usize::from(vector))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Completion entries written to completion queues (spurious ones included).
    pub fn completions_posted(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }

    /// Spurious completions posted through the fault hooks.
    pub fn spurious_completions(&self) -> u64 {
        self.spurious.load(Ordering::Relaxed)
    }

    /// Doorbell writes ignored as invalid (bad value, or a CQ head moving
    /// past unposted entries).
    pub fn invalid_doorbell_writes(&self) -> u64 {
        self.invalid_doorbells.load(Ordering::Relaxed)
    }

    /// Bytes Read commands transferred to the host.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// Bytes Write commands transferred from the host.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }

    /// Controller resets (CC.EN 1 → 0) seen.
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Passes of the device thread over the registers and queues: grows
    /// fast while it spins, slowly (about once per [`super::SimOptions::idle`])
    /// while it is idle.
    pub fn device_polls(&self) -> u64 {
        self.polls.load(Ordering::Relaxed)
    }

    pub(crate) fn count_poll(&self) {
        self.polls.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_command(&self, admin: bool, opcode: u8) {
        let table = if admin { &self.admin } else { &self.io };
        table[usize::from(opcode)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_interrupt(&self, vector: u16, steered: bool) {
        if let Some(c) = self.interrupts.get(usize::from(vector)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if !steered {
            self.unsteered.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Interrupts signalled on a vector whose affinity had not been set:
    /// on a host those land wherever the default IRQ affinity says,
    /// isolated CPUs included. A driver that steers every vector before it
    /// can fire keeps this at 0.
    pub fn unsteered_interrupts(&self) -> u64 {
        self.unsteered.load(Ordering::Relaxed)
    }

    /// I/O SQ tail doorbell values the device took from a register write.
    pub fn mmio_doorbells(&self) -> u64 {
        self.mmio_doorbells.load(Ordering::Relaxed)
    }

    /// I/O SQ tail doorbell values the device took from the shadow doorbell
    /// buffer (Doorbell Buffer Config) without a register write.
    pub fn shadow_doorbells(&self) -> u64 {
        self.shadow_doorbells.load(Ordering::Relaxed)
    }

    pub(crate) fn count_doorbell(&self, from_shadow: bool) {
        let counter = if from_shadow {
            &self.shadow_doorbells
        } else {
            &self.mmio_doorbells
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_completion(&self) {
        self.completions.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_spurious(&self) {
        self.spurious.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_invalid_doorbell(&self) {
        self.invalid_doorbells.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn count_written(&self, bytes: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn count_reset(&self) {
        self.resets.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SimStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nonzero = |t: &[AtomicU64; 256]| -> Vec<(u8, u64)> {
            t.iter()
                .enumerate()
                .filter_map(|(op, c)| {
                    let n = c.load(Ordering::Relaxed);
                    (n != 0).then_some((op as u8, n))
                })
                .collect()
        };
        let irqs: Vec<(usize, u64)> = self
            .interrupts
            .iter()
            .enumerate()
            .filter_map(|(v, c)| {
                let n = c.load(Ordering::Relaxed);
                (n != 0).then_some((v, n))
            })
            .collect();
        f.debug_struct("SimStats")
            .field("admin_by_opcode", &nonzero(&self.admin))
            .field("io_by_opcode", &nonzero(&self.io))
            .field("interrupts_by_vector", &irqs)
            .field("completions", &self.completions_posted())
            .field("spurious", &self.spurious_completions())
            .field("invalid_doorbells", &self.invalid_doorbell_writes())
            .field("bytes_read", &self.bytes_read())
            .field("bytes_written", &self.bytes_written())
            .field("resets", &self.resets())
            .field("device_polls", &self.device_polls())
            .finish()
    }
}
