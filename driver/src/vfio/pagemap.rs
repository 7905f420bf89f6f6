//! Physical addresses of DMA memory, from `/proc/self/pagemap`, for VFIO's
//! no-IOMMU mode: with no IOMMU to translate, the device must be given the
//! physical address of every buffer.
//!
//! `/proc/<pid>/pagemap` holds one little-endian 64-bit entry per 4 KiB
//! virtual page (Documentation/admin-guide/mm/pagemap.rst): bit 63 says the
//! page is present, bit 62 that it is swapped, bits 0–54 are the page frame
//! number. Since Linux 4.2 the PFN reads as 0 unless the reader has
//! CAP_SYS_ADMIN. A 2 MiB hugepage is physically contiguous, and its 512
//! entries give consecutive PFNs; that is checked rather than assumed.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The granule pagemap describes memory in.
pub(crate) const PAGE_SIZE: u64 = 4096;

const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const PFN_MASK: u64 = (1 << 55) - 1;

/// One pagemap entry, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PagemapEntry {
    /// Nothing is mapped there yet (never touched).
    NotPresent,
    /// The page is in swap.
    Swapped,
    /// The page is in memory at frame `pfn`; 0 means the kernel hid the
    /// frame number from this reader.
    Present {
        /// The page frame number.
        pfn: u64,
    },
}

impl PagemapEntry {
    /// Decodes a raw entry.
    pub(crate) fn parse(raw: u64) -> PagemapEntry {
        if raw & PRESENT != 0 {
            PagemapEntry::Present {
                pfn: raw & PFN_MASK,
            }
        } else if raw & SWAPPED != 0 {
            PagemapEntry::Swapped
        } else {
            PagemapEntry::NotPresent
        }
    }
}

/// Why a physical address could not be found.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PagemapError {
    /// The pagemap file could not be opened.
    #[error(
        "opening {} failed ({source}): no-IOMMU mode gives the device physical addresses and \
         reads them there; is procfs mounted?", path.display()
    )]
    Open {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// An entry could not be read.
    #[error("reading the entry of virtual address {vaddr:#x} in {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The virtual address looked up.
        vaddr: u64,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The page is not in memory.
    #[error(
        "the DMA page at virtual address {vaddr:#x} is {state} although it was populated and \
         locked: its physical address cannot be handed to the device"
    )]
    NotResident {
        /// The virtual address looked up.
        vaddr: u64,
        /// "not present" or "swapped out".
        state: &'static str,
    },
    /// The kernel hides frame numbers from this process.
    #[error(
        "{} shows the DMA page at {vaddr:#x} with page frame number 0: the kernel hides \
         physical addresses from processes without CAP_SYS_ADMIN, and no-IOMMU mode needs \
         them. Run as root (no-IOMMU mode needs root anyway: CAP_SYS_RAWIO for the VFIO \
         group)", path.display()
    )]
    PfnHidden {
        /// The file.
        path: PathBuf,
        /// The virtual address looked up.
        vaddr: u64,
    },
    /// Memory that has to be physically contiguous is not.
    #[error(
        "the DMA memory at virtual address {vaddr:#x} is not physically contiguous: byte \
         {offset:#x} of it is at physical address {found:#x}, not {expected:#x}. In no-IOMMU \
         mode one DMA region must be one physically contiguous range (isonvme's DMA pool maps \
         one 2 MiB hugepage at a time, which always is)"
    )]
    NotContiguous {
        /// The start of the range.
        vaddr: u64,
        /// Where in the range contiguity broke.
        offset: u64,
        /// The physical address found there.
        found: u64,
        /// The physical address contiguity required.
        expected: u64,
    },
    /// A hugepage is not where a hugepage has to be.
    #[error(
        "the 2 MiB hugepage at virtual address {vaddr:#x} starts at physical address \
         {physical:#x}, which is not 2 MiB-aligned: it is not a 2 MiB hugepage (is the memory \
         really from MAP_HUGETLB?)"
    )]
    Misaligned {
        /// The virtual address looked up.
        vaddr: u64,
        /// Its physical address.
        physical: u64,
    },
}

/// This process's pagemap (`<proc_root>/self/pagemap`).
#[derive(Debug)]
pub(crate) struct Pagemap {
    file: File,
    path: PathBuf,
}

impl Pagemap {
    /// Opens `<proc_root>/self/pagemap`.
    pub(crate) fn open(proc_root: &Path) -> Result<Pagemap, PagemapError> {
        let path = proc_root.join("self/pagemap");
        let file = File::open(&path).map_err(|source| PagemapError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Pagemap { file, path })
    }

