//! `isonvme setup`: prepares a host for isonvme, like SPDK's `setup.sh`
//! but safer.
//!
//! * [`status`]: every NVMe controller (driver, IOMMU group and its
//!   viability, NUMA node, namespaces and whether the host uses them) and
//!   the host (IOMMU, hugepages, hugetlbfs, memlock, CPU isolation);
//! * [`actions::bind`]: hands controllers to vfio-pci with
//!   `driver_override`, refusing any with mounted filesystems, swap,
//!   stacked devices or open files;
//! * [`actions::unbind`]: gives them back to the kernel's driver, refusing
//!   any whose VFIO group a process holds;
//! * [`actions::hugepages`]: sizes the hugepage pool, says what the kernel
//!   really granted, and mounts hugetlbfs.
//!
//! Everything reads and writes under configurable [`Roots`] (so tests run
//! against fake trees) and makes every change through a [`System`] (so
//! tests can watch the writes and stand in for the kernel). Errors are
//! [`SetupError`]s that name the cause and the fix, with the exit codes
//! of [`error::exit`].

#![warn(missing_docs)]

pub mod actions;
pub mod bdf;
pub mod error;
pub mod fake;
pub mod host;
pub mod pci;
pub mod roots;
pub mod status;
pub mod system;
pub mod usage;
pub mod user;

pub use bdf::{Bdf, Target};
pub use error::SetupError;
pub use roots::Roots;
pub use system::{HostSystem, System};
