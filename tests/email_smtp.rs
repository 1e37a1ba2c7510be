//! Email notifications sent over SMTP to a real server the test starts
//! (`common/smtp.rs`): what arrives, what is skipped, what a 4xx and a 5xx
//! reply do, a server that is down, silent or not SMTP at all, and bad
//! templates, addresses and settings.

#[path = "common/smtp.rs"]
mod smtp;

use eventbus::email::{ConfigError, Mailer, MailerBuilder, RenderError, Rendered, Tls, render_fn};
use eventbus::{Bus, DeadLetter, Event, Notifiable, Notification, Retry, event, register};
use mail_parser::{MessageParser, MimeHeaders};
use smtp::SmtpServer;
use std::future::Future;
use std::time::Duration;

/// A user signed up: one welcome email.
#[event(name = "user.created")]
struct UserCreated {
    email: String,
    name: String,
}

#[register]
impl Notifiable for UserCreated {
    fn notifications(&self) -> Vec<Notification> {
        vec![Notification::email(&self.email, "welcome").data("name", self.name.as_str())]
    }
}

/// A comment: a push and a text to the author, an email to the owner.
#[event(name = "comment.posted")]
struct CommentPosted {
    owner_email: String,
    author_phone: String,
}

#[register]
impl Notifiable for CommentPosted {
    fn notifications(&self) -> Vec<Notification> {
        vec![
            Notification::push("device-7", "new-comment"),
            Notification::sms(&self.author_phone, "comment-received"),
            Notification::email(&self.owner_email, "new-comment"),
        ]
    }
}

/// One template sent to several people, in order.
#[event(name = "announcement.made")]
struct AnnouncementMade {
    recipients: Vec<String>,
    template: String,
}

#[register]
impl Notifiable for AnnouncementMade {
    fn notifications(&self) -> Vec<Notification> {
        self.recipients
            .iter()
            .map(|to| Notification::email(to, self.template.as_str()))
            .collect()
    }
}

fn announce(recipients: &[&str], template: &str) -> AnnouncementMade {
    AnnouncementMade::new(
        recipients.iter().map(|r| (*r).to_owned()).collect(),
        template.to_owned(),
    )
}

/// The test's templates: a rich one, plain ones, and two that render
/// something the mailer must refuse.
fn templates() -> impl eventbus::email::Render {
    render_fn(|n: &Notification| match n.template.as_str() {
        "welcome" => {
            let name = n
                .data
                .get("name")
                .and_then(|v| v.as_str())
                .ok_or_else(|| RenderError::failed("welcome", "the `name` value is missing"))?;
            Ok(Rendered::new(
                format!("Welcome, {name}!"),
                format!("Hello {name}, your account is ready."),
            )
            .html(format!(
                "<p>Hello <b>{name}</b>, your account is ready.</p>"
            ))
            .reply_to("Support <support@example.com>")
            .header("X-Campaign", "onboarding"))
        }
        "new-comment" => Ok(Rendered::new(
            "New comment",
            "Someone commented on your post.",
        )),
        "news" => Ok(Rendered::new("News", "Something happened.")),
        "huge" => Ok(Rendered::new("Huge", "x".repeat(200_000))),
        "bad-reply-to" => Ok(Rendered::new("Hi", "Hi").reply_to("support at example")),
        "sets-from" => Ok(Rendered::new("Hi", "Hi").header("From", "ceo@example.com")),
        other => Err(RenderError::unknown_template(other)),
    })
}

fn mailer_for(port: u16) -> MailerBuilder {
    Mailer::builder("127.0.0.1")
        .port(port)
        .tls(Tls::None)
        .hello_name("app.example.com")
        .from("Shop <shop@example.com>")
        .timeout(Duration::from_secs(5))
        .render(templates())
}

fn fast_retry(attempts: u32) -> Retry {
    Retry::exponential(Duration::from_millis(1))
        .max_attempts(attempts)
        .max_delay(Duration::from_millis(5))
}

/// A bus with the mailer subscribed as `email`.
async fn bus_with(mailer: Mailer, retry: Retry) -> Bus {
    let bus = Bus::builder().build().unwrap();
    bus.subscribe("email", mailer)
        .retry(retry)
        .start()
        .await
        .unwrap();
    bus
}

