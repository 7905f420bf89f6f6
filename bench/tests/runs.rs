//! Short runs of every engine available here (isonvme on the simulator,
//! psync and io_uring on a temporary file), verify catching injected
//! corruption, and the run options that change what is measured: ramp_time,
//! rate_iops, cpus_allowed(_policy), job files with several jobs.

mod common;

use std::path::Path;

use isonvme_bench::engine::Uring;
use isonvme_bench::run::Outcome;

/// Flips every bit of one byte of `path` at `offset`.
fn corrupt(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[!byte[0]], offset).unwrap();
}

fn only_job(outcome: &Outcome) -> &isonvme_bench::stats::JobResult {
    assert_eq!(outcome.jobs.len(), 1);
    let job = &outcome.jobs[0];
    assert_eq!(job.error, None, "the job failed");
    job
}

fn io_uring_available() -> bool {
    match Uring::available() {
        Ok(()) => true,
        Err(error) => {
            eprintln!("io_uring is not available here ({error}): its runs are skipped");
            false
        }
    }
}

#[test]
fn isonvme_on_the_simulator_keeps_completions_off_isolated_cpus() {
    let outcome = common::run(&[
        "--rw=randread",
        "--iodepth=8",
        "--runtime=200ms",
        "--time_based",
        "--filename=sim,size=16M",
    ]);
    let job = only_job(&outcome);
    assert_eq!(job.engine, "isonvme");
    assert!(job.dirs[0].ios > 0 && job.dirs[1].ios == 0);
    assert_eq!(job.dirs[0].clat.n, job.dirs[0].ios);
    let pinned = job.pinned.as_ref().expect("isonvme threads are pinned");
    assert_eq!(pinned.len(), 1, "to the CPU whose handle they use");
    let split = &outcome.isolation.split;
    if split.isolated.is_empty() {
        return; // one CPU: nothing to keep clear
    }
    assert!(
        split.isolated.contains(pinned.first().unwrap()),
        "the job thread runs on an isolated CPU ({pinned}), isolated {}",
        split.isolated
    );
    // The completion threads ran only on housekeeping CPUs.
    assert_eq!(outcome.isolation.isolated_completions, Some(0));
    assert_eq!(outcome.isolation.isolated_interrupts, Some(0));
    assert_eq!(outcome.isolation.clean, Some(true));
    let handled: u64 = outcome.devices[0].vectors.iter().map(|v| v.3).sum();
    assert!(
        handled >= job.dirs[0].ios,
        "every completion was reaped by a vector"
    );
}

#[test]
fn psync_and_io_uring_on_a_file_write_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let mut engines = vec!["psync"];
    if io_uring_available() {
        engines.push("io_uring");
    }
    for engine in engines {
        let path = dir.path().join(format!("{engine}.dat"));
        let filename = format!("--filename={}", path.display());
        let ioengine = format!("--ioengine={engine}");
        // --name: a size-based job from fio's defaults, not the default job.
        let outcome = common::run(&[
            "--name=mixed",
            &ioengine,
            &filename,
            "--size=1m",
            "--rw=randrw",
            "--iodepth=8",
            "--verify=crc32c",
        ]);
        let job = only_job(&outcome);
        assert_eq!(job.engine, engine);
        let (reads, writes) = (job.dirs[0].ios, job.dirs[1].ios);
        assert_eq!(
            reads + writes,
            256,
            "{engine}: size=1m at bs=4k is 256 I/Os"
        );
        assert!(
            reads > 0 && writes > 0,
            "{engine}: a mix ({reads} reads, {writes} writes)"
        );
        assert_eq!(job.synchronous, engine == "psync");
        let verify = job.verify.as_ref().unwrap();
        assert_eq!(verify.errors, 0, "{engine}: {:?}", verify.messages);
        // The random map writes each block once: every write is read back.
        assert_eq!(verify.checked, writes, "{engine}: {verify:?}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20, "laid out");
    }
}

