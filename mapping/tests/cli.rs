//! `isonvme-map` end to end: the JSON contract of `plan`, the readable
//! report of `show` on fake machines, `can-offline`'s answers and exit
//! codes, and clear errors (exit 2, never a panic) for bad input.

use std::path::Path;
use std::process::{Command, Output};

use isonvme_mapping::sysfs::FakeSysfs;
use serde_json::Value;

fn isonvme_map(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isonvme-map"))
        .args(args)
        .output()
        .expect("isonvme-map runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// 8 CPUs on 2 nodes, SMT2 (n, n+4), isolcpus=io_queue,2-3,6-7 on the
/// kernel command line.
fn eight_cpu_machine(dir: &Path) -> String {
    FakeSysfs::new()
        .cpus("0-7", "0-7", "0-7")
        .node(0, "0-3")
        .node(1, "4-7")
        .siblings("0,4")
        .siblings("1,5")
        .siblings("2,6")
        .siblings("3,7")
        .cmdline("BOOT_IMAGE=/vmlinuz ro isolcpus=managed_irq,io_queue,2-3,6-7 quiet")
        .write(dir)
        .unwrap();
    dir.to_str().unwrap().to_string()
}

#[test]
fn plan_prints_the_specification_object_for_each_kernel_example() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kernel");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let document: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for policy in ["io_queue", "mainline"] {
            let output = isonvme_map(&[
                "plan",
                "--input",
                path.to_str().unwrap(),
                "--policy",
                policy,
            ]);
            assert!(output.status.success(), "{}", stderr(&output));
            let printed: Value = serde_json::from_str(&stdout(&output)).unwrap();
            let expected = &document["expected"][policy];
            for key in [
                "nr_vecs",
                "enospc",
                "sets",
                "num_possible_queues",
                "isolation_active",
            ] {
                assert_eq!(
                    printed[key],
                    expected[key],
                    "{} {policy} {key}",
                    path.display()
                );
            }
            assert_eq!(
                printed["queue_map"]["cpu_to_queue"],
                expected["queue_map"]["cpu_to_queue"],
                "{} {policy}",
                path.display()
            );
            assert_eq!(
                printed["irq_queue_maps"].as_array().unwrap().len(),
                expected["irq_queue_maps"].as_array().unwrap().len()
            );
        }
    }
}