    /// The entries of the `count` 4 KiB pages from the one holding `vaddr`
    /// on, in one read.
    pub(crate) fn entries(
        &self,
        vaddr: u64,
        count: u64,
    ) -> Result<Vec<PagemapEntry>, PagemapError> {
        let read_error = |source| PagemapError::Read {
            path: self.path.clone(),
            vaddr,
            source,
        };
        let bytes = count
            .checked_mul(8)
            .and_then(|bytes| usize::try_from(bytes).ok())
            .ok_or_else(|| read_error(io::Error::from(io::ErrorKind::InvalidInput)))?;
        let mut raw = vec![0u8; bytes];
        self.file
            .read_exact_at(&mut raw, (vaddr / PAGE_SIZE) * 8)
            .map_err(read_error)?;
        Ok(raw
            .chunks_exact(8)
            .map(|entry| {
                let mut word = [0u8; 8];
                word.copy_from_slice(entry);
                PagemapEntry::parse(u64::from_le_bytes(word))
            })
            .collect())
    }

    /// The physical address of the byte at `vaddr`.
    #[cfg(test)]
    pub(crate) fn physical(&self, vaddr: u64) -> Result<u64, PagemapError> {
        let entry = self.entries(vaddr, 1)?;
        self.resolve(entry[0], vaddr)
    }

    /// The physical address of `vaddr` given its page's entry.
    fn resolve(&self, entry: PagemapEntry, vaddr: u64) -> Result<u64, PagemapError> {
        match entry {
            PagemapEntry::Present { pfn: 0 } => Err(PagemapError::PfnHidden {
                path: self.path.clone(),
                vaddr,
            }),
            PagemapEntry::Present { pfn } => Ok(pfn * PAGE_SIZE + vaddr % PAGE_SIZE),
            PagemapEntry::NotPresent => Err(PagemapError::NotResident {
                vaddr,
                state: "not present",
            }),
            PagemapEntry::Swapped => Err(PagemapError::NotResident {
                vaddr,
                state: "swapped out",
            }),
        }
    }

