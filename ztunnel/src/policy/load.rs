//! Loading policy objects one at a time, as Istio applies them.
//!
//! Each object is judged on its own, so one object that cannot be applied
//! never holds back the others (a DENY shipped next to it takes effect):
//!
//! - **applied**: enforced as written;
//! - **applied, L4 only**: enforced without the HTTP attributes a node proxy
//!   cannot see (Istio's ztunnel translation does the same and says so in the
//!   object's status);
//! - **skipped**: not meant for a node proxy (`action: CUSTOM`, `targetRef(s)`
//!   naming a waypoint or gateway, a workload PeerAuthentication in the root
//!   namespace): not enforced, as by Istio's ztunnel;
//! - **refused**: invalid, as Istio's validating webhook would refuse it at
//!   `kubectl apply`; the last version of the same object that was accepted
//!   stays in force (a typo in an edited DENY must never make it vanish), and
//!   an object never accepted is not enforced, as if the apply had failed;
//! - **ignored**: another kind (a VirtualService, a RequestAuthentication):
//!   not a policy this proxy enforces.
//!
//! A file that does not parse at all (its objects cannot even be told
//! apart) keeps the objects of its last version that did; the other files
//! move on.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::{
    AuthorizationPolicy, LoadError, PeerAuthentication, PolicyError, PolicySet,
    model::{Action, AuthorizationPolicySpec, Header, List, PeerAuthenticationSpec, Resource},
};

/// What became of one policy object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectState {
    /// Enforced as written.
    Applied,
    /// Enforced without the attributes a node proxy cannot see.
    AppliedL4Only,
    /// Not meant for a node proxy: not enforced, as by Istio's ztunnel.
    Skipped,
    /// Invalid: its last accepted version, if any, stays in force.
    Refused,
    /// Not a kind this proxy enforces.
    Ignored,
}

impl ObjectState {
    /// Every state, in the order metrics list them.
    pub const ALL: [Self; 5] = [
        Self::Applied,
        Self::AppliedL4Only,
        Self::Skipped,
        Self::Refused,
        Self::Ignored,
    ];

    /// The state's name in JSON and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::AppliedL4Only => "applied_l4_only",
            Self::Skipped => "skipped",
            Self::Refused => "refused",
            Self::Ignored => "ignored",
        }
    }
}

/// One object as loaded, for `/config_dump`, `ctl policies`, `analyze`,
/// metrics and Kubernetes Events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ObjectStatus {
    /// `AuthorizationPolicy`, `PeerAuthentication`, or whatever kind was found.
    pub kind: String,
    /// `namespace/name`.
    pub id: String,
    /// Where it came from: file, document and line, or `kubernetes`.
    pub origin: String,
    /// What became of it.
    pub state: ObjectState,
    /// Whether a version of it is enforced (for a refused object: its
    /// previous version).
    pub in_force: bool,
    /// Why, in words, for every state but `applied`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A compiled policy object.
#[derive(Clone, Debug)]
enum Policy {
    Authorization(AuthorizationPolicy),
    Peer(PeerAuthentication),
}

/// One object of a document, compiled as far as it goes.
#[derive(Clone, Debug)]
struct Parsed {
    kind: String,
    id: String,
    origin: String,
    result: Result<Policy, PolicyError>,
}

/// Loads policy objects, remembering each one's last accepted version and
/// each file's last version that parsed. One per source, kept for the
/// daemon's lifetime.
#[derive(Debug)]
pub struct Loader {
    root_namespace: String,
    accepted: HashMap<(String, String), Policy>,
    files: HashMap<PathBuf, Vec<Parsed>>,
    /// Each object's state and reason at the last load: logged again only
    /// when they change, not on every reload.
    reported: HashMap<(String, String), (ObjectState, Option<String>)>,
    loads: u64,
    loads_with_problems: u64,
}

impl Loader {
    /// A loader for a mesh whose policies of `root_namespace` apply mesh-wide.
    pub fn new(root_namespace: &str) -> Self {
        Self {
            root_namespace: root_namespace.to_owned(),
            accepted: HashMap::new(),
            files: HashMap::new(),
            reported: HashMap::new(),
            loads: 0,
            loads_with_problems: 0,
        }
    }