#[test]
fn show_reads_the_machine_and_the_kernel_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let root = eight_cpu_machine(dir.path());
    let output = isonvme_map(&["show", "--sysfs-root", &root]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("Housekeeping  0-1,4-5"), "{text}");
    assert!(text.contains("Isolated      2-3,6-7"), "{text}");
    assert!(
        text.contains("isolcpus=managed_irq,io_queue on the kernel command line"),
        "{text}"
    );
    assert!(text.contains("capped at 4 housekeeping CPUs"), "{text}");
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "line longer than 80 columns: {line:?}"
        );
    }

    let output = isonvme_map(&["show", "--sysfs-root", &root, "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["isolation"]["effective"], "2-3,6-7");
    assert_eq!(json["plan"]["nr_vecs"], 5);
    // Every managed vector stays on housekeeping CPUs.
    for vector in json["plan"]["vectors"].as_array().unwrap() {
        if vector["managed"] == true {
            let cpus: isonvme_mapping::CpuSet = vector["cpus"].as_str().unwrap().parse().unwrap();
            assert!(cpus.is_subset(&"0-1,4-5".parse().unwrap()), "{cpus}");
        }
    }
}

#[test]
fn show_wraps_long_cpu_lists_within_80_columns() {
    let dir = tempfile::tempdir().unwrap();
    let mut machine = FakeSysfs::new().cpus("0-255", "0-255", "0-255");
    for node in 0..4 {
        machine = machine.node(node, &format!("{}-{}", node * 64, node * 64 + 63));
    }
    // Every other CPU isolated gives the longest possible cpulists.
    machine = machine.cmdline("isolcpus=io_queue,1-255:1/2");
    machine.write(dir.path()).unwrap();
    let output = isonvme_map(&[
        "show",
        "--sysfs-root",
        dir.path().to_str().unwrap(),
        "--queues",
        "8",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for line in text.lines() {
        assert!(
            line.chars().count() <= 80,
            "line longer than 80 columns: {line:?}"
        );
    }
    assert!(text.contains("255"), "{text}");
}

#[test]
fn can_offline_answers_with_the_reason_and_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let root = eight_cpu_machine(dir.path());
    // Four queues, one per housekeeping CPU: each is the only
    // housekeeping CPU of a queue that isolated CPUs submit to.
    let refused = isonvme_map(&["can-offline", "0", "--queues", "4", "--sysfs-root", &root]);
    assert_eq!(refused.status.code(), Some(1), "{}", stderr(&refused));
    assert!(stdout(&refused)
        .contains("CPU 0 must stay online: it is the last online housekeeping CPU of queue"));

    let isolated = isonvme_map(&["can-offline", "2", "--sysfs-root", &root]);
    assert_eq!(isolated.status.code(), Some(0));
    assert!(stdout(&isolated).contains("isolated CPUs may always go offline"));

    let mainline = isonvme_map(&[
        "can-offline",
        "0",
        "--policy",
        "mainline",
        "--sysfs-root",
        &root,
    ]);
    assert_eq!(mainline.status.code(), Some(0));
    assert!(stdout(&mainline).contains("the mainline policy ignores isolation"));
}

#[test]
fn bad_input_is_a_clear_error_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let root = eight_cpu_machine(dir.path());
    let cases: &[(&[&str], &str)] = &[
        (
            &["can-offline", "42", "--sysfs-root", &root],
            "CPU 42 does not exist",
        ),
        (
            &["can-offline", "two", "--sysfs-root", &root],
            "`two` is not a CPU number",
        ),
        (
            &["show", "--isolated", "1-x", "--sysfs-root", &root],
            "malformed CPU list token `1-x`",
        ),
        (
            &["show", "--isolated", "9", "--sysfs-root", &root],
            "not possible CPUs",
        ),
        (
            &["show", "--sysfs-root", "/nonexistent-isonvme"],
            "is sysfs mounted?",
        ),
        (
            &["show", "--queues", "0", "--sysfs-root", &root],
            "ask for at least one I/O queue",
        ),
        (
            &["plan", "--input", "/nonexistent-isonvme.json"],
            "give the path of a JSON request",
        ),
    ];
    for (args, message) in cases {
        let output = isonvme_map(args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(message),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(!stderr(&output).contains("panicked"), "{args:?}");
    }

    let bad = dir.path().join("bad.json");
    for (text, message) in [
        ("not json", "not a valid plan request"),
        (
            r#"{"topology":{"possible":"0-3","isolated":"7"},"params":{"queues":2}}"#,
            "not possible CPUs",
        ),
        (
            r#"{"topology":{"possible":"0-3","online":"0-5"},"params":{"queues":2}}"#,
            "online but not present",
        ),
        (
            r#"{"topology":{"possible":"0-3"},"params":{"queues":2,"sets":[2,0]}}"#,
            "set 1 has size 0",
        ),
        (
            r#"{"topology":{"possible":"0-3,x"},"params":{"queues":2}}"#,
            "`x`",
        ),
        (
            r#"{"topology":{"possible":"0-3"},"params":{"queues":2,"pre_vectors":4294967295}}"#,
            "pre_vectors = 4294967295 is out of range",
        ),
        (
            r#"{"topology":{"possible":"0-3"},"params":{"queues":2,"post_vectors":18446744073709551615}}"#,
            "post_vectors = 18446744073709551615 is out of range",
        ),
        (
            r#"{"topology":{"possible":"0-3"},"params":{"queues":2,"queue_offset":18446744073709551615}}"#,
            "queue_offset + queues must stay within 65536",
        ),
        (
            r#"{"topology":{"possible":"0-3"},"params":{"queues":2},"extra":1}"#,
            "unknown field `extra`",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let output = isonvme_map(&["plan", "--input", bad.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{text}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(message),
            "{text}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn show_and_plan_apply_the_boot_cpu_rule_alike() {
    // Every CPU isolated: both give the boot CPU (the lowest online one)
    // back to housekeeping, as the kernel does, rather than one refusing.
    let dir = tempfile::tempdir().unwrap();
    let root = eight_cpu_machine(dir.path());
    let output = isonvme_map(&["show", "--json", "--isolated", "0-7", "--sysfs-root", &root]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let request = dir.path().join("all.json");
    std::fs::write(
        &request,
        r#"{"topology":{"possible":"0-7","isolated":"0-7"},"params":{"queues":4,"pre_vectors":1}}"#,
    )
    .unwrap();
    let output = isonvme_map(&["plan", "--input", request.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let planned: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(planned["housekeeping"], "0");
    assert!(
        shown.to_string().contains("\"housekeeping\":\"0\""),
        "show --isolated 0-7: {shown}"
    );
}

#[test]
fn an_oversized_input_is_refused_without_reading_it_all() {
    let output = isonvme_map(&["plan", "--input", "/dev/zero"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("larger than 64 MiB"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_closed_output_pipe_ends_the_program_quietly() {
    use std::io::Write;
    // A request whose answer (about 0.5 MB) overflows the pipe's buffer.
    let dir = tempfile::tempdir().unwrap();
    let request = dir.path().join("big.json");
    std::fs::File::create(&request)
        .unwrap()
        .write_all(br#"{"topology":{"possible":"0-8191","isolated":"4096-8191"},"params":{"queues":128,"pre_vectors":1}}"#)
        .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_isonvme-map"))
        .args(["plan", "--input", request.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read one line, then close our end, as `| head -1` does.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 2];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(output.status.code(), Some(0), "{err}");
}
