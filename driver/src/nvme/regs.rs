//! Controller registers (NVMe Base Specification 2.0, section 3.1.3).
//!
//! The register file lives in BAR0. These types are plain values: they
//! decode what was read from MMIO and compose what will be written, so the
//! same code serves the driver and a simulated controller.

use core::fmt;
use core::time::Duration;

/// Byte offsets of the controller registers within BAR0.
pub mod offset {
    /// Controller Capabilities (64-bit, read-only).
    pub const CAP: usize = 0x00;
    /// Version (32-bit).
    pub const VS: usize = 0x08;
    /// Interrupt Mask Set (32-bit).
    pub const INTMS: usize = 0x0C;
    /// Interrupt Mask Clear (32-bit).
    pub const INTMC: usize = 0x10;
    /// Controller Configuration (32-bit).
    pub const CC: usize = 0x14;
    /// Controller Status (32-bit).
    pub const CSTS: usize = 0x1C;
    /// NVM Subsystem Reset (32-bit).
    pub const NSSR: usize = 0x20;
    /// Admin Queue Attributes (32-bit).
    pub const AQA: usize = 0x24;
    /// Admin Submission Queue base address (64-bit).
    pub const ASQ: usize = 0x28;
    /// Admin Completion Queue base address (64-bit).
    pub const ACQ: usize = 0x30;
    /// First doorbell register (admin SQ 0 tail).
    pub const DOORBELL_BASE: usize = 0x1000;
}

/// Value written to NSSR to start an NVM subsystem reset ("NVMe" in ASCII).
pub const NSSR_RESET_VALUE: u32 = 0x4E56_4D65;

/// Byte offset of a queue's doorbell register.
///
/// Doorbells come in SQ-tail / CQ-head pairs per queue id, `dstrd_bytes`
/// apart (see [`Cap::doorbell_stride_bytes`]).
#[must_use]
pub const fn doorbell_offset(qid: u16, completion: bool, dstrd_bytes: usize) -> usize {
    offset::DOORBELL_BASE + (2 * qid as usize + completion as usize) * dstrd_bytes
}

// Field helpers: every register field is `width` bits at `shift`. Builders
// mask the input so a too-wide value cannot corrupt neighbouring fields;
// debug builds still catch it because it is always a caller bug.
const fn get64(v: u64, shift: u32, width: u32) -> u64 {
    (v >> shift) & ((1u64 << width) - 1)
}

const fn set64(v: u64, shift: u32, width: u32, x: u64) -> u64 {
    let mask = (1u64 << width) - 1;
    debug_assert!(x <= mask, "value does not fit the register field");
    (v & !(mask << shift)) | ((x & mask) << shift)
}

const fn get32(v: u32, shift: u32, width: u32) -> u32 {
    get64(v as u64, shift, width) as u32
}

const fn set32(v: u32, shift: u32, width: u32, x: u32) -> u32 {
    set64(v as u64, shift, width, x as u64) as u32
}

/// Controller Capabilities (CAP, offset 0x00).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cap(pub u64);

impl Cap {
    /// `CAP.CSS` bit: the NVM command set is supported.
    pub const CSS_NVM: u8 = 1 << 0;
    /// `CAP.CSS` bit: one or more I/O command sets are supported.
    pub const CSS_IO_COMMAND_SETS: u8 = 1 << 6;
    /// `CAP.CSS` bit: only the admin command set is supported.
    pub const CSS_ADMIN_ONLY: u8 = 1 << 7;

    /// An all-zero value, the starting point for the `with_*` builders.
    #[must_use]
    pub const fn new() -> Self {
        Self(0)
    }

    /// Maximum Queue Entries Supported, 0-based.
    #[must_use]
    pub const fn mqes(self) -> u16 {
        get64(self.0, 0, 16) as u16
    }

    /// Largest queue the controller accepts, in entries (MQES + 1).
    #[must_use]
    pub const fn max_queue_entries(self) -> u32 {
        self.mqes() as u32 + 1
    }

    /// Contiguous Queues Required: queues cannot be built from PRP lists.
    #[must_use]
    pub const fn cqr(self) -> bool {
        get64(self.0, 16, 1) != 0
    }

    /// Arbitration Mechanism Supported bitmap (bit 0 = weighted round robin
    /// with urgent class, bit 1 = vendor specific).
    #[must_use]
    pub const fn ams(self) -> u8 {
        get64(self.0, 17, 2) as u8
    }

