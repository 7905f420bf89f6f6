//! Identify data structures (NVMe Base Specification 2.0 section 5.17.2,
//! NVM Command Set Specification 1.0 section 4.1.5).
//!
//! Each structure is the 4 KiB page the controller writes; read one out of
//! a DMA buffer with `zerocopy::FromBytes::read_from_bytes`. Named fields sit
//! at their specification offsets (checked by tests and by the compile-time
//! size assertions); fields this driver has no use for stay inside reserved
//! or raw byte arrays.

use core::fmt;

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::regs::Version;

/// Turns a space-padded ASCII field into a string: controllers pad with
/// spaces (some with NULs), and a few also left-pad serial numbers.
fn ascii_field(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_owned()
}

/// Writes `s` into a space-padded ASCII field.
///
/// # Panics
/// If `s` is longer than the field.
fn set_ascii_field(field: &mut [u8], s: &str) {
    assert!(
        s.len() <= field.len(),
        "{s:?} does not fit {} bytes",
        field.len()
    );
    field.fill(b' ');
    field[..s.len()].copy_from_slice(s.as_bytes());
}

/// Identify Controller data structure (CNS 0x01), 4096 bytes.
#[derive(Clone, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: u16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: u16,
    /// Serial Number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model Number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware Revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst.
    pub rab: u8,
    /// IEEE OUI Identifier.
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// Maximum Data Transfer Size, log2 in units of CAP.MPSMIN (0 = no limit).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: u16,
    /// Version (same encoding as the VS register).
    pub ver: u32,
    /// RTD3 Resume Latency (µs).
    pub rtd3r: u32,
    /// RTD3 Entry Latency (µs).
    pub rtd3e: u32,
    /// Optional Asynchronous Events Supported.
    pub oaes: u32,
    /// Controller Attributes.
    pub ctratt: u32,
    /// Read Recovery Levels Supported.
    pub rrls: u16,
    rsvd102: [u8; 9],
    /// Controller Type (1 = I/O controller).
    pub cntrltype: u8,
    /// FRU Globally Unique Identifier.
    pub fguid: [u8; 16],
    /// Command Retry Delay Times 1-3 (100 ms units), selected by status CRD.
    pub crdt: [u16; 3],
    rsvd134: [u8; 122],
    /// Optional Admin Command Support.
    pub oacs: u16,
    /// Abort Command Limit (0-based).
    pub acl: u8,
    /// Asynchronous Event Request Limit (0-based).
    pub aerl: u8,
    /// Firmware Updates.
    pub frmw: u8,
    /// Log Page Attributes.
    pub lpa: u8,
    /// Error Log Page Entries (0-based).
    pub elpe: u8,
    /// Number of Power States Support (0-based).
    pub npss: u8,
    /// Admin Vendor Specific Command Configuration.
    pub avscc: u8,
    /// Autonomous Power State Transition Attributes.
    pub apsta: u8,
    /// Warning Composite Temperature Threshold (K).
    pub wctemp: u16,
    /// Critical Composite Temperature Threshold (K).
    pub cctemp: u16,
    /// Maximum Time for Firmware Activation (100 ms units).
    pub mtfa: u16,
    /// Host Memory Buffer Preferred Size (4 KiB units).
    pub hmpre: u32,
    /// Host Memory Buffer Minimum Size (4 KiB units).
    pub hmmin: u32,
    /// Total NVM Capacity (bytes, 128-bit little-endian).
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM Capacity (bytes, 128-bit little-endian).
    pub unvmcap: [u8; 16],
    /// Replay Protected Memory Block Support.
    pub rpmbs: u32,
    /// Extended Device Self-test Time (minutes).
    pub edstt: u16,
    /// Device Self-test Options.
    pub dsto: u8,
    /// Firmware Update Granularity (4 KiB units).
    pub fwug: u8,
    /// Keep Alive Support (100 ms units).
    pub kas: u16,
    /// Host Controlled Thermal Management Attributes.
    pub hctma: u16,
    /// Minimum Thermal Management Temperature (K).
    pub mntmt: u16,
    /// Maximum Thermal Management Temperature (K).
    pub mxtmt: u16,
    /// Sanitize Capabilities.
    pub sanicap: u32,
    /// Host Memory Buffer Minimum Descriptor Entry Size (4 KiB units).
    pub hmminds: u32,
    /// Host Memory Maximum Descriptors Entries.
    pub hmmaxd: u16,
    /// NVM Set Identifier Maximum.
    pub nsetidmax: u16,
    /// Endurance Group Identifier Maximum.
    pub endgidmax: u16,
    /// ANA Transition Time (s).
    pub anatt: u8,
    /// Asymmetric Namespace Access Capabilities.
    pub anacap: u8,
    /// ANA Group Identifier Maximum.
    pub anagrpmax: u32,
    /// Number of ANA Group Identifiers.
    pub nanagrpid: u32,
    /// Persistent Event Log Size (64 KiB units).
    pub pels: u32,
    /// Domain Identifier.
    pub domainid: u16,
    rsvd358: [u8; 10],
    /// Max Endurance Group Capacity (bytes, 128-bit little-endian).
    pub megcap: [u8; 16],
    rsvd384: [u8; 128],
    /// Submission Queue Entry Size: required (bits 3:0) and maximum (7:4), log2.
    pub sqes: u8,
    /// Completion Queue Entry Size: required (bits 3:0) and maximum (7:4), log2.
    pub cqes: u8,
    /// Maximum Outstanding Commands (fabrics only; 0 on PCIe).
    pub maxcmd: u16,
    /// Number of Namespaces: the largest valid namespace ID.
    pub nn: u32,
    /// Optional NVM Command Support.
    pub oncs: u16,
    /// Fused Operation Support.
    pub fuses: u16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Volatile Write Cache (bit 0: present).
    pub vwc: u8,
    /// Atomic Write Unit Normal (blocks, 0-based).
    pub awun: u16,
    /// Atomic Write Unit Power Fail (blocks, 0-based).
    pub awupf: u16,
    /// I/O Command Set Vendor Specific Command Configuration.
    pub icsvscc: u8,
    /// Namespace Write Protection Capabilities.
    pub nwpc: u8,
    /// Atomic Compare & Write Unit (blocks, 0-based).
    pub acwu: u16,
    /// Optional Copy Formats Supported.
    pub ocfs: u16,
    /// SGL Support.
    pub sgls: u32,
    /// Maximum Number of Allowed Namespaces.
    pub mnan: u32,
    /// Maximum Domain Namespace Attachments (128-bit little-endian).
    pub maxdna: [u8; 16],
    /// Maximum I/O Controller Namespace Attachments.
    pub maxcna: u32,
    rsvd564: [u8; 204],
    /// NVM Subsystem NVMe Qualified Name (UTF-8, NUL terminated).
    pub subnqn: [u8; 256],
    rsvd1024: [u8; 768],
    /// NVMe over Fabrics attributes (unused on PCIe).
    pub fabrics: [u8; 256],
    /// Power State Descriptors 0-31, 32 bytes each.
    pub psd: [u8; 1024],
    /// Vendor Specific.
    pub vs: [u8; 1024],
}