/// Bounded, so a hang fails the test instead of stalling the suite.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("HANG: {what} did not finish within 60s"))
}

async fn drain(bus: &Bus) {
    within("drain", bus.drain()).await.unwrap();
}

async fn letters(bus: &Bus) -> Vec<DeadLetter> {
    bus.dead_letters().list().await.unwrap()
}

fn parse(data: &[u8]) -> mail_parser::Message<'_> {
    MessageParser::default()
        .parse(data)
        .expect("the server received a parsable message")
}

fn first_address(address: Option<&mail_parser::Address<'_>>) -> (String, String) {
    let addr = address.and_then(|a| a.first()).expect("an address");
    (
        addr.name().unwrap_or_default().to_owned(),
        addr.address().unwrap_or_default().to_owned(),
    )
}

#[tokio::test]
async fn an_email_notification_arrives_with_its_headers_and_bodies() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(3)).await;

    let event = UserCreated::new("ada@example.com".into(), "Ada".into());
    let event_id = event.meta().id;
    bus.notify(event).await.unwrap();
    drain(&bus).await;

    let received = server.received();
    assert_eq!(received.len(), 1, "one notification, one message");
    let message = &received[0];
    assert_eq!(message.envelope_from, "shop@example.com");
    assert_eq!(message.envelope_to, ["ada@example.com"]);

    let parsed = parse(&message.data);
    assert_eq!(
        first_address(parsed.from()),
        ("Shop".to_owned(), "shop@example.com".to_owned())
    );
    assert_eq!(first_address(parsed.to()).1, "ada@example.com");
    assert_eq!(
        first_address(parsed.reply_to()),
        ("Support".to_owned(), "support@example.com".to_owned())
    );
    assert_eq!(parsed.subject(), Some("Welcome, Ada!"));
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim_end),
        Some("Hello Ada, your account is ready.")
    );
    assert_eq!(
        parsed.body_html(0).as_deref().map(str::trim_end),
        Some("<p>Hello <b>Ada</b>, your account is ready.</p>")
    );
    assert_eq!(
        parsed.header_raw("X-Campaign").map(str::trim),
        Some("onboarding")
    );
    assert_eq!(
        parsed.message_id(),
        Some(format!("{event_id}.0@example.com").as_str()),
        "the Message-ID is the event's id and the notification's place"
    );
    assert!(parsed.date().is_some());
    assert!(letters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_text_only_email_has_no_html_part() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(3)).await;

    bus.notify(announce(&["bo@example.com"], "news"))
        .await
        .unwrap();
    drain(&bus).await;

    let received = server.received();
    assert_eq!(received.len(), 1);
    let parsed = parse(&received[0].data);
    assert_eq!(parsed.subject(), Some("News"));
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim_end),
        Some("Something happened.")
    );
    let content_type = parsed.content_type().expect("a content type");
    assert_eq!(
        (content_type.ctype(), content_type.subtype()),
        ("text", Some("plain")),
        "one plain text part, no HTML"
    );
    assert!(parsed.reply_to().is_none());
}

#[tokio::test]
async fn other_channels_are_skipped_and_events_without_notifications_ignored() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(3)).await;

    bus.notify(CommentPosted::new(
        "owner@example.com".into(),
        "+15550100".into(),
    ))
    .await
    .unwrap();
    bus.notify(announce(&[], "news")).await.unwrap();
    drain(&bus).await;

    let received = server.received();
    assert_eq!(
        received.len(),
        1,
        "the push and the text message are not sent"
    );
    assert_eq!(received[0].envelope_to, ["owner@example.com"]);
    assert_eq!(parse(&received[0].data).subject(), Some("New comment"));
    assert!(letters(&bus).await.is_empty());
    assert_eq!(bus.stats()[0].failed, 0);
}

#[tokio::test]
async fn a_4xx_reply_is_retried_then_delivered() {
    let server = SmtpServer::start().await;
    server.reply_to_rcpt("ada@example.com", 451, "4.7.1 greylisted, try again later");
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert_eq!(server.rcpt_attempts("ada@example.com"), 2);
    assert_eq!(server.received_by("ada@example.com").len(), 1);
    assert!(letters(&bus).await.is_empty());
    let stats = &bus.stats()[0];
    assert_eq!(stats.failed, 1);
    assert_eq!(stats.retried, 1);
}

