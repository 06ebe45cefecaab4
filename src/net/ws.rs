/*!
The WebSocket connector: what Discord's Gateway, Slack's Socket Mode and Mattermost's event
socket are spoken over.

tungstenite does the framing; everything around it is done here, because its own
`connect` has no timeout on the TCP connect and its TLS features would bring a second set
of crates. [`connect`] resolves the host with the resolver every HTTP request uses
([`super::resolve`]: no thread for an IP literal, one lookup a minute for a name), connects
with a deadline, does the TLS handshake with the rustls that ureq already brings (the
certificate checked against the compiled-in webpki roots) and then the HTTP upgrade, both
within one handshake deadline. `wss://` is the rule; `ws://` goes only to a loopback
address unless [`WsOptions::plain_remote`] allows more, so a typo cannot send a token in
clear text across the internet.

[`WsConn::recv`] blocks until a frame arrives or its deadline passes, and then returns
`Ok(None)`: a tick, when the caller sends its heartbeat and drains its outbound queue
(one thread owns the connection; nothing is shared behind a lock). The deadline bounds the
whole call, not each read: every socket read and write gets what is left of it, so a
server trickling a byte a second cannot hold a `recv` past its deadline, and a frame cut
short by a tick is finished by the next `recv` (tungstenite and rustls keep what they
have read). Pings are answered by tungstenite, the pong going out with the next read or
write; pings and pongs count as signs of life ([`WsConn::last_heard`]) but are not handed
to the caller. A close frame is handed over with its code and reason (that is how Discord
says 4004 or 4014), and the connection is done after it.

A frame or message larger than [`WsOptions::max_message`] is refused from its header,
before anything is allocated for it: a hostile server cannot make a small box allocate a
length it merely announces. The HTTP answer to the upgrade is bounded by tungstenite
(64 KiB).

A stop must end a blocked call at once, as for HTTP ([`crate::adapter::Context::on_stop`]):
[`connect`] hands a [`StopHandle`] to its caller as soon as the TCP connection exists (so
a stop also cuts short the TLS handshake and the upgrade), and [`StopHandle::stop`], from
any thread, shuts the socket down; the blocked call then fails with
[`WsErrorKind::Stopped`]. Resolving and the TCP connect itself are not cut short; each has
the connect timeout.

Every failure is a [`WsError`] with a kind the supervisor can act on
([`WsError::is_retryable`], [`WsError::fatal`]): the network, timeouts, TLS and answers
other than 401/403 may heal; a 401 or 403 on the upgrade (a bad token), and a URL that
cannot work, will not. A certificate that does not verify is retryable too, under its own
code: the commonest cause on the small boxes this runs on is a clock not yet set after a
boot (no RTC on a Raspberry Pi), which heals when NTP syncs, and an interception proxy
is not fixed by giving up either; the status shows `…_ws_certificate` meanwhile. Slack's
socket URL carries its ticket in the query string, so no error text ever carries a query
string: errors name the URL by scheme, host, port and path only.
*/

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use tungstenite::client::ClientRequestBuilder;
use tungstenite::handshake::HandshakeError;
use tungstenite::http::Uri;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tungstenite::{Message, WebSocket};

use crate::platform::Fatal;

/// The default cap on one frame and one message: far above any chat event (Discord's
/// largest, a READY of a big bot, is a few MiB), far below what would hurt a 256 MB box.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The shortest wait a `recv` makes, even with a deadline already passed, so that a caller
/// always late still reads what has arrived.
const MIN_WAIT: Duration = Duration::from_millis(1);

/// How to connect, and the limits of the connection.
#[derive(Clone)]
pub struct WsOptions {
    /// Bounds resolving the host and the TCP connect.
    pub connect_timeout: Duration,
    /// Bounds the TLS handshake and the HTTP upgrade together.
    pub handshake_timeout: Duration,
    /// Bounds each send (a peer that reads nothing fills the socket buffer).
    pub send_timeout: Duration,
    /// The largest frame and message accepted; a larger one ends the connection.
    pub max_message: usize,
    /// Headers added to the upgrade request (Mattermost's `Authorization`). Values are
    /// treated as secrets: never shown by `Debug` or in errors.
    pub headers: Vec<(String, String)>,
    /// Whether `ws://` (no TLS) may go to an address that is not loopback.
    pub plain_remote: bool,
    /// The TLS settings for `wss://`; `None` verifies against the webpki roots.
    pub tls: Option<Arc<ClientConfig>>,
}

