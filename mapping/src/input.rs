//! The specification's JSON input: `{"topology": {...}, "params": {...}}`.
//!
//! A whole example file (`{"id", "input": {...}, "expected": {...}}`) is
//! accepted too, so the public examples can be fed to `isonvme-map plan`
//! as they are.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::plan::PlanParams;
use crate::topology::CpuGroups;
use crate::{CpuSet, Topology, TopologyError};

/// Why an input document was rejected.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// Not JSON, or not the expected shape.
    #[error("the input is not a valid plan request: {0} (expected {{\"topology\": {{...}}, \"params\": {{...}}}}, as in mapping/tests/data/kernel/*.json)")]
    Json(#[from] serde_json::Error),
    /// A node key that is not a number.
    #[error("NUMA node key `{0}` is not a node number")]
    BadNodeId(String),
    /// The topology is inconsistent.
    #[error("the input topology is inconsistent: {0}")]
    Topology(#[from] TopologyError),
    /// A sibling or cluster list is not a cpulist.
    #[error("topology.{what}: {source}")]
    CpuList {
        /// Which list.
        what: &'static str,
        /// Why.
        source: crate::cpuset::CpuListError,
    },
    /// Neither a request nor an example file.
    #[error("the input is not a valid plan request: {0} (expected {{\"topology\": {{...}}, \"params\": {{...}}}}, as in mapping/tests/data/kernel/*.json)")]
    Shape(&'static str),
}

/// Deserializes sibling groups as the list streams in: each cpulist is
/// parsed straight into the groups, with no list of strings in between.
fn sibling_groups<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<CpuGroups, D::Error> {
    deserializer
        .deserialize_seq(GroupsVisitor {
            what: "siblings",
            none_allowed: false,
        })
        .map(|groups| groups.unwrap_or_default())
}

/// Cluster groups: `"none"` (no cluster masks) or a list of cpulists.
fn cluster_groups<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<CpuGroups>, D::Error> {
    deserializer.deserialize_any(GroupsVisitor {
        what: "clusters",
        none_allowed: true,
    })
}

struct GroupsVisitor {
    what: &'static str,
    none_allowed: bool,
}

impl<'de> serde::de::Visitor<'de> for GroupsVisitor {
    type Value = Option<CpuGroups>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.none_allowed {
            f.write_str("\"none\" or a list of CPU lists such as [\"0-3\", \"4-7\"]")
        } else {
            f.write_str("a list of CPU lists such as [\"0,4\", \"1,5\"]")
        }
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
        if self.none_allowed && text == "none" {
            Ok(None)
        } else {
            Err(E::invalid_value(serde::de::Unexpected::Str(text), &self))
        }
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        if self.none_allowed {
            Ok(None)
        } else {
            Err(E::invalid_type(serde::de::Unexpected::Unit, &self))
        }
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let kind = if self.what == "siblings" {
            "SMT sibling"
        } else {
            "cluster"
        };
        let mut groups = CpuGroups::default();
        let mut cpus = Vec::with_capacity(8);
        while let Some(list) = seq.next_element::<Cow<'de, str>>()? {
            parse_small_list(&list, &mut cpus).map_err(|source| {
                A::Error::custom(InputError::CpuList {
                    what: self.what,
                    source,
                })
            })?;
            groups
                .add(&cpus, kind)
                .map_err(|error| A::Error::custom(InputError::Topology(error)))?;
        }
        Ok(Some(groups))
    }
}

/// The topology as written. Sibling and cluster lists stay text until
/// duplicates are dropped: sysfs-style input repeats each list once per
/// member CPU (16,384 lists for 8192 CPUs, a few thousand distinct).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyInput<'a> {
    possible: CpuSet,
    #[serde(default)]
    present: Option<CpuSet>,
    #[serde(default)]
    online: Option<CpuSet>,
    #[serde(default)]
    nodes: BTreeMap<String, CpuSet>,
    #[serde(default, deserialize_with = "sibling_groups")]
    siblings: CpuGroups,
    #[serde(default, deserialize_with = "cluster_groups")]
    clusters: Option<CpuGroups>,
    #[serde(skip)]
    _text: std::marker::PhantomData<&'a str>,
    #[serde(default)]
    isolated: CpuSet,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestInput<'a> {
    #[serde(borrow)]
    topology: TopologyInput<'a>,
    params: PlanParams,
}

/// A request (`topology`, `params`) or a whole example file (`input`,
/// with `id`, `description` and `expected` beside it, not read), in one
/// pass: no field outside these is accepted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document<'a> {
    #[serde(default, borrow)]
    topology: Option<TopologyInput<'a>>,
    #[serde(default)]
    params: Option<PlanParams>,
    #[serde(default, borrow)]
    input: Option<RequestInput<'a>>,
    #[serde(default)]
    #[allow(dead_code)]
    id: IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    description: IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    expected: IgnoredAny,
}

