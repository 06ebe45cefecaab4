/*!
HTTP client setup and failure classification shared by every HTTP platform.

ureq 3 sets no timeouts by default, so a silent network would block an adapter thread
for ever: [`agent`] builds an `Agent` where resolving, connecting and the whole request
each have a deadline, and names that need no lookup (IP addresses, `localhost`) are
resolved without a thread ([`super::resolve`]). It also turns off `http_status_as_error`, because an error built
from a status carries neither headers nor body, and a platform needs both to honour a 429
(`Retry-After`, Telegram's `parameters.retry_after`). Build one agent per adapter
generation and share it by clone: clones share the connection pool.

[`classify`] sorts a ureq error (a request that got no HTTP response) by its type, never
by its text, except for DNS: ureq reports a failed lookup as a plain `io::Error` whose
message starts with "failed to lookup address", so that prefix is the only way to tell.

A request that changes something (sending a message) must not be repeated when it may
already have done its work. [`may_have_arrived`] tells a failure before the request was
complete on the wire (DNS, connect, TLS set-up, writing it) from one after (waiting for or
reading the answer, a connection broken meanwhile). The global timeout cannot say which
phase it cut short, so such requests use [`phased`] timeouts instead.

ureq error texts can contain the request URL, and some platforms (Telegram) put the bot
token in the URL: run every such text through [`scrub`] before it reaches a log or a
`Fatal`.
*/

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ureq::Agent;
use ureq::http::HeaderMap;
use ureq::unversioned::transport::DefaultConnector;

use super::resolve::Resolver;

/// The largest response body [`read_body`] accepts. Chat APIs answer in kilobytes; this
/// only stops a broken server from filling the memory of a 256 MB box.
pub const MAX_BODY: u64 = 8 * 1024 * 1024;

/// Each way's buffer of one connection (ureq's default is 128 KiB, zero-filled, so resident:
/// a quarter of a megabyte per open connection, a long poll's included). It must hold a
/// response's headers (the Bot API's are under 1 KiB; a larger head fails as a broken
/// exchange) and a request's; bodies stream through it in pieces.
const CONNECTION_BUFFER: usize = 16 * 1024;

/// Build an agent whose every call is bounded.
///
/// `connect` bounds DNS resolution and TCP+TLS setup; `request` bounds a whole call,
/// body included. A long poll overrides the latter per request:
/// `agent.post(url).config().timeout_global(Some(poll + margin)).build()`.
/// Status codes come back as responses, never as `Err` (see the module doc).
///
/// A request blocked on the network is stopped from another thread by
/// `agent.clone().shutdown()`, which closes the agent's connections under it (and fails
/// its later requests): give a call that a stop must cut short an agent of its own.
pub fn agent(connect: Duration, request: Duration) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        // Without a resolve timeout getaddrinfo runs on the calling thread and cannot be
        // bounded; with one, a lookup runs on a helper thread that can be abandoned. The
        // resolver starts one only for a name it has not looked up within a minute.
        .timeout_resolve(Some(connect))
        .timeout_connect(Some(connect))
        .timeout_global(Some(request))
        .user_agent(concat!("switchboard/", env!("CARGO_PKG_VERSION")))
        // ureq keeps 3 idle connections per host, but an outbox sends up to 8 at once
        // (`max_in_flight`) beside a long poll and typing indicators: under load about one
        // send in 20 connected anew (measured: 981 connects for 19,600 messages in `make
        // bench`; 123 connections for 500 replies in real_latency, 8 with 9 kept), each a
        // TCP and TLS handshake over the internet. Idle ones close after ureq's 15 s.
        .max_idle_connections(MAX_IDLE_PER_HOST)
        .max_idle_connections_per_host(MAX_IDLE_PER_HOST)
        .input_buffer_size(CONNECTION_BUFFER)
        .output_buffer_size(CONNECTION_BUFFER)
        .build();
    Agent::with_parts(config, DefaultConnector::default(), Resolver)
}

/// Idle connections kept per host (and in all: an agent serves one platform instance or
/// the model): `max_in_flight`'s default of 8, a long poll, and room for typing and edits.
const MAX_IDLE_PER_HOST: usize = 16;

