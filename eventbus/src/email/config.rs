//! The mailer's settings, checked once by the builder, so that a mistake
//! shows when the service starts rather than on the first email.

use super::error::ConfigError;
use super::render::Render;
use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How the connection to the SMTP server is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Tls {
    /// Plain text, for a relay on the same machine or network (a local
    /// Postfix, a test server). Usual port 25.
    None,
    /// Connect in plain text, then upgrade with `STARTTLS` before anything
    /// else is said; a server that does not offer it is an error, never a
    /// fallback to plain text. Usual port 587. The default.
    #[default]
    StartTls,
    /// TLS from the first byte ("SMTPS"). Usual port 465.
    Implicit,
}

impl Tls {
    /// The port a server usually listens on in this mode.
    pub fn default_port(self) -> u16 {
        match self {
            Tls::None => 25,
            Tls::StartTls => 587,
            Tls::Implicit => 465,
        }
    }
}

/// Sends the email notifications of each event over SMTP: subscribe it to
/// a bus with [`Bus::subscribe`](crate::Bus::subscribe).
///
/// Made by [`Mailer::builder`]; see the [module docs](super) for what is
/// sent, retried and dead-lettered.
#[derive(Clone)]
pub struct Mailer {
    pub(super) settings: Arc<Settings>,
    pub(super) renderer: Arc<dyn Render>,
}

/// The checked settings, shared with the started consumer.
pub(super) struct Settings {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tls: Tls,
    pub(super) tls_parameters: Option<TlsParameters>,
    pub(super) credentials: Option<(String, String)>,
    pub(super) from: Mailbox,
    pub(super) timeout: Duration,
    pub(super) pool_size: u32,
    pub(super) pool_idle_timeout: Duration,
    pub(super) hello_name: Option<ClientId>,
    pub(super) progress_capacity: usize,
}

impl Settings {
    /// `host:port`, for messages.
    pub(super) fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        f.debug_struct("Mailer")
            .field("server", &s.server())
            .field("tls", &s.tls)
            .field("user", &s.credentials.as_ref().map(|(user, _)| user))
            .field("from", &s.from.to_string())
            .field("timeout", &s.timeout)
            .field("pool_size", &s.pool_size)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Settings for the SMTP server at `host` (a name or an IP address).
    pub fn builder(host: impl Into<String>) -> MailerBuilder {
        MailerBuilder {
            host: host.into(),
            port: None,
            tls: Tls::default(),
            root_certificates: Vec::new(),
            credentials: None,
            from: None,
            renderer: None,
            timeout: Duration::from_secs(30),
            pool_size: 4,
            pool_idle_timeout: Duration::from_secs(60),
            hello_name: None,
            progress_capacity: 10_000,
        }
    }
}

/// Settings of a [`Mailer`]; [`build`](MailerBuilder::build) checks them.
///
/// # Examples
///
/// ```
/// use eventbus::email::{Mailer, RenderError, Rendered, Tls, render_fn};
/// use std::time::Duration;
///
/// let mailer = Mailer::builder("smtp.example.com")
///     .tls(Tls::StartTls)
///     .credentials("apikey", "secret")
///     .from("Shop <shop@example.com>")
///     .timeout(Duration::from_secs(10))
///     .pool_size(8)
///     .render(render_fn(|n| match n.template.as_str() {
///         "welcome" => Ok(Rendered::new("Welcome", "Hello!")),
///         other => Err(RenderError::unknown_template(other)),
///     }))
///     .build()?;
/// # let _ = mailer;
/// # Ok::<(), eventbus::email::ConfigError>(())
/// ```
///
/// A setting that cannot work is refused with the setting's name:
///
/// ```
/// # use eventbus::email::{Mailer, Rendered, render_fn};
/// let err = Mailer::builder("localhost")
///     .from("not an address")
///     .render(render_fn(|_| Ok(Rendered::new("", ""))))
///     .build()
///     .unwrap_err();
/// assert!(err.to_string().starts_with("`from` address `not an address` is not an email address"));
/// ```
pub struct MailerBuilder {
    host: String,
    port: Option<u16>,
    tls: Tls,
    root_certificates: Vec<Vec<u8>>,
    credentials: Option<(String, String)>,
    from: Option<String>,
    renderer: Option<Arc<dyn Render>>,
    timeout: Duration,
    pool_size: u32,
    pool_idle_timeout: Duration,
    hello_name: Option<String>,
    progress_capacity: usize,
}

