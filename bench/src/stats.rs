//! What a job measured: per direction I/O counts, bytes, slat/clat/lat in
//! HdrHistograms (3 significant digits, 1 ns to 1 hour), exact min, max,
//! mean and standard deviation, bandwidth/IOPS samples; per job CPU usage,
//! queue-depth distributions and verify results. Jobs merge for
//! `group_reporting` and the group lines.

use std::time::Duration;

use hdrhistogram::Histogram;

use crate::options::JobOptions;

/// Highest latency recorded exactly (longer ones saturate): one hour.
pub const HIGHEST_NS: u64 = 3_600_000_000_000;
/// Significant digits kept.
pub const SIGFIG: u8 = 3;

/// One latency series (slat, clat or lat).
#[derive(Debug, Clone)]
pub struct Lat {
    /// The distribution.
    pub hist: Histogram<u64>,
    /// Samples.
    pub n: u64,
    /// Smallest, exact.
    pub min: u64,
    /// Largest, exact.
    pub max: u64,
    /// Mean, exact (Welford).
    pub mean: f64,
    m2: f64,
}

impl Default for Lat {
    fn default() -> Self {
        Lat {
            hist: Histogram::new_with_bounds(1, HIGHEST_NS, SIGFIG)
                .expect("valid histogram bounds"),
            n: 0,
            min: 0,
            max: 0,
            mean: 0.0,
            m2: 0.0,
        }
    }
}

impl Lat {
    /// Records `ns`.
    #[inline]
    pub fn record(&mut self, ns: u64) {
        self.hist.saturating_record(ns);
        if self.n == 0 {
            self.min = ns;
            self.max = ns;
        } else {
            self.min = self.min.min(ns);
            self.max = self.max.max(ns);
        }
        self.n += 1;
        let x = ns as f64;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Sample standard deviation (fio divides by n - 1).
    pub fn stdev(&self) -> f64 {
        if self.n < 2 {
            0.0
        } else {
            (self.m2 / (self.n - 1) as f64).sqrt()
        }
    }

    /// The value at percentile `p` (0..100), to the recording precision.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.n == 0 {
            0
        } else {
            self.hist.value_at_quantile(p / 100.0)
        }
    }

    /// Adds `other`'s samples (Chan et al.'s parallel variance).
    pub fn merge(&mut self, other: &Lat) {
        if other.n == 0 {
            return;
        }
        self.hist
            .add(&other.hist)
            .expect("histograms of equal bounds");
        if self.n == 0 {
            self.min = other.min;
            self.max = other.max;
        } else {
            self.min = self.min.min(other.min);
            self.max = self.max.max(other.max);
        }
        let n = self.n + other.n;
        let delta = other.mean - self.mean;
        self.m2 += other.m2 + delta * delta * (self.n as f64) * (other.n as f64) / n as f64;
        self.mean += delta * other.n as f64 / n as f64;
        self.n = n;
    }
}

/// One direction (read or write) of a job.
#[derive(Debug, Clone, Default)]
pub struct DirStats {
    /// I/Os completed.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Submission latency (prepared → handed to the device).
    pub slat: Lat,
    /// Completion latency (handed to the device → completed).
    pub clat: Lat,
    /// Total latency (prepared → completed).
    pub lat: Lat,
    /// Bandwidth samples, KiB/s, one per sampling interval.
    pub bw_samples: Vec<f64>,
    /// IOPS samples, one per sampling interval.
    pub iops_samples: Vec<f64>,
}

impl DirStats {
    /// Adds another job's direction (samples are summed interval by
    /// interval, as fio's group bandwidth is).
    pub fn merge(&mut self, other: &DirStats) {
        self.ios += other.ios;
        self.bytes += other.bytes;
        self.slat.merge(&other.slat);
        self.clat.merge(&other.clat);
        self.lat.merge(&other.lat);
        merge_samples(&mut self.bw_samples, &other.bw_samples);
        merge_samples(&mut self.iops_samples, &other.iops_samples);
    }
}

