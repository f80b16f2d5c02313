//! Node authentication in Kubernetes: TokenReview of the daemon's projected
//! ServiceAccount token.
//!
//! The daemon presents a token the kubelet projected into its pod with the
//! CA's audience. The API server says whether it is valid (signature, expiry,
//! the pod still exists) and for which audiences, whose it is, and — for a
//! token bound to a pod, since Kubernetes 1.30 — the node that pod runs on.
//! The CA accepts only tokens of the node proxies' ServiceAccounts issued
//! for one of its audiences, and binds the request to the node named in the
//! token: a daemon can never ask for another node's identities. Several
//! accounts and audiences may be trusted at once (as istiod's
//! `CA_TRUSTED_NODE_ACCOUNTS`), so one CA serves this project's daemons and
//! Istio's ztunnel (`istio-system/ztunnel`, audience `istio-ca`) while a
//! cluster migrates between them.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};
use tokio::sync::Semaphore;

/// The TokenReview `extra` key naming the node of the token's pod.
const NODE_NAME_CLAIM: &str = "authentication.kubernetes.io/node-name";

/// TokenReviews in flight at most. Every certificate request is one; in a
/// cold start every node asks at once, and without a bound the CA opened a
/// connection to the API server per request waiting (tens of thousands)
/// until it ran out of file descriptors. 64 reviews of a few ms each are
/// more than the CA signs in the same time.
const REVIEWS_IN_FLIGHT: usize = 64;

/// Asks the API server who a token belongs to.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audiences: Vec<String>,
    usernames: Vec<String>,
    in_flight: Semaphore,
}

/// The username TokenReview reports for tokens of ServiceAccount
/// `service_account` (`namespace/name`).
pub fn service_account_username(service_account: &str) -> Result<String, String> {
    let (namespace, name) = service_account
        .split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| {
            format!(
                "the node daemons' ServiceAccount must be namespace/name, got {service_account:?}"
            )
        })?;
    Ok(format!("system:serviceaccount:{namespace}:{name}"))
}

impl TokenReviewer {
    /// A reviewer accepting tokens issued for one of `audiences` to one of
    /// `usernames` (see [`service_account_username`]).
    pub fn new(client: Client, audiences: Vec<String>, usernames: Vec<String>) -> Self {
        Self {
            api: Api::all(client),
            audiences,
            usernames,
            in_flight: Semaphore::new(REVIEWS_IN_FLIGHT),
        }
    }

    /// The node whose daemon holds `token`, or why it is refused.
    pub async fn node_of(&self, token: &str) -> Result<String, String> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        // Never closed: the permit is always granted, in turn.
        let permit = self.in_flight.acquire().await.ok();
        let reviewed = self.api.create(&PostParams::default(), &review).await;
        drop(permit);
        let reviewed = reviewed.map_err(|err| {
            format!("the token could not be reviewed (TokenReview failed: {err})")
        })?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(format!(
                "the token is not valid: {}",
                status
                    .error
                    .as_deref()
                    .unwrap_or("the API server did not authenticate it")
            ));
        }
        if !status.audiences.as_ref().is_some_and(|audiences| {
            audiences
                .iter()
                .any(|audience| self.audiences.contains(audience))
        }) {
            return Err(format!(
                "the token was not issued for audience {}",
                self.audiences.join(" or ")
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if !self.usernames.contains(&username) {
            return Err(format!(
                "the token belongs to {username:?}, not to a node proxy's {}",
                self.usernames.join(" or ")
            ));
        }
        user.extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_CLAIM))
            .and_then(|nodes| nodes.first())
            .filter(|node| !node.is_empty())
            .cloned()
            .ok_or_else(|| {
                "the token names no node: use a projected ServiceAccount token (bound to the \
                 daemon's pod; Kubernetes 1.30 or later)"
                    .to_owned()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_accounts_are_namespace_and_name() {
        assert_eq!(
            service_account_username("ztunnel-system/ztunnel").unwrap(),
            "system:serviceaccount:ztunnel-system:ztunnel"
        );
        for bad in ["ztunnel", "/ztunnel", "ztunnel-system/", "a/b/c", ""] {
            assert!(service_account_username(bad).is_err(), "{bad:?}");
        }
    }
}
