//! A bounded single-producer single-consumer ring: how a completion thread
//! hands completions to one submitting CPU (and, when SQs are shared, how a
//! CPU hands commands to the queue's thread) without locks, allocation or
//! system calls.
//!
//! The producer and consumer halves are separate types, so "single" is
//! enforced by ownership. Model-checked with loom (`RUSTFLAGS="--cfg loom"
//! cargo test -p isonvme --lib spsc`).

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

#[cfg(loom)]
use loom::cell::UnsafeCell;
#[cfg(loom)]
use loom::sync::atomic::{AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::Arc;
#[cfg(not(loom))]
use std::sync::atomic::{AtomicUsize, Ordering};
#[cfg(not(loom))]
use std::sync::Arc;

/// `UnsafeCell` with loom's closure API, so one code path serves both.
#[cfg(not(loom))]
struct UnsafeCell<T>(std::cell::UnsafeCell<T>);

#[cfg(not(loom))]
impl<T> UnsafeCell<T> {
    fn new(value: T) -> Self {
        UnsafeCell(std::cell::UnsafeCell::new(value))
    }
    fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }
    fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

struct Shared<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    mask: usize,
    /// Next slot the consumer reads; written only by the consumer.
    head: CachePadded<AtomicUsize>,
    /// Next slot the producer writes; written only by the producer.
    tail: CachePadded<AtomicUsize>,
}

// SAFETY: a slot is accessed by the producer only while it is outside
// [head, tail) and by the consumer only while inside; the acquire/release
// pairs on head and tail order those accesses, so `T: Send` suffices.
unsafe impl<T: Send> Sync for Shared<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Shared<T> {}

/// The writing half.
pub struct Producer<T> {
    shared: Arc<Shared<T>>,
    /// Cached copy of `head`, refreshed only when the ring looks full.
    head_cache: usize,
    tail: usize,
}

/// The reading half.
pub struct Consumer<T> {
    shared: Arc<Shared<T>>,
    /// Cached copy of `tail`, refreshed only when the ring looks empty.
    tail_cache: usize,
    head: usize,
}

/// A ring of at least `capacity` entries (rounded up to a power of two).
pub fn ring<T: Copy + Send>(capacity: usize) -> (Producer<T>, Consumer<T>) {
    let size = capacity.max(2).next_power_of_two();
    let slots = (0..size)
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let shared = Arc::new(Shared {
        slots,
        mask: size - 1,
        head: CachePadded::new(AtomicUsize::new(0)),
        tail: CachePadded::new(AtomicUsize::new(0)),
    });
    (
        Producer {
            shared: Arc::clone(&shared),
            head_cache: 0,
            tail: 0,
        },
        Consumer {
            shared,
            tail_cache: 0,
            head: 0,
        },
    )
}

impl<T: Copy + Send> Producer<T> {
    /// Appends `value`; gives it back when the ring is full.
    pub fn push(&mut self, value: T) -> Result<(), T> {
        let size = self.shared.mask + 1;
        if self.tail.wrapping_sub(self.head_cache) == size {
            // Acquire: the consumer finished reading the slots it released.
            self.head_cache = self.shared.head.load(Ordering::Acquire);
            if self.tail.wrapping_sub(self.head_cache) == size {
                return Err(value);
            }
        }
        let slot = &self.shared.slots[self.tail & self.shared.mask];
        // SAFETY: the slot is outside [head, tail), so the consumer does not
        // touch it until the release store below publishes it.
        slot.with_mut(|cell| unsafe { (*cell).write(value) });
        self.tail = self.tail.wrapping_add(1);
        // Release: the slot's contents are visible before the new tail.
        self.shared.tail.store(self.tail, Ordering::Release);
        Ok(())
    }

    /// Entries that could be pushed without the ring being full, as last
    /// seen.
    pub fn capacity(&self) -> usize {
        self.shared.mask + 1
    }
}

