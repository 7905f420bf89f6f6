//! Fuzzing of what the device and the user hand the driver, with proptest
//! over arbitrary bytes (cargo-fuzz needs a nightly compiler; these run on
//! stable, in every test run). More cases:
//! `PROPTEST_CASES=100000 cargo test --release -p isonvme --test fuzz`.
//!
//! The property everywhere: an answer or an error, never a panic.

use std::time::Duration;

use isonvme::device::DeviceName;
use isonvme::nvme::{
    ActiveNamespaceList, CompletionEntry, IdentifyController, IdentifyNamespace, NvmeStatus, Status,
};
use isonvme::runtime::{InlineCpus, Runtime, RuntimeOptions};
use isonvme::sim::{SimController, SimOptions, SpuriousCompletion};
use isonvme::{Controller, ControllerOptions, IoCommand};
use proptest::prelude::*;
use zerocopy::FromBytes;

proptest! {
    /// A completion entry as the device may write it: any 16 bytes.
    #[test]
    fn completion_entries_decode(bytes in proptest::array::uniform16(any::<u8>())) {
        let entry = CompletionEntry::read_from_bytes(&bytes).unwrap();
        let _ = entry.result();
        if let Some(status) = NvmeStatus::from_status(Status(entry.status >> 1)) {
            let text = status.to_string();
            prop_assert!(!text.is_empty());
            // The status field survives a decode/encode round trip.
            prop_assert_eq!(status.to_status_field(), (entry.status >> 1) & 0x7FFF);
        }
    }

    /// Identify data as the device may return it: any 4 KiB.
    #[test]
    fn identify_data_decodes(bytes in proptest::collection::vec(any::<u8>(), 4096)) {
        let controller = IdentifyController::read_from_bytes(&bytes).unwrap();
        let _ = (controller.serial(), controller.model(), controller.firmware());
        let _ = (controller.subsystem_nqn(), controller.version());
        let _ = controller.max_transfer_bytes(4096);
        let _ = (controller.supports_write_zeroes(), controller.supports_dsm());
        let namespace = IdentifyNamespace::read_from_bytes(&bytes).unwrap();
        let _ = (namespace.current_lba_format(), namespace.lba_size());
        let _ = (namespace.size_in_blocks(), namespace.size_in_bytes());
        let list = ActiveNamespaceList::read_from_bytes(&bytes).unwrap();
        prop_assert!(list.iter().count() <= 1024);
    }

    /// Device strings as a user may type them.
    #[test]
    fn device_strings_parse_or_explain(text in "(sim|0000:|[0-9a-f:.]{0,12})?(,[a-z]{0,8}(=[0-9a-zA-Z:./@+%-]{0,12})?){0,4}") {
        match text.parse::<DeviceName>() {
            Ok(_) => {}
            Err(error) => prop_assert!(!error.to_string().is_empty()),
        }
        let _ = text.parse::<SimOptions>();
    }

    /// Any bytes at all as a device string.
    #[test]
    fn arbitrary_device_strings_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = text.parse::<DeviceName>();
        let _ = format!("sim,{text}").parse::<SimOptions>();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Completions the protocol does not allow (unknown command ids, bogus
    /// SQ ids), posted at random moments into a running runtime: errors or
    /// dropped entries, never a panic, and the valid I/O still completes.
    #[test]
    fn hostile_completions_reach_the_runtime(
        posts in proptest::collection::vec(any::<bool>(), 1..6),
        inline in any::<bool>(),
    ) {
        let sim = SimController::open("sim,size=1M").unwrap();
        let controller = Controller::open(sim.clone(), ControllerOptions::default()).unwrap();
        let topology = isonvme::mapping::Topology::new(isonvme::mapping::TopologySpec {
            possible: "0-1".parse().unwrap(),
            present: "0-1".parse().unwrap(),
            online: "0-1".parse().unwrap(),
            nodes: [(0, "0-1".parse().unwrap())].into(),
            siblings: Vec::new(),
            clusters: None,
        })
        .unwrap();
        let runtime = Runtime::open(controller, RuntimeOptions {
            topology: Some(topology),
            isolated: Some("1".parse().unwrap()),
            inline: if inline { InlineCpus::All } else { InlineCpus::None },
            command_timeout: Duration::from_millis(200),
            abort_timeout: Duration::from_millis(100),
            ..RuntimeOptions::default()
        })
        .unwrap();
        let mut handle = runtime.handle(1).unwrap();
        let cq = runtime.layout().inline.first().map_or(1, |pair| pair.cq);
        let mut buffer = Some(handle.pool().alloc(4096).unwrap());
        for unknown in posts {
            sim.faults().post_spurious(if unknown {
                SpuriousCompletion::UnknownCid { cqid: cq }
            } else {
                SpuriousCompletion::BogusSqId { cqid: cq }
            });
            let read = IoCommand::Read { nsid: 1, lba: 0, blocks: 1 };
            // The spurious entry may be reported by this call (an error)
            // or dropped by a completion thread; the read itself completes.
            match handle.run(read, buffer.take(), Duration::from_secs(10)) {
                Ok((_, back)) => buffer = back,
                Err(_) => {
                    let mut back = None;
                    let start = std::time::Instant::now();
                    while back.is_none() && start.elapsed() < Duration::from_secs(10) {
                        let _ = handle.poll(|completion| back = completion.buffer);
                    }
                    prop_assert!(back.is_some(), "the read never completed");
                    buffer = back;
                }
            }
        }
        drop(handle);
        let _ = runtime.close();
    }
}
