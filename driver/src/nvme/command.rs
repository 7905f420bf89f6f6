//! Submission queue entries and the commands the driver issues
//! (NVMe Base Specification 2.0 section 4.2 and chapter 5; NVM Command Set
//! Specification 1.0 chapter 3).
//!
//! Constructors leave the command identifier at 0: the queue that submits
//! the entry owns the CID space and fills it in with
//! [`SubmissionEntry::set_cid`].

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A 64-byte submission queue entry, exactly as the controller reads it.
///
/// Fields are little-endian on the wire; the crate only builds for
/// little-endian targets, so native integers are the wire format.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SubmissionEntry {
    /// CDW0 bits 7:0: opcode.
    pub opcode: u8,
    /// CDW0 bits 15:8: FUSE (bits 1:0) and PSDT (bits 7:6).
    pub flags: u8,
    /// CDW0 bits 31:16: command identifier, unique within the SQ.
    pub cid: u16,
    /// Namespace identifier (0 when unused, `0xFFFF_FFFF` for all).
    pub nsid: u32,
    /// Command dword 2 (command specific).
    pub cdw2: u32,
    /// Command dword 3 (command specific).
    pub cdw3: u32,
    /// Metadata pointer.
    pub mptr: u64,
    /// Data pointer: PRP entry 1.
    pub prp1: u64,
    /// Data pointer: PRP entry 2 or PRP list pointer.
    pub prp2: u64,
    /// Command dword 10.
    pub cdw10: u32,
    /// Command dword 11.
    pub cdw11: u32,
    /// Command dword 12.
    pub cdw12: u32,
    /// Command dword 13.
    pub cdw13: u32,
    /// Command dword 14.
    pub cdw14: u32,
    /// Command dword 15.
    pub cdw15: u32,
}

const _: () = assert!(size_of::<SubmissionEntry>() == 64);

/// Namespace identifier that addresses every namespace (e.g. for Flush).
pub const NSID_ALL: u32 = 0xFFFF_FFFF;

/// Largest transfer one Read/Write/Write Zeroes can describe (16-bit 0-based NLB).
pub const MAX_BLOCKS_PER_COMMAND: u32 = 1 << 16;

/// Largest Dataset Management range count (8-bit 0-based NR).
pub const MAX_DSM_RANGES: u16 = 256;

impl SubmissionEntry {
    /// log2 of the entry size, the value for CC.IOSQES.
    pub const SIZE_LOG2: u8 = 6;

    /// `flags` mask of the FUSE field.
    pub const FUSE_MASK: u8 = 0b11;
    /// `flags` mask of the PSDT field (0 = PRPs, which is all this driver uses).
    pub const PSDT_MASK: u8 = 0b11 << 6;

    /// An entry with every field zero but the opcode.
    #[must_use]
    pub const fn with_opcode(opcode: u8) -> Self {
        Self {
            opcode,
            flags: 0,
            cid: 0,
            nsid: 0,
            cdw2: 0,
            cdw3: 0,
            mptr: 0,
            prp1: 0,
            prp2: 0,
            cdw10: 0,
            cdw11: 0,
            cdw12: 0,
            cdw13: 0,
            cdw14: 0,
            cdw15: 0,
        }
    }

    /// The opcode byte.
    #[must_use]
    pub const fn opcode(&self) -> u8 {
        self.opcode
    }

    /// The command identifier.
    #[must_use]
    pub const fn cid(&self) -> u16 {
        self.cid
    }

    /// Sets the command identifier just before submission.
    pub fn set_cid(&mut self, cid: u16) {
        self.cid = cid;
    }

    /// FUSE: 0 normal, 1 first / 2 second command of a fused pair.
    #[must_use]
    pub const fn fuse(&self) -> u8 {
        self.flags & Self::FUSE_MASK
    }

    /// PSDT: 0 = PRPs, 1/2 = SGLs.
    #[must_use]
    pub const fn psdt(&self) -> u8 {
        (self.flags & Self::PSDT_MASK) >> 6
    }

