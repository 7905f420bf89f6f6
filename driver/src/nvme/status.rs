//! Completion status decoding (NVMe Base Specification 2.0, section 4.6.1).
//!
//! [`Status`] is the raw 15-bit status field of a completion entry (the
//! phase tag already removed). [`NvmeStatus`] is its typed, error-ready form:
//! the driver returns it for failed commands, and a simulator turns one back
//! into a status field with [`NvmeStatus::to_status_field`] to post any
//! error.

use core::fmt;

/// The 15-bit status field of a completion entry (DW3 bits 31:17).
///
/// Layout: SC bits 7:0, SCT bits 10:8, CRD bits 12:11, M bit 13, DNR bit 14.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

impl Status {
    /// Successful completion (SCT 0, SC 0, no flags).
    pub const SUCCESS: Self = Self(0);
    /// Status Code Type: generic command status.
    pub const SCT_GENERIC: u8 = 0;
    /// Status Code Type: command specific status.
    pub const SCT_COMMAND_SPECIFIC: u8 = 1;
    /// Status Code Type: media and data integrity errors.
    pub const SCT_MEDIA: u8 = 2;
    /// Status Code Type: path related status.
    pub const SCT_PATH: u8 = 3;
    /// Status Code Type: vendor specific.
    pub const SCT_VENDOR: u8 = 7;

    /// Composes a status from its type and code, with no flags set.
    #[must_use]
    pub const fn new(sct: u8, sc: u8) -> Self {
        Self(((sct as u16 & 0x7) << 8) | sc as u16)
    }

    /// Status Code (SC), interpreted according to [`Status::sct`].
    #[must_use]
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }

    /// Status Code Type (SCT).
    #[must_use]
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }

    /// Command Retry Delay: which CRDT field (1-3) of Identify Controller to
    /// wait before retrying; 0 means retry immediately.
    #[must_use]
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }

    /// More: further detail is available in the Error Information log page.
    #[must_use]
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// Do Not Retry: the same command would fail again.
    #[must_use]
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// True for a successful completion; the flags do not matter.
    #[must_use]
    pub const fn is_success(self) -> bool {
        self.0 & 0x7FF == 0
    }

    /// Sets CRD (2 bits).
    #[must_use]
    pub const fn with_crd(self, crd: u8) -> Self {
        Self((self.0 & !(0x3 << 11)) | ((crd as u16 & 0x3) << 11))
    }

    /// Sets M (more).
    #[must_use]
    pub const fn with_more(self, more: bool) -> Self {
        Self((self.0 & !(1 << 13)) | ((more as u16) << 13))
    }

    /// Sets DNR (do not retry).
    #[must_use]
    pub const fn with_dnr(self, dnr: bool) -> Self {
        Self((self.0 & !(1 << 14)) | ((dnr as u16) << 14))
    }

    /// `Ok(())` on success, otherwise the typed error.
    pub fn to_result(self) -> Result<(), NvmeStatus> {
        NvmeStatus::from_status(self).map_or(Ok(()), Err)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Status")
            .field("sct", &self.sct())
            .field("sc", &format_args!("{:#04x}", self.sc()))
            .field("crd", &self.crd())
            .field("more", &self.more())
            .field("dnr", &self.dnr())
            .finish()
    }
}

/// Declares a status code enum: named variants plus `Other(u8)`, with the
/// conversions and messages generated from a single table so they can't
/// drift apart.
macro_rules! status_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $kind:literal {
            $($variant:ident = $code:literal => $msg:literal,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                #[doc = concat!($msg, ".")]
                $variant,
            )*
            /// A status code with no named variant. Holding a named code here
            /// is allowed but decoding canonicalises it to the named variant.
            Other(u8),
        }

        impl $name {
            /// Every named variant, in code order.
            pub const NAMED: &'static [Self] = &[$(Self::$variant),*];

            /// Decodes a status code (SC); unnamed codes become `Other`.
            #[must_use]
            pub const fn from_code(sc: u8) -> Self {
                match sc {
                    $($code => Self::$variant,)*
                    other => Self::Other(other),
                }
            }

            /// The status code (SC) value.
            #[must_use]
            pub const fn code(self) -> u8 {
                match self {
                    $(Self::$variant => $code,)*
                    Self::Other(sc) => sc,
                }
            }

            /// The specification's description; `None` for `Other`.
            #[must_use]
            pub const fn description(self) -> Option<&'static str> {
                match self {
                    $(Self::$variant => Some($msg),)*
                    Self::Other(_) => None,
                }
            }
        }

        impl From<u8> for $name {
            fn from(sc: u8) -> Self {
                Self::from_code(sc)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.description() {
                    Some(msg) => f.write_str(msg),
                    None => write!(f, concat!($kind, " status {:#04x}"), self.code()),
                }
            }
        }
    };
}