    /// Timeout (TO) in 500 ms units: worst case for CSTS.RDY to follow CC.EN.
    #[must_use]
    pub const fn to(self) -> u8 {
        get64(self.0, 24, 8) as u8
    }

    /// How long to wait for CSTS.RDY to follow a CC.EN transition.
    #[must_use]
    pub const fn ready_timeout(self) -> Duration {
        Duration::from_millis(self.to() as u64 * 500)
    }

    /// Doorbell Stride exponent: doorbells are `4 << DSTRD` bytes apart.
    #[must_use]
    pub const fn dstrd(self) -> u8 {
        get64(self.0, 32, 4) as u8
    }

    /// Distance between consecutive doorbell registers, in bytes.
    #[must_use]
    pub const fn doorbell_stride_bytes(self) -> usize {
        4 << self.dstrd()
    }

    /// NVM Subsystem Reset Supported.
    #[must_use]
    pub const fn nssrs(self) -> bool {
        get64(self.0, 36, 1) != 0
    }

    /// Command Sets Supported bitmap (see the `CSS_*` constants).
    #[must_use]
    pub const fn css(self) -> u8 {
        get64(self.0, 37, 8) as u8
    }

    /// Boot Partition Support.
    #[must_use]
    pub const fn bps(self) -> bool {
        get64(self.0, 45, 1) != 0
    }

    /// Memory Page Size Minimum exponent: the page size is `2^(12 + MPSMIN)`.
    #[must_use]
    pub const fn mpsmin(self) -> u8 {
        get64(self.0, 48, 4) as u8
    }

    /// Memory Page Size Maximum exponent: the page size is `2^(12 + MPSMAX)`.
    #[must_use]
    pub const fn mpsmax(self) -> u8 {
        get64(self.0, 52, 4) as u8
    }

    /// Smallest memory page size (CC.MPS) the controller supports, in bytes.
    #[must_use]
    pub const fn min_page_size(self) -> usize {
        1 << (12 + self.mpsmin() as u32)
    }

    /// Largest memory page size (CC.MPS) the controller supports, in bytes.
    #[must_use]
    pub const fn max_page_size(self) -> usize {
        1 << (12 + self.mpsmax() as u32)
    }

    /// Controller Memory Buffer Supported.
    #[must_use]
    pub const fn cmbs(self) -> bool {
        get64(self.0, 57, 1) != 0
    }

    /// Sets MQES (0-based maximum queue entries).
    #[must_use]
    pub const fn with_mqes(self, mqes: u16) -> Self {
        Self(set64(self.0, 0, 16, mqes as u64))
    }

    /// Sets CQR (contiguous queues required).
    #[must_use]
    pub const fn with_cqr(self, cqr: bool) -> Self {
        Self(set64(self.0, 16, 1, cqr as u64))
    }

    /// Sets AMS (2-bit arbitration mechanism bitmap).
    #[must_use]
    pub const fn with_ams(self, ams: u8) -> Self {
        Self(set64(self.0, 17, 2, ams as u64))
    }

    /// Sets TO (ready timeout in 500 ms units).
    #[must_use]
    pub const fn with_to(self, to: u8) -> Self {
        Self(set64(self.0, 24, 8, to as u64))
    }

    /// Sets DSTRD (4-bit doorbell stride exponent).
    #[must_use]
    pub const fn with_dstrd(self, dstrd: u8) -> Self {
        Self(set64(self.0, 32, 4, dstrd as u64))
    }

    /// Sets NSSRS (subsystem reset supported).
    #[must_use]
    pub const fn with_nssrs(self, nssrs: bool) -> Self {
        Self(set64(self.0, 36, 1, nssrs as u64))
    }

    /// Sets CSS (command sets supported bitmap).
    #[must_use]
    pub const fn with_css(self, css: u8) -> Self {
        Self(set64(self.0, 37, 8, css as u64))
    }

    /// Sets BPS (boot partition support).
    #[must_use]
    pub const fn with_bps(self, bps: bool) -> Self {
        Self(set64(self.0, 45, 1, bps as u64))
    }

    /// Sets MPSMIN (4-bit minimum page size exponent).
    #[must_use]
    pub const fn with_mpsmin(self, mpsmin: u8) -> Self {
        Self(set64(self.0, 48, 4, mpsmin as u64))
    }