    /// Loads every `*.yaml`/`*.yml` file of `dir`. Fails only when the
    /// directory itself cannot be read.
    pub fn load_dir(&mut self, dir: &Path) -> Result<PolicySet, LoadError> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| LoadError::Read {
                path: dir.to_owned(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension()
                    .is_some_and(|ext| ext == "yaml" || ext == "yml")
            })
            .collect();
        files.sort();
        let mut objects = Vec::new();
        let mut file_errors = Vec::new();
        let mut now = HashMap::new();
        for file in files {
            let name = file.display().to_string();
            let parsed = std::fs::read_to_string(&file)
                .map_err(|err| err.to_string())
                .and_then(|text| parse_stream(&text, &name, &self.root_namespace));
            let parsed = parsed.unwrap_or_else(|problem| {
                let kept = self.files.get(&file).cloned().unwrap_or_default();
                file_errors.push(format!(
                    "{name}: {problem}; {}",
                    if kept.is_empty() {
                        "none of its objects is in force"
                    } else {
                        "the objects of its last version that parsed stay in force"
                    }
                ));
                kept
            });
            objects.extend(parsed.iter().cloned());
            now.insert(file, parsed);
        }
        self.files = now;
        Ok(self.settle(objects, file_errors))
    }

    /// Loads one YAML stream (several documents, `kind: List` too); `origin`
    /// names it in statuses.
    pub fn load_text(&mut self, origin: &str, text: &str) -> PolicySet {
        match parse_stream(text, origin, &self.root_namespace) {
            Ok(objects) => self.settle(objects, Vec::new()),
            Err(problem) => self.settle(Vec::new(), vec![format!("{origin}: {problem}")]),
        }
    }

    /// Loads objects from the Kubernetes API, each a JSON document; an
    /// object that cannot be read at all is reported and left out.
    pub fn load_objects(&mut self, documents: impl IntoIterator<Item = String>) -> PolicySet {
        let mut objects = Vec::new();
        let mut errors = Vec::new();
        for text in documents {
            if let Err(problem) =
                parse_document(&text, "kubernetes", &self.root_namespace, &mut objects)
            {
                errors.push(format!("kubernetes: {problem}"));
            }
        }
        self.settle(objects, errors)
    }

    /// Decides each object's state and builds the set in force.
    fn settle(&mut self, objects: Vec<Parsed>, file_errors: Vec<String>) -> PolicySet {
        let mut set = PolicySet {
            root_namespace: self.root_namespace.clone(),
            ..PolicySet::default()
        };
        let mut accepted = HashMap::new();
        let mut reported_now = HashMap::new();
        let mut first_seen: HashMap<(String, String), String> = HashMap::new();
        for object in objects {
            let key = (object.kind.clone(), object.id.clone());
            let status = |state, in_force, reason: Option<String>| ObjectStatus {
                kind: object.kind.clone(),
                id: object.id.clone(),
                origin: object.origin.clone(),
                state,
                in_force,
                reason,
            };
            if let Some(first) = first_seen.get(&key) {
                // Kubernetes holds one object per kind, namespace and name.
                set.objects.push(status(
                    ObjectState::Refused,
                    true,
                    Some(format!(
                        "defined more than once: the definition in {first} is in force"
                    )),
                ));
                continue;
            }
            first_seen.insert(key.clone(), object.origin.clone());
            let (state, reason, policy) = match &object.result {
                Ok(policy) => {
                    let l4_only = policy.l4_only();
                    let state = if l4_only.is_some() {
                        ObjectState::AppliedL4Only
                    } else {
                        ObjectState::Applied
                    };
                    (state, l4_only, Some(policy.clone()))
                }
                Err(err @ PolicyError::Unsupported { .. }) => {
                    (ObjectState::Skipped, Some(err.to_string()), None)
                }
                Err(err @ PolicyError::OtherKind(_)) => {
                    (ObjectState::Ignored, Some(err.to_string()), None)
                }
                Err(err) => {
                    let previous = self.accepted.get(&key).cloned();
                    let outcome = if previous.is_some() {
                        "its previous version stays in force"
                    } else {
                        "it is not enforced"
                    };
                    (
                        ObjectState::Refused,
                        Some(format!("{err}; {outcome}")),
                        previous,
                    )
                }
            };
            let reported = (state, reason.clone());
            if self.reported.get(&key) != Some(&reported)
                && let Some(reason) = &reason
            {
                let (kind, policy, origin) = (&object.kind, &object.id, &object.origin);
                if state == ObjectState::Refused {
                    tracing::warn!(%kind, %policy, %origin, "policy refused: {reason}");
                } else {
                    tracing::info!(%kind, %policy, state = state.as_str(), "{reason}");
                }
            }
            reported_now.insert(key.clone(), reported);
            set.objects.push(status(state, policy.is_some(), reason));
            if let Some(policy) = policy {
                accepted.insert(key, policy.clone());
                match policy {
                    Policy::Authorization(p) => set.authorization.push(p),
                    Policy::Peer(p) => set.peer_authentication.push(p),
                }
            }
        }
        for error in &file_errors {
            tracing::warn!("policy file refused: {error}");
        }
        self.accepted = accepted;
        self.reported = reported_now;
        self.loads += 1;
        let refused = set.objects.iter().any(|o| o.state == ObjectState::Refused);
        if refused || !file_errors.is_empty() {
            self.loads_with_problems += 1;
        }
        set.file_errors = file_errors;
        set.loads = self.loads;
        set.loads_with_problems = self.loads_with_problems;
        set.sort();
        set
    }
}

