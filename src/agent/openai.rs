/*!
The `openai` backend: any OpenAI-compatible chat-completions endpoint.

One turn is one `POST {base_url}/chat/completions` carrying the system prompt, the
session's history and the new text; the reply is `choices[0].message.content`. OpenAI,
OpenRouter, Ollama, llama.cpp and vLLM all speak this, which is why it is the only
protocol here. With `stream = true` the answer arrives as server-sent events and each
piece goes to `on_delta` as it comes.

Failures are sorted by what helps ([`judge_status`], [`judge_network`]): a refused key
(401/403) and a context that no longer fits (400) are final and say what to do; 429, 5xx
and network failures are retried up to `max_retries` times, waiting `retry_wait`
doubling, or what `Retry-After` asks; a timeout is final. Once streamed text has reached
the user, nothing is retried (the text would be shown twice).

`timeout` bounds the whole turn: every request, every wait between retries and every
streamed piece fall within it. A per-read timer would not do, since a server's SSE
keep-alive comments reset it forever.

The exchange runs on the turn's own thread, so a turn starts no thread (issue 8 §4).
Each request gets its own `ureq::Agent`, built with the time left of the turn as its
global timeout (which counts from the request's start, so keep-alives cannot reset it),
and registers that agent's `shutdown()` with [`Cancel::on_cancel`] while it runs: a
cancel (`/stop`, `/new`, an interrupting message) closes exactly this request's
connection under a blocked read or write, which then fails at once, and the turn
reports the cancel. A turn takes seconds, so giving up connection reuse costs little.
A DNS lookup or a TCP connect in progress is not cut short by `shutdown()` (it closes
established connections only): a cancel during one waits for it to end, at most
[`MAX_CONNECT`].

The pure parts ([`request_body`], [`parse_reply`], [`parse_chunk`], the judges) are kept
apart from the I/O so they are unit-tested on values.
*/

use std::ops::ControlFlow;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use super::sse;
use super::{Agent, AgentError, AgentErrorKind, Cancel, OpenAiSettings, Reply, Turn, deadline_after};
use crate::net::http::{self, Failure, scrub};

const USER_UNAUTHORIZED: &str = "The assistant is unavailable: the gateway's API key was refused.";
const USER_RATE_LIMITED: &str = "The assistant is busy (rate limited). Please try again in a minute.";
const USER_QUOTA: &str = "The assistant is unavailable: its API quota is used up.";
const USER_CONTEXT: &str = "This conversation is too long for the model. Send /new to start a new one.";
const USER_TIMEOUT: &str = "The assistant took too long to answer.";
const USER_FAILED: &str = "The assistant failed to answer. Please try again later.";
const USER_EMPTY: &str = "The assistant gave an empty answer.";

/// The longest backoff between retries when the server does not say.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The longest `Retry-After` honoured; a server asking for more is not waited for, since
/// the user is waiting too.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// The longest streamed answer kept, against a server that never stops.
const MAX_STREAMED: usize = 1024 * 1024;
/// The most of a server's error text kept for the log.
const MAX_DETAIL: usize = 300;

/// The longest a connection may take to set up; the model's thinking is what `timeout`
/// is for.
const MAX_CONNECT: Duration = Duration::from_secs(10);

/// An OpenAI-compatible endpoint.
pub struct OpenAi {
    settings: OpenAiSettings,
    stream: bool,
    url: String,
}

impl OpenAi {
    pub fn new(settings: OpenAiSettings, stream: bool) -> OpenAi {
        let url = format!("{}/chat/completions", settings.base_url.trim_end_matches('/'));
        OpenAi { settings, stream, url }
    }

    /// The final error of a turn that reached its deadline.
    fn timed_out(&self) -> AgentError {
        let detail = format!("no complete answer within the timeout of {:?}", self.settings.timeout);
        AgentError::new(AgentErrorKind::Timeout, USER_TIMEOUT, detail)
    }

