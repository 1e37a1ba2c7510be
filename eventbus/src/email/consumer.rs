//! The started mailer: one SMTP message per email notification, on a
//! pooled connection, each failure sorted into "retry" or "give up".

use super::config::{Mailer, Settings};
use super::error::{EmailsFailed, SendError, told};
use super::progress::{Done, Outcome, Progress, fingerprint};
use super::render::{Render, Rendered};
use crate::consumer::{BoxError, Consumer, Context, IntoConsumer};
use crate::event::AnyEvent;
use crate::protocol::Notifiable;
use crate::protocol::{Channel, Notification};
use crate::subscription::Filter;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::Tls as LettreTls;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
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

/// How long a timed-out send's pool is given to say `QUIT` on its idle
/// connections before they are dropped unanswered, which closes them all
/// the same. Short, so that one attempt takes about `timeout`, not twice.
const RETIRE_GRACE: Duration = Duration::from_millis(250);

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
        builder = builder.hello_name(name.clone());
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
                // which a stuck server may never answer: given a short grace
                // only, past which they are dropped, closed unanswered.
                let grace = RETIRE_GRACE.min(self.settings.timeout);
                let _ = tokio::time::timeout(grace, transport.shutdown()).await;
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
            Err(Delivery::Smtp(source)) => Err(if source.is_client() {
                SendError::Unsendable {
                    server,
                    index,
                    template,
                    recipient,
                    source,
                }
            } else if source.is_permanent() && self.session_refused().await {
                SendError::Refused {
                    server,
                    index,
                    template,
                    recipient,
                    source,
                }
            } else if source.is_permanent() {
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

    /// Whether the server refuses a session before any email is named, by a
    /// 5xx to its greeting, `EHLO`, `STARTTLS` or the login: asked after a
    /// 5xx, which lettre does not say the stage of, so that a refused login
    /// is not told as a refused recipient. On a transport of its own,
    /// dropped after, so that a check cut short by the timeout leaves
    /// nothing half-said in the shared pool.
    async fn session_refused(&self) -> bool {
        let probe = transport(&self.settings);
        let answer = tokio::time::timeout(self.settings.timeout, probe.test_connection()).await;
        matches!(answer, Ok(Err(err)) if err.is_permanent())
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
        let fingerprints: HashMap<usize, u64> = if remember {
            emails.iter().map(|&(i, n)| (i, fingerprint(n))).collect()
        } else {
            HashMap::new()
        };
        let mut done = if remember {
            self.progress.done(id)
        } else {
            HashMap::new()
        };
        if done
            .iter()
            .any(|(index, d)| fingerprints.get(index) != Some(&d.fingerprint))
        {
            // The list changed since the last attempt (built from a map, in
            // another order): what the indices say was sent may not be. At
            // least once beats never, so all are sent again.
            tracing::warn!(
                event = %id,
                "the event's email notifications differ from its last attempt's; sending them all again (return them in the same order every time to avoid this)",
            );
            self.progress.forget(id);
            done.clear();
        }
        let mut failures = Vec::new();
        for (index, n) in emails {
            match done.get(&index).map(|d| &d.outcome) {
                Some(Outcome::Sent) => continue,
                Some(Outcome::Rejected { reply }) => {
                    failures.push(SendError::RejectedEarlier {
                        server: self.settings.server(),
                        index,
                        template: n.template.clone(),
                        recipient: n.recipient.clone(),
                        reply: reply.clone(),
                    });
                    continue;
                }
                None => {}
            }
            // Go on after a failure: one bad address must not hold back
            // the rest.
            let result = self.send(id, index, n).await;
            if !remember {
                if let Err(err) = result {
                    failures.push(err);
                }
                continue;
            }
            let outcome = match &result {
                Ok(()) => Some(Outcome::Sent),
                // Refused for good: not tried again on this event's retries.
                Err(SendError::Rejected { source, .. }) => Some(Outcome::Rejected {
                    reply: told(source),
                }),
                Err(_) => None,
            };
            if let Some(outcome) = outcome {
                let fingerprint = fingerprints[&index];
                self.progress.record(
                    id,
                    index,
                    Done {
                        fingerprint,
                        outcome,
                    },
                );
            }
            if let Err(err) = result {
                failures.push(err);
            }
        }
        if failures.is_empty() {
            if remember {
                self.progress.forget(id);
            }
            return Ok(());
        }
        let error = EmailsFailed::new(failures);
        if error.is_permanent() {
            // Dead-lettered now: a replay of the letter is the user asking
            // to try the refused ones again.
            if remember {
                self.progress.forget_rejected(id);
            }
            Err(crate::Permanent::new(error).into())
        } else {
            Err(error.into())
        }
    }

    fn describe(&self) -> Option<String> {
        Some("email::Mailer".to_owned())
    }
}

impl IntoConsumer for Mailer {
    type Consumer = MailerConsumer;

    fn into_consumer(self, _context: &Context) -> Result<MailerConsumer, BoxError> {
        // Here and not in `build`: lettre's pool starts its idle-connection
        // sweeper on the runtime, which a subscription's start runs in.
        Ok(MailerConsumer::start(self.settings, self.renderer))
    }

    fn interest(&self) -> Filter {
        Filter::all().protocol::<dyn Notifiable>()
    }

    fn describe(&self) -> Option<String> {
        Some("email::Mailer".to_owned())
    }
}
