//! Namespace storage: RAM (an anonymous mapping, lazily populated by the
//! kernel, which survives controller resets) or a file (which survives
//! restarts too).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{MmapRegion, VolatileMemory, VolatileSlice};

use crate::nvme::{GenericStatus, MediaStatus, StatusCode};

use super::SimError;

/// Zeros for writing holes when a file system cannot punch them.
static ZEROS: [u8; 64 << 10] = [0; 64 << 10];

enum Backing {
    Ram(MmapRegion<()>),
    File {
        file: File,
        /// Bounce buffer between guest memory and the file.
        scratch: Vec<u8>,
    },
}

/// One namespace: `blocks` logical blocks of `1 << lba_shift` bytes.
pub(crate) struct Namespace {
    blocks: u64,
    lba_shift: u32,
    backing: Backing,
}

impl Namespace {
    /// A RAM namespace of `size` bytes.
    pub(crate) fn ram(size: u64, lba_size: u32) -> Result<Self, SimError> {
        let len = usize::try_from(size).map_err(|_| SimError::Memory {
            what: "namespace".to_owned(),
            reason: format!("{size} bytes do not fit the address space"),
        })?;
        let region = MmapRegion::<()>::new(len).map_err(|e| SimError::Memory {
            what: format!("a {size}-byte RAM namespace"),
            reason: e.to_string(),
        })?;
        Ok(Namespace {
            blocks: size >> lba_size.trailing_zeros(),
            lba_shift: lba_size.trailing_zeros(),
            backing: Backing::Ram(region),
        })
    }

    /// A namespace backed by `path`, created or extended to `size` bytes
    /// (never truncated: a larger file keeps its tail).
    pub(crate) fn file(path: &Path, size: u64, lba_size: u32) -> Result<Self, SimError> {
        let io = |what: &str, source| SimError::Io {
            what: format!("{what} namespace file {}", path.display()),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io("opening", e))?;
        let current = file.metadata().map_err(|e| io("inspecting", e))?.len();
        if current < size {
            file.set_len(size).map_err(|e| io("extending", e))?;
        }
        Ok(Namespace {
            blocks: size >> lba_size.trailing_zeros(),
            lba_shift: lba_size.trailing_zeros(),
            backing: Backing::File {
                file,
                scratch: Vec::new(),
            },
        })
    }

    /// Size in logical blocks.
    pub(crate) fn blocks(&self) -> u64 {
        self.blocks
    }

    /// log2 of the logical block size.
    pub(crate) fn lba_shift(&self) -> u32 {
        self.lba_shift
    }

    /// Byte offset of the block range `slba..slba + nlb`, or LBA Out of
    /// Range if any of it lies outside the namespace.
    pub(crate) fn byte_range(&self, slba: u64, nlb: u64) -> Result<(u64, u64), StatusCode> {
        match slba.checked_add(nlb) {
            Some(end) if end <= self.blocks => Ok((slba << self.lba_shift, nlb << self.lba_shift)),
            _ => Err(GenericStatus::LbaOutOfRange.into()),
        }
    }

    /// Copies namespace bytes at `offset` into `dst` (guest memory).
    pub(crate) fn read_into<B: BitmapSlice>(
        &mut self,
        offset: u64,
        dst: VolatileSlice<B>,
    ) -> Result<(), StatusCode> {
        let len = dst.len();
        match &mut self.backing {
            Backing::Ram(region) => {
                let src = ram_slice(region, offset, len)?;
                src.copy_to_volatile_slice(dst);
            }
            Backing::File { file, scratch } => {
                scratch.resize(len, 0);
                file.read_exact_at(scratch, offset).map_err(|e| {
                    tracing::warn!(offset, len, error = %e, "simulated namespace: file read failed");
                    StatusCode::Media(MediaStatus::UnrecoveredReadError)
                })?;
                dst.copy_from(scratch.as_slice());
            }
        }
        Ok(())
    }