#[tokio::test]
async fn a_4xx_reply_every_time_dead_letters_after_the_last_attempt() {
    let server = SmtpServer::start().await;
    for _ in 0..3 {
        server.reply_to_rcpt("ada@example.com", 452, "4.2.2 mailbox full");
    }
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(3)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert_eq!(server.rcpt_attempts("ada@example.com"), 3);
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3);
    let errors = letters[0].errors.join(": ");
    assert!(
        errors.contains("deferred email 0 (template `welcome`) to `ada@example.com`"),
        "{errors}"
    );
    assert!(
        errors.contains("452") && errors.contains("4.2.2 mailbox full"),
        "{errors}"
    );
}

#[tokio::test]
async fn a_5xx_reply_dead_letters_at_once_with_the_servers_message() {
    let server = SmtpServer::start().await;
    server.reply_to_rcpt("gone@example.com", 550, "5.1.1 no such mailbox here");
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    bus.notify(UserCreated::new("gone@example.com".into(), "Gone".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert_eq!(server.rcpt_attempts("gone@example.com"), 1, "not retried");
    assert!(server.received().is_empty());
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.subscription, "email");
    let errors = letter.errors.join(": ");
    assert!(
        errors.contains(&format!(
            "smtp server 127.0.0.1:{} rejected email 0 (template `welcome`) to `gone@example.com` for good",
            server.port()
        )),
        "{errors}"
    );
    assert!(errors.contains("550"), "{errors}");
    assert!(errors.contains("5.1.1 no such mailbox here"), "{errors}");
}

#[tokio::test]
async fn a_message_over_the_servers_size_limit_dead_letters_with_its_reply() {
    let server = SmtpServer::start().await;
    server.limit_size(100_000);
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    bus.notify(announce(&["bo@example.com"], "huge"))
        .await
        .unwrap();
    drain(&bus).await;

    assert!(server.received().is_empty());
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    let errors = letters[0].errors.join(": ");
    assert!(
        errors.contains("552") && errors.contains("message size exceeds fixed limit"),
        "{errors}"
    );
}

#[tokio::test]
async fn a_retry_sends_only_the_emails_not_yet_sent() {
    let server = SmtpServer::start().await;
    server.reply_to_rcpt("b@example.com", 451, "4.3.0 try again");
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    bus.notify(announce(
        &["a@example.com", "b@example.com", "c@example.com"],
        "news",
    ))
    .await
    .unwrap();
    drain(&bus).await;

    for to in ["a@example.com", "b@example.com", "c@example.com"] {
        assert_eq!(server.received_by(to).len(), 1, "{to} gets exactly one");
    }
    assert_eq!(server.rcpt_attempts("a@example.com"), 1, "not resent");
    assert_eq!(
        server.rcpt_attempts("c@example.com"),
        1,
        "not held back, not resent"
    );
    assert_eq!(server.rcpt_attempts("b@example.com"), 2);
    assert!(letters(&bus).await.is_empty());
}

#[tokio::test]
async fn a_5xx_among_several_sends_the_rest_and_a_replay_sends_only_it() {
    let server = SmtpServer::start().await;
    server.reply_to_rcpt("b@example.com", 550, "5.7.1 relaying denied for now");
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    bus.notify(announce(
        &["a@example.com", "b@example.com", "c@example.com"],
        "news",
    ))
    .await
    .unwrap();
    drain(&bus).await;

    assert_eq!(server.received_by("a@example.com").len(), 1);
    assert_eq!(server.received_by("c@example.com").len(), 1);
    assert!(server.received_by("b@example.com").is_empty());
    let dead = letters(&bus).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1, "dead-lettered at once");
    assert!(
        dead[0]
            .errors
            .join(": ")
            .contains("5.7.1 relaying denied for now")
    );

    // The server takes it now: the replay sends only the email that failed.
    bus.dead_letters().replay(dead[0].id).await.unwrap();
    drain(&bus).await;
    assert!(letters(&bus).await.is_empty());
    for to in ["a@example.com", "b@example.com", "c@example.com"] {
        assert_eq!(server.received_by(to).len(), 1, "{to} gets exactly one");
    }
}

