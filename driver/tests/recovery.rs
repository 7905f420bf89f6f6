//! Recovery on the simulated controller, every injected fault in every way a
//! CPU can be served (its own SQ with interrupts, polling threads, shared
//! SQs, inline): what the application sees, and that no data is lost.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

mod common;

use common::{set, smt_pairs};
use isonvme::mapping::Topology;
use isonvme::nvme::{NvmeStatus, StatusCode};
use isonvme::runtime::{
    CompletionMode, CpuHandle, DeviceState, InlineCpus, Runtime, RuntimeOptions,
};
use isonvme::sim::SimController;
use isonvme::{AsyncEvent, Controller, ControllerOptions, Error, IoCommand};

/// 4 CPUs, one node, SMT pairs (n, n+2); CPUs 2-3 isolated.
fn four_cpus() -> Topology {
    smt_pairs(4, 1)
}

/// The ways a CPU's completions can be served.
fn modes() -> Vec<(&'static str, RuntimeOptions)> {
    let base = RuntimeOptions {
        topology: Some(four_cpus()),
        isolated: Some(set("2-3")),
        command_timeout: Duration::from_millis(100),
        abort_timeout: Duration::from_millis(100),
        ..RuntimeOptions::default()
    };
    vec![
        ("interrupt", base.clone()),
        (
            "poll",
            RuntimeOptions {
                mode: CompletionMode::Poll,
                ..base.clone()
            },
        ),
        (
            "shared",
            RuntimeOptions {
                max_sqs: Some(2),
                ..base.clone()
            },
        ),
        (
            "inline",
            RuntimeOptions {
                inline: InlineCpus::Isolated,
                ..base
            },
        ),
    ]
}

fn start(device: &str, options: RuntimeOptions) -> Runtime {
    let sim = SimController::open(device).unwrap();
    let controller = Controller::open(sim, ControllerOptions::default()).unwrap();
    Runtime::open(controller, options).unwrap()
}

const BLOCKS: u64 = 48;
const DEPTH: usize = 8;

/// What the application saw of one workload.
#[derive(Debug, Default)]
struct Outcome {
    /// Command tag → its error status.
    failed: BTreeMap<u64, NvmeStatus>,
    completed: u64,
}

/// Writes blocks 0..BLOCKS (block n holds n), `DEPTH` in flight, from CPU
/// 2's handle; gives up after 20 s (a hang is a failure, not a wait).
fn write_all(handle: &mut CpuHandle) -> Outcome {
    let mut buffers: Vec<_> = (0..DEPTH)
        .map(|_| handle.pool().alloc(4096).unwrap())
        .collect();
    let mut outcome = Outcome::default();
    let mut next = 0u64;
    let start = Instant::now();
    while outcome.completed < BLOCKS {
        while next < BLOCKS {
            let Some(mut buffer) = buffers.pop() else {
                break;
            };
            buffer.as_mut_slice().fill(next as u8);
            buffer.as_mut_slice()[..8].copy_from_slice(&next.to_le_bytes());
            let write = IoCommand::Write {
                nsid: 1,
                lba: next,
                blocks: 1,
            };
            match handle.submit(write, Some(buffer), next) {
                Ok(()) => next += 1,
                Err(rejected) => {
                    buffers.extend(rejected.buffer);
                    break;
                }
            }
        }
        handle.ring();
        handle
            .poll(|completion| {
                outcome.completed += 1;
                if let Err(status) = completion.result {
                    outcome.failed.insert(completion.tag, status);
                }
                buffers.extend(completion.buffer);
            })
            .unwrap();
        if handle.device_state() == DeviceState::Removed && handle.outstanding() == 0 {
            break;
        }
        // The simulated controller shares these CPUs.
        std::thread::yield_now();
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "hung: {} of {BLOCKS} completed, {} outstanding",
            outcome.completed,
            handle.outstanding()
        );
    }
    outcome
}