    /// The physical address of `len` bytes at `vaddr` (page-aligned),
    /// made of hugepages of `hugepage` bytes, which must form one
    /// physically contiguous range. Every 4 KiB page is checked: a hugepage
    /// is contiguous by construction, but a wrong assumption here would let
    /// the device write to someone else's memory, so it is verified (one
    /// 4 KiB read per 2 MiB, once per mapping).
    pub(crate) fn contiguous_range(
        &self,
        vaddr: u64,
        len: u64,
        hugepage: u64,
    ) -> Result<u64, PagemapError> {
        let entries = self.entries(vaddr, len.div_ceil(PAGE_SIZE).max(1))?;
        let base = self.resolve(entries[0], vaddr)?;
        if base % hugepage != 0 {
            return Err(PagemapError::Misaligned {
                vaddr,
                physical: base,
            });
        }
        for (offset, entry) in (0..).step_by(PAGE_SIZE as usize).zip(entries).skip(1) {
            let found = self.resolve(entry, vaddr + offset)?;
            let expected = base + offset;
            if found != expected {
                return Err(PagemapError::NotContiguous {
                    vaddr,
                    offset,
                    found,
                    expected,
                });
            }
        }
        Ok(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB2: u64 = 2 << 20;

    /// A fake `<root>/self/pagemap` with the given raw entries at the
    /// given page numbers.
    fn fake_pagemap(entries: &[(u64, u64)]) -> (tempfile::TempDir, Pagemap) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        let file = File::create(dir.path().join("self/pagemap")).unwrap();
        for &(page, raw) in entries {
            file.write_all_at(&raw.to_le_bytes(), page * 8).unwrap();
        }
        let pagemap = Pagemap::open(dir.path()).unwrap();
        (dir, pagemap)
    }

    #[test]
    fn entries_are_decoded() {
        assert_eq!(PagemapEntry::parse(0), PagemapEntry::NotPresent);
        assert_eq!(PagemapEntry::parse(SWAPPED | 0x1234), PagemapEntry::Swapped);
        assert_eq!(
            PagemapEntry::parse(PRESENT | 0x1234),
            PagemapEntry::Present { pfn: 0x1234 }
        );
        // Flag bits 55–61 (soft-dirty, exclusive, file/shared...) are not
        // part of the frame number.
        let flags = (1 << 55) | (1 << 56) | (1 << 61);
        assert_eq!(
            PagemapEntry::parse(PRESENT | flags | PFN_MASK),
            PagemapEntry::Present { pfn: PFN_MASK }
        );
        assert_eq!(
            PagemapEntry::parse(PRESENT),
            PagemapEntry::Present { pfn: 0 }
        );
    }

    #[test]
    fn addresses_are_translated_with_their_offset() {
        let (_dir, pagemap) = fake_pagemap(&[(0x10, PRESENT | 0x8_0000), (0x11, 0)]);
        assert_eq!(pagemap.physical(0x10_123).unwrap(), 0x8000_0123);
        let error = pagemap.physical(0x11_000).unwrap_err();
        assert!(matches!(error, PagemapError::NotResident { .. }), "{error}");
        // Past the end of the (fake) file: a read error, not a panic.
        let error = pagemap.physical(0x100_000).unwrap_err();
        assert!(matches!(error, PagemapError::Read { .. }), "{error}");
    }

    #[test]
    fn a_hidden_pfn_names_the_capability() {
        let (_dir, pagemap) = fake_pagemap(&[(1, PRESENT)]);
        let text = pagemap.physical(0x1000).unwrap_err().to_string();
        assert!(text.contains("CAP_SYS_ADMIN"), "{text}");
        assert!(text.contains("Run as root"), "{text}");
        let (_dir, pagemap) = fake_pagemap(&[(1, SWAPPED)]);
        let text = pagemap.physical(0x1000).unwrap_err().to_string();
        assert!(text.contains("swapped out"), "{text}");
    }

    #[test]
    fn hugepages_must_be_aligned_and_contiguous() {
        let pages = MB2 / PAGE_SIZE;
        let vbase_page = 0x200; // virtual 2 MiB
        let pfn = 0x4_0000; // physical 1 GiB
        let contiguous: Vec<(u64, u64)> = (0..2 * pages)
            .map(|i| (vbase_page + i, PRESENT | (pfn + i)))
            .collect();
        let (_dir, pagemap) = fake_pagemap(&contiguous);
        let vaddr = vbase_page * PAGE_SIZE;
        assert_eq!(
            pagemap.contiguous_range(vaddr, MB2, MB2).unwrap(),
            pfn * PAGE_SIZE
        );
        assert_eq!(
            pagemap.contiguous_range(vaddr, 2 * MB2, MB2).unwrap(),
            pfn * PAGE_SIZE
        );

        // Two hugepages, each fine, but not next to each other.
        let mut split = contiguous.clone();
        for entry in &mut split[pages as usize..] {
            entry.1 += 4 * pages;
        }
        let (_dir, pagemap) = fake_pagemap(&split);
        assert!(pagemap.contiguous_range(vaddr, MB2, MB2).is_ok());
        let error = pagemap.contiguous_range(vaddr, 2 * MB2, MB2).unwrap_err();
        let PagemapError::NotContiguous { offset, .. } = error else {
            panic!("{error}");
        };
        assert_eq!(offset, MB2);

        // A "hugepage" whose first frame is not 2 MiB-aligned.
        let misaligned: Vec<(u64, u64)> = (0..pages)
            .map(|i| (vbase_page + i, PRESENT | (pfn + 1 + i)))
            .collect();
        let (_dir, pagemap) = fake_pagemap(&misaligned);
        let error = pagemap.contiguous_range(vaddr, MB2, MB2).unwrap_err();
        assert!(matches!(error, PagemapError::Misaligned { .. }), "{error}");

        // A hole in the middle.
        let mut holed = contiguous;
        holed[100].1 = 0;
        let (_dir, pagemap) = fake_pagemap(&holed);
        let error = pagemap.contiguous_range(vaddr, MB2, MB2).unwrap_err();
        assert!(matches!(error, PagemapError::NotResident { .. }), "{error}");
    }

    #[test]
    fn a_real_hugepage_is_one_aligned_contiguous_range() {
        // What no-IOMMU mode does with DMA memory, on this host's memory:
        // needs free 2 MiB hugepages and CAP_SYS_ADMIN, otherwise only the
        // failure is checked.
        let Ok(memory) = super::super::dma::hugepage_memory(MB2 as usize) else {
            return;
        };
        let pagemap = Pagemap::open(Path::new("/proc")).unwrap();
        match pagemap.contiguous_range(memory.as_ptr() as u64, MB2, MB2) {
            Ok(physical) => assert_eq!(physical % MB2, 0),
            Err(error) => assert!(matches!(error, PagemapError::PfnHidden { .. }), "{error}"),
        }
    }

    #[test]
    fn this_process_pagemap_reads() {
        // A touched page of this process is present; its frame number is
        // visible only with CAP_SYS_ADMIN, which the test may not have.
        let value = Box::new(42u64);
        let vaddr = std::ptr::addr_of!(*value) as u64;
        let pagemap = Pagemap::open(Path::new("/proc")).unwrap();
        assert!(matches!(
            pagemap.entries(vaddr, 1).unwrap()[..],
            [PagemapEntry::Present { .. }]
        ));
        match pagemap.physical(vaddr) {
            Ok(physical) => assert_eq!(physical % PAGE_SIZE, vaddr % PAGE_SIZE),
            Err(error) => assert!(matches!(error, PagemapError::PfnHidden { .. }), "{error}"),
        }
    }
}
