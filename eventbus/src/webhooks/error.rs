//! The webhook errors.

/// A bad endpoint: returned by [`Endpoint::new`](super::Endpoint::new) and
/// [`Endpoint::also_signed_with`](super::Endpoint::also_signed_with).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The URL does not parse, or is not `http` or `https` with a host.
    #[error("webhook URL {url:?} is not usable: {why}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The secret is not `whsec_` then 24 to 64 bytes in base64.
    #[error("webhook secret is not usable: {0}")]
    Secret(String),
}

/// A webhook setting that cannot work, or a delivery store that cannot be
/// used: returned by [`WebhooksBuilder::build`](super::WebhooksBuilder::build)
/// and by the [`Webhooks`](super::Webhooks) calls that read or change the
/// deliveries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhooksError {
    /// Neither a file nor memory was chosen for the deliveries.
    #[error(
        "choose where webhook deliveries are kept: `store_path(file)` so they survive a restart, or `in_memory()`"
    )]
    NoStore,
    /// A per-endpoint limit over half the concurrency, which would let one
    /// slow endpoint hold most of the slots.
    #[error(
        "webhook setting `per_endpoint` ({per_endpoint}) is over half of `concurrency` ({concurrency}); one slow endpoint would hold most of the slots"
    )]
    PerEndpoint {
        /// The per-endpoint limit.
        per_endpoint: usize,
        /// The limit across endpoints.
        concurrency: usize,
    },
    /// The retry schedule is empty, too long, or has too long a delay.
    #[error("webhook schedule: {0}")]
    Schedule(String),
    /// A limit or timeout of zero.
    #[error("webhook setting `{setting}` must be above zero")]
    Zero {
        /// The builder method.
        setting: &'static str,
    },
    /// The HTTP client could not be built (its TLS roots, say).
    #[error("could not build the webhook HTTP client")]
    Client(#[source] reqwest::Error),
    /// The delivery store failed: the file cannot be opened or written, or
    /// a row does not read.
    #[error("webhook delivery store at {path}")]
    Store {
        /// The store's file, or `:memory:`.
        path: String,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is not a delivery store of this version.
    #[error(
        "{path} is not a webhook delivery store of layout {expected} (it has layout {found}); give the webhooks a file of their own"
    )]
    Layout {
        /// The store's file.
        path: String,
        /// The layout this version writes.
        expected: i64,
        /// The layout the file has.
        found: i64,
    },
    /// A [`max_store_size`](super::WebhooksBuilder::max_store_size) below
    /// the 64 KiB the store's tables need.
    #[error(
        "webhook setting `max_store_size` of {0} bytes is below the 65536 the store's tables need; raise it, or leave it unset for no cap"
    )]
    StoreSize(u64),
    /// No delivery has this id.
    #[error("no webhook delivery has id {0}")]
    NoDelivery(i64),
    /// A delivery being sent right now cannot be resent.
    #[error("webhook delivery {0} is being sent right now; resend it once it has finished")]
    Sending(i64),
}
