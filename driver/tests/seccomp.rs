//! Proof that submitting and polling make no system call, with completions
//! handed over by a housekeeping thread and inline: a child process
//! opens the runtime, takes CPU 1's handle, then forbids every system call
//! but `exit_group` on that thread (seccomp, kill the process on anything
//! else) and runs 100,000 I/Os through submit/ring/poll. Any system call —
//! a lock that sleeps, an allocation that maps memory, a write — kills the
//! child with SIGSYS, which the parent reports.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use isonvme::mapping::CpuSet;
use isonvme::runtime::{CompletionMode, InlineCpus, Runtime, RuntimeOptions};
use isonvme::sim::SimController;
use isonvme::{Controller, ControllerOptions, IoCommand};

const CHILD: &str = "ISONVME_SECCOMP_CHILD";
const IOS: u64 = 100_000;

#[test]
fn submit_and_poll_make_no_system_call() {
    run_child("submit_and_poll_make_no_system_call", "interrupt");
}

/// The inline path: the handle reaps its own interrupt-less CQ and rings
/// its head doorbell inside `poll()` — still no system call.
#[test]
fn inline_submit_and_poll_make_no_system_call() {
    run_child("inline_submit_and_poll_make_no_system_call", "inline");
}

fn run_child(test: &str, mode: &str) {
    if let Some(child_mode) = std::env::var_os(CHILD) {
        child(&child_mode.to_string_lossy());
    }
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, mode)
        .status()
        .unwrap();
    match (status.code(), status.signal()) {
        (Some(0), _) => {}
        (_, Some(libc::SIGSYS)) => panic!("the I/O loop made a system call (killed by seccomp)"),
        (Some(3), _) => panic!("the I/O loop ran without system calls but some I/O failed"),
        (Some(4), _) => panic!("the handle was not inline although inline was asked for"),
        other => panic!("the child failed before or after the I/O loop: {other:?}"),
    }
}

fn child(mode: &str) -> ! {
    let inline = mode == "inline";
    let sim = SimController::open("sim,size=64M").unwrap();
    let controller = Controller::open(sim, ControllerOptions::default()).unwrap();
    let runtime = Runtime::open(
        controller,
        RuntimeOptions {
            isolated: Some(CpuSet::single(1)),
            mode: CompletionMode::Interrupt,
            inline: if inline {
                InlineCpus::Isolated
            } else {
                InlineCpus::None
            },
            ..RuntimeOptions::default()
        },
    )
    .unwrap();
    let mut handle = runtime.handle(1).unwrap();
    if handle.is_inline() != inline {
        // SAFETY: exit_group takes an exit code and never returns.
        unsafe { libc::syscall(libc::SYS_exit_group, 4) };
    }
    let mut free = Vec::with_capacity(32);
    for _ in 0..32 {
        free.push(handle.pool().alloc(4096).unwrap());
    }
    let filter: seccompiler::BpfProgram = seccompiler::SeccompFilter::new(
        BTreeMap::from([(libc::SYS_exit_group, vec![])]),
        seccompiler::SeccompAction::KillProcess,
        seccompiler::SeccompAction::Allow,
        std::env::consts::ARCH.try_into().unwrap(),
    )
    .unwrap()
    .try_into()
    .unwrap();
    seccompiler::apply_filter(&filter).unwrap();

    // From here on, any system call on this thread kills the process.
    let (mut submitted, mut completed, mut failed) = (0u64, 0u64, 0u64);
    while completed < IOS {
        while submitted < IOS {
            let Some(buffer) = free.pop() else { break };
            let command = IoCommand::Read {
                nsid: 1,
                lba: submitted % 8192,
                blocks: 1,
            };
            match handle.submit(command, Some(buffer), submitted) {
                Ok(()) => submitted += 1,
                Err(rejected) => {
                    failed += 1;
                    free.extend(rejected.buffer);
                    break;
                }
            }
        }
        handle.ring();
        let polled = handle.poll(|completion| {
            if completion.result.is_err() {
                failed += 1;
            }
            free.extend(completion.buffer);
            completed += 1;
        });
        if polled.is_err() || failed > 0 {
            break;
        }
        std::hint::spin_loop();
    }
    let code = if completed == IOS && failed == 0 {
        0
    } else {
        3
    };
    // SAFETY: exit_group takes an exit code and never returns; it is the
    // one system call the filter allows.
    unsafe { libc::syscall(libc::SYS_exit_group, code) };
    unreachable!("exit_group returned")
}
