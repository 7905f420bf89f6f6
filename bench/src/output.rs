//! The report: fio's normal text, fio's JSON and json+ schema, and the
//! `isonvme` section (plan and isolation report) in both.

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::run::Outcome;
use crate::stats::{self, DirStats, JobResult, Lat, BATCH_BUCKETS, DEPTH_BUCKETS};
use crate::units;

/// The version string in place of fio's.
pub fn version() -> String {
    format!("isonvme-bench-{}", env!("CARGO_PKG_VERSION"))
}

/// The results to show: one per job thread, or one per group with
/// `group_reporting` (fio merges when any job of the group asks).
pub fn units_to_show(outcome: &Outcome) -> Vec<JobResult> {
    if outcome.jobs.iter().any(|j| j.options.group_reporting) {
        let mut merged: Option<JobResult> = None;
        for job in &outcome.jobs {
            match &mut merged {
                None => merged = Some(job.clone()),
                Some(m) => m.merge(job),
            }
        }
        merged.into_iter().collect()
    } else {
        outcome.jobs.clone()
    }
}

/// The whole group merged (fio's "Run status group" lines).
pub fn group(outcome: &Outcome) -> Option<JobResult> {
    let mut merged: Option<JobResult> = None;
    for job in &outcome.jobs {
        match &mut merged {
            None => merged = Some(job.clone()),
            Some(m) => m.merge(job),
        }
    }
    merged
}

/// `Tue Nov 24 19:21:24 2026`: the date as fio prints it (ctime's
/// layout), in UTC.
pub fn ctime(time: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days);
    let clock = secs % 86_400;
    format!(
        "{} {} {day:2} {:02}:{:02}:{:02} {year}",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        clock / 3600,
        clock / 60 % 60,
        clock % 60
    )
}

/// Year, month (1-12) and day (1-31) of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// fio's unit choice for a latency line: (divisor, name).
fn lat_unit(min: u64, max: u64, dev: f64) -> (f64, &'static str) {
    if min > 2_000_000 && max > 99_999_999 && dev > 1e6 {
        (1e6, "msec")
    } else if min > 2000 && max > 99_999 && dev > 1e3 {
        (1e3, "usec")
    } else {
        (1.0, "nsec")
    }
}

/// fio's unit choice for a percentile table: (divisor, name).
fn percentile_unit(min: u64, max: u64) -> (f64, &'static str) {
    if min > 2_000_000 && max > 99_999_999 {
        (1e6, "msec")
    } else if min > 2000 && max > 99_999 {
        (1e3, "usec")
    } else {
        (1.0, "nsec")
    }
}

/// An integer the way fio's num2str(…, 6) prints it (`19126k`).
fn num6(value: f64) -> String {
    let value = value.round() as u64;
    if value < 1_000_000 {
        value.to_string()
    } else if value < 1_000_000_000 {
        format!("{}k", value / 1000)
    } else {
        format!("{}M", value / 1_000_000)
    }
}

fn lat_line(out: &mut String, label: &str, lat: &Lat) {
    if lat.n == 0 {
        return;
    }
    let (div, unit) = lat_unit(lat.min, lat.max, lat.stdev());
    let _ = writeln!(
        out,
        "    {label} ({unit}): min={}, max={}, avg={:5.2}, stdev={:5.2}",
        num6(lat.min as f64 / div),
        num6(lat.max as f64 / div),
        lat.mean / div,
        lat.stdev() / div
    );
}

fn percentile_table(out: &mut String, label: &str, lat: &Lat, list: &[f64]) {
    if lat.n == 0 {
        return;
    }
    let values: Vec<u64> = list.iter().map(|&p| lat.percentile(p)).collect();
    let min = values.iter().copied().min().unwrap_or(0);
    let max = values.iter().copied().max().unwrap_or(0);
    let (div, unit) = percentile_unit(min, max);
    let _ = writeln!(out, "    {label} percentiles ({unit}):");
    let width = values
        .iter()
        .map(|&v| ((v as f64 / div).round() as u64).to_string().len())
        .max()
        .unwrap_or(1)
        .max(5);
    let cells: Vec<String> = list
        .iter()
        .zip(&values)
        .map(|(p, &v)| format!("{p:5.2}th=[{:>width$}]", (v as f64 / div).round() as u64))
        .collect();
    for (index, row) in cells.chunks(4).enumerate() {
        let last = (index + 1) * 4 >= cells.len();
        let _ = writeln!(
            out,
            "     | {}{}",
            row.join(", "),
            if last { "" } else { "," }
        );
    }
}