    /// Sets MPSMAX (4-bit maximum page size exponent).
    #[must_use]
    pub const fn with_mpsmax(self, mpsmax: u8) -> Self {
        Self(set64(self.0, 52, 4, mpsmax as u64))
    }

    /// Sets CMBS (controller memory buffer supported).
    #[must_use]
    pub const fn with_cmbs(self, cmbs: bool) -> Self {
        Self(set64(self.0, 57, 1, cmbs as u64))
    }
}

impl fmt::Debug for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cap")
            .field("raw", &format_args!("{:#018x}", self.0))
            .field("mqes", &self.mqes())
            .field("cqr", &self.cqr())
            .field("ams", &self.ams())
            .field("to", &self.to())
            .field("dstrd", &self.dstrd())
            .field("nssrs", &self.nssrs())
            .field("css", &format_args!("{:#04x}", self.css()))
            .field("bps", &self.bps())
            .field("mpsmin", &self.mpsmin())
            .field("mpsmax", &self.mpsmax())
            .field("cmbs", &self.cmbs())
            .finish()
    }
}

/// CC.SHN: what the host asks the controller to do on shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ShutdownNotification {
    /// No notification; no effect.
    #[default]
    None = 0b00,
    /// Normal shutdown: flush and persist state.
    Normal = 0b01,
    /// Abrupt shutdown: stop as quickly as possible.
    Abrupt = 0b10,
}

/// Controller Configuration (CC, offset 0x14).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Cc(pub u32);

impl Cc {
    /// `CC.CSS` value: NVM command set.
    pub const CSS_NVM: u8 = 0b000;
    /// `CC.CSS` value: all supported I/O command sets.
    pub const CSS_ALL_IO: u8 = 0b110;
    /// `CC.CSS` value: admin command set only.
    pub const CSS_ADMIN_ONLY: u8 = 0b111;

    /// An all-zero value (disabled), the starting point for the builders.
    #[must_use]
    pub const fn new() -> Self {
        Self(0)
    }

    /// Enable.
    #[must_use]
    pub const fn en(self) -> bool {
        get32(self.0, 0, 1) != 0
    }

    /// I/O Command Set Selected (3 bits, see the `CSS_*` constants).
    #[must_use]
    pub const fn css(self) -> u8 {
        get32(self.0, 4, 3) as u8
    }

    /// Memory Page Size exponent: the host page size is `2^(12 + MPS)`.
    #[must_use]
    pub const fn mps(self) -> u8 {
        get32(self.0, 7, 4) as u8
    }

    /// Host memory page size selected by MPS, in bytes.
    #[must_use]
    pub const fn page_size(self) -> usize {
        1 << (12 + self.mps() as u32)
    }

    /// Arbitration Mechanism Selected (3 bits, 0 = round robin).
    #[must_use]
    pub const fn ams(self) -> u8 {
        get32(self.0, 11, 3) as u8
    }

    /// Shutdown Notification; `None` (the Option) for the reserved encoding.
    #[must_use]
    pub const fn shn(self) -> Option<ShutdownNotification> {
        match get32(self.0, 14, 2) {
            0b00 => Some(ShutdownNotification::None),
            0b01 => Some(ShutdownNotification::Normal),
            0b10 => Some(ShutdownNotification::Abrupt),
            _ => None,
        }
    }

    /// I/O Submission Queue Entry Size as log2 bytes (6 for 64-byte entries).
    #[must_use]
    pub const fn iosqes(self) -> u8 {
        get32(self.0, 16, 4) as u8
    }

    /// I/O Completion Queue Entry Size as log2 bytes (4 for 16-byte entries).
    #[must_use]
    pub const fn iocqes(self) -> u8 {
        get32(self.0, 20, 4) as u8
    }

    /// Sets EN.
    #[must_use]
    pub const fn with_en(self, en: bool) -> Self {
        Self(set32(self.0, 0, 1, en as u32))
    }

    /// Sets CSS (3 bits).
    #[must_use]
    pub const fn with_css(self, css: u8) -> Self {
        Self(set32(self.0, 4, 3, css as u32))
    }

    /// Sets MPS (4-bit page size exponent).
    #[must_use]
    pub const fn with_mps(self, mps: u8) -> Self {
        Self(set32(self.0, 7, 4, mps as u32))
    }

    /// Sets AMS (3 bits).
    #[must_use]
    pub const fn with_ams(self, ams: u8) -> Self {
        Self(set32(self.0, 11, 3, ams as u32))
    }

