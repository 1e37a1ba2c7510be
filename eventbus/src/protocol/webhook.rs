use crate::event::EventRef;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Events that customers receive as webhooks.
///
/// # Examples
///
/// ```
/// use eventbus::{event, json, register, Webhook, Webhookable};
///
/// #[event]
/// struct InvoicePaid {
///     account_id: String,
///     invoice_id: u64,
/// }
///
/// #[register]
/// impl Webhookable for InvoicePaid {
///     fn webhook(&self) -> Webhook {
///         Webhook::new("invoice.paid", json!({ "invoice_id": self.invoice_id }))
///             .for_account(&self.account_id)
///     }
/// }
///
/// let hook = eventbus::webhook(&InvoicePaid::new("acct_1".into(), 42)).unwrap();
/// assert_eq!(hook.topic, "invoice.paid");
/// assert_eq!(hook.account.as_deref(), Some("acct_1"));
/// ```
#[crate::protocol]
pub trait Webhookable {
    /// The webhook this event sends.
    fn webhook(&self) -> Webhook;
}

/// A webhook delivery: a topic customers subscribe to and a JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Webhook {
    /// The topic endpoints subscribe to, such as `invoice.paid`.
    pub topic: String,
    /// The request body.
    pub payload: Value,
    /// The account or tenant whose endpoints receive it; `None` for every
    /// endpoint subscribed to the topic.
    pub account: Option<String>,
}

impl Webhook {
    /// A webhook on `topic` with `payload` as its body.
    pub fn new(topic: impl Into<String>, payload: impl Into<Value>) -> Self {
        Webhook {
            topic: topic.into(),
            payload: payload.into(),
            account: None,
        }
    }

    /// Scopes the webhook to one account's endpoints.
    #[must_use]
    pub fn for_account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }
}

/// Runs [`Webhookable`] on an event: its webhook, or `None` when the event
/// sends none. See [`dispatch`](crate::dispatch).
pub fn webhook(event: &(impl EventRef + ?Sized)) -> Option<Webhook> {
    crate::dispatch::<dyn Webhookable>(event)
}
