//! SIGBUS safety for the BAR mapping: once VFIO has torn the BAR away from
//! under a mapping (the device went away, its memory decoding was switched
//! off, another party reset it), a register access raises SIGBUS, which
//! would kill the process in the middle of a trading day. As SPDK does, the
//! handler replaces the faulting BAR mapping with anonymous memory filled
//! with ones and returns: the access is retried, reads all-ones, and the
//! driver's all-ones check reports the device as removed.
//!
//! A SIGBUS anywhere else gets the handler that was there before (or the
//! default action), as if this one did not exist.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Mappings that may be guarded at once (BARs of open devices).
const SLOTS: usize = 32;

/// (start, len) of each guarded mapping; len 0 = free slot.
static RANGES: [(AtomicUsize, AtomicUsize); SLOTS] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; SLOTS];

/// The SIGBUS action before ours, restored for faults that are not ours.
static PREVIOUS: OnceLock<libc::sigaction> = OnceLock::new();

/// Keeps a mapping guarded while it lives.
#[derive(Debug)]
pub(crate) struct Guard {
    slot: Option<usize>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            // Release: the mapping is unmapped only after this, so the
            // handler never remaps memory that is no longer the BAR's.
            RANGES[slot].1.store(0, Ordering::Release);
            RANGES[slot].0.store(0, Ordering::Release);
        }
    }
}

/// Guards `len` bytes at `base` (a BAR mapping) until the guard drops.
/// Without a free slot or when the handler cannot be installed, the
/// mapping stays unguarded (said once in the log).
pub(crate) fn guard(base: *mut u8, len: usize) -> Guard {
    if let Err(error) = install() {
        tracing::warn!(%error, "cannot install the SIGBUS handler; a vanished BAR will kill the process");
        return Guard { slot: None };
    }
    for (index, (start, length)) in RANGES.iter().enumerate() {
        // Claim a free slot by its start; publish the length last.
        if start
            .compare_exchange(0, base as usize, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            length.store(len, Ordering::Release);
            return Guard { slot: Some(index) };
        }
    }
    tracing::warn!("more than {SLOTS} BAR mappings: this one is not guarded against SIGBUS");
    Guard { slot: None }
}

fn install() -> std::io::Result<()> {
    if PREVIOUS.get().is_some() {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is a valid "no handler" value; the fields
    // set are the handler (an `extern "C"` fn with the SA_SIGINFO
    // signature) and flags; sigaction reads `action` and writes `previous`,
    // both live locals.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, &action, &mut previous) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Two racing installers: the second saw ours as "previous";
        // keep the first one's, which is the real previous action.
        let _ = PREVIOUS.set(previous);
    }
    Ok(())
}

extern "C" fn on_sigbus(
    signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let address = unsafe { (*info).si_addr() } as usize;
    for (start, length) in &RANGES {
        let base = start.load(Ordering::Acquire);
        let len = length.load(Ordering::Acquire);
        if len == 0 || address < base || address >= base + len {
            continue;
        }
        // SAFETY: [base, base + len) is a BAR mapping this process owns
        // (registered by `guard` and unregistered before it is unmapped);
        // MAP_FIXED replaces it with private anonymous memory, which is
        // then filled with ones. mmap and memset are not on POSIX's
        // async-signal-safe list, but both are plain system call / memory
        // operations without locks on Linux, as SPDK relies on.
        unsafe {
            let replaced = libc::mmap(
                base as *mut libc::c_void,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if replaced != libc::MAP_FAILED {
                libc::memset(replaced, 0xFF, len);
                return;
            }
        }
        break;
    }
    // Not ours: what would have happened without this handler.
    // SAFETY: restores the saved action (or the default) and returns; the
    // faulting instruction runs again and gets that action.
    unsafe {
        match PREVIOUS.get() {
            Some(previous)
                if previous.sa_sigaction != libc::SIG_DFL
                    && previous.sa_sigaction != libc::SIG_IGN =>
            {
                if previous.sa_flags & libc::SA_SIGINFO != 0 {
                    let handler: extern "C" fn(
                        libc::c_int,
                        *mut libc::siginfo_t,
                        *mut libc::c_void,
                    ) = std::mem::transmute(previous.sa_sigaction);
                    handler(signal, info, context);
                } else {
                    let handler: extern "C" fn(libc::c_int) =
                        std::mem::transmute(previous.sa_sigaction);
                    handler(signal);
                }
            }
            _ => {
                libc::signal(libc::SIGBUS, libc::SIG_DFL);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A file mapping whose file was truncated raises SIGBUS on access,
    /// as a BAR torn away by VFIO does.
    #[test]
    fn a_vanished_mapping_reads_all_ones_instead_of_killing_the_process() {
        let file = tempfile::tempfile().unwrap();
        file.set_len(8192).unwrap();
        // SAFETY: a fresh shared mapping of the 8 KiB file, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8192,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        let word = base.cast::<u32>();
        // SAFETY: within the mapping, aligned.
        unsafe { word.write_volatile(7) };
        let guard = guard(base.cast(), 8192);
        file.set_len(0).unwrap();
        // SAFETY: within the mapping, aligned; the page is gone from the
        // file, so this faults, and the handler makes it read all-ones.
        let value = unsafe { word.add(1024).read_volatile() };
        assert_eq!(value, u32::MAX);
        drop(guard);
        // SAFETY: the mapping created above.
        unsafe { libc::munmap(base, 8192) };
    }
}
