//! The `isonvme` binary: exit codes and messages, always against fake
//! trees (the hidden root options), never the host's /sys.

mod common;

use std::process::{Command, Output};

use common::*;

fn run(f: &Fixture, args: &[&str]) -> Output {
    let roots = f.host.roots();
    Command::new(env!("CARGO_BIN_EXE_isonvme"))
        .arg("setup")
        .arg("--sysfs-root")
        .arg(&roots.sys)
        .arg("--procfs-root")
        .arg(&roots.proc)
        .arg("--dev-root")
        .arg(&roots.dev)
        .args(args)
        .output()
        .expect("run isonvme")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn status_prints_text_and_json() {
    let f = with_busy();
    let output = run(&f, &["status"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("NVMe controllers (2)"), "{text}");
    assert!(text.contains("nvme1n1p1 is mounted on /data"), "{text}");

    let output = run(&f, &["status", "--json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["controllers"][0]["bdf"], IDLE);
    assert_eq!(json["controllers"][1]["in_use"][0]["mount_point"], "/data");
}

#[test]
fn bad_arguments_exit_2_with_the_reason() {
    let f = with_idle();
    for (args, wanted) in [
        (&["bind", "0000:01:00"][..], "not a PCI address"),
        (
            &["bind", "0000:09:00.0"][..],
            "no such device: 0000:09:00.0",
        ),
        (&["bind", "--user", "al ice", "all"][..], "white space"),
        (&["bind", "--user", "", "all"][..], "empty"),
        (&["hugepages", "16", "--size", "3M"][..], "use 2M or 1G"),
        (&["hugepages", "many"][..], "invalid digit"),
        (&["unbind"][..], "required"),
        (&["frobnicate"][..], "unrecognized subcommand"),
    ] {
        let output = run(&f, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(wanted),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn a_non_nvme_device_exits_2() {
    let f = with_idle();
    f.host
        .add_pci(NIC, 0x020000, Some("ixgbe"), Some(9))
        .unwrap();
    let output = run(&f, &["bind", NIC]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("is not an NVMe controller"));
}

#[test]
fn a_device_in_use_is_refused_before_any_write() {
    // As root the in-use check refuses (4); as anyone else the root check
    // does (3). Either way nothing is written to the fake tree.
    let f = with_busy();
    let probe = f.host.roots().drivers_probe();
    let output = run(&f, &["bind", BUSY]);
    let code = output.status.code();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(code, Some(4), "{}", stderr(&output));
        assert!(stderr(&output).contains("nvme1n1p1 is mounted on /data"));
    } else {
        assert_eq!(code, Some(3), "{}", stderr(&output));
        assert!(stderr(&output).contains("sudo"));
    }
    assert_eq!(std::fs::read_to_string(probe).unwrap(), "");
}

#[test]
fn help_lists_the_commands_and_exit_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_isonvme"))
        .args(["setup", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    for command in ["status", "bind", "unbind", "reset", "hugepages"] {
        assert!(text.contains(command), "{text}");
    }
    assert!(!text.contains("sysfs-root"), "{text}");
    let output = Command::new(env!("CARGO_BIN_EXE_isonvme"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.contains("3 needs root"), "{text}");
}