    /// The wait before retry `attempt` (1-based): what the server asked, else the backoff.
    fn retry_wait(&self, attempt: u32, asked: Option<Duration>) -> Duration {
        asked.unwrap_or_else(|| crate::backoff::delay(attempt, self.settings.retry_wait, MAX_BACKOFF))
    }

    /// Text for the log, with the API key blanked out wherever it appears.
    fn clean(&self, text: &str) -> String {
        let key = self.settings.api_key.as_ref().map_or("", |k| k.expose());
        scrub(text, key)
    }

    fn cleaned(&self, error: AgentError) -> AgentError {
        AgentError { detail: self.clean(&error.detail), user_message: self.clean(&error.user_message), ..error }
    }

    /// One request, on the calling thread, on a connection of its own that a cancel
    /// shuts down and that ends by `deadline` at the latest (module doc). `streamed` is
    /// set once any text went to `on_delta`.
    fn attempt(
        &self,
        body: &[u8],
        deadline: Instant,
        cancel: &Cancel,
        on_delta: &mut dyn FnMut(&str),
        streamed: &mut bool,
    ) -> Result<Reply, Verdict> {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let http = http::agent(left.min(MAX_CONNECT), left);
        let closer = http.clone();
        let _closer = cancel.on_cancel(move || closer.shutdown());
        let outcome = self.exchange(&http, body, deadline, cancel, on_delta, streamed);
        // A closed connection reads as an error or as the end of the answer: either way
        // the turn was stopped, and what came so far is not its reply.
        if cancel.is_cancelled() {
            return Err(Verdict::Fail(AgentError::cancelled()));
        }
        outcome
    }

    /// Send the request and read its answer, whole or streamed.
    fn exchange(
        &self,
        http: &ureq::Agent,
        body: &[u8],
        deadline: Instant,
        cancel: &Cancel,
        on_delta: &mut dyn FnMut(&str),
        streamed: &mut bool,
    ) -> Result<Reply, Verdict> {
        let mut request = http.post(&self.url).header("Content-Type", "application/json");
        if let Some(key) = &self.settings.api_key {
            request = request.header("Authorization", format!("Bearer {}", key.expose()));
        }
        let mut response = request.send(body).map_err(|e| self.broken(http::classify(&e), &e.to_string(), deadline))?;
        let status = response.status().as_u16();
        // A server that cannot stream may ignore `"stream": true` and answer one JSON body.
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let events = content_type.trim_start().to_ascii_lowercase().starts_with("text/event-stream");
        if !self.stream || !(200..300).contains(&status) || !events {
            let retry_after = http::retry_after(response.headers(), SystemTime::now());
            let body = http::read_body(&mut response)
                .map_err(|e| self.broken(http::classify(&e), &format!("reading the answer: {e}"), deadline))?;
            if !(200..300).contains(&status) {
                return Err(judge_status(status, retry_after, &body, self.settings.api_key.is_some()));
            }
            return parse_reply(&body).map_err(Verdict::Fail);
        }
        let mut stream = Stream { reply: Reply::default(), end: None, on_delta, streamed };
        let read = sse::read_events(response.into_body().into_reader(), |data| {
            if cancel.is_cancelled() {
                return ControlFlow::Break(());
            }
            stream.event(&data)
        });
        match (stream.end, read) {
            (Some(Err(verdict)), _) => Err(verdict),
            (Some(Ok(())), _) | (None, Ok(())) => finish_stream(stream.reply),
            (None, Err(e)) => Err(self.broken(http::classify_read(&e), &format!("reading the stream: {e}"), deadline)),
        }
    }

    /// What to do about a request that got no (whole) response: a timeout once the
    /// deadline has passed is the turn's `timeout`, the rest is judged as it comes.
    fn broken(&self, failure: Failure, detail: &str, deadline: Instant) -> Verdict {
        if failure == Failure::Timeout && Instant::now() >= deadline {
            return Verdict::Fail(self.timed_out());
        }
        judge_network(failure, detail)
    }
}