impl Default for WsOptions {
    fn default() -> WsOptions {
        let ten = Duration::from_secs(10);
        WsOptions {
            connect_timeout: ten,
            handshake_timeout: ten,
            send_timeout: ten,
            max_message: MAX_MESSAGE,
            headers: Vec::new(),
            plain_remote: false,
            tls: None,
        }
    }
}

impl fmt::Debug for WsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("WsOptions")
            .field("connect_timeout", &self.connect_timeout)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("send_timeout", &self.send_timeout)
            .field("max_message", &self.max_message)
            .field("headers", &headers)
            .field("plain_remote", &self.plain_remote)
            .field("tls", &self.tls.as_ref().map(|_| "custom"))
            .finish()
    }
}

/// What [`WsConn::recv`] hands over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Vec<u8>),
    /// The server closed the connection; `code` is 1005 when its close frame had none
    /// (RFC 6455 §7.1.5). Nothing follows.
    Close {
        code: u16,
        reason: String,
    },
}

/// What kind of failure a [`WsError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WsErrorKind {
    /// A [`StopHandle`] shut the connection down: not a failure of the platform.
    Stopped,
    /// The URL or the options cannot work (scheme, host, a header, `ws://` to a remote
    /// host): retrying cannot help.
    Config,
    /// The host name did not resolve.
    Dns,
    /// Nothing accepted the connection (refused, unreachable).
    Refused,
    /// Connecting, the handshake or a send took longer than its timeout.
    Timeout,
    /// The TLS handshake failed (not a TLS server, no common protocol).
    Tls,
    /// The server's certificate did not verify.
    Certificate,
    /// The server answered the upgrade with this HTTP status instead of 101.
    Status(u16),
    /// The peer broke the WebSocket protocol (or was not a WebSocket server).
    Protocol,
    /// A frame or message larger than [`WsOptions::max_message`] was announced.
    TooLarge,
    /// The connection broke (reset, end of stream without a close frame).
    Broken,
    /// The connection is closed (after a [`Frame::Close`] or [`WsConn::send_close`]).
    Closed,
}

/// A failed connect, receive or send: its kind, a line for people (no query string, no
/// header value), and the wait a refusing server asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WsError {
    kind: WsErrorKind,
    message: String,
    retry_after: Option<Duration>,
}

impl WsError {
    fn new(kind: WsErrorKind, message: impl Into<String>) -> WsError {
        WsError { kind, message: message.into(), retry_after: None }
    }

    pub fn kind(&self) -> WsErrorKind {
        self.kind
    }

    /// The `Retry-After` of an upgrade refused with 429 or 503, clamped to
    /// [`super::MAX_SERVER_WAIT`].
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether connecting again later may work: everything but a bad configuration and
    /// a 401 or 403 on the upgrade.
    pub fn is_retryable(&self) -> bool {
        !matches!(self.kind, WsErrorKind::Config | WsErrorKind::Status(401 | 403))
    }

    /// A stable code for the status file, `ws_…`.
    pub fn code(&self) -> &'static str {
        use WsErrorKind as K;
        match self.kind {
            K::Stopped => "ws_stopped",
            K::Config => "ws_bad_config",
            K::Dns => "ws_dns",
            K::Refused => "ws_refused",
            K::Timeout => "ws_timeout",
            K::Tls => "ws_tls",
            K::Certificate => "ws_certificate",
            K::Status(401 | 403) => "ws_unauthorized",
            K::Status(_) => "ws_http_status",
            K::Protocol => "ws_protocol",
            K::TooLarge => "ws_too_large",
            K::Broken => "ws_broken",
            K::Closed => "ws_closed",
        }
    }

    /// The supervisor's view: code `<platform>_<code>`, retryable as
    /// [`WsError::is_retryable`] says. A caller checks for [`WsErrorKind::Stopped`]
    /// first: a stop ends an adapter cleanly.
    pub fn fatal(&self, platform: &str) -> Fatal {
        let code = format!("{platform}_{}", self.code());
        Fatal { code, message: self.message.clone(), retryable: self.is_retryable() }
    }
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WsError {}

/// Shuts a connection down from another thread; cheap to clone.
#[derive(Clone, Debug)]
pub struct StopHandle {
    inner: Arc<StopInner>,
}