impl Policy {
    /// Why it is enforced at L4 only, when it is.
    fn l4_only(&self) -> Option<String> {
        let Self::Authorization(policy) = self else {
            return None;
        };
        if policy.l7_attributes.is_empty() {
            return None;
        }
        let found = policy
            .l7_attributes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        let effect = match policy.action {
            Action::Deny if policy.rules_without_effect().len() == policy.rule_count() => {
                "after omitting them no rule can match: this DENY denies nothing here; a waypoint enforces it"
            }
            Action::Deny => {
                "its rules deny on their L4 attributes alone, which is stricter than written"
            }
            Action::Allow => {
                "ALLOW rules naming them match nothing, which is stricter than written"
            }
            Action::Audit | Action::Custom => "its rules audit on their L4 attributes alone",
        };
        Some(format!(
            "uses HTTP attributes a node proxy cannot see (found: {found}); {effect}"
        ))
    }
}

/// The objects of a YAML stream; an error when a document cannot be told
/// apart as an object (the whole stream is then unusable).
/// `root` is the mesh-wide namespace.
fn parse_stream(text: &str, origin: &str, root: &str) -> Result<Vec<Parsed>, String> {
    let mut objects = Vec::new();
    for (index, (line, document)) in documents(text).into_iter().enumerate() {
        let at = format!("document {} (line {line})", index + 1);
        parse_document(document, &format!("{origin} {at}"), root, &mut objects)
            .map_err(|problem| format!("{at}: {problem}"))?;
    }
    Ok(objects)
}

/// Parses one document (a `kind: List` into its items) into `out`.
fn parse_document(
    text: &str,
    origin: &str,
    root: &str,
    out: &mut Vec<Parsed>,
) -> Result<(), String> {
    let header: Header =
        serde_saphyr::from_str(text).map_err(|err| format!("not a Kubernetes object: {err}"))?;
    // `kind: List` (kubectl) holds whole objects; `<Kind>List` (the API's
    // own list) holds objects without their kind and apiVersion.
    if let Some(item_kind) = header.kind.strip_suffix("List") {
        let list: List =
            serde_saphyr::from_str(text).map_err(|err| format!("not a List: {err}"))?;
        for (index, mut item) in list.items.into_iter().enumerate() {
            if !item_kind.is_empty() && item.get("kind").is_none() {
                item["kind"] = item_kind.into();
                item["apiVersion"] = header.api_version.clone().into();
            }
            let origin = format!("{origin} item {}", index + 1);
            // JSON is YAML: each item goes through the same parser.
            parse_document(&item.to_string(), &origin, root, out)
                .map_err(|problem| format!("item {}: {problem}", index + 1))?;
        }
        return Ok(());
    }
    out.push(Parsed {
        id: format!("{}/{}", header.metadata.namespace, header.metadata.name),
        result: compile(&header, text, root),
        kind: header.kind,
        origin: origin.to_owned(),
    });
    Ok(())
}

/// Compiles one object of a kind this proxy enforces.
fn compile(header: &Header, text: &str, root: &str) -> Result<Policy, PolicyError> {
    let kind = header.kind.as_str();
    if !matches!(kind, "AuthorizationPolicy" | "PeerAuthentication") {
        let what = if header.api_version.contains("istio.io/") {
            "another Istio kind; Istio's node proxy does not enforce it either"
        } else {
            "not an Istio security policy"
        };
        return Err(PolicyError::OtherKind(format!(
            "{kind} ({}) is {what}",
            header.api_version
        )));
    }
    if !matches!(
        header.api_version.as_str(),
        "security.istio.io/v1" | "security.istio.io/v1beta1"
    ) {
        return Err(PolicyError::Field {
            field: "apiVersion".to_owned(),
            message: format!(
                "{:?} is not security.istio.io/v1 or v1beta1",
                header.api_version
            ),
        });
    }
    if header.metadata.name.is_empty() {
        return Err(PolicyError::Field {
            field: "metadata.name".to_owned(),
            message: "an object needs a name".to_owned(),
        });
    }
    let parse = |err: serde_saphyr::Error| PolicyError::Parse(err.to_string());
    if kind == "AuthorizationPolicy" {
        let resource: Resource<AuthorizationPolicySpec> =
            serde_saphyr::from_str(text).map_err(parse)?;
        AuthorizationPolicy::compile(&resource.metadata, &resource.spec).map(Policy::Authorization)
    } else {
        let resource: Resource<PeerAuthenticationSpec> =
            serde_saphyr::from_str(text).map_err(parse)?;
        PeerAuthentication::compile(&resource.metadata, &resource.spec, root).map(Policy::Peer)
    }
}

/// Splits a YAML stream at `---` lines; returns each non-empty document with
/// the number of its first line with content.
fn documents(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut start_line = 1;
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let is_separator = line.starts_with("---")
            && line[3..]
                .trim_start()
                .chars()
                .next()
                .is_none_or(|c| c == '#');
        if is_separator {
            out.push((start_line, &text[start..offset]));
            start = offset + line.len();
            start_line = number + 2;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start..]));
    // Numbered from its first line with content; documents without any are
    // left out.
    let is_content = |line: &str| !line.trim().is_empty() && !line.trim_start().starts_with('#');
    out.into_iter()
        .filter_map(|(line, doc)| {
            let skipped = doc.lines().position(is_content)?;
            Some((line + skipped, doc))
        })
        .collect()
}