const _: () = assert!(size_of::<IdentifyController>() == 4096);

impl IdentifyController {
    /// OACS bit: Doorbell Buffer Config command (shadow doorbells).
    pub const OACS_DOORBELL_BUFFER_CONFIG: u16 = 1 << 8;
    /// ONCS bit: Compare command.
    pub const ONCS_COMPARE: u16 = 1 << 0;
    /// ONCS bit: Write Uncorrectable command.
    pub const ONCS_WRITE_UNCORRECTABLE: u16 = 1 << 1;
    /// ONCS bit: Dataset Management command.
    pub const ONCS_DSM: u16 = 1 << 2;
    /// ONCS bit: Write Zeroes command.
    pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;

    /// An all-zero structure for a simulator to fill in.
    #[must_use]
    pub fn new_zeroed() -> Self {
        <Self as FromZeros>::new_zeroed()
    }

    /// Serial number, padding trimmed.
    #[must_use]
    pub fn serial(&self) -> String {
        ascii_field(&self.sn)
    }

    /// Model number, padding trimmed.
    #[must_use]
    pub fn model(&self) -> String {
        ascii_field(&self.mn)
    }

    /// Firmware revision, padding trimmed.
    #[must_use]
    pub fn firmware(&self) -> String {
        ascii_field(&self.fr)
    }