#[derive(Debug)]
struct StopInner {
    socket: TcpStream,
    stopped: AtomicBool,
}

impl StopHandle {
    fn new(socket: &TcpStream) -> io::Result<StopHandle> {
        let socket = socket.try_clone()?;
        Ok(StopHandle { inner: Arc::new(StopInner { socket, stopped: AtomicBool::new(false) }) })
    }

    /// End the connection: a call blocked on it returns [`WsErrorKind::Stopped`] at once,
    /// and so does every later one. Never blocks.
    pub fn stop(&self) {
        // The flag first, so that the woken call reads its failure as a stop.
        self.inner.stopped.store(true, Ordering::SeqCst);
        let _ = self.inner.socket.shutdown(Shutdown::Both);
    }

    fn stopped(&self) -> bool {
        self.inner.stopped.load(Ordering::SeqCst)
    }
}

/// An open WebSocket connection, owned by one thread.
pub struct WsConn {
    ws: WebSocket<Wire>,
    stop: StopHandle,
    /// The URL without its query string, for error texts.
    shown: String,
    send_timeout: Duration,
    last_heard: Instant,
    /// A close frame was handed over: the connection is done.
    closed: bool,
}

impl fmt::Debug for WsConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConn").field("url", &self.shown).finish_non_exhaustive()
    }
}

