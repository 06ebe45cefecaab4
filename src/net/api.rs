/*!
The JSON API client every HTTP platform shares: one error type, the transport errors
classified once, every text scrubbed of the credentials, and the standard map of an
answer's status to an [`ApiError`] and of an [`ApiError`] to the outbox's [`SendError`].

A platform keeps only its own protocol: the URL of a method, the shape of its answers, and
the statuses it means differently (Telegram's 404 is a bad token). It calls
[`Api::call`] and reads the [`Answer`]; what it does not special-case it hands to
[`status_error`].

Sends that must not be repeated blindly go with [`Once::Yes`]: each phase of the exchange
gets its own timeout, so a failure says whether the request may have arrived
([`ApiError::Network`]: it did not; [`ApiError::Unconfirmed`]: it may have).
*/

use std::fmt;
use std::time::{Duration, SystemTime};

use ureq::http::HeaderMap;

use super::http;
use crate::config::Secret;
use crate::platform::SendError;

/// The wait after a 429 whose answer names none.
pub const FALLBACK_RETRY_AFTER: Duration = Duration::from_secs(5);

/// How one API call failed, already free of every credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// The request never reached the platform (DNS, connect, TLS), or it answered 5xx.
    Network(String),
    /// The request went out (or may have) but no usable answer came back: a timeout
    /// waiting for it, a connection broken after sending, a success we cannot read.
    Unconfirmed(String),
    /// 429: wait this long before the next request; `global` when the limit holds the
    /// whole bot, not one route or chat.
    RateLimited { wait: Duration, global: bool },
    /// The credentials are wrong or revoked.
    Unauthorized(String),
    /// Another consumer of this token (a second poller).
    Conflict(String),
    /// Any other refusal, with its status.
    Rejected(u16, String),
    /// The request cannot be made as configured (a malformed base URL).
    Config(String),
}

impl ApiError {
    /// A 429 on one route or chat.
    pub fn rate_limited(wait: Duration) -> ApiError {
        ApiError::RateLimited { wait, global: false }
    }

    /// What a failed send means for the message, for the outbox's retry policy.
    pub fn send_error(self) -> SendError {
        match self {
            ApiError::RateLimited { wait, global: false } => SendError::RetryAfter(wait),
            ApiError::RateLimited { wait, global: true } => SendError::RetryAfterAll(wait),
            // The request never reached the platform, or it answered 5xx: nothing was sent.
            ApiError::Network(why) => SendError::Transient(why),
            ApiError::Unconfirmed(why) => SendError::Unknown(why),
            // A refused token is no fault of the message, but the adapter ends for good
            // on it too, so a retry could only spin; every other 4xx is about this message.
            ApiError::Unauthorized(why) => SendError::Rejected(format!("credentials refused: {why}")),
            ApiError::Conflict(why) | ApiError::Rejected(_, why) | ApiError::Config(why) => SendError::Rejected(why),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Network(m) => write!(f, "network error: {m}"),
            ApiError::Unconfirmed(m) => write!(f, "no answer: {m}"),
            ApiError::RateLimited { wait, global: false } => write!(f, "rate limited for {wait:?}"),
            ApiError::RateLimited { wait, global: true } => write!(f, "rate limited on every route for {wait:?}"),
            ApiError::Unauthorized(m) => write!(f, "unauthorized: {m}"),
            ApiError::Conflict(m) => write!(f, "conflict: {m}"),
            ApiError::Rejected(code, m) => write!(f, "refused ({code}): {m}"),
            ApiError::Config(m) => write!(f, "cannot make the request: {m}"),
        }
    }
}

/// The standard meaning of a status that is not a success: 429 waits `wait` (or
/// [`FALLBACK_RETRY_AFTER`]), 401 is a bad credential, 409 a conflict, 5xx and 408 the
/// network, anything else a refusal of this request.
pub fn status_error(status: u16, description: String, wait: Option<Duration>) -> ApiError {
    match status {
        429 => ApiError::rate_limited(wait.unwrap_or(FALLBACK_RETRY_AFTER)),
        401 => ApiError::Unauthorized(description),
        409 => ApiError::Conflict(description),
        s if http::is_transient_status(s) => ApiError::Network(format!("HTTP {s}: {description}")),
        s => ApiError::Rejected(s, description),
    }
}