    /// Subsystem NQN, up to the first NUL.
    #[must_use]
    pub fn subsystem_nqn(&self) -> String {
        ascii_field(self.subnqn.split(|&b| b == 0).next().unwrap_or_default())
    }

    /// Sets the serial number (space padded).
    ///
    /// # Panics
    /// If `s` is longer than 20 bytes.
    pub fn set_serial(&mut self, s: &str) {
        set_ascii_field(&mut self.sn, s);
    }

    /// Sets the model number (space padded).
    ///
    /// # Panics
    /// If `s` is longer than 40 bytes.
    pub fn set_model(&mut self, s: &str) {
        set_ascii_field(&mut self.mn, s);
    }

    /// Sets the firmware revision (space padded).
    ///
    /// # Panics
    /// If `s` is longer than 8 bytes.
    pub fn set_firmware(&mut self, s: &str) {
        set_ascii_field(&mut self.fr, s);
    }

    /// Specification version the controller implements (0 before NVMe 1.2).
    #[must_use]
    pub const fn version(&self) -> Version {
        Version(self.ver)
    }

    /// Largest single transfer in bytes; `None` when MDTS reports no limit.
    ///
    /// `min_page_size` is CAP.MPSMIN in bytes ([`super::regs::Cap::min_page_size`]),
    /// the unit MDTS counts in regardless of the configured CC.MPS.
    #[must_use]
    pub fn max_transfer_bytes(&self, min_page_size: usize) -> Option<usize> {
        if self.mdts == 0 {
            return None;
        }
        // Saturate: a limit beyond the address space is no limit in practice.
        Some(
            1usize
                .checked_shl(u32::from(self.mdts))
                .and_then(|pages| pages.checked_mul(min_page_size))
                .unwrap_or(usize::MAX),
        )
    }

    /// Write Zeroes is supported (ONCS bit 3).
    #[must_use]
    pub const fn supports_write_zeroes(&self) -> bool {
        self.oncs & Self::ONCS_WRITE_ZEROES != 0
    }

    /// Dataset Management (deallocate/TRIM) is supported (ONCS bit 2).
    #[must_use]
    pub const fn supports_dsm(&self) -> bool {
        self.oncs & Self::ONCS_DSM != 0
    }

    /// A volatile write cache is present, so durability needs Flush (VWC bit 0).
    #[must_use]
    pub const fn volatile_write_cache(&self) -> bool {
        self.vwc & 1 != 0
    }
}

impl fmt::Debug for IdentifyController {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyController")
            .field("vid", &format_args!("{:#06x}", self.vid))
            .field("ssvid", &format_args!("{:#06x}", self.ssvid))
            .field("sn", &self.serial())
            .field("mn", &self.model())
            .field("fr", &self.firmware())
            .field("mdts", &self.mdts)
            .field("cntlid", &self.cntlid)
            .field("ver", &format_args!("{}", self.version()))
            .field("oacs", &format_args!("{:#06x}", self.oacs))
            .field("sqes", &format_args!("{:#04x}", self.sqes))
            .field("cqes", &format_args!("{:#04x}", self.cqes))
            .field("nn", &self.nn)
            .field("oncs", &format_args!("{:#06x}", self.oncs))
            .field("vwc", &self.vwc)
            .field("sgls", &format_args!("{:#010x}", self.sgls))
            .finish_non_exhaustive()
    }
}

