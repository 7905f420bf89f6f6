//! fio itself, with isonvme's ioengine (`capi/fio/`, built by
//! `capi/fio/build.sh`, which `./run-tests` runs first), on the simulated
//! controller: its job options, verify, stonewall and JSON output work
//! unchanged.

use std::path::PathBuf;
use std::process::Command;

fn engine() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let path = std::env::var_os("ISONVME_FIO_ENGINE")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/fio/libisonvme_fio.so"));
    assert!(
        path.exists(),
        "{} is missing: build it with capi/fio/build.sh (./run-tests does)",
        path.display()
    );
    path
}

/// Runs fio with `args` and the engine; returns its JSON report.
fn fio(args: &[&str]) -> serde_json::Value {
    let engine = format!("--ioengine=external:{}", engine().display());
    let json = args.iter().any(|a| a.starts_with("--output-format"));
    // fio leaves files (verify state) in its working directory.
    let scratch = tempfile::tempdir().unwrap();
    let output = Command::new("fio")
        .current_dir(scratch.path())
        .args((!json).then_some("--output-format=json"))
        .arg(&engine)
        .args(args)
        .output()
        .expect("running fio (capi/fio/build.sh installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "fio {args:?} failed:\n{stdout}\n{stderr}"
    );
    let json = &stdout[stdout.find('{').expect("fio printed JSON")..];
    serde_json::from_str(json).unwrap_or_else(|e| panic!("fio's JSON: {e}\n{stdout}"))
}

fn cpu() -> String {
    // The last CPU, treated as isolated for the run.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    (cpus - 1).to_string()
}

#[test]
fn fio_runs_random_reads_on_the_simulator() {
    let cpu = cpu();
    let report = fio(&[
        "--thread",
        "--name=randread",
        "--filename=sim,size=64M",
        "--rw=randread",
        "--bs=4k",
        "--iodepth=16",
        "--size=16m",
        &format!("--cpus_allowed={cpu}"),
        &format!("--isolated={cpu}"),
    ]);
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["read"]["io_bytes"], 16 << 20, "{job}");
    assert!(job["read"]["iops"].as_f64().unwrap() > 0.0);
}

#[test]
fn fio_verifies_what_it_wrote_through_the_engine() {
    let cpu = cpu();
    let report = fio(&[
        "--thread",
        "--name=verify",
        "--filename=sim,size=64M",
        "--rw=randwrite",
        "--bs=8k",
        "--iodepth=8",
        "--size=8m",
        "--verify=crc32c",
        "--do_verify=1",
        &format!("--cpus_allowed={cpu}"),
        &format!("--isolated={cpu}"),
        "--completion=poll",
    ]);
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["write"]["io_bytes"], 8 << 20, "{job}");
    // The verify pass read every block back.
    assert_eq!(job["read"]["io_bytes"], 8 << 20, "{job}");
}

#[test]
fn a_job_file_with_stonewall_runs_its_jobs_one_after_the_other() {
    let cpu = cpu();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two.fio");
    std::fs::write(
        &file,
        format!(
            "[global]\nthread\nfilename=sim,size=64M\nbs=4k\ncpus_allowed={cpu}\nisolated={cpu}\n\n\
             [write]\nrw=write\nsize=4m\niodepth=4\n\n\
             [read]\nstonewall\nrw=randread\nsize=4m\niodepth=32 ; deeper\n"
        ),
    )
    .unwrap();
    let report = fio(&[file.to_str().unwrap()]);
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["jobname"], "write");
    assert_eq!(jobs[0]["write"]["io_bytes"], 4 << 20, "{}", jobs[0]);
    assert_eq!(jobs[1]["jobname"], "read");
    assert_eq!(jobs[1]["read"]["io_bytes"], 4 << 20, "{}", jobs[1]);
    // Stonewall: two groups.
    assert_ne!(jobs[0]["groupid"], jobs[1]["groupid"]);
}

