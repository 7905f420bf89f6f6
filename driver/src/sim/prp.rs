//! PRP (Physical Region Page) walking: turns a command's PRP1/PRP2 into
//! the list of guest memory segments its data lives in, checking every rule
//! a controller checks (NVMe Base Specification 1.4, section 4.3).

use vm_memory::{Bytes, GuestAddress, GuestMemory as _};
use zerocopy::IntoBytes;

use crate::nvme::{GenericStatus, StatusCode};

use super::iommu::GuestMemory;

/// One contiguous piece of a data buffer, never crossing a memory page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segment {
    /// Device (IO virtual) address.
    pub iova: u64,
    /// Length in bytes.
    pub len: usize,
}

fn offset_invalid() -> StatusCode {
    GenericStatus::InvalidPrpOffset.into()
}

fn transfer_error() -> StatusCode {
    GenericStatus::DataTransferError.into()
}

/// Collects the segments of a `len`-byte transfer described by `prp1` and
/// `prp2` into `out` (cleared first), with memory pages of `page_size`
/// bytes.
///
/// * PRP1 may start anywhere dword aligned in a page.
/// * If the rest fits one page, PRP2 points at it and must be page aligned.
/// * Otherwise PRP2 points to a PRP list (qword aligned; it may start
///   inside a page and runs to that page's end); list entries must be page
///   aligned, and when more entries remain than fit, the last entry of a
///   list page points to the next list page (page aligned).
///
/// Every segment (and every list page read) must lie in registered DMA
/// memory, else Data Transfer Error, as an IOMMU fault would give.
pub(crate) fn walk(
    mem: &GuestMemory,
    prp1: u64,
    prp2: u64,
    len: usize,
    page_size: usize,
    out: &mut Vec<Segment>,
) -> Result<(), StatusCode> {
    out.clear();
    if len == 0 {
        return Ok(());
    }
    let page = page_size as u64;
    if prp1 & 0x3 != 0 {
        return Err(offset_invalid());
    }
    let first = len.min(page_size - (prp1 % page) as usize);
    out.push(Segment {
        iova: prp1,
        len: first,
    });
    let mut remaining = len - first;
    if remaining == 0 {
        return check_mapped(mem, out);
    }
    if remaining <= page_size {
        if !prp2.is_multiple_of(page) {
            return Err(offset_invalid());
        }
        out.push(Segment {
            iova: prp2,
            len: remaining,
        });
        return check_mapped(mem, out);
    }
    if prp2 & 0x7 != 0 {
        return Err(offset_invalid());
    }
    let mut list = prp2;
    let mut buf = [0u64; 64];
    loop {
        let in_page = ((page - list % page) / 8) as usize;
        let needed = remaining.div_ceil(page_size);
        // With more pages left than the list page holds, its last entry
        // chains to the next list page.
        let (data_entries, chained) = if needed > in_page {
            (in_page - 1, true)
        } else {
            (needed, false)
        };
        let mut read = 0;
        while read < data_entries {
            let n = (data_entries - read).min(buf.len());
            let entries = &mut buf[..n];
            mem.read_slice(entries.as_mut_bytes(), GuestAddress(list + 8 * read as u64))
                .map_err(|_| transfer_error())?;
            for &entry in entries.iter() {
                if entry % page != 0 {
                    return Err(offset_invalid());
                }
                let seg = remaining.min(page_size);
                out.push(Segment {
                    iova: entry,
                    len: seg,
                });
                remaining -= seg;
            }
            read += n;
        }
        if !chained {
            debug_assert_eq!(remaining, 0);
            return check_mapped(mem, out);
        }
        let next: u64 = mem
            .read_obj(GuestAddress(list + 8 * data_entries as u64))
            .map_err(|_| transfer_error())?;
        if !next.is_multiple_of(page) {
            return Err(offset_invalid());
        }
        list = next;
    }
}

fn check_mapped(mem: &GuestMemory, segments: &[Segment]) -> Result<(), StatusCode> {
    for s in segments {
        mem.get_slice(GuestAddress(s.iova), s.len)
            .map_err(|_| transfer_error())?;
    }
    Ok(())
}

/// Copies `data` into the segments (host → guest), zero-filling whatever
/// the segments hold beyond it.
pub(crate) fn write_bytes(
    mem: &GuestMemory,
    segments: &[Segment],
    data: &[u8],
) -> Result<(), StatusCode> {
    let mut done = 0;
    for s in segments {
        let slice = mem
            .get_slice(GuestAddress(s.iova), s.len)
            .map_err(|_| transfer_error())?;
        let n = s.len.min(data.len().saturating_sub(done));
        slice.copy_from(&data[done..done + n]);
        if n < s.len {
            let rest = slice.offset(n).map_err(|_| transfer_error())?;
            let zeros = vec![0u8; s.len - n];
            rest.copy_from(zeros.as_slice());
        }
        done += n;
    }
    Ok(())
}

