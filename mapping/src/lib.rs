//! The `isolcpus=io_queue` CPU → vector → queue policy, kernel-exact.
//!
//! Linux's `isolcpus=io_queue` caps a multiqueue device's interrupt vectors
//! at the number of housekeeping CPUs, spreads them over those CPUs by
//! topology and lets isolated CPUs submit to the queues of housekeeping
//! CPUs. This crate computes the same result in userspace, exactly as the
//! kernel does (same masks, same order), so that isonvme can build its
//! queues from it and users can compare it with their kernel:
//!
//! * [`CpuSet`] — CPU sets in the kernel's cpulist syntax;
//! * [`Topology`] — possible/present/online CPUs, NUMA nodes, SMT siblings
//!   and clusters, from [`sysfs`] or the specification's JSON ([`input`]);
//! * [`isolation`] — where the isolated set comes from;
//! * [`group`] — `group_cpus_evenly()` / `group_mask_cpus_evenly()`;
//! * [`plan()`] — vectors, their affinities, CPU → queue maps and the
//!   offline rule, as a [`Plan`].
//!
//! The crate is pure computation (plus sysfs reads) and has no `unsafe`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cpuset;
pub mod group;
pub mod input;
pub mod isolation;
mod ksort;
pub mod plan;
pub mod queue_map;
pub mod report;
pub mod sysfs;
pub mod topology;
pub mod vectors;

pub use cpuset::{CpuListError, CpuSet};
pub use plan::{plan, OfflineVerdict, Plan, PlanError, PlanParams, Policy};
pub use queue_map::QueueMap;
pub use topology::{CpuGroups, Topology, TopologyError, TopologySpec};
pub use vectors::Vector;
