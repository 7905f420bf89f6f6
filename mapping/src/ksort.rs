//! The kernel's `sort()` (lib/sort.c), reproduced step for step.
//!
//! The policy sorts NUMA nodes and clusters by CPU count with this heapsort.
//! It is not stable, and which of several equal nodes comes first is visible
//! in the resulting CPU groups, so a library sort (stable or not) would give
//! different — equally valid, but not kernel-identical — plans. This is the
//! current lib/sort.c: bottom-up sift-down and, while more than three
//! elements remain, extraction of the two largest elements per round.

use std::cmp::Ordering;

/// Sorts `items` in place exactly as the kernel's `sort(base, num, size,
/// cmp, NULL)` orders them. `cmp` returns the sign of the kernel comparator.
pub fn kernel_sort<T>(items: &mut [T], mut cmp: impl FnMut(&T, &T) -> Ordering) {
    let num = items.len();
    // Indices instead of byte offsets; `parent(i)` is `(i - 1) / 2`.
    let mut heap_start = num / 2;
    if heap_start == 0 {
        return;
    }
    let mut end = num;
    let mut shift = 0usize;
    loop {
        if heap_start != 0 {
            // Building the heap (shift is 0), or sifting the root after a
            // two-element extraction left `heap_start` at child 1 or 2.
            heap_start -= 1 << shift;
        } else if end > 3 {
            // Extract the two largest: the root, then the larger child.
            end -= 1;
            items.swap(0, end);
            shift = usize::from(cmp(&items[1], &items[2]) != Ordering::Greater);
            heap_start = 1 << shift;
            end -= 1;
            items.swap(heap_start, end);
        } else {
            break;
        }

        // Bottom-up sift-down of `heap_start`: find the path of larger
        // children to a leaf, then climb back to where the element belongs.
        let mut b = heap_start;
        let (mut c, mut d);
        loop {
            c = 2 * b + 1;
            d = c + 1;
            if d >= end {
                break;
            }
            b = if cmp(&items[c], &items[d]) == Ordering::Greater {
                c
            } else {
                d
            };
        }
        if d == end {
            b = c;
        }
        while b != heap_start && cmp(&items[heap_start], &items[b]) != Ordering::Less {
            b = (b - 1) / 2;
        }
        let target = b;
        while b != heap_start {
            b = (b - 1) / 2;
            items.swap(b, target);
        }
    }
    end -= 1;
    items.swap(0, end);
    if end == 2 && cmp(&items[0], &items[1]) == Ordering::Greater {
        items.swap(0, 1);
    }
}

/// The kernel's `ncpus_cmp_func`: `l - r` on unsigned counts, read as a
/// signed int. The wrap-around is deliberate: `UINT_MAX` (a node without
/// CPUs) compares *below* every real count, so empty nodes sort first.
pub fn ncpus_cmp(l: u32, r: u32) -> Ordering {
    (l.wrapping_sub(r) as i32).cmp(&0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_of_equal(n: usize) -> Vec<usize> {
        let mut items: Vec<(u32, usize)> = (0..n).map(|i| (7, i)).collect();
        kernel_sort(&mut items, |a, b| ncpus_cmp(a.0, b.0));
        items.into_iter().map(|(_, id)| id).collect()
    }

    #[test]
    fn equal_elements_come_out_in_the_kernels_permutation() {
        // Two equal nodes: node 1, then node 0 (the specification's example).
        assert_eq!(order_of_equal(2), vec![1, 0]);
        // Eight equal clusters, as seen in kernel results for SMT2 nodes.
        assert_eq!(order_of_equal(8), vec![1, 3, 4, 5, 6, 7, 2, 0]);
        assert_eq!(order_of_equal(0), Vec::<usize>::new());
        assert_eq!(order_of_equal(1), vec![0]);
    }

    #[test]
    fn sorts_ascending() {
        let mut values: Vec<u32> = vec![5, 3, 9, 1, 1, 8, 2, 7, 6, 4, 0, 3];
        kernel_sort(&mut values, |a, b| ncpus_cmp(*a, *b));
        let mut expected = values.clone();
        expected.sort_unstable();
        assert_eq!(values, expected);
    }

    #[test]
    fn empty_nodes_sort_first() {
        let mut values = vec![4, u32::MAX, 2, u32::MAX, 9];
        kernel_sort(&mut values, |a, b| ncpus_cmp(*a, *b));
        assert_eq!(&values[..2], &[u32::MAX, u32::MAX]);
        assert_eq!(&values[2..], &[2, 4, 9]);
    }

    proptest::proptest! {
        #[test]
        fn always_sorts(mut values in proptest::collection::vec(0u32..50, 0..200)) {
            kernel_sort(&mut values, |a, b| ncpus_cmp(*a, *b));
            proptest::prop_assert!(values.windows(2).all(|w| w[0] <= w[1]));
        }
    }
}
