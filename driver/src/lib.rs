//! isonvme: a userspace NVMe driver for latency-critical software.
//!
//! The driver talks to a controller through the [`transport::Transport`]
//! seam — registers, DMA memory, interrupt vectors — which both back-ends
//! provide: VFIO for real devices and the built-in simulated controller.
//! Everything above the seam (rings, bring-up, PRPs, I/O) is one code path.
#![warn(missing_docs)]

pub mod controller;
pub mod device;
pub mod dma;
pub mod error;
pub mod events;
pub mod io;
pub mod irq;
pub mod mmio;
pub mod nvme;
pub mod os;
pub mod prp;
pub mod queue;
pub mod runtime;
pub mod sim;
pub mod spsc;
pub mod transport;
pub mod vfio;

pub use controller::{Controller, ControllerInfo, ControllerOptions, Namespace};
pub use error::{DeviceError, Error, Result};
pub use events::{AsyncEvent, AsyncEventType};
pub use io::{Completion, IoCommand, IoQueuePair, Rejected};
pub use isonvme_mapping as mapping;