#[tokio::test]
async fn a_server_that_is_down_is_retried_then_dead_lettered() {
    let port = smtp::closed_port();
    let bus = bus_with(mailer_for(port).build().unwrap(), fast_retry(3)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 3, "retried per the policy");
    let errors = letters[0].errors.join(": ");
    assert!(
        errors.contains(&format!(
            "could not send email 0 (template `welcome`) to `ada@example.com` through smtp server 127.0.0.1:{port}"
        )),
        "{errors}"
    );
    assert!(errors.to_lowercase().contains("refused"), "{errors}");
}

#[tokio::test]
async fn a_server_that_is_not_smtp_is_retried_then_dead_lettered() {
    let (port, connections, task) =
        smtp::garbage_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
    let bus = bus_with(mailer_for(port).build().unwrap(), fast_retry(2)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;
    task.abort();

    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    assert!(*connections.lock().unwrap() >= 2, "each attempt connected");
    let errors = letters[0].errors.join(": ");
    assert!(errors.contains("through smtp server 127.0.0.1"), "{errors}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_is_retried() {
    let (port, task) = smtp::silent_server().await;
    let mailer = mailer_for(port)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let bus = bus_with(mailer, fast_retry(2)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;
    task.abort();

    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 2);
    let errors = letters[0].errors.join(": ");
    assert!(
        errors.contains(&format!(
            "smtp server 127.0.0.1:{port} did not take email 0 (template `welcome`) to `ada@example.com` within 200ms; raise `timeout`"
        )),
        "{errors}"
    );
}

#[tokio::test]
async fn a_reply_later_than_the_timeout_is_retried_on_a_fresh_connection() {
    let server = SmtpServer::start().await;
    // The first message is taken, but its 250 comes after the timeout.
    server.delay_next_acceptance(Duration::from_millis(2500));
    let mailer = mailer_for(server.port())
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let bus = bus_with(mailer, fast_retry(3)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;
    bus.notify(UserCreated::new("bo@example.com".into(), "Bo".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert!(letters(&bus).await.is_empty());
    assert_eq!(bus.stats()[0].failed, 1, "the first attempt timed out");
    // The retry cannot know the server took the first copy: SMTP has no way
    // to ask. Both copies carry one Message-ID, for the receiver to tell.
    let ada = server.received_by("ada@example.com");
    assert_eq!(ada.len(), 2);
    assert_eq!(
        parse(&ada[0].data).message_id(),
        parse(&ada[1].data).message_id()
    );
    // The connection whose reply was late is not reused: its late 250
    // would be read as the answer to the next email's first command.
    assert!(server.connections() >= 2);
    assert_eq!(server.received_by("bo@example.com").len(), 1);
    assert_eq!(server.received().len(), 3);
}

#[tokio::test]
async fn non_ascii_subjects_and_bodies_arrive_intact() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(2)).await;

    bus.notify(UserCreated::new(
        "zoe@example.com".into(),
        "Zoë Grüße 日本".into(),
    ))
    .await
    .unwrap();
    drain(&bus).await;

    assert!(letters(&bus).await.is_empty());
    let received = server.received_by("zoe@example.com");
    assert_eq!(received.len(), 1);
    assert!(received[0].data.is_ascii(), "encoded for any server");
    let parsed = parse(&received[0].data);
    assert_eq!(parsed.subject(), Some("Welcome, Zoë Grüße 日本!"));
    assert_eq!(
        parsed.body_text(0).as_deref().map(str::trim_end),
        Some("Hello Zoë Grüße 日本, your account is ready.")
    );
}

#[tokio::test]
async fn an_unknown_template_dead_letters_at_once_naming_it() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    bus.notify(announce(&["a@example.com"], "no-such-template"))
        .await
        .unwrap();
    drain(&bus).await;

    assert_eq!(
        server.connections(),
        0,
        "nothing to send, nothing connected"
    );
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    let errors = letters[0].errors.join(": ");
    assert!(
        errors.contains("no email template named `no-such-template`"),
        "{errors}"
    );
}

#[tokio::test]
async fn a_template_that_fails_dead_letters_naming_it_and_why() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    // `welcome` needs a name, which this notification lacks.
    bus.notify(announce(&["a@example.com"], "welcome"))
        .await
        .unwrap();
    drain(&bus).await;

    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    let errors = letters[0].errors.join(": ");
    assert!(
        errors.contains("email template `welcome` failed to render"),
        "{errors}"
    );
    assert!(errors.contains("the `name` value is missing"), "{errors}");
}

#[tokio::test]
async fn an_invalid_recipient_dead_letters_with_a_clear_error() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    bus.notify(UserCreated::new("not-an-address".into(), "Nobody".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert_eq!(server.connections(), 0);
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1);
    let errors = letters[0].errors.join(": ");
    assert!(
        errors.contains("recipient `not-an-address` is not an email address; fix the address the `Notifiable` impl returns"),
        "{errors}"
    );
}

#[tokio::test]
async fn a_bad_reply_to_or_a_header_the_mailer_owns_dead_letters() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(5)).await;

    bus.notify(announce(&["a@example.com"], "bad-reply-to"))
        .await
        .unwrap();
    bus.notify(announce(&["a@example.com"], "sets-from"))
        .await
        .unwrap();
    drain(&bus).await;

    assert!(server.received().is_empty());
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 2);
    assert!(letters.iter().all(|l| l.attempts == 1));
    let first = letters[0].errors.join(": ");
    assert!(
        first.contains("reply-to `support at example` is not an email address; fix the renderer"),
        "{first}"
    );
    let second = letters[1].errors.join(": ");
    assert!(
        second.contains("header `From` is set by the mailer"),
        "{second}"
    );
}