/// Open a WebSocket connection to `url` (`ws://` or `wss://`). `on_stop` is given the
/// connection's [`StopHandle`] as soon as the TCP connection exists, before the TLS
/// handshake and the upgrade: register it with the adapter's stop
/// (`|h| ctx.on_stop(move || h.stop())`) so that a stop cuts those short too.
pub fn connect(url: &str, opts: &WsOptions, on_stop: impl FnOnce(StopHandle)) -> Result<WsConn, WsError> {
    let target = Target::parse(url)?;
    let shown = target.shown.clone();
    let addrs = resolve(&target, opts.connect_timeout)?;
    if !target.tls && !opts.plain_remote && !addrs.iter().all(|a| a.ip().is_loopback()) {
        let why = format!("{shown}: ws:// (no TLS) goes only to a loopback address; use wss://");
        return Err(WsError::new(WsErrorKind::Config, why));
    }
    let socket = connect_tcp(&addrs, opts.connect_timeout, &shown)?;
    let _ = socket.set_nodelay(true);
    let stop = StopHandle::new(&socket).map_err(|e| io_error(&e, "cannot set up", &shown))?;
    on_stop(stop.clone());
    let stopped = |err: WsError| if stop.stopped() { WsError::new(WsErrorKind::Stopped, "stopped") } else { err };
    let timed = Timed { socket, deadline: Instant::now() + opts.handshake_timeout };
    let wire = match target.tls {
        true => Wire::Tls(Box::new(tls_handshake(timed, &target, opts).map_err(stopped)?)),
        false => Wire::Plain(timed),
    };
    let mut request = ClientRequestBuilder::new(target.uri);
    for (name, value) in &opts.headers {
        request = request.with_header(name.as_str(), value.as_str());
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(32 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(opts.max_message.saturating_mul(2))
        .max_message_size(Some(opts.max_message))
        .max_frame_size(Some(opts.max_message));
    let ws = match tungstenite::client::client_with_config(request, wire, Some(config)) {
        Ok((ws, _response)) => ws,
        Err(HandshakeError::Interrupted(_)) => {
            return Err(stopped(WsError::new(
                WsErrorKind::Timeout,
                format!("{shown}: no upgrade within the handshake timeout"),
            )));
        }
        Err(HandshakeError::Failure(e)) => return Err(stopped(upgrade_error(e, &shown))),
    };
    Ok(WsConn { ws, stop, shown, send_timeout: opts.send_timeout, last_heard: Instant::now(), closed: false })
}

impl WsConn {
    /// The next text, binary or close frame, or `Ok(None)` once `until` has passed (a
    /// tick: the connection is still usable). Pings are answered meanwhile.
    pub fn recv(&mut self, until: Instant) -> Result<Option<Frame>, WsError> {
        self.check_usable()?;
        self.set_deadline(until.max(Instant::now() + MIN_WAIT));
        loop {
            let frame = match self.ws.read() {
                Ok(Message::Text(text)) => Frame::Text(text.as_str().to_owned()),
                Ok(Message::Binary(data)) => Frame::Binary(data.to_vec()),
                Ok(Message::Close(close)) => {
                    // Answer a close now (tungstenite queued the answer), best effort: the
                    // connection is done either way, and its next use says so at once.
                    self.closed = true;
                    let _ = self.ws.flush();
                    close_frame(close)
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {
                    self.last_heard = Instant::now();
                    continue;
                }
                Err(tungstenite::Error::Io(e)) if is_tick(&e) => return Ok(None),
                Err(e) => return Err(self.error(e, "receiving")),
            };
            self.last_heard = Instant::now();
            return Ok(Some(frame));
        }
    }

    /// Send a text frame, within the send timeout.
    pub fn send_text(&mut self, text: &str) -> Result<(), WsError> {
        self.send(Message::text(text))
    }

    /// Send a ping (Slack wants the client to check a quiet socket); its pong shows in
    /// [`WsConn::last_heard`].
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), WsError> {
        self.send(Message::Ping(payload.to_vec().into()))
    }

    /// Start closing: send a close frame with `code` (Discord resumes after a close with
    /// a code other than 1000 or 1001) and `reason`. The server's answer, if it comes,
    /// arrives through [`WsConn::recv`] as a [`Frame::Close`]; dropping the connection
    /// without waiting for it is fine.
    pub fn send_close(&mut self, code: u16, reason: &str) -> Result<(), WsError> {
        self.check_usable()?;
        self.set_deadline(Instant::now() + self.send_timeout);
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        match self.ws.close(Some(frame)).and_then(|()| self.ws.flush()) {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(e)) if is_tick(&e) => Err(self.send_timed_out()),
            Err(e) => Err(self.error(e, "closing")),
        }
    }

    /// When the last frame of any kind (pongs included) arrived, or the connection
    /// opened: the evidence that a quiet socket is still alive.
    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// A handle that ends this connection from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        self.stop.clone()
    }

    fn send(&mut self, message: Message) -> Result<(), WsError> {
        self.check_usable()?;
        self.set_deadline(Instant::now() + self.send_timeout);
        match self.ws.send(message) {
            Ok(()) => Ok(()),
            Err(tungstenite::Error::Io(e)) if is_tick(&e) => Err(self.send_timed_out()),
            Err(e) => Err(self.error(e, "sending")),
        }
    }

    fn send_timed_out(&self) -> WsError {
        let why = format!("{}: the server took nothing for {:?}", self.shown, self.send_timeout);
        WsError::new(WsErrorKind::Timeout, why)
    }

    /// Fail at once after a stop or a close.
    fn check_usable(&self) -> Result<(), WsError> {
        if self.stop.stopped() {
            return Err(WsError::new(WsErrorKind::Stopped, "stopped"));
        }
        match self.closed {
            true => Err(WsError::new(WsErrorKind::Closed, format!("{}: the connection is closed", self.shown))),
            false => Ok(()),
        }
    }

    fn set_deadline(&mut self, deadline: Instant) {
        match self.ws.get_mut() {
            Wire::Plain(timed) => timed.deadline = deadline,
            Wire::Tls(tls) => tls.sock.deadline = deadline,
        }
    }

    fn error(&self, err: tungstenite::Error, doing: &str) -> WsError {
        if self.stop.stopped() {
            return WsError::new(WsErrorKind::Stopped, "stopped");
        }
        classify(err, &format!("{}: {doing}", self.shown))
    }
}

/// A received close frame as a [`Frame`].
fn close_frame(close: Option<CloseFrame>) -> Frame {
    match close {
        Some(f) => Frame::Close { code: f.code.into(), reason: f.reason.as_str().to_owned() },
        None => Frame::Close { code: 1005, reason: String::new() },
    }
}

