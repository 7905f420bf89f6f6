//! CPU hotplug and interrupt steering: a watcher follows the online CPUs
//! and moves a vector's completion thread and host IRQ affinity to another
//! online housekeeping CPU when its own go offline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use isonvme_mapping::sysfs::SysfsRoot;
use isonvme_mapping::{CpuSet, Topology};

use super::completion::VectorState;
use crate::controller::Controller;
use crate::transport::AffinityOutcome;

/// Where the runtime learns which CPUs are online, so tests can inject
/// hotplug events.
pub trait OnlineSource: Send + Sync {
    /// The online CPUs now.
    fn online(&self) -> std::io::Result<CpuSet>;
}

impl OnlineSource for SysfsRoot {
    fn online(&self) -> std::io::Result<CpuSet> {
        let path = self.cpu_dir().join("online");
        let text = std::fs::read_to_string(&path)?;
        text.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

/// An online set changed by hand (tests, "what if" runs).
#[derive(Debug, Default)]
pub struct ManualOnline(Mutex<CpuSet>);

impl ManualOnline {
    /// Starts with `online`.
    pub fn new(online: CpuSet) -> Self {
        ManualOnline(Mutex::new(online))
    }

    /// Replaces the online set (a hotplug event).
    pub fn set(&self, online: CpuSet) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = online;
    }
}

impl OnlineSource for ManualOnline {
    fn online(&self) -> std::io::Result<CpuSet> {
        Ok(self.0.lock().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// What the watcher needs.
pub(super) struct Watch {
    pub source: Arc<dyn OnlineSource>,
    pub interval: Duration,
    pub stop: Arc<AtomicBool>,
    pub vectors: Vec<Arc<VectorState>>,
    pub controller: Arc<Controller>,
    pub housekeeping: CpuSet,
    pub topology: Arc<Mutex<Topology>>,
}

/// Starts the hotplug watcher thread.
pub(super) fn start_watcher(watch: Watch) -> std::io::Result<JoinHandle<()>> {
    let Watch {
        source,
        interval,
        stop,
        vectors,
        controller,
        housekeeping,
        topology: shared_topology,
    } = watch;
    let topology = shared_topology
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut last = topology.online().clone();
    std::thread::Builder::new()
        .name("isonvme-hotplug".into())
        .spawn(move || {
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(interval);
                let Ok(online) = source.online() else { continue };
                if online == last || online.is_empty() {
                    continue;
                }
                tracing::info!(from = %last, to = %online, "online CPUs changed");
                last = online.clone();
                if let Ok(updated) = topology.with_online(online.clone()) {
                    *shared_topology.lock().unwrap_or_else(|e| e.into_inner()) = updated;
                }
                for state in &vectors {
                    let target = retarget(&state.home, &housekeeping, &online, &topology);
                    let mut current = state.target.lock().unwrap_or_else(|e| e.into_inner());
                    if *current != target {
                        tracing::info!(vector = state.vector, from = %current, to = %target, "moving completion work");
                        *current = target.clone();
                        state.generation.fetch_add(1, Ordering::Release);
                        drop(current);
                        steer(&controller, state.vector, &target);
                    }
                }
            }
        })
}

/// Where a vector's completion work should run given the online CPUs: its
/// own housekeeping CPUs that are online, else the online housekeeping CPUs
/// of the same NUMA node, else any online housekeeping CPU.
pub(super) fn retarget(
    home: &CpuSet,
    housekeeping: &CpuSet,
    online: &CpuSet,
    topology: &Topology,
) -> CpuSet {
    let own = home.intersection(online);
    if !own.is_empty() {
        return own;
    }
    let online_housekeeping = housekeeping.intersection(online);
    let node = home.first().and_then(|cpu| topology.node_of(cpu));
    if let Some(node_cpus) = node.and_then(|node| topology.nodes().get(&node)) {
        let same_node = online_housekeeping.intersection(node_cpus);
        if !same_node.is_empty() {
            return same_node;
        }
    }
    online_housekeeping
}

/// Points a vector's interrupt at `cpus`, saying once and clearly when the
/// host will not allow it.
pub(super) fn steer(controller: &Controller, vector: u16, cpus: &CpuSet) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if cpus.is_empty() {
        return;
    }
    match controller.transport().set_vector_affinity(vector, cpus) {
        Ok(AffinityOutcome::Applied) => {}
        Ok(AffinityOutcome::NotPermitted(why)) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!("cannot restrict interrupt affinity: {why}");
            }
        }
        Err(error) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(%error, "cannot restrict interrupt affinity");
            }
        }
    }
}
