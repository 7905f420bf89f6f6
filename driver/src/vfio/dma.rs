//! DMA memory for the VFIO back-end: anonymous 2 MiB hugepages, and the
//! advice given when the host has none or will not let them be pinned.

use std::io;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::MmapRegion;

use super::sysfs::HugePages;

/// The size of a hugepage, and the granule DMA memory is mapped in.
pub(crate) const HUGEPAGE: usize = 2 << 20;

/// `size` bytes (a multiple of [`HUGEPAGE`]) of zeroed memory backed by
/// 2 MiB hugepages: shared anonymous (so a fork does not copy-on-write
/// pages the device writes to), populated up front.
pub(crate) fn hugepage_memory(size: usize) -> io::Result<MmapRegion<()>> {
    MmapRegionBuilder::<()>::new(size)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(
            libc::MAP_SHARED
                | libc::MAP_ANONYMOUS
                | libc::MAP_HUGETLB
                | libc::MAP_HUGE_2MB
                | libc::MAP_POPULATE,
        )
        .with_hugetlbfs(true)
        .build()
        .map_err(|error| match error {
            vm_memory::mmap::MmapRegionError::Mmap(error) => error,
            other => io::Error::other(other.to_string()),
        })
}

/// What to say when hugepage memory for `size` bytes could not be mapped.
pub(crate) fn hugepage_advice(size: usize, error: &io::Error, pages: Option<HugePages>) -> String {
    let needed = size.div_ceil(HUGEPAGE) as u64;
    const SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    let Some(pages) = pages else {
        return format!(
            "mapping {needed} 2 MiB hugepage(s) failed ({error}) and this kernel offers no 2 MiB \
             hugepages ({SYSFS} is missing): isonvme needs them for DMA memory (a kernel with \
             CONFIG_HUGETLBFS on a CPU with 2 MiB pages)"
        );
    };
    if pages.available() < needed {
        let suggested = pages.total + needed;
        return format!(
            "no free 2 MiB hugepages for DMA memory: {needed} needed, {} of {} free ({error}). \
             Reserve more with `isonvme setup hugepages N` or `echo N > {SYSFS}` (`echo N > \
             /proc/sys/vm/nr_hugepages` where 2 MiB is the default hugepage size), N at least \
             {suggested}; 512 (1 GiB) is comfortable",
            pages.available(),
            pages.total
        );
    }
    format!(
        "mapping {needed} 2 MiB hugepage(s) failed ({error}) although {} are free: check this \
         process's hugetlb cgroup limit (hugetlb.2MB.max) and the NUMA placement of the \
         reserved pages (`isonvme setup status`)",
        pages.available()
    )
}

/// The locked-memory limit (`ulimit -l`) in bytes: soft and hard, `None`
/// meaning unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemlockLimit {
    /// The soft limit.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Reads the limit from `<proc_root>/self/limits`.
pub fn memlock_limit(proc_root: &Path) -> Option<MemlockLimit> {
    parse_memlock_limit(&std::fs::read_to_string(proc_root.join("self/limits")).ok()?)
}

/// Parses the `Max locked memory` line of a limits file.
pub fn parse_memlock_limit(text: &str) -> Option<MemlockLimit> {
    let line = text.lines().find(|l| l.starts_with("Max locked memory"))?;
    let mut fields = line["Max locked memory".len()..].split_whitespace();
    let value = |field: Option<&str>| -> Option<Option<u64>> {
        match field? {
            "unlimited" => Some(None),
            number => number.parse().ok().map(Some),
        }
    };
    Some(MemlockLimit {
        soft: value(fields.next())?,
        hard: value(fields.next())?,
    })
}

/// Shows a limit in bytes the way `ulimit -l` thinks: KiB, or unlimited.
pub fn show_limit(limit: Option<u64>) -> String {
    match limit {
        None => "unlimited".to_owned(),
        Some(bytes) => format!("{} KiB", bytes / 1024),
    }
}

