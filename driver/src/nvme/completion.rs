//! Completion queue entries (NVMe Base Specification 2.0, section 4.6).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::status::{NvmeStatus, Status};

/// A 16-byte completion queue entry, exactly as the controller writes it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct CompletionEntry {
    /// DW0: command specific result (e.g. granted queue counts).
    pub dw0: u32,
    /// DW1: command specific result.
    pub dw1: u32,
    /// SQ head pointer when this entry was posted; frees SQ slots.
    pub sq_head: u16,
    /// Submission queue the command came from.
    pub sq_id: u16,
    /// Command identifier of the completed command.
    pub cid: u16,
    /// Phase tag (bit 0) and status field (bits 15:1).
    pub status: u16,
}

const _: () = assert!(size_of::<CompletionEntry>() == 16);

impl CompletionEntry {
    /// log2 of the entry size, the value for CC.IOCQES.
    pub const SIZE_LOG2: u8 = 4;

    /// Phase tag: flips each pass through the queue, which is how the host
    /// tells a new entry from a stale one without any other shared state.
    #[must_use]
    pub const fn phase(&self) -> bool {
        self.status & 1 != 0
    }

    /// The 15-bit status field.
    #[must_use]
    pub const fn status_field(&self) -> Status {
        Status(self.status >> 1)
    }

    /// True if the command succeeded.
    #[must_use]
    pub const fn is_success(&self) -> bool {
        self.status_field().is_success()
    }

    /// `Ok(())` on success, otherwise the typed status.
    pub fn result(&self) -> Result<(), NvmeStatus> {
        self.status_field().to_result()
    }

    /// Sets the status field and phase tag together, as a controller posts
    /// them in one write.
    pub fn set_status(&mut self, status: Status, phase: bool) {
        self.status = (status.0 << 1) | phase as u16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nvme::status::{GenericStatus, StatusCode};
    use core::mem::offset_of;

    #[test]
    fn layout() {
        assert_eq!(size_of::<CompletionEntry>(), 16);
        assert_eq!(1 << CompletionEntry::SIZE_LOG2, 16);
        assert_eq!(offset_of!(CompletionEntry, dw0), 0);
        assert_eq!(offset_of!(CompletionEntry, dw1), 4);
        assert_eq!(offset_of!(CompletionEntry, sq_head), 8);
        assert_eq!(offset_of!(CompletionEntry, sq_id), 10);
        assert_eq!(offset_of!(CompletionEntry, cid), 12);
        assert_eq!(offset_of!(CompletionEntry, status), 14);
    }

    #[test]
    fn phase_and_status() {
        // DW3 = status 0x4080 (DNR, LBA out of range), phase 1, cid 0x0042.
        let mut raw = [0u8; 16];
        raw[12..14].copy_from_slice(&0x0042u16.to_le_bytes());
        raw[14..16].copy_from_slice(&(0x4080u16 << 1 | 1).to_le_bytes());
        let e = CompletionEntry::read_from_bytes(&raw[..]).unwrap();
        assert!(e.phase());
        assert_eq!(e.cid, 0x42);
        assert_eq!(e.status_field(), Status(0x4080));
        assert!(!e.is_success());
        let err = e.result().unwrap_err();
        assert_eq!(err.code, StatusCode::Generic(GenericStatus::LbaOutOfRange));
        assert!(err.dnr);

        let mut ok = CompletionEntry::default();
        ok.set_status(Status::SUCCESS, true);
        assert!(ok.phase() && ok.is_success());
        assert_eq!(ok.result(), Ok(()));
        ok.set_status(Status(0x7FFF), false);
        assert!(!ok.phase());
        assert_eq!(ok.status, 0xFFFE);
    }
}