/// One LBA Format descriptor of Identify Namespace (4 bytes).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct LbaFormat {
    /// Metadata Size per block, in bytes.
    pub ms: u16,
    /// LBA Data Size, log2 bytes (9 = 512 B, 12 = 4 KiB; 0 = unused slot).
    pub lbads: u8,
    /// Relative Performance (bits 1:0, 0 = best).
    pub rp: u8,
}

const _: () = assert!(size_of::<LbaFormat>() == 4);

impl LbaFormat {
    /// A format of `2^lbads`-byte blocks without metadata.
    #[must_use]
    pub const fn new(lbads: u8) -> Self {
        Self {
            ms: 0,
            lbads,
            rp: 0,
        }
    }

    /// Logical block size in bytes, `1 << LBADS`; 0 if LBADS is too large
    /// to be meaningful (never reported by a conforming controller).
    #[must_use]
    pub const fn lba_size(&self) -> u64 {
        match 1u64.checked_shl(self.lbads as u32) {
            Some(size) => size,
            None => 0,
        }
    }
}

/// Identify Namespace data structure for the NVM command set (CNS 0x00),
/// 4096 bytes.
#[derive(Clone, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct IdentifyNamespace {
    /// Namespace Size, in logical blocks.
    pub nsze: u64,
    /// Namespace Capacity, in logical blocks.
    pub ncap: u64,
    /// Namespace Utilization, in logical blocks.
    pub nuse: u64,
    /// Namespace Features.
    pub nsfeat: u8,
    /// Number of LBA Formats (0-based).
    pub nlbaf: u8,
    /// Formatted LBA Size: format index (bits 3:0 low, 6:5 high), metadata
    /// at end of data (bit 4).
    pub flbas: u8,
    /// Metadata Capabilities.
    pub mc: u8,
    /// End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: u8,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// Deallocate Logical Block Features.
    pub dlfeat: u8,
    /// Namespace Atomic Write Unit Normal.
    pub nawun: u16,
    /// Namespace Atomic Write Unit Power Fail.
    pub nawupf: u16,
    /// Namespace Atomic Compare & Write Unit.
    pub nacwu: u16,
    /// Namespace Atomic Boundary Size Normal.
    pub nabsn: u16,
    /// Namespace Atomic Boundary Offset.
    pub nabo: u16,
    /// Namespace Atomic Boundary Size Power Fail.
    pub nabspf: u16,
    /// Namespace Optimal I/O Boundary (blocks).
    pub noiob: u16,
    /// NVM Capacity (bytes, 128-bit little-endian).
    pub nvmcap: [u8; 16],
    /// Namespace Preferred Write Granularity (blocks, 0-based).
    pub npwg: u16,
    /// Namespace Preferred Write Alignment (blocks, 0-based).
    pub npwa: u16,
    /// Namespace Preferred Deallocate Granularity (blocks, 0-based).
    pub npdg: u16,
    /// Namespace Preferred Deallocate Alignment (blocks, 0-based).
    pub npda: u16,
    /// Namespace Optimal Write Size (blocks, 0-based).
    pub nows: u16,
    /// Maximum Single Source Range Length (Copy).
    pub mssrl: u16,
    /// Maximum Copy Length.
    pub mcl: u32,
    /// Maximum Source Range Count (Copy, 0-based).
    pub msrc: u8,
    rsvd81: [u8; 11],
    /// ANA Group Identifier.
    pub anagrpid: u32,
    rsvd96: [u8; 3],
    /// Namespace Attributes (bit 0: write protected).
    pub nsattr: u8,
    /// NVM Set Identifier.
    pub nvmsetid: u16,
    /// Endurance Group Identifier.
    pub endgid: u16,
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBA Format descriptors 0-63 (valid up to `nlbaf`).
    pub lbaf: [LbaFormat; 64],
    rsvd384: [u8; 3456],
    /// Vendor Specific.
    pub vs: [u8; 256],
}