/// A streamed answer being read.
struct Stream<'a> {
    reply: Reply,
    /// Why reading stopped before the stream ended: `Ok` at `[DONE]`, or a failure.
    end: Option<Result<(), Verdict>>,
    on_delta: &'a mut dyn FnMut(&str),
    streamed: &'a mut bool,
}

impl Stream<'_> {
    /// Take the data of one event; `Break` once the answer is complete or has failed.
    fn event(&mut self, data: &str) -> ControlFlow<()> {
        let end = match parse_chunk(data) {
            Err(e) => Err(Verdict::Fail(e)),
            Ok(Chunk::Done) => Ok(()),
            Ok(Chunk::Part { delta, usage }) => {
                if let Some((input, output)) = usage {
                    (self.reply.input_tokens, self.reply.output_tokens) = (input, output);
                }
                if !delta.is_empty() {
                    (self.on_delta)(&delta);
                    *self.streamed = true;
                    self.reply.text.push_str(&delta);
                }
                if self.reply.text.len() <= MAX_STREAMED {
                    return ControlFlow::Continue(());
                }
                Err(Verdict::Fail(failed("the streamed answer exceeds 1 MiB".into())))
            }
        };
        self.end = Some(end);
        ControlFlow::Break(())
    }
}

impl Agent for OpenAi {
    fn reply(&self, turn: &Turn<'_>, cancel: &Cancel, on_delta: &mut dyn FnMut(&str)) -> Result<Reply, AgentError> {
        if cancel.is_cancelled() {
            return Err(AgentError::cancelled());
        }
        let body = request_body(&self.settings, turn, self.stream).to_string().into_bytes();
        let deadline = deadline_after(self.settings.timeout);
        let mut streamed = false;
        let mut attempt = 0;
        loop {
            // Servers may quote what they were sent; the key must not reach the log.
            let outcome =
                self.attempt(&body, deadline, cancel, on_delta, &mut streamed).map_err(|v| v.map(|e| self.cleaned(e)));
            let wait = match outcome {
                Ok(reply) => return Ok(reply),
                Err(Verdict::Fail(error)) => return Err(error),
                Err(Verdict::Retry { error, .. }) if streamed || attempt >= self.settings.max_retries => {
                    return Err(error);
                }
                Err(Verdict::Retry { error, after }) => {
                    attempt += 1;
                    let wait = self.retry_wait(attempt, after);
                    if after.is_some_and(|asked| asked > MAX_RETRY_AFTER) {
                        let detail = format!("{} (the server asked to wait {wait:?}; not retried)", error.detail);
                        return Err(AgentError { detail, ..error });
                    }
                    if Instant::now().checked_add(wait).is_none_or(|retry_at| retry_at >= deadline) {
                        let detail =
                            format!("{} (a retry in {wait:?} would pass the timeout; not retried)", error.detail);
                        return Err(AgentError { detail, ..error });
                    }
                    log::warn!("agent: {}; retry {attempt}/{} in {wait:?}", error.detail, self.settings.max_retries);
                    wait
                }
            };
            if cancel.wait(wait) {
                return Err(AgentError::cancelled());
            }
        }
    }

    fn streams(&self) -> bool {
        self.stream
    }
}

// ---------------------------------------------------------------------------------------
// Pure parts

/// What to do about a failed request.
#[derive(Debug)]
enum Verdict {
    /// Worth another try, after `after` if the server said so.
    Retry { error: AgentError, after: Option<Duration> },
    /// Final.
    Fail(AgentError),
}

impl Verdict {
    fn map(self, f: impl FnOnce(AgentError) -> AgentError) -> Verdict {
        match self {
            Verdict::Retry { error, after } => Verdict::Retry { error: f(error), after },
            Verdict::Fail(error) => Verdict::Fail(f(error)),
        }
    }
}