impl<T: Copy + Send> Consumer<T> {
    /// Takes the oldest entry, if any.
    pub fn pop(&mut self) -> Option<T> {
        if self.head == self.tail_cache {
            // Acquire: pairs with the producer's release of the tail.
            self.tail_cache = self.shared.tail.load(Ordering::Acquire);
            if self.head == self.tail_cache {
                return None;
            }
        }
        let slot = &self.shared.slots[self.head & self.shared.mask];
        // SAFETY: the slot is inside [head, tail): the producer wrote it
        // (ordered by the acquire above) and will not write it again until
        // the release store below hands it back.
        let value = slot.with(|cell| unsafe { (*cell).assume_init() });
        self.head = self.head.wrapping_add(1);
        // Release: we are done reading the slot before the producer reuses it.
        self.shared.head.store(self.head, Ordering::Release);
        Some(value)
    }

    /// Whether nothing is waiting (as of now).
    pub fn is_empty(&self) -> bool {
        self.head == self.shared.tail.load(Ordering::Acquire)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_full_and_empty() {
        let (mut tx, mut rx) = ring::<u32>(3);
        assert_eq!(tx.capacity(), 4);
        assert_eq!(rx.pop(), None);
        for i in 0..4 {
            tx.push(i).unwrap();
        }
        assert_eq!(tx.push(9), Err(9));
        assert_eq!(rx.pop(), Some(0));
        tx.push(4).unwrap();
        assert_eq!(
            (1..5).map(|_| rx.pop().unwrap()).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(rx.is_empty());
    }

    #[test]
    fn threads_see_every_value_in_order() {
        let (mut tx, mut rx) = ring::<u64>(64);
        let producer = std::thread::spawn(move || {
            for i in 0..200_000u64 {
                let mut value = i;
                while let Err(back) = tx.push(value) {
                    value = back;
                    std::hint::spin_loop();
                }
            }
        });
        let mut expected = 0;
        while expected < 200_000 {
            if let Some(value) = rx.pop() {
                assert_eq!(value, expected);
                expected += 1;
            }
        }
        producer.join().unwrap();
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;

    /// Every interleaving of a producer pushing 3 values through a ring of
    /// 2 while the consumer pops: values arrive once, in order, and a full
    /// ring refuses instead of overwriting.
    #[test]
    fn ring_hand_off_is_race_free() {
        loom::model(|| {
            let (mut tx, mut rx) = ring::<u32>(2);
            let producer = loom::thread::spawn(move || {
                let mut pushed = 0;
                for value in 1..=3 {
                    if tx.push(value).is_ok() {
                        pushed += 1;
                    } else {
                        loom::thread::yield_now();
                        if tx.push(value).is_ok() {
                            pushed += 1;
                        }
                    }
                }
                pushed
            });
            let mut seen = Vec::new();
            for _ in 0..3 {
                if let Some(value) = rx.pop() {
                    seen.push(value);
                }
                loom::thread::yield_now();
            }
            let pushed = producer.join().unwrap();
            while let Some(value) = rx.pop() {
                seen.push(value);
            }
            assert_eq!(seen.len(), pushed);
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        });
    }

    /// The SQ-space hand-back: the completion thread publishes a
    /// completion carrying the new SQ head; once the submitter sees the
    /// completion, the SQ entry it frees is really consumed (the head it
    /// reads is the one written, never an older one).
    #[test]
    fn sq_head_travels_with_the_completion() {
        loom::model(|| {
            #[derive(Clone, Copy)]
            struct Record {
                cid: u16,
                sq_head: u16,
            }
            let (mut tx, mut rx) = ring::<Record>(2);
            let reaper = loom::thread::spawn(move || {
                for cid in 0..2u16 {
                    // The device consumed entry `cid`: the head moves past it.
                    tx.push(Record {
                        cid,
                        sq_head: cid + 1,
                    })
                    .ok()
                    .unwrap();
                }
            });
            let mut last_head = 0;
            let mut got = 0;
            while got < 2 {
                if let Some(record) = rx.pop() {
                    assert_eq!(record.cid, got);
                    assert!(record.sq_head > last_head, "SQ head went backwards");
                    last_head = record.sq_head;
                    got += 1;
                } else {
                    loom::thread::yield_now();
                }
            }
            reaper.join().unwrap();
            assert_eq!(last_head, 2);
        });
    }
}
