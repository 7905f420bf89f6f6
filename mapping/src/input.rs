//! The specification's JSON input: `{"topology": {...}, "params": {...}}`.
//!
//! A whole example file (`{"id", "input": {...}, "expected": {...}}`) is
//! accepted too, so the public examples can be fed to `isonvme-map plan`
//! as they are.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::plan::PlanParams;
use crate::{CpuSet, Topology, TopologyError, TopologySpec};

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
}

/// `clusters`: `"none"` (no cluster masks) or a list of cpulists.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ClustersInput {
    Keyword(ClusterKeyword),
    Groups(Vec<CpuSet>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClusterKeyword {
    None,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopologyInput {
    possible: CpuSet,
    #[serde(default)]
    present: Option<CpuSet>,
    #[serde(default)]
    online: Option<CpuSet>,
    #[serde(default)]
    nodes: BTreeMap<String, CpuSet>,
    #[serde(default)]
    siblings: Vec<CpuSet>,
    #[serde(default)]
    clusters: Option<ClustersInput>,
    #[serde(default)]
    isolated: CpuSet,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestInput {
    topology: TopologyInput,
    params: PlanParams,
}

/// A whole example file: the request under `input`, with its id,
/// description and expected results beside it (not read).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExampleInput {
    input: RequestInput,
    #[serde(default)]
    #[allow(dead_code)]
    id: serde::de::IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    description: serde::de::IgnoredAny,
    #[serde(default)]
    #[allow(dead_code)]
    expected: serde::de::IgnoredAny,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Document {
    Example(ExampleInput),
    Request(RequestInput),
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
        let request = match serde_json::from_str::<Document>(text) {
            Ok(Document::Example(ExampleInput { input, .. })) | Ok(Document::Request(input)) => {
                input
            }
            // Re-parse strictly for a message that names the real problem
            // (untagged enums only say "did not match any variant").
            Err(_) => serde_json::from_str::<RequestInput>(text)?,
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
        let clusters = match topo.clusters {
            None | Some(ClustersInput::Keyword(ClusterKeyword::None)) => None,
            Some(ClustersInput::Groups(groups)) => Some(groups),
        };
        let topology = Topology::new(TopologySpec {
            possible: topo.possible,
            present,
            online,
            nodes,
            siblings: topo.siblings,
            clusters,
        })?;
        Ok(PlanInput {
            topology,
            isolated: topo.isolated,
            params: request.params,
        })
    }
}
