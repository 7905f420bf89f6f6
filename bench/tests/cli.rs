//! The program as users run it: exit status and messages for bad input
//! (never a panic), the report on stdout or in `--output`, no progress
//! line when stdout is not a terminal, `--latency-svg`, `--compare`.

mod common;

use common::{bench, text};

#[test]
fn bad_input_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let unreadable = dir.path().join("missing.fio");
    let unreadable = unreadable.to_str().unwrap();
    let bad_file = dir.path().join("bad.fio");
    std::fs::write(&bad_file, "[job]\nrw=randread\nbssplit=4k/50:8k/50\n").unwrap();
    let bad_file = bad_file.to_str().unwrap();
    let cases: &[(&[&str], i32, &[&str])] = &[
        (&["--bs=5000"], 2, &["bs=5000", "multiple of 512"]),
        (&["--iodepth=-1"], 2, &["iodepth=-1"]),
        (&["--runtime=1x"], 2, &["runtime=1x"]),
        (&["--loops=2"], 2, &["`loops`", "does not support"]),
        (&[unreadable], 2, &["missing.fio", "No such file"]),
        (&[bad_file], 2, &["bad.fio:3", "`bssplit`"]),
        (
            &["--filename=sim,size=12Q"],
            2,
            &["simulator option `size`"],
        ),
        (&["--filename=0000:7f:1f.7"], 1, &["0000:7f:1f.7", "lspci"]),
        (
            &["--ioengine=psync", "--filename=/nonexistent-dir/data"],
            2,
            &["/nonexistent-dir/data", "size="],
        ),
        (
            &["--filename=sim,size=64M", "--offset=64M"],
            2,
            &["offset=", "beyond the end"],
        ),
        (
            &["--filename=sim", "--bs=1m", "--iodepth=1000"],
            2,
            &["iodepth=1000 of 8 commands each", "MDTS"],
        ),
        (&["--iodepth=60000"], 2, &["iodepth=60000", "lower iodepth"]),
        (
            &["--output=/nonexistent-dir/report.txt"],
            2,
            &["--output=/nonexistent-dir/report.txt"],
        ),
        (
            &["--latency-svg=/nonexistent-dir/x.svg"],
            2,
            &["directory /nonexistent-dir"],
        ),
    ];
    for (args, code, needles) in cases {
        let output = bench(args);
        let (stdout, stderr) = text(&output);
        assert_eq!(output.status.code(), Some(*code), "{args:?}: {stderr}");
        assert!(stderr.starts_with("isonvme-bench: "), "{args:?}: {stderr}");
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: `{needle}` not in {stderr}"
            );
        }
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(
            stdout.is_empty(),
            "{args:?}: nothing runs, nothing is reported"
        );
    }
}

#[test]
fn the_report_goes_to_stdout_or_output_without_a_progress_line() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let svg = dir.path().join("latency.svg");
    let output = bench(&[
        "--filename=sim,size=16M",
        "--rw=randread",
        "--runtime=600ms",
        "--time_based",
        "--output-format=json",
        &format!("--output={}", report.display()),
        &format!("--latency-svg={}", svg.display()),
    ]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    // stdout is a pipe here: no `Jobs: ...` line, and the report is in the file.
    assert!(stdout.is_empty(), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert!(json["jobs"][0]["read"]["iops"].as_f64().unwrap() > 0.0);
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(drawing.starts_with("<svg"), "an SVG");
    assert!(
        drawing.contains("percentile") && drawing.contains("isonvme"),
        "titled, with the series"
    );

    let output = bench(&["--filename=sim,size=16M", "--runtime=600ms", "--time_based"]);
    let (stdout, _) = text(&output);
    assert!(stdout.contains("Run status group 0"), "{stdout}");
    assert!(
        !stdout.contains("Jobs: ") && !stdout.contains('\r'),
        "{stdout}"
    );
}

#[test]
fn compare_runs_both_sides_and_prints_the_ratio_table() {
    let output = bench(&[
        "--filename=sim,size=16M",
        "--rw=randread",
        "--iodepth=4",
        "--runtime=150ms",
        "--time_based",
        "--compare=completion=interrupt",
        "--compare=completion=poll",
    ]);
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stdout.contains("=== A: completion=interrupt ==="),
        "{stdout}"
    );
    assert!(stdout.contains("=== B: completion=poll ==="), "{stdout}");
    assert!(stdout.contains("completion interrupt") && stdout.contains("completion poll"));
    let table = &stdout[stdout.find("Comparison (B/A").expect("the table")..];
    for metric in ["read IOPS", "read clat p99", "read clat mean"] {
        let row = table
            .lines()
            .find(|line| line.trim_start().starts_with(metric))
            .unwrap_or_else(|| panic!("no `{metric}` row in\n{table}"));
        let ratio = row.split_whitespace().find(|w| w.ends_with('x')).unwrap();
        ratio.trim_end_matches('x').parse::<f64>().expect("a ratio");
    }
}

