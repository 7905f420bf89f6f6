//! The NVMe core end to end against the simulated controller: the same
//! code that drives real hardware, through the transport seam.

use std::sync::Arc;
use std::time::Duration;

use isonvme::nvme::{CommandSpecificStatus, GenericStatus, MediaStatus, NvmeStatus, StatusCode};
use isonvme::sim::{FaultScope, SimController};
use isonvme::{Controller, ControllerOptions, DeviceError, Error, IoCommand, IoQueuePair};

fn open(name: &str) -> (Arc<SimController>, Controller) {
    let sim = SimController::open(name).expect("simulator starts");
    let controller = Controller::open(sim.clone(), ControllerOptions::default()).expect("bring-up");
    (sim, controller)
}

fn pattern(buffer: &mut isonvme::dma::DmaBuffer, seed: u64) {
    for (index, byte) in buffer.as_mut_slice().iter_mut().enumerate() {
        *byte = ((index as u64).wrapping_mul(2654435761) ^ seed) as u8;
    }
}

#[test]
fn bring_up_identifies_the_controller_and_namespaces() {
    let (_sim, controller) = open("sim,size=64M,lba=512,namespaces=2,queues=8,vectors=9,mdts=3");
    let info = controller.info();
    assert_eq!(info.name, "sim");
    assert_eq!(info.namespaces.len(), 2);
    assert_eq!(info.namespaces[0].block_size, 512);
    assert_eq!(info.namespaces[0].blocks, (64 << 20) / 512);
    assert_eq!(info.max_transfer, 32 * 1024);
    assert_eq!((info.granted_sqs, info.granted_cqs), (8, 8));
    assert_eq!(info.max_vectors, 9);
    assert!(!info.identify.serial().is_empty());
    controller.shutdown().unwrap();
}

#[test]
fn every_prp_shape_round_trips() {
    // mdts=0: no controller limit, so one command can need a chained list.
    let (_sim, controller) = open("sim,size=64M,mdts=0");
    let mut queue = IoQueuePair::create(&controller, 1, 32, None).unwrap();
    let pool = controller.pool().clone();
    // One page (PRP1 only), two pages (PRP2 direct), a list, then a
    // transfer of 4 x 2 MiB buffers = 2048 pages: a chain of list pages.
    for (case, (bytes, buffers)) in [(4096usize, 1usize), (8192, 1), (64 * 1024, 1), (2 << 20, 4)]
        .into_iter()
        .enumerate()
    {
        let mut written: Vec<_> = (0..buffers).map(|_| pool.alloc(bytes).unwrap()).collect();
        for (index, buffer) in written.iter_mut().enumerate() {
            pattern(buffer, (case * 10 + index) as u64);
        }
        let lba = case as u64 * 4096;
        let refs: Vec<_> = written.iter().collect();
        queue.write_vectored(1, lba, &refs).unwrap();
        let mut read: Vec<_> = (0..buffers).map(|_| pool.alloc(bytes).unwrap()).collect();
        let mut refs: Vec<_> = read.iter_mut().collect();
        queue.read_vectored(1, lba, &mut refs).unwrap();
        for (w, r) in written.iter().zip(&read) {
            assert!(w.as_slice() == r.as_slice(), "case {case}: data differs");
        }
    }
}

#[test]
fn inside_one_page_with_small_blocks() {
    // 512-byte blocks: a one-block transfer lies inside one page.
    let (_sim, controller) = open("sim,size=8M,lba=512");
    let mut queue = IoQueuePair::create(&controller, 1, 8, None).unwrap();
    let mut buffer = controller.pool().alloc(512).unwrap();
    pattern(&mut buffer, 7);
    queue.write(1, 3, &buffer).unwrap();
    let mut back = controller.pool().alloc(512).unwrap();
    queue.read(1, 3, &mut back).unwrap();
    assert_eq!(buffer.as_slice(), back.as_slice());
}

