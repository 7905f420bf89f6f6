//! isonvme-bench: a fio-like benchmark that runs the same job on the
//! isonvme driver (simulated controller or a VFIO device) and on the
//! kernel's io_uring and psync, and reports in fio's formats plus an
//! isolation report.
//!
//! The binary is a thin wrapper around [`cli::main`]; the modules are public
//! so the tests can drive parsing, runs and the output directly. How to use
//! it and read its output: `docs/benchmarking.md`.
//!
//! The command line is parsed by hand rather than with clap: fio's syntax is
//! positional (each `--name=` starts a job that the options after it belong
//! to, options before it are global) and every job option may also come
//! from a job file, which a declarative parser does not model.
#![warn(missing_docs)]

pub mod cli;
pub mod compare;
pub mod config;
pub mod engine;
pub mod job;
pub mod options;
pub mod output;
pub mod pattern;
pub mod report;
pub mod run;
pub mod stats;
pub mod svg;
pub mod units;
pub mod verify;
