//! A set of CPU numbers with the kernel's cpulist syntax.
//!
//! `CpuSet` is the value type every other part of the policy works on. It
//! parses and prints the syntax of `/sys/devices/system/cpu/online`,
//! `isolcpus=` and `smp_affinity_list` (`0-3,8`, `0-15:2/4`, `N`) and
//! iterates CPUs in increasing order, as the kernel's `for_each_cpu` does.

use std::fmt;
use std::str::FromStr;

use fixedbitset::FixedBitSet;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Highest CPU number (exclusive) a list may name. Linux's `NR_CPUS` tops
/// out at 8192 today; the margin keeps room for future kernels while still
/// refusing a typo such as `0-4294967295` that would allocate gigabytes.
pub const MAX_CPUS: usize = 1 << 16;

/// Why a cpulist could not be parsed. Every variant names the offending
/// token so the message tells the user what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuListError {
    /// A token is not a number, a range or a strided range.
    #[error("malformed CPU list token `{token}` in `{list}`: expected a CPU number (`3`), a range (`0-7`) or a strided range (`0-15:2/4`)")]
    Malformed {
        /// The bad token.
        token: String,
        /// The whole list, for context.
        list: String,
    },
    /// A range whose start is above its end.
    #[error("CPU range `{token}` in `{list}` runs backwards: write the lower CPU first")]
    Backwards {
        /// The bad token.
        token: String,
        /// The whole list, for context.
        list: String,
    },
    /// A CPU number at or above [`MAX_CPUS`].
    #[error("CPU {cpu} in `{list}` is beyond the largest supported CPU number {max}")]
    TooLarge {
        /// The CPU number given.
        cpu: usize,
        /// The whole list, for context.
        list: String,
        /// The largest CPU number accepted.
        max: usize,
    },
    /// `N` (the last CPU) was used where the CPU count is not known.
    #[error(
        "`N` in `{list}` means the last CPU, which is unknown here: write the CPU number instead"
    )]
    LastCpuUnknown {
        /// The whole list, for context.
        list: String,
    },
}

/// A set of CPU numbers.
///
/// Iteration is in increasing CPU order. Two sets are equal when they hold
/// the same CPUs, whatever capacity they were built with.
#[derive(Clone, Default)]
pub struct CpuSet {
    bits: FixedBitSet,
}

impl CpuSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set with room for CPUs `0..capacity` without reallocating.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            bits: FixedBitSet::with_capacity(capacity),
        }
    }

    /// The set `{start, start+1, …, end-1}`.
    pub fn range(start: usize, end: usize) -> Self {
        let mut set = Self::with_capacity(end);
        if start < end {
            set.bits.insert_range(start..end);
        }
        set
    }

    /// The set holding just `cpu`.
    pub fn single(cpu: usize) -> Self {
        let mut set = Self::with_capacity(cpu + 1);
        set.insert(cpu);
        set
    }

    /// Adds `cpu`; returns whether it was newly added.
    pub fn insert(&mut self, cpu: usize) -> bool {
        if cpu >= self.bits.len() {
            // Geometric growth: a set filled in increasing order (collected
            // from an iterator) reallocates a logarithmic number of times.
            self.bits.grow((cpu + 1).max(2 * self.bits.len()));
        }
        !self.bits.put(cpu)
    }

    /// Removes `cpu`; returns whether it was present.
    pub fn remove(&mut self, cpu: usize) -> bool {
        let present = self.contains(cpu);
        if present {
            self.bits.set(cpu, false);
        }
        present
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: usize) -> bool {
        self.bits.contains(cpu)
    }

    /// The number of CPUs in the set (the kernel's `cpumask_weight`).
    pub fn len(&self) -> usize {
        self.bits.count_ones(..)
    }

    /// Whether the set holds no CPU.
    pub fn is_empty(&self) -> bool {
        self.bits.is_clear()
    }

    /// The lowest CPU, if any.
    pub fn first(&self) -> Option<usize> {
        self.bits.minimum()
    }

    /// The highest CPU, if any.
    pub fn last(&self) -> Option<usize> {
        self.bits.maximum()
    }

    /// The lowest CPU above `cpu`, if any (the kernel's `cpumask_next`).
    pub fn next_after(&self, cpu: usize) -> Option<usize> {
        self.iter().find(|&c| c > cpu)
    }

    /// CPUs in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bits.ones()
    }

    /// Adds every CPU of `other`.
    pub fn union_with(&mut self, other: &CpuSet) {
        self.bits.union_with(&other.bits);
    }

    /// Keeps only the CPUs also in `other`.
    pub fn intersect_with(&mut self, other: &CpuSet) {
        self.bits.intersect_with(&other.bits);
    }

    /// Removes every CPU of `other`.
    pub fn difference_with(&mut self, other: &CpuSet) {
        self.bits.difference_with(&other.bits);
    }

    /// `self ∪ other`.
    pub fn union(&self, other: &CpuSet) -> CpuSet {
        let mut out = self.clone();
        out.union_with(other);
        out
    }

    /// `self ∩ other`.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        let mut out = self.clone();
        out.intersect_with(other);
        out
    }

    /// `self − other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        let mut out = self.clone();
        out.difference_with(other);
        out
    }

    /// `|self ∩ other|` without building the intersection.
    pub fn intersection_len(&self, other: &CpuSet) -> usize {
        self.bits.intersection_count(&other.bits)
    }

    /// Whether the two sets share a CPU.
    pub fn intersects(&self, other: &CpuSet) -> bool {
        !self.bits.is_disjoint(&other.bits)
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.bits.is_subset(&other.bits)
    }

    /// Removes every CPU.
    pub fn clear(&mut self) {
        self.bits.clear();
    }

    /// Parses a cpulist. `N` stands for the last CPU and is accepted only
    /// when `nr_cpu_ids` is given (it is then `nr_cpu_ids - 1`), as in the
    /// kernel's `bitmap_parselist`. An empty or blank list is the empty set.
    pub fn parse_list(list: &str, nr_cpu_ids: Option<usize>) -> Result<CpuSet, CpuListError> {
        let trimmed = list.trim();
        if trimmed.is_empty() {
            return Ok(CpuSet::new());
        }
        // Size the set once, for the highest number written (a bad or
        // oversized one is refused by the parse below).
        let highest = trimmed
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|digits| digits.parse::<usize>().ok())
            .filter(|&cpu| cpu < MAX_CPUS)
            .max()
            .unwrap_or(0);
        let last = if trimmed.contains('N') {
            nr_cpu_ids.unwrap_or(0)
        } else {
            0
        };
        let mut set = CpuSet::with_capacity((highest + 1).max(last).min(MAX_CPUS));
        for raw_token in trimmed.split(',') {
            let token = raw_token.trim();
            parse_token(token, trimmed, nr_cpu_ids, &mut set)?;
        }
        Ok(set)
    }

    /// The cpulist spelling, e.g. `0-3,8`; empty for the empty set.
    pub fn to_cpulist(&self) -> String {
        self.to_string()
    }
}

