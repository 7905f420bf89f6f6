//! The example programs, run as a user runs them, on the simulator.

use std::path::Path;
use std::process::{Command, Output};

fn run(binary: &str, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        .output()
        .expect("the example binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn journal(device: &str, extra: &[&str]) -> Output {
    let mut args = vec!["--device", device, "--pages", "512", "--flush-every", "100"];
    args.extend_from_slice(extra);
    run(env!("CARGO_BIN_EXE_journal"), &args)
}

fn file_device(path: &Path) -> String {
    format!("sim,size=16M,file={}", path.display())
}

#[test]
fn journal_survives_a_restart_and_appends_after_its_tail() {
    let dir = tempfile::tempdir().unwrap();
    let device = file_device(&dir.path().join("journal.img"));
    let first = journal(&device, &["--records", "1000"]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stdout(&first).contains("starting a new one"),
        "{}",
        stdout(&first)
    );
    assert!(stdout(&first).contains("read back and verified 1000 records"));

    let second = journal(&device, &["--records", "500"]);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = stdout(&second);
    assert!(text.contains(": 1000 records in"), "{text}");
    assert!(text.contains("appending from record 1000"), "{text}");
    assert!(
        text.contains("read back and verified 1500 records"),
        "{text}"
    );
}

#[test]
fn journal_refuses_to_append_past_a_damaged_page_unless_salvaging() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("journal.img");
    let device = file_device(&image);
    let made = journal(&device, &["--records", "2000"]);
    assert!(made.status.success(), "{}", stderr(&made));

    // Flip a byte inside a record of journal page 5 (4 KiB pages).
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[5 * 4096 + 200] ^= 0xff;
    std::fs::write(&image, &bytes).unwrap();

    let refused = journal(&device, &["--records", "10"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(message.contains("journal page 5"), "{message}");
    assert!(message.contains("--salvage"), "{message}");
    // Nothing was overwritten: the page after the damage is still there.
    assert_eq!(std::fs::read(&image).unwrap(), bytes);

    // 4 log pages precede the damaged page: 100 records, as every
    // 100th record flushes and pads its page (31 + 31 + 31 + 7).
    let salvaged = journal(&device, &["--records", "10", "--salvage"]);
    assert!(salvaged.status.success(), "{}", stderr(&salvaged));
    let text = stdout(&salvaged);
    assert!(text.contains("keeping the 100 records"), "{text}");
    assert!(
        text.contains("read back and verified 110 records"),
        "{text}"
    );
}

/// The superblock's durable mark (log pages flushed), and a way to set it
/// (resealing the CRC) as a process that died before writing it would have
/// left it.
fn durable_mark(image: &[u8]) -> u64 {
    u64::from_le_bytes(image[28..36].try_into().unwrap())
}

fn set_durable_mark(image: &mut [u8], pages: u64) {
    image[28..36].copy_from_slice(&pages.to_le_bytes());
    image[36..40].fill(0);
    let crc = crc32c::crc32c(&image[..4096]);
    image[36..40].copy_from_slice(&crc.to_le_bytes());
}

#[test]
fn journal_tells_damage_to_flushed_records_from_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("journal.img");
    let device = file_device(&image);
    // 1007 records: 32 full pages and a last page of 15 (every 100th record
    // pads its page: 31 + 31 + 31 + 7 per 100), flushed at exit.
    let made = journal(&device, &["--records", "1007"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let mut bytes = std::fs::read(&image).unwrap();
    let last = durable_mark(&bytes);
    assert!(
        last > 30,
        "the exit's Flush marks every page durable: {last}"
    );

    // Damage inside the last page, which was reported durable: refused (it
    // used to be taken for a torn tail, dropping 7 flushed records).
    bytes[last as usize * 4096 + 300] ^= 0xff;
    std::fs::write(&image, &bytes).unwrap();
    let refused = journal(&device, &["--records", "10"]);
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains(&format!("journal page {last}")),
        "{message}"
    );
    assert!(message.contains("marks pages 1..="), "{message}");
    assert!(message.contains("--salvage"), "{message}");
    assert_eq!(std::fs::read(&image).unwrap(), bytes, "nothing overwritten");

    // The same damage past the mark (the process died before its last
    // mark reached the media): a torn tail, appended after.
    set_durable_mark(&mut bytes, last - 1);
    std::fs::write(&image, &bytes).unwrap();
    let resumed = journal(&device, &["--records", "10"]);
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let text = stdout(&resumed);
    assert!(text.contains(&format!(" in {} pages", last - 1)), "{text}");
}

#[test]
fn journal_will_not_replace_a_journal_made_with_other_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("journal.img");
    let device = file_device(&image);
    assert!(journal(&device, &["--records", "100"]).status.success());
    let before = std::fs::read(&image).unwrap();
    let refused = journal(&device, &["--records", "100", "--record-size", "64"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--record-size 128"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(std::fs::read(&image).unwrap(), before);
}

#[test]
fn journal_full_keeps_what_fit_and_says_so() {
    let full = run(
        env!("CARGO_BIN_EXE_journal"),
        &[
            "--device",
            "sim,size=16M",
            "--pages",
            "3",
            "--records",
            "100",
        ],
    );
    assert!(!full.status.success());
    assert!(
        stderr(&full).contains("the journal is full at 62 records"),
        "{}",
        stderr(&full)
    );
}

#[test]
fn latency_reports_completions_on_housekeeping_cpus_only() {
    let output = run(
        env!("CARGO_BIN_EXE_latency"),
        &[
            "--device",
            "sim,size=64M",
            "--ios",
            "2000",
            "--warmup",
            "100",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("2000 reads in"), "{text}");
    assert!(text.contains("p99.9"), "{text}");
    let online = std::thread::available_parallelism().map_or(1, usize::from);
    if online > 1 {
        assert!(
            text.contains("verdict: no completion work ran on an isolated CPU"),
            "{text}"
        );
    }
}

#[test]
fn examples_fail_clearly_on_a_missing_device() {
    for binary in [env!("CARGO_BIN_EXE_latency"), env!("CARGO_BIN_EXE_journal")] {
        let output = run(binary, &["--device", "0000:ff:1f.7"]);
        assert!(!output.status.success());
        let message = stderr(&output);
        assert!(message.contains("0000:ff:1f.7"), "{message}");
        assert!(!message.contains("panicked"), "{message}");
    }
}

#[test]
fn out_of_range_options_are_clear_errors_not_panics() {
    for (binary, args, needle) in [
        (
            env!("CARGO_BIN_EXE_latency"),
            &["--time", "10000000000000000000s"][..],
            "too long: give at most 30 days",
        ),
        (
            env!("CARGO_BIN_EXE_latency"),
            &["--time", "18446744073709551616s"][..],
            "too long",
        ),
        (
            env!("CARGO_BIN_EXE_identify"),
            &["--device", "sim,size"][..],
            "simulator option `size` needs a value",
        ),
        (
            env!("CARGO_BIN_EXE_journal"),
            &["--device", "sim", "--depth", "18446744073709551615"][..],
            "give at most 4094",
        ),
        (
            env!("CARGO_BIN_EXE_journal"),
            &["--device", "sim", "--depth", "2000", "--pages", "64"][..],
            "give --depth 1022 or less",
        ),
    ] {
        let output = run(binary, args);
        let message = stderr(&output);
        assert!(!output.status.success(), "{binary} {args:?} succeeded");
        assert!(message.contains(needle), "{binary} {args:?}: {message}");
        assert!(
            !message.contains("panicked"),
            "{binary} {args:?}: {message}"
        );
    }
}

#[test]
fn latency_runs_inline_and_says_who_reaped() {
    let output = run(
        env!("CARGO_BIN_EXE_latency"),
        &["--ios", "2000", "--warmup", "100", "--mode", "inline"],
    );
    let text = stdout(&output);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(text.contains("2000 reads in"), "{text}");
    assert!(text.contains("inline"), "{text}");
    if text.contains("isolated: ") {
        assert!(
            text.contains("reaped its own"),
            "the verdict names the inline reaping: {text}"
        );
    }
}

#[test]
fn a_closed_output_pipe_ends_latency_quietly() {
    use std::io::BufRead;
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(env!("CARGO_BIN_EXE_latency"))
        .args(["--ios", "200000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line, then close the pipe, as `| head -1` does.
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let message = stderr(&output);
    assert!(!message.contains("panicked"), "{message}");
    assert!(
        output.status.success() || output.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {message}",
        output.status
    );
}

#[test]
fn latency_reports_a_device_that_goes_away_and_lets_it_go() {
    let output = run(
        env!("CARGO_BIN_EXE_latency"),
        &[
            "--device",
            "sim,size=16M,fault=remove@300",
            "--warmup",
            "10",
            "--ios",
            "1000",
        ],
    );
    assert!(!output.status.success());
    let out = stdout(&output);
    assert!(out.contains("stopped after"), "{out}");
    let err = stderr(&output);
    assert!(err.contains("the device went away during the run"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