/// Whether an I/O error is a deadline passing. The socket is blocking with timeouts, so
/// `WouldBlock` means one ran out (Linux says `WouldBlock`, others `TimedOut`).
fn is_tick(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Sort a tungstenite error met on an open connection (or during the upgrade).
fn classify(err: tungstenite::Error, context: &str) -> WsError {
    use tungstenite::Error as E;
    use tungstenite::error::CapacityError;
    let kind = match &err {
        E::ConnectionClosed | E::AlreadyClosed => WsErrorKind::Closed,
        E::Io(e) if is_tick(e) => WsErrorKind::Timeout,
        E::Io(_) => WsErrorKind::Broken,
        E::Capacity(CapacityError::MessageTooLong { size, max_size }) => {
            let why = format!("{context}: a frame or message of {size} bytes (at most {max_size} accepted)");
            return WsError::new(WsErrorKind::TooLarge, why);
        }
        E::Url(_) | E::HttpFormat(_) => WsErrorKind::Config,
        E::Http(response) => WsErrorKind::Status(response.status().as_u16()),
        E::Tls(_) => WsErrorKind::Tls,
        _ => WsErrorKind::Protocol,
    };
    // tungstenite's texts name no URL; the context names it without its query string.
    WsError::new(kind, format!("{context}: {err}"))
}

/// Sort a failed upgrade: a refusal keeps its status and the wait it asked for.
fn upgrade_error(err: tungstenite::Error, shown: &str) -> WsError {
    let tungstenite::Error::Http(response) = &err else {
        return classify(err, &format!("{shown}: upgrade"));
    };
    let status = response.status().as_u16();
    let mut error = WsError::new(WsErrorKind::Status(status), format!("{shown}: upgrade refused with HTTP {status}"));
    if let Some(value) = response.headers().get("retry-after").and_then(|v| v.to_str().ok()) {
        error.retry_after = super::http::parse_retry_after(value, std::time::SystemTime::now());
    }
    error
}

/// An I/O error of connecting or the TLS handshake.
fn io_error(err: &io::Error, doing: &str, shown: &str) -> WsError {
    use io::ErrorKind as K;
    let kind = match err.kind() {
        K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => WsErrorKind::Refused,
        K::TimedOut | K::WouldBlock => WsErrorKind::Timeout,
        _ => WsErrorKind::Broken,
    };
    WsError::new(kind, format!("{shown}: {doing}: {err}"))
}

/// A `ws://` or `wss://` URL, taken apart.
struct Target {
    uri: Uri,
    tls: bool,
    /// The host without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// `scheme://host:port/path`, without the query string: what errors show.
    shown: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, WsError> {
        let bad = |why: &str| WsError::new(WsErrorKind::Config, format!("{}: {why}", redact(url)));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("wss") => (true, 443),
            Some("ws") => (false, 80),
            _ => return Err(bad("not a ws:// or wss:// URL")),
        };
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials in the URL are not supported; use a header"));
        }
        let host = authority.host();
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).to_string();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = authority.port_u16().unwrap_or(default_port);
        // A path may hold an `@` of a URL gone wrong (`ws://ws://user:pw@host/`).
        let shown = redact(&format!("{}://{}{}", if tls { "wss" } else { "ws" }, authority, uri.path()));
        Ok(Target { uri, tls, host, port, shown })
    }
}

/// `url` without what may carry a secret: the query string, a fragment, and everything
/// up to the last `@` (credentials, wherever a broken URL puts them).
fn redact(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    let Some((before, after)) = url.rsplit_once('@') else { return url.to_string() };
    match before.split_once("://") {
        Some((scheme, _)) if ["ws", "wss", "http", "https"].iter().any(|s| scheme.eq_ignore_ascii_case(s)) => {
            format!("{scheme}://{after}")
        }
        _ => after.to_string(),
    }
}

/// The addresses of the target's host, through the resolver every HTTP request uses.
fn resolve(target: &Target, timeout: Duration) -> Result<Vec<SocketAddr>, WsError> {
    use ureq::unversioned::resolver::Resolver as _;
    use ureq::unversioned::transport::NextTimeout;
    use ureq::unversioned::transport::time::Duration as UreqDuration;
    // The resolver knows http and https URIs; the same authority under http says the same.
    let authority = match target.host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", target.port),
        _ => format!("{}:{}", target.host, target.port),
    };
    let lookup = format!("http://{authority}/").parse().map_err(|_| WsError::new(WsErrorKind::Config, "bad host"))?;
    let next =
        NextTimeout { after: UreqDuration::Exact(timeout), reason: ureq::Timeout::Resolve, ..NextTimeout::default() };
    let config = ureq::config::Config::default();
    match super::resolve::Resolver.resolve(&lookup, &config, next) {
        Ok(found) => Ok(found.to_vec()),
        Err(ureq::Error::Timeout(_)) => {
            Err(WsError::new(WsErrorKind::Timeout, format!("{}: DNS lookup timed out", target.shown)))
        }
        Err(ureq::Error::BadUri(_)) => Err(WsError::new(WsErrorKind::Config, format!("{}: bad host", target.shown))),
        Err(_) => Err(WsError::new(WsErrorKind::Dns, format!("{}: DNS lookup failed", target.shown))),
    }
}