#[tokio::test]
async fn credentials_log_in_and_wrong_ones_dead_letter_with_the_reply() {
    let server = SmtpServer::with_login("app", "s3cret").await;
    let good = mailer_for(server.port())
        .credentials("app", "s3cret")
        .build()
        .unwrap();
    let bus = bus_with(good, fast_retry(3)).await;
    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;
    assert_eq!(server.received_by("ada@example.com").len(), 1);
    assert!(letters(&bus).await.is_empty());

    let bad = mailer_for(server.port())
        .credentials("app", "wrong")
        .build()
        .unwrap();
    let bus = bus_with(bad, fast_retry(3)).await;
    bus.notify(UserCreated::new("bo@example.com".into(), "Bo".into()))
        .await
        .unwrap();
    drain(&bus).await;
    assert!(server.received_by("bo@example.com").is_empty());
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].attempts, 1, "a 535 is permanent");
    let errors = letters[0].errors.join(": ");
    assert!(
        errors.contains("535") && errors.contains("Invalid credentials"),
        "{errors}"
    );
}

#[tokio::test]
async fn starttls_required_on_a_server_without_it_never_falls_back_to_plain_text() {
    let server = SmtpServer::start().await;
    let mailer = mailer_for(server.port())
        .tls(Tls::StartTls)
        .build()
        .unwrap();
    let bus = bus_with(mailer, fast_retry(2)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert!(server.received().is_empty(), "nothing sent in plain text");
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].attempts, 1,
        "a server without STARTTLS will not grow it on a retry"
    );
    let errors = letters[0].errors.join(": ");
    assert!(errors.contains("through smtp server 127.0.0.1"), "{errors}");
    assert!(
        errors.contains("STARTTLS is not supported on this server"),
        "{errors}"
    );
}