status_enum! {
    /// Generic command status (SCT 0), including the NVM command set's
    /// codes from 0x80.
    GenericStatus, "generic command" {
        InvalidOpcode = 0x01 => "invalid command opcode",
        InvalidField = 0x02 => "invalid field in command",
        CommandIdConflict = 0x03 => "command identifier conflict",
        DataTransferError = 0x04 => "data transfer error",
        AbortedPowerLoss = 0x05 => "command aborted due to power loss notification",
        InternalError = 0x06 => "internal error",
        AbortRequested = 0x07 => "command abort requested",
        AbortedSqDeletion = 0x08 => "command aborted due to SQ deletion",
        AbortedFailedFused = 0x09 => "command aborted due to failed fused command",
        AbortedMissingFused = 0x0A => "command aborted due to missing fused command",
        InvalidNamespace = 0x0B => "invalid namespace or format",
        CommandSequenceError = 0x0C => "command sequence error",
        InvalidSglDescriptor = 0x0D => "invalid SGL segment descriptor",
        InvalidSglCount = 0x0E => "invalid number of SGL descriptors",
        InvalidDataSglLength = 0x0F => "data SGL length invalid",
        InvalidMetadataSglLength = 0x10 => "metadata SGL length invalid",
        InvalidSglType = 0x11 => "SGL descriptor type invalid",
        InvalidCmbUse = 0x12 => "invalid use of controller memory buffer",
        InvalidPrpOffset = 0x13 => "PRP offset invalid",
        AtomicWriteUnitExceeded = 0x14 => "atomic write unit exceeded",
        OperationDenied = 0x15 => "operation denied",
        InvalidSglOffset = 0x16 => "SGL offset invalid",
        HostIdInconsistentFormat = 0x18 => "host identifier inconsistent format",
        KeepAliveExpired = 0x19 => "keep alive timer expired",
        KeepAliveTimeoutInvalid = 0x1A => "keep alive timeout invalid",
        AbortedPreempt = 0x1B => "command aborted due to preempt and abort",
        SanitizeFailed = 0x1C => "sanitize failed",
        SanitizeInProgress = 0x1D => "sanitize in progress",
        InvalidSglGranularity = 0x1E => "SGL data block granularity invalid",
        NotSupportedForCmbQueue = 0x1F => "command not supported for queue in CMB",
        NamespaceWriteProtected = 0x20 => "namespace is write protected",
        CommandInterrupted = 0x21 => "command interrupted",
        TransientTransportError = 0x22 => "transient transport error",
        ProhibitedByLockdown = 0x23 => "command prohibited by command and feature lockdown",
        AdminMediaNotReady = 0x24 => "admin command media not ready",
        LbaOutOfRange = 0x80 => "LBA out of range",
        CapacityExceeded = 0x81 => "capacity exceeded",
        NamespaceNotReady = 0x82 => "namespace not ready",
        ReservationConflict = 0x83 => "reservation conflict",
        FormatInProgress = 0x84 => "format in progress",
    }
}

