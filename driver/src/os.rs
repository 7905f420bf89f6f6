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

/// Waits until `fd` is readable or `timeout` passes; returns whether it is
/// readable. Interrupted waits count as "not yet".
pub fn wait_readable(
    fd: std::os::fd::RawFd,
    timeout: std::time::Duration,
) -> std::io::Result<bool> {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
    if ready < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(error);
    }
    Ok(ready > 0 && pollfd.revents & libc::POLLIN != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