fn parse_token(
    token: &str,
    list: &str,
    nr_cpu_ids: Option<usize>,
    set: &mut CpuSet,
) -> Result<(), CpuListError> {
    let malformed = || CpuListError::Malformed {
        token: token.to_string(),
        list: list.to_string(),
    };
    let number = |text: &str| -> Result<usize, CpuListError> {
        let text = text.trim();
        let cpu = if text == "N" {
            match nr_cpu_ids {
                Some(n) if n > 0 => n - 1,
                _ => {
                    return Err(CpuListError::LastCpuUnknown {
                        list: list.to_string(),
                    })
                }
            }
        } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            text.parse::<usize>().map_err(|_| CpuListError::TooLarge {
                cpu: usize::MAX,
                list: list.to_string(),
                max: MAX_CPUS - 1,
            })?
        } else {
            return Err(malformed());
        };
        if cpu >= MAX_CPUS {
            return Err(CpuListError::TooLarge {
                cpu,
                list: list.to_string(),
                max: MAX_CPUS - 1,
            });
        }
        Ok(cpu)
    };

    if token.is_empty() {
        return Err(malformed());
    }
    let (range_part, stride_part) = match token.split_once(':') {
        Some((range, stride)) => (range, Some(stride)),
        None => (token, None),
    };
    let (start, end) = match range_part.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => {
            if stride_part.is_some() {
                return Err(malformed());
            }
            let cpu = number(range_part)?;
            (cpu, cpu)
        }
    };
    if start > end {
        return Err(CpuListError::Backwards {
            token: token.to_string(),
            list: list.to_string(),
        });
    }
    let (used, group) = match stride_part {
        None => (1, 1),
        Some(stride) => {
            let (used, group) = stride.split_once('/').ok_or_else(malformed)?;
            let digits = |s: &str| {
                let s = s.trim();
                if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                    s.parse::<usize>().ok()
                } else {
                    None
                }
            };
            let used = digits(used).ok_or_else(malformed)?;
            let group = digits(group).ok_or_else(malformed)?;
            // The kernel rejects a zero group or more used than the group has.
            if group == 0 || used == 0 || used > group {
                return Err(malformed());
            }
            (used, group)
        }
    };
    if set.bits.len() <= end {
        set.bits.grow(end + 1);
    }
    if used == group {
        set.bits.insert_range(start..end + 1);
    } else {
        let mut group_start = start;
        while group_start <= end {
            let used_end = (group_start + used).min(end + 1);
            set.bits.insert_range(group_start..used_end);
            group_start += group;
        }
    }
    Ok(())
}

