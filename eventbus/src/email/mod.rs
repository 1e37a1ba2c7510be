//! **Email notifications, sent over SMTP.** Needs the `email` feature.
//!
//! A [`Mailer`] is a consumer: subscribe it to a bus, and for every event
//! whose type implements [`Notifiable`](crate::Notifiable) it sends each
//! notification on the [`Channel::Email`](crate::Channel::Email) channel as
//! one SMTP message to the notification's recipient. Notifications on other
//! channels (push, SMS) are skipped, for another consumer to send, and
//! events without a `Notifiable` impl never reach it.
//!
//! The mailer has no template language. A [`Render`] of yours turns a
//! notification's template name and data into a subject, a text body and,
//! optionally, an HTML body, a `Reply-To` and extra headers.
//!
//! Messages go out through lettre's pooled async SMTP transport on rustls,
//! with the TLS mode of your choice ([`Tls`]). Each carries a `Message-ID`
//! made from the event's id and the notification's place in its list, the
//! same on every attempt.
//!
//! # Examples
//!
//! ```no_run
//! use eventbus::email::{Mailer, RenderError, Rendered, Tls, render_fn};
//! use eventbus::{Bus, Notifiable, Notification, Retry, event, register};
//! use std::time::Duration;
//!
//! /// A user signed up.
//! #[event(name = "user.created")]
//! struct UserCreated {
//!     email: String,
//!     name: String,
//! }
//!
//! #[register]
//! impl Notifiable for UserCreated {
//!     fn notifications(&self) -> Vec<Notification> {
//!         vec![Notification::email(&self.email, "welcome").data("name", self.name.as_str())]
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mailer = Mailer::builder("smtp.example.com")
//!     .tls(Tls::StartTls)
//!     .credentials("apikey", "secret")
//!     .from("Shop <shop@example.com>")
//!     .render(render_fn(|n| match n.template.as_str() {
//!         "welcome" => {
//!             let name = n.data["name"].as_str().unwrap_or("there");
//!             Ok(Rendered::new("Welcome!", format!("Hello {name}!"))
//!                 .html(format!("<p>Hello <b>{name}</b>!</p>")))
//!         }
//!         other => Err(RenderError::unknown_template(other)),
//!     }))
//!     .build()?;
//!
//! let bus = Bus::builder().build()?;
//! bus.subscribe("email", mailer)
//!     .retry(Retry::exponential(Duration::from_secs(1)).max_attempts(8))
//!     .start()
//!     .await?;
//!
//! bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
//!     .await?;
//! bus.drain().await?;
//! # Ok(()) }
//! ```
//!
//! # What is retried, what is dead-lettered
//!
//! | failure | what happens |
//! | --- | --- |
//! | a 4xx reply ("try again later"), a refused connection, a timeout, a TLS or network failure | an ordinary error: the bus retries the event per the subscription's [`Retry`](crate::Retry), then dead-letters it |
//! | a 5xx reply to an email | [`Permanent`](crate::Permanent): dead-lettered at once, with the server's code and message in the letter's errors ([`SendError::Rejected`]) |
//! | a 5xx reply to the greeting, `EHLO` or the login (a 535 for wrong credentials) | [`Permanent`](crate::Permanent), told as a refused session, not a refused recipient ([`SendError::Refused`]) |
//! | what the server lacks and the email needs: `SMTPUTF8` for a non-ASCII address, `STARTTLS` for [`Tls::StartTls`], a login method in common | [`Permanent`](crate::Permanent) ([`SendError::Unsendable`]) |
//! | an unknown template, a template that fails, a recipient or `Reply-To` that is not an address, a bad header | [`Permanent`](crate::Permanent): dead-lettered at once, naming the template or the address |
//!
//! Bad settings (a `from` that is not an address, a port of 0, a host with a
//! port or a scheme in it, a `hello_name` that is not a domain name, a root
//! certificate that is not PEM) are refused by
//! [`MailerBuilder::build`] with a [`ConfigError`] naming the setting.
//!
//! # Several emails in one event
//!
//! The emails of an event are sent one after the other, each to its own
//! recipient. When one fails, the rest are still tried, and the event's
//! error, an [`EmailsFailed`], lists every failed email with its place in
//! the list, its recipient and what the server said. It is a retryable one
//! if any failure was (so those are tried again), else a permanent one.
//!
//! The mailer remembers, in memory, which of the event's emails went out
//! and which the server refused with a 5xx (by event id, place in the list
//! and a fingerprint of the notification), so a retry sends only the
//! others: a refused one is not tried again, only told again in the error.
//! Once the event is dead-lettered the refusals are forgotten and the sent
//! ones kept, so a replay of its letter in the same process tries the
//! refused ones again and nothing else. Should the `Notifiable` impl return
//! another list on the retry (the same emails in another order, say, from a
//! `HashMap`), the record no longer matches: it is dropped, with a warning,
//! and all the event's emails are sent again, since at least once beats
//! never.
//!
//! What it cannot promise, and why:
//! - after a restart, or on another replica sharing the subscription, the
//!   memory is gone: a retried event sends all its emails again;
//! - past [`progress_capacity`](MailerBuilder::progress_capacity) events
//!   with several emails remembered (10,000 by default: the failed ones,
//!   and also the ones still being sent), the oldest is forgotten, with
//!   the same effect;
//! - an email the server accepted just as the connection broke, or just
//!   before a crash, is sent again: SMTP has no way to ask. Its
//!   `Message-ID` is the same both times, which lets a receiver tell.

mod config;
mod consumer;
mod error;
mod progress;
mod render;

pub use self::config::{Mailer, MailerBuilder, Tls};
pub use self::consumer::MailerConsumer;
pub use self::error::{ConfigError, EmailsFailed, RenderError, SendError};
pub use self::render::{FnRender, Render, Rendered, render_fn};