#[tokio::test]
async fn starttls_with_a_private_authority_encrypts_then_logs_in() {
    let ca = smtp::TestCa::new();
    // mailin offers AUTH only once the connection is encrypted: a message
    // that arrives proves STARTTLS, the certificate check and the login.
    let server = SmtpServer::with_starttls(&ca, "app", "s3cret").await;
    let mailer = mailer_for(server.port())
        .tls(Tls::StartTls)
        .root_certificate(ca.ca_pem.as_str())
        .credentials("app", "s3cret")
        .build()
        .unwrap();
    let bus = bus_with(mailer, fast_retry(2)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert!(letters(&bus).await.is_empty());
    let received = server.received_by("ada@example.com");
    assert_eq!(received.len(), 1);
    assert_eq!(parse(&received[0].data).subject(), Some("Welcome, Ada!"));
}

#[tokio::test]
async fn implicit_tls_with_a_private_authority_delivers() {
    let ca = smtp::TestCa::new();
    let server = SmtpServer::with_implicit_tls(&ca).await;
    let mailer = mailer_for(server.port())
        .tls(Tls::Implicit)
        .root_certificate(ca.ca_pem.as_str())
        .build()
        .unwrap();
    let bus = bus_with(mailer, fast_retry(2)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert!(letters(&bus).await.is_empty());
    assert_eq!(server.received_by("ada@example.com").len(), 1);
}

#[tokio::test]
async fn a_certificate_from_an_unknown_authority_is_refused_and_nothing_is_sent() {
    let ca = smtp::TestCa::new();
    let server = SmtpServer::with_starttls(&ca, "app", "s3cret").await;
    // The server's authority is not among the trusted ones.
    let mailer = mailer_for(server.port())
        .tls(Tls::StartTls)
        .credentials("app", "s3cret")
        .build()
        .unwrap();
    let bus = bus_with(mailer, fast_retry(2)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert!(server.received().is_empty());
    let letters = letters(&bus).await;
    assert_eq!(letters.len(), 1);
    assert_eq!(
        letters[0].attempts, 2,
        "retried: the server may fix its certificate"
    );
    let errors = letters[0].errors.join(": ");
    assert!(errors.contains("through smtp server 127.0.0.1"), "{errors}");
    assert!(errors.contains("UnknownIssuer"), "{errors}");
}

#[tokio::test]
async fn emails_reuse_a_pooled_connection() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(2)).await;

    // One at a time: lettre puts a connection back in the pool from a task
    // of its own after the send, so back-to-back sends may open a second.
    for name in ["a", "b", "c", "d"] {
        bus.notify(UserCreated::new(format!("{name}@example.com"), name.into()))
            .await
            .unwrap();
        drain(&bus).await;
    }

    assert_eq!(server.received().len(), 4);
    assert_eq!(
        server.connections(),
        1,
        "one connection, kept between emails"
    );
}

#[tokio::test]
async fn a_concurrent_subscription_sends_every_email_once() {
    let server = SmtpServer::start().await;
    let bus = Bus::builder().build().unwrap();
    bus.subscribe(
        "email",
        mailer_for(server.port()).pool_size(3).build().unwrap(),
    )
    .concurrent(8)
    .retry(fast_retry(2))
    .start()
    .await
    .unwrap();

    for i in 0..20 {
        bus.notify(UserCreated::new(
            format!("user{i}@example.com"),
            format!("User {i}"),
        ))
        .await
        .unwrap();
    }
    drain(&bus).await;

    assert!(letters(&bus).await.is_empty());
    for i in 0..20 {
        assert_eq!(server.received_by(&format!("user{i}@example.com")).len(), 1);
    }
}

#[test]
fn bad_settings_are_refused_at_build_naming_the_setting() {
    fn err(builder: MailerBuilder) -> String {
        let err: ConfigError = builder.build().unwrap_err();
        err.to_string()
    }
    let ok = || mailer_for(2525);

    assert!(
        err(Mailer::builder(" ")
            .from("a@example.com")
            .render(templates()))
        .starts_with("the smtp server's host is empty")
    );
    assert!(err(ok().port(0)).starts_with("`port` is 0"));
    assert!(
        err(Mailer::builder("localhost").render(templates()))
            .starts_with("no sender address; call `from`")
    );
    assert!(
        err(ok().from("shop.example.com"))
            .starts_with("`from` address `shop.example.com` is not an email address")
    );
    assert!(
        err(Mailer::builder("localhost").from("a@example.com"))
            .starts_with("no renderer; call `render`")
    );
    assert!(err(ok().pool_size(0)).starts_with("`pool_size` must be at least 1"));
    assert!(err(ok().timeout(Duration::ZERO)).starts_with("`timeout` must be above zero"));
    assert!(err(ok().progress_capacity(0)).starts_with("`progress_capacity` must be at least 1"));
    assert!(
        err(ok().root_certificate("-----BEGIN CERTIFICATE-----"))
            .starts_with("`root_certificate` is set but `tls` is `Tls::None`")
    );
    assert!(
        err(ok()
            .tls(Tls::StartTls)
            .root_certificate("not a certificate"))
        .starts_with("`root_certificate` holds no PEM certificate")
    );
    assert!(
        err(ok().tls(Tls::Implicit).root_certificate(
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
        ))
        .starts_with("`root_certificate` holds no PEM certificate")
    );

    // The usual settings build, with every TLS mode.
    for tls in [Tls::None, Tls::StartTls, Tls::Implicit] {
        mailer_for(25).tls(tls).build().unwrap();
    }
}

#[test]
fn the_mailer_is_a_clone_send_sync_handle() {
    fn assert_handle<T: Clone + Send + Sync + 'static>() {}
    assert_handle::<Mailer>();
}

#[tokio::test]
async fn a_5xx_and_a_4xx_in_one_event_both_reach_the_letter_and_the_5xx_is_not_retried() {
    let server = SmtpServer::start().await;
    server.reply_to_rcpt("b@example.com", 550, "5.1.1 no such user here");
    server.reply_to_rcpt("b@example.com", 550, "5.1.1 no such user here");
    server.reply_to_rcpt("c@example.com", 451, "4.3.0 try again later");
    server.reply_to_rcpt("c@example.com", 451, "4.3.0 try again later");
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(2)).await;

    bus.notify(announce(
        &["a@example.com", "b@example.com", "c@example.com"],
        "news",
    ))
    .await
    .unwrap();
    drain(&bus).await;

    assert_eq!(server.received_by("a@example.com").len(), 1);
    assert_eq!(
        server.rcpt_attempts("b@example.com"),
        1,
        "a recipient refused for good is not tried again on the retry"
    );
    assert_eq!(
        server.rcpt_attempts("c@example.com"),
        2,
        "the 4xx is retried"
    );
    let dead = letters(&bus).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    let errors = dead[0].errors.join(": ");
    for wanted in [
        "2 emails of the event failed",
        "email 1 (template `news`) to `b@example.com`",
        "550",
        "5.1.1 no such user here",
        "email 2 (template `news`) to `c@example.com`",
        "451",
        "4.3.0 try again later",
    ] {
        assert!(errors.contains(wanted), "`{wanted}` missing from: {errors}");
    }
}