status_enum! {
    /// Command specific status (SCT 1). Codes from 0x80 are the NVM command
    /// set's I/O command meanings; admin commands of other command sets
    /// reuse those values differently.
    CommandSpecificStatus, "command specific" {
        CompletionQueueInvalid = 0x00 => "completion queue invalid",
        InvalidQueueIdentifier = 0x01 => "invalid queue identifier",
        InvalidQueueSize = 0x02 => "invalid queue size",
        AbortLimitExceeded = 0x03 => "abort command limit exceeded",
        AsyncEventLimitExceeded = 0x05 => "asynchronous event request limit exceeded",
        InvalidFirmwareSlot = 0x06 => "invalid firmware slot",
        InvalidFirmwareImage = 0x07 => "invalid firmware image",
        InvalidInterruptVector = 0x08 => "invalid interrupt vector",
        InvalidLogPage = 0x09 => "invalid log page",
        InvalidFormat = 0x0A => "invalid format",
        FirmwareNeedsConventionalReset = 0x0B => "firmware activation requires conventional reset",
        InvalidQueueDeletion = 0x0C => "invalid queue deletion",
        FeatureIdNotSaveable = 0x0D => "feature identifier not saveable",
        FeatureNotChangeable = 0x0E => "feature not changeable",
        FeatureNotNamespaceSpecific = 0x0F => "feature not namespace specific",
        FirmwareNeedsSubsystemReset = 0x10 => "firmware activation requires NVM subsystem reset",
        FirmwareNeedsControllerReset = 0x11 => "firmware activation requires controller level reset",
        FirmwareMaxTimeViolation = 0x12 => "firmware activation requires maximum time violation",
        FirmwareActivationProhibited = 0x13 => "firmware activation prohibited",
        OverlappingRange = 0x14 => "overlapping range",
        ConflictingAttributes = 0x80 => "conflicting attributes",
        InvalidProtectionInformation = 0x81 => "invalid protection information",
        WriteToReadOnlyRange = 0x82 => "attempted write to read only range",
    }
}

status_enum! {
    /// Media and data integrity errors (SCT 2).
    MediaStatus, "media error" {
        WriteFault = 0x80 => "write fault",
        UnrecoveredReadError = 0x81 => "unrecovered read error",
        EndToEndGuardCheck = 0x82 => "end-to-end guard check error",
        EndToEndApplicationTagCheck = 0x83 => "end-to-end application tag check error",
        EndToEndReferenceTagCheck = 0x84 => "end-to-end reference tag check error",
        CompareFailure = 0x85 => "compare failure",
        AccessDenied = 0x86 => "access denied",
        DeallocatedOrUnwrittenBlock = 0x87 => "deallocated or unwritten logical block",
        EndToEndStorageTagCheck = 0x88 => "end-to-end storage tag check error",
    }
}

/// A non-success status code, typed by its Status Code Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// SCT 0.
    Generic(GenericStatus),
    /// SCT 1.
    CommandSpecific(CommandSpecificStatus),
    /// SCT 2.
    Media(MediaStatus),
    /// SCT 3, path related; only multipath/fabrics setups report these, so
    /// the code is kept raw.
    Path(u8),
    /// SCT 7, vendor specific; meaningless without the vendor's manual.
    Vendor(u8),
    /// SCT 4-6, reserved by the specification.
    Reserved {
        /// The reserved Status Code Type (4, 5 or 6).
        sct: u8,
        /// The status code.
        sc: u8,
    },
}

impl StatusCode {
    /// Decodes a type and code. SCT 0 / SC 0 gives `Generic(Other(0))`;
    /// use [`NvmeStatus::from_status`] to filter out success.
    #[must_use]
    pub const fn from_parts(sct: u8, sc: u8) -> Self {
        match sct & 0x7 {
            Status::SCT_GENERIC => Self::Generic(GenericStatus::from_code(sc)),
            Status::SCT_COMMAND_SPECIFIC => {
                Self::CommandSpecific(CommandSpecificStatus::from_code(sc))
            }
            Status::SCT_MEDIA => Self::Media(MediaStatus::from_code(sc)),
            Status::SCT_PATH => Self::Path(sc),
            Status::SCT_VENDOR => Self::Vendor(sc),
            sct => Self::Reserved { sct, sc },
        }
    }

    /// Status Code Type (SCT).
    #[must_use]
    pub const fn sct(self) -> u8 {
        match self {
            Self::Generic(_) => Status::SCT_GENERIC,
            Self::CommandSpecific(_) => Status::SCT_COMMAND_SPECIFIC,
            Self::Media(_) => Status::SCT_MEDIA,
            Self::Path(_) => Status::SCT_PATH,
            Self::Vendor(_) => Status::SCT_VENDOR,
            Self::Reserved { sct, .. } => sct & 0x7,
        }
    }

