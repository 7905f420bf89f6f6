//! Where the next I/O goes and which way: sequential or random offsets
//! (with fio's random map — every block once per pass — unless
//! `norandommap`), and the read/write mix.

use crate::engine::Op;
use crate::options::Rw;

/// splitmix64: small, fast, and good enough for offsets and payloads.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// A random permutation of `0..n` without a table: a bijection on the
/// enclosing power of two, cycle-walked back into range.
#[derive(Debug, Clone)]
struct Permutation {
    n: u64,
    bits: u32,
    mask: u64,
    keys: [u64; 4],
    next: u64,
}

impl Permutation {
    fn new(n: u64, rng: &mut Rng) -> Permutation {
        let bits = (64 - n.saturating_sub(1).leading_zeros()).max(1);
        let mask = if bits == 64 {
            u64::MAX
        } else {
            (1 << bits) - 1
        };
        Permutation {
            n,
            bits,
            mask,
            keys: [
                rng.next_u64() | 1,
                rng.next_u64(),
                rng.next_u64() | 1,
                rng.next_u64(),
            ],
            next: 0,
        }
    }

    /// A bijection on `0..=mask`: odd multiplications, additions and
    /// xor-shifts, each invertible modulo 2^bits.
    fn mix(&self, mut x: u64) -> u64 {
        let shift = (self.bits / 2).max(1);
        x = (x.wrapping_mul(self.keys[0]).wrapping_add(self.keys[1])) & self.mask;
        x ^= x >> shift;
        x = (x.wrapping_mul(self.keys[2]).wrapping_add(self.keys[3])) & self.mask;
        x ^= x >> shift;
        x
    }

    /// The next element, or `None` when the pass is complete.
    fn next(&mut self) -> Option<u64> {
        if self.next >= self.n {
            return None;
        }
        let mut x = self.mix(self.next);
        while x >= self.n {
            x = self.mix(x);
        }
        self.next += 1;
        Some(x)
    }
}

/// The I/O pattern of one job thread over `blocks` blocks.
#[derive(Debug, Clone)]
pub struct Pattern {
    rw: Rw,
    rwmixread: u32,
    blocks: u64,
    norandommap: bool,
    offsets: Rng,
    mix: Rng,
    map: Option<Permutation>,
    seq: [u64; 2],
}

impl Pattern {
    /// The pattern for `rw` over `blocks` blocks, seeded by `seed`.
    pub fn new(rw: Rw, rwmixread: u32, blocks: u64, norandommap: bool, seed: u64) -> Pattern {
        let mut offsets = Rng::new(seed);
        let mix = Rng::new(seed ^ 0x5bd1_e995_1234_5678);
        let map = (rw.random() && !norandommap).then(|| Permutation::new(blocks, &mut offsets));
        Pattern {
            rw,
            rwmixread,
            blocks,
            norandommap,
            offsets,
            mix,
            map,
            seq: [0; 2],
        }
    }

    /// The direction of the next I/O.
    pub fn next_op(&mut self) -> Op {
        match self.rw {
            Rw::Read | Rw::RandRead => Op::Read,
            Rw::Write | Rw::RandWrite => Op::Write,
            Rw::ReadWrite | Rw::RandRw => {
                if self.mix.below(100) < u64::from(self.rwmixread) {
                    Op::Read
                } else {
                    Op::Write
                }
            }
        }
    }

    /// The block of the next I/O in direction `op`. Sequential I/O wraps at
    /// the end of the region; the random map starts a new pass (a new
    /// permutation) when every block was visited.
    pub fn next_block(&mut self, op: Op) -> u64 {
        if !self.rw.random() {
            let position = &mut self.seq[op.index()];
            let block = *position;
            *position = (*position + 1) % self.blocks;
            return block;
        }
        if self.norandommap {
            return self.offsets.below(self.blocks);
        }
        let map = self.map.as_mut().expect("random map exists for random I/O");
        match map.next() {
            Some(block) => block,
            None => {
                *map = Permutation::new(self.blocks, &mut self.offsets);
                map.next()
                    .expect("a fresh permutation of at least one block")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_map_visits_every_block_once_per_pass() {
        for n in [1u64, 2, 3, 7, 64, 1000, 4097] {
            let mut pattern = Pattern::new(Rw::RandRead, 50, n, false, 42);
            let mut seen = vec![false; n as usize];
            for _ in 0..n {
                let block = pattern.next_block(Op::Read);
                assert!(
                    !seen[block as usize],
                    "block {block} twice in a pass of {n}"
                );
                seen[block as usize] = true;
            }
            // The next pass starts over.
            assert!(pattern.next_block(Op::Read) < n);
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Pattern::new(Rw::RandRw, 70, 1 << 20, false, 7);
        let mut b = Pattern::new(Rw::RandRw, 70, 1 << 20, false, 7);
        let mut reads = 0;
        for _ in 0..10_000 {
            let op = a.next_op();
            assert_eq!(op, b.next_op());
            assert_eq!(a.next_block(op), b.next_block(op));
            reads += usize::from(op == Op::Read);
        }
        assert!(
            (6_500..7_500).contains(&reads),
            "{reads} reads of 10000 at rwmixread=70"
        );
    }

    #[test]
    fn sequential_wraps() {
        let mut pattern = Pattern::new(Rw::Read, 50, 3, false, 1);
        let blocks: Vec<u64> = (0..5).map(|_| pattern.next_block(Op::Read)).collect();
        assert_eq!(blocks, [0, 1, 2, 0, 1]);
    }
}
