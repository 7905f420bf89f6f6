//! Interrupt vectors: how many a device gets (`irq_calc_affinity_vectors`)
//! and which CPUs each one targets (`irq_create_affinity_masks`), for
//! mainline and for `isolcpus=io_queue`.

use serde::Serialize;

use crate::group::{group_cpus_evenly, group_mask_cpus_evenly};
use crate::{CpuSet, Topology};

/// One interrupt vector's affinity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vector {
    /// CPUs the vector may fire on.
    pub cpus: CpuSet,
    /// Managed vectors are spread by the kernel and never contain an
    /// isolated CPU under io_queue; pre/post vectors are unmanaged.
    pub managed: bool,
}

/// What the device asks for, in the kernel's `struct irq_affinity` terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VectorRequest {
    /// Unmanaged vectors before the spread ones (NVMe: the admin queue).
    pub pre_vectors: usize,
    /// Unmanaged vectors after the spread ones.
    pub post_vectors: usize,
    /// The device's maximum (`maxvec`): I/O queues wanted + pre + post.
    pub max_vectors: usize,
    /// The fewest vectors the device can live with (`minvec`).
    pub min_vectors: usize,
    /// Whether the driver splits vectors into sets (a `calc_sets` callback).
    pub has_sets: bool,
}

/// `irq_calc_affinity_vectors()` plus the allocator's `minvec` check.
/// Returns the vector count and whether the allocation fails with ENOSPC.
pub fn vector_count(
    request: VectorRequest,
    possible_cpus: usize,
    housekeeping_cpus: Option<usize>,
) -> (usize, bool) {
    let resv = request.pre_vectors + request.post_vectors;
    if resv > request.min_vectors || request.max_vectors < request.min_vectors {
        // The kernel returns 0 vectors (or refuses the range), and the
        // allocation fails.
        return (0, true);
    }
    let room = request.max_vectors - resv;
    let mut spread = if request.has_sets {
        room
    } else {
        possible_cpus.min(room)
    };
    let mut total = resv + spread;
    if let Some(housekeeping) = housekeeping_cpus {
        // io_queue: never more spread vectors than housekeeping CPUs, sets
        // or not; then the safety net lets a device that needs more still
        // probe.
        spread = spread.min(housekeeping);
        total = (resv + spread).max(request.min_vectors);
    }
    (total, total < request.min_vectors)
}

/// The set sizes for `affvecs` spread vectors: the requested sizes when
/// they add up; with fewer vectors the sets shrink from the last one
/// backwards (each keeps one; trailing sets go when there are fewer
/// vectors than sets); with more, set 0 grows. No request: one set.
pub fn set_sizes(requested: Option<&[usize]>, affvecs: usize) -> Vec<usize> {
    let Some(requested) = requested.filter(|r| !r.is_empty()) else {
        return if affvecs == 0 {
            Vec::new()
        } else {
            vec![affvecs]
        };
    };
    if affvecs < requested.len() {
        return vec![1; affvecs];
    }
    let mut sizes: Vec<usize> = requested.iter().map(|&s| s.max(1)).collect();
    let total: usize = sizes.iter().sum();
    if total > affvecs {
        let mut deficit = total - affvecs;
        for size in sizes.iter_mut().rev() {
            let cut = deficit.min(*size - 1);
            *size -= cut;
            deficit -= cut;
            if deficit == 0 {
                break;
            }
        }
    } else {
        sizes[0] += affvecs - total;
    }
    sizes
}

