//! The driver's error type: every way an operation can fail, each naming
//! the cause and, where there is one, the fix.

use std::time::Duration;

use crate::dma::DmaError;
use crate::nvme::NvmeStatus;
use crate::prp::PrpError;
use crate::queue::{BadSqHead, RingError};
use crate::transport::TransportError;

/// A driver operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The back-end failed (mapping, vectors, system calls).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// DMA memory ran out or could not be mapped.
    #[error(transparent)]
    Dma(#[from] DmaError),
    /// A queue could not be set up.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The data could not be described to the controller.
    #[error(transparent)]
    Prp(#[from] PrpError),
    /// The controller answered a command with an error status.
    #[error("{command} failed: {status}")]
    Command {
        /// What was asked.
        command: &'static str,
        /// The controller's answer.
        status: NvmeStatus,
    },
    /// The controller did not reach a state in time.
    #[error("the controller {what} within {waited:?}{hint}")]
    Timeout {
        /// What did not happen ("did not become ready", …).
        what: &'static str,
        /// How long was waited.
        waited: Duration,
        /// A hint on what to check.
        hint: &'static str,
    },
    /// The controller reported a fatal status (CSTS.CFS).
    #[error(
        "the controller reported a fatal error (CSTS.CFS=1): it needs a reset (reopen the device)"
    )]
    ControllerFatal,
    /// The controller did something the protocol does not allow.
    #[error("the controller misbehaved: {0}")]
    Device(#[from] DeviceError),
    /// The caller asked for something impossible.
    #[error("{0}")]
    InvalidArgument(String),
    /// A DMA buffer from another controller's pool: its IOVA means nothing
    /// (or the wrong memory) to this device.
    #[error("the DMA buffer was allocated from another controller's pool, whose addresses this device cannot use: allocate it from this controller's pool (Controller::pool, CpuHandle::pool)")]
    ForeignBuffer,
    /// The submission queue has no free slot: poll for completions first.
    #[error("the submission queue is full: poll completions before submitting more")]
    QueueFull,
    /// The device is gone: its registers read all-ones.
    #[error("the device is gone (hot-unplugged, or its registers read all-ones: surprise removal or a dead PCIe link); every command in flight was failed; close the runtime and the controller so the host can finish the removal, and reopen it once it is back")]
    DeviceRemoved,
    /// The controller was closed or failed earlier.
    #[error("the controller is no longer usable: {0}")]
    Unusable(&'static str),
}

/// Protocol violations by the device: surfaced as errors, never undefined
/// behaviour or a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A completion named a command id that is not outstanding.
    #[error(
        "completion for command id {cid} on queue {queue}, which has no such command outstanding"
    )]
    UnknownCommandId {
        /// The submission queue.
        queue: u16,
        /// The command id it reported.
        cid: u16,
    },
    /// A completion named the wrong submission queue.
    #[error("completion on CQ {cq} names SQ {reported}, which does not complete there")]
    WrongSubmissionQueue {
        /// The completion queue.
        cq: u16,
        /// The SQ id in the entry.
        reported: u16,
    },
    /// A completion reported an impossible SQ head.
    #[error(transparent)]
    BadSqHead(#[from] BadSqHead),
    /// The controller's capabilities are unusable.
    #[error("unsupported controller: {0}")]
    Unsupported(String),
}

/// A shorthand for results of driver operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
