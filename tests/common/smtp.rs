//! A real SMTP server for the email tests, in-process on 127.0.0.1 and a
//! port of its own: mailin runs the SMTP session (commands, replies, dot
//! stuffing, AUTH, STARTTLS), this file only moves its lines over tokio
//! sockets (through rustls where asked) and lets a test choose replies.
//! Stops when dropped.
#![allow(dead_code, reason = "each test binary uses a different part")]

use mailin::{Action, AuthMechanism, Handler, Response, SessionBuilder, response};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::PrivateKeyDer;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::{TlsAcceptor, rustls};

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct Received {
    /// `MAIL FROM`.
    pub envelope_from: String,
    /// `RCPT TO`, every accepted one.
    pub envelope_to: Vec<String>,
    /// The message as sent after `DATA`, dot stuffing undone.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    /// Replies the next `RCPT TO` of a recipient gets, in order; then 250.
    rcpt_replies: HashMap<String, VecDeque<(u16, String)>>,
    /// How many times each recipient was named in `RCPT TO`.
    rcpt_attempts: HashMap<String, u32>,
    /// Above this many bytes of message, the end of `DATA` gets a 552.
    max_size: Option<usize>,
    /// The reply at the end of the next message waits this long first.
    slow_data_end: Option<Duration>,
    /// `AUTH` accepts only this user and password.
    login: Option<(String, String)>,
    connections: u32,
}

/// A running server.
pub struct SmtpServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

/// How the server encrypts, with the certificate it shows.
#[derive(Clone)]
enum Encryption {
    None,
    StartTls(TlsAcceptor),
    Implicit(TlsAcceptor),
}

/// A certificate authority made for one test, and a server certificate for
/// 127.0.0.1 and `localhost` that it signed.
pub struct TestCa {
    /// The authority's certificate, PEM: what a client trusts.
    pub ca_pem: String,
    acceptor: TlsAcceptor,
}

impl TestCa {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "eventbus test authority");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().unwrap();
        let server_cert =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap()
                .signed_by(&server_key, &issuer)
                .unwrap();
        // ring named outright: rustls picks no provider by itself when a
        // build has two.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl SmtpServer {
    /// A server that takes every message, in plain text.
    pub async fn start() -> Self {
        Self::start_with(
            SessionBuilder::new("test.smtp"),
            State::default(),
            Encryption::None,
        )
        .await
    }

    /// A server that asks for `AUTH PLAIN` or `LOGIN` with this user and
    /// password, offered over plain text.
    pub async fn with_login(user: &str, password: &str) -> Self {
        let mut session = SessionBuilder::new("test.smtp");
        session
            .enable_auth(AuthMechanism::Plain)
            .enable_auth(AuthMechanism::Login)
            .insecure_enable_plaintext_auth();
        let state = State {
            login: Some((user.to_owned(), password.to_owned())),
            ..State::default()
        };
        Self::start_with(session, state, Encryption::None).await
    }

    /// A server that offers `STARTTLS` with `ca`'s server certificate,
    /// and `AUTH` with this user and password once encrypted.
    pub async fn with_starttls(ca: &TestCa, user: &str, password: &str) -> Self {
        let mut session = SessionBuilder::new("test.smtp");
        session
            .enable_start_tls()
            .enable_auth(AuthMechanism::Plain)
            .enable_auth(AuthMechanism::Login);
        let state = State {
            login: Some((user.to_owned(), password.to_owned())),
            ..State::default()
        };
        Self::start_with(session, state, Encryption::StartTls(ca.acceptor.clone())).await
    }

    /// A server that speaks TLS from the first byte, with `ca`'s server
    /// certificate.
    pub async fn with_implicit_tls(ca: &TestCa) -> Self {
        Self::start_with(
            SessionBuilder::new("test.smtp"),
            State::default(),
            Encryption::Implicit(ca.acceptor.clone()),
        )
        .await
    }

    async fn start_with(session: SessionBuilder, state: State, encryption: Encryption) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(state));
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Ok((stream, peer)) = listener.accept().await {
                lock(&shared).connections += 1;
                let control = Arc::new(Control::default());
                let handler = Session {
                    state: Arc::clone(&shared),
                    from: String::new(),
                    to: Vec::new(),
                    data: Vec::new(),
                    control: Arc::clone(&control),
                };
                let session = session.build(peer.ip(), handler);
                sessions.spawn(serve(stream, session, control, encryption.clone()));
            }
        });
        SmtpServer {
            addr,
            state,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next `RCPT TO` naming `recipient` gets `code` and `message`.
    /// Queued: call it twice for two replies.
    pub fn reply_to_rcpt(&self, recipient: &str, code: u16, message: &str) {
        lock(&self.state)
            .rcpt_replies
            .entry(recipient.to_owned())
            .or_default()
            .push_back((code, message.to_owned()));
    }

    /// The next message's final reply (its `250`) comes only after `delay`:
    /// a server that is slow, or a reply held up on the network.
    pub fn delay_next_acceptance(&self, delay: Duration) {
        lock(&self.state).slow_data_end = Some(delay);
    }

    /// Refuses messages of more than `bytes` with a 552, as a server with a
    /// size limit does.
    pub fn limit_size(&self, bytes: usize) {
        lock(&self.state).max_size = Some(bytes);
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// The messages accepted for `recipient`.
    pub fn received_by(&self, recipient: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|m| m.envelope_to.iter().any(|to| to == recipient))
            .collect()
    }

    /// How many times `recipient` was named in `RCPT TO`, accepted or not.
    pub fn rcpt_attempts(&self, recipient: &str) -> u32 {
        lock(&self.state)
            .rcpt_attempts
            .get(recipient)
            .copied()
            .unwrap_or(0)
    }

    pub fn connections(&self) -> u32 {
        lock(&self.state).connections
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        // Dropping the accept task drops its `JoinSet`, which aborts the
        // sessions still open.
        self.accept.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One connection: lines in, mailin's replies out, through TLS where the
/// server is set up for it.
async fn serve(
    stream: TcpStream,
    mut session: mailin::Session<Session>,
    control: Arc<Control>,
    encryption: Encryption,
) {
    let acceptor = match encryption {
        Encryption::Implicit(acceptor) => {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let mut tls = BufReader::new(tls);
            if greet(&mut tls, &session).await {
                converse(&mut tls, &mut session, &control).await;
            }
            return;
        }
        Encryption::StartTls(acceptor) => Some(acceptor),
        Encryption::None => None,
    };
    let mut plain = BufReader::new(stream);
    if !greet(&mut plain, &session).await {
        return;
    }
    if converse(&mut plain, &mut session, &control).await == Ended::Upgrade {
        // mailin offers STARTTLS only when it was enabled, so there is an
        // acceptor. The client waits for the 220 before its handshake, so
        // nothing is left in the read buffer.
        let acceptor = acceptor.expect("STARTTLS offered without TLS settings");
        let Ok(tls) = acceptor.accept(plain.into_inner()).await else {
            return;
        };
        session.tls_active();
        converse(&mut BufReader::new(tls), &mut session, &control).await;
    }
}

async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    session: &mailin::Session<Session>,
) -> bool {
    stream
        .write_all(&session.greeting().buffer().unwrap())
        .await
        .is_ok()
}

#[derive(PartialEq)]
enum Ended {
    Closed,
    Upgrade,
}

async fn converse<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut BufReader<S>,
    session: &mut mailin::Session<Session>,
    control: &Control,
) -> Ended {
    let mut line = Vec::new();
    loop {
        line.clear();
        match stream.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return Ended::Closed,
            Ok(_) => {}
        }
        let reply = session.process(&line);
        let delay = control.delay.lock().unwrap().take();
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        if reply.action != Action::NoReply
            && (stream.write_all(&reply.buffer().unwrap()).await.is_err()
                || stream.flush().await.is_err())
        {
            return Ended::Closed;
        }
        match reply.action {
            Action::NoReply => {}
            Action::Reply if !control.hang_up.load(Ordering::SeqCst) => {}
            Action::Reply | Action::Close => return Ended::Closed,
            Action::UpgradeTls => return Ended::Upgrade,
        }
    }
}