/// Connect to the first address that answers, all within `timeout`. Each address gets
/// an equal share of the time left, so that one that swallows packets (an IPv6 route
/// that goes nowhere) leaves time for the next.
fn connect_tcp(addrs: &[SocketAddr], timeout: Duration, shown: &str) -> Result<TcpStream, WsError> {
    let deadline = Instant::now() + timeout;
    let mut last = io::Error::from(io::ErrorKind::AddrNotAvailable);
    for (i, addr) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            last = io::Error::from(io::ErrorKind::TimedOut);
            break;
        }
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(u32::MAX);
        match TcpStream::connect_timeout(addr, share.max(MIN_WAIT)) {
            Ok(socket) => return Ok(socket),
            Err(e) => last = e,
        }
    }
    Err(io_error(&last, "connect", shown))
}

/// The shared TLS settings: webpki roots, ring. Built once: the root store costs.
fn default_tls() -> Arc<ClientConfig> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                // ring supports every default protocol version: this cannot fail.
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            Arc::new(config)
        })
        .clone()
}

/// Do the TLS handshake now (not at the first write), so that its failure is told from
/// the upgrade's.
fn tls_handshake(
    mut timed: Timed,
    target: &Target,
    opts: &WsOptions,
) -> Result<StreamOwned<ClientConnection, Timed>, WsError> {
    let shown = &target.shown;
    let config = opts.tls.clone().unwrap_or_else(default_tls);
    let name = ServerName::try_from(target.host.clone())
        .map_err(|_| WsError::new(WsErrorKind::Config, format!("{shown}: not a TLS server name")))?;
    let mut conn =
        ClientConnection::new(config, name).map_err(|e| WsError::new(WsErrorKind::Tls, format!("{shown}: {e}")))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut timed) {
            let kind = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                Some(rustls::Error::InvalidCertificate(_)) => WsErrorKind::Certificate,
                Some(_) => WsErrorKind::Tls,
                None if is_tick(&e) => WsErrorKind::Timeout,
                None => WsErrorKind::Tls,
            };
            return Err(WsError::new(kind, format!("{shown}: TLS handshake: {e}")));
        }
    }
    Ok(StreamOwned::new(conn, timed))
}

/// The stream tungstenite speaks over.
enum Wire {
    Plain(Timed),
    Tls(Box<StreamOwned<ClientConnection, Timed>>),
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.read(buf),
            Wire::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Wire::Plain(s) => s.write(buf),
            Wire::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Wire::Plain(s) => s.flush(),
            Wire::Tls(s) => s.flush(),
        }
    }
}

/// A socket whose every read and write gets what is left until `deadline`, and fails
/// with `WouldBlock` once it has passed.
struct Timed {
    socket: TcpStream,
    deadline: Instant,
}

impl Timed {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(left) }
    }
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.set_read_timeout(Some(self.left()?))?;
        self.socket.read(buf)
    }
}

