//! `vfio-probe`: the platform under the driver, checked without the driver.
//!
//! With raw VFIO ioctls (type1 container + group, as the guest kernel has
//! no iommufd), it opens the device, reads the IOMMU's valid IOVA ranges,
//! BAR0's registers and the MSI-X vector count, maps a 2 MiB hugepage for
//! DMA, enables bus mastering, brings the controller up with an admin queue
//! in that page and runs Identify Controller by polling. When this passes
//! and the driver's checks fail, the driver is at fault, not the VM.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use crate::{Failure, Opts, Outcome};

// <linux/vfio.h>: _IO(';', 100 + n).
const fn vfio_io(n: u32) -> u32 {
    (0x3b << 8) | (100 + n)
}
const VFIO_GET_API_VERSION: u32 = vfio_io(0);
const VFIO_CHECK_EXTENSION: u32 = vfio_io(1);
const VFIO_SET_IOMMU: u32 = vfio_io(2);
const VFIO_GROUP_GET_STATUS: u32 = vfio_io(3);
const VFIO_GROUP_SET_CONTAINER: u32 = vfio_io(4);
const VFIO_GROUP_GET_DEVICE_FD: u32 = vfio_io(6);
const VFIO_DEVICE_GET_INFO: u32 = vfio_io(7);
const VFIO_DEVICE_GET_REGION_INFO: u32 = vfio_io(8);
const VFIO_DEVICE_GET_IRQ_INFO: u32 = vfio_io(9);
const VFIO_DEVICE_RESET: u32 = vfio_io(11);
const VFIO_IOMMU_GET_INFO: u32 = vfio_io(12);
const VFIO_IOMMU_MAP_DMA: u32 = vfio_io(13);
const VFIO_IOMMU_UNMAP_DMA: u32 = vfio_io(14);
const VFIO_API_VERSION: i32 = 0;
const VFIO_TYPE1V2_IOMMU: libc::c_ulong = 3;
const VFIO_GROUP_FLAGS_VIABLE: u32 = 1;
const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
const VFIO_IOMMU_INFO_CAPS: u32 = 1 << 1;
const VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: u16 = 1;
const VFIO_DMA_MAP_FLAG_READ_WRITE: u32 = 3;
const VFIO_PCI_BAR0_REGION_INDEX: u32 = 0;
const VFIO_PCI_CONFIG_REGION_INDEX: u32 = 7;
const VFIO_PCI_MSIX_IRQ_INDEX: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct GroupStatus {
    argsz: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct DeviceInfo {
    argsz: u32,
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
}

#[repr(C)]
#[derive(Default)]
struct RegionInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    cap_offset: u32,
    size: u64,
    offset: u64,
}

#[repr(C)]
#[derive(Default)]
struct IrqInfo {
    argsz: u32,
    flags: u32,
    index: u32,
    count: u32,
}

#[repr(C)]
struct DmaMap {
    argsz: u32,
    flags: u32,
    vaddr: u64,
    iova: u64,
    size: u64,
}

#[repr(C)]
struct DmaUnmap {
    argsz: u32,
    flags: u32,
    iova: u64,
    size: u64,
}

fn argsz<T>() -> u32 {
    std::mem::size_of::<T>() as u32
}