    /// Status Code (SC).
    #[must_use]
    pub const fn sc(self) -> u8 {
        match self {
            Self::Generic(s) => s.code(),
            Self::CommandSpecific(s) => s.code(),
            Self::Media(s) => s.code(),
            Self::Path(sc) | Self::Vendor(sc) | Self::Reserved { sc, .. } => sc,
        }
    }

    /// The status field (no flags other than DNR) a controller would post.
    #[must_use]
    pub const fn to_status_field(self, dnr: bool) -> u16 {
        Status::new(self.sct(), self.sc()).with_dnr(dnr).0
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Generic(s) => s.fmt(f),
            Self::CommandSpecific(s) => s.fmt(f),
            Self::Media(s) => s.fmt(f),
            Self::Path(0x70) => f.write_str("host pathing error"),
            Self::Path(0x71) => f.write_str("command aborted by host"),
            Self::Path(sc) => write!(f, "path related status {sc:#04x}"),
            Self::Vendor(sc) => write!(f, "vendor specific status {sc:#04x}"),
            Self::Reserved { sct, sc } => write!(f, "reserved status type {sct} code {sc:#04x}"),
        }
    }
}

impl From<GenericStatus> for StatusCode {
    fn from(s: GenericStatus) -> Self {
        Self::Generic(s)
    }
}

impl From<CommandSpecificStatus> for StatusCode {
    fn from(s: CommandSpecificStatus) -> Self {
        Self::CommandSpecific(s)
    }
}

impl From<MediaStatus> for StatusCode {
    fn from(s: MediaStatus) -> Self {
        Self::Media(s)
    }
}

/// A failed command's status: the typed code plus the completion's flags.
///
/// Displays as e.g. `LBA out of range (sct 0, sc 0x80, do not retry)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub struct NvmeStatus {
    /// What went wrong.
    pub code: StatusCode,
    /// Command Retry Delay selector (0-3).
    pub crd: u8,
    /// More detail is in the Error Information log page.
    pub more: bool,
    /// Do Not Retry: the same command would fail again.
    pub dnr: bool,
}

impl NvmeStatus {
    /// A status with the given code and no flags.
    #[must_use]
    pub const fn new(code: StatusCode) -> Self {
        Self {
            code,
            crd: 0,
            more: false,
            dnr: false,
        }
    }

    /// Sets DNR.
    #[must_use]
    pub const fn with_dnr(self, dnr: bool) -> Self {
        Self { dnr, ..self }
    }

    /// Sets M (more).
    #[must_use]
    pub const fn with_more(self, more: bool) -> Self {
        Self { more, ..self }
    }

    /// Sets CRD (0-3).
    #[must_use]
    pub const fn with_crd(self, crd: u8) -> Self {
        Self { crd, ..self }
    }

    /// Decodes a status field; `None` for success.
    #[must_use]
    pub const fn from_status(status: Status) -> Option<Self> {
        if status.is_success() {
            return None;
        }
        Some(Self {
            code: StatusCode::from_parts(status.sct(), status.sc()),
            crd: status.crd(),
            more: status.more(),
            dnr: status.dnr(),
        })
    }

    /// Encodes back into a [`Status`], flags included.
    #[must_use]
    pub const fn to_status(&self) -> Status {
        Status::new(self.code.sct(), self.code.sc())
            .with_crd(self.crd)
            .with_more(self.more)
            .with_dnr(self.dnr)
    }

    /// The 15-bit status field to post in a completion entry, flags
    /// included. For a code alone use [`StatusCode::to_status_field`].
    #[must_use]
    pub const fn to_status_field(&self) -> u16 {
        self.to_status().0
    }

    /// Command Aborted By Host (path related status 0x71, Do Not Retry):
    /// what the driver itself completes a command with when it gives up on
    /// it (the device was removed, or a reset left it past its retry
    /// budget), as the kernel's driver does.
    pub const HOST_ABORTED: NvmeStatus = NvmeStatus {
        code: StatusCode::Path(0x71),
        crd: 0,
        more: false,
        dnr: true,
    };

    /// Whether retrying the identical command may succeed.
    #[must_use]
    pub const fn is_retryable(&self) -> bool {
        !self.dnr
    }
}

