//! The started mailer: one SMTP message per email notification, on a
//! pooled connection, each failure sorted into "retry" or "give up".

use super::config::Settings;
use super::error::SendError;
use super::progress::Progress;
use super::render::{Render, Rendered};
use crate::consumer::{BoxError, Consumer};
use crate::event::AnyEvent;
use crate::protocol::{Channel, Notification};
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::Tls as LettreTls;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use uuid::Uuid;

/// Headers the mailer writes itself; a renderer setting one would make a
/// message with two of them, or lie about its sender.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "sender",
    "subject",
    "reply-to",
    "date",
    "message-id",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
];

/// A started [`Mailer`](super::Mailer): what the bus runs.
pub struct MailerConsumer {
    settings: Arc<Settings>,
    renderer: Arc<dyn Render>,
    /// Replaced when a send times out; see `deliver`.
    transport: Mutex<Arc<AsyncSmtpTransport<Tokio1Executor>>>,
    progress: Progress,
}

/// How a send failed, before it is told in the notification's terms.
enum Delivery {
    Smtp(lettre::transport::smtp::Error),
    TimedOut,
}

/// lettre's pooled transport for `settings`.
fn transport(settings: &Settings) -> AsyncSmtpTransport<Tokio1Executor> {
    let tls = match (&settings.tls, &settings.tls_parameters) {
        (super::Tls::StartTls, Some(parameters)) => LettreTls::Required(parameters.clone()),
        (super::Tls::Implicit, Some(parameters)) => LettreTls::Wrapper(parameters.clone()),
        // `build` makes parameters for every mode but `None`.
        _ => LettreTls::None,
    };
    let mut builder =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(settings.host.clone())
            .port(settings.port)
            .tls(tls)
            .timeout(Some(settings.timeout))
            .pool_config(
                PoolConfig::new()
                    .max_size(settings.pool_size)
                    .idle_timeout(settings.pool_idle_timeout),
            );
    if let Some((user, password)) = &settings.credentials {
        builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
    }
    if let Some(name) = &settings.hello_name {
        builder = builder.hello_name(ClientId::Domain(name.clone()));
    }
    builder.build()
}

/// Retires the pool of a send dropped before it finished; see `deliver`.
struct Unfinished<'a> {
    consumer: &'a MailerConsumer,
    transport: &'a Arc<AsyncSmtpTransport<Tokio1Executor>>,
    armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.consumer.retire(self.transport);
        }
    }
}

impl fmt::Debug for MailerConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailerConsumer")
            .field("server", &self.settings.server())
            .field("tls", &self.settings.tls)
            .finish_non_exhaustive()
    }
}

impl MailerConsumer {
    /// Makes the pooled transport. Opens no connection: the first email
    /// does.
    pub(super) fn start(settings: Arc<Settings>, renderer: Arc<dyn Render>) -> Self {
        MailerConsumer {
            progress: Progress::new(settings.progress_capacity),
            transport: Mutex::new(Arc::new(transport(&settings))),
            settings,
            renderer,
        }
    }