/// Two emails whose list comes back reversed on every call, as one built
/// from a `HashMap` may.
#[event(name = "digest.ready")]
struct DigestReady {
    recipients: Vec<String>,
}

static DIGEST_REVERSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[register]
impl Notifiable for DigestReady {
    fn notifications(&self) -> Vec<Notification> {
        let reversed = DIGEST_REVERSED.fetch_xor(true, std::sync::atomic::Ordering::SeqCst);
        let mut list: Vec<Notification> = self
            .recipients
            .iter()
            .map(|to| Notification::email(to, "news"))
            .collect();
        if reversed {
            list.reverse();
        }
        list
    }
}

#[tokio::test]
async fn a_list_in_another_order_on_the_retry_sends_every_email_at_least_once() {
    let server = SmtpServer::start().await;
    server.reply_to_rcpt("y@example.com", 451, "4.3.0 try again later");
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(3)).await;

    bus.notify(DigestReady::new(vec![
        "x@example.com".to_owned(),
        "y@example.com".to_owned(),
    ]))
    .await
    .unwrap();
    drain(&bus).await;

    assert!(letters(&bus).await.is_empty());
    assert_eq!(
        server.received_by("y@example.com").len(),
        1,
        "the deferred email is not skipped because another took its place"
    );
    // Sent again rather than risk never: the record no longer matched.
    assert_eq!(server.received_by("x@example.com").len(), 2);
}

#[tokio::test]
async fn a_5xx_reply_is_not_told_twice_in_the_letter() {
    let server = SmtpServer::start().await;
    server.reply_to_rcpt("ada@example.com", 554, "no service for you");
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(3)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    let dead = letters(&bus).await;
    assert_eq!(dead.len(), 1);
    let errors = dead[0].errors.join(": ");
    assert_eq!(errors.matches("no service for you").count(), 1, "{errors}");
    assert!(errors.contains("rejected email 0"), "{errors}");
}

#[tokio::test]
async fn a_refused_login_is_told_as_such_not_as_a_refused_recipient() {
    let server = SmtpServer::with_login("app", "s3cret").await;
    let bad = mailer_for(server.port())
        .credentials("app", "wrong")
        .build()
        .unwrap();
    let bus = bus_with(bad, fast_retry(3)).await;
    bus.notify(UserCreated::new("bo@example.com".into(), "Bo".into()))
        .await
        .unwrap();
    drain(&bus).await;

    let dead = letters(&bus).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    let errors = dead[0].errors.join(": ");
    assert!(
        errors.contains(
            "refused the session (its greeting, `EHLO`, `STARTTLS` or the login) before email 0"
        ),
        "{errors}"
    );
    assert!(errors.contains("check `credentials`"), "{errors}");
    assert!(!errors.contains("rejected email"), "{errors}");
    assert!(errors.contains("535"), "{errors}");
}

