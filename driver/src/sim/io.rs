//! NVM command set I/O commands of the simulated controller.

use vm_memory::{GuestAddress, GuestMemory as _};
use zerocopy::FromBytes;

use crate::nvme::{DsmRange, GenericStatus, IoOpcode, StatusCode, SubmissionEntry, NSID_ALL};

use super::device::Device;
use super::iommu::GuestMemory;
use super::prp;

type CmdResult = Result<u32, StatusCode>;

impl Device {
    /// Runs one I/O command; the result is DW0 or the error status.
    pub(crate) fn execute_io(&mut self, mem: &GuestMemory, sqe: &SubmissionEntry) -> CmdResult {
        if sqe.fuse() != 0 || sqe.psdt() != 0 {
            return Err(GenericStatus::InvalidField.into());
        }
        let Ok(op) = IoOpcode::try_from(sqe.opcode) else {
            return Err(GenericStatus::InvalidOpcode.into());
        };
        if op == IoOpcode::Flush && sqe.nsid == NSID_ALL {
            for ns in &mut self.namespaces {
                ns.flush()?;
            }
            return Ok(0);
        }
        let index = self.namespace_index(sqe.nsid)?;
        match op {
            IoOpcode::Flush => self.namespaces[index].flush().map(|()| 0),
            IoOpcode::Read | IoOpcode::Write => {
                self.read_write(mem, sqe, index, op == IoOpcode::Write)
            }
            IoOpcode::WriteZeroes => {
                let ns = &mut self.namespaces[index];
                let (slba, nlb) = lba_and_count(sqe);
                let (offset, len) = ns.byte_range(slba, nlb)?;
                ns.zero(offset, len).map(|()| 0)
            }
            IoOpcode::DatasetManagement => self.dataset_management(mem, sqe, index),
        }
    }

    fn namespace_index(&self, nsid: u32) -> Result<usize, StatusCode> {
        if nsid == 0 || nsid as usize > self.namespaces.len() {
            return Err(GenericStatus::InvalidNamespace.into());
        }
        Ok(nsid as usize - 1)
    }

    fn read_write(
        &mut self,
        mem: &GuestMemory,
        sqe: &SubmissionEntry,
        index: usize,
        write: bool,
    ) -> CmdResult {
        let (slba, nlb) = lba_and_count(sqe);
        let ns = &self.namespaces[index];
        let bytes = nlb << ns.lba_shift();
        let mdts = self.shared.options.mdts;
        if mdts != 0 && bytes > (4096u64 << mdts) {
            return Err(GenericStatus::InvalidField.into());
        }
        let (offset, len) = ns.byte_range(slba, nlb)?;
        let mut segments = std::mem::take(&mut self.segments);
        let page = self.page_size();
        let result = prp::walk(mem, sqe.prp1, sqe.prp2, len as usize, page, &mut segments)
            .and_then(|()| {
                let ns = &mut self.namespaces[index];
                let mut at = offset;
                for s in &segments {
                    let slice = mem
                        .get_slice(GuestAddress(s.iova), s.len)
                        .map_err(|_| StatusCode::from(GenericStatus::DataTransferError))?;
                    if write {
                        ns.write_from(at, slice)?;
                    } else {
                        ns.read_into(at, slice)?;
                    }
                    at += s.len as u64;
                }
                Ok(0)
            });
        self.segments = segments;
        if result.is_ok() {
            if write {
                self.shared.stats.count_written(len);
            } else {
                self.shared.stats.count_read(len);
            }
        }
        result
    }

    fn dataset_management(
        &mut self,
        mem: &GuestMemory,
        sqe: &SubmissionEntry,
        index: usize,
    ) -> CmdResult {
        let count = (sqe.cdw10 & 0xFF) as usize + 1;
        let deallocate = sqe.cdw11 & (1 << 2) != 0;
        let mut raw = vec![0u8; count * size_of::<DsmRange>()];
        let mut segments = std::mem::take(&mut self.segments);
        let page = self.page_size();
        let fetched = prp::walk(mem, sqe.prp1, sqe.prp2, raw.len(), page, &mut segments)
            .and_then(|()| prp::read_bytes(mem, &segments, &mut raw));
        self.segments = segments;
        fetched?;
        if !deallocate {
            // Only access hints: nothing to do.
            return Ok(0);
        }
        let ns = &mut self.namespaces[index];
        let ranges: Vec<DsmRange> = raw
            .chunks_exact(size_of::<DsmRange>())
            .filter_map(|c| DsmRange::read_from_bytes(c).ok())
            .collect();
        // Check every range before changing anything.
        let mut spans = Vec::with_capacity(ranges.len());
        for r in &ranges {
            spans.push(ns.byte_range(r.slba, u64::from(r.length))?);
        }
        for (offset, len) in spans {
            ns.zero(offset, len)?;
        }
        Ok(0)
    }
}

/// SLBA (CDW10-11) and the 1-based block count (CDW12 bits 15:0, 0-based on the wire).
fn lba_and_count(sqe: &SubmissionEntry) -> (u64, u64) {
    let slba = (u64::from(sqe.cdw11) << 32) | u64::from(sqe.cdw10);
    (slba, u64::from(sqe.cdw12 & 0xFFFF) + 1)
}