#[test]
fn transfers_above_mdts_are_split() {
    let (sim, controller) = open("sim,size=16M,mdts=1");
    assert_eq!(controller.info().max_transfer, 8192);
    let mut queue = IoQueuePair::create(&controller, 1, 16, None).unwrap();
    let mut buffer = controller.pool().alloc(256 * 1024).unwrap();
    pattern(&mut buffer, 3);
    let before = sim.stats().total_io_commands();
    queue.write(1, 100, &buffer).unwrap();
    assert_eq!(
        sim.stats().total_io_commands() - before,
        32,
        "256 KiB in 8 KiB commands"
    );
    let mut back = controller.pool().alloc(256 * 1024).unwrap();
    queue.read(1, 100, &mut back).unwrap();
    assert!(buffer.as_slice() == back.as_slice());
}

#[test]
fn thousands_of_commands_wrap_small_and_large_queues() {
    let (_sim, controller) = open("sim,size=16M");
    for (qid, depth) in [(1u16, 2u32), (2, 64)] {
        let mut queue = IoQueuePair::create(&controller, qid, depth, None).unwrap();
        let pool = controller.pool();
        let mut free: Vec<_> = (0..depth as usize)
            .map(|_| pool.alloc(4096).unwrap())
            .collect();
        let mut completed = 0u64;
        let mut submitted = 0u64;
        let total = 5000u64;
        while completed < total {
            while submitted < total && queue.capacity() > 0 {
                let mut buffer = free.pop().unwrap();
                buffer.as_mut_slice()[..8].copy_from_slice(&submitted.to_le_bytes());
                let lba = submitted % 1024;
                queue
                    .submit(
                        IoCommand::Write {
                            nsid: 1,
                            lba,
                            blocks: 1,
                        },
                        Some(buffer),
                        submitted,
                    )
                    .unwrap();
                submitted += 1;
            }
            queue.ring();
            queue
                .poll(|completion| {
                    assert_eq!(completion.result, Ok(0));
                    free.push(completion.buffer.expect("buffer handed back"));
                    completed += 1;
                })
                .unwrap();
        }
        assert_eq!(queue.outstanding(), 0);
        // The last writes to each LBA are the ones read back.
        let mut back = pool.alloc(4096).unwrap();
        queue.read(1, (total - 1) % 1024, &mut back).unwrap();
        assert_eq!(back.as_slice()[..8], (total - 1).to_le_bytes());
    }
}

#[test]
fn flush_write_zeroes_and_deallocate() {
    let (_sim, controller) = open("sim,size=16M");
    let mut queue = IoQueuePair::create(&controller, 1, 16, None).unwrap();
    let mut buffer = controller.pool().alloc(16 * 4096).unwrap();
    pattern(&mut buffer, 9);
    queue.write(1, 0, &buffer).unwrap();
    queue.flush(1).unwrap();
    queue.write_zeroes(1, 2, 3, false).unwrap();
    queue.deallocate(1, &[(10, 2), (14, 1)]).unwrap();
    let mut back = controller.pool().alloc(16 * 4096).unwrap();
    queue.read(1, 0, &mut back).unwrap();
    for block in 0..16 {
        let range = block * 4096..(block + 1) * 4096;
        let zero = (2..5).contains(&block) || block == 10 || block == 11 || block == 14;
        if zero {
            assert!(
                back.as_slice()[range].iter().all(|&b| b == 0),
                "block {block} should read zeros"
            );
        } else {
            assert_eq!(
                &back.as_slice()[range.clone()],
                &buffer.as_slice()[range],
                "block {block}"
            );
        }
    }
}