#[tokio::test]
async fn a_non_ascii_address_to_a_server_without_smtputf8_dead_letters_at_once() {
    let server = SmtpServer::start().await;
    let bus = bus_with(mailer_for(server.port()).build().unwrap(), fast_retry(3)).await;

    bus.notify(UserCreated::new("zoë@example.com".into(), "Zoë".into()))
        .await
        .unwrap();
    drain(&bus).await;

    assert!(server.received().is_empty());
    let dead = letters(&bus).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1, "it can never succeed: not retried");
    let errors = dead[0].errors.join(": ");
    assert!(
        errors.contains("email 0 (template `welcome`) to `zoë@example.com` cannot be sent"),
        "{errors}"
    );
    assert!(errors.contains("SMTPUTF8"), "{errors}");
    assert!(errors.contains("non-ascii"), "lettre's own words: {errors}");
}

#[test]
fn a_hello_name_or_host_that_is_not_a_name_is_refused_at_build() {
    fn err(builder: MailerBuilder) -> String {
        let err: ConfigError = builder.build().unwrap_err();
        err.to_string()
    }
    for name in [
        "app.example.com\r\nRCPT TO:<victim@example.com>",
        "app example.com",
        "-app.example.com",
        "[not an address]",
        "",
    ] {
        let message = err(mailer_for(2525).hello_name(name));
        assert!(message.starts_with("`hello_name` `"), "{message}");
        assert!(!message.contains('\n'), "the name is escaped: {message}");
    }
    for name in [
        "app.example.com",
        "localhost",
        "[192.0.2.1]",
        "[IPv6:2001:db8::1]",
        "192.0.2.1",
    ] {
        mailer_for(2525).hello_name(name).build().unwrap();
    }

    for host in [
        "127.0.0.1:2525",
        "smtp://mail.example.com",
        "mail example.com",
    ] {
        let message = err(Mailer::builder(host)
            .tls(Tls::None)
            .from("a@example.com")
            .render(templates()));
        assert!(
            message.starts_with(&format!(
                "the smtp server's host `{host}` is not a host name or an ip address"
            )),
            "{message}"
        );
        assert!(message.contains("`.port()`"), "{message}");
    }
    for host in ["mail.example.com", "localhost", "127.0.0.1", "::1"] {
        Mailer::builder(host)
            .tls(Tls::None)
            .from("a@example.com")
            .render(templates())
            .build()
            .unwrap();
    }
}

#[tokio::test]
async fn an_address_literal_hello_name_is_accepted_by_a_server() {
    let server = SmtpServer::start().await;
    let mailer = mailer_for(server.port())
        .hello_name("[127.0.0.1]")
        .build()
        .unwrap();
    let bus = bus_with(mailer, fast_retry(2)).await;
    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;
    assert!(letters(&bus).await.is_empty());
    assert_eq!(server.received_by("ada@example.com").len(), 1);
}

#[tokio::test]
async fn a_5xx_greeting_is_told_as_a_refused_session_once() {
    let (port, connections, _server) = smtp::garbage_server(b"554 no service for you\r\n").await;
    let bus = bus_with(mailer_for(port).build().unwrap(), fast_retry(3)).await;

    bus.notify(UserCreated::new("ada@example.com".into(), "Ada".into()))
        .await
        .unwrap();
    drain(&bus).await;

    let dead = letters(&bus).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1, "a 5xx greeting is permanent");
    let errors = dead[0].errors.join(": ");
    assert!(
        errors.contains("refused the session (its greeting, `EHLO`, `STARTTLS` or the login) before email 0 (template `welcome`) to `ada@example.com`"),
        "{errors}"
    );
    assert!(!errors.contains("rejected email"), "{errors}");
    assert!(errors.contains("554"), "{errors}");
    assert_eq!(errors.matches("no service for you").count(), 1, "{errors}");
    // The send, and the probe that tells a refused session from a refused
    // email.
    assert_eq!(*connections.lock().unwrap(), 2);
}