    /// Identify (admin 0x06) of `cns` into the 4 KiB buffer at `prp1`.
    ///
    /// For [`IdentifyCns::ACTIVE_NAMESPACE_LIST`] `nsid` is the starting
    /// point: only namespaces with a greater id are returned.
    #[must_use]
    pub const fn identify(cns: IdentifyCns, nsid: u32, prp1: u64) -> Self {
        Self {
            nsid,
            prp1,
            cdw10: cns.0 as u32,
            ..Self::with_opcode(AdminOpcode::Identify as u8)
        }
    }

    /// Set Features (admin 0x09) with a raw CDW11 value (current setting, not saved).
    #[must_use]
    pub const fn set_features(fid: FeatureId, cdw11: u32) -> Self {
        Self {
            cdw10: fid.0 as u32,
            cdw11,
            ..Self::with_opcode(AdminOpcode::SetFeatures as u8)
        }
    }

    /// Set Features / Number of Queues: request `nsq` I/O submission and
    /// `ncq` I/O completion queues (1-based counts, sent 0-based). The
    /// completion's DW0 holds what was granted; see [`num_queues_from_dw0`].
    ///
    /// # Panics
    /// If a count is 0 or 65 536 and above: neither can be encoded.
    #[must_use]
    pub const fn set_features_num_queues(nsq: u32, ncq: u32) -> Self {
        Self::set_features(FeatureId::NUMBER_OF_QUEUES, num_queues_to_dw(nsq, ncq))
    }

    /// Get Features (admin 0x0A) of the current value of `fid`.
    #[must_use]
    pub const fn get_features(fid: FeatureId) -> Self {
        Self {
            // SEL (bits 10:8) = 0: current value.
            cdw10: fid.0 as u32,
            ..Self::with_opcode(AdminOpcode::GetFeatures as u8)
        }
    }

    /// Create I/O Completion Queue (admin 0x05), physically contiguous at
    /// `prp1`, `size` entries, interrupting on MSI-X vector `iv` if enabled.
    ///
    /// # Panics
    /// If `size` is outside `2..=65536`.
    #[must_use]
    pub const fn create_io_cq(
        qid: u16,
        size: u32,
        prp1: u64,
        iv: u16,
        interrupts_enabled: bool,
    ) -> Self {
        Self {
            prp1,
            cdw10: queue_size_field(size) << 16 | qid as u32,
            // PC (bit 0) = 1: this driver only allocates contiguous queues,
            // which also satisfies CAP.CQR.
            cdw11: (iv as u32) << 16 | (interrupts_enabled as u32) << 1 | 1,
            ..Self::with_opcode(AdminOpcode::CreateIoCq as u8)
        }
    }

    /// Create I/O Submission Queue (admin 0x01), physically contiguous at
    /// `prp1`, `size` entries, completing to `cqid`.
    ///
    /// # Panics
    /// If `size` is outside `2..=65536`.
    #[must_use]
    pub const fn create_io_sq(
        qid: u16,
        size: u32,
        prp1: u64,
        cqid: u16,
        priority: QueuePriority,
    ) -> Self {
        Self {
            prp1,
            cdw10: queue_size_field(size) << 16 | qid as u32,
            // QPRIO only matters under weighted round robin; PC (bit 0) = 1.
            cdw11: (cqid as u32) << 16 | (priority as u32) << 1 | 1,
            ..Self::with_opcode(AdminOpcode::CreateIoSq as u8)
        }
    }

    /// Doorbell Buffer Config (admin 0x7C): the shadow doorbell buffer at
    /// `doorbells` and the EventIdx buffer at `event_indexes`, both page
    /// aligned and laid out like the doorbell registers.
    #[must_use]
    pub const fn doorbell_buffer_config(doorbells: u64, event_indexes: u64) -> Self {
        Self {
            prp1: doorbells,
            prp2: event_indexes,
            ..Self::with_opcode(AdminOpcode::DoorbellBufferConfig as u8)
        }
    }

    /// Delete I/O Submission Queue (admin 0x00).
    #[must_use]
    pub const fn delete_io_sq(qid: u16) -> Self {
        Self {
            cdw10: qid as u32,
            ..Self::with_opcode(AdminOpcode::DeleteIoSq as u8)
        }
    }