#[test]
fn error_statuses_reach_the_caller_typed() {
    let (sim, controller) = open("sim,size=16M");
    let mut queue = IoQueuePair::create(&controller, 1, 16, None).unwrap();
    let buffer = controller.pool().alloc(4096).unwrap();
    let statuses: Vec<NvmeStatus> = vec![
        GenericStatus::LbaOutOfRange.into(),
        GenericStatus::InvalidField.into(),
        GenericStatus::DataTransferError.into(),
        GenericStatus::InternalError.into(),
        NvmeStatus::from(MediaStatus::UnrecoveredReadError).with_dnr(true),
        NvmeStatus::from(MediaStatus::WriteFault).with_more(true),
        CommandSpecificStatus::InvalidQueueIdentifier.into(),
    ];
    for status in statuses {
        sim.faults().fail_nth_command(1, FaultScope::Io, status);
        match queue.write(1, 0, &buffer) {
            Err(Error::Command { status: got, .. }) => assert_eq!(got, status),
            other => panic!("expected {status}, got {other:?}"),
        }
    }
    // The queue keeps working after errors.
    queue.write(1, 0, &buffer).unwrap();
    // Statuses the controller produces itself: an interrupt vector beyond
    // the MSI-X table.
    match controller.create_io_cq(5, 16, Some(1000)) {
        Err(Error::Command { status, .. }) => {
            assert_eq!(
                status.code,
                StatusCode::CommandSpecific(CommandSpecificStatus::InvalidInterruptVector)
            )
        }
        other => panic!("expected Invalid Interrupt Vector, got {other:?}"),
    }
    // An SQ whose CQ does not exist.
    match controller.create_io_sq(6, 16, 6) {
        Err(Error::Command { status, .. }) => {
            assert_eq!(
                status.code,
                StatusCode::CommandSpecific(CommandSpecificStatus::CompletionQueueInvalid)
            )
        }
        other => panic!("expected Completion Queue Invalid, got {other:?}"),
    }
}