fn merge_samples(into: &mut Vec<f64>, from: &[f64]) {
    if into.len() < from.len() {
        into.resize(from.len(), 0.0);
    }
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

/// min, max, mean, sample stdev of a series (zeros when empty).
pub fn summary(samples: &[f64]) -> (f64, f64, f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    let n = samples.len() as f64;
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mean = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 {
        samples.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (min, max, mean, var.sqrt())
}

/// fio's depth buckets: 1, 2, 4, 8, 16, 32, >=64.
pub const DEPTH_BUCKETS: [&str; 7] = ["1", "2", "4", "8", "16", "32", ">=64"];
/// fio's submit/complete batch buckets: 0, 4, 8, 16, 32, 64, >=64.
pub const BATCH_BUCKETS: [&str; 7] = ["0", "4", "8", "16", "32", "64", ">=64"];

/// The depth bucket of `depth` in-flight I/Os (fio: `1`, `2`, `3-4` → 4 …).
pub fn depth_bucket(depth: usize) -> usize {
    match depth {
        0 | 1 => 0,
        2 => 1,
        3..=4 => 2,
        5..=8 => 3,
        9..=16 => 4,
        17..=32 => 5,
        _ => 6,
    }
}

/// The batch bucket of a batch of `n` (fio: `0`, `1-4` → 4, `5-8` → 8 …).
pub fn batch_bucket(n: usize) -> usize {
    match n {
        0 => 0,
        1..=4 => 1,
        5..=8 => 2,
        9..=16 => 3,
        17..=32 => 4,
        33..=64 => 5,
        _ => 6,
    }
}

/// Resource usage of a thread (getrusage(RUSAGE_THREAD)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// User CPU time.
    pub user: Duration,
    /// System CPU time.
    pub system: Duration,
    /// Voluntary context switches.
    pub voluntary: u64,
    /// Involuntary context switches.
    pub involuntary: u64,
    /// Major page faults.
    pub major_faults: u64,
    /// Minor page faults.
    pub minor_faults: u64,
}

impl Usage {
    /// The calling thread's usage now (`getrusage(RUSAGE_THREAD)`; zeros
    /// if the kernel refuses).
    pub fn thread() -> Usage {
        use nix::sys::resource::{getrusage, UsageWho};
        let Ok(usage) = getrusage(UsageWho::RUSAGE_THREAD) else {
            return Usage::default();
        };
        let time = |t: nix::sys::time::TimeVal| {
            Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
        };
        let count = |n: libc::c_long| u64::try_from(n).unwrap_or(0);
        Usage {
            user: time(usage.user_time()),
            system: time(usage.system_time()),
            voluntary: count(usage.voluntary_context_switches()),
            involuntary: count(usage.involuntary_context_switches()),
            major_faults: count(usage.major_page_faults()),
            minor_faults: count(usage.minor_page_faults()),
        }
    }

    /// `self - earlier`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
            major_faults: self.major_faults.saturating_sub(earlier.major_faults),
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
        }
    }

    /// Adds `other`.
    pub fn add(&mut self, other: &Usage) {
        self.user += other.user;
        self.system += other.system;
        self.voluntary += other.voluntary;
        self.involuntary += other.involuntary;
        self.major_faults += other.major_faults;
        self.minor_faults += other.minor_faults;
    }
}

/// What `verify=` found.
#[derive(Debug, Clone, Default)]
pub struct VerifyOutcome {
    /// Blocks checked.
    pub checked: u64,
    /// Mismatches.
    pub errors: u64,
    /// The first mismatches' messages (fio's wording, with the offset).
    pub messages: Vec<String>,
}

/// Messages kept per job.
pub const MAX_VERIFY_MESSAGES: usize = 10;