impl fmt::Display for NvmeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sct {}, sc {:#04x}",
            self.code,
            self.code.sct(),
            self.code.sc()
        )?;
        if self.crd != 0 {
            write!(f, ", retry delay {}", self.crd)?;
        }
        if self.more {
            f.write_str(", more in error log")?;
        }
        if self.dnr {
            f.write_str(", do not retry")?;
        }
        f.write_str(")")
    }
}

impl From<StatusCode> for NvmeStatus {
    fn from(code: StatusCode) -> Self {
        Self::new(code)
    }
}

impl From<GenericStatus> for NvmeStatus {
    fn from(s: GenericStatus) -> Self {
        Self::new(s.into())
    }
}

impl From<CommandSpecificStatus> for NvmeStatus {
    fn from(s: CommandSpecificStatus) -> Self {
        Self::new(s.into())
    }
}

impl From<MediaStatus> for NvmeStatus {
    fn from(s: MediaStatus) -> Self {
        Self::new(s.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_named() -> Vec<StatusCode> {
        let mut all: Vec<StatusCode> = Vec::new();
        all.extend(GenericStatus::NAMED.iter().map(|&s| StatusCode::from(s)));
        all.extend(
            CommandSpecificStatus::NAMED
                .iter()
                .map(|&s| StatusCode::from(s)),
        );
        all.extend(MediaStatus::NAMED.iter().map(|&s| StatusCode::from(s)));
        all
    }

    #[test]
    fn field_layout() {
        let s = Status(0x7FFF);
        assert_eq!((s.sc(), s.sct(), s.crd()), (0xFF, 7, 3));
        assert!(s.more() && s.dnr());
        let s = Status::new(Status::SCT_MEDIA, 0x81)
            .with_crd(2)
            .with_more(true)
            .with_dnr(true);
        assert_eq!(s.0, 0x4000 | 0x2000 | 2 << 11 | 2 << 8 | 0x81);
        assert!(!s.is_success());
        assert!(Status::SUCCESS.is_success());
        // Flags alone do not make a failure.
        assert!(Status::SUCCESS.with_more(true).is_success());
    }

    #[test]
    fn every_named_variant_round_trips() {
        let all = all_named();
        assert!(all.len() > 60);
        for code in all {
            for dnr in [false, true] {
                let field = code.to_status_field(dnr);
                let back = NvmeStatus::from_status(Status(field)).expect("not success");
                assert_eq!(back.code, code);
                assert_eq!(back.dnr, dnr);
                assert!(!back.more);
                assert_eq!(back.to_status_field(), field);
                assert_eq!(NvmeStatus::new(code).with_dnr(dnr).to_status_field(), field);
            }
        }
    }

    #[test]
    fn named_codes_are_unique_and_decode_to_themselves() {
        fn check<T: Copy + PartialEq + fmt::Debug>(
            named: &[T],
            code: fn(T) -> u8,
            from: fn(u8) -> T,
        ) {
            let mut seen = std::collections::HashSet::new();
            for &v in named {
                assert!(seen.insert(code(v)), "duplicate code for {v:?}");
                assert_eq!(from(code(v)), v);
            }
        }
        check(
            GenericStatus::NAMED,
            GenericStatus::code,
            GenericStatus::from_code,
        );
        check(
            CommandSpecificStatus::NAMED,
            CommandSpecificStatus::code,
            CommandSpecificStatus::from_code,
        );
        check(
            MediaStatus::NAMED,
            MediaStatus::code,
            MediaStatus::from_code,
        );
    }

    #[test]
    fn spec_values() {
        use CommandSpecificStatus as C;
        use GenericStatus as G;
        use MediaStatus as M;
        let generic = [
            (G::InvalidOpcode, 0x01),
            (G::InvalidField, 0x02),
            (G::CommandIdConflict, 0x03),
            (G::DataTransferError, 0x04),
            (G::AbortedPowerLoss, 0x05),
            (G::InternalError, 0x06),
            (G::AbortRequested, 0x07),
            (G::AbortedSqDeletion, 0x08),
            (G::InvalidNamespace, 0x0B),
            (G::CommandSequenceError, 0x0C),
            (G::InvalidSglDescriptor, 0x0D),
            (G::InvalidPrpOffset, 0x13),
            (G::LbaOutOfRange, 0x80),
            (G::CapacityExceeded, 0x81),
            (G::NamespaceNotReady, 0x82),
        ];
        for (v, c) in generic {
            assert_eq!(v.code(), c, "{v:?}");
        }
        let specific = [
            (C::CompletionQueueInvalid, 0x00),
            (C::InvalidQueueIdentifier, 0x01),
            (C::InvalidQueueSize, 0x02),
            (C::AbortLimitExceeded, 0x03),
            (C::AsyncEventLimitExceeded, 0x05),
            (C::InvalidFirmwareSlot, 0x06),
            (C::InvalidInterruptVector, 0x08),
            (C::InvalidLogPage, 0x09),
            (C::InvalidFormat, 0x0A),
            (C::InvalidQueueDeletion, 0x0C),
            (C::FeatureIdNotSaveable, 0x0D),
            (C::ConflictingAttributes, 0x80),
            (C::InvalidProtectionInformation, 0x81),
            (C::WriteToReadOnlyRange, 0x82),
        ];
        for (v, c) in specific {
            assert_eq!(v.code(), c, "{v:?}");
        }
        let media = [
            (M::WriteFault, 0x80),
            (M::UnrecoveredReadError, 0x81),
            (M::EndToEndGuardCheck, 0x82),
            (M::AccessDenied, 0x86),
            (M::DeallocatedOrUnwrittenBlock, 0x87),
        ];
        for (v, c) in media {
            assert_eq!(v.code(), c, "{v:?}");
        }
    }

    #[test]
    fn raw_types_round_trip() {
        for code in [
            StatusCode::Path(0x71),
            StatusCode::Vendor(0xC0),
            StatusCode::Reserved { sct: 5, sc: 0x10 },
            StatusCode::Generic(GenericStatus::Other(0x7F)),
            StatusCode::CommandSpecific(CommandSpecificStatus::Other(0x04)),
            StatusCode::Media(MediaStatus::Other(0x00)),
        ] {
            let st = NvmeStatus::new(code)
                .with_crd(1)
                .with_more(true)
                .with_dnr(true);
            assert_eq!(NvmeStatus::from_status(st.to_status()), Some(st));
        }
        // `Other` holding a named code canonicalises.
        let field = StatusCode::Generic(GenericStatus::Other(0x80)).to_status_field(false);
        assert_eq!(
            NvmeStatus::from_status(Status(field)).unwrap().code,
            StatusCode::Generic(GenericStatus::LbaOutOfRange)
        );
    }

    #[test]
    fn success_is_none() {
        assert_eq!(NvmeStatus::from_status(Status::SUCCESS), None);
        assert_eq!(
            NvmeStatus::from_status(Status::SUCCESS.with_dnr(true)),
            None
        );
        assert_eq!(Status::SUCCESS.to_result(), Ok(()));
        let err = Status::new(0, 0x02).to_result().unwrap_err();
        assert_eq!(err.code, StatusCode::Generic(GenericStatus::InvalidField));
    }

    #[test]
    fn display() {
        let e = NvmeStatus::from(GenericStatus::LbaOutOfRange).with_dnr(true);
        assert_eq!(
            e.to_string(),
            "LBA out of range (sct 0, sc 0x80, do not retry)"
        );
        let e = NvmeStatus::from(MediaStatus::UnrecoveredReadError)
            .with_more(true)
            .with_crd(1);
        assert_eq!(
            e.to_string(),
            "unrecovered read error (sct 2, sc 0x81, retry delay 1, more in error log)"
        );
        let e = NvmeStatus::from(CommandSpecificStatus::InvalidQueueSize);
        assert_eq!(e.to_string(), "invalid queue size (sct 1, sc 0x02)");
        let e = NvmeStatus::new(StatusCode::Vendor(0xC1));
        assert_eq!(
            e.to_string(),
            "vendor specific status 0xc1 (sct 7, sc 0xc1)"
        );
        assert_eq!(
            GenericStatus::Other(0x7E).to_string(),
            "generic command status 0x7e"
        );
        for code in all_named() {
            assert!(!NvmeStatus::new(code).to_string().is_empty());
        }
    }
}