/// fio's latency distribution edges: (unit name, divisor, edges).
const LAT_BUCKETS: [(&str, u64, &[u64]); 3] = [
    ("nsec", 1, &[2, 4, 10, 20, 50, 100, 250, 500, 750, 1000]),
    ("usec", 1000, &[2, 4, 10, 20, 50, 100, 250, 500, 750, 1000]),
    (
        "msec",
        1_000_000,
        &[2, 4, 10, 20, 50, 100, 250, 500, 750, 1000, 2000],
    ),
];

/// Share of I/Os per fio latency bucket, per unit: (unit, [(label, pct)]).
fn lat_distribution(lat: &Lat) -> Vec<(&'static str, Vec<(String, f64)>)> {
    let mut edges: Vec<(usize, String, u64)> = Vec::new();
    for (unit_index, (_, div, list)) in LAT_BUCKETS.iter().enumerate() {
        for &edge in *list {
            edges.push((unit_index, edge.to_string(), edge * div));
        }
    }
    let mut counts = vec![0u64; edges.len() + 1];
    for value in lat.hist.iter_recorded() {
        let v = value.value_iterated_to();
        let index = edges
            .iter()
            .position(|&(_, _, edge)| v < edge)
            .unwrap_or(edges.len());
        counts[index] += value.count_at_value();
    }
    let total = lat.n.max(1) as f64;
    let mut result: Vec<(&'static str, Vec<(String, f64)>)> = LAT_BUCKETS
        .iter()
        .map(|(unit, _, _)| (*unit, Vec::new()))
        .collect();
    for (index, (unit_index, label, _)) in edges.iter().enumerate() {
        result[*unit_index]
            .1
            .push((label.clone(), 100.0 * counts[index] as f64 / total));
    }
    result[2].1.push((
        ">=2000".to_owned(),
        100.0 * counts[edges.len()] as f64 / total,
    ));
    result
}

fn dir_block(out: &mut String, name: &str, dir: &DirStats, job: &JobResult, group_bytes: u64) {
    let runtime = job.runtime.as_secs_f64().max(1e-9);
    let bw = dir.bytes as f64 / runtime;
    let _ = writeln!(
        out,
        "  {name}: IOPS={}, BW={} ({})({}/{}msec)",
        units::count(dir.ios as f64 / runtime),
        units::rate_binary(bw),
        units::rate_decimal(bw),
        units::bytes_binary(dir.bytes),
        job.runtime.as_millis()
    );
    if !job.synchronous {
        lat_line(out, "slat", &dir.slat);
    }
    lat_line(out, "clat", &dir.clat);
    lat_line(out, " lat", &dir.lat);
    percentile_table(out, "clat", &dir.clat, &job.options.percentile_list);
    let (min, max, mean, dev) = stats::summary(&dir.bw_samples);
    if !dir.bw_samples.is_empty() {
        // fio switches to MiB/s when the mean passes 1 GiB/s.
        let (div, unit) = if mean > 1024.0 * 1024.0 {
            (1024.0, "MiB/s")
        } else {
            (1.0, "KiB/s")
        };
        let per = if group_bytes > 0 {
            100.0 * dir.bytes as f64 / group_bytes as f64
        } else {
            100.0
        };
        let _ = writeln!(
            out,
            "   bw ({unit:>7}): min={:5.0}, max={:5.0}, per={per:.2}%, avg={:.2}, stdev={:.2}, samples={}",
            min / div,
            max / div,
            mean / div,
            dev / div,
            dir.bw_samples.len()
        );
        let (min, max, mean, dev) = stats::summary(&dir.iops_samples);
        let _ = writeln!(
            out,
            "   iops        : min={min:5.0}, max={max:5.0}, avg={mean:.2}, stdev={dev:.2}, samples={}",
            dir.iops_samples.len()
        );
    }
}

/// fio's `stat_calc_dist`: each count as a percentage of the total, a
/// non-zero share below 0.1% shown as 0.1%.
fn distribution(counts: &[u64]) -> Vec<f64> {
    let total: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&count| {
            if total == 0 {
                0.0
            } else {
                let pct = 100.0 * count as f64 / total as f64;
                if count > 0 {
                    pct.max(0.1)
                } else {
                    pct
                }
            }
        })
        .collect()
}