/// Reads every block back and returns those whose data is wrong.
fn verify(handle: &mut CpuHandle, skip: &BTreeMap<u64, NvmeStatus>) -> Vec<u64> {
    let mut buffer = Some(handle.pool().alloc(4096).unwrap());
    let mut wrong = Vec::new();
    for lba in 0..BLOCKS {
        let read = IoCommand::Read {
            nsid: 1,
            lba,
            blocks: 1,
        };
        let (_, back) = handle
            .run(read, buffer.take(), Duration::from_secs(10))
            .unwrap();
        let back = back.unwrap();
        if !skip.contains_key(&lba) && back.as_slice()[..8] != lba.to_le_bytes() {
            wrong.push(lba);
        }
        buffer = Some(back);
    }
    wrong
}

/// One test at a time: each runs a simulated controller, completion
/// threads and a watchdog, and timeouts of 100 ms mean little on two CPUs
/// shared by eight such tests.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the workload under `fault` in every mode and hands each outcome to
/// `check`.
fn each_mode(fault: &str, check: impl Fn(&str, &Runtime, &Outcome)) {
    let _serial = serial();
    for (mode, options) in modes() {
        let runtime = start(&format!("sim,size=1M,fault={fault}"), options);
        let mut handle = runtime.handle(2).unwrap();
        let outcome = write_all(&mut handle);
        check(mode, &runtime, &outcome);
        if runtime.device_state() == DeviceState::Alive {
            let wrong = verify(&mut handle, &outcome.failed);
            assert!(wrong.is_empty(), "{mode}, {fault}: blocks {wrong:?} lost");
        }
        drop(handle);
        runtime.close().unwrap();
    }
}