impl Write for Timed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.socket.set_write_timeout(Some(self.left()?))?;
        self.socket.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.socket.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_stay_small() {
        // Returned by every recv: a String, a kind and an Option<Duration>.
        assert!(std::mem::size_of::<WsError>() <= 56);
    }

    #[test]
    fn urls_are_taken_apart_and_shown_without_their_query() {
        let t = Target::parse("wss://gateway.discord.gg/?v=10&encoding=json").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("gateway.discord.gg", 443));
        assert_eq!(t.shown, "wss://gateway.discord.gg/");
        let t = Target::parse("ws://[::1]:8065/api/v4/websocket").unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("::1", 8065));
        assert_eq!(t.shown, "ws://[::1]:8065/api/v4/websocket");
        assert_eq!(Target::parse("ws://localhost").unwrap().port, 80);
    }

    #[test]
    fn urls_that_cannot_work_are_configuration_errors_without_their_query() {
        for bad in [
            "https://example.com/?ticket=SECRET",
            "wss://user:SECRET@example.com/",
            "wss:///path?ticket=SECRET",
            "not a url?ticket=SECRET",
            "",
        ] {
            let err = Target::parse(bad).err().unwrap_or_else(|| panic!("{bad:?} parsed"));
            assert_eq!(err.kind(), WsErrorKind::Config, "{bad:?}");
            assert!(!err.is_retryable());
            assert!(!err.to_string().contains("SECRET"), "{err}");
        }
    }

    /// Fuzz-style: URLs built from parts that break parsers never panic the parser, and
    /// neither a parsed URL as shown nor an error text carries a secret from the query
    /// string, the fragment or the credentials. A fixed seed keeps it deterministic.
    #[test]
    fn no_url_panics_or_leaks_its_secrets() {
        const SCHEMES: &[&str] = &["ws://", "wss://", "http://", "WSS://", "", "ws:", "wss:/", "ws://ws://"];
        const USERS: &[&str] = &["", "", "u:SECRET@", "SECRET@", "@", "a@b@"];
        const HOSTS: &[&str] = &["127.0.0.1", "[::1]", "example.com", "", "[", "[::1", "%41", "é.com", "a b", ":"];
        const PORTS: &[&str] = &["", ":", ":0", ":443", ":65535", ":65536", ":99999999999999999999", ":x"];
        const PATHS: &[&str] = &["", "/", "/a/b", "//", "/%", "/é", "/a?b", "/\u{0}"];
        const TAILS: &[&str] = &["", "?SECRET", "?t=SECRET&x=1", "#SECRET", "?#SECRET", "??SECRET", "?a=%SECRET"];
        let mut state: u64 = 0x05ee_d0f5_eb50_c4e7;
        let mut pick = |parts: &'static [&'static str]| {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            parts[((z ^ (z >> 31)) % parts.len() as u64) as usize]
        };
        for _ in 0..5000 {
            let url = [pick(SCHEMES), pick(USERS), pick(HOSTS), pick(PORTS), pick(PATHS), pick(TAILS)].concat();
            let shown = match Target::parse(&url) {
                Ok(target) => target.shown,
                Err(err) => err.to_string(),
            };
            assert!(!shown.contains("SECRET"), "{url:?} shown as {shown:?}");
            assert!(!redact(&url).contains("SECRET"), "{url:?}");
        }
    }

    #[test]
    fn redact_drops_queries_fragments_and_credentials() {
        assert_eq!(redact("wss://u:p@h:1/a/b?t=1#f"), "wss://h:1/a/b");
        assert_eq!(redact("wss://u:p@h"), "wss://h");
        assert_eq!(redact("junk?t=1"), "junk");
        assert_eq!(redact("a@b/c"), "b/c");
        assert_eq!(redact("ws://ws://u:p@h/x"), "ws://h/x");
        assert_eq!(redact(""), "");
    }

    #[test]
    fn only_bad_configuration_and_401_or_403_are_permanent() {
        use WsErrorKind as K;
        for kind in [K::Dns, K::Refused, K::Timeout, K::Tls, K::Certificate, K::Status(404), K::Status(429)] {
            assert!(WsError::new(kind, "x").is_retryable(), "{kind:?}");
        }
        for kind in [K::Protocol, K::TooLarge, K::Broken, K::Closed, K::Status(500)] {
            assert!(WsError::new(kind, "x").is_retryable(), "{kind:?}");
        }
        for kind in [K::Config, K::Status(401), K::Status(403)] {
            assert!(!WsError::new(kind, "x").is_retryable(), "{kind:?}");
        }
        let fatal = WsError::new(K::Status(401), "refused").fatal("discord");
        assert_eq!(fatal, Fatal::permanent("discord_ws_unauthorized", "refused"));
        assert_eq!(WsError::new(K::Certificate, "x").fatal("slack").code, "slack_ws_certificate");
    }

    #[test]
    fn a_close_frame_without_a_code_reads_as_1005() {
        assert_eq!(close_frame(None), Frame::Close { code: 1005, reason: String::new() });
        let frame = CloseFrame { code: CloseCode::from(4014), reason: "Disallowed intent(s)".into() };
        assert_eq!(close_frame(Some(frame)), Frame::Close { code: 4014, reason: "Disallowed intent(s)".into() });
    }

    #[test]
    fn debug_shows_header_names_only() {
        let opts =
            WsOptions { headers: vec![("Authorization".into(), "Bearer SECRET".into())], ..WsOptions::default() };
        let shown = format!("{opts:?}");
        assert!(shown.contains("Authorization") && !shown.contains("SECRET"), "{shown}");
    }
}
