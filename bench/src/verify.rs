//! `verify=crc32c`: every written block carries a header (magic, length,
//! its own offset, the payload seed) and a CRC-32C over the whole block;
//! reading it back checks all of them and names the offset of a mismatch,
//! in fio's words.

use crate::pattern::Rng;

/// The header's magic ("ISOV").
pub const MAGIC: u32 = 0x564f_5349;
/// Header bytes.
pub const HEADER: usize = 32;

/// Fills `block` (written at byte `offset`) with a verifiable payload.
pub fn fill(block: &mut [u8], offset: u64, seed: u64) {
    let len = block.len();
    assert!(
        len >= HEADER,
        "verify needs blocks of at least {HEADER} bytes"
    );
    let mut rng = Rng::new(seed ^ offset.rotate_left(17));
    for chunk in block[HEADER..].chunks_mut(8) {
        let bytes = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    block[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    block[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    block[8..16].copy_from_slice(&offset.to_le_bytes());
    block[16..24].copy_from_slice(&seed.to_le_bytes());
    block[24..32].fill(0);
    let crc = checksum(block);
    block[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// CRC-32C of the block with the CRC field (bytes 24..28) taken as zero.
fn checksum(block: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&block[..24]);
    let crc = crc32c::crc32c_append(crc, &[0; 4]);
    crc32c::crc32c_append(crc, &block[28..])
}

fn word32(block: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(block[at..at + 4].try_into().expect("4 bytes"))
}

fn word64(block: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(block[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks a block read from byte `offset` of `file`; the error is fio's
/// message for the mismatch.
pub fn check(block: &[u8], offset: u64, file: &str) -> Result<(), String> {
    let len = block.len();
    let magic = word32(block, 0);
    if magic != MAGIC {
        return Err(format!(
            "verify: bad magic header {magic:x}, wanted {MAGIC:x} at file {file} offset {offset}, length {len}"
        ));
    }
    let header_len = word32(block, 4) as usize;
    if header_len != len {
        return Err(format!(
            "verify: bad header length {header_len}, wanted {len} at file {file} offset {offset}, length {len}"
        ));
    }
    let header_offset = word64(block, 8);
    if header_offset != offset {
        return Err(format!(
            "verify: bad header offset {header_offset}, wanted {offset} at file {file} offset {offset}, length {len} (data of another block)"
        ));
    }
    let expected = word32(block, 24);
    let received = checksum(block);
    if expected != received {
        return Err(format!(
            "crc32c: verify failed at file {file} offset {offset}, length {len}\n    Expected CRC: {expected:08x}\n    Received CRC: {received:08x}"
        ));
    }
    Ok(())
}

/// Which blocks of the region hold verifiable data (written by this job).
#[derive(Debug, Clone)]
pub struct WrittenMap {
    bits: Vec<u64>,
    count: u64,
}

impl WrittenMap {
    /// A map of `blocks` blocks, none written.
    pub fn new(blocks: u64) -> WrittenMap {
        WrittenMap {
            bits: vec![0; blocks.div_ceil(64) as usize],
            count: 0,
        }
    }

    /// Marks `block` written.
    pub fn set(&mut self, block: u64) {
        let word = &mut self.bits[(block / 64) as usize];
        let bit = 1u64 << (block % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.count += 1;
        }
    }

    /// Whether `block` was written.
    pub fn get(&self, block: u64) -> bool {
        self.bits[(block / 64) as usize] & (1u64 << (block % 64)) != 0
    }

    /// Blocks written.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The written blocks from `from` on, in order.
    pub fn next_from(&self, from: u64) -> Option<u64> {
        let mut word_index = (from / 64) as usize;
        let mut word = *self.bits.get(word_index)? & (u64::MAX << (from % 64));
        loop {
            if word != 0 {
                return Some(word_index as u64 * 64 + u64::from(word.trailing_zeros()));
            }
            word_index += 1;
            word = *self.bits.get(word_index)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let mut block = vec![0u8; 4096];
        fill(&mut block, 8192, 99);
        check(&block, 8192, "f").unwrap();
        let misplaced = check(&block, 4096, "f").unwrap_err();
        assert!(misplaced.contains("offset 4096"), "{misplaced}");
        block[1000] ^= 1;
        let error = check(&block, 8192, "f").unwrap_err();
        assert!(
            error.contains("crc32c: verify failed at file f offset 8192"),
            "{error}"
        );
        let zero = check(&[0u8; 512], 0, "f").unwrap_err();
        assert!(zero.contains("bad magic"), "{zero}");
    }

    #[test]
    fn written_map() {
        let mut map = WrittenMap::new(200);
        for block in [3, 64, 65, 199] {
            map.set(block);
        }
        map.set(3);
        assert_eq!(map.count(), 4);
        assert!(map.get(64) && !map.get(4));
        let mut found = Vec::new();
        let mut from = 0;
        while let Some(block) = map.next_from(from) {
            found.push(block);
            from = block + 1;
        }
        assert_eq!(found, [3, 64, 65, 199]);
    }
}