/// Read a response body, at most [`MAX_BODY`] bytes.
pub fn read_body(response: &mut ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ureq::Error> {
    response.body_mut().with_config().limit(MAX_BODY).read_to_vec()
}

/// Why a request got no HTTP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure {
    /// The host name did not resolve.
    Dns,
    /// Nothing accepted the connection (connection refused, host or network unreachable).
    Refused,
    /// One of the agent's or the request's timeouts passed.
    Timeout,
    /// The connection broke mid-exchange, or the peer answered something that is not HTTP.
    Broken,
    /// The TLS handshake or the certificate check failed.
    Tls,
    /// The request cannot be made as configured (bad URL, bad proxy setting); retrying
    /// the same request cannot help.
    Config,
}

impl Failure {
    /// Whether the same request may succeed later. Only configuration mistakes may not;
    /// everything else (DNS, refused, timeouts, TLS) can heal with the network.
    pub fn is_transient(self) -> bool {
        !matches!(self, Failure::Config)
    }

    /// A few words for people, free of any URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Dns => "DNS lookup failed",
            Failure::Refused => "connection refused",
            Failure::Timeout => "timed out",
            Failure::Broken => "connection broken",
            Failure::Tls => "TLS failure",
            Failure::Config => "request not possible as configured",
        }
    }
}

/// Classify a ureq error by its type.
pub fn classify(err: &ureq::Error) -> Failure {
    use ureq::Error as E;
    match err {
        E::Timeout(_) => Failure::Timeout,
        E::Io(io) => classify_io(io),
        E::HostNotFound => Failure::Dns,
        E::ConnectionFailed => Failure::Refused,
        E::Tls(_) | E::Rustls(_) | E::Pem(_) | E::TlsRequired => Failure::Tls,
        E::BadUri(_) | E::InvalidProxyUrl | E::RequireHttpsOnly(_) | E::Http(_) => Failure::Config,
        // Protocol errors, decompression failures, oversized or stalled bodies: the
        // exchange itself went wrong, which a new connection may not repeat.
        _ => Failure::Broken,
    }
}

fn classify_io(io: &io::Error) -> Failure {
    use io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => Failure::Refused,
        K::TimedOut | K::WouldBlock => Failure::Timeout,
        // ureq's resolver wraps getaddrinfo failures in an uncategorised io::Error; its
        // message is the only thing that tells them apart (glibc and musl wordings share
        // this prefix).
        _ if io.to_string().starts_with("failed to lookup address") => Failure::Dns,
        _ => Failure::Broken,
    }
}

/// Whether a request that failed with `err` may have reached the server, so that sending
/// it again could do its work twice. `false` only when the failure provably came before the
/// request was complete on the wire; anything unclear counts as "may have".
pub fn may_have_arrived(err: &ureq::Error) -> bool {
    use ureq::Error as E;
    use ureq::Timeout as T;
    match err {
        // Name resolution, connecting (directly or through a proxy), TLS set-up, or a
        // request that could not even be built.
        E::HostNotFound | E::ConnectionFailed | E::ConnectProxyFailed(_) => false,
        E::Tls(_) | E::Rustls(_) | E::Pem(_) | E::TlsRequired => false,
        E::BadUri(_) | E::InvalidProxyUrl | E::RequireHttpsOnly(_) | E::Http(_) => false,
        // A request cut short while being written: the server never saw all of it (its
        // Content-Length says so) and acts on nothing.
        E::Timeout(T::Resolve | T::Connect | T::SendRequest | T::SendBody) => false,
        E::Io(io) => !matches!(classify_io(io), Failure::Refused | Failure::Dns),
        // Waiting for or reading the answer, a broken or garbled answer, or a global
        // timeout that may have struck in any phase.
        _ => true,
    }
}

/// `request` with a limit of `timeout` on each phase of the exchange (connecting is the
/// agent's `timeout_connect`), so that a timeout names the phase it struck in (see
/// [`may_have_arrived`]). A global limit of three times that still bounds the whole call.
pub fn phased<B>(request: ureq::RequestBuilder<B>, timeout: Duration) -> ureq::RequestBuilder<B> {
    let phase = Some(timeout);
    (request.config())
        .timeout_send_request(phase)
        .timeout_send_body(phase)
        .timeout_recv_response(phase)
        .timeout_recv_body(phase)
        .timeout_global(Some(timeout.saturating_mul(3)))
        .build()
}

