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

/// The calling thread's kernel id (for [`pin_thread`] from another thread).
pub fn current_thread_id() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Pins the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &CpuSet) -> std::io::Result<()> {
    pin_thread(0, cpus)
}

/// Pins thread `tid` of this process (0: the calling thread) to `cpus`.
pub fn pin_thread(tid: i32, cpus: &CpuSet) -> std::io::Result<()> {
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
    // SAFETY: `tid` is a thread id (0: the calling thread; the kernel
    // checks it); `set` is a valid, initialised cpu_set_t of the size passed.
    let result =
        unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) };
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

/// Makes a write to a closed standard output (`program | head -1`) end
/// the process quietly, as it does `cat`, instead of failing every later
/// `println!` with a panic: restores the default action of SIGPIPE, which
/// the Rust runtime sets to "ignore". Call it first thing in `main` of a
/// program whose output is meant for pipes.
pub fn exit_quietly_on_closed_stdout() {
    // SAFETY: setting a signal's disposition to SIG_DFL installs no handler
    // code; it only changes what the kernel does on SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Sets the calling thread's timer slack (how late the kernel may wake a
/// sleep to batch timers; 50 µs by default), so a short nap lasts what it
/// says. Best effort: a refusal only makes naps longer.
pub fn set_timer_slack(slack: std::time::Duration) {
    let nanos = libc::c_ulong::try_from(slack.as_nanos().max(1)).unwrap_or(libc::c_ulong::MAX);
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and only changes the
    // calling thread's scheduling attribute.
    let _ = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, nanos, 0, 0, 0) };
}

/// The CPUs this process may be placed on: its cpuset (cgroup v2
/// `cpuset.cpus.effective`, or v1 `cpuset.cpus`) intersected with the
/// online CPUs. Unlike [`runnable_cpus`] (the inherited affinity, which
/// `isolcpus=domain` strips of isolated CPUs), this includes isolated CPUs
/// a thread may still be pinned to explicitly.
pub fn placeable_cpus() -> CpuSet {
    let online: Option<CpuSet> = std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|text| text.trim().parse().ok());
    let cpuset = cgroup_cpuset();
    match (cpuset, online) {
        (Some(cpuset), Some(online)) => {
            let both = cpuset.intersection(&online);
            if both.is_empty() {
                runnable_cpus()
            } else {
                both
            }
        }
        (None, Some(online)) => online,
        (Some(cpuset), None) => cpuset,
        (None, None) => runnable_cpus(),
    }
}

/// The cpuset of this process's cgroup, if it can be read.
fn cgroup_cpuset() -> Option<CpuSet> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let candidates: Vec<std::path::PathBuf> = if controllers.is_empty() {
            // cgroup v2: the effective set of this cgroup.
            vec![std::path::Path::new("/sys/fs/cgroup")
                .join(path.trim_start_matches('/'))
                .join("cpuset.cpus.effective")]
        } else if controllers.split(',').any(|c| c == "cpuset") {
            let relative = path.trim_start_matches('/');
            vec![
                std::path::Path::new("/sys/fs/cgroup/cpuset")
                    .join(relative)
                    .join("cpuset.effective_cpus"),
                std::path::Path::new("/sys/fs/cgroup/cpuset")
                    .join(relative)
                    .join("cpuset.cpus"),
            ]
        } else {
            continue;
        };
        for candidate in candidates {
            if let Some(set) = std::fs::read_to_string(&candidate)
                .ok()
                .and_then(|text| text.trim().parse::<CpuSet>().ok())
                .filter(|set| !set.is_empty())
            {
                return Some(set);
            }
        }
    }
    None
}

/// Spinning that gives the CPU away when it is shared, and does not when
/// it is not.
///
/// A thread that spins waiting for work (a polling completion thread, the
/// simulator's device thread) holds its CPU for a whole time slice if
/// nothing makes it stop, so on a CPU it shares with the thread that
/// would produce that work, every hand-off waits for the scheduler. Every
/// `interval` empty passes this offers the CPU (`sched_yield`) and times
/// the offer: a yield that took long ran someone else, so the CPU is
/// shared and offers stay frequent; a yield that came straight back means
/// the CPU is ours, and the interval doubles (up to `MAX_INTERVAL` passes)
/// so a dedicated CPU polls almost undisturbed.
#[derive(Debug)]
pub struct SpinYield {
    passes: u32,
    interval: u32,
    adaptive: bool,
}

impl SpinYield {
    /// Empty passes between offers while the CPU looks shared.
    pub const MIN_INTERVAL: u32 = 16;
    /// Empty passes between offers at most, while the CPU looks dedicated.
    pub const MAX_INTERVAL: u32 = 1 << 16;
    /// A yield that takes longer than this ran another thread.
    const SHARED_AFTER: std::time::Duration = std::time::Duration::from_micros(2);

    /// Starts assuming the CPU is shared.
    pub fn new() -> Self {
        SpinYield {
            passes: 0,
            interval: Self::MIN_INTERVAL,
            adaptive: true,
        }
    }

    /// Offers the CPU every `interval` empty passes (at least one),
    /// always: for a thread that knows it shares its CPU (the simulator's
    /// device thread stands in for hardware on the host's own CPUs), where
    /// a quick return from one offer says nothing about the next hand-off.
    pub fn always(interval: u32) -> Self {
        SpinYield {
            passes: 0,
            interval: interval.max(1),
            adaptive: false,
        }
    }

    /// The loop found work: start counting empty passes again.
    pub fn worked(&mut self) {
        self.passes = 0;
    }

    /// One empty pass: a spin hint, or now and then an offer of the CPU.
    pub fn idle(&mut self) {
        self.passes += 1;
        if self.passes < self.interval {
            std::hint::spin_loop();
            return;
        }
        self.passes = 0;
        if !self.adaptive {
            std::thread::yield_now();
            return;
        }
        let start = std::time::Instant::now();
        std::thread::yield_now();
        self.interval = Self::next_interval(self.interval, start.elapsed());
    }

    /// The interval after an offer of the CPU that took `yield_took`.
    fn next_interval(interval: u32, yield_took: std::time::Duration) -> u32 {
        if yield_took > Self::SHARED_AFTER {
            Self::MIN_INTERVAL
        } else {
            interval.saturating_mul(2).min(Self::MAX_INTERVAL)
        }
    }
}

impl Default for SpinYield {
    fn default() -> Self {
        SpinYield::new()
    }
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
    fn placeable_cpus_include_every_cpu_this_thread_may_run_on() {
        let placeable = placeable_cpus();
        assert!(!placeable.is_empty());
        assert!(
            runnable_cpus().is_subset(&placeable),
            "runnable {} not within placeable {placeable}",
            runnable_cpus()
        );
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

    #[test]
    fn offers_stay_frequent_on_a_shared_cpu_and_thin_out_on_a_dedicated_one() {
        use std::time::Duration;
        let shared = Duration::from_micros(50);
        let alone = Duration::from_nanos(300);
        let mut interval = SpinYield::MIN_INTERVAL;
        for expected in [32, 64, 128] {
            interval = SpinYield::next_interval(interval, alone);
            assert_eq!(interval, expected);
        }
        assert_eq!(
            SpinYield::next_interval(interval, shared),
            SpinYield::MIN_INTERVAL
        );
        assert_eq!(
            SpinYield::next_interval(SpinYield::MAX_INTERVAL, alone),
            SpinYield::MAX_INTERVAL
        );
    }
}
