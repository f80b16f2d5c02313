//! The workload registry: which nodes, namespaces, pods and services exist.
//!
//! It is the daemon's view of the cluster. In standalone mode it is read from a
//! YAML file ([`Registry::load`]; format in `docs/registry.md`), in Kubernetes
//! it will be fed by watches; both produce the same validated [`Registry`].
//!
//! Parsing and validation happen once, at the edge: a [`Registry`] value is
//! always internally consistent (every pod names a known node and namespace,
//! no address belongs to two workloads), so the data path never re-checks it.

mod enrolment;
mod labels;
mod model;
pub mod naming;
mod patch;
mod validate;
pub mod waypoint;

use std::path::{Path, PathBuf};

pub use enrolment::{Enrolment, LabelSelector};
pub use labels::Labels;
pub use model::{Namespace, Node, Pod, Registry, Service, ServicePort};
pub use patch::{Patched, PodChange};

/// Why a registry could not be loaded. Each variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file could not be read.
    #[error("reading registry file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The text is not valid YAML for the registry schema (unknown field, wrong type, ...).
    #[error("parsing registry{}: {message}", origin.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when the text came from one.
        origin: Option<PathBuf>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The document parsed but is inconsistent.
    #[error("invalid registry: {0}")]
    Invalid(String),
}

impl Registry {
    /// Parses and validates a registry from YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, RegistryError> {
        Self::parse(text, None)
    }

    /// Reads, parses and validates a registry file, and builds its lookup
    /// index ([`Registry::build_index`]): ready to publish.
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let registry = Self::parse(&text, Some(path))?;
        registry.build_index();
        Ok(registry)
    }

    fn parse(text: &str, origin: Option<&Path>) -> Result<Self, RegistryError> {
        let mut options = serde_saphyr::Options::default();
        options.budget = Some(budget_for(text));
        let registry: Registry =
            serde_saphyr::from_str_with_options(text, options).map_err(|err| {
                RegistryError::Parse {
                    origin: origin.map(Path::to_owned),
                    message: err.to_string(),
                }
            })?;
        validate::validate(&registry).map_err(RegistryError::Invalid)?;
        Ok(registry)
    }

    /// Checks a registry built in code (by the Kubernetes source) as a
    /// loaded one is checked.
    pub fn validated(self) -> Result<Self, RegistryError> {
        validate::validate(&self).map_err(RegistryError::Invalid)?;
        Ok(self)
    }

    /// Serialises the registry as YAML, in the format [`Registry::from_yaml`] reads.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("the registry model always serialises")
    }
}

/// The parser's limits for `text`: its defaults, raised in proportion to
/// the text. Their node count (250,000) stops a registry near 14,000 pods,
/// and a cluster that grows past it would stop being updated; the text is
/// already in memory, so what it can make the parser do is bounded by its
/// size (aliases, which could multiply it, keep their default limits).
fn budget_for(text: &str) -> serde_saphyr::Budget {
    let mut budget = serde_saphyr::Budget::default();
    // A node (scalar, sequence or mapping) takes 2 bytes or more of text,
    // an event as many.
    budget.max_nodes = budget.max_nodes.max(text.len() / 2);
    budget.max_events = budget.max_events.max(text.len());
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(text.len());
    budget
}

#[cfg(test)]
mod tests;

/// Labels from `key, value` pairs, for tests.
#[cfg(test)]
pub(crate) fn labels_of(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
