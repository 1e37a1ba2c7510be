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
    /// The host is not a host name or an IP address: it has a port, a
    /// scheme, a space or another character no host name has.
    #[error(
        "the smtp server's host `{host}` is not a host name or an ip address; give the name alone (`smtp.example.com`), with no scheme or spaces, and the port with `.port()`"
    )]
    InvalidHost {
        /// The host as given.
        host: String,
    },
    /// `hello_name` is not a domain name or an address literal; a line
    /// break in it would end the `EHLO` command and start another.
    #[error(
        "`hello_name` `{name}` is not a domain name or an address literal; give this machine's name (`app.example.com`) or its address (`[192.0.2.1]`)"
    )]
    InvalidHelloName {
        /// The name as given, with control characters escaped.
        name: String,
    },
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
    /// The server answered the email (its sender, recipient or content)
    /// with a 5xx reply: it will not take it. Permanent. The server's code
    /// and message are in the source.
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
    /// The server refused the session itself, with a 5xx to its greeting,
    /// to `EHLO`, `STARTTLS` or the login (such as a 535 for wrong
    /// credentials): no email can go through it as set up. Permanent.
    #[error(
        "smtp server {server} refused the session (its greeting, `EHLO`, `STARTTLS` or the login) before email {index} (template `{template}`) to `{recipient}` could be sent; check `credentials`, `hello_name` and that this is the right server"
    )]
    Refused {
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
    /// The server rejected this email with a 5xx on an earlier attempt of
    /// the same event, so it was not tried again. Permanent.
    #[error(
        "smtp server {server} rejected email {index} (template `{template}`) to `{recipient}` for good on an earlier attempt ({reply}); not sent again"
    )]
    RejectedEarlier {
        /// `host:port`.
        server: String,
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The notification's recipient.
        recipient: String,
        /// What the server said then: its code and message.
        reply: String,
    },
    /// The SMTP client gave up by itself on what the server offers: a
    /// non-ASCII address to a server without `SMTPUTF8`, [`Tls::StartTls`]
    /// to a server that does not offer `STARTTLS`, credentials and no login
    /// method in common. Sending again would fail the same way. Permanent.
    ///
    /// [`Tls::StartTls`]: super::Tls::StartTls
    #[error(
        "email {index} (template `{template}`) to `{recipient}` cannot be sent through smtp server {server}, which lacks what it needs (SMTPUTF8 for a non-ASCII address, STARTTLS for `Tls::StartTls`, a login method for `credentials`); fix the address or the settings"
    )]
    Unsendable {
        /// `host:port`.
        server: String,
        /// The notification's place in the event's list.
        index: usize,
        /// The notification's template.
        template: String,
        /// The notification's recipient.
        recipient: String,
        /// What the client said.
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
    /// Whether retrying cannot help: a template, an address, a 5xx reply,
    /// an email the client cannot send.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            SendError::Deferred { .. } | SendError::Unreachable { .. } | SendError::TimedOut { .. }
        )
    }

    /// The SMTP reply code, where the server answered with one.
    pub fn smtp_code(&self) -> Option<u16> {
        match self {
            SendError::Rejected { source, .. }
            | SendError::Refused { source, .. }
            | SendError::Deferred { source, .. } => source.status().map(u16::from),
            _ => None,
        }
    }
}

/// What the [`Mailer`](super::Mailer)'s consumer returns to the bus for an
/// event some of whose emails were not sent: every one of their
/// [`SendError`]s, so that each code and message reaches the dead letter.
///
/// Its message names each failed email's place in the list, recipient and
/// what the server said. It is wrapped in [`Permanent`](crate::Permanent)
/// when none of the failures is worth retrying.
#[derive(Debug)]
pub struct EmailsFailed {
    failures: Vec<SendError>,
}

impl EmailsFailed {
    pub(super) fn new(failures: Vec<SendError>) -> Self {
        EmailsFailed { failures }
    }

    /// The failures, in the order of the event's list.
    pub fn failures(&self) -> &[SendError] {
        &self.failures
    }

    /// Whether retrying cannot help: no failure is a retryable one.
    pub fn is_permanent(&self) -> bool {
        self.failures.iter().all(SendError::is_permanent)
    }
}

impl std::fmt::Display for EmailsFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The sources are written into the message (this error gives none),
        // since each failure has its own.
        if let [only] = self.failures.as_slice() {
            return f.write_str(&told(only));
        }
        write!(f, "{} emails of the event failed: ", self.failures.len())?;
        for (i, failure) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&told(failure))?;
        }
        Ok(())
    }
}

impl std::error::Error for EmailsFailed {}

/// `err` and its sources, joined by `: `, leaving out a source whose text
/// the error before it already shows: lettre writes its source into its
/// own message, which would otherwise read "550: no such user: no such
/// user".
pub(super) fn told(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut last = text.clone();
    let mut source = err.source();
    while let Some(s) = source {
        let said = s.to_string();
        if !last.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        last = said;
        source = s.source();
    }
    text
}