    /// Abort (admin 0x08): asks the controller to abort command `cid` of
    /// submission queue `sqid`. Completion dword 0 bit 0 is 0 when it did
    /// (the command then completes with Command Abort Requested).
    #[must_use]
    pub const fn abort(sqid: u16, cid: u16) -> Self {
        Self {
            cdw10: sqid as u32 | (cid as u32) << 16,
            ..Self::with_opcode(AdminOpcode::Abort as u8)
        }
    }

    /// Get Log Page (admin 0x02): `dwords` dwords (at most one 4 KiB page
    /// here) of log `lid` into `prp1`; `retain` keeps an asynchronous event
    /// outstanding (RAE), otherwise reading the log clears it.
    #[must_use]
    pub const fn get_log_page(lid: u8, dwords: u32, retain: bool, prp1: u64) -> Self {
        let numd = dwords.saturating_sub(1);
        Self {
            nsid: 0xFFFF_FFFF,
            prp1,
            cdw10: lid as u32 | (retain as u32) << 15 | (numd & 0xFFFF) << 16,
            cdw11: numd >> 16,
            ..Self::with_opcode(AdminOpcode::GetLogPage as u8)
        }
    }

    /// Asynchronous Event Request (admin 0x0C): completes when the
    /// controller has an event to report (dword 0: type, info, log page).
    #[must_use]
    pub const fn async_event_request() -> Self {
        Self::with_opcode(AdminOpcode::AsyncEventRequest as u8)
    }

    /// Delete I/O Completion Queue (admin 0x04). Its SQs must go first.
    #[must_use]
    pub const fn delete_io_cq(qid: u16) -> Self {
        Self {
            cdw10: qid as u32,
            ..Self::with_opcode(AdminOpcode::DeleteIoCq as u8)
        }
    }

