//! The few operating-system calls the runtime makes outside VFIO: pinning a
//! thread to a set of CPUs (core_affinity pins to one core only; completion
//! threads need a set), asking which CPU a thread runs on, and waiting for
//! an interrupt eventfd with a timeout.

use isonvme_mapping::CpuSet;

/// CPUs this machine can run threads on (the scheduler's view).
pub fn runnable_cpus() -> CpuSet {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect()
}

/// Pins the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &CpuSet) -> std::io::Result<()> {
    if cpus.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty CPU set",
        ));
    }
    // SAFETY: `cpu_set_t` is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let capacity = 8 * std::mem::size_of::<libc::cpu_set_t>();
    for cpu in cpus.iter() {
        if cpu >= capacity {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("CPU {cpu} is beyond the {capacity} CPUs cpu_set_t holds"),
            ));
        }
        // SAFETY: `cpu < capacity` was checked, so CPU_SET stays in bounds.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid, initialised
    // cpu_set_t of the size passed.
    let result =
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPU the calling thread runs on now (`sched_getcpu`, a vDSO call,
/// not a system call, on x86-64).
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu takes no arguments and only reads scheduler state.
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// A set of file descriptors waited on together (a completion thread
/// serving several vectors sleeps on all their eventfds at once).
#[derive(Debug)]
pub struct ReadableSet {
    pollfds: Vec<libc::pollfd>,
}

impl ReadableSet {
    /// A set of the given descriptors, in order.
    pub fn new(fds: impl IntoIterator<Item = std::os::fd::RawFd>) -> Self {
        ReadableSet {
            pollfds: fds
                .into_iter()
                .map(|fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect(),
        }
    }

    /// Waits until at least one descriptor is readable or `timeout` passes;
    /// returns whether any is. [`ReadableSet::is_ready`] then tells which.
    /// Interrupted waits count as "not yet".
    pub fn wait(&mut self, timeout: std::time::Duration) -> std::io::Result<bool> {
        for pollfd in &mut self.pollfds {
            pollfd.revents = 0;
        }
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let count = libc::nfds_t::try_from(self.pollfds.len()).unwrap_or(libc::nfds_t::MAX);
        // SAFETY: `pollfds` is a valid array of `count` pollfd structures
        // that outlives the call; the kernel writes only their `revents`.
        let ready = unsafe { libc::poll(self.pollfds.as_mut_ptr(), count, millis) };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(error);
        }
        Ok(ready > 0)
    }

    /// Whether descriptor `index` was readable at the last wait.
    pub fn is_ready(&self, index: usize) -> bool {
        self.pollfds
            .get(index)
            .is_some_and(|pollfd| pollfd.revents & libc::POLLIN != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn pinning_moves_the_thread() {
        let runnable = runnable_cpus();
        let target = runnable.last().expect("at least one CPU");
        std::thread::spawn(move || {
            pin_current_thread(&CpuSet::single(target)).unwrap();
            std::thread::yield_now();
            assert_eq!(current_cpu(), Some(target));
        })
        .join()
        .unwrap();
        assert!(pin_current_thread(&CpuSet::new()).is_err());
        assert!(pin_current_thread(&CpuSet::single(1 << 15)).is_err());
    }

    #[test]
    fn a_readable_set_reports_which_descriptors_are_ready() {
        let quiet = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let signalled = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut set = ReadableSet::new([quiet.as_raw_fd(), signalled.as_raw_fd()]);
        assert!(!set.wait(std::time::Duration::ZERO).unwrap());
        signalled.write(1).unwrap();
        assert!(set.wait(std::time::Duration::from_secs(5)).unwrap());
        assert!(!set.is_ready(0));
        assert!(set.is_ready(1));
        assert!(!set.is_ready(2));
    }
}