/// Waits up to 5 s for `done` (a watchdog's counter catching up).
fn eventually(done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The runtime's asynchronous events once `count` have come, or what came
/// within 5 s.
fn wait_for_events(runtime: &Runtime, count: usize) -> Vec<AsyncEvent> {
    let mut events = Vec::new();
    let start = Instant::now();
    while events.len() < count && start.elapsed() < Duration::from_secs(5) {
        events.extend(runtime.async_events());
        std::thread::sleep(Duration::from_millis(1));
    }
    events
}

fn counter(value: &std::sync::atomic::AtomicU64) -> u64 {
    value.load(Ordering::Relaxed)
}

#[test]
fn a_lost_completion_is_aborted_then_the_controller_reset_and_the_command_resubmitted() {
    each_mode("drop@5", |mode, runtime, outcome| {
        assert!(outcome.failed.is_empty(), "{mode}: {:?}", outcome.failed);
        let recovery = runtime.recovery();
        assert!(counter(&recovery.timeouts) >= 1, "{mode}: {recovery:?}");
        assert!(counter(&recovery.aborts_sent) >= 1, "{mode}: {recovery:?}");
        assert_eq!(counter(&recovery.resets), 1, "{mode}: {recovery:?}");
        assert!(counter(&recovery.last_reset_micros) > 0, "{mode}");
        assert_eq!(runtime.device_state(), DeviceState::Alive);
    });
}

#[test]
fn a_late_completion_is_aborted_and_retried_without_a_reset() {
    each_mode("delay:10s@5", |mode, runtime, outcome| {
        assert!(outcome.failed.is_empty(), "{mode}: {:?}", outcome.failed);
        let recovery = runtime.recovery();
        // The watchdog counts the Abort's own completion, which may come
        // after the aborted command was retried and completed.
        eventually(|| counter(&recovery.aborts_done) == 1);
        assert_eq!(counter(&recovery.aborts_done), 1, "{mode}: {recovery:?}");
        assert_eq!(counter(&recovery.resets), 0, "{mode}: {recovery:?}");
    });
}

#[test]
fn a_retryable_status_is_retried_and_a_do_not_retry_status_is_delivered() {
    each_mode("status:0/6@3", |mode, runtime, outcome| {
        assert!(outcome.failed.is_empty(), "{mode}: {:?}", outcome.failed);
        let retried = counter(&runtime.cpu_counters(2).unwrap().retried);
        assert_eq!(retried, 1, "{mode}");
    });
    each_mode("status:0/6:dnr@3", |mode, _runtime, outcome| {
        assert_eq!(outcome.failed.len(), 1, "{mode}: {:?}", outcome.failed);
        let status = outcome.failed.values().next().unwrap();
        assert_eq!(status.code, StatusCode::from_parts(0, 6), "{mode}");
        assert!(status.dnr, "{mode}");
    });
}

#[test]
fn a_fatal_status_resets_the_controller_and_nothing_is_lost() {
    each_mode("fatal@7", |mode, runtime, outcome| {
        assert!(outcome.failed.is_empty(), "{mode}: {:?}", outcome.failed);
        let recovery = runtime.recovery();
        assert_eq!(counter(&recovery.fatal_status), 1, "{mode}: {recovery:?}");
        assert_eq!(counter(&recovery.resets), 1, "{mode}: {recovery:?}");
    });
}

#[test]
fn a_stalled_controller_is_reset() {
    each_mode("stall:10s@4", |mode, runtime, outcome| {
        assert!(outcome.failed.is_empty(), "{mode}: {:?}", outcome.failed);
        assert!(counter(&runtime.recovery().resets) >= 1, "{mode}");
    });
}

#[test]
fn an_impossible_sq_head_completes_its_command_and_resets_the_controller() {
    each_mode("sqhead@4", |mode, runtime, outcome| {
        assert!(outcome.failed.is_empty(), "{mode}: {:?}", outcome.failed);
        // The watchdog acts on its next tick.
        eventually(|| counter(&runtime.recovery().resets) > 0);
        // Inline and direct SQs check the head in the handle, shared ones
        // in the completion thread: both ask for the reset.
        assert_eq!(counter(&runtime.recovery().resets), 1, "{mode}");
    });
}

#[test]
fn surprise_removal_fails_every_command_in_flight_at_once() {
    each_mode("remove@6", |mode, runtime, outcome| {
        assert_eq!(runtime.device_state(), DeviceState::Removed, "{mode}");
        assert!(!outcome.failed.is_empty(), "{mode}");
        assert!(
            outcome
                .failed
                .values()
                .all(|status| *status == NvmeStatus::HOST_ABORTED),
            "{mode}: {:?}",
            outcome.failed
        );
        // Five were written before the device went.
        assert_eq!(
            outcome.completed - outcome.failed.len() as u64,
            5,
            "{mode}: {outcome:?}"
        );
    });
    // Later submissions say why.
    let _serial = serial();
    let runtime = start("sim,size=1M,fault=remove@1", modes().remove(0).1);
    let mut handle = runtime.handle(2).unwrap();
    let outcome = write_all(&mut handle);
    assert_eq!(outcome.failed.len() as u64, outcome.completed);
    let buffer = handle.pool().alloc(4096).unwrap();
    let rejected = handle
        .submit(
            IoCommand::Read {
                nsid: 1,
                lba: 0,
                blocks: 1,
            },
            Some(buffer),
            0,
        )
        .unwrap_err();
    assert!(
        matches!(rejected.error, Error::DeviceRemoved),
        "{}",
        rejected.error
    );
    assert!(rejected.buffer.is_some(), "the buffer comes back");
}

#[test]
fn a_command_that_keeps_timing_out_fails_when_its_retry_budget_is_spent() {
    // One command at a time; its first attempt and both resubmissions are
    // lost, each costing a reset.
    let _serial = serial();
    let options = RuntimeOptions {
        max_retries: 2,
        ..modes().remove(0).1
    };
    let runtime = start("sim,size=1M,fault=drop@1+drop@2+drop@3", options);
    let mut handle = runtime.handle(2).unwrap();
    let buffer = handle.pool().alloc(4096).unwrap();
    let write = IoCommand::Write {
        nsid: 1,
        lba: 0,
        blocks: 1,
    };
    let error = handle
        .run(write, Some(buffer), Duration::from_secs(20))
        .unwrap_err();
    assert!(
        matches!(error, Error::Command { status, .. } if status == NvmeStatus::HOST_ABORTED),
        "{error}"
    );
    assert_eq!(counter(&runtime.recovery().resets), 3);
    assert_eq!(counter(&runtime.cpu_counters(2).unwrap().resubmitted), 2);
    // The fourth attempt, a new command, goes through.
    let buffer = handle.pool().alloc(4096).unwrap();
    handle
        .run(write, Some(buffer), Duration::from_secs(20))
        .unwrap();
    assert_eq!(runtime.device_state(), DeviceState::Alive);
    drop(handle);
    runtime.close().unwrap();
}

#[test]
fn asynchronous_events_are_reported_and_the_requests_rearmed() {
    let _serial = serial();
    let runtime = start(
        "sim,size=1M,fault=event:ns-changed@3+event:health@10+event:firmware@20+event:health@30+event:ns-changed@40",
        modes().remove(0).1,
    );
    let mut handle = runtime.handle(2).unwrap();
    let outcome = write_all(&mut handle);
    assert!(outcome.failed.is_empty(), "{:?}", outcome.failed);
    let events = wait_for_events(&runtime, 5);
    // In order, each once; five events through four outstanding requests
    // (AERL + 1) prove the requests are sent again.
    assert_eq!(
        events,
        [
            AsyncEvent::NAMESPACE_CHANGED,
            AsyncEvent::HEALTH_RELIABILITY,
            AsyncEvent::FIRMWARE_ACTIVATION,
            AsyncEvent::HEALTH_RELIABILITY,
            AsyncEvent::NAMESPACE_CHANGED,
        ]
    );
    drop(handle);
    runtime.close().unwrap();
}

#[test]
fn an_asynchronous_event_posted_just_before_a_reset_is_still_reported() {
    let _serial = serial();
    // The event comes with the first write; the reset follows at once,
    // before the watchdog's next tick (4 ms) would service it.
    let runtime = start("sim,size=1M,fault=event:ns-changed@1", modes().remove(0).1);
    let mut handle = runtime.handle(2).unwrap();
    let buffer = handle.pool().alloc(4096).unwrap();
    let write = IoCommand::Write {
        nsid: 1,
        lba: 0,
        blocks: 1,
    };
    handle
        .run(write, Some(buffer), Duration::from_secs(5))
        .unwrap();
    runtime.reset_controller(Duration::from_secs(10)).unwrap();
    let events = wait_for_events(&runtime, 1);
    assert_eq!(events, [AsyncEvent::NAMESPACE_CHANGED]);
    drop(handle);
    runtime.close().unwrap();
}

#[test]
fn a_hot_unplug_request_stops_the_controller_and_fails_what_is_in_flight() {
    let _serial = serial();
    // Reads take 20 ms, so the request finds commands in flight.
    let sim = SimController::open("sim,size=1M,latency=20ms").unwrap();
    let controller = Controller::open(sim.clone(), ControllerOptions::default()).unwrap();
    let runtime = Runtime::open(controller, modes().remove(0).1).unwrap();
    let mut handle = runtime.handle(2).unwrap();
    for lba in 0..4 {
        let buffer = handle.pool().alloc(4096).unwrap();
        let read = IoCommand::Read {
            nsid: 1,
            lba,
            blocks: 1,
        };
        handle.submit(read, Some(buffer), lba).unwrap();
    }
    handle.ring();
    sim.request_removal();
    let mut failed = Vec::new();
    let start = Instant::now();
    while handle.outstanding() > 0 {
        handle
            .poll(|completion| {
                assert!(completion.buffer.is_some(), "buffers come back");
                failed.push(completion.result.unwrap_err());
            })
            .unwrap();
        assert!(start.elapsed() < Duration::from_secs(5), "hung");
    }
    assert_eq!(failed, [NvmeStatus::HOST_ABORTED; 4]);
    assert_eq!(runtime.device_state(), DeviceState::Removed);
    // The controller was stopped before the buffers came back.
    let cc =
        isonvme::transport::Transport::registers(&*sim).read32(isonvme::nvme::regs::offset::CC);
    assert_eq!(cc & 1, 0, "CC.EN is 0");
    let buffer = handle.pool().alloc(4096).unwrap();
    let read = IoCommand::Read {
        nsid: 1,
        lba: 0,
        blocks: 1,
    };
    let rejected = handle.submit(read, Some(buffer), 0).unwrap_err();
    assert!(
        matches!(rejected.error, Error::DeviceRemoved),
        "{}",
        rejected.error
    );
    drop(handle);
    runtime.close().unwrap();
}

#[test]
fn resets_asked_for_during_io_lose_nothing_in_any_mode() {
    let _serial = serial();
    for (mode, options) in modes() {
        // 5 ms reads keep 8 commands in flight through every reset.
        let runtime = start("sim,size=1M,latency=5ms", options);
        let mut handle = runtime.handle(2).unwrap();
        let (outcome, durations) = std::thread::scope(|scope| {
            let writer = scope.spawn(|| write_all(&mut handle));
            let mut durations = Vec::new();
            let submitted = &runtime.cpu_counters(2).unwrap().submitted;
            for round in 1..=3 {
                // Each reset finds the writer busy.
                eventually(|| counter(submitted) >= 8 * round);
                durations.push(runtime.reset_controller(Duration::from_secs(10)).unwrap());
            }
            (writer.join().unwrap(), durations)
        });
        assert!(outcome.failed.is_empty(), "{mode}: {:?}", outcome.failed);
        assert_eq!(counter(&runtime.recovery().resets), 3, "{mode}");
        assert!(
            durations.iter().all(|d| !d.is_zero()),
            "{mode}: {durations:?}"
        );
        if mode != "shared" {
            // (A shared SQ's thread resubmits for its CPUs.)
            let resubmitted = counter(&runtime.cpu_counters(2).unwrap().resubmitted);
            assert!(
                resubmitted > 0,
                "{mode}: the resets found nothing in flight"
            );
        }
        let wrong = verify(&mut handle, &outcome.failed);
        assert!(wrong.is_empty(), "{mode}: blocks {wrong:?} lost");
        drop(handle);
        runtime.close().unwrap();
    }
}

#[test]
fn commands_larger_than_the_transfer_limit_are_split_and_survive_a_reset() {
    let _serial = serial();
    for (mode, options) in modes() {
        // MDTS 8 KiB: a 64 KiB command goes as 8 parts; the 3rd command
        // the controller fetches is lost, so one part waits out a reset.
        let runtime = start("sim,size=1M,mdts=1,fault=drop@3", options);
        let mut handle = runtime.handle(2).unwrap();
        let blocks = 16u32;
        let mut data = handle.pool().alloc(64 * 1024).unwrap();
        for (index, byte) in data.as_mut_slice().iter_mut().enumerate() {
            *byte = (index / 4096) as u8 ^ 0x5a;
        }
        let write = IoCommand::Write {
            nsid: 1,
            lba: 32,
            blocks,
        };
        let (_, data) = handle
            .run(write, Some(data), Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert_eq!(
            counter(&runtime.cpu_counters(2).unwrap().submitted),
            8,
            "{mode}: one command as 8 parts"
        );
        let mut back = data.unwrap();
        back.as_mut_slice().fill(0);
        let read = IoCommand::Read {
            nsid: 1,
            lba: 32,
            blocks,
        };
        let (_, back) = handle
            .run(read, Some(back), Duration::from_secs(20))
            .unwrap();
        let back = back.unwrap();
        for (index, byte) in back.as_slice().iter().enumerate() {
            assert_eq!(*byte, (index / 4096) as u8 ^ 0x5a, "{mode}: byte {index}");
        }
        assert_eq!(counter(&runtime.recovery().resets), 1, "{mode}");
        // A split command needs a slot per part: with too few (128 parts,
        // 127 slots) it is refused whole, the buffer back.
        assert_eq!(handle.outstanding(), 0);
        let big = handle.pool().alloc(1024 * 1024).unwrap();
        let too_many = IoCommand::Read {
            nsid: 1,
            lba: 0,
            blocks: 256,
        };
        let rejected = handle.submit(too_many, Some(big), 0).unwrap_err();
        assert!(
            rejected.error.to_string().contains("transfer limit"),
            "{mode}: {}",
            rejected.error
        );
        assert!(
            rejected.buffer.is_some() && handle.outstanding() == 0,
            "{mode}"
        );
        drop(handle);
        runtime.close().unwrap();
    }
}