#[test]
fn an_interrupt_ends_the_run_with_the_report_of_what_ran() {
    use std::io::Read as _;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let mut child = Command::new(env!("CARGO_BIN_EXE_isonvme-bench"))
        .args([
            "--name=long",
            "--filename=sim,size=16M",
            "--rw=randread",
            "--time_based",
            "--runtime=10m",
            "--output-format=json",
            "--eta=never",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    // Start-up (simulator, runtime) takes milliseconds; give it ample time
    // so the signal lands while the job is issuing reads.
    std::thread::sleep(Duration::from_secs(3));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("isonvme-bench did not stop after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    let ios = report["jobs"][0]["read"]["total_ios"].as_u64().unwrap();
    assert!(ios > 0, "the report counts the reads that ran: {stdout}");
}

#[test]
fn character_devices_and_file_lists() {
    let output = common::bench(&[
        "--name=null",
        "--ioengine=psync",
        "--filename=/dev/null",
        "--rw=write",
        "--bs=4k",
        "--size=1m",
        "--eta=never",
    ]);
    let (out, err) = common::text(&output);
    assert!(output.status.success(), "{out}{err}");
    assert!(out.contains("is a character device"), "{out}");
    let output = common::bench(&[
        "--name=zero",
        "--ioengine=psync",
        "--filename=/dev/zero",
        "--rw=read",
        "--bs=4k",
        "--size=1m",
        "--eta=never",
    ]);
    assert!(output.status.success(), "{:?}", common::text(&output));
    // Reading /dev/null, a device without size=, a `:` list: clear errors.
    for (args, needle) in [
        (
            &["--filename=/dev/null", "--rw=read", "--size=1m"][..],
            "read from /dev/zero",
        ),
        (&["--filename=/dev/zero", "--rw=read"], "give size="),
        (
            &[
                "--filename=/tmp/isonvme-a:/tmp/isonvme-b",
                "--rw=write",
                "--size=1m",
            ],
            "`:`-separated list",
        ),
    ] {
        let mut all = vec!["--name=x", "--ioengine=psync", "--eta=never"];
        all.extend_from_slice(args);
        let output = common::bench(&all);
        let (_, err) = common::text(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn a_signal_stops_laying_out_a_file() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.dat");
    let mut child = Command::new(env!("CARGO_BIN_EXE_isonvme-bench"))
        .args([
            "--name=big",
            "--ioengine=psync",
            &format!("--filename={}", file.display()),
            "--rw=write",
            "--size=4m",
            "--offset=64g",
            "--eta=never",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until laying out has begun.
    let start = Instant::now();
    while file.metadata().map_or(0, |m| m.len()) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "layout never began"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let signalled = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still laying out 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(!status.success());
    let len = file.metadata().unwrap().len();
    assert!(len < 64 << 30, "the layout stopped early ({len} bytes)");
}