impl fmt::Debug for MailerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailerBuilder")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("user", &self.credentials.as_ref().map(|(user, _)| user))
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl MailerBuilder {
    /// The server's port. Default: the TLS mode's usual one
    /// ([`Tls::default_port`]).
    #[must_use]
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// How the connection is encrypted. Default [`Tls::StartTls`].
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Trusts the certificate authority in `pem` (the text of a
    /// `-----BEGIN CERTIFICATE-----` file) besides the system's: for a
    /// relay with a private CA. Can be called more than once.
    #[must_use]
    pub fn root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(pem.into());
        self
    }

    /// Logs in with `user` and `password` (`AUTH PLAIN` or `LOGIN`, as the
    /// server offers). Over [`Tls::None`] they cross the network in plain
    /// text: keep that to a relay on the same machine.
    #[must_use]
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// The sender: `shop@example.com` or `Shop <shop@example.com>`.
    /// Required.
    #[must_use]
    pub fn from(mut self, address: impl Into<String>) -> Self {
        self.from = Some(address.into());
        self
    }

    /// What turns each notification into a subject and a body. Required.
    #[must_use]
    pub fn render(mut self, renderer: impl Render) -> Self {
        self.renderer = Some(Arc::new(renderer));
        self
    }

    /// How long one email may take, from connecting (or reusing a pooled
    /// connection) to the server's last reply, before the attempt fails and
    /// is retried. Default 30 s; raise it for large messages on a slow
    /// link.
    ///
    /// A timed-out attempt takes the timeout plus at most 250 ms to close
    /// the pool's other connections. After a 5xx reply one more connection,
    /// bounded by the timeout too, asks whether the server refuses the
    /// session itself (a wrong login) or only the email, to tell which.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many open connections are kept for reuse between emails.
    /// Default 4. How many emails go out at once is the subscription's
    /// concern: one at a time in sequential mode, up to its limit in
    /// concurrent mode.
    #[must_use]
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// How long a kept connection may sit unused before it is closed.
    /// Default 60 s.
    #[must_use]
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// The name given in `EHLO`: a domain name (`app.example.com`) or an
    /// address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`). Default: this
    /// machine's host name.
    #[must_use]
    pub fn hello_name(mut self, name: impl Into<String>) -> Self {
        self.hello_name = Some(name.into());
        self
    }

    /// How many events with several emails remember which of them were
    /// sent (or refused for good), so that a retry or a replay in this
    /// process does not send them again. Default 10,000.
    ///
    /// It counts every event with several emails from its first email sent
    /// until all its emails are: the ones failed and waiting for a retry or
    /// a replay, and also the ones still being sent. Past it the oldest is
    /// forgotten, even one still being sent, and a retry of a forgotten
    /// event sends all its emails again. Keep it well above the
    /// subscription's concurrency plus the failed events you expect to
    /// replay.
    #[must_use]
    pub fn progress_capacity(mut self, events: usize) -> Self {
        self.progress_capacity = events;
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError`], naming the setting, for a setting that cannot
    /// work. Nothing is connected to yet: a server that is down shows on
    /// the first email, as a retried failure.
    pub fn build(self) -> Result<Mailer, ConfigError> {
        let host = self.host.trim().to_owned();
        if host.is_empty() {
            return Err(ConfigError::EmptyHost);
        }
        if host.parse::<IpAddr>().is_err() && !is_domain(&host) {
            return Err(ConfigError::InvalidHost { host });
        }
        let hello_name = match self.hello_name {
            None => None,
            Some(name) => Some(
                client_id(&name).ok_or_else(|| ConfigError::InvalidHelloName {
                    name: name.escape_debug().to_string(),
                })?,
            ),
        };
        if self.port == Some(0) {
            return Err(ConfigError::ZeroPort);
        }
        let address = self.from.ok_or(ConfigError::MissingFrom)?;
        let from: Mailbox = address
            .parse()
            .map_err(|source| ConfigError::InvalidFrom { address, source })?;
        let renderer = self.renderer.ok_or(ConfigError::MissingRenderer)?;
        if self.pool_size == 0 {
            return Err(ConfigError::ZeroPoolSize);
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        if self.progress_capacity == 0 {
            return Err(ConfigError::ZeroProgressCapacity);
        }
        let tls_parameters = match self.tls {
            Tls::None if !self.root_certificates.is_empty() => {
                return Err(ConfigError::RootCertificateWithoutTls);
            }
            Tls::None => None,
            Tls::StartTls | Tls::Implicit => Some(tls_parameters(&host, &self.root_certificates)?),
        };
        Ok(Mailer {
            settings: Arc::new(Settings {
                port: self.port.unwrap_or(self.tls.default_port()),
                host,
                tls: self.tls,
                tls_parameters,
                credentials: self.credentials,
                from,
                timeout: self.timeout,
                pool_size: self.pool_size,
                pool_idle_timeout: self.pool_idle_timeout,
                hello_name,
                progress_capacity: self.progress_capacity,
            }),
            renderer,
        })
    }
}

/// The rustls settings: the system's roots plus the user's.
fn tls_parameters(host: &str, roots: &[Vec<u8>]) -> Result<TlsParameters, ConfigError> {
    let mut builder = TlsParameters::builder(host.to_owned());
    for pem in roots {
        // lettre reads a text without any certificate as an empty list, which
        // would trust nothing more and fail only at the first connection.
        if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(ConfigError::InvalidRootCertificate { source: None });
        }
        let certificate =
            Certificate::from_pem(pem).map_err(|source| ConfigError::InvalidRootCertificate {
                source: Some(source),
            })?;
        builder = builder.add_root_certificate(certificate);
    }
    builder.build_rustls().map_err(|source| ConfigError::Tls {
        host: host.to_owned(),
        source,
    })
}

/// Whether `name` is a domain name: dot-separated labels of ASCII letters,
/// digits and inner hyphens, as in RFC 1035 and 5321.
fn is_domain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// What `EHLO` says for `name`, if it is a domain name or an address
/// (RFC 5321's address literal, or a bare address).
fn client_id(name: &str) -> Option<ClientId> {
    let literal = name
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'));
    if let Some(literal) = literal {
        return match literal.strip_prefix("IPv6:") {
            Some(v6) => v6.parse().ok().map(ClientId::Ipv6),
            None => literal.parse().ok().map(ClientId::Ipv4),
        };
    }
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => Some(ClientId::Ipv4(v4)),
        Ok(IpAddr::V6(v6)) => Some(ClientId::Ipv6(v6)),
        Err(_) => is_domain(name).then(|| ClientId::Domain(name.to_owned())),
    }
}