const _: () = assert!(size_of::<IdentifyNamespace>() == 4096);

impl IdentifyNamespace {
    /// An all-zero structure for a simulator to fill in.
    #[must_use]
    pub fn new_zeroed() -> Self {
        <Self as FromZeros>::new_zeroed()
    }

    /// Index of the LBA format the namespace is formatted with.
    ///
    /// FLBAS bits 6:5 are the high bits, used once more than 16 formats exist.
    #[must_use]
    pub const fn current_lba_format_index(&self) -> usize {
        ((self.flbas & 0x0F) | ((self.flbas >> 5) & 0x03) << 4) as usize
    }

    /// The LBA format the namespace is formatted with.
    #[must_use]
    pub const fn current_lba_format(&self) -> LbaFormat {
        // The index is 6 bits, so it is always within the 64 descriptors.
        self.lbaf[self.current_lba_format_index()]
    }

    /// Sets FLBAS to format `index` (0..64), keeping the metadata bit.
    ///
    /// # Panics
    /// If `index` is 64 or more.
    pub fn set_current_lba_format(&mut self, index: usize) {
        assert!(index < 64, "LBA format index {index} out of range");
        let index = index as u8;
        self.flbas = (self.flbas & 0x10) | (index & 0x0F) | (index >> 4) << 5;
    }

    /// Logical block size in bytes of the current format.
    #[must_use]
    pub const fn lba_size(&self) -> u64 {
        self.current_lba_format().lba_size()
    }

    /// Namespace size in logical blocks (NSZE).
    #[must_use]
    pub const fn size_in_blocks(&self) -> u64 {
        self.nsze
    }

    /// Namespace size in bytes; `None` on overflow.
    #[must_use]
    pub const fn size_in_bytes(&self) -> Option<u64> {
        self.nsze.checked_mul(self.lba_size())
    }
}

impl fmt::Debug for IdentifyNamespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nformats = (usize::from(self.nlbaf) + 1).min(self.lbaf.len());
        f.debug_struct("IdentifyNamespace")
            .field("nsze", &self.nsze)
            .field("ncap", &self.ncap)
            .field("nuse", &self.nuse)
            .field("nsfeat", &format_args!("{:#04x}", self.nsfeat))
            .field("nlbaf", &self.nlbaf)
            .field("flbas", &format_args!("{:#04x}", self.flbas))
            .field("dlfeat", &format_args!("{:#04x}", self.dlfeat))
            .field("nguid", &self.nguid)
            .field("eui64", &self.eui64)
            .field("lbaf", &&self.lbaf[..nformats])
            .finish_non_exhaustive()
    }
}

/// Active Namespace ID List (CNS 0x02): up to 1024 ascending namespace IDs,
/// terminated by the first zero entry.
#[derive(Clone, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct ActiveNamespaceList {
    /// Raw entries; unused entries are zero.
    pub ids: [u32; 1024],
}

const _: () = assert!(size_of::<ActiveNamespaceList>() == 4096);

impl ActiveNamespaceList {
    /// Maximum number of IDs one list holds.
    pub const CAPACITY: usize = 1024;

    /// An empty list.
    #[must_use]
    pub fn new_zeroed() -> Self {
        <Self as FromZeros>::new_zeroed()
    }

    /// A list holding `ids` (which should be ascending and non-zero).
    ///
    /// # Panics
    /// If there are more than [`Self::CAPACITY`] ids.
    #[must_use]
    pub fn from_ids(ids: &[u32]) -> Self {
        assert!(ids.len() <= Self::CAPACITY, "at most 1024 namespace IDs");
        let mut list = Self::new_zeroed();
        list.ids[..ids.len()].copy_from_slice(ids);
        list
    }

    /// The namespace IDs, stopping at the first zero (the list terminator).
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied().take_while(|&id| id != 0)
    }
}