    /// Sets SHN.
    #[must_use]
    pub const fn with_shn(self, shn: ShutdownNotification) -> Self {
        Self(set32(self.0, 14, 2, shn as u32))
    }

    /// Sets IOSQES (log2 of the I/O SQ entry size).
    #[must_use]
    pub const fn with_iosqes(self, iosqes: u8) -> Self {
        Self(set32(self.0, 16, 4, iosqes as u32))
    }

    /// Sets IOCQES (log2 of the I/O CQ entry size).
    #[must_use]
    pub const fn with_iocqes(self, iocqes: u8) -> Self {
        Self(set32(self.0, 20, 4, iocqes as u32))
    }
}

impl fmt::Debug for Cc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cc")
            .field("raw", &format_args!("{:#010x}", self.0))
            .field("en", &self.en())
            .field("css", &self.css())
            .field("mps", &self.mps())
            .field("ams", &self.ams())
            .field("shn", &self.shn())
            .field("iosqes", &self.iosqes())
            .field("iocqes", &self.iocqes())
            .finish()
    }
}

/// CSTS.SHST: how far a requested shutdown has progressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ShutdownStatus {
    /// Normal operation; no shutdown requested.
    #[default]
    Normal = 0b00,
    /// Shutdown processing in progress.
    Occurring = 0b01,
    /// Shutdown processing complete.
    Complete = 0b10,
}

/// Controller Status (CSTS, offset 0x1C).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Csts(pub u32);

impl Csts {
    /// An all-zero value (not ready), the starting point for the builders.
    #[must_use]
    pub const fn new() -> Self {
        Self(0)
    }

    /// Ready: the controller processes commands.
    #[must_use]
    pub const fn rdy(self) -> bool {
        get32(self.0, 0, 1) != 0
    }

    /// Controller Fatal Status: only a reset recovers.
    #[must_use]
    pub const fn cfs(self) -> bool {
        get32(self.0, 1, 1) != 0
    }

    /// Shutdown Status; `None` (the Option) for the reserved encoding.
    #[must_use]
    pub const fn shst(self) -> Option<ShutdownStatus> {
        match get32(self.0, 2, 2) {
            0b00 => Some(ShutdownStatus::Normal),
            0b01 => Some(ShutdownStatus::Occurring),
            0b10 => Some(ShutdownStatus::Complete),
            _ => None,
        }
    }

    /// NVM Subsystem Reset Occurred (write 1 to clear).
    #[must_use]
    pub const fn nssro(self) -> bool {
        get32(self.0, 4, 1) != 0
    }

    /// Processing Paused.
    #[must_use]
    pub const fn pp(self) -> bool {
        get32(self.0, 5, 1) != 0
    }

    /// Sets RDY.
    #[must_use]
    pub const fn with_rdy(self, rdy: bool) -> Self {
        Self(set32(self.0, 0, 1, rdy as u32))
    }

    /// Sets CFS.
    #[must_use]
    pub const fn with_cfs(self, cfs: bool) -> Self {
        Self(set32(self.0, 1, 1, cfs as u32))
    }

    /// Sets SHST.
    #[must_use]
    pub const fn with_shst(self, shst: ShutdownStatus) -> Self {
        Self(set32(self.0, 2, 2, shst as u32))
    }

    /// Sets NSSRO.
    #[must_use]
    pub const fn with_nssro(self, nssro: bool) -> Self {
        Self(set32(self.0, 4, 1, nssro as u32))
    }

    /// Sets PP.
    #[must_use]
    pub const fn with_pp(self, pp: bool) -> Self {
        Self(set32(self.0, 5, 1, pp as u32))
    }
}

impl fmt::Debug for Csts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Csts")
            .field("raw", &format_args!("{:#010x}", self.0))
            .field("rdy", &self.rdy())
            .field("cfs", &self.cfs())
            .field("shst", &self.shst())
            .field("nssro", &self.nssro())
            .field("pp", &self.pp())
            .finish()
    }
}

/// Admin Queue Attributes (AQA, offset 0x24). Both sizes are 0-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Aqa(pub u32);

impl Aqa {
    /// Composes AQA from 0-based admin SQ and CQ sizes (12 bits each).
    #[must_use]
    pub const fn new(asqs: u16, acqs: u16) -> Self {
        Self(set32(set32(0, 0, 12, asqs as u32), 16, 12, acqs as u32))
    }