#[test]
fn misbehaving_device_is_an_error_not_a_panic() {
    let (sim, controller) = open("sim,size=16M");
    let mut queue = IoQueuePair::create(&controller, 1, 16, None).unwrap();
    let buffer = controller.pool().alloc(4096).unwrap();
    sim.faults().post_unknown_cid(1);
    let mut outcome = Ok(0);
    for _ in 0..10_000 {
        outcome = queue.poll(|_| panic!("no command was submitted"));
        if outcome.is_err() {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    assert!(
        matches!(
            outcome,
            Err(Error::Device(DeviceError::UnknownCommandId {
                queue: 1,
                ..
            }))
        ),
        "{outcome:?}"
    );
    sim.faults().post_bogus_sq_id(1);
    let mut outcome = Ok(0);
    for _ in 0..10_000 {
        outcome = queue.poll(|_| panic!("no command was submitted"));
        if outcome.is_err() {
            break;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    assert!(
        matches!(
            outcome,
            Err(Error::Device(DeviceError::WrongSubmissionQueue { .. }))
        ),
        "{outcome:?}"
    );
    // Still usable afterwards.
    queue.write(1, 0, &buffer).unwrap();
    // A controller fatal status stops everything with a clear error.
    sim.faults().set_fatal();
    match queue.write(1, 0, &buffer) {
        Err(Error::ControllerFatal) => {}
        other => panic!("expected ControllerFatal, got {other:?}"),
    }
}

#[test]
fn a_lost_completion_times_out_and_stops_the_controller() {
    let sim = SimController::open("sim,size=16M").unwrap();
    let options = ControllerOptions {
        command_timeout: Duration::from_millis(300),
        ..ControllerOptions::default()
    };
    let controller = Controller::open(sim.clone(), options).unwrap();
    let mut queue = IoQueuePair::create(&controller, 1, 16, None).unwrap();
    let buffer = controller.pool().alloc(4096).unwrap();
    sim.faults().drop_nth_completion(1);
    match queue.write(1, 0, &buffer) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(matches!(
        queue.write(1, 0, &buffer),
        Err(Error::Unusable(_))
    ));
}

#[test]
fn bad_requests_are_refused_before_reaching_the_device() {
    let (_sim, controller) = open("sim,size=1M");
    let mut queue = IoQueuePair::create(&controller, 1, 4, None).unwrap();
    let buffer = controller.pool().alloc(4096).unwrap();
    for (result, needle) in [
        (queue.write(1, 256, &buffer), "beyond namespace"),
        (queue.write(9, 0, &buffer), "namespace 9"),
    ] {
        match result {
            Err(Error::InvalidArgument(message)) => assert!(message.contains(needle), "{message}"),
            other => panic!("expected InvalidArgument({needle}), got {other:?}"),
        }
    }
    assert!(matches!(
        controller.create_io_cq(0, 16, None),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        controller.create_io_cq(2, 1 << 20, None),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn file_data_survives_shutdown_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns1.img");
    let name = format!("sim,size=8M,file={}", path.display());
    let mut buffer;
    {
        let (_sim, controller) = open(&name);
        let mut queue = IoQueuePair::create(&controller, 1, 8, None).unwrap();
        buffer = controller.pool().alloc(3 * 4096).unwrap();
        pattern(&mut buffer, 42);
        queue.write(1, 77, &buffer).unwrap();
        drop(queue);
        controller.shutdown().unwrap();
    }
    let expected = buffer.as_slice().to_vec();
    drop(buffer);
    let (_sim, controller) = open(&name);
    let mut queue = IoQueuePair::create(&controller, 1, 8, None).unwrap();
    let mut back = controller.pool().alloc(3 * 4096).unwrap();
    queue.read(1, 77, &mut back).unwrap();
    assert!(back.as_slice() == expected.as_slice());
}

#[test]
fn shadow_doorbells_are_used_where_supported_and_switchable_off() {
    const DOORBELL_BUFFER_CONFIG: u8 = 0x7C;
    let run = |name: &str, shadow: bool| {
        let sim = SimController::open(name).unwrap();
        let options = ControllerOptions {
            shadow_doorbells: shadow,
            ..ControllerOptions::default()
        };
        let controller = Controller::open(sim.clone(), options).unwrap();
        let mut queue = IoQueuePair::create(&controller, 1, 64, None).unwrap();
        let mut buffer = controller.pool().alloc(4096).unwrap();
        for lba in 0..200 {
            pattern(&mut buffer, lba);
            queue.write(1, lba, &buffer).unwrap();
            let mut back = controller.pool().alloc(4096).unwrap();
            queue.read(1, lba, &mut back).unwrap();
            assert_eq!(back.as_slice(), buffer.as_slice(), "LBA {lba}");
        }
        let used = controller.info().shadow_doorbells;
        let stats = sim.stats();
        let result = (
            used,
            stats.admin_commands(DOORBELL_BUFFER_CONFIG),
            stats.shadow_doorbells() + stats.mmio_doorbells(),
            stats.shadow_doorbells(),
        );
        controller.shutdown().unwrap();
        result
    };
    // Supported and wanted: configured once, every SQ tail value seen.
    let (used, configs, doorbells, _) = run("sim,size=16M", true);
    assert!(used);
    assert_eq!(configs, 1);
    assert_eq!(doorbells, 400, "one SQ tail value per command");
    // Switched off by the host: never configured, registers only.
    let (used, configs, _, from_shadow) = run("sim,size=16M", false);
    assert!(!used);
    assert_eq!((configs, from_shadow), (0, 0));
    // Not supported by the controller: not asked for.
    let (used, configs, _, from_shadow) = run("sim,size=16M,dbbuf=off", true);
    assert!(!used);
    assert_eq!((configs, from_shadow), (0, 0));
}

#[test]
fn a_buffer_of_another_controller_is_refused() {
    let (_sim_a, a) = open("sim,size=16M");
    let (_sim_b, b) = open("sim,size=16M");
    let mut queue = IoQueuePair::create(&b, 1, 8, None).unwrap();
    let foreign = a.pool().alloc(4096).unwrap();
    let iova = foreign.iova();
    let rejected = queue
        .submit(
            IoCommand::Read {
                nsid: 1,
                lba: 0,
                blocks: 1,
            },
            Some(foreign),
            7,
        )
        .unwrap_err();
    assert!(
        matches!(rejected.error, Error::ForeignBuffer),
        "{}",
        rejected.error
    );
    assert!(rejected
        .error
        .to_string()
        .contains("another controller's pool"));
    let mut foreign = rejected.buffer.expect("the buffer comes back");
    assert_eq!(foreign.iova(), iova);
    assert!(matches!(
        queue.read(1, 0, &mut foreign),
        Err(Error::ForeignBuffer)
    ));
    assert!(matches!(
        queue.write(1, 0, &foreign),
        Err(Error::ForeignBuffer)
    ));
    assert_eq!(queue.outstanding(), 0, "nothing reached the device");
    // Its own buffers still work.
    let mut own = b.pool().alloc(4096).unwrap();
    queue.read(1, 0, &mut own).unwrap();
    assert!(a.pool().owns(&foreign) && !b.pool().owns(&foreign) && b.pool().owns(&own));
}

/// A controller from a device string with a short command timeout, and
/// one queue pair.
fn faulty(name: &str) -> (Arc<SimController>, Controller, IoQueuePair) {
    let sim = SimController::open(name).unwrap();
    let options = ControllerOptions {
        command_timeout: Duration::from_millis(300),
        ..ControllerOptions::default()
    };
    let controller = Controller::open(sim.clone(), options).unwrap();
    let queue = IoQueuePair::create(&controller, 1, 16, None).unwrap();
    (sim, controller, queue)
}

#[test]
fn faults_from_the_device_string_hit_the_nth_io_command() {
    // status: the 2nd I/O command fails, typed, with Do Not Retry.
    let (_sim, controller, mut queue) = faulty("sim,size=1M,fault=status:0/6:dnr@2");
    let mut buffer = controller.pool().alloc(4096).unwrap();
    queue.read(1, 0, &mut buffer).unwrap();
    match queue.read(1, 1, &mut buffer) {
        Err(Error::Command { status, .. }) => {
            assert_eq!(
                status.code,
                StatusCode::Generic(GenericStatus::InternalError)
            );
            assert!(status.dnr);
        }
        other => panic!("expected the injected status, got {other:?}"),
    }
    queue.read(1, 2, &mut buffer).unwrap();

    // delay and stall: the completion comes that much later.
    for fault in ["delay:80ms@1", "stall:80ms@1"] {
        let (_sim, controller, mut queue) = faulty(&format!("sim,size=1M,fault={fault}"));
        let mut buffer = controller.pool().alloc(4096).unwrap();
        let start = std::time::Instant::now();
        queue.read(1, 0, &mut buffer).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(80), "{fault}");
        queue.read(1, 1, &mut buffer).unwrap();
    }

    // drop: the command never completes; the blocking call times out.
    let (_sim, controller, mut queue) = faulty("sim,size=1M,fault=drop@1");
    let mut buffer = controller.pool().alloc(4096).unwrap();
    assert!(matches!(
        queue.read(1, 0, &mut buffer),
        Err(Error::Timeout { .. })
    ));

    // sqhead: an impossible SQ head is a device error, not a hang.
    let (_sim, controller, mut queue) = faulty("sim,size=1M,fault=sqhead@1");
    let mut buffer = controller.pool().alloc(4096).unwrap();
    match queue.read(1, 0, &mut buffer) {
        Err(Error::Device(DeviceError::BadSqHead { .. })) => {}
        other => panic!("expected a bad SQ head, got {other:?}"),
    }

    // fatal: CSTS.CFS at the 1st I/O command.
    let (_sim, controller, mut queue) = faulty("sim,size=1M,fault=fatal@1");
    let mut buffer = controller.pool().alloc(4096).unwrap();
    assert!(matches!(
        queue.read(1, 0, &mut buffer),
        Err(Error::ControllerFatal)
    ));

    // remove: every register reads all-ones from then on; the call fails.
    let (sim, controller, mut queue) = faulty("sim,size=1M,fault=remove@1");
    let mut buffer = controller.pool().alloc(4096).unwrap();
    assert!(queue.read(1, 0, &mut buffer).is_err());
    let registers = isonvme::transport::Transport::registers(&*sim);
    assert_eq!(registers.read32(0x1c), u32::MAX, "CSTS reads all-ones");
}

#[test]
fn a_bad_fault_in_the_device_string_is_a_clear_error() {
    for (name, needle) in [
        ("sim,fault=explode@3", "drop, delay:DUR"),
        ("sim,fault=drop", "KIND@N"),
        ("sim,fault=status:8/1@1", "SCT 0-7"),
    ] {
        let error = SimController::open(name).unwrap_err().to_string();
        assert!(error.contains(needle), "{name}: {error}");
    }
    // The option prints back as it was given.
    let sim = SimController::open("sim,fault=drop@5+delay:10ms@7").unwrap();
    assert!(
        sim.options()
            .to_string()
            .contains("fault=drop@5+delay:10ms@7"),
        "{}",
        sim.options()
    );
}
