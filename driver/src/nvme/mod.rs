//! NVMe wire types: controller registers, queue entries, status codes and
//! Identify structures (NVMe Base Specification 2.0, NVM Command Set 1.0).
//!
//! Everything here is plain data with no I/O, shared by the driver and by
//! simulated controllers in tests. The `#[repr(C)]` structures derive the
//! zerocopy traits so they move to and from DMA memory without `unsafe`.

// The wire format is little-endian and these types use native integers, so
// a big-endian build would silently put every field on the wire reversed.
#[cfg(target_endian = "big")]
compile_error!("isonvme's NVMe wire types assume a little-endian host");

pub mod command;
pub mod completion;
pub mod identify;
pub mod regs;
pub mod status;

pub use command::{
    num_queues_from_dw0, num_queues_to_dw0, AdminOpcode, DsmRange, FeatureId, IdentifyCns,
    IoOpcode, QueuePriority, SubmissionEntry, UnknownOpcode, MAX_BLOCKS_PER_COMMAND,
    MAX_DSM_RANGES, NSID_ALL,
};
pub use completion::CompletionEntry;
pub use identify::{ActiveNamespaceList, IdentifyController, IdentifyNamespace, LbaFormat};
pub use regs::{
    doorbell_offset, Aqa, Cap, Cc, Csts, ShutdownNotification, ShutdownStatus, Version,
};
pub use status::{
    CommandSpecificStatus, GenericStatus, MediaStatus, NvmeStatus, Status, StatusCode,
};
