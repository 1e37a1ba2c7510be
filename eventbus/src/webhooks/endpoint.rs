//! Endpoints: where customers receive webhooks, and where they come from.

use super::error::EndpointError;
use super::sign::Secret;
use crate::consumer::BoxError;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

/// A customer's endpoint: a URL, the secrets requests are signed with, the
/// topics it receives, and the account it belongs to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Endpoint {
    /// Its id, unique among endpoints, and stable: deliveries and attempts
    /// are recorded under it.
    pub id: String,
    /// Where requests go: `http` or `https`.
    pub url: url::Url,
    /// The secrets each request is signed with, one signature each. Two
    /// during a rotation, so receivers on either verify.
    pub secrets: Vec<Secret>,
    /// The topics it receives, such as `invoice.paid`; `invoice.*` for a
    /// prefix; empty for every topic.
    pub topics: Vec<String>,
    /// The account whose webhooks it receives; `None` for webhooks to
    /// every account.
    pub account: Option<String>,
    /// Disabled endpoints receive nothing.
    pub enabled: bool,
}

impl Endpoint {
    /// An enabled endpoint receiving every topic, signed with `secret`.
    ///
    /// # Errors
    ///
    /// [`EndpointError::Url`] for a URL that does not parse or is not
    /// `http` or `https`, [`EndpointError::Secret`] for a secret that does
    /// not read.
    pub fn new(id: impl Into<String>, url: &str, secret: &str) -> Result<Self, EndpointError> {
        let id = id.into();
        let parsed = url::Url::parse(url).map_err(|err| EndpointError::Url {
            url: url.to_owned(),
            why: err.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(EndpointError::Url {
                url: url.to_owned(),
                why: "a webhook URL is http:// or https:// with a host".to_owned(),
            });
        }
        Ok(Endpoint {
            id,
            url: parsed,
            secrets: vec![Secret::parse(secret)?],
            topics: Vec::new(),
            account: None,
            enabled: true,
        })
    }

    /// Receives only these topics (`invoice.*` for a prefix).
    #[must_use]
    pub fn topics<I: IntoIterator<Item = S>, S: Into<String>>(mut self, topics: I) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }

    /// Belongs to `account`: receives its webhooks and those to every
    /// account.
    #[must_use]
    pub fn account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    /// Signs with `secret` too, for a rotation: requests carry one
    /// signature per secret.
    ///
    /// # Errors
    ///
    /// [`EndpointError::Secret`] for a secret that does not read.
    pub fn also_signed_with(mut self, secret: &str) -> Result<Self, EndpointError> {
        self.secrets.push(Secret::parse(secret)?);
        Ok(self)
    }

    /// Starts disabled.
    #[must_use]
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }

    /// Whether it receives a webhook on `topic` for `account`.
    pub fn receives(&self, topic: &str, account: Option<&str>) -> bool {
        let topic_ok = self.topics.is_empty()
            || self
                .topics
                .iter()
                .any(|wanted| match wanted.strip_suffix('*') {
                    Some(prefix) => topic.starts_with(prefix),
                    None => wanted == topic,
                });
        // A webhook to every account reaches every endpoint; an endpoint
        // of no account receives every account's webhooks.
        let account_ok = match (&self.account, account) {
            (Some(own), Some(target)) => own == target,
            _ => true,
        };
        self.enabled && topic_ok && account_ok
    }
}

/// Where the endpoints come from: usually the service's own table, which
/// its customers edit through its API.
///
/// # Examples
///
/// ```
/// use eventbus::BoxError;
/// use eventbus::webhooks::{Endpoint, EndpointSource};
///
/// struct Table; // Your database pool.
///
/// #[async_trait::async_trait]
/// impl EndpointSource for Table {
///     async fn endpoints(&self, topic: &str, account: Option<&str>) -> Result<Vec<Endpoint>, BoxError> {
///         // SELECT ... WHERE enabled AND (account = $2 OR $2 IS NULL) ...
///         let _ = (topic, account);
///         Ok(Vec::new())
///     }
///
///     async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, BoxError> {
///         let _ = id;
///         Ok(None)
///     }
///
///     async fn disable(&self, id: &str, reason: &str) -> Result<(), BoxError> {
///         // UPDATE endpoints SET enabled = false, disabled_reason = $2 ...
///         let _ = (id, reason);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait EndpointSource: Send + Sync + 'static {
    /// The endpoints that receive a webhook on `topic` for `account`
    /// (`None`: a webhook to every account). Endpoints returned that do not
    /// [receive](Endpoint::receives) it are left out.
    ///
    /// # Errors
    ///
    /// Any error; the event is retried by its subscription's policy.
    async fn endpoints(
        &self,
        topic: &str,
        account: Option<&str>,
    ) -> Result<Vec<Endpoint>, BoxError>;

    /// The endpoint `id` as it is now, read before each attempt, so a new
    /// URL or secret applies to retries too; `None` once it is deleted.
    ///
    /// # Errors
    ///
    /// Any error; the attempt is retried later.
    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, BoxError>;

    /// Disables the endpoint `id`: it answered `410 Gone`, or kept failing
    /// for longer than [`WebhooksBuilder::disable_after`](super::WebhooksBuilder::disable_after).
    ///
    /// # Errors
    ///
    /// Any error is logged. The endpoint's next failure tries again; its
    /// disabling is announced once all the same.
    async fn disable(&self, id: &str, reason: &str) -> Result<(), BoxError>;
}