/// A failed transport, classified, its text free of every one of `secrets`: whether it
/// may have reached the server decides between [`ApiError::Network`] and
/// [`ApiError::Unconfirmed`]; one that cannot work as configured is [`ApiError::Config`].
pub fn transport_error(err: &ureq::Error, secrets: &[Secret]) -> ApiError {
    let failure = http::classify(err);
    let text = format!("{}: {err}", failure.as_str());
    let text = secrets.iter().fold(text, |text, secret| http::scrub(&text, secret.expose()));
    if !failure.is_transient() {
        ApiError::Config(text)
    } else if http::may_have_arrived(err) {
        ApiError::Unconfirmed(text)
    } else {
        ApiError::Network(text)
    }
}

/// Whether a request may be repeated by the transport's caller without thought.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Once {
    /// A read, a long poll, an idempotent call: one overall timeout.
    No,
    /// A send with no idempotency key: a timeout per phase, so an error says whether
    /// the request may have arrived.
    Yes,
}

/// An answer with its status, whatever the status.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    /// Empty when the body could not be read (logged): a refusal is still a refusal, and
    /// a success with no body is one the caller cannot confirm.
    pub body: Vec<u8>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `Retry-After` header as a wait from now, clamped.
    pub fn retry_after(&self) -> Option<Duration> {
        http::retry_after(&self.headers, SystemTime::now())
    }

    /// A header's value, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// The body as `T` on a success. A success that does not parse is
    /// [`ApiError::Unconfirmed`] (the request arrived; what it did is unknown); any other
    /// status goes through [`status_error`] with the body's text as the description.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.is_success() {
            return Err(status_error(self.status, self.description(), self.retry_after()));
        }
        serde_json::from_slice(&self.body)
            .map_err(|_| ApiError::Unconfirmed(format!("malformed answer (HTTP {})", self.status)))
    }

    /// A short description of a refusal for logs and dead letters: the body's text
    /// (capped), else the status.
    pub fn description(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.is_empty() {
            return format!("HTTP {}", self.status);
        }
        let end = text.char_indices().nth(300).map_or(text.len(), |(i, _)| i);
        text[..end].to_string()
    }
}

/// The HTTP methods the platforms use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

/// One platform account's API: a base URL, an agent, the headers every request carries,
/// and the secrets no text may show. Cheap to clone: the agent shares its pool.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
    timeout: Duration,
    headers: Vec<(&'static str, Secret)>,
    secrets: Vec<Secret>,
}

impl Api {
    /// An API at `base` (a trailing `/` dropped) whose calls take at most `timeout`.
    pub fn new(base: &str, timeout: Duration) -> Api {
        Api {
            agent: http::agent(timeout, timeout),
            base: base.trim_end_matches('/').to_string(),
            timeout,
            headers: Vec::new(),
            secrets: Vec::new(),
        }
    }

    /// A credential that is part of the URL (Telegram's token): scrubbed from every text.
    pub fn secret(mut self, secret: Secret) -> Api {
        self.secrets.push(secret);
        self
    }

    /// A header on every request (`Authorization: Bot …`). Its value is a secret too.
    pub fn header(mut self, name: &'static str, value: Secret) -> Api {
        self.secrets.push(value.clone());
        self.headers.push((name, value));
        self
    }

