//! isonvme: a userspace NVMe driver for latency-critical software.
#![warn(missing_docs)]

pub mod dma;
pub mod mmio;
pub mod nvme;
pub mod transport;

pub use isonvme_mapping as mapping;