#[test]
fn verify_catches_corruption_injected_into_the_simulated_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("ns.img");
    let filename = format!("--filename=sim,size=1M,file={}", image.display());
    // Write every block with checksums; the read-back passes.
    let outcome = common::run(&["--name=fill", &filename, "--rw=write", "--verify=crc32c"]);
    let job = only_job(&outcome);
    let verify = job.verify.as_ref().unwrap();
    assert_eq!((verify.checked, verify.errors), (256, 0));

    // The namespace's backing file changes under the device's feet.
    corrupt(&image, 5 * 4096 + 100);

    // Reading it back finds exactly that block, by its offset.
    let outcome = common::run(&[
        "--name=check",
        &filename,
        "--rw=read",
        "--iodepth=4",
        "--verify=crc32c",
    ]);
    let job = &outcome.jobs[0];
    let verify = job.verify.as_ref().unwrap();
    assert_eq!((verify.checked, verify.errors), (256, 1), "{verify:?}");
    assert!(
        verify.messages[0].contains("verify failed") && verify.messages[0].contains("offset 20480"),
        "{:?}",
        verify.messages
    );
    assert_eq!(job.errno(), 84, "fio's EILSEQ");
    assert!(!outcome.ok());

    // The program says so, with the offset, and fails.
    let output = common::bench(&[&filename, "--rw=randread", "--verify=crc32c"]);
    let (stdout, stderr) = common::text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("offset 20480"), "{stderr}");
    assert!(stdout.contains("err=84"), "{stdout}");
}

#[test]
fn verify_catches_corruption_on_a_file_through_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data");
    let filename = format!("--filename={}", path.display());
    let outcome = common::run(&[
        "--name=fill",
        &filename,
        "--size=256k",
        "--rw=write",
        "--verify=crc32c",
    ]);
    assert_eq!(only_job(&outcome).verify.as_ref().unwrap().errors, 0);
    corrupt(&path, 12 * 4096 + 7);
    let outcome = common::run(&["--name=check", &filename, "--rw=read", "--verify=crc32c"]);
    let verify = outcome.jobs[0].verify.as_ref().unwrap();
    assert_eq!(verify.errors, 1, "{verify:?}");
    assert!(
        verify.messages[0].contains("offset 49152"),
        "{:?}",
        verify.messages
    );
}

#[test]
fn ramp_time_is_not_measured() {
    // A size-based job measures exactly `size` after the ramp, however many
    // I/Os the ramp did.
    let outcome = common::run(&[
        "--name=ramped",
        "--filename=sim,size=1M",
        "--rw=randread",
        "--iodepth=4",
        "--ramp_time=100ms",
    ]);
    let job = only_job(&outcome);
    assert_eq!(job.issued[0], 256);
    assert_eq!(job.dirs[0].ios, 256);
    assert_eq!(job.dirs[0].bytes, 1 << 20);
}

#[test]
fn rate_iops_caps_the_rate() {
    let outcome = common::run(&[
        "--filename=sim,size=16M",
        "--rw=randread",
        "--iodepth=4",
        "--rate_iops=2000",
        "--runtime=300ms",
        "--time_based",
    ]);
    let job = only_job(&outcome);
    let ios = job.dirs[0].ios;
    // I/O n is not issued before n / rate seconds into the run.
    let most = (job.runtime.as_secs_f64() * 2000.0).floor() as u64 + 1;
    assert!(
        ios > 0 && ios <= most,
        "{ios} I/Os in {:?} at rate_iops=2000",
        job.runtime
    );
}

#[test]
fn cpus_allowed_policy_places_threads() {
    let runnable = isonvme::os::runnable_cpus();
    if runnable.len() < 2 {
        eprintln!("one CPU: placement is not tested");
        return;
    }
    let cpus: Vec<usize> = runnable.iter().take(2).collect();
    let allowed = format!("--cpus_allowed={},{}", cpus[0], cpus[1]);
    // split: one CPU each, in order.
    let outcome = common::run(&[
        "--filename=sim,size=16M",
        "--numjobs=2",
        &allowed,
        "--cpus_allowed_policy=split",
        "--runtime=100ms",
        "--time_based",
    ]);
    let pinned: Vec<String> = outcome
        .jobs
        .iter()
        .map(|j| j.pinned.as_ref().unwrap().to_string())
        .collect();
    assert_eq!(pinned, [cpus[0].to_string(), cpus[1].to_string()]);
    // shared, on a kernel engine: every thread on the whole set.
    let dir = tempfile::tempdir().unwrap();
    let filename = format!("--filename={}", dir.path().join("f").display());
    let outcome = common::run(&[
        &filename,
        "--size=64k",
        "--numjobs=2",
        &allowed,
        "--cpus_allowed_policy=shared",
    ]);
    for job in &outcome.jobs {
        assert_eq!(job.pinned.as_ref().unwrap().len(), 2);
    }
}