/// Classify an error met while reading a response body. ureq hands its own errors (a
/// per-read timeout, a stalled body) out of a body reader wrapped in an `io::Error`, so
/// unwrap one before looking at the I/O kind.
pub fn classify_read(err: &io::Error) -> Failure {
    match err.get_ref().and_then(|inner| inner.downcast_ref::<ureq::Error>()) {
        Some(inner) => classify(inner),
        None => classify_io(err),
    }
}

/// Whether an HTTP status means "the server had a problem, try again" (5xx, 408).
pub fn is_transient_status(status: u16) -> bool {
    status == 408 || (500..600).contains(&status)
}

/// The `Retry-After` header of a response, as a wait from `now`, at most
/// [`MAX_SERVER_WAIT`](super::MAX_SERVER_WAIT).
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    parse_retry_after(headers.get("retry-after")?.to_str().ok()?, now)
}

/// Parse a `Retry-After` value: delay-seconds (`120`) or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`, RFC 9110 §10.2.3). A date in the past is a zero wait.
/// The value comes from the network: a wait longer than
/// [`MAX_SERVER_WAIT`](super::MAX_SERVER_WAIT) (delay-seconds too large for any integer
/// type, a date too far ahead for the clock) is clamped to it, with a warning.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let asked = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits, so the one way to fail is a number beyond u64: a very long wait.
        value.parse().map_or(Duration::MAX, Duration::from_secs)
    } else {
        let secs = parse_imf_fixdate(value)?;
        match UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
            Some(at) => at.duration_since(now).unwrap_or(Duration::ZERO),
            None => Duration::MAX,
        }
    };
    Some(super::server_wait(asked, "a Retry-After header"))
}