/// Locks `region` in memory (`mlock`), for no-IOMMU mode, where nothing
/// in the kernel pins DMA memory for the device. Hugetlb pages are never
/// swapped and the kernel does not count them as locked, but `mlock` still
/// checks the locked-memory limit; it documents the intent and keeps the
/// memory resident should the backing ever change.
pub(crate) fn lock_memory(region: &MmapRegion<()>) -> io::Result<()> {
    // SAFETY: the range is exactly the mapping `region` owns, mapped for
    // as long as `region` lives; mlock reads no memory of this process.
    let result = unsafe { libc::mlock(region.as_ptr().cast(), region.size()) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What to say when `mlock` of `size` bytes of DMA memory failed.
pub(crate) fn mlock_advice(size: usize, error: &io::Error, limit: Option<MemlockLimit>) -> String {
    let shown = match limit {
        Some(limit) => format!(
            "ulimit -l is {} (hard {})",
            show_limit(limit.soft),
            show_limit(limit.hard)
        ),
        None => "ulimit -l could not be read".to_owned(),
    };
    format!(
        "locking {size} bytes of DMA memory (mlock) failed ({error}; {shown}): no-IOMMU mode \
         hands the device physical addresses, so the memory must stay put. Run as root (which \
         no-IOMMU mode needs anyway), or raise the limit with `ulimit -l unlimited`"
    )
}

/// What to say when `VFIO_IOMMU_MAP_DMA` of `size` bytes at `iova` failed
/// with `errno`, with `mapped` bytes already mapped.
pub(crate) fn map_dma_advice(
    size: u64,
    iova: u64,
    errno: i32,
    limit: Option<MemlockLimit>,
    mapped: u64,
) -> String {
    let error = io::Error::from_raw_os_error(errno);
    match errno {
        libc::ENOMEM | libc::EPERM => {
            let unlimited = limit.is_some_and(|l| l.soft.is_none());
            if unlimited {
                return format!(
                    "VFIO could not pin {size} bytes for DMA ({error}) although the \
                     locked-memory limit is unlimited: the host is out of memory or of IOMMU \
                     page-table space"
                );
            }
            let shown = match limit {
                Some(limit) => format!(
                    "ulimit -l is {} (hard {})",
                    show_limit(limit.soft),
                    show_limit(limit.hard)
                ),
                None => "ulimit -l could not be read".to_owned(),
            };
            format!(
                "VFIO could not pin {size} bytes for DMA ({error}): the locked-memory limit is \
                 too low ({shown}; VFIO counts every DMA-mapped byte, {mapped} bytes are mapped \
                 already). Raise it: `ulimit -l unlimited` in the shell that starts the program \
                 (as root), a `<user> - memlock unlimited` line in /etc/security/limits.conf, or \
                 LimitMEMLOCK=infinity for a systemd service; or run as root"
            )
        }
        libc::ENOSPC => format!(
            "the IOMMU container accepts no more DMA mappings ({error}): raise the \
             vfio_iommu_type1 module's dma_entry_limit parameter"
        ),
        libc::EEXIST => format!(
            "IOVA {iova:#x}..{:#x} is already mapped ({error}): this is a bug in isonvme",
            iova.saturating_add(size)
        ),
        _ => format!("VFIO_IOMMU_MAP_DMA of {size} bytes at IOVA {iova:#x} failed: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_hugepages_names_the_fix() {
        let error = io::Error::from_raw_os_error(libc::ENOMEM);
        let pages = HugePages {
            total: 0,
            free: 0,
            reserved: 0,
        };
        let text = hugepage_advice(HUGEPAGE, &error, Some(pages));
        assert!(text.contains("no free 2 MiB hugepages"), "{text}");
        assert!(text.contains("isonvme setup hugepages N"), "{text}");
        assert!(text.contains("/proc/sys/vm/nr_hugepages"), "{text}");
        assert!(text.contains("hugepages-2048kB/nr_hugepages"), "{text}");
        assert!(text.contains("N at least 1"), "{text}");
        let text = hugepage_advice(3 * HUGEPAGE, &error, None);
        assert!(text.contains("offers no 2 MiB hugepages"), "{text}");
        let pages = HugePages {
            total: 8,
            free: 8,
            reserved: 0,
        };
        let text = hugepage_advice(HUGEPAGE, &error, Some(pages));
        assert!(text.contains("although 8 are free"), "{text}");
    }

    #[test]
    fn memlock_limits_are_read_from_proc() {
        let text = "Limit                     Soft Limit           Hard Limit           Units     \n\
                    Max cpu time              unlimited            unlimited            seconds   \n\
                    Max locked memory         8388608              16777216             bytes     \n";
        assert_eq!(
            parse_memlock_limit(text),
            Some(MemlockLimit {
                soft: Some(8 << 20),
                hard: Some(16 << 20)
            })
        );
        let text = "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(
            parse_memlock_limit(text),
            Some(MemlockLimit {
                soft: None,
                hard: None
            })
        );
        assert_eq!(parse_memlock_limit("garbage"), None);
        // This process's own limits file parses.
        assert!(memlock_limit(Path::new("/proc")).is_some());
    }

    #[test]
    fn map_failures_name_the_limit_and_the_fix() {
        let limit = MemlockLimit {
            soft: Some(8 << 20),
            hard: Some(8 << 20),
        };
        let text = map_dma_advice(2 << 20, 0x1_0000_0000, libc::ENOMEM, Some(limit), 8 << 20);
        assert!(text.contains("ulimit -l is 8192 KiB"), "{text}");
        assert!(text.contains("ulimit -l unlimited"), "{text}");
        assert!(text.contains("limits.conf"), "{text}");
        let unlimited = MemlockLimit {
            soft: None,
            hard: None,
        };
        let text = map_dma_advice(2 << 20, 0, libc::ENOMEM, Some(unlimited), 0);
        assert!(text.contains("out of memory"), "{text}");
        let text = map_dma_advice(2 << 20, 0, libc::ENOSPC, None, 0);
        assert!(text.contains("dma_entry_limit"), "{text}");
        let text = map_dma_advice(2 << 20, 0x1000, libc::EINVAL, None, 0);
        assert!(text.contains("IOVA 0x1000"), "{text}");
    }

    #[test]
    fn mlock_failures_name_the_limit() {
        let limit = MemlockLimit {
            soft: Some(64 << 10),
            hard: Some(64 << 10),
        };
        let error = io::Error::from_raw_os_error(libc::ENOMEM);
        let text = mlock_advice(HUGEPAGE, &error, Some(limit));
        assert!(text.contains("ulimit -l is 64 KiB"), "{text}");
        assert!(text.contains("Run as root"), "{text}");
    }

    #[test]
    fn hugepage_memory_is_zeroed_or_fails_with_an_os_error() {
        // Hosts running the tests may have no hugepages reserved: either
        // outcome is fine, but a failure must carry the OS error.
        match hugepage_memory(HUGEPAGE) {
            Ok(region) => {
                assert_eq!(region.size(), HUGEPAGE);
                // Locking may fail under a small memlock limit; it must
                // say why rather than panic.
                if let Err(error) = lock_memory(&region) {
                    assert!(error.raw_os_error().is_some(), "{error}");
                }
                // SAFETY: the region is HUGEPAGE bytes, mapped and readable.
                let first = unsafe { region.as_ptr().read_volatile() };
                assert_eq!(first, 0);
            }
            Err(error) => assert!(error.raw_os_error().is_some(), "{error}"),
        }
    }
}