/// The JSON body of a chat-completions request.
fn request_body(settings: &OpenAiSettings, turn: &Turn<'_>, stream: bool) -> Value {
    let mut messages = Vec::with_capacity(turn.history.len() + 2);
    if let Some(prompt) = &settings.system_prompt {
        messages.push(json!({ "role": "system", "content": prompt }));
    }
    messages.extend(turn.history.iter().map(|m| json!({ "role": m.role, "content": m.content })));
    messages.push(json!({ "role": "user", "content": turn.text }));
    let mut body = json!({ "model": settings.model, "messages": messages });
    if let Some(t) = settings.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(n) = settings.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

/// The reply in a 2xx chat-completions body.
fn parse_reply(body: &[u8]) -> Result<Reply, AgentError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| failed(format!("the answer is not JSON ({e}): {}", excerpt(&String::from_utf8_lossy(body)))))?;
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        return Err(judge_error_body(&ErrorInfo::from_error(error)));
    }
    let choice = &value["choices"][0];
    let text = choice["message"]["content"].as_str().unwrap_or_default();
    if text.trim().is_empty() {
        let reason = choice["finish_reason"].as_str().unwrap_or("none");
        return Err(AgentError::new(
            AgentErrorKind::Failed,
            USER_EMPTY,
            format!("the answer has no text (finish_reason {reason})"),
        ));
    }
    let (input_tokens, output_tokens) = usage(&value).unwrap_or_default();
    Ok(Reply { text: text.to_string(), input_tokens, output_tokens })
}

/// `usage.prompt_tokens` and `usage.completion_tokens`, when present.
fn usage(value: &Value) -> Option<(u64, u64)> {
    let usage = value.get("usage").filter(|u| u.is_object())?;
    Some((usage["prompt_tokens"].as_u64().unwrap_or(0), usage["completion_tokens"].as_u64().unwrap_or(0)))
}

/// One event of a streamed answer.
#[derive(Debug, PartialEq)]
enum Chunk {
    /// A piece of text (possibly empty: role announcements, the finish reason) and, in
    /// the last chunk of some servers, the token counts.
    Part { delta: String, usage: Option<(u64, u64)> },
    /// `[DONE]`: the answer is complete.
    Done,
}

fn parse_chunk(data: &str) -> Result<Chunk, AgentError> {
    if data.trim() == "[DONE]" {
        return Ok(Chunk::Done);
    }
    let value: Value = serde_json::from_str(data)
        .map_err(|e| failed(format!("a streamed piece is not JSON ({e}): {}", excerpt(data))))?;
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        return Err(judge_error_body(&ErrorInfo::from_error(error)));
    }
    let delta = value["choices"][0]["delta"]["content"].as_str().unwrap_or_default().to_string();
    Ok(Chunk::Part { delta, usage: usage(&value) })
}

/// The end of a stream: the text is the reply, unless there is none.
fn finish_stream(reply: Reply) -> Result<Reply, Verdict> {
    if reply.text.trim().is_empty() {
        return Err(Verdict::Fail(AgentError::new(AgentErrorKind::Failed, USER_EMPTY, "the stream had no text")));
    }
    Ok(reply)
}

/// What an error body says, from the shapes servers use: `{"error":{"message","type",
/// "code"}}` (OpenAI, vLLM, llama.cpp), `{"error":"text"}` (Ollama), or plain text.
#[derive(Debug, Default, PartialEq)]
struct ErrorInfo {
    message: String,
    code: String,
    kind: String,
}

impl ErrorInfo {
    fn parse(body: &[u8]) -> ErrorInfo {
        let text = String::from_utf8_lossy(body);
        match serde_json::from_str::<Value>(&text) {
            Ok(value) if value.get("error").is_some() => ErrorInfo::from_error(&value["error"]),
            Ok(value) if value["message"].is_string() => ErrorInfo::from_error(&value),
            _ => ErrorInfo { message: excerpt(&text), ..ErrorInfo::default() },
        }
    }

