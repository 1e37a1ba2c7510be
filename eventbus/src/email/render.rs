//! Rendering: the user's templates turn a notification into the parts of an
//! email. The mailer has no template language of its own; bring yours
//! (askama, tera, minijinja, `format!`) behind [`Render`].

use super::error::RenderError;
use crate::protocol::Notification;
use std::fmt;

/// Turns a [`Notification`] (a template name and its data) into the parts
/// of an email.
///
/// Rendering must not depend on when it runs: a failure is final, and the
/// event is dead-lettered at once, naming the template.
///
/// # Errors
///
/// [`RenderError::UnknownTemplate`] for a template it does not have,
/// [`RenderError::Failed`] for one that fails (a missing value, say).
///
/// # Examples
///
/// ```
/// use eventbus::Notification;
/// use eventbus::email::{Render, RenderError, Rendered};
///
/// struct Templates;
///
/// impl Render for Templates {
///     fn render(&self, notification: &Notification) -> Result<Rendered, RenderError> {
///         match notification.template.as_str() {
///             "welcome" => {
///                 let name = notification.data["name"].as_str().unwrap_or("there");
///                 Ok(Rendered::new("Welcome!", format!("Hello {name}, welcome aboard.")))
///             }
///             other => Err(RenderError::unknown_template(other)),
///         }
///     }
/// }
///
/// let email = Templates
///     .render(&Notification::email("ada@example.com", "welcome").data("name", "Ada"))
///     .unwrap();
/// assert_eq!(email.text, "Hello Ada, welcome aboard.");
/// ```
pub trait Render: Send + Sync + 'static {
    /// The email for `notification`.
    ///
    /// # Errors
    ///
    /// See the trait's docs.
    fn render(&self, notification: &Notification) -> Result<Rendered, RenderError>;
}

/// A [`Render`] made from a function.
///
/// # Examples
///
/// ```
/// use eventbus::email::{RenderError, Rendered, render_fn};
///
/// let render = render_fn(|notification| match notification.template.as_str() {
///     "reset" => Ok(Rendered::new("Reset your password", "Follow the link to reset it.")),
///     other => Err(RenderError::unknown_template(other)),
/// });
/// # let _ = render;
/// ```
pub fn render_fn<F>(f: F) -> FnRender<F>
where
    F: Fn(&Notification) -> Result<Rendered, RenderError> + Send + Sync + 'static,
{
    FnRender { f }
}

/// The [`Render`] that [`render_fn`] returns.
#[derive(Clone)]
pub struct FnRender<F> {
    f: F,
}

impl<F> fmt::Debug for FnRender<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnRender").finish_non_exhaustive()
    }
}

impl<F> Render for FnRender<F>
where
    F: Fn(&Notification) -> Result<Rendered, RenderError> + Send + Sync + 'static,
{
    fn render(&self, notification: &Notification) -> Result<Rendered, RenderError> {
        (self.f)(notification)
    }
}

/// The parts of one email, as a [`Render`] made them. The mailer adds the
/// sender, the recipient, the date and a `Message-ID`.
///
/// # Examples
///
/// ```
/// use eventbus::email::Rendered;
///
/// let email = Rendered::new("Your order shipped", "It is on its way.")
///     .html("<p>It is on its <b>way</b>.</p>")
///     .reply_to("support@example.com")
///     .header("X-Campaign", "shipping");
/// assert_eq!(email.headers.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rendered {
    /// The `Subject` header.
    pub subject: String,
    /// The plain text body, always sent.
    pub text: String,
    /// An HTML body, sent next to the text one (`multipart/alternative`)
    /// when given.
    pub html: Option<String>,
    /// A `Reply-To` address.
    pub reply_to: Option<String>,
    /// Further headers, such as `List-Unsubscribe`. Not the ones the mailer
    /// sets itself: `From`, `To`, `Subject`, `Reply-To`, `Date`,
    /// `Message-ID`, `Content-Type`, `Content-Transfer-Encoding`,
    /// `MIME-Version`.
    pub headers: Vec<(String, String)>,
}

impl Rendered {
    /// An email with a subject and a plain text body.
    pub fn new(subject: impl Into<String>, text: impl Into<String>) -> Self {
        Rendered {
            subject: subject.into(),
            text: text.into(),
            html: None,
            reply_to: None,
            headers: Vec::new(),
        }
    }

    /// Adds an HTML body next to the text one.
    #[must_use]
    pub fn html(mut self, html: impl Into<String>) -> Self {
        self.html = Some(html.into());
        self
    }

    /// Sets the `Reply-To` address.
    #[must_use]
    pub fn reply_to(mut self, address: impl Into<String>) -> Self {
        self.reply_to = Some(address.into());
        self
    }

    /// Adds a header.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }
}