/// mailin's callbacks for one connection.
struct Session {
    state: Arc<Mutex<State>>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
    control: Arc<Control>,
}

/// What a session's callbacks ask of the loop that carries its replies.
#[derive(Default)]
struct Control {
    /// Close the connection after the reply: mailin stays in its `DATA`
    /// state after an error at the end of a message, so the session cannot
    /// go on.
    hang_up: AtomicBool,
    /// Wait this long before sending the reply. The callbacks cannot wait
    /// themselves: they are not async.
    delay: Mutex<Option<Duration>>,
}

impl Handler for Session {
    fn mail(&mut self, _ip: IpAddr, _domain: &str, from: &str) -> Response {
        self.from = from.to_owned();
        self.to.clear();
        response::OK
    }

    fn rcpt(&mut self, to: &str) -> Response {
        let mut state = lock(&self.state);
        *state.rcpt_attempts.entry(to.to_owned()).or_default() += 1;
        if let Some((code, message)) = state.rcpt_replies.get_mut(to).and_then(VecDeque::pop_front)
        {
            return Response::custom(code, message);
        }
        self.to.push(to.to_owned());
        response::OK
    }

    fn data_start(
        &mut self,
        _domain: &str,
        _from: &str,
        _is8bit: bool,
        _to: &[String],
    ) -> Response {
        self.data.clear();
        response::OK
    }

    fn data(&mut self, buf: &[u8]) -> io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> Response {
        let mut state = lock(&self.state);
        if state.max_size.is_some_and(|max| self.data.len() > max) {
            self.control.hang_up.store(true, Ordering::SeqCst);
            return Response::custom(552, "5.3.4 message size exceeds fixed limit".to_owned());
        }
        if let Some(delay) = state.slow_data_end.take() {
            *self.control.delay.lock().unwrap() = Some(delay);
        }
        state.received.push(Received {
            envelope_from: self.from.clone(),
            envelope_to: self.to.clone(),
            data: std::mem::take(&mut self.data),
        });
        response::OK
    }

    fn auth_plain(&mut self, _authorization: &str, user: &str, password: &str) -> Response {
        self.auth(user, password)
    }

    fn auth_login(&mut self, user: &str, password: &str) -> Response {
        self.auth(user, password)
    }
}

impl Session {
    fn auth(&self, user: &str, password: &str) -> Response {
        match &lock(&self.state).login {
            Some((u, p)) if u == user && p == password => response::AUTH_OK,
            _ => response::INVALID_CREDENTIALS,
        }
    }
}

/// A server that answers every connection with `reply` and hangs up, as a
/// web server or another protocol on the port would. Counts connections.
pub async fn garbage_server(reply: &'static [u8]) -> (u16, Arc<Mutex<u32>>, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(Mutex::new(0));
    let seen = Arc::clone(&count);
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            *seen.lock().unwrap() += 1;
            let _ = stream.write_all(reply).await;
            let _ = stream.shutdown().await;
        }
    });
    (port, count, task)
}

/// A server that accepts connections and never says a word, holding them
/// open until dropped.
pub async fn silent_server() -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    (port, task)
}

/// A port on 127.0.0.1 with nothing listening: bound, then released.
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
