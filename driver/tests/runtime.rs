//! The isolation runtime on the simulated controller: queues follow the
//! plan, completions are handled on housekeeping CPUs only, every CPU's
//! handle does I/O, shared SQs, completion modes and hotplug.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{set, smt_pairs};
use isonvme::mapping::{CpuSet, Topology, TopologySpec};
use isonvme::runtime::{
    CompletionMode, CpuHandle, InlineCpus, ManualOnline, Runtime, RuntimeOptions, VectorCounters,
};
use isonvme::sim::SimController;
use isonvme::{Controller, ControllerOptions, IoCommand};

/// 8 CPUs on 2 nodes (0-3, 4-7), SMT pairs (n, n+4).
fn eight_cpus() -> Topology {
    smt_pairs(8, 2)
}

fn start(sim_options: &str, options: RuntimeOptions) -> (Arc<SimController>, Runtime) {
    let sim = SimController::open(sim_options).unwrap();
    let controller = Controller::open(sim.clone(), ControllerOptions::default()).unwrap();
    let runtime = Runtime::open(controller, options).unwrap();
    (sim, runtime)
}

/// One counter summed over every vector of `runtime`.
fn vector_sum(runtime: &Runtime, counter: impl Fn(&VectorCounters) -> &AtomicU64) -> u64 {
    runtime
        .vectors()
        .iter()
        .map(|v| counter(&v.counters).load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// Writes then reads back `count` blocks through `handle`, checking data.
fn write_read(handle: &mut CpuHandle, first_lba: u64, count: u64) {
    let mut buffer = handle.pool().alloc(4096).unwrap();
    for lba in first_lba..first_lba + count {
        buffer.as_mut_slice()[..8].copy_from_slice(&lba.to_le_bytes());
        let (_, back) = handle
            .run(
                IoCommand::Write {
                    nsid: 1,
                    lba,
                    blocks: 1,
                },
                Some(buffer),
                Duration::from_secs(10),
            )
            .unwrap();
        let mut back = back.unwrap();
        back.as_mut_slice().fill(0);
        let (_, read) = handle
            .run(
                IoCommand::Read {
                    nsid: 1,
                    lba,
                    blocks: 1,
                },
                Some(back),
                Duration::from_secs(10),
            )
            .unwrap();
        buffer = read.unwrap();
        assert_eq!(
            buffer.as_slice()[..8],
            lba.to_le_bytes(),
            "CPU {} LBA {lba}",
            handle.cpu()
        );
    }
}

#[test]
fn vectors_follow_housekeeping_and_every_cpu_does_io() {
    let options = RuntimeOptions {
        topology: Some(eight_cpus()),
        isolated: Some(set("2-7")),
        ..RuntimeOptions::default()
    };
    let (sim, runtime) = start("sim,size=64M", options);
    let housekeeping = set("0-1");
    assert_eq!(runtime.plan().nr_vecs, 1 + housekeeping.len());
    assert_eq!(runtime.vectors().len(), 2);
    let layout = runtime.layout();
    assert!(!layout.shared_sqs);
    assert_eq!(layout.sqs.len(), 8, "{layout}");
    for state in runtime.vectors() {
        assert!(
            state.home.is_subset(&housekeeping),
            "vector {} home {}",
            state.vector,
            state.home
        );
        assert!(state.target().is_subset(&housekeeping));
        let steered = sim.vector_affinity(state.vector).expect("vector steered");
        assert!(
            steered.is_subset(&housekeeping),
            "vector {} steered to {steered}",
            state.vector
        );
    }
    // The admin vector stays off isolated CPUs too.
    assert!(sim.vector_affinity(0).unwrap().is_subset(&housekeeping));
    for cpu in 0..8 {
        let mut handle = runtime.handle(cpu).unwrap();
        write_read(&mut handle, cpu as u64 * 100, 20);
    }
    assert!(runtime.handle(3).is_err(), "a handle is handed out once");
    assert!(runtime.handle(8).is_err(), "CPU 8 does not exist");
    // Every completion was reaped by a thread of a housekeeping vector.
    let completions = vector_sum(&runtime, |c| &c.completions);
    assert_eq!(completions, 8 * 40);
    runtime.close().unwrap();
}

#[test]
fn isolated_cpu_io_completes_on_the_housekeeping_cpu() {
    // This machine: CPU 1 treated as isolated, CPU 0 housekeeping.
    let host = isonvme::mapping::sysfs::SysfsRoot::host()
        .topology()
        .unwrap();
    if !host.online().contains(0) || !host.online().contains(1) {
        panic!(
            "this test needs CPUs 0 and 1 online (found {})",
            host.online()
        );
    }
    let options = RuntimeOptions {
        topology: Some(host),
        isolated: Some(set("1")),
        mode: CompletionMode::Interrupt,
        ..RuntimeOptions::default()
    };
    let (_sim, runtime) = start("sim,size=64M", options);
    let handle = runtime.handle(1).unwrap();
    let total = 100_000u64;
    let worker = std::thread::spawn(move || {
        let mut handle = handle;
        isonvme::os::pin_current_thread(&CpuSet::single(1)).unwrap();
        let mut free: Vec<_> = (0..32)
            .map(|_| handle.pool().alloc(4096).unwrap())
            .collect();
        let (mut submitted, mut completed) = (0u64, 0u64);
        while completed < total {
            while submitted < total {
                let Some(buffer) = free.pop() else { break };
                handle
                    .submit(
                        IoCommand::Read {
                            nsid: 1,
                            lba: submitted % 4096,
                            blocks: 1,
                        },
                        Some(buffer),
                        submitted,
                    )
                    .unwrap();
                submitted += 1;
            }
            handle.ring();
            handle
                .poll(|completion| {
                    assert!(completion.result.is_ok());
                    free.push(completion.buffer.unwrap());
                    completed += 1;
                })
                .unwrap();
        }
        assert_eq!(
            isonvme::os::current_cpu(),
            Some(1),
            "the I/O loop ran on CPU 1"
        );
        completed
    });
    assert_eq!(worker.join().unwrap(), total);
    let mut on_cpu0 = 0;
    for state in runtime.vectors() {
        assert!(state.home.is_subset(&set("0")));
        let handled: Vec<u64> = state
            .counters
            .handled_on
            .iter()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert_eq!(
            handled.get(1).copied().unwrap_or(0),
            0,
            "completions handled on isolated CPU 1: {handled:?}"
        );
        on_cpu0 += handled[0];
    }
    assert_eq!(on_cpu0, total, "every completion handled on CPU 0");
    assert_eq!(
        runtime
            .cpu_counters(1)
            .unwrap()
            .completed
            .load(std::sync::atomic::Ordering::Relaxed),
        total
    );
    runtime.close().unwrap();
}

#[test]
fn fewer_sqs_than_cpus_share_hardware_queues() {
    let options = RuntimeOptions {
        topology: Some(eight_cpus()),
        isolated: Some(set("2-7")),
        max_sqs: Some(2),
        ..RuntimeOptions::default()
    };
    let (_sim, runtime) = start("sim,size=64M", options);
    let layout = runtime.layout().clone();
    assert!(layout.shared_sqs, "{layout}");
    assert_eq!(layout.sqs.len(), 2);
    let mut all = CpuSet::new();
    for (_, _, cpus) in &layout.sqs {
        all.union_with(cpus);
    }
    assert_eq!(all, set("0-7"), "every CPU submits through some SQ");
    // All CPUs at once, from threads, to exercise the software rings.
    let workers: Vec<_> = (0..8)
        .map(|cpu| {
            let mut handle = runtime.handle(cpu).unwrap();
            std::thread::spawn(move || write_read(&mut handle, 1000 + cpu as u64 * 64, 50))
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    runtime.close().unwrap();
}

#[test]
fn every_completion_mode_works() {
    for (mode, expect_interrupts) in [
        (CompletionMode::Interrupt, true),
        (CompletionMode::Poll, false),
        (
            CompletionMode::Hybrid {
                spin: Duration::from_micros(10),
            },
            true,
        ),
    ] {
        let options = RuntimeOptions {
            topology: Some(eight_cpus()),
            isolated: Some(set("1-7")),
            mode,
            ..RuntimeOptions::default()
        };
        let (sim, runtime) = start("sim,size=16M", options);
        let mut handle = runtime.handle(5).unwrap();
        for round in 0..20 {
            write_read(&mut handle, round, 1);
            // Let hybrid threads go past their spin window and block.
            std::thread::sleep(Duration::from_millis(1));
        }
        let interrupts = vector_sum(&runtime, |c| &c.interrupts);
        assert_eq!(
            interrupts > 0,
            expect_interrupts,
            "{mode:?}: {interrupts} interrupt wake-ups"
        );
        if !expect_interrupts {
            assert_eq!(
                sim.stats().interrupts(1),
                0,
                "poll mode creates CQs without interrupts"
            );
        }
        runtime.close().unwrap();
    }
}

#[test]
fn hotplug_moves_completion_work_to_an_online_housekeeping_cpu() {
    // 4 CPUs on one node; CPUs 0-1 housekeeping, 2-3 isolated: two vectors,
    // one on CPU 0 and one on CPU 1.
    let topology = Topology::new(TopologySpec {
        possible: set("0-3"),
        present: set("0-3"),
        online: set("0-3"),
        nodes: BTreeMap::from([(0, set("0-3"))]),
        siblings: Vec::new(),
        clusters: None,
    })
    .unwrap();
    let online = Arc::new(ManualOnline::new(set("0-3")));
    let options = RuntimeOptions {
        topology: Some(topology),
        isolated: Some(set("2-3")),
        online_source: Some(online.clone()),
        watch_interval: Duration::from_millis(5),
        ..RuntimeOptions::default()
    };
    let (sim, runtime) = start("sim,size=16M", options);
    let on_cpu0 = runtime
        .vectors()
        .iter()
        .find(|v| v.home == set("0"))
        .expect("a vector homed on CPU 0")
        .clone();
    assert!(
        !runtime.can_offline(0).unwrap().allowed(),
        "CPU 0 is the last housekeeping CPU of its queue"
    );
    assert!(
        runtime.can_offline(2).unwrap().allowed(),
        "isolated CPUs may go"
    );

    online.set(set("1-3"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while on_cpu0.target() != set("1") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(on_cpu0.target(), set("1"), "completion work moved to CPU 1");
    assert_eq!(
        sim.vector_affinity(on_cpu0.vector),
        Some(set("1")),
        "interrupt moved too"
    );
    assert!(
        !runtime.can_offline(1).unwrap().allowed(),
        "now CPU 1 serves every isolated CPU"
    );
    // Isolated CPUs keep working through the moved queue.
    for cpu in [2, 3] {
        let mut handle = runtime.handle(cpu).unwrap();
        write_read(&mut handle, 10 * cpu as u64, 5);
    }
    online.set(set("0-3"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while on_cpu0.target() != set("0") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(on_cpu0.target(), set("0"), "back home when CPU 0 returns");
    runtime.close().unwrap();
}

#[test]
fn one_completion_thread_sleeps_on_every_vector_it_serves() {
    // Two housekeeping CPUs, so two I/O vectors; one thread serves both.
    let options = RuntimeOptions {
        topology: Some(eight_cpus()),
        isolated: Some(set("2-7")),
        mode: CompletionMode::Interrupt,
        completion_threads: Some(1),
        ..RuntimeOptions::default()
    };
    let (_sim, runtime) = start("sim,size=16M", options);
    assert_eq!(runtime.vectors().len(), 2);
    // One submitting CPU per vector.
    let mut cpu_per_cq = BTreeMap::new();
    for (_, cq, cpus) in &runtime.layout().sqs {
        cpu_per_cq.entry(*cq).or_insert(cpus.first().unwrap());
    }
    assert_eq!(cpu_per_cq.len(), 2, "{}", runtime.layout());
    for &cpu in cpu_per_cq.values() {
        let mut handle = runtime.handle(cpu).unwrap();
        for round in 0..10 {
            write_read(&mut handle, cpu as u64 * 100 + round, 1);
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    // Each vector's interrupt woke the shared thread: it blocked on both
    // eventfds rather than spinning past them.
    for state in runtime.vectors() {
        let interrupts = state
            .counters
            .interrupts
            .load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            interrupts > 0,
            "vector {}: no interrupt wake-up",
            state.vector
        );
    }
    runtime.close().unwrap();
}

fn interrupts_on_io_vectors(sim: &SimController, runtime: &Runtime) -> u64 {
    runtime
        .vectors()
        .iter()
        .map(|v| sim.stats().interrupts(v.vector))
        .sum()
}

#[test]
fn inline_cpus_reap_their_own_completions_without_interrupts() {
    let options = RuntimeOptions {
        topology: Some(eight_cpus()),
        isolated: Some(set("2-7")),
        inline: InlineCpus::Isolated,
        ..RuntimeOptions::default()
    };
    let (sim, runtime) = start("sim,size=64M", options);
    let layout = runtime.layout().clone();
    assert_eq!(layout.inline_cpus(), set("2-7"), "{layout}");
    assert!(layout.inline_refused.is_empty(), "{layout}");
    assert_eq!(layout.sqs.len(), 2, "housekeeping CPUs keep vector SQs");
    assert!(layout.to_string().contains("inline"), "{layout}");
    // Inline CQs are not vector CQs, so they are outside the vector cap.
    assert_eq!(runtime.vectors().len(), 2);
    for queue in &layout.inline {
        assert!(
            runtime.vectors().iter().all(|v| v.cq != queue.cq),
            "CQ {} of CPU {} is a vector's CQ",
            queue.cq,
            queue.cpu
        );
    }
    let before = interrupts_on_io_vectors(&sim, &runtime);
    for cpu in 2..8 {
        let mut handle = runtime.handle(cpu).unwrap();
        assert!(handle.is_inline());
        write_read(&mut handle, cpu as u64 * 100, 20);
        let counters = runtime.cpu_counters(cpu).unwrap();
        assert_eq!(
            counters
                .reaped_inline
                .load(std::sync::atomic::Ordering::Relaxed),
            40,
            "CPU {cpu} reaped its own completions"
        );
    }
    assert_eq!(
        vector_sum(&runtime, |c| &c.completions),
        0,
        "no housekeeping thread touched an inline completion"
    );
    assert_eq!(
        interrupts_on_io_vectors(&sim, &runtime),
        before,
        "inline I/O raised no interrupt"
    );
    // Housekeeping CPUs still go through their vectors.
    for cpu in 0..2 {
        let mut handle = runtime.handle(cpu).unwrap();
        assert!(!handle.is_inline());
        write_read(&mut handle, cpu as u64 * 100, 10);
    }
    assert_eq!(vector_sum(&runtime, |c| &c.completions), 40);
    runtime.close().unwrap();
}

#[test]
fn too_few_queues_for_every_inline_cpu_falls_back_per_cpu_and_says_so() {
    // 4 I/O queue pairs granted. Inline pairs come first, as the kernel's
    // poll queues do, but the interrupt-driven path keeps one CQ (so one
    // vector here) and one shared SQ: 3 of the 6 isolated CPUs get pairs.
    let options = RuntimeOptions {
        topology: Some(eight_cpus()),
        isolated: Some(set("2-7")),
        inline: InlineCpus::Isolated,
        ..RuntimeOptions::default()
    };
    let (_sim, runtime) = start("sim,size=64M,queues=4", options);
    let layout = runtime.layout().clone();
    assert_eq!(layout.inline_cpus(), set("2-4"), "{layout}");
    assert_eq!(layout.inline_refused, set("5-7"), "{layout}");
    assert!(layout.shared_sqs, "{layout}");
    assert_eq!(runtime.vectors().len(), 1, "{layout}");
    assert!(
        layout.to_string().contains("inline refused for CPUs 5-7"),
        "{layout}"
    );
    let workers: Vec<_> = (0..8)
        .map(|cpu| {
            let mut handle = runtime.handle(cpu).unwrap();
            assert_eq!(handle.is_inline(), (2..5).contains(&cpu), "CPU {cpu}");
            std::thread::spawn(move || write_read(&mut handle, 1000 + cpu as u64 * 64, 20))
        })
        .collect();
    for worker in workers {
        worker.join().unwrap();
    }
    runtime.close().unwrap();
}

#[test]
fn inline_is_chosen_per_cpu_and_by_name() {
    assert_eq!(
        "isolated".parse::<InlineCpus>().unwrap(),
        InlineCpus::Isolated
    );
    assert_eq!("all".parse::<InlineCpus>().unwrap(), InlineCpus::All);
    assert_eq!(
        "3,5".parse::<InlineCpus>().unwrap(),
        InlineCpus::Only(set("3,5"))
    );
    let error = "x".parse::<InlineCpus>().unwrap_err().to_string();
    assert!(error.contains("none, isolated, all"), "{error}");
    let error = "inline".parse::<CompletionMode>().unwrap_err().to_string();
    assert!(error.contains("RuntimeOptions::inline"), "{error}");
    let options = RuntimeOptions {
        topology: Some(eight_cpus()),
        isolated: Some(set("2-7")),
        inline: InlineCpus::Only(set("0,6")),
        ..RuntimeOptions::default()
    };
    let (_sim, runtime) = start("sim,size=16M", options);
    assert_eq!(runtime.layout().inline_cpus(), set("0,6"));
    for cpu in 0..8 {
        let mut handle = runtime.handle(cpu).unwrap();
        assert_eq!(handle.is_inline(), cpu == 0 || cpu == 6);
        write_read(&mut handle, cpu as u64 * 10, 2);
    }
    runtime.close().unwrap();
}

#[test]
fn every_vector_is_steered_before_it_can_fire_in_every_mode() {
    for mode in [
        CompletionMode::Interrupt,
        CompletionMode::Poll,
        CompletionMode::Hybrid {
            spin: Duration::from_micros(10),
        },
    ] {
        for inline in [InlineCpus::None, InlineCpus::Isolated] {
            let options = RuntimeOptions {
                topology: Some(eight_cpus()),
                isolated: Some(set("2-7")),
                mode,
                inline: inline.clone(),
                ..RuntimeOptions::default()
            };
            let (sim, runtime) = start("sim,size=16M", options);
            for cpu in [0, 4] {
                let mut handle = runtime.handle(cpu).unwrap();
                write_read(&mut handle, cpu as u64, 3);
            }
            runtime.close().unwrap();
            assert!(
                sim.stats().interrupts(0) > 0,
                "admin commands signalled vector 0"
            );
            assert_eq!(
                sim.stats().unsteered_interrupts(),
                0,
                "{mode:?} {inline:?}: an interrupt fired before its vector was steered"
            );
        }
    }
}

#[test]
fn an_idle_polling_thread_parks_and_wakes_for_new_work() {
    let options = RuntimeOptions {
        topology: Some(eight_cpus()),
        isolated: Some(set("2-7")),
        mode: CompletionMode::Poll,
        ..RuntimeOptions::default()
    };
    let (_sim, runtime) = start("sim,size=16M", options);
    let mut handle = runtime.handle(4).unwrap();
    write_read(&mut handle, 0, 5);
    let naps = |runtime: &Runtime| vector_sum(runtime, |c| &c.parked_naps);
    let deadline = Instant::now() + Duration::from_secs(5);
    while naps(&runtime) == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        naps(&runtime) > 0,
        "nothing in flight, yet no thread parked"
    );
    // A parked thread notices new work.
    write_read(&mut handle, 100, 5);
    runtime.close().unwrap();
}

/// Keeps `handle` at its full depth for `total` reads.
fn saturate(handle: &mut CpuHandle, total: u64) {
    let mut free: Vec<_> = (0..handle.capacity())
        .map(|_| handle.pool().alloc(4096).unwrap())
        .collect();
    let (mut submitted, mut completed) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed < total {
        while submitted < total {
            let Some(buffer) = free.pop() else { break };
            let command = IoCommand::Read {
                nsid: 1,
                lba: submitted % 1024,
                blocks: 1,
            };
            handle.submit(command, Some(buffer), submitted).unwrap();
            submitted += 1;
        }
        handle.ring();
        handle
            .poll(|completion| {
                assert!(completion.result.is_ok());
                free.push(completion.buffer.unwrap());
                completed += 1;
            })
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "stalled at {completed} of {total} completions ({submitted} submitted)"
        );
    }
}

#[test]
fn an_inline_queue_pair_runs_at_full_depth_without_stalling() {
    // The inline CQ is as deep as the SQ: every slot in flight at once
    // must still find room for its completion, also when the controller's
    // queues are no deeper than the runtime's.
    for sim in ["sim,size=16M", "sim,size=16M,qdepth=8"] {
        let options = RuntimeOptions {
            topology: Some(eight_cpus()),
            isolated: Some(set("2-7")),
            inline: InlineCpus::Isolated,
            depth: 8,
            ..RuntimeOptions::default()
        };
        let (sim_controller, runtime) = start(sim, options);
        let mut handle = runtime.handle(3).unwrap();
        assert!(handle.is_inline());
        assert_eq!(handle.capacity(), 7);
        saturate(&mut handle, 20_000);
        assert_eq!(sim_controller.stats().invalid_doorbell_writes(), 0, "{sim}");
        drop(handle);
        runtime.close().unwrap();
    }
}

#[test]
fn a_handle_refuses_a_buffer_of_another_controller() {
    let options = RuntimeOptions {
        topology: Some(eight_cpus()),
        isolated: Some(set("2-7")),
        inline: InlineCpus::Isolated,
        ..RuntimeOptions::default()
    };
    let (_sim, runtime) = start("sim,size=16M", options);
    let other = Controller::open(
        SimController::open("sim,size=16M").unwrap(),
        ControllerOptions::default(),
    )
    .unwrap();
    for cpu in [0, 3] {
        let mut handle = runtime.handle(cpu).unwrap();
        let foreign = other.pool().alloc(4096).unwrap();
        let rejected = handle
            .submit(
                IoCommand::Read {
                    nsid: 1,
                    lba: 0,
                    blocks: 1,
                },
                Some(foreign),
                1,
            )
            .unwrap_err();
        assert!(
            matches!(rejected.error, isonvme::Error::ForeignBuffer),
            "CPU {cpu}: {}",
            rejected.error
        );
        assert!(rejected.buffer.is_some());
        assert_eq!(handle.outstanding(), 0);
        write_read(&mut handle, 0, 1);
    }
    runtime.close().unwrap();
}
