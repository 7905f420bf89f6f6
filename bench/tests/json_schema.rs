//! The JSON and json+ reports follow fio's schema (the fields fio's own
//! tools and fio-plot read, with the right types), json+ bins add up to the
//! I/O count, and the `isonvme` section carries the plan and the isolation
//! report.

mod common;

use isonvme_bench::output;
use serde_json::Value;

fn assert_int(value: &Value, what: &str) {
    assert!(
        value.is_u64() || value.is_i64(),
        "{what} should be an integer: {value}"
    );
}

fn assert_number(value: &Value, what: &str) {
    assert!(value.is_number(), "{what} should be a number: {value}");
}

fn check_lat(lat: &Value, what: &str) {
    for key in ["min", "max", "N"] {
        assert_int(&lat[key], &format!("{what}.{key}"));
    }
    for key in ["mean", "stddev"] {
        assert_number(&lat[key], &format!("{what}.{key}"));
    }
}

fn check_dir(dir: &Value, what: &str, plus: bool) {
    for key in [
        "io_bytes",
        "io_kbytes",
        "bw_bytes",
        "bw",
        "runtime",
        "total_ios",
        "short_ios",
        "drop_ios",
        "bw_min",
        "bw_max",
        "bw_samples",
        "iops_min",
        "iops_max",
        "iops_samples",
    ] {
        assert_int(&dir[key], &format!("{what}.{key}"));
    }
    for key in [
        "iops",
        "bw_agg",
        "bw_mean",
        "bw_dev",
        "iops_mean",
        "iops_stddev",
    ] {
        assert_number(&dir[key], &format!("{what}.{key}"));
    }
    for key in ["slat_ns", "clat_ns", "lat_ns"] {
        check_lat(&dir[key], &format!("{what}.{key}"));
    }
    let clat = &dir["clat_ns"];
    let total = dir["total_ios"].as_u64().unwrap();
    assert_eq!(
        clat["N"].as_u64().unwrap(),
        total,
        "{what}: clat N is the I/O count"
    );
    if total == 0 {
        // As fio: no percentiles or bins for a direction without I/O (fio's
        // own fio_jsonplus_clat2csv fails on an empty bins object).
        assert!(clat.get("percentile").is_none(), "{what}: no percentiles");
        assert!(clat.get("bins").is_none(), "{what}: no bins");
        return;
    }
    let percentiles = clat["percentile"].as_object().expect("clat_ns.percentile");
    for key in [
        "1.000000",
        "50.000000",
        "99.000000",
        "99.900000",
        "99.990000",
    ] {
        assert_int(
            &percentiles[key],
            &format!("{what}.clat_ns.percentile[{key}]"),
        );
    }
    for key in ["slat_ns", "lat_ns"] {
        assert!(
            dir[key].get("percentile").is_none(),
            "fio's default: clat percentiles only"
        );
    }
    if plus {
        let bins = clat["bins"].as_object().expect("json+ has clat_ns.bins");
        let sum: u64 = bins
            .values()
            .map(|v| v.as_u64().expect("bin counts are integers"))
            .sum();
        assert_eq!(sum, total, "{what}: json+ bins sum to the I/O count");
        for key in bins.keys() {
            key.parse::<u64>().expect("bin keys are latencies in ns");
        }
        {
            // The percentiles read back from the bins, as fio tools compute them.
            let mut sorted: Vec<(u64, u64)> = bins
                .iter()
                .map(|(k, v)| (k.parse().unwrap(), v.as_u64().unwrap()))
                .collect();
            sorted.sort();
            let p99 = percentiles["99.000000"].as_u64().unwrap();
            let mut seen = 0;
            let from_bins = sorted
                .iter()
                .find(|(_, count)| {
                    seen += count;
                    seen as f64 >= 0.99 * total as f64
                })
                .unwrap()
                .0;
            assert_eq!(from_bins, p99, "{what}: p99 from the bins");
        }
    } else {
        assert!(clat.get("bins").is_none(), "plain json has no bins");
    }
}