    /// The agent, to shut down on a stop (`ctx.on_stop(move || agent.shutdown())`),
    /// which cuts a blocked call short.
    pub fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The configured timeout of one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Call `path` (under the base) with an optional JSON body, waiting at most
    /// `timeout` (`None`: the configured one). Blocks. Transport failures come back
    /// classified and scrubbed; statuses come back as [`Answer`]s.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        once: Once,
        timeout: Option<Duration>,
    ) -> Result<Answer, ApiError> {
        let url = format!("{}{path}", self.base);
        let timeout = timeout.unwrap_or(self.timeout);
        let sent = match method {
            Method::Get => self.send_empty(self.agent.get(&url), once, timeout),
            Method::Delete => self.send_empty(self.agent.delete(&url), once, timeout),
            Method::Post => self.send_body(self.agent.post(&url), body, once, timeout),
            Method::Put => self.send_body(self.agent.put(&url), body, once, timeout),
            Method::Patch => self.send_body(self.agent.patch(&url), body, once, timeout),
        };
        let mut response = sent.map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let body = http::read_body(&mut response).unwrap_or_else(|e| {
            log::debug!("reading an answer (HTTP {status}): {}", self.scrub(&e.to_string()));
            Vec::new()
        });
        Ok(Answer { status, headers: response.headers().clone(), body })
    }

    fn send_empty(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        once: Once,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        self.prepare(request, once, timeout).call()
    }

    fn send_body(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: Option<&str>,
        once: Once,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let request = self.prepare(request, once, timeout).header("Content-Type", "application/json");
        request.send(body.unwrap_or(""))
    }

    fn prepare<B>(&self, request: ureq::RequestBuilder<B>, once: Once, timeout: Duration) -> ureq::RequestBuilder<B> {
        let mut request = match once {
            Once::Yes => http::phased(request, timeout),
            Once::No => request.config().timeout_global(Some(timeout)).build(),
        };
        for (name, value) in &self.headers {
            request = request.header(*name, value.expose());
        }
        request
    }

    /// `text` with every secret of this API blanked out.
    pub fn scrub(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_string(), |text, secret| http::scrub(&text, secret.expose()))
    }

    /// A failed transport, described without the credentials.
    pub fn transport_error(&self, err: &ureq::Error) -> ApiError {
        transport_error(err, &self.secrets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_have_their_standard_meaning() {
        let d = || "why".to_string();
        assert_eq!(status_error(429, d(), None), ApiError::rate_limited(FALLBACK_RETRY_AFTER));
        assert_eq!(
            status_error(429, d(), Some(Duration::from_secs(2))),
            ApiError::rate_limited(Duration::from_secs(2))
        );
        assert_eq!(status_error(401, d(), None), ApiError::Unauthorized(d()));
        assert_eq!(status_error(409, d(), None), ApiError::Conflict(d()));
        assert_eq!(status_error(502, d(), None), ApiError::Network("HTTP 502: why".into()));
        assert_eq!(status_error(408, d(), None), ApiError::Network("HTTP 408: why".into()));
        assert_eq!(status_error(403, d(), None), ApiError::Rejected(403, d()));
    }

    #[test]
    fn api_errors_map_to_send_errors() {
        let s = Duration::from_secs(3);
        assert_eq!(ApiError::rate_limited(s).send_error(), SendError::RetryAfter(s));
        assert_eq!(ApiError::RateLimited { wait: s, global: true }.send_error(), SendError::RetryAfterAll(s));
        assert!(matches!(ApiError::Network("x".into()).send_error(), SendError::Transient(_)));
        assert!(matches!(ApiError::Unconfirmed("x".into()).send_error(), SendError::Unknown(_)));
        assert!(matches!(ApiError::Unauthorized("x".into()).send_error(), SendError::Rejected(_)));
        assert!(matches!(ApiError::Rejected(400, "x".into()).send_error(), SendError::Rejected(_)));
    }

    #[test]
    fn a_call_that_never_left_is_network_and_shows_no_secret() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/botSECRET-123", listener.local_addr().unwrap());
        drop(listener);
        let api = Api::new(&base, Duration::from_secs(2))
            .secret(Secret::new("SECRET-123"))
            .header("Authorization", Secret::new("Bot hidden-value"));
        for once in [Once::No, Once::Yes] {
            let err = api.call(Method::Post, "/send", Some("{}"), once, None).err().unwrap();
            assert!(matches!(&err, ApiError::Network(m) if !m.contains("SECRET-123")), "{err:?}");
        }
        assert_eq!(api.scrub("Bot hidden-value and SECRET-123"), "*** and ***");
    }

    #[test]
    fn answers_read_as_json_or_as_errors() {
        let answer = |status: u16, body: &str| Answer { status, headers: HeaderMap::new(), body: body.into() };
        assert_eq!(answer(200, "[1,2]").json::<Vec<u8>>(), Ok(vec![1, 2]));
        assert!(matches!(answer(200, "<html>").json::<Vec<u8>>(), Err(ApiError::Unconfirmed(_))));
        assert_eq!(answer(404, "").json::<Vec<u8>>(), Err(ApiError::Rejected(404, "HTTP 404".into())));
        let long = "é".repeat(1000);
        assert_eq!(answer(400, &long).description().chars().count(), 300);
    }
}