#[test]
fn what_one_job_group_wrote_the_next_one_reads_back_and_verifies() {
    // fio's surface-scan.fio: a write phase, then (stonewall) a read phase
    // verifying it. The simulator's media lives in the runtime, so this
    // holds only if the device stays open between the groups.
    let cpu = cpu();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scan.fio");
    std::fs::write(
        &file,
        format!(
            "[global]\nthread\nfilename=sim,size=16M\nbs=64k\nverify=crc32c\n\
             cpus_allowed={cpu}\nisolated={cpu}\n\n\
             [write-phase]\nrw=write\nfill_device=1\ndo_verify=0\n\n\
             [verify-phase]\nstonewall\nrw=read\ndo_verify=1\n"
        ),
    )
    .unwrap();
    let report = fio(&[file.to_str().unwrap()]);
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(jobs[0]["error"], 0, "{}", jobs[0]);
    assert_eq!(jobs[0]["write"]["io_bytes"], 16 << 20, "{}", jobs[0]);
    assert_eq!(jobs[1]["error"], 0, "{}", jobs[1]);
    assert_eq!(jobs[1]["read"]["io_bytes"], 16 << 20, "{}", jobs[1]);
}

#[test]
fn more_job_threads_than_cpus_take_turns_with_a_cpu_queue_and_verify() {
    // Three job threads pinned to one CPU, then (stonewall) more unpinned
    // job threads than there are CPUs: each writes its own 2 MiB with
    // crc32c headers and reads it back, so a completion delivered to the
    // wrong job thread fails the run.
    let cpu = cpu();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let unpinned = 2 * cpus + 1;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("crowd.fio");
    std::fs::write(
        &file,
        format!(
            "[global]\nthread\nfilename=sim,size=64M\nrw=randwrite\nbs=4k\niodepth=8\n\
             size=2m\noffset_increment=2m\nverify=crc32c\ndo_verify=1\ngroup_reporting=0\n\n\
             [pinned]\ncpus_allowed={cpu}\nnumjobs=3\n\n\
             [unpinned]\nstonewall\noffset=6m\nnumjobs={unpinned}\n"
        ),
    )
    .unwrap();
    let report = fio(&[file.to_str().unwrap()]);
    let jobs = report["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3 + unpinned);
    for job in jobs {
        assert_eq!(job["error"], 0, "{job}");
        assert_eq!(job["write"]["io_bytes"], 2 << 20, "{job}");
        assert_eq!(job["read"]["io_bytes"], 2 << 20, "{job}");
    }
}

#[test]
fn bssplit_rate_and_latency_logs_work_through_the_engine() {
    // fio's own features on top of the engine: mixed block sizes, a rate
    // limit, per-I/O latency logs and json+ histograms.
    let cpu = cpu();
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("lat");
    let report = fio(&[
        "--output-format=json+",
        "--thread",
        "--name=mixed",
        "--filename=sim,size=64M",
        "--rw=randread",
        "--bssplit=4k/50:64k/50",
        "--iodepth=4",
        "--number_ios=400",
        "--rate_iops=4000",
        &format!("--write_lat_log={}", prefix.display()),
        "--log_avg_msec=0",
        &format!("--cpus_allowed={cpu}"),
        &format!("--isolated={cpu}"),
    ]);
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "{job}");
    assert_eq!(job["read"]["total_ios"], 400, "{job}");
    // Both block sizes were used: the bytes lie strictly between all-4k
    // and all-64k.
    let bytes = job["read"]["io_bytes"].as_u64().unwrap();
    assert!(bytes > 400 * 4096 && bytes < 400 * 65536, "{bytes}");
    // 400 I/Os at 4000 IOPS take at least ~100 ms.
    assert!(job["read"]["runtime"].as_u64().unwrap() >= 90, "{job}");
    assert!(job["read"]["clat_ns"]["bins"].is_object(), "json+ bins");
    // One line per I/O in the completion-latency log.
    let log = std::fs::read_to_string(dir.path().join("lat_clat.1.log")).unwrap();
    assert_eq!(log.lines().count(), 400);
}

#[test]
fn the_engine_refuses_process_mode_clearly() {
    let engine = format!("--ioengine=external:{}", engine().display());
    let output = Command::new("fio")
        .args([
            engine.as_str(),
            "--name=noth",
            "--filename=sim,size=16M",
            "--rw=read",
            "--size=1m",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        format!("{stdout}{stderr}").contains("--thread"),
        "{stdout}{stderr}"
    );
}

#[test]
fn the_engine_refuses_offloaded_submission_clearly() {
    // fio's io_submit_mode=offload submits from a pool of worker threads,
    // not from the job thread's CPU queue.
    let engine = format!("--ioengine=external:{}", engine().display());
    let output = Command::new("fio")
        .args([
            engine.as_str(),
            "--thread",
            "--name=offload",
            "--filename=sim,size=16M",
            "--rw=read",
            "--size=1m",
            "--io_submit_mode=offload",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("io_submit_mode=offload is not supported"),
        "{text}"
    );
}