/// Copies the segments into `buf` (guest → host); `buf` must not be longer
/// than the segments.
pub(crate) fn read_bytes(
    mem: &GuestMemory,
    segments: &[Segment],
    buf: &mut [u8],
) -> Result<(), StatusCode> {
    let mut done = 0;
    for s in segments {
        if done == buf.len() {
            break;
        }
        let n = s.len.min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], GuestAddress(s.iova))
            .map_err(|_| transfer_error())?;
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::iommu::IovaMap;

    const PAGE: usize = 4096;

    #[test]
    fn shapes() {
        let map = IovaMap::new();
        let data = map.map(1 << 21).unwrap();
        let lists = map.map(4 * PAGE).unwrap();
        let mem = map.memory();
        let d = data.iova();
        let mut out = Vec::new();

        // Inside one page.
        walk(&mem, d + 512, 0, 1024, PAGE, &mut out).unwrap();
        assert_eq!(
            out,
            [Segment {
                iova: d + 512,
                len: 1024
            }]
        );
        // Crossing one boundary: PRP2 is the second page.
        walk(&mem, d + 3 * 1024, d + 8 * 4096, 2048, PAGE, &mut out).unwrap();
        assert_eq!(
            out,
            [
                Segment {
                    iova: d + 3072,
                    len: 1024
                },
                Segment {
                    iova: d + 8 * 4096,
                    len: 1024
                }
            ]
        );
        // PRP2 data pointer must be page aligned.
        assert_eq!(
            walk(&mem, d, d + 8, 2 * PAGE, PAGE, &mut out),
            Err(GenericStatus::InvalidPrpOffset.into())
        );
        // PRP1 must be dword aligned.
        assert_eq!(
            walk(&mem, d + 2, 0, 16, PAGE, &mut out),
            Err(GenericStatus::InvalidPrpOffset.into())
        );

        // A list of three pages.
        let l = lists.iova();
        let entries: [u64; 3] = [d + PAGE as u64, d + 5 * PAGE as u64, d + 9 * PAGE as u64];
        mem.write_slice(entries.as_bytes(), GuestAddress(l))
            .unwrap();
        walk(&mem, d, l, 4 * PAGE, PAGE, &mut out).unwrap();
        assert_eq!(out.len(), 4);
        assert_eq!(
            out[3],
            Segment {
                iova: d + 9 * PAGE as u64,
                len: PAGE
            }
        );
        // A misaligned list entry.
        mem.write_obj(d + 100, GuestAddress(l + 8)).unwrap();
        assert_eq!(
            walk(&mem, d, l, 4 * PAGE, PAGE, &mut out),
            Err(GenericStatus::InvalidPrpOffset.into())
        );
        // A list pointer that is not qword aligned.
        assert_eq!(
            walk(&mem, d, l + 4, 4 * PAGE, PAGE, &mut out),
            Err(GenericStatus::InvalidPrpOffset.into())
        );
        // A list entry pointing outside the DMA map.
        mem.write_obj(0x1000u64, GuestAddress(l + 8)).unwrap();
        assert_eq!(
            walk(&mem, d, l, 4 * PAGE, PAGE, &mut out),
            Err(GenericStatus::DataTransferError.into())
        );
        // A list in unmapped memory.
        assert_eq!(
            walk(&mem, d, 0x8000, 4 * PAGE, PAGE, &mut out),
            Err(GenericStatus::DataTransferError.into())
        );
    }

    #[test]
    fn chained_list_with_offset_start() {
        let map = IovaMap::new();
        let data = map.map(1 << 21).unwrap();
        let lists = map.map(4 * PAGE).unwrap();
        let mem = map.memory();
        let d = data.iova();
        let l = lists.iova();
        // The first list starts 16 bytes before the end of its page: one
        // data entry, then a chain pointer to the next (page-aligned) list.
        let first = l + PAGE as u64 - 16;
        mem.write_obj(d + PAGE as u64, GuestAddress(first)).unwrap();
        mem.write_obj(l + 2 * PAGE as u64, GuestAddress(first + 8))
            .unwrap();
        let second: Vec<u64> = (2..=3).map(|i| d + i * PAGE as u64).collect();
        mem.write_slice(second.as_bytes(), GuestAddress(l + 2 * PAGE as u64))
            .unwrap();
        let mut out = Vec::new();
        walk(&mem, d, first, 4 * PAGE - 8, PAGE, &mut out).unwrap();
        let iovas: Vec<u64> = out.iter().map(|s| s.iova).collect();
        assert_eq!(iovas, [d, d + 4096, d + 2 * 4096, d + 3 * 4096]);
        assert_eq!(out[3].len, PAGE - 8);
        // A misaligned chain pointer.
        mem.write_obj(l + 2 * PAGE as u64 + 8, GuestAddress(first + 8))
            .unwrap();
        assert_eq!(
            walk(&mem, d, first, 4 * PAGE, PAGE, &mut out),
            Err(GenericStatus::InvalidPrpOffset.into())
        );
    }

    #[test]
    fn full_page_list_chains() {
        let map = IovaMap::new();
        let data = map.map(1 << 21).unwrap();
        let lists = map.map(2 * PAGE).unwrap();
        let mem = map.memory();
        let (d, l) = (data.iova(), lists.iova());
        // 1 + 511 + 2 pages: the first list page is full (511 data entries
        // and a chain), the second holds the last two.
        let total = 1 + 511 + 2;
        let mut first: Vec<u64> = (1..512).map(|i| d + (i % 512) * PAGE as u64).collect();
        first.push(l + PAGE as u64);
        mem.write_slice(first.as_bytes(), GuestAddress(l)).unwrap();
        let second: [u64; 2] = [d, d + PAGE as u64];
        mem.write_slice(second.as_bytes(), GuestAddress(l + PAGE as u64))
            .unwrap();
        let mut out = Vec::new();
        walk(&mem, d, l, total * PAGE, PAGE, &mut out).unwrap();
        assert_eq!(out.len(), total);
        assert_eq!(out.iter().map(|s| s.len).sum::<usize>(), total * PAGE);
        assert_eq!(out[total - 1].iova, d + PAGE as u64);
    }
}