#[test]
fn a_job_file_runs_its_jobs_together() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let jobfile = dir.path().join("two.fio");
    std::fs::write(
        &jobfile,
        format!(
            "[global]\nruntime=150ms\ntime_based\nbs=8k\n\n[on-sim]\nfilename=sim,size=16M\nrw=randread\niodepth=4\n\n[on-file]\nioengine=psync\nfilename={}\nsize=256k\nrw=randwrite\n",
            data.display()
        ),
    )
    .unwrap();
    let outcome = common::run(&[jobfile.to_str().unwrap()]);
    let names: Vec<(&str, &str)> = outcome
        .jobs
        .iter()
        .map(|j| (j.options.name.as_str(), j.engine))
        .collect();
    assert_eq!(names, [("on-sim", "isonvme"), ("on-file", "psync")]);
    assert!(outcome
        .jobs
        .iter()
        .all(|j| j.error.is_none() && j.options.bs == 8192));
    assert!(outcome.jobs[0].dirs[0].ios > 0 && outcome.jobs[1].dirs[1].ios > 0);
    assert_eq!(
        outcome.devices.len(),
        1,
        "the isonvme report covers the sim job"
    );
}

#[test]
fn inline_completions_are_reaped_by_the_job_thread_and_reported() {
    let outcome = common::run(&[
        "--rw=randread",
        "--iodepth=4",
        "--runtime=200ms",
        "--time_based",
        "--filename=sim,size=16M",
        "--completion=inline",
        "--shadow_doorbells=0",
    ]);
    let job = only_job(&outcome);
    assert!(job.dirs[0].ios > 0);
    let device = &outcome.devices[0];
    assert!(
        device.completion.starts_with("inline on every CPU")
            && device.completion.ends_with("register doorbells"),
        "{}",
        device.completion
    );
    assert!(device.layout.contains("inline"), "{}", device.layout);
    // No completion thread reaped anything: the job thread did it all.
    let handled: u64 = device.vectors.iter().map(|v| v.3).sum();
    assert_eq!(handled, 0, "a completion thread reaped inline completions");
    let cpu = job.pinned.as_ref().and_then(|p| p.first()).unwrap();
    let row = outcome
        .isolation
        .rows
        .iter()
        .find(|r| r.cpu == cpu)
        .expect("a row for the job's CPU");
    assert!(
        row.inline.unwrap_or(0) >= job.dirs[0].ios,
        "inline reaps {:?} < {} I/Os",
        row.inline,
        job.dirs[0].ios
    );
    if !outcome.isolation.split.isolated.is_empty() {
        assert_eq!(outcome.isolation.clean, Some(true));
        assert!(
            outcome.isolation.verdict.contains("reaped")
                && outcome.isolation.verdict.contains("inline"),
            "{}",
            outcome.isolation.verdict
        );
    }
}

#[test]
fn isonvme_only_and_io_uring_only_options_are_refused_elsewhere() {
    for (args, needle) in [
        (&["--filename=sim", "--hipri"][..], "completion=inline"),
        (
            &["--filename=/tmp/x", "--ioengine=psync", "--inline_cpus=all"][..],
            "inline_cpus= applies to ioengine=isonvme only",
        ),
        (
            &["--filename=sim", "--inline_cpus=x"][..],
            "none, isolated, all",
        ),
        (
            &["--filename=sim", "--cpus_allowed=4000-4001", "--runtime=1"][..],
            "names CPUs 4000-4001 that this process cannot run on",
        ),
    ] {
        let output = common::bench(args);
        let (_, error) = common::text(&output);
        assert!(!output.status.success(), "{args:?} ran");
        assert!(error.contains(needle), "{args:?}: {error}");
    }
}