    fn from_error(error: &Value) -> ErrorInfo {
        let text = |v: &Value| {
            v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() })
        };
        match error {
            Value::String(message) => ErrorInfo { message: excerpt(message), ..ErrorInfo::default() },
            _ => ErrorInfo {
                message: excerpt(&text(&error["message"])),
                code: text(&error["code"]),
                kind: text(&error["type"]),
            },
        }
    }

    fn is_context_too_long(&self) -> bool {
        const PHRASES: &[&str] = &[
            "context length",
            "context_length",
            "maximum context",
            "context window",
            "context size",
            "prompt is too long",
        ];
        let message = self.message.to_lowercase();
        self.code == "context_length_exceeded"
            || self.kind == "exceed_context_size_error"
            || PHRASES.iter().any(|p| message.contains(p))
    }

    /// ` (code): message` for the log.
    fn describe(&self) -> String {
        let code = [&self.code, &self.kind].into_iter().find(|c| !c.is_empty());
        let code = code.map(|c| format!(" ({c})")).unwrap_or_default();
        format!("{code}: {}", if self.message.is_empty() { "no message" } else { &self.message })
    }
}

/// What to do about an HTTP error status.
fn judge_status(status: u16, retry_after: Option<Duration>, body: &[u8], has_key: bool) -> Verdict {
    let info = ErrorInfo::parse(body);
    match status {
        // The server's message is left out: OpenAI's quotes part of the refused key.
        401 | 403 => {
            let detail = if has_key {
                format!("HTTP {status}: the endpoint refused the API key (check [agent] api_key)")
            } else {
                format!("HTTP {status}: the endpoint needs an API key (set [agent] api_key)")
            };
            Verdict::Fail(AgentError::new(AgentErrorKind::Unauthorized, USER_UNAUTHORIZED, detail))
        }
        429 if info.code == "insufficient_quota" => {
            let detail = format!("HTTP 429{}", info.describe());
            Verdict::Fail(AgentError::new(AgentErrorKind::RateLimited, USER_QUOTA, detail))
        }
        429 => Verdict::Retry {
            error: AgentError::new(
                AgentErrorKind::RateLimited,
                USER_RATE_LIMITED,
                format!("HTTP 429{}", info.describe()),
            ),
            after: retry_after,
        },
        400 | 413 if info.is_context_too_long() => {
            Verdict::Fail(context_too_long(format!("HTTP {status}{}", info.describe())))
        }
        _ if http::is_transient_status(status) => {
            Verdict::Retry { error: failed(format!("HTTP {status}{}", info.describe())), after: retry_after }
        }
        _ => Verdict::Fail(failed(format!("HTTP {status}{}", info.describe()))),
    }
}

/// What to do about an error reported inside a 2xx body or a stream.
fn judge_error_body(info: &ErrorInfo) -> AgentError {
    let detail = format!("the endpoint reported an error{}", info.describe());
    if info.is_context_too_long() { context_too_long(detail) } else { failed(detail) }
}

/// What to do about a request that got no response.
fn judge_network(failure: Failure, detail: &str) -> Verdict {
    let detail = format!("{}: {}", failure.as_str(), excerpt(detail));
    match failure {
        Failure::Timeout => Verdict::Fail(AgentError::new(AgentErrorKind::Timeout, USER_TIMEOUT, detail)),
        f if f.is_transient() => Verdict::Retry { error: failed(detail), after: None },
        _ => Verdict::Fail(failed(detail)),
    }
}

fn failed(detail: String) -> AgentError {
    AgentError::new(AgentErrorKind::Failed, USER_FAILED, detail)
}

fn context_too_long(detail: String) -> AgentError {
    AgentError::new(AgentErrorKind::ContextTooLong, USER_CONTEXT, detail)
}