/// `irq_create_affinity_masks()`: pre vectors, each set spread on its own,
/// post vectors. `housekeeping` is `Some` under io_queue.
pub fn affinity_masks(
    topology: &Topology,
    nvecs: usize,
    pre_vectors: usize,
    post_vectors: usize,
    sets: &[usize],
    housekeeping: Option<&CpuSet>,
) -> Vec<Vector> {
    // The kernel's irq_default_affinity: every CPU up to nr_cpu_ids.
    let default_affinity = CpuSet::range(0, topology.nr_cpu_ids());
    let unmanaged = || Vector {
        cpus: default_affinity.clone(),
        managed: false,
    };
    let resv = pre_vectors + post_vectors;
    if nvecs <= resv {
        return (0..nvecs).map(|_| unmanaged()).collect();
    }
    let mut vectors: Vec<Vector> = (0..nvecs).map(|_| unmanaged()).collect();
    let mut curvec = pre_vectors;
    for &set_size in sets {
        match housekeeping {
            Some(housekeeping) => {
                let masks = group_mask_cpus_evenly(topology, set_size, housekeeping);
                let filled = masks.as_ref().map_or(&[][..], |g| g.filled_masks());
                for slot in 0..set_size {
                    // Vectors the grouping could not fill get the whole
                    // housekeeping mask, so sets stay aligned and no
                    // managed vector ever reaches an isolated CPU.
                    vectors[curvec + slot].cpus = filled
                        .get(slot)
                        .cloned()
                        .unwrap_or_else(|| housekeeping.clone());
                }
                curvec += set_size;
            }
            None => {
                let Some(groups) = group_cpus_evenly(topology, set_size) else {
                    continue;
                };
                for (slot, mask) in groups.filled_masks().iter().enumerate() {
                    vectors[curvec + slot].cpus = mask.clone();
                }
                // Mainline packs the next set right after the masks
                // produced; vectors left at the end keep the default
                // affinity and stay managed.
                curvec += groups.filled;
            }
        }
    }
    for vector in &mut vectors[pre_vectors..nvecs - post_vectors] {
        vector.managed = true;
    }
    vectors
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pre: usize, queues: usize, min: Option<usize>, has_sets: bool) -> VectorRequest {
        VectorRequest {
            pre_vectors: pre,
            post_vectors: 0,
            max_vectors: queues + pre,
            min_vectors: min.unwrap_or(pre + 1),
            has_sets,
        }
    }

    #[test]
    fn housekeeping_caps_spread_vectors() {
        assert_eq!(
            vector_count(request(1, 32, None, false), 32, None),
            (33, false)
        );
        assert_eq!(
            vector_count(request(1, 32, None, false), 32, Some(16)),
            (17, false)
        );
        assert_eq!(
            vector_count(request(1, 8, None, false), 32, Some(16)),
            (9, false)
        );
        // Sets callbacks are capped too under io_queue.
        assert_eq!(
            vector_count(request(1, 16, None, true), 4, Some(2)),
            (3, false)
        );
        assert_eq!(
            vector_count(request(1, 16, None, true), 4, None),
            (17, false)
        );
    }

    #[test]
    fn safety_net_and_enospc() {
        // A device needing 5 vectors on a machine with 2 housekeeping CPUs.
        assert_eq!(
            vector_count(request(1, 8, Some(5), false), 8, Some(2)),
            (5, false)
        );
        // Without isolation, too few CPUs for minvec fails.
        assert_eq!(
            vector_count(request(1, 8, Some(5), false), 2, None),
            (3, true)
        );
        // More reserved vectors than minvec: no vectors at all.
        let mut too_many_reserved = request(2, 8, Some(1), false);
        too_many_reserved.post_vectors = 1;
        assert_eq!(vector_count(too_many_reserved, 8, None), (0, true));
    }

    #[test]
    fn sets_shrink_from_the_back_and_grow_at_the_front() {
        assert_eq!(set_sizes(Some(&[11, 5]), 16), vec![11, 5]);
        assert_eq!(set_sizes(Some(&[11, 5]), 14), vec![11, 3]);
        assert_eq!(set_sizes(Some(&[11, 5]), 8), vec![7, 1]);
        assert_eq!(set_sizes(Some(&[11, 5]), 20), vec![15, 5]);
        assert_eq!(set_sizes(Some(&[3, 2, 2]), 2), vec![1, 1]);
        assert_eq!(set_sizes(Some(&[3, 2]), 0), Vec::<usize>::new());
        assert_eq!(set_sizes(None, 6), vec![6]);
        assert_eq!(set_sizes(None, 0), Vec::<usize>::new());
    }
}