#[test]
fn a_run_sharing_its_cpu_with_a_busy_thread_is_reported_as_disturbed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let cpu = isonvme::os::runnable_cpus().last().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let hog = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            isonvme::os::pin_current_thread(&isonvme::mapping::CpuSet::single(cpu)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    let allowed = format!("--cpus_allowed={cpu}");
    let outcome = common::run(&[
        "--name=shared",
        "--filename=sim,size=16M",
        "--rw=randread",
        "--iodepth=1",
        "--runtime=500ms",
        "--time_based",
        &allowed,
    ]);
    stop.store(true, Ordering::Relaxed);
    hog.join().unwrap();
    let disturbed = outcome
        .isolation
        .disturbed
        .as_deref()
        .expect("a job thread sharing its CPU with a spinning thread is disturbed");
    assert!(disturbed.contains("had its CPU for only"), "{disturbed}");
}

#[test]
fn injected_faults_are_recovered_and_every_block_verifies() {
    for (fault, what) in [
        ("drop@40", "1 controller resets"),
        ("fatal@40", "1 fatal statuses, 1 controller resets"),
        ("status:0/6@40", "1 commands retried after an error status"),
    ] {
        let outcome = common::run(&[
            "--name=faulty",
            "--ioengine=isonvme",
            &format!("--filename=sim,size=16M,fault={fault}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=1M",
            "--verify=crc32c",
            "--command_timeout=100ms",
        ]);
        let job = only_job(&outcome);
        let verify = job.verify.as_ref().unwrap();
        assert_eq!(verify.checked, 256, "{fault}");
        assert_eq!(verify.errors, 0, "{fault}: {:?}", verify.messages);
        assert!(
            outcome
                .notes
                .iter()
                .any(|note| note.contains("recovery:") && note.contains(what)),
            "{fault}: {:?}",
            outcome.notes
        );
    }
    // Asynchronous events are reported.
    let outcome = common::run(&[
        "--name=events",
        "--ioengine=isonvme",
        "--filename=sim,size=16M,fault=event:health@40",
        "--rw=randread",
        "--bs=4k",
        "--size=1M",
    ]);
    assert!(
        outcome.notes.iter().any(|n| n.contains(
            "asynchronous events from the controller: health: NVM subsystem reliability degraded"
        )),
        "{:?}",
        outcome.notes
    );
    // A device that goes away ends the job with a clear error, no hang.
    let outcome = common::run(&[
        "--name=removed",
        "--ioengine=isonvme",
        "--filename=sim,size=16M,fault=remove@40",
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        "--size=1M",
    ]);
    let error = outcome.jobs[0].error.as_deref().unwrap_or_default();
    assert!(error.contains("command aborted by host"), "{error}");
    assert!(
        outcome
            .notes
            .iter()
            .any(|n| n.contains("the device was removed")),
        "{:?}",
        outcome.notes
    );
}

#[test]
fn blocks_larger_than_the_controllers_transfer_limit_are_split_by_the_driver() {
    // The simulator's MDTS is 128 KiB: 1 MiB writes go as 8 commands each.
    let outcome = common::run(&[
        "--name=big",
        "--ioengine=isonvme",
        "--filename=sim,size=64M",
        "--rw=randwrite",
        "--bs=1m",
        "--iodepth=4",
        "--size=16m",
        "--verify=crc32c",
    ]);
    let job = only_job(&outcome);
    let verify = job.verify.as_ref().unwrap();
    assert_eq!(
        (verify.checked, verify.errors),
        (16, 0),
        "{:?}",
        verify.messages
    );
    let notes: Vec<&String> = outcome
        .devices
        .iter()
        .flat_map(|device| &device.notes)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("the driver splits each I/O into 8 commands")),
        "{notes:?}"
    );
}