    /// Read (I/O 0x02) of `nlb` blocks from `slba`.
    ///
    /// # Panics
    /// If `nlb` is outside `1..=65536`.
    #[must_use]
    pub const fn read(nsid: u32, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> Self {
        Self::rw(IoOpcode::Read, nsid, slba, nlb, prp1, prp2)
    }

    /// Write (I/O 0x01) of `nlb` blocks at `slba`.
    ///
    /// # Panics
    /// If `nlb` is outside `1..=65536`.
    #[must_use]
    pub const fn write(nsid: u32, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> Self {
        Self::rw(IoOpcode::Write, nsid, slba, nlb, prp1, prp2)
    }

    const fn rw(op: IoOpcode, nsid: u32, slba: u64, nlb: u32, prp1: u64, prp2: u64) -> Self {
        Self {
            nsid,
            prp1,
            prp2,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: nlb_field(nlb),
            ..Self::with_opcode(op as u8)
        }
    }

    /// Flush (I/O 0x00) of the volatile write cache; [`NSID_ALL`] flushes
    /// every namespace.
    #[must_use]
    pub const fn flush(nsid: u32) -> Self {
        Self {
            nsid,
            ..Self::with_opcode(IoOpcode::Flush as u8)
        }
    }

    /// Write Zeroes (I/O 0x08) of `nlb` blocks at `slba`; `deallocate` sets
    /// DEAC so the controller may unmap instead of writing.
    ///
    /// # Panics
    /// If `nlb` is outside `1..=65536`.
    #[must_use]
    pub const fn write_zeroes(nsid: u32, slba: u64, nlb: u32, deallocate: bool) -> Self {
        Self {
            nsid,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: (deallocate as u32) << 25 | nlb_field(nlb),
            ..Self::with_opcode(IoOpcode::WriteZeroes as u8)
        }
    }

    /// Dataset Management (I/O 0x09) over `nr_ranges` [`DsmRange`]s at
    /// `prp1`; `deallocate` sets AD (the TRIM/discard attribute).
    ///
    /// Only PRP1 is used, so the range list (at most 4 KiB) must not cross a
    /// memory page boundary.
    ///
    /// # Panics
    /// If `nr_ranges` is outside `1..=256`.
    #[must_use]
    pub const fn dataset_management(
        nsid: u32,
        nr_ranges: u16,
        prp1: u64,
        deallocate: bool,
    ) -> Self {
        assert!(
            nr_ranges >= 1 && nr_ranges <= MAX_DSM_RANGES,
            "Dataset Management takes 1..=256 ranges"
        );
        Self {
            nsid,
            prp1,
            cdw10: nr_ranges as u32 - 1,
            cdw11: (deallocate as u32) << 2,
            ..Self::with_opcode(IoOpcode::DatasetManagement as u8)
        }
    }
}

/// 0-based queue size field; 1-entry queues are invalid (a full queue
/// would be indistinguishable from an empty one).
const fn queue_size_field(size: u32) -> u32 {
    assert!(size >= 2 && size <= 1 << 16, "queue size must be 2..=65536");
    size - 1
}

/// 0-based NLB field (CDW12 bits 15:0).
const fn nlb_field(nlb: u32) -> u32 {
    assert!(
        nlb >= 1 && nlb <= MAX_BLOCKS_PER_COMMAND,
        "block count must be 1..=65536"
    );
    nlb - 1
}

/// Number of Queues dword (NSQR bits 15:0, NCQR bits 31:16, both 0-based)
/// from 1-based counts.
const fn num_queues_to_dw(nsq: u32, ncq: u32) -> u32 {
    assert!(
        nsq >= 1 && nsq <= 0xFFFF && ncq >= 1 && ncq <= 0xFFFF,
        "queue counts must be 1..=65535"
    );
    (ncq - 1) << 16 | (nsq - 1)
}

/// Decodes a Number of Queues completion DW0 into 1-based
/// `(submission, completion)` queue counts allocated by the controller.
#[must_use]
pub const fn num_queues_from_dw0(dw0: u32) -> (u32, u32) {
    ((dw0 & 0xFFFF) + 1, (dw0 >> 16) + 1)
}

/// Encodes 1-based allocated queue counts as a Number of Queues DW0 (what a
/// controller posts; same layout as the request).
///
/// # Panics
/// If a count is outside `1..=65535`.
#[must_use]
pub const fn num_queues_to_dw0(nsq: u32, ncq: u32) -> u32 {
    num_queues_to_dw(nsq, ncq)
}

/// Error for a byte that is not a known opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unknown opcode {0:#04x}")]
pub struct UnknownOpcode(pub u8);

/// Declares a `u8` opcode enum with a checked `TryFrom<u8>`.
macro_rules! opcode_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $val:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $val,)*
        }

        impl $name {
            /// Every opcode, in value order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];
        }

        impl TryFrom<u8> for $name {
            type Error = UnknownOpcode;

            fn try_from(op: u8) -> Result<Self, UnknownOpcode> {
                match op {
                    $($val => Ok(Self::$variant),)*
                    other => Err(UnknownOpcode(other)),
                }
            }
        }

        impl From<$name> for u8 {
            fn from(op: $name) -> u8 {
                op as u8
            }
        }
    };
}

opcode_enum! {
    /// Admin command opcodes the driver uses.
    AdminOpcode {
        /// Delete I/O Submission Queue.
        DeleteIoSq = 0x00,
        /// Create I/O Submission Queue.
        CreateIoSq = 0x01,
        /// Get Log Page.
        GetLogPage = 0x02,
        /// Delete I/O Completion Queue.
        DeleteIoCq = 0x04,
        /// Create I/O Completion Queue.
        CreateIoCq = 0x05,
        /// Identify.
        Identify = 0x06,
        /// Abort.
        Abort = 0x08,
        /// Set Features.
        SetFeatures = 0x09,
        /// Get Features.
        GetFeatures = 0x0A,
        /// Asynchronous Event Request.
        AsyncEventRequest = 0x0C,
        /// Doorbell Buffer Config (shadow doorbells, OACS bit 8).
        DoorbellBufferConfig = 0x7C,
    }
}

opcode_enum! {
    /// NVM command set I/O opcodes the driver uses.
    IoOpcode {
        /// Flush.
        Flush = 0x00,
        /// Write.
        Write = 0x01,
        /// Read.
        Read = 0x02,
        /// Write Zeroes.
        WriteZeroes = 0x08,
        /// Dataset Management.
        DatasetManagement = 0x09,
    }
}