/// Endpoints kept in memory: for a service with a few endpoints of its own,
/// for tests, and for examples. Cheap to clone; the clones share the list.
#[derive(Debug, Clone, Default)]
pub struct StaticEndpoints {
    endpoints: Arc<RwLock<BTreeMap<String, Endpoint>>>,
}

impl StaticEndpoints {
    /// An empty list.
    pub fn new() -> Self {
        StaticEndpoints::default()
    }

    /// Adds `endpoint`, or replaces the one with its id.
    pub fn insert(&self, endpoint: Endpoint) {
        self.endpoints
            .write()
            .expect("endpoints lock")
            .insert(endpoint.id.clone(), endpoint);
    }

    /// Removes the endpoint `id`.
    pub fn remove(&self, id: &str) -> Option<Endpoint> {
        self.endpoints.write().expect("endpoints lock").remove(id)
    }

    /// The endpoint `id`.
    pub fn get(&self, id: &str) -> Option<Endpoint> {
        self.endpoints
            .read()
            .expect("endpoints lock")
            .get(id)
            .cloned()
    }

    /// Enables or disables the endpoint `id`; `false` when there is none.
    pub fn set_enabled(&self, id: &str, enabled: bool) -> bool {
        match self.endpoints.write().expect("endpoints lock").get_mut(id) {
            Some(endpoint) => {
                endpoint.enabled = enabled;
                true
            }
            None => false,
        }
    }
}

#[async_trait]
impl EndpointSource for StaticEndpoints {
    async fn endpoints(
        &self,
        topic: &str,
        account: Option<&str>,
    ) -> Result<Vec<Endpoint>, BoxError> {
        Ok(self
            .endpoints
            .read()
            .expect("endpoints lock")
            .values()
            .filter(|endpoint| endpoint.receives(topic, account))
            .cloned()
            .collect())
    }

    async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, BoxError> {
        Ok(self.get(id))
    }

    async fn disable(&self, id: &str, _reason: &str) -> Result<(), BoxError> {
        self.set_enabled(id, false);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn topics_and_accounts_choose_the_endpoints() {
        let all = Endpoint::new("a", "https://a.example/hook", SECRET).unwrap();
        assert!(all.receives("invoice.paid", None));
        assert!(all.receives("invoice.paid", Some("acct_1")));
        let invoices = all.clone().topics(["invoice.*"]);
        assert!(invoices.receives("invoice.paid", None));
        assert!(!invoices.receives("user.created", None));
        let mine = all.clone().account("acct_1");
        assert!(mine.receives("invoice.paid", Some("acct_1")));
        assert!(!mine.receives("invoice.paid", Some("acct_2")));
        assert!(mine.receives("invoice.paid", None));
        assert!(!all.disabled().receives("invoice.paid", None));
    }

    #[test]
    fn bad_urls_and_secrets_are_refused_with_the_reason() {
        let err = Endpoint::new("a", "ftp://a.example/", SECRET).unwrap_err();
        assert!(err.to_string().contains("http:// or https://"), "{err}");
        let err = Endpoint::new("a", "not a url", SECRET).unwrap_err();
        assert!(err.to_string().contains("not a url"), "{err}");
        let err = Endpoint::new("a", "https://a.example/", "MfKQ9r8").unwrap_err();
        assert!(err.to_string().contains("whsec_"), "{err}");
        let err = Endpoint::new("a", "https://a.example/", "whsec_!!").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
        let err = Endpoint::new("a", "https://a.example/", "whsec_c2hvcnQ=").unwrap_err();
        assert!(err.to_string().contains("24 to 64"), "{err}");
    }
}