impl fmt::Debug for ActiveNamespaceList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn controller_layout() {
        type C = IdentifyController;
        assert_eq!(size_of::<C>(), 4096);
        let offsets = [
            (offset_of!(C, vid), 0),
            (offset_of!(C, ssvid), 2),
            (offset_of!(C, sn), 4),
            (offset_of!(C, mn), 24),
            (offset_of!(C, fr), 64),
            (offset_of!(C, rab), 72),
            (offset_of!(C, ieee), 73),
            (offset_of!(C, cmic), 76),
            (offset_of!(C, mdts), 77),
            (offset_of!(C, cntlid), 78),
            (offset_of!(C, ver), 80),
            (offset_of!(C, rtd3r), 84),
            (offset_of!(C, rtd3e), 88),
            (offset_of!(C, oaes), 92),
            (offset_of!(C, ctratt), 96),
            (offset_of!(C, rrls), 100),
            (offset_of!(C, rsvd102), 102),
            (offset_of!(C, cntrltype), 111),
            (offset_of!(C, fguid), 112),
            (offset_of!(C, crdt), 128),
            (offset_of!(C, rsvd134), 134),
            (offset_of!(C, oacs), 256),
            (offset_of!(C, acl), 258),
            (offset_of!(C, aerl), 259),
            (offset_of!(C, frmw), 260),
            (offset_of!(C, lpa), 261),
            (offset_of!(C, elpe), 262),
            (offset_of!(C, npss), 263),
            (offset_of!(C, avscc), 264),
            (offset_of!(C, apsta), 265),
            (offset_of!(C, wctemp), 266),
            (offset_of!(C, cctemp), 268),
            (offset_of!(C, mtfa), 270),
            (offset_of!(C, hmpre), 272),
            (offset_of!(C, hmmin), 276),
            (offset_of!(C, tnvmcap), 280),
            (offset_of!(C, unvmcap), 296),
            (offset_of!(C, rpmbs), 312),
            (offset_of!(C, edstt), 316),
            (offset_of!(C, dsto), 318),
            (offset_of!(C, fwug), 319),
            (offset_of!(C, kas), 320),
            (offset_of!(C, hctma), 322),
            (offset_of!(C, mntmt), 324),
            (offset_of!(C, mxtmt), 326),
            (offset_of!(C, sanicap), 328),
            (offset_of!(C, hmminds), 332),
            (offset_of!(C, hmmaxd), 336),
            (offset_of!(C, nsetidmax), 338),
            (offset_of!(C, endgidmax), 340),
            (offset_of!(C, anatt), 342),
            (offset_of!(C, anacap), 343),
            (offset_of!(C, anagrpmax), 344),
            (offset_of!(C, nanagrpid), 348),
            (offset_of!(C, pels), 352),
            (offset_of!(C, domainid), 356),
            (offset_of!(C, rsvd358), 358),
            (offset_of!(C, megcap), 368),
            (offset_of!(C, rsvd384), 384),
            (offset_of!(C, sqes), 512),
            (offset_of!(C, cqes), 513),
            (offset_of!(C, maxcmd), 514),
            (offset_of!(C, nn), 516),
            (offset_of!(C, oncs), 520),
            (offset_of!(C, fuses), 522),
            (offset_of!(C, fna), 524),
            (offset_of!(C, vwc), 525),
            (offset_of!(C, awun), 526),
            (offset_of!(C, awupf), 528),
            (offset_of!(C, icsvscc), 530),
            (offset_of!(C, nwpc), 531),
            (offset_of!(C, acwu), 532),
            (offset_of!(C, ocfs), 534),
            (offset_of!(C, sgls), 536),
            (offset_of!(C, mnan), 540),
            (offset_of!(C, maxdna), 544),
            (offset_of!(C, maxcna), 560),
            (offset_of!(C, rsvd564), 564),
            (offset_of!(C, subnqn), 768),
            (offset_of!(C, rsvd1024), 1024),
            (offset_of!(C, fabrics), 1792),
            (offset_of!(C, psd), 2048),
            (offset_of!(C, vs), 3072),
        ];
        for (i, (got, want)) in offsets.into_iter().enumerate() {
            assert_eq!(got, want, "entry {i}");
        }
    }

    #[test]
    fn namespace_layout() {
        type N = IdentifyNamespace;
        assert_eq!(size_of::<N>(), 4096);
        assert_eq!(size_of::<LbaFormat>(), 4);
        assert_eq!(offset_of!(LbaFormat, ms), 0);
        assert_eq!(offset_of!(LbaFormat, lbads), 2);
        assert_eq!(offset_of!(LbaFormat, rp), 3);
        let offsets = [
            (offset_of!(N, nsze), 0),
            (offset_of!(N, ncap), 8),
            (offset_of!(N, nuse), 16),
            (offset_of!(N, nsfeat), 24),
            (offset_of!(N, nlbaf), 25),
            (offset_of!(N, flbas), 26),
            (offset_of!(N, mc), 27),
            (offset_of!(N, dpc), 28),
            (offset_of!(N, dps), 29),
            (offset_of!(N, nmic), 30),
            (offset_of!(N, rescap), 31),
            (offset_of!(N, fpi), 32),
            (offset_of!(N, dlfeat), 33),
            (offset_of!(N, nawun), 34),
            (offset_of!(N, nawupf), 36),
            (offset_of!(N, nacwu), 38),
            (offset_of!(N, nabsn), 40),
            (offset_of!(N, nabo), 42),
            (offset_of!(N, nabspf), 44),
            (offset_of!(N, noiob), 46),
            (offset_of!(N, nvmcap), 48),
            (offset_of!(N, npwg), 64),
            (offset_of!(N, npwa), 66),
            (offset_of!(N, npdg), 68),
            (offset_of!(N, npda), 70),
            (offset_of!(N, nows), 72),
            (offset_of!(N, mssrl), 74),
            (offset_of!(N, mcl), 76),
            (offset_of!(N, msrc), 80),
            (offset_of!(N, rsvd81), 81),
            (offset_of!(N, anagrpid), 92),
            (offset_of!(N, rsvd96), 96),
            (offset_of!(N, nsattr), 99),
            (offset_of!(N, nvmsetid), 100),
            (offset_of!(N, endgid), 102),
            (offset_of!(N, nguid), 104),
            (offset_of!(N, eui64), 120),
            (offset_of!(N, lbaf), 128),
            (offset_of!(N, rsvd384), 384),
            (offset_of!(N, vs), 3840),
        ];
        for (i, (got, want)) in offsets.into_iter().enumerate() {
            assert_eq!(got, want, "entry {i}");
        }
    }

    #[test]
    fn namespace_list_layout_and_iter() {
        assert_eq!(size_of::<ActiveNamespaceList>(), 4096);
        assert_eq!(ActiveNamespaceList::new_zeroed().iter().count(), 0);
        let list = ActiveNamespaceList::from_ids(&[1, 2, 7]);
        assert_eq!(list.iter().collect::<Vec<_>>(), [1, 2, 7]);
        assert_eq!(
            &list.as_bytes()[..12],
            &[1, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0]
        );
        let mut list = ActiveNamespaceList::new_zeroed();
        list.ids[0] = 3;
        list.ids[2] = 9; // after the terminator: ignored
        assert_eq!(list.iter().collect::<Vec<_>>(), [3]);
        let full: Vec<u32> = (1..=1024).collect();
        assert_eq!(ActiveNamespaceList::from_ids(&full).iter().count(), 1024);
    }

    #[test]
    fn strings() {
        let mut c = IdentifyController::new_zeroed();
        c.sn.copy_from_slice(b"  S4EWNX0R123456    ");
        c.mn[..12].copy_from_slice(b"QEMU NVMe Ct");
        c.fr.copy_from_slice(b"1.0\0\0\0\0\0");
        assert_eq!(c.serial(), "S4EWNX0R123456");
        assert_eq!(c.model(), "QEMU NVMe Ct");
        assert_eq!(c.firmware(), "1.0");
        c.set_model("isonvme simulated controller");
        assert_eq!(&c.mn[28..], &[b' '; 12]);
        assert_eq!(c.model(), "isonvme simulated controller");
        c.set_serial("SIM0001");
        c.set_firmware("0.1");
        assert_eq!(
            (c.serial().as_str(), c.firmware().as_str()),
            ("SIM0001", "0.1")
        );
        c.subnqn[..20].copy_from_slice(b"nqn.2014.08.org.test");
        assert_eq!(c.subsystem_nqn(), "nqn.2014.08.org.test");
    }

    #[test]
    #[should_panic(expected = "does not fit")]
    fn long_firmware_rejected() {
        IdentifyController::new_zeroed().set_firmware("123456789");
    }

    #[test]
    fn controller_helpers() {
        let mut c = IdentifyController::new_zeroed();
        assert_eq!(c.max_transfer_bytes(4096), None);
        c.mdts = 5;
        assert_eq!(c.max_transfer_bytes(4096), Some(128 * 1024));
        c.mdts = 0xFF;
        assert_eq!(c.max_transfer_bytes(4096), Some(usize::MAX));
        assert!(!c.supports_write_zeroes() && !c.supports_dsm() && !c.volatile_write_cache());
        c.oncs = 1 << 3;
        assert!(c.supports_write_zeroes() && !c.supports_dsm());
        c.oncs = 1 << 2;
        assert!(!c.supports_write_zeroes() && c.supports_dsm());
        c.vwc = 0b111;
        assert!(c.volatile_write_cache());
        c.ver = 0x0001_0400;
        assert_eq!(c.version().to_string(), "1.4.0");

        // Field placement survives a trip through the raw 4 KiB page.
        let mut raw = [0u8; 4096];
        raw[77] = 6;
        raw[520] = 0x0C;
        raw[525] = 1;
        raw[516..520].copy_from_slice(&32u32.to_le_bytes());
        let c = IdentifyController::read_from_bytes(&raw[..]).unwrap();
        assert_eq!((c.mdts, c.nn), (6, 32));
        assert!(c.supports_dsm() && c.supports_write_zeroes() && c.volatile_write_cache());
        assert_eq!(c.as_bytes(), &raw[..]);
        assert!(format!("{c:?}").contains("nn: 32"));
    }

    #[test]
    fn namespace_helpers() {
        let mut ns = IdentifyNamespace::new_zeroed();
        ns.nsze = 1 << 21;
        ns.nlbaf = 1;
        ns.lbaf[0] = LbaFormat::new(9);
        ns.lbaf[1] = LbaFormat::new(12);
        assert_eq!(ns.current_lba_format_index(), 0);
        assert_eq!(ns.lba_size(), 512);
        ns.flbas = 0x11; // format 1, metadata at end of data
        assert_eq!(ns.current_lba_format(), LbaFormat::new(12));
        assert_eq!(ns.lba_size(), 4096);
        assert_eq!(ns.size_in_blocks(), 1 << 21);
        assert_eq!(ns.size_in_bytes(), Some(8 << 30));

        // High index bits live in FLBAS 6:5.
        ns.flbas = 0b0110_0011;
        assert_eq!(ns.current_lba_format_index(), 0x33);
        ns.flbas = 0x10;
        ns.set_current_lba_format(0x2A);
        assert_eq!(ns.flbas, 0x10 | 0b0100_0000 | 0x0A);
        assert_eq!(ns.current_lba_format_index(), 0x2A);

        assert_eq!(LbaFormat::new(64).lba_size(), 0);
        assert_eq!(
            LbaFormat {
                ms: 8,
                lbads: 9,
                rp: 2
            }
            .lba_size(),
            512
        );

        let mut raw = [0u8; 4096];
        raw[26] = 1;
        raw[128 + 4 + 2] = 12;
        let ns = IdentifyNamespace::read_from_bytes(&raw[..]).unwrap();
        assert_eq!(ns.lba_size(), 4096);
    }
}