    /// Admin Submission Queue Size, 0-based.
    #[must_use]
    pub const fn asqs(self) -> u16 {
        get32(self.0, 0, 12) as u16
    }

    /// Admin Completion Queue Size, 0-based.
    #[must_use]
    pub const fn acqs(self) -> u16 {
        get32(self.0, 16, 12) as u16
    }

    /// Sets ASQS (0-based, 12 bits).
    #[must_use]
    pub const fn with_asqs(self, asqs: u16) -> Self {
        Self(set32(self.0, 0, 12, asqs as u32))
    }

    /// Sets ACQS (0-based, 12 bits).
    #[must_use]
    pub const fn with_acqs(self, acqs: u16) -> Self {
        Self(set32(self.0, 16, 12, acqs as u32))
    }
}

/// Version (VS, offset 0x08; also Identify Controller VER).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Version(pub u32);

impl Version {
    /// NVMe 1.0 (reports its VS as 1.0, with no tertiary byte).
    pub const V1_0: Self = Self::new(1, 0, 0);
    /// NVMe 1.4.
    pub const V1_4: Self = Self::new(1, 4, 0);
    /// NVMe 2.0.
    pub const V2_0: Self = Self::new(2, 0, 0);

    /// Composes a version; the layout makes `Ord` follow version order.
    #[must_use]
    pub const fn new(major: u16, minor: u8, tertiary: u8) -> Self {
        Self((major as u32) << 16 | (minor as u32) << 8 | tertiary as u32)
    }