    /// Copies `src` (guest memory) into the namespace at `offset`.
    pub(crate) fn write_from<B: BitmapSlice>(
        &mut self,
        offset: u64,
        src: VolatileSlice<B>,
    ) -> Result<(), StatusCode> {
        let len = src.len();
        match &mut self.backing {
            Backing::Ram(region) => {
                let dst = ram_slice(region, offset, len)?;
                src.copy_to_volatile_slice(dst);
            }
            Backing::File { file, scratch } => {
                scratch.resize(len, 0);
                src.copy_to(scratch.as_mut_slice());
                file.write_all_at(scratch, offset).map_err(|e| {
                    tracing::warn!(offset, len, error = %e, "simulated namespace: file write failed");
                    StatusCode::Media(MediaStatus::WriteFault)
                })?;
            }
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read back as zeros, releasing the
    /// storage where possible (deallocate / Write Zeroes).
    pub(crate) fn zero(&mut self, offset: u64, len: u64) -> Result<(), StatusCode> {
        if len == 0 {
            return Ok(());
        }
        match &mut self.backing {
            Backing::Ram(region) => {
                let start = usize::try_from(offset).map_err(|_| internal())?;
                let len = usize::try_from(len).map_err(|_| internal())?;
                let end = start
                    .checked_add(len)
                    .filter(|&e| e <= region.size())
                    .ok_or_else(internal)?;
                // Whole pages go back to the kernel, which refills them with
                // zeros on the next touch; the partial pages at either end
                // are cleared by hand.
                let page = 4096;
                let first = start.next_multiple_of(page);
                let last = end / page * page;
                if first < last {
                    // SAFETY: `first..last` lies inside the private anonymous
                    // mapping owned by `region` (checked against its size
                    // above) and is page-aligned. MADV_DONTNEED on such a
                    // mapping only replaces those pages with zero-fill-on-
                    // demand pages; no Rust reference points into the
                    // namespace (all access goes through volatile slices on
                    // this thread), so nothing observes the change but the
                    // intended reads of zeros.
                    let rc = unsafe {
                        libc::madvise(
                            region.as_ptr().add(first).cast(),
                            last - first,
                            libc::MADV_DONTNEED,
                        )
                    };
                    if rc != 0 {
                        fill_zeros(region, first, last - first)?;
                    }
                    fill_zeros(region, start, first - start)?;
                    fill_zeros(region, last, end - last)?;
                } else {
                    fill_zeros(region, start, len)?;
                }
            }
            Backing::File { file, .. } => {
                let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
                    return Err(internal());
                };
                // SAFETY: fallocate only reads its integer arguments; the
                // descriptor is owned by `file`, open for writing.
                let rc = unsafe {
                    libc::fallocate(
                        file.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off,
                        l,
                    )
                };
                if rc != 0 {
                    // No hole punching on this file system: write zeros.
                    let mut done = 0u64;
                    while done < len {
                        let n = (len - done).min(ZEROS.len() as u64) as usize;
                        file.write_all_at(&ZEROS[..n], offset + done).map_err(|e| {
                            tracing::warn!(offset, len, error = %e, "simulated namespace: zeroing failed");
                            StatusCode::Media(MediaStatus::WriteFault)
                        })?;
                        done += n as u64;
                    }
                }
            }
        }
        Ok(())
    }

    /// Makes written data durable (the volatile write cache flush).
    pub(crate) fn flush(&mut self) -> Result<(), StatusCode> {
        if let Backing::File { file, .. } = &self.backing {
            file.sync_data().map_err(|e| {
                tracing::warn!(error = %e, "simulated namespace: flush failed");
                StatusCode::Media(MediaStatus::WriteFault)
            })?;
        }
        Ok(())
    }
}

fn internal() -> StatusCode {
    GenericStatus::InternalError.into()
}

fn ram_slice(
    region: &MmapRegion<()>,
    offset: u64,
    len: usize,
) -> Result<VolatileSlice<'_, ()>, StatusCode> {
    let offset = usize::try_from(offset).map_err(|_| internal())?;
    region.get_slice(offset, len).map_err(|_| internal())
}

fn fill_zeros(region: &MmapRegion<()>, start: usize, len: usize) -> Result<(), StatusCode> {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(ZEROS.len());
        ram_slice(region, (start + done) as u64, n)?.copy_from(&ZEROS[..n]);
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(ns: &mut Namespace) {
        let mut data = vec![0u8; 3 * 4096];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i % 251) as u8 + 1;
        }
        ns.write_from(4096, VolatileSlice::from(&mut data[..]))
            .unwrap();
        let mut back = vec![0u8; 3 * 4096];
        ns.read_into(4096, VolatileSlice::from(&mut back[..]))
            .unwrap();
        assert_eq!(back, data);
        // Zero a range with partial pages at both ends.
        ns.zero(4096 + 100, 2 * 4096).unwrap();
        ns.read_into(4096, VolatileSlice::from(&mut back[..]))
            .unwrap();
        assert_eq!(&back[..100], &data[..100]);
        assert!(back[100..100 + 2 * 4096].iter().all(|&b| b == 0));
        assert_eq!(&back[100 + 2 * 4096..], &data[100 + 2 * 4096..]);
        ns.flush().unwrap();
    }

    #[test]
    fn ram() {
        let mut ns = Namespace::ram(1 << 20, 4096).unwrap();
        assert_eq!(ns.blocks(), 256);
        assert_eq!(ns.byte_range(255, 1), Ok((255 * 4096, 4096)));
        assert!(ns.byte_range(255, 2).is_err());
        assert!(ns.byte_range(u64::MAX, 2).is_err());
        roundtrip(&mut ns);
    }

    #[test]
    fn file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.img");
        let mut ns = Namespace::file(&path, 1 << 20, 512).unwrap();
        assert_eq!(ns.blocks(), 2048);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 20);
        roundtrip(&mut ns);
    }
}