/// The CPUs of a small cpulist in increasing order, without a bitset: a
/// byte-level pass over plain `3` and `2-5` tokens; anything else (strides,
/// `N`, wide ranges, bad input) goes through [`CpuSet`]'s parser and its
/// errors.
fn parse_small_list(list: &str, cpus: &mut Vec<usize>) -> Result<(), crate::cpuset::CpuListError> {
    cpus.clear();
    let fallback = |cpus: &mut Vec<usize>| {
        let set = list.parse::<CpuSet>()?;
        cpus.clear();
        cpus.extend(set.iter());
        Ok(())
    };
    let mut low: Option<usize> = None;
    let mut number: Option<usize> = None;
    let mut sorted = true;
    let mut close = |low: Option<usize>, number: Option<usize>, cpus: &mut Vec<usize>| {
        let Some(high) = number else {
            return false;
        };
        let low = low.unwrap_or(high);
        if low > high || high - low >= 64 {
            return false;
        }
        if cpus.last().is_some_and(|&last| last >= low) {
            sorted = false;
        }
        cpus.extend(low..=high);
        true
    };
    // Whitespace may surround a number, never split one.
    let mut ended = false;
    for &byte in list.as_bytes() {
        match byte {
            b'0'..=b'9' if ended => return fallback(cpus),
            b'0'..=b'9' => {
                let value = number.unwrap_or(0) * 10 + usize::from(byte - b'0');
                if value >= crate::cpuset::MAX_CPUS {
                    return fallback(cpus);
                }
                number = Some(value);
            }
            b'-' if low.is_none() && number.is_some() => {
                low = number.take();
                ended = false;
            }
            b',' => {
                if !close(low.take(), number.take(), cpus) {
                    return fallback(cpus);
                }
                ended = false;
            }
            b' ' | b'\t' | b'\n' => ended = number.is_some(),
            _ => return fallback(cpus),
        }
    }
    let blank = cpus.is_empty() && low.is_none() && number.is_none();
    if !blank && !close(low, number, cpus) {
        return fallback(cpus);
    }
    if !sorted {
        cpus.sort_unstable();
        cpus.dedup();
    }
    Ok(())
}

/// A parsed request: the machine, its isolated CPUs and the device's ask.
#[derive(Debug, Clone)]
pub struct PlanInput {
    /// The machine.
    pub topology: Topology,
    /// The isolated CPUs as given (the planner applies the boot-CPU rule).
    pub isolated: CpuSet,
    /// The device's request.
    pub params: PlanParams,
}

impl PlanInput {
    /// Parses a request (or a whole example file) from JSON text.
    pub fn from_json(text: &str) -> Result<Self, InputError> {
        let document: Document<'_> = serde_json::from_str(text)?;
        let request = match document {
            Document {
                input: Some(input),
                topology: None,
                params: None,
                ..
            } => input,
            Document {
                input: None,
                topology: Some(topology),
                params: Some(params),
                ..
            } => RequestInput { topology, params },
            Document { input: Some(_), .. } => {
                return Err(InputError::Shape(
                    "`input` (an example file) next to `topology`/`params` (a request)",
                ))
            }
            Document { topology: None, .. } => {
                return Err(InputError::Shape("missing field `topology`"))
            }
            Document { params: None, .. } => {
                return Err(InputError::Shape("missing field `params`"))
            }
        };
        let topo = request.topology;
        let present = topo.present.unwrap_or_else(|| topo.possible.clone());
        let online = topo.online.unwrap_or_else(|| present.clone());
        let mut nodes = BTreeMap::new();
        for (key, cpus) in topo.nodes {
            let id: usize = key
                .trim()
                .parse()
                .map_err(|_| InputError::BadNodeId(key.clone()))?;
            nodes.insert(id, cpus);
        }
        let (siblings, clusters) = (topo.siblings, topo.clusters);
        let topology =
            Topology::from_groups(topo.possible, present, online, nodes, siblings, clusters)?;
        Ok(PlanInput {
            topology,
            isolated: topo.isolated,
            params: request.params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(list: &str) -> Result<Vec<usize>, crate::cpuset::CpuListError> {
        let mut cpus = vec![99];
        parse_small_list(list, &mut cpus).map(|()| cpus)
    }

    proptest::proptest! {
        #[test]
        fn the_fast_list_parser_agrees_with_the_cpuset_parser(list in "[0-9 ]{1,6}|[0-9, N:/-]{0,16}|[0-9]{1,4}(-[0-9]{1,4})?(,[0-9]{1,4}(-[0-9]{1,4})?){0,3}") {
            let expected = list.parse::<CpuSet>().map(|set| set.iter().collect::<Vec<_>>());
            proptest::prop_assert_eq!(small(&list), expected, "{}", list);
        }
    }

    #[test]
    fn sibling_lists_repeated_per_cpu_are_kept_once_and_overlaps_refused() {
        let ok = r#"{"topology":{"possible":"0-3","siblings":["0-1","0-1","2,3","3,2"]},"params":{"queues":2}}"#;
        let input = PlanInput::from_json(ok).unwrap();
        assert_eq!(input.topology.siblings().groups().len(), 2);
        assert_eq!(input.topology.siblings().of(3), &[2, 3]);
        let overlap =
            r#"{"topology":{"possible":"0-3","siblings":["0-1","1-2"]},"params":{"queues":2}}"#;
        let error = PlanInput::from_json(overlap).unwrap_err().to_string();
        assert!(
            error.contains("CPU 1 appears in two different SMT sibling groups"),
            "{error}"
        );
        let bad = r#"{"topology":{"possible":"0-3","clusters":["0-1","x"]},"params":{"queues":2}}"#;
        let error = PlanInput::from_json(bad).unwrap_err().to_string();
        assert!(
            error.contains("topology.clusters") && error.contains("`x`"),
            "{error}"
        );
        let none = r#"{"topology":{"possible":"0-3","clusters":"none"},"params":{"queues":2}}"#;
        assert!(PlanInput::from_json(none)
            .unwrap()
            .topology
            .clusters()
            .is_none());
        let outside = r#"{"topology":{"possible":"0-3","siblings":["4-5"]},"params":{"queues":2}}"#;
        let error = PlanInput::from_json(outside).unwrap_err().to_string();
        assert!(error.contains("4-5"), "{error}");
    }
}
