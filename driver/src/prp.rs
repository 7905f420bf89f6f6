//! Physical Region Page (PRP) entries: how a command tells the controller
//! where its data is.
//!
//! PRP1 points at the first byte (any dword-aligned offset); if the data
//! ends in the next page, PRP2 points at that page; otherwise PRP2 points at
//! a list of page addresses, and when a list page is not enough its last
//! entry points at the next list page (chaining).

use crate::dma::{DmaBuffer, DmaError, DmaPool, PAGE_SIZE};

/// Page addresses a 4 KiB list page holds.
const ENTRIES_PER_LIST: usize = PAGE_SIZE / 8;

/// A contiguous piece of a transfer in device address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Device address of the first byte.
    pub iova: u64,
    /// Length in bytes.
    pub len: usize,
}

/// PRP1 and PRP2 of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Prp {
    /// First data pointer.
    pub prp1: u64,
    /// Second page, or the first PRP list page, or 0.
    pub prp2: u64,
}

/// Why data could not be described with PRPs.
#[derive(Debug, thiserror::Error)]
pub enum PrpError {
    /// No data.
    #[error("a transfer of 0 bytes has no PRP")]
    Empty,
    /// The first byte is not dword aligned.
    #[error("the data starts at {0:#x}, which is not 4-byte aligned as PRP1 requires")]
    Unaligned(u64),
    /// A middle segment does not start or end on a page boundary.
    #[error("segment {index} ({iova:#x}+{len}) breaks the PRP rule that only the first segment may start and only the last may end inside a page")]
    NotPageContiguous {
        /// The segment's position.
        index: usize,
        /// Its address.
        iova: u64,
        /// Its length.
        len: usize,
    },
    /// No memory for list pages.
    #[error("cannot allocate a PRP list page: {0}")]
    Dma(#[from] DmaError),
}

/// List pages kept per command slot, reused from one command to the next so
/// the I/O path allocates nothing once warm.
#[derive(Default)]
pub struct PrpLists {
    pages: Vec<DmaBuffer>,
}

impl PrpLists {
    /// An empty set; pages are allocated on first need.
    pub fn new() -> Self {
        PrpLists::default()
    }

    /// Makes sure `count` list pages exist.
    pub fn reserve(&mut self, count: usize, pool: &DmaPool) -> Result<(), DmaError> {
        while self.pages.len() < count {
            self.pages.push(pool.alloc(PAGE_SIZE)?);
        }
        Ok(())
    }

    /// The number of list pages a transfer of `pages` data pages needs
    /// beyond PRP1 and PRP2.
    pub fn pages_needed(data_pages: usize) -> usize {
        // PRP1 covers the first page; one more page fits in PRP2 directly.
        let listed = data_pages.saturating_sub(1);
        if listed <= 1 {
            return 0;
        }
        // Every list page but the last gives one entry to the chain pointer.
        if listed <= ENTRIES_PER_LIST {
            1
        } else {
            1 + (listed - ENTRIES_PER_LIST).div_ceil(ENTRIES_PER_LIST - 1)
        }
    }
}

/// Checks the PRP shape rules and counts the data pages.
fn count_pages(segments: &[Segment]) -> Result<usize, PrpError> {
    let last = segments.len() - 1;
    let mut pages = 0;
    for (index, segment) in segments.iter().enumerate() {
        let start = segment.iova;
        let end = start + segment.len as u64;
        let starts_on_page = start % PAGE_SIZE as u64 == 0;
        let ends_on_page = end.is_multiple_of(PAGE_SIZE as u64);
        if (index > 0 && !starts_on_page) || (index < last && !ends_on_page) || segment.len == 0 {
            return Err(PrpError::NotPageContiguous {
                index,
                iova: segment.iova,
                len: segment.len,
            });
        }
        let first_page = start / PAGE_SIZE as u64;
        let last_page = (end - 1) / PAGE_SIZE as u64;
        pages += (last_page - first_page + 1) as usize;
    }
    Ok(pages)
}

/// The page addresses of a transfer after its first page (no allocation:
/// this runs on the I/O path).
fn later_pages(segments: &[Segment]) -> impl Iterator<Item = u64> + '_ {
    segments
        .iter()
        .flat_map(|segment| {
            let end = segment.iova + segment.len as u64;
            let first = segment.iova & !(PAGE_SIZE as u64 - 1);
            (first..end).step_by(PAGE_SIZE)
        })
        .skip(1)
}