fn percent_list(labels: &[&str], counts: &[u64]) -> String {
    labels
        .iter()
        .zip(distribution(counts))
        .map(|(label, pct)| format!("{label}={pct:.1}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// fio's block for one job (or merged group).
pub fn job_text(job: &JobResult, group_bytes: [u64; 2], started: std::time::SystemTime) -> String {
    let mut out = String::new();
    let error = match (&job.error, &job.verify) {
        (Some(error), _) => format!(" ({error})"),
        (None, Some(verify)) if verify.errors > 0 => {
            format!(" (verify: {} bad blocks)", verify.errors)
        }
        _ => String::new(),
    };
    let _ = writeln!(
        out,
        "{}: (groupid={}, jobs={}): err={:2}{error}: pid={}: {}",
        job.options.name,
        job.groupid,
        job.jobs,
        job.errno(),
        std::process::id(),
        ctime(started)
    );
    for (index, name) in ["read", "write"].iter().enumerate() {
        let active = if index == 0 {
            job.options.rw.reads()
        } else {
            job.options.rw.writes()
        };
        if active {
            dir_block(&mut out, name, &job.dirs[index], job, group_bytes[index]);
        }
    }
    let mut lat = Lat::default();
    for dir in &job.dirs {
        lat.merge(&dir.lat);
    }
    if lat.n > 0 {
        for (unit, buckets) in lat_distribution(&lat) {
            let shown: Vec<String> = buckets
                .iter()
                .filter(|(_, pct)| *pct > 0.0)
                .map(|(label, pct)| format!("{label}={:.2}%", pct.max(0.01)))
                .collect();
            // fio: five buckets per line.
            for line in shown.chunks(5) {
                let _ = writeln!(out, "  lat ({unit})   : {}", line.join(", "));
            }
        }
    }
    let (usr, sys) = job.cpu_percent();
    let _ = writeln!(
        out,
        "  cpu          : usr={usr:.2}%, sys={sys:.2}%, ctx={}, majf={}, minf={}",
        job.usage.voluntary + job.usage.involuntary,
        job.usage.major_faults,
        job.usage.minor_faults
    );
    let _ = writeln!(
        out,
        "  IO depths    : {}",
        percent_list(&DEPTH_BUCKETS, &job.depth)
    );
    let _ = writeln!(
        out,
        "     submit    : {}",
        percent_list(&BATCH_BUCKETS, &job.submit)
    );
    let _ = writeln!(
        out,
        "     complete  : {}",
        percent_list(&BATCH_BUCKETS, &job.complete)
    );
    let _ = writeln!(
        out,
        "     issued rwts: total={},{},0,0 short=0,0,0,0 dropped=0,0,0,0",
        job.issued[0], job.issued[1]
    );
    if let Some(verify) = &job.verify {
        let _ = writeln!(
            out,
            "  verify       : {} blocks checked, {} mismatches",
            verify.checked, verify.errors
        );
        for message in &verify.messages {
            for line in message.lines() {
                let _ = writeln!(out, "    {line}");
            }
        }
    }
    out
}

/// The whole normal report.
pub fn normal(outcome: &Outcome) -> String {
    let mut out = String::new();
    let mut seen = Vec::new();
    for job in &outcome.jobs {
        if seen.contains(&job.options.name) {
            continue;
        }
        seen.push(job.options.name.clone());
        let bs = units::bytes_binary(job.options.bs);
        let _ = writeln!(
            out,
            "{}: (g=0): rw={}, bs=(R) {bs}-{bs}, (W) {bs}-{bs}, (T) {bs}-{bs}, ioengine={}, iodepth={}",
            job.options.name,
            job.options.rw.name(),
            job.engine,
            job.iodepth
        );
        if job.options.numjobs > 1 {
            out.push_str("...\n");
        }
    }
    let _ = writeln!(out, "{}", version());
    let threads = outcome.jobs.len();
    let _ = writeln!(
        out,
        "Starting {threads} thread{}",
        if threads == 1 { "" } else { "s" }
    );
    for note in &outcome.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out.push('\n');
    let group = group(outcome);
    let group_bytes = group
        .as_ref()
        .map_or([0; 2], |g| [g.dirs[0].bytes, g.dirs[1].bytes]);
    for unit in units_to_show(outcome) {
        out.push_str(&job_text(&unit, group_bytes, outcome.started));
    }
    if let Some(group) = &group {
        let _ = writeln!(out, "\nRun status group 0 (all jobs):");
        for (index, name) in ["READ", "WRITE"].iter().enumerate() {
            let dir = &group.dirs[index];
            if dir.ios == 0 {
                continue;
            }
            let runtimes: Vec<u128> = outcome
                .jobs
                .iter()
                .filter(|j| j.dirs[index].ios > 0)
                .map(|j| j.runtime.as_millis())
                .collect();
            let rates: Vec<f64> = outcome
                .jobs
                .iter()
                .filter(|j| j.dirs[index].ios > 0)
                .map(|j| j.dirs[index].bytes as f64 / j.runtime.as_secs_f64().max(1e-9))
                .collect();
            let bw = dir.bytes as f64 / group.runtime.as_secs_f64().max(1e-9);
            let min = rates.iter().copied().fold(f64::INFINITY, f64::min);
            let max = rates.iter().copied().fold(0.0, f64::max);
            let _ = writeln!(
                out,
                "{name:>7}: bw={} ({}), {}-{} ({}-{}), io={} ({}), run={}-{}msec",
                units::rate_binary(bw),
                units::rate_decimal(bw),
                units::rate_binary(min),
                units::rate_binary(max),
                units::rate_decimal(min),
                units::rate_decimal(max),
                units::bytes_binary(dir.bytes),
                units::bytes_decimal(dir.bytes),
                runtimes.iter().min().unwrap_or(&0),
                runtimes.iter().max().unwrap_or(&0)
            );
        }
    }
    out.push_str(&isonvme_text(outcome));
    out
}

/// The `isonvme` section as text.
pub fn isonvme_text(outcome: &Outcome) -> String {
    let mut out = String::new();
    if !outcome.devices.is_empty() {
        let _ = writeln!(out, "\nisonvme:");
    } else {
        out.push('\n');
    }
    for device in &outcome.devices {
        let (nsid, blocks, block_size) = device.namespace;
        let _ = writeln!(
            out,
            "  device {} ({}): namespace {nsid}, {blocks} blocks of {block_size} B, MDTS {} KiB; completion {}",
            device.filename,
            device.model,
            device.max_transfer / 1024,
            device.completion
        );
        for line in device.layout.lines() {
            let _ = writeln!(out, "  {line}");
        }
        for (vector, cpus, interrupts, completions) in &device.vectors {
            let _ = writeln!(
                out,
                "    vector {vector} on CPUs {cpus}: {interrupts} interrupts, {completions} completions during the run"
            );
        }
        for note in &device.notes {
            let _ = writeln!(out, "  note: {note}");
        }
    }
    let _ = writeln!(out, "isolation report (whole run, ramp included):");
    out.push_str(&outcome.isolation.text());
    out
}

/// fio's latency object: `min`, `max`, `mean`, `stddev`, `N`.
fn lat_json(lat: &Lat) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("min".into(), json!(lat.min));
    map.insert("max".into(), json!(lat.max));
    map.insert("mean".into(), json!(lat.mean));
    map.insert("stddev".into(), json!(lat.stdev()));
    map.insert("N".into(), json!(lat.n));
    map
}

/// fio's JSON for one direction.
fn dir_json(dir: &DirStats, job: &JobResult, group_bytes: u64, plus: bool) -> Value {
    let runtime_ms = if dir.ios > 0 {
        job.runtime.as_millis() as u64
    } else {
        0
    };
    let seconds = job.runtime.as_secs_f64();
    let bw_bytes = if seconds > 0.0 {
        dir.bytes as f64 / seconds
    } else {
        0.0
    };
    let iops = if seconds > 0.0 {
        dir.ios as f64 / seconds
    } else {
        0.0
    };
    let mut clat = lat_json(&dir.clat);
    // As fio: percentiles (and json+ bins) only for a direction with I/O.
    if dir.clat.n > 0 {
        let mut percentiles = Map::new();
        for &p in &job.options.percentile_list {
            percentiles.insert(format!("{p:.6}"), json!(dir.clat.percentile(p)));
        }
        clat.insert("percentile".into(), Value::Object(percentiles));
        if plus {
            // Each recorded bucket under the highest value it holds, the
            // value the percentiles report.
            let mut bins = Map::new();
            for value in dir.clat.hist.iter_recorded() {
                bins.insert(
                    value.value_iterated_to().to_string(),
                    json!(value.count_at_value()),
                );
            }
            clat.insert("bins".into(), Value::Object(bins));
        }
    }
    let (bw_min, bw_max, bw_mean, bw_dev) = stats::summary(&dir.bw_samples);
    let (iops_min, iops_max, iops_mean, iops_dev) = stats::summary(&dir.iops_samples);
    let agg = if group_bytes > 0 {
        100.0 * dir.bytes as f64 / group_bytes as f64
    } else {
        0.0
    };
    json!({
        "io_bytes": dir.bytes,
        "io_kbytes": dir.bytes / 1024,
        "bw_bytes": bw_bytes.round() as u64,
        "bw": (bw_bytes / 1024.0).round() as u64,
        "iops": iops,
        "runtime": runtime_ms,
        "total_ios": dir.ios,
        "short_ios": 0,
        "drop_ios": 0,
        "slat_ns": Value::Object(lat_json(&dir.slat)),
        "clat_ns": Value::Object(clat),
        "lat_ns": Value::Object(lat_json(&dir.lat)),
        "bw_min": bw_min.round() as u64,
        "bw_max": bw_max.round() as u64,
        "bw_agg": agg,
        "bw_mean": bw_mean,
        "bw_dev": bw_dev,
        "bw_samples": dir.bw_samples.len(),
        "iops_min": iops_min.round() as u64,
        "iops_max": iops_max.round() as u64,
        "iops_mean": iops_mean,
        "iops_stddev": iops_dev,
        "iops_samples": dir.iops_samples.len(),
    })
}

fn percent_map(labels: &[&str], counts: &[u64]) -> Value {
    let mut map = Map::new();
    for (label, pct) in labels.iter().zip(distribution(counts)) {
        map.insert((*label).to_owned(), json!(pct));
    }
    Value::Object(map)
}

/// fio's JSON for one job (or merged group).
pub fn job_json(job: &JobResult, group_bytes: [u64; 2], plus: bool) -> Value {
    let mut options = Map::new();
    for (key, value) in &job.options.given {
        options.insert(key.clone(), json!(value));
    }
    // What tools such as fio-plot look for, even when the job took defaults.
    let defaults = [
        ("name", job.options.name.clone()),
        ("rw", job.options.rw.name().to_owned()),
        ("bs", job.options.bs.to_string()),
        ("iodepth", job.options.iodepth.to_string()),
        ("numjobs", job.options.numjobs.to_string()),
        ("ioengine", job.engine.to_owned()),
        ("filename", job.target.clone()),
    ];
    for (key, value) in defaults {
        options.entry(key).or_insert(json!(value));
    }
    let empty = DirStats::default();
    let mut lat = Lat::default();
    for dir in &job.dirs {
        lat.merge(&dir.lat);
    }
    let mut latency = Map::new();
    for (unit, buckets) in lat_distribution(&lat) {
        let key = match unit {
            "nsec" => "latency_ns",
            "usec" => "latency_us",
            _ => "latency_ms",
        };
        let mut map = Map::new();
        for (label, pct) in buckets {
            map.insert(label, json!(pct));
        }
        latency.insert(key.to_owned(), Value::Object(map));
    }
    let (usr, sys) = job.cpu_percent();
    let mut value = json!({
        "jobname": job.options.name,
        "groupid": job.groupid,
        "job_start": job.started_ms,
        "error": job.errno(),
        "eta": 0,
        "elapsed": (job.runtime + job.options.ramp_time).as_secs().max(1),
        "job options": Value::Object(options),
        "read": dir_json(&job.dirs[0], job, group_bytes[0], plus),
        "write": dir_json(&job.dirs[1], job, group_bytes[1], plus),
        "trim": dir_json(&empty, job, 0, plus),
        "sync": {
            "total_ios": 0,
            "lat_ns": {"min": 0, "max": 0, "mean": 0.0, "stddev": 0.0, "N": 0},
        },
        "job_runtime": job.runtime.as_millis() as u64,
        "usr_cpu": usr,
        "sys_cpu": sys,
        "ctx": job.usage.voluntary + job.usage.involuntary,
        "majf": job.usage.major_faults,
        "minf": job.usage.minor_faults,
        "iodepth_level": percent_map(&DEPTH_BUCKETS, &job.depth),
        "iodepth_submit": percent_map(&BATCH_BUCKETS, &job.submit),
        "iodepth_complete": percent_map(&BATCH_BUCKETS, &job.complete),
    });
    let object = value.as_object_mut().expect("an object");
    for (key, map) in latency {
        object.insert(key, map);
    }
    if let Some(verify) = &job.verify {
        object.insert(
            "verify".into(),
            json!({"checked": verify.checked, "errors": verify.errors, "messages": verify.messages}),
        );
    }
    if let Some(error) = &job.error {
        object.insert("error_message".into(), json!(error));
    }
    value
}

/// The whole JSON report (`plus`: json+ with latency bins).
pub fn json(outcome: &Outcome, plus: bool) -> Value {
    let started = outcome
        .started
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let group = group(outcome);
    let group_bytes = group
        .as_ref()
        .map_or([0; 2], |g| [g.dirs[0].bytes, g.dirs[1].bytes]);
    let mut root = Map::new();
    root.insert("fio version".into(), json!(version()));
    root.insert("timestamp".into(), json!(started.as_secs()));
    root.insert("timestamp_ms".into(), json!(started.as_millis() as u64));
    root.insert("time".into(), json!(ctime(outcome.started)));
    if !outcome.global_options.is_empty() {
        let mut global = Map::new();
        for (key, value) in &outcome.global_options {
            global.insert(key.clone(), json!(value));
        }
        root.insert("global options".into(), Value::Object(global));
    }
    let jobs: Vec<Value> = units_to_show(outcome)
        .iter()
        .map(|job| job_json(job, group_bytes, plus))
        .collect();
    root.insert("jobs".into(), Value::Array(jobs));
    root.insert("disk_util".into(), json!([]));
    root.insert("isonvme".into(), isonvme_json(outcome));
    Value::Object(root)
}

/// The `isonvme` section.
pub fn isonvme_json(outcome: &Outcome) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "default_run": outcome.default_run,
        "notes": outcome.notes,
        "devices": outcome.devices.iter().map(|d| json!({
            "filename": d.filename,
            "model": d.model,
            "namespace": {"id": d.namespace.0, "blocks": d.namespace.1, "block_size": d.namespace.2},
            "max_transfer": d.max_transfer,
            "completion": d.completion,
            "isolated": d.split.isolated.to_string(),
            "housekeeping": d.split.housekeeping.to_string(),
            "isolation_source": d.split.source,
            "layout": d.layout,
            "plan": d.plan,
            "vectors": d.vectors.iter().map(|(vector, cpus, interrupts, completions)| json!({
                "vector": vector, "cpus": cpus.to_string(), "interrupts": interrupts, "completions": completions,
            })).collect::<Vec<_>>(),
            "notes": d.notes,
        })).collect::<Vec<_>>(),
        "isolation": outcome.isolation.json(),
        "threads": outcome.jobs.iter().map(|j| json!({
            "jobname": j.options.name,
            "jobnum": j.jobnum,
            "engine": j.engine,
            "pinned": j.pinned.as_ref().map(|p| p.to_string()),
            "cpu": j.ran_on,
            "voluntary_ctx": j.lifetime_usage.voluntary,
            "involuntary_ctx": j.lifetime_usage.involuntary,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn ctime_layout() {
        assert_eq!(ctime(UNIX_EPOCH), "Thu Jan  1 00:00:00 1970");
        // 2024-02-29 13:05:09 UTC, a leap day.
        let leap = UNIX_EPOCH + Duration::from_secs(1_709_211_909);
        assert_eq!(ctime(leap), "Thu Feb 29 13:05:09 2024");
    }

    #[test]
    fn distributions_round_like_fio() {
        assert_eq!(distribution(&[0, 0]), [0.0, 0.0]);
        assert_eq!(distribution(&[1, 999_999, 0]), [0.1, 99.9999, 0.0]);
        assert_eq!(percent_list(&["1", "2"], &[1, 3]), "1=25.0%, 2=75.0%");
    }
}