/// Identify Controller or Namespace Structure selector (CDW10 bits 7:0).
///
/// A newtype rather than an enum because the specification defines dozens
/// of values and a simulator must be able to reject any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentifyCns(pub u8);

impl IdentifyCns {
    /// Identify Namespace (NVM command set) for `nsid`.
    pub const NAMESPACE: Self = Self(0x00);
    /// Identify Controller.
    pub const CONTROLLER: Self = Self(0x01);
    /// Active namespace ID list, ids above `nsid`.
    pub const ACTIVE_NAMESPACE_LIST: Self = Self(0x02);
}

/// Feature identifier for Get/Set Features (CDW10 bits 7:0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureId(pub u8);

impl FeatureId {
    /// Arbitration.
    pub const ARBITRATION: Self = Self(0x01);
    /// Power Management.
    pub const POWER_MANAGEMENT: Self = Self(0x02);
    /// Temperature Threshold.
    pub const TEMPERATURE_THRESHOLD: Self = Self(0x04);
    /// Volatile Write Cache.
    pub const VOLATILE_WRITE_CACHE: Self = Self(0x06);
    /// Number of Queues.
    pub const NUMBER_OF_QUEUES: Self = Self(0x07);
    /// Interrupt Coalescing.
    pub const INTERRUPT_COALESCING: Self = Self(0x08);
    /// Interrupt Vector Configuration.
    pub const INTERRUPT_VECTOR_CONFIG: Self = Self(0x09);
    /// Asynchronous Event Configuration.
    pub const ASYNC_EVENT_CONFIG: Self = Self(0x0B);
}

/// Submission queue priority (Create I/O SQ CDW11 QPRIO), used only under
/// weighted round robin arbitration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum QueuePriority {
    /// Urgent.
    Urgent = 0b00,
    /// High.
    High = 0b01,
    /// Medium; the natural default since round robin ignores it.
    #[default]
    Medium = 0b10,
    /// Low.
    Low = 0b11,
}

/// One Dataset Management range (16 bytes; up to 256 per command).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct DsmRange {
    /// Context attributes (access hints); 0 for none.
    pub context_attributes: u32,
    /// Length in logical blocks (1-based, unlike the command NLB fields).
    pub length: u32,
    /// Starting LBA.
    pub slba: u64,
}

const _: () = assert!(size_of::<DsmRange>() == 16);