impl FromStr for CpuSet {
    type Err = CpuListError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CpuSet::parse_list(s, None)
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut cpus = self.iter().peekable();
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end += 1;
                cpus.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl PartialEq for CpuSet {
    fn eq(&self, other: &Self) -> bool {
        self.bits.is_subset(&other.bits) && other.bits.is_subset(&self.bits)
    }
}

impl Eq for CpuSet {}

impl std::hash::Hash for CpuSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        for cpu in self.iter() {
            cpu.hash(state);
        }
    }
}

impl FromIterator<usize> for CpuSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        let mut set = CpuSet::new();
        for cpu in iter {
            set.insert(cpu);
        }
        set
    }
}

impl Serialize for CpuSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for CpuSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Parses the cpulist where it lies, without copying it first.
        struct CpuListVisitor;
        impl serde::de::Visitor<'_> for CpuListVisitor {
            type Value = CpuSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CPU list such as \"0-3,8\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<CpuSet, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(CpuListVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ranges() {
        let set: CpuSet = "0-3,8,10-11".parse().unwrap();
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(set.to_string(), "0-3,8,10-11");
        assert_eq!(set.len(), 7);
    }

    #[test]
    fn accepts_unordered_and_overlapping_spellings() {
        let set: CpuSet = "8, 2-3,0-2".parse().unwrap();
        assert_eq!(set.to_string(), "0-3,8");
    }

    #[test]
    fn empty_and_blank_lists_are_empty_sets() {
        assert!("".parse::<CpuSet>().unwrap().is_empty());
        assert!(" \n".parse::<CpuSet>().unwrap().is_empty());
        assert_eq!(CpuSet::new().to_string(), "");
    }

    #[test]
    fn strided_ranges_follow_the_kernel() {
        // Documentation/admin-guide/cpu-lists: 0-9:2/5 is 0,1,5,6.
        let set: CpuSet = "0-9:2/5".parse().unwrap();
        assert_eq!(set.to_string(), "0-1,5-6");
        let set: CpuSet = "100-2000:2/25".parse().unwrap();
        assert_eq!(set.first(), Some(100));
        assert!(set.contains(101) && !set.contains(102) && set.contains(125));
    }

    #[test]
    fn last_cpu_needs_the_cpu_count() {
        assert_eq!(
            CpuSet::parse_list("2-N", Some(8)).unwrap().to_string(),
            "2-7"
        );
        assert!(matches!(
            "2-N".parse::<CpuSet>(),
            Err(CpuListError::LastCpuUnknown { .. })
        ));
    }

    #[test]
    fn malformed_lists_name_the_bad_token() {
        for (list, token) in [
            ("0-3,x", "x"),
            ("0-3,,4", ""),
            ("1-", "1-"),
            ("-1", "-1"),
            ("0-3:0/4", "0-3:0/4"),
            ("0-3:5/4", "0-3:5/4"),
            ("3:1/2", "3:1/2"),
            ("+1", "+1"),
        ] {
            match list.parse::<CpuSet>() {
                Err(CpuListError::Malformed { token: bad, .. }) => assert_eq!(bad, token),
                other => panic!("{list}: expected Malformed, got {other:?}"),
            }
        }
        let err = "0-3,x".parse::<CpuSet>().unwrap_err();
        assert!(err.to_string().contains("`x`"), "{err}");
    }

    #[test]
    fn backwards_and_huge_ranges_are_refused() {
        assert!(matches!(
            "7-3".parse::<CpuSet>(),
            Err(CpuListError::Backwards { .. })
        ));
        assert!(matches!(
            "0-4294967295".parse::<CpuSet>(),
            Err(CpuListError::TooLarge { .. })
        ));
        assert!(matches!(
            "99999999999999999999999".parse::<CpuSet>(),
            Err(CpuListError::TooLarge { .. })
        ));
    }

    #[test]
    fn equality_ignores_capacity() {
        let mut a = CpuSet::with_capacity(4096);
        a.insert(3);
        assert_eq!(a, CpuSet::single(3));
        assert_ne!(a, CpuSet::single(4));
    }

    #[test]
    fn set_operations() {
        let a: CpuSet = "0-7".parse().unwrap();
        let b: CpuSet = "4-11".parse().unwrap();
        assert_eq!(a.intersection(&b).to_string(), "4-7");
        assert_eq!(a.union(&b).to_string(), "0-11");
        assert_eq!(a.difference(&b).to_string(), "0-3");
        assert_eq!(a.intersection_len(&b), 4);
        assert!(a.intersects(&b));
        assert!(CpuSet::range(2, 4).is_subset(&a));
        assert_eq!(a.next_after(3), Some(4));
        assert_eq!(a.next_after(7), None);
        let wide: CpuSet = "1,200".parse().unwrap();
        assert_eq!(wide.next_after(1), Some(200));
    }
}
