//! Round-trip cost of one 4 KiB read against a zero-latency simulated
//! controller, measured on the submitting thread: at QD1 (submit, ring,
//! poll until done) and at QD32 (32 in flight, each completion replaced by
//! a new read). The simulator's device thread runs on the other core, so
//! this is the driver's path plus one controller hop.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use isonvme::sim::SimController;
use isonvme::{Controller, ControllerOptions, IoCommand, IoQueuePair};

fn run(queue: &mut IoQueuePair, pool: &isonvme::dma::DmaPool, depth: usize, ios: u64) -> Duration {
    let mut free: Vec<_> = (0..depth)
        .map(|_| pool.alloc(4096).expect("buffer"))
        .collect();
    let mut submitted = 0u64;
    let mut completed = 0u64;
    let start = Instant::now();
    while completed < ios {
        while submitted < ios {
            let Some(buffer) = free.pop() else { break };
            let lba = submitted.wrapping_mul(7919) % 8192;
            queue
                .submit(
                    IoCommand::Read {
                        nsid: 1,
                        lba,
                        blocks: 1,
                    },
                    Some(buffer),
                    submitted,
                )
                .expect("submit");
            submitted += 1;
        }
        queue.ring();
        queue
            .poll(|completion| {
                free.push(completion.buffer.expect("buffer back"));
                completed += 1;
            })
            .expect("poll");
    }
    start.elapsed()
}

fn round_trip(c: &mut Criterion) {
    let sim = SimController::open("sim,size=64M,spin=1s").expect("simulator");
    let controller = Controller::open(sim, ControllerOptions::default()).expect("bring-up");
    let mut group = c.benchmark_group("read_4k_round_trip");
    group.throughput(Throughput::Elements(1));
    for (qid, depth) in [(1u16, 1usize), (2, 32)] {
        let mut queue = IoQueuePair::create(&controller, qid, 64, None).expect("queue");
        let pool = controller.pool().clone();
        group.bench_function(format!("qd{depth}"), |b| {
            b.iter_custom(|ios| run(&mut queue, &pool, depth, ios))
        });
    }
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