    /// The transport to send on.
    fn transport(&self) -> Arc<AsyncSmtpTransport<Tokio1Executor>> {
        Arc::clone(
            &self
                .transport
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    /// Sends one message within the timeout.
    ///
    /// lettre bounds only the connect by itself; a server that stops
    /// answering would hold the send forever. On our deadline the send is
    /// dropped mid-exchange, and lettre would put its connection back in
    /// the pool with a reply possibly still on its way, to be read as the
    /// answer to the next email's command. So the whole pool is retired
    /// first (a fresh one takes its place), and the dropped connection is
    /// closed instead of reused. A send cut short from outside (a shutdown
    /// deadline dropping the handler) retires it the same way, through a
    /// drop guard.
    async fn deliver(&self, message: Message) -> Result<(), Delivery> {
        let transport = self.transport();
        let send = transport.send(message);
        tokio::pin!(send);
        // Declared after `send`, so dropped before it.
        let mut unfinished = Unfinished {
            consumer: self,
            transport: &transport,
            armed: true,
        };
        let result = tokio::select! {
            result = &mut send => result.map(drop).map_err(Delivery::Smtp),
            () = tokio::time::sleep(self.settings.timeout) => {
                self.retire(&transport);
                // Shut before the send is dropped, so its connection finds
                // the pool closed. Closing says QUIT on the idle connections,
                // which a stuck server may never answer: bounded too.
                let _ = tokio::time::timeout(self.settings.timeout, transport.shutdown()).await;
                Err(Delivery::TimedOut)
            }
        };
        unfinished.armed = false;
        result
    }

    /// Puts a fresh pool in place of `transport`, unless that was done
    /// already. The old one closes its connections once the sends still on
    /// it let it go.
    fn retire(&self, transport: &Arc<AsyncSmtpTransport<Tokio1Executor>>) {
        let mut current = self
            .transport
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if Arc::ptr_eq(&current, transport) {
            *current = Arc::new(self::transport(&self.settings));
        }
    }

    /// Renders, addresses and sends email `index` of `event`.
    async fn send(&self, event: Uuid, index: usize, n: &Notification) -> Result<(), SendError> {
        let rendered = self
            .renderer
            .render(n)
            .map_err(|source| SendError::Render {
                index,
                template: n.template.clone(),
                recipient: n.recipient.clone(),
                source,
            })?;
        let to: Mailbox =
            n.recipient
                .trim()
                .parse()
                .map_err(|source| SendError::InvalidRecipient {
                    index,
                    template: n.template.clone(),
                    recipient: n.recipient.clone(),
                    source,
                })?;
        let message = self.message(event, index, n, to, rendered)?;
        let server = self.settings.server();
        let template = n.template.clone();
        let recipient = n.recipient.clone();
        match self.deliver(message).await {
            Ok(()) => Ok(()),
            Err(Delivery::TimedOut) => Err(SendError::TimedOut {
                server,
                index,
                template,
                recipient,
                after: self.settings.timeout,
            }),
            Err(Delivery::Smtp(source)) => Err(if source.is_permanent() {
                SendError::Rejected {
                    server,
                    index,
                    template,
                    recipient,
                    source,
                }
            } else if source.is_transient() {
                SendError::Deferred {
                    server,
                    index,
                    template,
                    recipient,
                    source,
                }
            } else {
                SendError::Unreachable {
                    server,
                    index,
                    template,
                    recipient,
                    source,
                }
            }),
        }
    }

    /// The message for one rendered email.
    fn message(
        &self,
        event: Uuid,
        index: usize,
        n: &Notification,
        to: Mailbox,
        rendered: Rendered,
    ) -> Result<Message, SendError> {
        let invalid = |problem: String, source: Option<BoxError>| SendError::InvalidEmail {
            index,
            template: n.template.clone(),
            recipient: n.recipient.clone(),
            problem,
            source,
        };
        // The same id on every attempt, so a receiver can tell a resent
        // email (after a crash between sending and recording) from a new one.
        let message_id = format!("<{event}.{index}@{}>", self.settings.from.email.domain());
        let mut builder = Message::builder()
            .from(self.settings.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(message_id));
        if let Some(reply_to) = rendered.reply_to {
            let mailbox: Mailbox = reply_to.trim().parse().map_err(|err| {
                invalid(
                    format!("reply-to `{reply_to}` is not an email address"),
                    Some(Box::new(err)),
                )
            })?;
            builder = builder.reply_to(mailbox);
        }
        for (name, value) in rendered.headers {
            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(invalid(
                    format!(
                        "header `{name}` is set by the mailer; use the `Rendered` field for it or leave it out"
                    ),
                    None,
                ));
            }
            let header = HeaderName::new_from_ascii(name.clone()).map_err(|err| {
                invalid(
                    format!("`{name}` is not a header name (ASCII letters, digits and `-`)"),
                    Some(Box::new(err)),
                )
            })?;
            builder = builder.raw_header(HeaderValue::new(header, value));
        }
        let built = match rendered.html {
            None => builder.singlepart(SinglePart::plain(rendered.text)),
            Some(html) => builder.multipart(MultiPart::alternative_plain_html(rendered.text, html)),
        };
        built.map_err(|err| {
            invalid(
                "the message could not be built".to_owned(),
                Some(Box::new(err)),
            )
        })
    }
}

impl Consumer for MailerConsumer {
    async fn handle(&self, event: &AnyEvent) -> Result<(), BoxError> {
        let Some(notifications) = crate::protocol::notifications(event) else {
            return Ok(());
        };
        let emails: Vec<(usize, &Notification)> = notifications
            .iter()
            .enumerate()
            .filter(|(_, n)| n.channel == Channel::Email)
            .collect();
        let id = event.meta().id;
        // One email has nothing to skip on a retry: no need to remember it.
        let remember = emails.len() > 1;
        let done = if remember {
            self.progress.sent(id)
        } else {
            Default::default()
        };
        let mut failure: Option<SendError> = None;
        for (index, n) in emails {
            if done.contains(&index) {
                continue;
            }
            match self.send(id, index, n).await {
                Ok(()) => {
                    if remember {
                        self.progress.record(id, index);
                    }
                }
                Err(err) => {
                    // Go on with the others: one bad address must not hold
                    // back the rest. The event's error is a retryable one if
                    // any is, so those are tried again.
                    let keep_new = match &failure {
                        None => true,
                        Some(first) => first.is_permanent() && !err.is_permanent(),
                    };
                    let other = if keep_new {
                        failure.replace(err)
                    } else {
                        Some(err)
                    };
                    if let Some(other) = other {
                        tracing::warn!(
                            event = %id,
                            error = %crate::failure::error_chain(&other).join(": "),
                            "another email of the event failed too",
                        );
                    }
                }
            }
        }
        match failure {
            None => {
                if remember {
                    self.progress.forget(id);
                }
                Ok(())
            }
            Some(err) if err.is_permanent() => Err(crate::Permanent::new(err).into()),
            Some(err) => Err(err.into()),
        }
    }

    fn describe(&self) -> Option<String> {
        Some("email::Mailer".to_owned())
    }
}