fn check_report(report: &Value, plus: bool) {
    assert!(report["fio version"].is_string());
    assert_int(&report["timestamp"], "timestamp");
    assert_int(&report["timestamp_ms"], "timestamp_ms");
    assert!(report["time"].is_string());
    assert!(report["disk_util"].is_array());
    let jobs = report["jobs"].as_array().expect("jobs");
    assert!(!jobs.is_empty());
    for job in jobs {
        assert!(job["jobname"].is_string());
        for key in [
            "groupid",
            "job_start",
            "error",
            "eta",
            "elapsed",
            "job_runtime",
            "ctx",
            "majf",
            "minf",
        ] {
            assert_int(&job[key], key);
        }
        for key in ["usr_cpu", "sys_cpu"] {
            assert_number(&job[key], key);
        }
        let options = job["job options"].as_object().expect("job options");
        for key in ["rw", "bs", "iodepth", "numjobs", "ioengine"] {
            assert!(
                options[key].is_string(),
                "job options.{key} is a string as in fio"
            );
        }
        for dir in ["read", "write", "trim"] {
            check_dir(&job[dir], dir, plus);
        }
        assert_int(&job["sync"]["total_ios"], "sync.total_ios");
        for key in [
            "iodepth_level",
            "iodepth_submit",
            "iodepth_complete",
            "latency_ns",
            "latency_us",
            "latency_ms",
        ] {
            let map = job[key].as_object().unwrap_or_else(|| panic!("{key}"));
            assert!(
                map.values().all(Value::is_number),
                "{key} holds percentages"
            );
        }
        assert!(job["iodepth_level"].get(">=64").is_some());
        assert!(job["latency_ms"].get(">=2000").is_some());
    }
    let isonvme = &report["isonvme"];
    let isolation = &isonvme["isolation"];
    assert!(isolation["verdict"].is_string());
    assert!(isolation["cpus"]
        .as_array()
        .is_some_and(|cpus| !cpus.is_empty()));
    for cpu in isolation["cpus"].as_array().unwrap() {
        assert_int(&cpu["cpu"], "cpu");
        assert_int(&cpu["voluntary_ctx"], "voluntary_ctx");
        assert!(cpu["role"] == "isolated" || cpu["role"] == "housekeeping");
    }
    let device = &isonvme["devices"][0];
    assert!(device["plan"]["vectors"].is_array(), "the plan used");
    assert!(device["plan"]["irq_queue_maps"].is_array());
    assert!(device["completion"].is_string());
    assert!(isonvme["threads"].as_array().is_some_and(|t| !t.is_empty()));
}

#[test]
fn json_plus_follows_fio_and_bins_sum_to_the_io_count() {
    let outcome = common::run(&[
        "--rw=randrw",
        "--rwmixread=60",
        "--iodepth=8",
        "--runtime=300ms",
        "--time_based",
        "--filename=sim,size=64M",
    ]);
    assert!(outcome.ok());
    let report = output::json(&outcome, true);
    check_report(&report, true);
    let job = &report["jobs"][0];
    assert!(job["read"]["total_ios"].as_u64().unwrap() > 0);
    assert!(job["write"]["total_ios"].as_u64().unwrap() > 0);
    assert_eq!(job["trim"]["total_ios"], 0);
    assert_eq!(job["job options"]["rw"], "randrw");
    assert_eq!(report["global options"]["rwmixread"], "60");
    // What the program prints is that report, as one JSON document.
    let formats = isonvme_bench::config::Formats {
        json_plus: true,
        ..Default::default()
    };
    let printed: Value = serde_json::from_str(&isonvme_bench::cli::render(&outcome, formats))
        .expect("json+ output is one JSON document");
    check_report(&printed, true);
    assert_eq!(
        printed["jobs"][0]["read"]["total_ios"],
        job["read"]["total_ios"]
    );

    let plain = output::json(&outcome, false);
    check_report(&plain, false);
}

#[test]
fn group_reporting_merges_jobs_like_fio() {
    let outcome = common::run(&[
        "--rw=randread",
        "--iodepth=4",
        "--numjobs=2",
        "--group_reporting",
        "--runtime=200ms",
        "--time_based",
        "--filename=sim,size=16M",
        "--output-format=json",
    ]);
    assert_eq!(outcome.jobs.len(), 2, "two job threads ran");
    let report = output::json(&outcome, false);
    check_report(&report, false);
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "group_reporting shows one entry");
    let total: u64 = outcome.jobs.iter().map(|j| j.dirs[0].ios).sum();
    assert_eq!(jobs[0]["read"]["total_ios"].as_u64().unwrap(), total);
    let text = output::normal(&outcome);
    assert!(text.contains("(groupid=0, jobs=2)"), "{text}");
}

#[test]
fn the_normal_report_reads_like_fio() {
    let outcome = common::run(&[
        "--name=seqread",
        "--rw=read",
        "--bs=8k",
        "--iodepth=4",
        "--runtime=200ms",
        "--time_based",
        "--filename=sim,size=16M",
        "--percentile_list=50:99.5",
    ]);
    let text = output::normal(&outcome);
    for needle in [
        "seqread: (g=0): rw=read, bs=(R) 8192B-8192B",
        "seqread: (groupid=0, jobs=1): err= 0",
        "  read: IOPS=",
        "    slat (",
        "    clat (",
        "     lat (",
        "    clat percentiles (",
        "50.00th=[",
        "99.50th=[",
        "  cpu          : usr=",
        "  IO depths    : 1=",
        "     issued rwts: total=",
        "Run status group 0 (all jobs):",
        "   READ: bw=",
        "isolation report",
        "verdict: ",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in\n{text}");
    }
    assert!(!text.contains("99.90th"), "only the listed percentiles");
}