/// Seconds since the Unix epoch of an IMF-fixdate, the only date form servers must send.
/// A date too far ahead to count in seconds saturates at `u64::MAX`.
fn parse_imf_fixdate(value: &str) -> Option<u64> {
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    let [_weekday, day, month, year, time, "GMT"] = parts[..] else { return None };
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let (day, year): (u64, u64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<u64> = time.split(':').map(str::parse).collect::<Result<_, _>>().ok()?;
    let [h, m, s] = hms[..] else { return None };
    if !(1..=31).contains(&day) || year < 1970 || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let seconds_of_day = h * 3600 + m * 60 + s;
    Some(days_since_epoch(year, month, day).saturating_mul(86_400).saturating_add(seconds_of_day))
}

/// Days from 1970-01-01 to a date of the proleptic Gregorian calendar (year ≥ 1970),
/// counting from March so that the leap day ends the year. Saturating: the year comes
/// from the network and may be as large as `u64` holds.
fn days_since_epoch(year: u64, month: u64, day: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let (era, yoe) = (y / 400, y % 400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    // 719_468 days separate 0000-03-01 from 1970-01-01.
    era.saturating_mul(146_097).saturating_add(doe).saturating_sub(719_468)
}

/// `text` with every occurrence of `secret` replaced by `***`. An empty secret is left
/// alone (replacing "" would garble the text and hide nothing).
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() { text.to_string() } else { text.replace(secret, "***") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io_error(kind: io::ErrorKind, msg: &str) -> ureq::Error {
        ureq::Error::Io(io::Error::new(kind, msg))
    }

    #[test]
    fn classifies_by_type() {
        let cases = [
            (io_error(io::ErrorKind::ConnectionRefused, "refused"), Failure::Refused),
            // What ureq returns for NXDOMAIN on glibc and on musl.
            (
                io_error(io::ErrorKind::Other, "failed to lookup address information: Name or service not known"),
                Failure::Dns,
            ),
            (
                io_error(io::ErrorKind::Other, "failed to lookup address information: Name does not resolve"),
                Failure::Dns,
            ),
            (ureq::Error::HostNotFound, Failure::Dns),
            (ureq::Error::Timeout(ureq::Timeout::Global), Failure::Timeout),
            (ureq::Error::Timeout(ureq::Timeout::Connect), Failure::Timeout),
            (io_error(io::ErrorKind::TimedOut, "timed out"), Failure::Timeout),
            (io_error(io::ErrorKind::UnexpectedEof, "Peer disconnected"), Failure::Broken),
            (io_error(io::ErrorKind::ConnectionReset, "reset"), Failure::Broken),
            (ureq::Error::BadUri("nope".into()), Failure::Config),
            (ureq::Error::Tls("handshake"), Failure::Tls),
        ];
        for (err, want) in cases {
            assert_eq!(classify(&err), want, "{err}");
        }
    }

    #[test]
    fn body_read_errors_unwrap_ureq_errors() {
        let wrapped = ureq::Error::Timeout(ureq::Timeout::PerRead).into_io();
        assert_eq!(classify_read(&wrapped), Failure::Timeout);
        assert_eq!(classify_read(&io::Error::new(io::ErrorKind::ConnectionReset, "reset")), Failure::Broken);
        assert_eq!(classify_read(&io::Error::new(io::ErrorKind::TimedOut, "slow")), Failure::Timeout);
    }

    #[test]
    fn failures_before_the_request_was_written_never_arrived() {
        use ureq::Timeout as T;
        let never = [
            ureq::Error::HostNotFound,
            ureq::Error::ConnectionFailed,
            ureq::Error::Timeout(T::Resolve),
            ureq::Error::Timeout(T::Connect),
            ureq::Error::Timeout(T::SendRequest),
            ureq::Error::Timeout(T::SendBody),
            io_error(io::ErrorKind::ConnectionRefused, "refused"),
            io_error(io::ErrorKind::NetworkUnreachable, "unreachable"),
            io_error(io::ErrorKind::Other, "failed to lookup address information: Name or service not known"),
            ureq::Error::Tls("handshake"),
            ureq::Error::BadUri("nope".into()),
        ];
        for err in never {
            assert!(!may_have_arrived(&err), "{err}");
        }
        let maybe = [
            ureq::Error::Timeout(T::RecvResponse),
            ureq::Error::Timeout(T::RecvBody),
            ureq::Error::Timeout(T::Global),
            io_error(io::ErrorKind::ConnectionReset, "reset"),
            io_error(io::ErrorKind::UnexpectedEof, "Peer disconnected"),
            io_error(io::ErrorKind::TimedOut, "timed out"),
        ];
        for err in maybe {
            assert!(may_have_arrived(&err), "{err}");
        }
    }

    #[test]
    fn only_configuration_mistakes_are_permanent() {
        assert!(Failure::Dns.is_transient());
        assert!(Failure::Timeout.is_transient());
        assert!(!Failure::Config.is_transient());
    }

    #[test]
    fn transient_statuses() {
        assert!(is_transient_status(500) && is_transient_status(503) && is_transient_status(408));
        assert!(!is_transient_status(400) && !is_transient_status(429) && !is_transient_status(200));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_767); // Sun, 06 Nov 1994 08:49:27 GMT
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 120 ", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_imf_fixdate("Tue, 29 Feb 2000 00:00:00 GMT"), Some(951_782_400));
        for bad in ["", "soon", "-1", "1.5", "Sun, 06 Nov 1994 08:49:37 CET", "Sun, 06 Foo 1994 08:49:37 GMT"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    /// Issue 7 §1: `retry_after` 2^64 − 1 and a date in the year 10^12 overflowed the
    /// clock and panicked; every wait a server asks for is at most an hour.
    #[test]
    fn r_hostile_retry_after_values_are_clamped_to_max_server_wait() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_767); // Sun, 06 Nov 1994 08:49:27 GMT
        let max = Some(crate::net::MAX_SERVER_WAIT);
        assert_eq!(parse_retry_after("3600", now), Some(Duration::from_secs(3600)));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 09:19:27 GMT", now), Some(Duration::from_secs(1800)));
        for hostile in [
            "3601",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999999999999999999",
            "Sun, 06 Nov 1000000000000 08:49:37 GMT",
            "Sun, 06 Nov 18446744073709551615 23:59:60 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(parse_retry_after(hostile, now), max, "{hostile:?}");
        }
        assert_eq!(parse_retry_after("+5", now), None, "delay-seconds are digits only");
        let mut headers = HeaderMap::new();
        headers.insert("Retry-After", "Sun, 06 Nov 1000000000000 08:49:37 GMT".parse().unwrap());
        assert_eq!(retry_after(&headers, SystemTime::now()), max);
    }

    #[test]
    fn retry_after_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, SystemTime::now()), None);
        headers.insert("Retry-After", "3".parse().unwrap());
        assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::from_secs(3)));
    }

    #[test]
    fn scrub_hides_every_occurrence() {
        let url = "http://x/bot123:ABC/getMe failed; bot123:ABC again";
        assert_eq!(scrub(url, "123:ABC"), "http://x/bot***/getMe failed; bot*** again");
        assert_eq!(scrub("abc", ""), "abc");
    }
}