/// `ioctl(fd, request, arg)`; a negative return is the OS error.
fn ioctl(file: &File, what: &str, request: u32, arg: usize) -> Outcome<i32> {
    // SAFETY: each call site passes a request whose argument is either an
    // integer or a pointer to a live, correctly sized #[repr(C)] value.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), request as _, arg) };
    if result < 0 {
        return Err(Failure(format!(
            "{what}: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(result)
}

fn ioctl_ref<T>(file: &File, what: &str, request: u32, arg: &mut T) -> Outcome<i32> {
    ioctl(file, what, request, arg as *mut T as usize)
}

/// A shared mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: Option<(&File, u64)>, hugetlb: bool) -> std::io::Result<Mapping> {
        let (raw_fd, offset, flags) = match fd {
            Some((file, offset)) => (file.as_raw_fd(), offset, libc::MAP_SHARED),
            None => (
                -1,
                0,
                libc::MAP_SHARED
                    | libc::MAP_ANONYMOUS
                    | if hugetlb { libc::MAP_HUGETLB } else { 0 },
            ),
        };
        // SAFETY: a fresh mapping chosen by the kernel; nothing aliases it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                raw_fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Mapping { ptr, len })
    }

    fn read32(&self, offset: usize) -> u32 {
        assert!(offset + 4 <= self.len);
        // SAFETY: in bounds (checked), aligned by the callers' offsets.
        unsafe { self.ptr.as_ptr().add(offset).cast::<u32>().read_volatile() }
    }

    fn write32(&self, offset: usize, value: u32) {
        assert!(offset + 4 <= self.len);
        // SAFETY: as for read32.
        unsafe {
            self.ptr
                .as_ptr()
                .add(offset)
                .cast::<u32>()
                .write_volatile(value)
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        u64::from(self.read32(offset)) | (u64::from(self.read32(offset + 4)) << 32)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.write32(offset, value as u32);
        self.write32(offset + 4, (value >> 32) as u32);
    }

    fn bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        (offset..offset + len)
            // SAFETY: callers stay within the mapping.
            .map(|i| unsafe { self.ptr.as_ptr().add(i).read_volatile() })
            .collect()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The valid IOVA ranges from VFIO_IOMMU_GET_INFO's capability chain.
fn iova_ranges(container: &File) -> Outcome<Vec<(u64, u64)>> {
    // struct vfio_iommu_type1_info { argsz, flags, iova_pgsizes, cap_offset, pad }
    let mut buffer = vec![0u64; 512];
    let len = (buffer.len() * 8) as u32;
    let base = buffer.as_mut_ptr().cast::<u8>();
    // SAFETY: the buffer holds 4096 bytes; argsz tells the kernel so.
    unsafe { base.cast::<u32>().write(len) };
    ioctl(
        container,
        "VFIO_IOMMU_GET_INFO",
        VFIO_IOMMU_GET_INFO,
        base as usize,
    )?;
    let bytes: Vec<u8> = buffer.iter().flat_map(|word| word.to_ne_bytes()).collect();
    let u16_at = |o: usize| u16::from_ne_bytes([bytes[o], bytes[o + 1]]);
    let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap());
    let flags = u32_at(4);
    let page_sizes = u64_at(8);
    println!("  IOMMU page sizes {page_sizes:#x}");
    let mut ranges = Vec::new();
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(ranges);
    }
    let mut offset = u32_at(16) as usize;
    while offset != 0 && offset + 16 <= bytes.len() {
        let (id, next) = (u16_at(offset), u32_at(offset + 4) as usize);
        if id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let count = u32_at(offset + 8) as usize;
            for i in 0..count {
                let at = offset + 16 + 16 * i;
                if at + 16 <= bytes.len() {
                    ranges.push((u64_at(at), u64_at(at + 8)));
                }
            }
        }
        offset = next;
    }
    Ok(ranges)
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Outcome {
    let start = Instant::now();
    while !done() {
        ensure!(
            start.elapsed() < timeout,
            "{what} did not happen within {timeout:?}"
        );
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

pub(crate) fn vfio_probe(opts: &Opts) -> Outcome {
    let dev = Path::new("/sys/bus/pci/devices").join(&opts.device);
    let group = std::fs::read_link(dev.join("iommu_group"))
        .map_err(|e| Failure(format!("{}: no IOMMU group: {e}", opts.device)))?;
    let group = group.file_name().unwrap_or_default().to_string_lossy();
    let rw = |path: &str| -> Outcome<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Failure(format!("{path}: {e}")))
    };
    let container = rw("/dev/vfio/vfio")?;
    let api = ioctl(&container, "VFIO_GET_API_VERSION", VFIO_GET_API_VERSION, 0)?;
    ensure!(api == VFIO_API_VERSION, "VFIO API version {api}");
    let type1v2 = ioctl(
        &container,
        "VFIO_CHECK_EXTENSION",
        VFIO_CHECK_EXTENSION,
        VFIO_TYPE1V2_IOMMU as usize,
    )?;
    ensure!(type1v2 == 1, "the type1v2 IOMMU is not supported");
    let group_file = rw(&format!("/dev/vfio/{group}"))?;
    let mut status = GroupStatus {
        argsz: argsz::<GroupStatus>(),
        ..Default::default()
    };
    ioctl_ref(
        &group_file,
        "VFIO_GROUP_GET_STATUS",
        VFIO_GROUP_GET_STATUS,
        &mut status,
    )?;
    ensure!(
        status.flags & VFIO_GROUP_FLAGS_VIABLE != 0,
        "IOMMU group {group} is not viable"
    );
    let mut container_fd = container.as_raw_fd();
    ioctl_ref(
        &group_file,
        "VFIO_GROUP_SET_CONTAINER",
        VFIO_GROUP_SET_CONTAINER,
        &mut container_fd,
    )?;
    ioctl(
        &container,
        "VFIO_SET_IOMMU",
        VFIO_SET_IOMMU,
        VFIO_TYPE1V2_IOMMU as usize,
    )?;
    let ranges = iova_ranges(&container)?;
    let ranges_text: Vec<String> = ranges
        .iter()
        .map(|(start, end)| format!("{start:#x}-{end:#x}"))
        .collect();
    println!("  valid IOVA ranges: {}", ranges_text.join(" "));

    let name = std::ffi::CString::new(opts.device.as_str())?;
    let fd = ioctl(
        &group_file,
        "VFIO_GROUP_GET_DEVICE_FD",
        VFIO_GROUP_GET_DEVICE_FD,
        name.as_ptr() as usize,
    )?;
    // SAFETY: the kernel just handed us this descriptor; we own it.
    let device = unsafe { File::from_raw_fd(fd) };
    let mut info = DeviceInfo {
        argsz: argsz::<DeviceInfo>(),
        ..Default::default()
    };
    ioctl_ref(
        &device,
        "VFIO_DEVICE_GET_INFO",
        VFIO_DEVICE_GET_INFO,
        &mut info,
    )?;
    let region = |index: u32| -> Outcome<RegionInfo> {
        let mut region = RegionInfo {
            argsz: argsz::<RegionInfo>(),
            index,
            ..Default::default()
        };
        ioctl_ref(
            &device,
            "VFIO_DEVICE_GET_REGION_INFO",
            VFIO_DEVICE_GET_REGION_INFO,
            &mut region,
        )?;
        Ok(region)
    };
    let bar0 = region(VFIO_PCI_BAR0_REGION_INDEX)?;
    let config = region(VFIO_PCI_CONFIG_REGION_INDEX)?;
    let mut msix = IrqInfo {
        argsz: argsz::<IrqInfo>(),
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        ..Default::default()
    };
    ioctl_ref(
        &device,
        "VFIO_DEVICE_GET_IRQ_INFO",
        VFIO_DEVICE_GET_IRQ_INFO,
        &mut msix,
    )?;
    println!(
        "  device: {} regions, {} IRQ types, BAR0 {} KiB (mmap: {}), {} MSI-X vectors",
        info.num_regions,
        info.num_irqs,
        bar0.size / 1024,
        bar0.flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        msix.count
    );
    // A reset is optional for the probe (QEMU's NVMe supports FLR).
    if let Err(Failure(why)) = ioctl(&device, "VFIO_DEVICE_RESET", VFIO_DEVICE_RESET, 0) {
        println!("  {why} (continuing)");
    }
    ensure!(
        bar0.flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        "BAR0 cannot be mmapped"
    );
    let regs = Mapping::new(bar0.size as usize, Some((&device, bar0.offset)), false)
        .map_err(|e| Failure(format!("mmap of BAR0: {e}")))?;
    let cap = regs.read64(0x00);
    let vs = regs.read32(0x08);
    let mqes = (cap & 0xffff) + 1;
    let timeout = Duration::from_millis(500 * ((cap >> 24) & 0xff).max(1));
    let stride = 4usize << ((cap >> 32) & 0xf);
    println!(
        "  CAP {cap:#018x} (MQES {mqes}, TO {timeout:?}, doorbell stride {stride}), VS {}.{}.{}",
        vs >> 16,
        (vs >> 8) & 0xff,
        vs & 0xff
    );

    // Bus mastering: vfio-pci leaves it off, and DMA does nothing without.
    let mut command = [0u8; 2];
    device.read_exact_at(&mut command, config.offset + 4)?;
    let command = u16::from_le_bytes(command) | 0x4;
    device.write_all_at(&command.to_le_bytes(), config.offset + 4)?;

    // One 2 MiB hugepage: admin SQ at 0, CQ at 4 KiB, Identify data at 8 KiB.
    const HUGE: usize = 2 << 20;
    let memory = Mapping::new(HUGE, None, true)
        .map_err(|e| Failure(format!("a 2 MiB hugepage (is hugepages=N set?): {e}")))?;
    let iova = ranges
        .iter()
        .find_map(|&(start, end)| {
            let aligned = start.max(HUGE as u64).next_multiple_of(HUGE as u64);
            (aligned.checked_add(HUGE as u64 - 1)? <= end).then_some(aligned)
        })
        .unwrap_or(HUGE as u64);
    let mut map = DmaMap {
        argsz: argsz::<DmaMap>(),
        flags: VFIO_DMA_MAP_FLAG_READ_WRITE,
        vaddr: memory.ptr.as_ptr() as u64,
        iova,
        size: HUGE as u64,
    };
    ioctl_ref(
        &container,
        "VFIO_IOMMU_MAP_DMA",
        VFIO_IOMMU_MAP_DMA,
        &mut map,
    )?;
    println!("  mapped a 2 MiB hugepage at IOVA {iova:#x}");
    let result = identify_by_polling(&regs, &memory, iova, stride, timeout);
    // Disable the controller before the memory goes away.
    regs.write32(0x14, 0);
    let _ = wait("CSTS.RDY = 0", timeout, || regs.read32(0x1c) & 1 == 0);
    let mut unmap = DmaUnmap {
        argsz: argsz::<DmaUnmap>(),
        flags: 0,
        iova,
        size: HUGE as u64,
    };
    ioctl_ref(
        &container,
        "VFIO_IOMMU_UNMAP_DMA",
        VFIO_IOMMU_UNMAP_DMA,
        &mut unmap,
    )?;
    let serial = result?;
    println!("  Identify Controller through the IOMMU: serial `{serial}`");
    if let Some(expected) = &opts.expect_serial {
        ensure!(
            &serial == expected,
            "serial `{serial}`, expected `{expected}`"
        );
    }
    Ok(())
}

/// Enables the controller with a 2-entry admin queue and runs Identify
/// Controller, polling; returns the serial number.
fn identify_by_polling(
    regs: &Mapping,
    memory: &Mapping,
    iova: u64,
    stride: usize,
    timeout: Duration,
) -> Outcome<String> {
    const CC: usize = 0x14;
    const CSTS: usize = 0x1c;
    regs.write32(CC, 0);
    wait("CSTS.RDY = 0 after disable", timeout, || {
        regs.read32(CSTS) & 1 == 0
    })?;
    let depth = 2u32;
    regs.write32(0x24, (depth - 1) | ((depth - 1) << 16)); // AQA
    regs.write64(0x28, iova); // ASQ
    regs.write64(0x30, iova + 0x1000); // ACQ
                                       // EN, 4 KiB pages, NVM command set, 64-byte SQEs, 16-byte CQEs.
    regs.write32(CC, 1 | (6 << 16) | (4 << 20));
    wait("CSTS.RDY = 1", timeout, || {
        regs.read32(CSTS) & 0b11 != 0 // RDY or CFS
    })?;
    ensure!(
        regs.read32(CSTS) & 0b10 == 0,
        "controller fatal status after enable"
    );
    // Identify (opcode 0x06), CID 1, PRP1 = data page, CNS 1 (controller).
    let sqe = |dword: usize, value: u32| memory.write32(dword * 4, value);
    for dword in 0..16 {
        sqe(dword, 0);
    }
    sqe(0, 0x06 | (1 << 16));
    sqe(6, (iova + 0x2000) as u32);
    sqe(7, ((iova + 0x2000) >> 32) as u32);
    sqe(10, 1);
    fence(Ordering::SeqCst);
    regs.write32(0x1000, 1); // SQ 0 tail
    let cqe_dword3 = || memory.read32(0x1000 + 12);
    wait(
        "the Identify completion (DMA through the IOMMU)",
        timeout,
        || cqe_dword3() & (1 << 16) != 0,
    )?;
    fence(Ordering::SeqCst);
    let dword3 = cqe_dword3();
    regs.write32(0x1000 + stride, 1); // CQ 0 head
    let status = (dword3 >> 17) & 0x7fff;
    ensure!(
        status == 0,
        "Identify failed with status {status:#x} (CID {})",
        dword3 & 0xffff
    );
    let serial = memory.bytes(0x2000 + 4, 20);
    Ok(String::from_utf8_lossy(&serial).trim().to_string())
}