impl DsmRange {
    /// A range of `length` blocks at `slba` with no context attributes.
    #[must_use]
    pub const fn new(slba: u64, length: u32) -> Self {
        Self {
            context_attributes: 0,
            length,
            slba,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn submission_entry_layout() {
        assert_eq!(size_of::<SubmissionEntry>(), 64);
        assert_eq!(1 << SubmissionEntry::SIZE_LOG2, 64);
        assert_eq!(offset_of!(SubmissionEntry, opcode), 0);
        assert_eq!(offset_of!(SubmissionEntry, flags), 1);
        assert_eq!(offset_of!(SubmissionEntry, cid), 2);
        assert_eq!(offset_of!(SubmissionEntry, nsid), 4);
        assert_eq!(offset_of!(SubmissionEntry, cdw2), 8);
        assert_eq!(offset_of!(SubmissionEntry, cdw3), 12);
        assert_eq!(offset_of!(SubmissionEntry, mptr), 16);
        assert_eq!(offset_of!(SubmissionEntry, prp1), 24);
        assert_eq!(offset_of!(SubmissionEntry, prp2), 32);
        assert_eq!(offset_of!(SubmissionEntry, cdw10), 40);
        assert_eq!(offset_of!(SubmissionEntry, cdw11), 44);
        assert_eq!(offset_of!(SubmissionEntry, cdw12), 48);
        assert_eq!(offset_of!(SubmissionEntry, cdw13), 52);
        assert_eq!(offset_of!(SubmissionEntry, cdw14), 56);
        assert_eq!(offset_of!(SubmissionEntry, cdw15), 60);
    }

    #[test]
    fn dsm_range_layout() {
        assert_eq!(size_of::<DsmRange>(), 16);
        assert_eq!(offset_of!(DsmRange, context_attributes), 0);
        assert_eq!(offset_of!(DsmRange, length), 4);
        assert_eq!(offset_of!(DsmRange, slba), 8);
        let r = DsmRange::new(0x1122_3344_5566_7788, 8);
        assert_eq!(
            r.as_bytes(),
            &[0, 0, 0, 0, 8, 0, 0, 0, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]
        );
    }

    #[test]
    fn cdw0_bytes() {
        let mut e = SubmissionEntry::read(1, 0, 1, 0, 0);
        e.set_cid(0xBEEF);
        e.flags = 0b0100_0001;
        let b = e.as_bytes();
        assert_eq!(&b[..4], &[0x02, 0x41, 0xEF, 0xBE]);
        assert_eq!(
            (e.opcode(), e.cid(), e.fuse(), e.psdt()),
            (0x02, 0xBEEF, 1, 1)
        );
        let back = SubmissionEntry::read_from_bytes(b).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn opcodes() {
        let admin = [
            (AdminOpcode::DeleteIoSq, 0x00),
            (AdminOpcode::CreateIoSq, 0x01),
            (AdminOpcode::GetLogPage, 0x02),
            (AdminOpcode::DeleteIoCq, 0x04),
            (AdminOpcode::CreateIoCq, 0x05),
            (AdminOpcode::Identify, 0x06),
            (AdminOpcode::Abort, 0x08),
            (AdminOpcode::SetFeatures, 0x09),
            (AdminOpcode::GetFeatures, 0x0A),
            (AdminOpcode::AsyncEventRequest, 0x0C),
            (AdminOpcode::DoorbellBufferConfig, 0x7C),
        ];
        assert_eq!(admin.len(), AdminOpcode::ALL.len());
        for (op, v) in admin {
            assert_eq!(u8::from(op), v);
            assert_eq!(AdminOpcode::try_from(v), Ok(op));
        }
        let io = [
            (IoOpcode::Flush, 0x00),
            (IoOpcode::Write, 0x01),
            (IoOpcode::Read, 0x02),
            (IoOpcode::WriteZeroes, 0x08),
            (IoOpcode::DatasetManagement, 0x09),
        ];
        assert_eq!(io.len(), IoOpcode::ALL.len());
        for (op, v) in io {
            assert_eq!(u8::from(op), v);
            assert_eq!(IoOpcode::try_from(v), Ok(op));
        }
        assert_eq!(AdminOpcode::try_from(0x03), Err(UnknownOpcode(0x03)));
        assert_eq!(IoOpcode::try_from(0x7F), Err(UnknownOpcode(0x7F)));
        assert_eq!(UnknownOpcode(0x7F).to_string(), "unknown opcode 0x7f");
    }

    #[test]
    fn identify() {
        let e = SubmissionEntry::identify(IdentifyCns::CONTROLLER, 0, 0x1000);
        assert_eq!((e.opcode, e.nsid, e.prp1, e.cdw10), (0x06, 0, 0x1000, 0x01));
        let e = SubmissionEntry::identify(IdentifyCns::NAMESPACE, 1, 0x2000);
        assert_eq!((e.nsid, e.cdw10), (1, 0x00));
        let e = SubmissionEntry::identify(IdentifyCns::ACTIVE_NAMESPACE_LIST, 0, 0x3000);
        assert_eq!(e.cdw10, 0x02);
        assert_eq!(e.cid, 0);
    }

    #[test]
    fn features() {
        let e = SubmissionEntry::set_features_num_queues(4, 8);
        assert_eq!(e.opcode, 0x09);
        assert_eq!(e.cdw10, 0x07);
        assert_eq!(e.cdw11, 7 << 16 | 3);
        assert_eq!(num_queues_from_dw0(e.cdw11), (4, 8));
        assert_eq!(num_queues_from_dw0(num_queues_to_dw0(64, 65)), (64, 65));
        assert_eq!(num_queues_from_dw0(0xFFFF_FFFF), (65536, 65536));
        let e = SubmissionEntry::get_features(FeatureId::VOLATILE_WRITE_CACHE);
        assert_eq!((e.opcode, e.cdw10, e.cdw11), (0x0A, 0x06, 0));
        let e = SubmissionEntry::set_features(FeatureId::VOLATILE_WRITE_CACHE, 1);
        assert_eq!((e.opcode, e.cdw10, e.cdw11), (0x09, 0x06, 1));
    }

    #[test]
    #[should_panic(expected = "queue counts")]
    fn num_queues_rejects_zero() {
        let _ = SubmissionEntry::set_features_num_queues(0, 1);
    }

    #[test]
    fn create_queues() {
        let e = SubmissionEntry::create_io_cq(3, 1024, 0xdead_0000, 5, true);
        assert_eq!(e.opcode, 0x05);
        assert_eq!(e.prp1, 0xdead_0000);
        assert_eq!(e.cdw10, (1024 - 1) << 16 | 3);
        assert_eq!(e.cdw11, 5 << 16 | 1 << 1 | 1);
        let e = SubmissionEntry::create_io_cq(1, 65536, 0, 0, false);
        assert_eq!(e.cdw10, 0xFFFF_0001);
        assert_eq!(e.cdw11, 1);

        let e = SubmissionEntry::create_io_sq(3, 256, 0xbeef_0000, 2, QueuePriority::Low);
        assert_eq!(e.opcode, 0x01);
        assert_eq!(e.prp1, 0xbeef_0000);
        assert_eq!(e.cdw10, 255 << 16 | 3);
        assert_eq!(e.cdw11, 2 << 16 | 0b11 << 1 | 1);
        let e = SubmissionEntry::create_io_sq(1, 2, 0, 1, QueuePriority::Urgent);
        assert_eq!(e.cdw11, 1 << 16 | 1);

        let e = SubmissionEntry::delete_io_sq(7);
        assert_eq!((e.opcode, e.cdw10), (0x00, 7));
        let e = SubmissionEntry::delete_io_cq(7);
        assert_eq!((e.opcode, e.cdw10), (0x04, 7));
    }

    #[test]
    #[should_panic(expected = "queue size")]
    fn one_entry_queue_rejected() {
        let _ = SubmissionEntry::create_io_cq(1, 1, 0, 0, false);
    }

    #[test]
    fn read_write() {
        let slba = 0x0000_0012_3456_789A;
        let e = SubmissionEntry::read(1, slba, 8, 0x1000, 0x2000);
        assert_eq!(e.opcode, 0x02);
        assert_eq!(e.nsid, 1);
        assert_eq!((e.cdw10, e.cdw11), (0x3456_789A, 0x12));
        assert_eq!(e.cdw12, 7);
        assert_eq!((e.prp1, e.prp2), (0x1000, 0x2000));
        let e = SubmissionEntry::write(2, slba, 65536, 0x1000, 0);
        assert_eq!(e.opcode, 0x01);
        assert_eq!((e.nsid, e.cdw10, e.cdw11), (2, 0x3456_789A, 0x12));
        assert_eq!(e.cdw12, 0xFFFF);
    }

    #[test]
    #[should_panic(expected = "block count")]
    fn zero_blocks_rejected() {
        let _ = SubmissionEntry::read(1, 0, 0, 0, 0);
    }

    #[test]
    fn flush_zeroes_dsm() {
        let e = SubmissionEntry::flush(NSID_ALL);
        assert_eq!(
            e,
            SubmissionEntry {
                nsid: NSID_ALL,
                ..Default::default()
            }
        );

        let e = SubmissionEntry::write_zeroes(1, 1 << 32 | 5, 16, true);
        assert_eq!(e.opcode, 0x08);
        assert_eq!((e.cdw10, e.cdw11), (5, 1));
        assert_eq!(e.cdw12, 1 << 25 | 15);
        assert_eq!(SubmissionEntry::write_zeroes(1, 0, 1, false).cdw12, 0);

        let e = SubmissionEntry::dataset_management(1, 256, 0x4000, true);
        assert_eq!(e.opcode, 0x09);
        assert_eq!((e.nsid, e.prp1), (1, 0x4000));
        assert_eq!(e.cdw10, 255);
        assert_eq!(e.cdw11, 1 << 2);
        assert_eq!(SubmissionEntry::dataset_management(1, 1, 0, false).cdw11, 0);
    }
}
