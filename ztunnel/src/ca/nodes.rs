//! Node authentication: who is asking for certificates.
//!
//! Standalone, a token file maps node names to tokens (YAML,
//! `node1: <token>`); each node daemon holds only its own token. In
//! Kubernetes, TokenReview of the daemon's projected ServiceAccount token
//! replaces the file ([`super::token_review`]).

use std::{collections::BTreeMap, path::Path};

use super::token_review::TokenReviewer;
use crate::reload::Watched;

/// How the CA authenticates node daemons.
pub enum NodeAuth {
    /// A token file, reloaded on change.
    Tokens(Watched<NodeTokens>),
    /// TokenReview against the Kubernetes API server.
    TokenReview(Box<TokenReviewer>),
}

impl NodeAuth {
    /// The node presenting `token`, or why it is refused.
    pub async fn node_of(&self, token: &str) -> Result<String, String> {
        match self {
            Self::Tokens(tokens) => tokens
                .current()
                .node_of(token)
                .map(str::to_owned)
                .ok_or_else(|| "unknown node token".to_owned()),
            Self::TokenReview(reviewer) => reviewer.node_of(token).await,
        }
    }
}

/// Shortest token accepted: 128 bits of base64 or hex are at least this long.
const MIN_TOKEN_LEN: usize = 22;

/// Why the token file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum NodeTokensError {
    /// The file could not be read.
    #[error("reading node tokens {}: {source}", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a map of node names to tokens, or a token is too short.
    #[error("node tokens {}: {message}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The nodes the CA knows, by token.
#[derive(Debug, Default)]
pub struct NodeTokens {
    tokens: BTreeMap<String, String>,
}

impl NodeTokens {
    /// Loads the token file at `path`.
    pub fn load(path: &Path) -> Result<Self, NodeTokensError> {
        let invalid = |message: String| NodeTokensError::Invalid {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|source| NodeTokensError::Read {
            path: path.to_owned(),
            source,
        })?;
        // An empty file (or one of comments) is no map: no node could ever
        // authenticate, which is never what was meant.
        let tokens: Option<BTreeMap<String, String>> =
            serde_saphyr::from_str(&text).map_err(|err| invalid(err.to_string()))?;
        let tokens = tokens.filter(|tokens| !tokens.is_empty()).ok_or_else(|| {
            invalid("no node token in it: no node could authenticate (one `<node>: <token>` line per node)".to_owned())
        })?;
        if let Some((node, _)) = tokens.iter().find(|(_, token)| token.len() < MIN_TOKEN_LEN) {
            return Err(invalid(format!(
                "the token of node {node} is shorter than {MIN_TOKEN_LEN} characters"
            )));
        }
        Ok(Self { tokens })
    }

    /// The node holding `token`, if any. Every known token is compared in
    /// constant time, so timing does not reveal how much of a guess was right.
    pub fn node_of(&self, token: &str) -> Option<&str> {
        use subtle::ConstantTimeEq;
        let mut found = None;
        for (node, known) in &self.tokens {
            if bool::from(known.as_bytes().ct_eq(token.as_bytes())) {
                found = Some(node.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_node_of_a_token_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(
            &path,
            "node1: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\nnode2: bbbbbbbbbbbbbbbbbbbbbbbbbbbb\n",
        )
        .unwrap();
        let tokens = NodeTokens::load(&path).unwrap();
        assert_eq!(
            tokens.node_of("bbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
            Some("node2")
        );
        assert_eq!(tokens.node_of("bbbbbbbbbbbbbbbbbbbbbbbbbbb"), None);
        assert_eq!(tokens.node_of(""), None);
    }

    #[test]
    fn a_file_without_tokens_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        for text in ["", "# node1: later\n", "{}\n"] {
            std::fs::write(&path, text).unwrap();
            let err = NodeTokens::load(&path).unwrap_err().to_string();
            assert!(err.contains("no node token in it"), "{text:?}: {err}");
        }
    }

    #[test]
    fn refuses_short_tokens_and_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "node1: short\n").unwrap();
        assert!(
            NodeTokens::load(&path)
                .unwrap_err()
                .to_string()
                .contains("node1")
        );
        std::fs::write(&path, "[a, b]\n").unwrap();
        assert!(NodeTokens::load(&path).is_err());
    }
}
