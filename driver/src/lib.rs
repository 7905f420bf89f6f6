//! isonvme: a userspace NVMe driver for latency-critical software.
//!
//! The NVMe core, the VFIO back-end and the simulated controller land in
//! later steps; today the crate re-exports the mapping policy every queue
//! layout will follow.

pub use isonvme_mapping as mapping;