/// Describes `segments` with PRP1/PRP2, writing list pages into `lists`
/// (allocating them from `pool` the first time they are needed).
pub fn build(segments: &[Segment], lists: &mut PrpLists, pool: &DmaPool) -> Result<Prp, PrpError> {
    let first = segments.first().ok_or(PrpError::Empty)?;
    if first.iova % 4 != 0 {
        return Err(PrpError::Unaligned(first.iova));
    }
    let data_pages = count_pages(segments)?;
    let prp1 = first.iova;
    let mut pages = later_pages(segments);
    match data_pages {
        1 => Ok(Prp { prp1, prp2: 0 }),
        2 => Ok(Prp {
            prp1,
            prp2: pages.next().unwrap_or(0),
        }),
        _ => {
            let needed = PrpLists::pages_needed(data_pages);
            lists.reserve(needed, pool)?;
            let mut remaining = data_pages - 1;
            for index in 0..needed {
                let is_last = index + 1 == needed;
                let next_list = if is_last {
                    0
                } else {
                    lists.pages[index + 1].iova()
                };
                let data_entries = if is_last {
                    remaining
                } else {
                    ENTRIES_PER_LIST - 1
                };
                let entries = lists.pages[index].as_mut_slice();
                for (slot, page) in pages.by_ref().take(data_entries).enumerate() {
                    entries[slot * 8..slot * 8 + 8].copy_from_slice(&page.to_le_bytes());
                }
                if !is_last {
                    let chain = (ENTRIES_PER_LIST - 1) * 8;
                    entries[chain..chain + 8].copy_from_slice(&next_list.to_le_bytes());
                }
                remaining -= data_entries;
            }
            Ok(Prp {
                prp1,
                prp2: lists.pages[0].iova(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_pages_needed() {
        assert_eq!(PrpLists::pages_needed(1), 0);
        assert_eq!(PrpLists::pages_needed(2), 0);
        assert_eq!(PrpLists::pages_needed(3), 1);
        // 1 + 512 pages: PRP1 plus one full list.
        assert_eq!(PrpLists::pages_needed(513), 1);
        // One more page forces a chain: 511 entries + pointer, then 2.
        assert_eq!(PrpLists::pages_needed(514), 2);
        assert_eq!(PrpLists::pages_needed(1 + 511 + 511 + 512), 3);
        assert_eq!(PrpLists::pages_needed(1 + 511 + 511 + 513), 4);
    }

    #[test]
    fn page_rules() {
        let page = PAGE_SIZE as u64;
        let ok = [
            Segment {
                iova: 0x10_0000 + 512,
                len: PAGE_SIZE - 512,
            },
            Segment {
                iova: 0x20_0000,
                len: 2 * PAGE_SIZE + 100,
            },
        ];
        assert_eq!(count_pages(&ok).unwrap(), 4);
        assert_eq!(
            later_pages(&ok).collect::<Vec<_>>(),
            vec![0x20_0000, 0x20_0000 + page, 0x20_0000 + 2 * page]
        );
        let gap = [
            Segment {
                iova: 0x10_0000,
                len: 100,
            },
            Segment {
                iova: 0x20_0000,
                len: PAGE_SIZE,
            },
        ];
        assert!(matches!(
            count_pages(&gap),
            Err(PrpError::NotPageContiguous { index: 0, .. })
        ));
        let unaligned_middle = [
            Segment {
                iova: 0x10_0000,
                len: PAGE_SIZE,
            },
            Segment {
                iova: 0x20_0008,
                len: PAGE_SIZE,
            },
        ];
        assert!(matches!(
            count_pages(&unaligned_middle),
            Err(PrpError::NotPageContiguous { index: 1, .. })
        ));
    }
}
