use crate::event::EventRef;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

/// Events that notify people: email, push or SMS.
///
/// One event can notify several people on several channels, so the protocol
/// returns a list; an empty list notifies nobody.
///
/// # Examples
///
/// ```
/// use eventbus::{event, register, Notifiable, Notification};
///
/// #[event]
/// struct CommentPosted {
///     author_email: String,
///     post_owner_email: String,
/// }
///
/// #[register]
/// impl Notifiable for CommentPosted {
///     fn notifications(&self) -> Vec<Notification> {
///         vec![Notification::email(&self.post_owner_email, "new-comment")
///             .data("author", self.author_email.as_str())]
///     }
/// }
///
/// let sent = eventbus::notifications(&CommentPosted::new("a@x.io".into(), "b@x.io".into()));
/// assert_eq!(sent.unwrap()[0].recipient, "b@x.io");
/// ```
#[crate::protocol]
pub trait Notifiable {
    /// The notifications this event sends.
    fn notifications(&self) -> Vec<Notification>;
}

/// Where a notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Channel {
    /// An email to an address.
    Email,
    /// A push notification to a device or user.
    Push,
    /// A text message to a phone number.
    Sms,
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Channel::Email => "email",
            Channel::Push => "push",
            Channel::Sms => "sms",
        })
    }
}

/// One message to one recipient, rendered later from a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Notification {
    /// Email, push or SMS.
    pub channel: Channel,
    /// An address, a device or user id, or a phone number, by channel.
    pub recipient: String,
    /// The template's name, such as `welcome`.
    pub template: String,
    /// The values the template needs.
    pub data: Map<String, Value>,
}

impl Notification {
    /// A notification on `channel`.
    pub fn new(
        channel: Channel,
        recipient: impl Into<String>,
        template: impl Into<String>,
    ) -> Self {
        Notification {
            channel,
            recipient: recipient.into(),
            template: template.into(),
            data: Map::new(),
        }
    }

    /// An email to `address`.
    pub fn email(address: impl Into<String>, template: impl Into<String>) -> Self {
        Notification::new(Channel::Email, address, template)
    }

    /// A push notification to `target`.
    pub fn push(target: impl Into<String>, template: impl Into<String>) -> Self {
        Notification::new(Channel::Push, target, template)
    }

    /// A text message to `phone`.
    pub fn sms(phone: impl Into<String>, template: impl Into<String>) -> Self {
        Notification::new(Channel::Sms, phone, template)
    }

    /// Adds a template value.
    #[must_use]
    pub fn data(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }
}

/// Runs [`Notifiable`] on an event: its notifications, or `None` when the event
/// notifies nobody. See [`dispatch`](crate::dispatch).
pub fn notifications(event: &(impl EventRef + ?Sized)) -> Option<Vec<Notification>> {
    crate::dispatch::<dyn Notifiable>(event)
}