/// At most [`MAX_DETAIL`] characters of `text`, on one line.
fn excerpt(text: &str) -> String {
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(MAX_DETAIL) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::message::{ChatMessage, Role, Source};

    fn source() -> Source {
        Source::dm("tg", "1")
    }

    fn fail(verdict: Verdict) -> AgentError {
        match verdict {
            Verdict::Fail(e) => e,
            other => panic!("expected a final failure, got {other:?}"),
        }
    }

    #[test]
    fn body_has_system_prompt_history_and_text() {
        let mut settings = OpenAiSettings::new("http://x/v1", "gpt-test");
        settings.system_prompt = Some("Be brief.".into());
        settings.temperature = Some(0.7);
        settings.max_tokens = Some(64);
        let history = [ChatMessage::new(Role::User, "hi"), ChatMessage::new(Role::Assistant, "hello")];
        let source = source();
        let turn = Turn { text: "and now?", session_key: "k", history: &history, source: &source };
        let body = request_body(&settings, &turn, true);
        assert_eq!(
            body,
            json!({
                "model": "gpt-test",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "hello"},
                    {"role": "user", "content": "and now?"},
                ],
                "temperature": 0.7,
                "max_tokens": 64,
                "stream": true,
            })
        );
        let plain = request_body(&OpenAiSettings::new("http://x/v1", "m"), &turn, false);
        let keys: Vec<&String> = plain.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["messages", "model"]);
        assert_eq!(plain["messages"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn reply_and_tokens_are_parsed() {
        let body = br#"{"choices":[{"message":{"role":"assistant","content":"Hi!"},"finish_reason":"stop"}],
                       "usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        assert_eq!(parse_reply(body).unwrap(), Reply { text: "Hi!".into(), input_tokens: 12, output_tokens: 3 });
        let no_usage = br#"{"choices":[{"message":{"content":"ok"}}]}"#;
        assert_eq!(parse_reply(no_usage).unwrap(), Reply { text: "ok".into(), ..Reply::default() });
    }

    #[test]
    fn bad_and_empty_answers_fail() {
        let e = parse_reply(b"<html>gateway</html>").unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::Failed);
        assert!(e.detail.contains("not JSON"), "{e:?}");
        let e = parse_reply(br#"{"choices":[{"message":{"content":null},"finish_reason":"length"}]}"#).unwrap_err();
        assert_eq!((e.kind, e.user_message.as_str()), (AgentErrorKind::Failed, USER_EMPTY));
        assert!(e.detail.contains("length"));
        let e = parse_reply(br#"{"error":{"message":"This model's maximum context length is 8192 tokens"}}"#);
        assert_eq!(e.unwrap_err().kind, AgentErrorKind::ContextTooLong);
    }

    #[test]
    fn stream_chunks() {
        let part = r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#;
        assert_eq!(parse_chunk(part).unwrap(), Chunk::Part { delta: "Hel".into(), usage: None });
        let role = r#"{"choices":[{"delta":{"role":"assistant"}}]}"#;
        assert_eq!(parse_chunk(role).unwrap(), Chunk::Part { delta: String::new(), usage: None });
        let last = r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
        assert_eq!(parse_chunk(last).unwrap(), Chunk::Part { delta: String::new(), usage: Some((5, 2)) });
        assert_eq!(parse_chunk("[DONE]").unwrap(), Chunk::Done);
        let e = parse_chunk(r#"{"error":{"message":"overloaded"}}"#).unwrap_err();
        assert_eq!(e.kind, AgentErrorKind::Failed);
        assert!(e.detail.contains("overloaded"));
        assert!(parse_chunk("{not json").is_err());
        assert!(finish_stream(Reply::default()).is_err());
    }

    #[test]
    fn refused_keys_are_final_and_never_quote_the_server() {
        let body = br#"{"error":{"message":"Incorrect API key provided: sk-ab***xyz","code":"invalid_api_key"}}"#;
        for status in [401, 403] {
            let e = fail(judge_status(status, None, body, true));
            assert_eq!((e.kind, e.user_message.as_str()), (AgentErrorKind::Unauthorized, USER_UNAUTHORIZED));
            assert!(e.detail.contains("refused the API key") && !e.detail.contains("sk-"), "{e:?}");
        }
        let e = fail(judge_status(401, None, b"", false));
        assert!(e.detail.contains("needs an API key"), "{e:?}");
    }

    #[test]
    fn rate_limits_and_server_errors_are_retried() {
        let wait = Some(Duration::from_secs(2));
        let body = br#"{"error":{"message":"Rate limit reached","type":"requests"}}"#;
        let Verdict::Retry { error, after } = judge_status(429, wait, body, true) else { panic!() };
        assert_eq!((error.kind, after), (AgentErrorKind::RateLimited, wait));
        assert_eq!(error.detail, "HTTP 429 (requests): Rate limit reached");
        for status in [500, 502, 503, 408] {
            let Verdict::Retry { error, after: None } = judge_status(status, None, b"oops", true) else { panic!() };
            assert_eq!(error.kind, AgentErrorKind::Failed);
            assert_eq!(error.detail, format!("HTTP {status}: oops"));
        }
        let quota = br#"{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}"#;
        assert_eq!(fail(judge_status(429, None, quota, true)).user_message, USER_QUOTA);
        let e = fail(judge_status(404, None, br#"{"error":"model 'x' not found"}"#, true));
        assert_eq!((e.kind, e.detail.as_str()), (AgentErrorKind::Failed, "HTTP 404: model 'x' not found"));
    }

    #[test]
    fn context_too_long_in_each_servers_words() {
        let bodies: [&[u8]; 4] = [
            br#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#,
            br#"{"error":{"message":"This model's maximum context length is 4096 tokens. However, you requested 5000"}}"#,
            br#"{"error":{"code":400,"message":"the request exceeds the available context size","type":"exceed_context_size_error"}}"#,
            br#"{"error":"prompt is too long"}"#,
        ];
        for body in bodies {
            let e = fail(judge_status(400, None, body, true));
            assert_eq!(e.kind, AgentErrorKind::ContextTooLong, "{}", String::from_utf8_lossy(body));
            assert!(e.user_message.contains("/new"));
        }
        let e = fail(judge_status(400, None, br#"{"error":{"message":"invalid temperature"}}"#, true));
        assert_eq!(e.kind, AgentErrorKind::Failed);
    }

    #[test]
    fn network_failures() {
        let e = fail(judge_network(Failure::Timeout, "timeout: global"));
        assert_eq!((e.kind, e.user_message.as_str()), (AgentErrorKind::Timeout, USER_TIMEOUT));
        for f in [Failure::Refused, Failure::Broken, Failure::Dns, Failure::Tls] {
            assert!(matches!(judge_network(f, "x"), Verdict::Retry { after: None, .. }), "{f:?}");
        }
        assert_eq!(fail(judge_network(Failure::Config, "bad uri")).kind, AgentErrorKind::Failed);
    }

    #[test]
    fn retry_waits_double_unless_the_server_says() {
        let mut settings = OpenAiSettings::new("http://127.0.0.1:9/v1", "m");
        settings.retry_wait = Duration::from_millis(100);
        let agent = OpenAi::new(settings, false);
        let ms = Duration::from_millis;
        assert_eq!([1, 2, 3].map(|n| agent.retry_wait(n, None)), [ms(100), ms(200), ms(400)]);
        assert_eq!(agent.retry_wait(1, Some(ms(7))), ms(7));
        assert_eq!(agent.retry_wait(40, None), MAX_BACKOFF);
    }

    #[test]
    fn the_key_is_scrubbed_from_details() {
        let mut settings = OpenAiSettings::new("http://x/v1", "m");
        settings.api_key = Some(Secret::new("sk-live-123"));
        let agent = OpenAi::new(settings, false);
        assert_eq!(agent.clean("header Bearer sk-live-123 seen"), "header Bearer *** seen");
    }

    #[test]
    fn excerpts_are_short_single_lines() {
        assert_eq!(excerpt("a\n  b\tc"), "a b c");
        let long = "é".repeat(MAX_DETAIL + 5);
        assert_eq!(excerpt(&long).chars().count(), MAX_DETAIL + 1);
    }
}