    /// Major version number.
    #[must_use]
    pub const fn major(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// Minor version number.
    #[must_use]
    pub const fn minor(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Tertiary version number.
    #[must_use]
    pub const fn tertiary(self) -> u8 {
        self.0 as u8
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major(), self.minor(), self.tertiary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_round_trip() {
        let cap = Cap::new()
            .with_mqes(1023)
            .with_cqr(true)
            .with_ams(0b01)
            .with_to(20)
            .with_dstrd(2)
            .with_nssrs(true)
            .with_css(Cap::CSS_NVM | Cap::CSS_IO_COMMAND_SETS)
            .with_bps(true)
            .with_mpsmin(0)
            .with_mpsmax(4)
            .with_cmbs(true);
        assert_eq!(cap.mqes(), 1023);
        assert_eq!(cap.max_queue_entries(), 1024);
        assert!(cap.cqr());
        assert_eq!(cap.ams(), 1);
        assert_eq!(cap.to(), 20);
        assert_eq!(cap.ready_timeout(), Duration::from_secs(10));
        assert_eq!(cap.dstrd(), 2);
        assert_eq!(cap.doorbell_stride_bytes(), 16);
        assert!(cap.nssrs());
        assert_eq!(cap.css(), 0x41);
        assert!(cap.bps());
        assert_eq!(cap.min_page_size(), 4096);
        assert_eq!(cap.max_page_size(), 65536);
        assert!(cap.cmbs());
    }

    #[test]
    fn cap_bit_positions() {
        assert_eq!(Cap::new().with_mqes(0xFFFF).0, 0xFFFF);
        assert_eq!(Cap::new().with_cqr(true).0, 1 << 16);
        assert_eq!(Cap::new().with_ams(0b11).0, 0b11 << 17);
        assert_eq!(Cap::new().with_to(0xFF).0, 0xFF << 24);
        assert_eq!(Cap::new().with_dstrd(0xF).0, 0xF << 32);
        assert_eq!(Cap::new().with_nssrs(true).0, 1 << 36);
        assert_eq!(Cap::new().with_css(0xFF).0, 0xFF << 37);
        assert_eq!(Cap::new().with_bps(true).0, 1 << 45);
        assert_eq!(Cap::new().with_mpsmin(0xF).0, 0xF << 48);
        assert_eq!(Cap::new().with_mpsmax(0xF).0, 0xF << 52);
        assert_eq!(Cap::new().with_cmbs(true).0, 1 << 57);
        // A QEMU-like value: 2048 entries, CQR, 7.5 s, NVM only, 4K-64K pages.
        let qemu = Cap(0x0040_0020_0f01_07ff);
        assert_eq!(qemu.max_queue_entries(), 2048);
        assert!(qemu.cqr());
        assert_eq!(qemu.ready_timeout(), Duration::from_millis(7500));
        assert_eq!(qemu.doorbell_stride_bytes(), 4);
        assert_eq!(qemu.css(), Cap::CSS_NVM);
        assert_eq!(qemu.mpsmax(), 4);
    }

    #[test]
    fn builders_replace_fields() {
        let cap = Cap::new().with_to(5).with_to(7);
        assert_eq!(cap.to(), 7);
        let cc = Cc::new().with_en(true).with_en(false).with_mps(3);
        assert!(!cc.en());
        assert_eq!(cc.mps(), 3);
    }

    #[test]
    fn cc_round_trip() {
        let cc = Cc::new()
            .with_en(true)
            .with_css(Cc::CSS_NVM)
            .with_mps(0)
            .with_ams(0)
            .with_shn(ShutdownNotification::Normal)
            .with_iosqes(6)
            .with_iocqes(4);
        assert_eq!(cc.0, 0x0046_4001);
        assert!(cc.en());
        assert_eq!(cc.css(), 0);
        assert_eq!(cc.page_size(), 4096);
        assert_eq!(cc.shn(), Some(ShutdownNotification::Normal));
        assert_eq!(cc.iosqes(), 6);
        assert_eq!(cc.iocqes(), 4);

        for shn in [
            ShutdownNotification::None,
            ShutdownNotification::Normal,
            ShutdownNotification::Abrupt,
        ] {
            assert_eq!(Cc::new().with_shn(shn).shn(), Some(shn));
        }
        assert_eq!(Cc(0b11 << 14).shn(), None);
        assert_eq!(Cc::new().with_css(Cc::CSS_ALL_IO).0, 0b110 << 4);
        assert_eq!(Cc::new().with_mps(0xF).0, 0xF << 7);
        assert_eq!(Cc::new().with_ams(0b111).0, 0b111 << 11);
        assert_eq!(Cc::new().with_mps(2).page_size(), 16384);
    }

    #[test]
    fn csts_round_trip() {
        let csts = Csts::new()
            .with_rdy(true)
            .with_cfs(true)
            .with_shst(ShutdownStatus::Complete)
            .with_nssro(true)
            .with_pp(true);
        assert_eq!(csts.0, 0b11_1011);
        assert!(csts.rdy() && csts.cfs() && csts.nssro() && csts.pp());
        assert_eq!(csts.shst(), Some(ShutdownStatus::Complete));
        for shst in [
            ShutdownStatus::Normal,
            ShutdownStatus::Occurring,
            ShutdownStatus::Complete,
        ] {
            assert_eq!(Csts::new().with_shst(shst).shst(), Some(shst));
        }
        assert_eq!(Csts(0b1100).shst(), None);
    }

    #[test]
    fn aqa_round_trip() {
        let aqa = Aqa::new(31, 63);
        assert_eq!(aqa.0, 63 << 16 | 31);
        assert_eq!(aqa.asqs(), 31);
        assert_eq!(aqa.acqs(), 63);
        let aqa = aqa.with_asqs(4095).with_acqs(1);
        assert_eq!((aqa.asqs(), aqa.acqs()), (4095, 1));
    }

    #[test]
    fn version_display() {
        let v = Version(0x0001_0400);
        assert_eq!((v.major(), v.minor(), v.tertiary()), (1, 4, 0));
        assert_eq!(v.to_string(), "1.4.0");
        assert_eq!(v, Version::V1_4);
        assert_eq!(Version::new(2, 0, 1).to_string(), "2.0.1");
        assert!(Version::V1_4 < Version::V2_0);
    }

    #[test]
    fn doorbells() {
        assert_eq!(doorbell_offset(0, false, 4), 0x1000);
        assert_eq!(doorbell_offset(0, true, 4), 0x1004);
        assert_eq!(doorbell_offset(1, false, 4), 0x1008);
        assert_eq!(doorbell_offset(3, true, 16), 0x1000 + 7 * 16);
        let stride = Cap::new().with_dstrd(2).doorbell_stride_bytes();
        assert_eq!(doorbell_offset(1, true, stride), 0x1030);
        assert_eq!(doorbell_offset(u16::MAX, true, 4), 0x1000 + 0x1_FFFF * 4);
    }

    #[test]
    fn offsets() {
        use offset::*;
        let all = [CAP, VS, INTMS, INTMC, CC, CSTS, NSSR, AQA, ASQ, ACQ];
        assert_eq!(
            all,
            [0x0, 0x8, 0xC, 0x10, 0x14, 0x1C, 0x20, 0x24, 0x28, 0x30]
        );
        assert_eq!(DOORBELL_BASE, 0x1000);
    }
}
