//! Errors of the email consumer: bad settings, templates that do not
//! render, and emails the SMTP server did not take.

use crate::consumer::BoxError;
use lettre::address::AddressError;
use lettre::transport::smtp::Error as SmtpError;

/// Returned by [`MailerBuilder::build`](super::MailerBuilder::build) for a
/// setting that cannot work. Nothing is sent and no connection is opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `Mailer::builder("")`.
    #[error("the smtp server's host is empty; give `Mailer::builder` a host name or an ip address")]
    EmptyHost,
    /// `port(0)`.
    #[error(
        "`port` is 0; give the smtp server's port (usually 25 for a local relay, 587 for STARTTLS, 465 for implicit TLS), or leave it unset for the mode's usual one"
    )]
    ZeroPort,
    /// No [`from`](super::MailerBuilder::from) address.
    #[error("no sender address; call `from` with the address emails are sent from")]
    MissingFrom,
    /// The [`from`](super::MailerBuilder::from) address does not parse.
    #[error(
        "`from` address `{address}` is not an email address; write it as `name@example.com` or `Name <name@example.com>`"
    )]
    InvalidFrom {
        /// The address as given.
        address: String,
        /// Why it does not parse.
        #[source]
        source: AddressError,
    },
    /// No [`render`](super::MailerBuilder::render) function.
    #[error(
        "no renderer; call `render` with what turns a notification's template and data into a subject and body"
    )]
    MissingRenderer,
    /// `pool_size(0)`.
    #[error("`pool_size` must be at least 1: it is how many open connections are kept for reuse")]
    ZeroPoolSize,
    /// `timeout(Duration::ZERO)`.
    #[error("`timeout` must be above zero: it bounds the sending of each email")]
    ZeroTimeout,
    /// `progress_capacity(0)`.
    #[error(
        "`progress_capacity` must be at least 1: it is how many events' sent emails are remembered so a retry does not send them again"
    )]
    ZeroProgressCapacity,
    /// A [`root_certificate`](super::MailerBuilder::root_certificate) with
    /// [`Tls::None`](super::Tls::None), where it would never be used.
    #[error(
        "`root_certificate` is set but `tls` is `Tls::None`, which never verifies a certificate; use `Tls::StartTls` or `Tls::Implicit`, or drop the certificate"
    )]
    RootCertificateWithoutTls,
    /// The [`root_certificate`](super::MailerBuilder::root_certificate) is
    /// not a PEM certificate.
    #[error(
        "`root_certificate` holds no PEM certificate; give the text of a `-----BEGIN CERTIFICATE-----` file"
    )]
    InvalidRootCertificate {
        /// Why it does not parse, when the TLS library said.
        #[source]
        source: Option<SmtpError>,
    },
    /// The TLS settings could not be made, such as a host that is not a
    /// valid TLS server name.
    #[error("tls settings for `{host}` could not be made; check the host and `root_certificate`")]
    Tls {
        /// The name the certificate is checked against.
        host: String,
        /// What the TLS library said.
        #[source]
        source: SmtpError,
    },
}

/// What a [`Render`](super::Render) returns for a notification it cannot
/// turn into an email. The email is not sent and the event is
/// dead-lettered at once: rendering again would fail the same way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// No template has the notification's name.
    #[error(
        "no email template named `{0}`; add it to the renderer, or fix the template name the `Notifiable` impl returns"
    )]
    UnknownTemplate(String),
    /// The template exists but failed, such as for a missing data value.
    #[error("email template `{template}` failed to render")]
    Failed {
        /// The template's name.
        template: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
}

impl RenderError {
    /// No template named `template`.
    pub fn unknown_template(template: impl Into<String>) -> Self {
        RenderError::UnknownTemplate(template.into())
    }

    /// Template `template` failed with `source`.
    pub fn failed(template: impl Into<String>, source: impl Into<BoxError>) -> Self {
        RenderError::Failed {
            template: template.into(),
            source: source.into(),
        }
    }
}

/// Why one email of an event was not sent: what the
/// [`Mailer`](super::Mailer)'s consumer returns to the bus, which retries
/// it or, for the variants that say so, dead-letters the event at once
/// (wrapped in [`Permanent`](crate::Permanent)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The renderer failed. Permanent.
    #[error("email {index} (template `{template}`) to `{recipient}` was not rendered")]
    Render {
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The notification's recipient.
        recipient: String,
        /// What the renderer said.
        #[source]
        source: RenderError,
    },
    /// The notification's recipient is not an email address. Permanent.
    #[error(
        "email {index} (template `{template}`): recipient `{recipient}` is not an email address; fix the address the `Notifiable` impl returns"
    )]
    InvalidRecipient {
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The recipient as given.
        recipient: String,
        /// Why it does not parse.
        #[source]
        source: AddressError,
    },
    /// The rendered email cannot be made into a message: a reply-to that
    /// is not an address, a header that is not valid or that the mailer
    /// sets itself. Permanent.
    #[error("email {index} (template `{template}`) to `{recipient}`: {problem}; fix the renderer")]
    InvalidEmail {
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The notification's recipient.
        recipient: String,
        /// What is wrong with it.
        problem: String,
        /// The underlying error, where there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The server answered with a 5xx reply: it will not take the email.
    /// Permanent. The server's code and message are in the source.
    #[error(
        "smtp server {server} rejected email {index} (template `{template}`) to `{recipient}` for good"
    )]
    Rejected {
        /// `host:port`.
        server: String,
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The notification's recipient.
        recipient: String,
        /// The server's reply: its code and message.
        #[source]
        source: SmtpError,
    },
    /// The server answered with a 4xx reply: try again later. Retried.
    #[error("smtp server {server} deferred email {index} (template `{template}`) to `{recipient}`")]
    Deferred {
        /// `host:port`.
        server: String,
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The notification's recipient.
        recipient: String,
        /// The server's reply: its code and message.
        #[source]
        source: SmtpError,
    },
    /// The server did not finish taking the email within
    /// [`timeout`](super::MailerBuilder::timeout). Retried.
    #[error(
        "smtp server {server} did not take email {index} (template `{template}`) to `{recipient}` within {after:?}; raise `timeout` if the server is just slow"
    )]
    TimedOut {
        /// `host:port`.
        server: String,
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The notification's recipient.
        recipient: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The server could not be reached or the exchange broke off: refused,
    /// timed out, a TLS failure, a reply that is not SMTP. Retried.
    #[error(
        "could not send email {index} (template `{template}`) to `{recipient}` through smtp server {server}"
    )]
    Unreachable {
        /// `host:port`.
        server: String,
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The notification's recipient.
        recipient: String,
        /// What went wrong.
        #[source]
        source: SmtpError,
    },
}

impl SendError {
    /// Whether retrying cannot help: a template, an address or a 5xx reply.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            SendError::Deferred { .. } | SendError::Unreachable { .. } | SendError::TimedOut { .. }
        )
    }

    /// The SMTP reply code, where the server answered with one.
    pub fn smtp_code(&self) -> Option<u16> {
        match self {
            SendError::Rejected { source, .. } | SendError::Deferred { source, .. } => {
                source.status().map(u16::from)
            }
            _ => None,
        }
    }
}