/// One job thread's (or, merged, a group's) results.
#[derive(Debug, Clone)]
pub struct JobResult {
    /// The job's options.
    pub options: JobOptions,
    /// Thread number (0-based, in start order).
    pub jobnum: usize,
    /// Job threads merged into this result.
    pub jobs: usize,
    /// fio's groupid.
    pub groupid: usize,
    /// The engine used.
    pub engine: &'static str,
    /// What it ran on (file, device, `sim`).
    pub target: String,
    /// Read and write.
    pub dirs: [DirStats; 2],
    /// The measured period (after ramp, until the last I/O completed).
    pub runtime: Duration,
    /// Thread resource use during the measured period.
    pub usage: Usage,
    /// Thread resource use over its whole life (isolation report).
    pub lifetime_usage: Usage,
    /// The CPUs the thread was pinned to, if pinned.
    pub pinned: Option<isonvme_mapping::CpuSet>,
    /// The CPU the thread ran on at the end.
    pub ran_on: Option<usize>,
    /// In-flight depth at submission, by [`DEPTH_BUCKETS`].
    pub depth: [u64; 7],
    /// Submission batch sizes, by [`BATCH_BUCKETS`].
    pub submit: [u64; 7],
    /// Completion batch sizes, by [`BATCH_BUCKETS`].
    pub complete: [u64; 7],
    /// I/Os issued (both directions, measured period).
    pub issued: [u64; 2],
    /// Verify results, if `verify=` was set.
    pub verify: Option<VerifyOutcome>,
    /// The first error that stopped the job.
    pub error: Option<String>,
    /// Whether the engine was synchronous (no slat).
    pub synchronous: bool,
    /// The effective I/O depth.
    pub iodepth: u32,
    /// When the job started (ms since the epoch; fio's `job_start`).
    pub started_ms: u64,
}

impl JobResult {
    /// Merges `other` into this result (group reporting and group lines).
    pub fn merge(&mut self, other: &JobResult) {
        for (a, b) in self.dirs.iter_mut().zip(&other.dirs) {
            a.merge(b);
        }
        self.jobs += other.jobs;
        self.runtime = self.runtime.max(other.runtime);
        self.usage.add(&other.usage);
        self.lifetime_usage.add(&other.lifetime_usage);
        for (a, b) in self.depth.iter_mut().zip(other.depth) {
            *a += b;
        }
        for (a, b) in self.submit.iter_mut().zip(other.submit) {
            *a += b;
        }
        for (a, b) in self.complete.iter_mut().zip(other.complete) {
            *a += b;
        }
        for (a, b) in self.issued.iter_mut().zip(other.issued) {
            *a += b;
        }
        if let Some(theirs) = &other.verify {
            let ours = self.verify.get_or_insert_with(VerifyOutcome::default);
            ours.checked += theirs.checked;
            ours.errors += theirs.errors;
            for message in &theirs.messages {
                if ours.messages.len() < MAX_VERIFY_MESSAGES {
                    ours.messages.push(message.clone());
                }
            }
        }
        if self.error.is_none() {
            self.error.clone_from(&other.error);
        }
    }

    /// CPU use as percentages of the runtime (usr, sys), per thread as fio
    /// reports it.
    pub fn cpu_percent(&self) -> (f64, f64) {
        let runtime = self.runtime.as_secs_f64() * self.jobs.max(1) as f64;
        if runtime <= 0.0 {
            return (0.0, 0.0);
        }
        (
            100.0 * self.usage.user.as_secs_f64() / runtime,
            100.0 * self.usage.system.as_secs_f64() / runtime,
        )
    }

    /// fio's error number: 0, EILSEQ (84) for verify failures, EIO (5)
    /// for I/O errors.
    pub fn errno(&self) -> i32 {
        if self.verify.as_ref().is_some_and(|v| v.errors > 0) {
            84
        } else if self.error.is_some() {
            5
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lat_statistics_are_exact() {
        let mut lat = Lat::default();
        for ns in [100, 200, 300, 400] {
            lat.record(ns);
        }
        assert_eq!((lat.min, lat.max, lat.n), (100, 400, 4));
        assert!((lat.mean - 250.0).abs() < 1e-9);
        assert!((lat.stdev() - 129.0994).abs() < 1e-3);
        let mut other = Lat::default();
        other.record(1000);
        lat.merge(&other);
        assert_eq!((lat.min, lat.max, lat.n), (100, 1000, 5));
        assert!((lat.mean - 400.0).abs() < 1e-9);
        // Sixty seconds are recorded to three significant digits.
        let mut long = Lat::default();
        long.record(60_000_000_000);
        let p = long.percentile(50.0);
        assert!(p.abs_diff(60_000_000_000) <= 60_000_000, "{p}");
    }

    #[test]
    fn buckets() {
        assert_eq!(depth_bucket(1), 0);
        assert_eq!(depth_bucket(32), 5);
        assert_eq!(depth_bucket(33), 6);
        assert_eq!(batch_bucket(0), 0);
        assert_eq!(batch_bucket(3), 1);
        assert_eq!(batch_bucket(32), 4);
    }
}
