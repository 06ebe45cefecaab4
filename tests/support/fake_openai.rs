/*!
A fake OpenAI-compatible chat-completions server for tests.

[`FakeOpenAi::start`] listens on `127.0.0.1:0`; point `base_url` at [`FakeOpenAi::url`]
(`http://127.0.0.1:PORT/v1`). It serves `POST /v1/chat/completions` and answers each
request with the next scripted [`Answer`], or with the default answer when the script
is empty (`{"choices":[{"message":{"content":"ok"}}]}` until [`FakeOpenAi::set_reply`]).
A request with `"stream": true` gets a text answer as server-sent events, one chunk per
answer. Any other path gets 404.

Script answers with [`FakeOpenAi::push_reply`], [`FakeOpenAi::push_reply_with_usage`],
[`FakeOpenAi::push_slow`], [`FakeOpenAi::push_stream`] and [`FakeOpenAi::fail_next`]
(status, JSON body, headers such as `Retry-After`), or with [`FakeOpenAi::push`] for any
[`Answer`]. Observe the requests with [`FakeOpenAi::requests`] (the JSON bodies),
[`FakeOpenAi::calls`] (with arrival time and headers) and [`FakeOpenAi::wait_requests`],
which blocks on a condition variable until the count is reached or the deadline passes.
[`FakeOpenAi::hold`] keeps every answer back until [`FakeOpenAi::release`]; the fake
counts the requests it is answering at once ([`FakeOpenAi::wait_in_flight`],
[`FakeOpenAi::peak`]), which shows how many turns a gateway runs in parallel.

Each request is handled on its own thread, so a slow answer never delays another.
Dropping the fake releases held answers at once and stops the server.
*/

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::http::{Request, Server};
use super::watched::{Closing, Watched};

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Answer {
    /// A chat completion with this text, and `usage` when given (prompt, completion).
    Text { text: String, usage: Option<(u64, u64)> },
    /// This status, JSON body and headers.
    Status { status: u16, body: Value, headers: Vec<(String, String)> },
    /// Hold the request this long (or until the fake is dropped), then answer.
    Slow(Duration, Box<Answer>),
    /// A streamed completion: each piece as one `data:` event after `delay`, then
    /// `data: [DONE]` (unless `done` is false, when the stream just ends).
    Stream { pieces: Vec<String>, delay: Duration, done: bool },
    /// A stream that sends its first event and then only `: keep-alive` comments, one
    /// every `every`, until the client hangs up (or the fake is dropped).
    KeepAlive { every: Duration },
    /// A stream that sends `pieces` and then nothing, holding the connection open until
    /// the fake is dropped.
    Stall { pieces: Vec<String> },
}

/// An OpenAI-style error body.
pub fn api_error(message: &str, code: Option<&str>) -> Value {
    json!({ "error": { "message": message, "type": "invalid_request_error", "param": null, "code": code } })
}

/// The body OpenAI sends when the conversation no longer fits the model.
pub fn context_length_exceeded() -> Value {
    api_error(
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
        Some("context_length_exceeded"),
    )
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: Instant,
    pub path: String,
    /// `Authorization`, when sent.
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    /// The JSON body (`Null` when it was not JSON).
    pub body: Value,
}

#[derive(Default)]
struct State {
    script: VecDeque<Answer>,
    default: Option<Answer>,
    calls: Vec<Call>,
    /// Streams whose client hung up: a write to it failed.
    hangups: usize,
    /// Answers wait until this is false again.
    held: bool,
    /// Requests received whose answer has not begun, and the most there were at once.
    in_flight: usize,
    peak: usize,
    closing: bool,
}

type Shared = Watched<State>;

impl Closing for State {
    fn closing(&self) -> bool {
        self.closing
    }
}

/// A running fake endpoint. Dropping it stops the server.
pub struct FakeOpenAi {
    shared: Arc<Shared>,
    /// Dropped after the state is marked closing (see `Drop`), which wakes held answers.
    server: Option<Server>,
}

impl FakeOpenAi {
    pub fn start() -> FakeOpenAi {
        let shared = Arc::new(Watched::new(State::default()));
        let sh = shared.clone();
        let server = Server::start("fake-openai", move |request| handle(&sh, request));
        FakeOpenAi { shared, server: Some(server) }
    }

    /// The `base_url` to configure: `http://127.0.0.1:PORT/v1`.
    pub fn url(&self) -> String {
        format!("{}/v1", self.server.as_ref().expect("the server runs until the fake is dropped").url())
    }

    /// Queue any answer.
    pub fn push(&self, answer: Answer) {
        self.shared.change(|s| s.script.push_back(answer));
    }

    /// Queue a completion with `text`.
    pub fn push_reply(&self, text: &str) {
        self.push(Answer::Text { text: text.to_string(), usage: None });
    }

    /// Queue a completion with `text` and token counts.
    pub fn push_reply_with_usage(&self, text: &str, prompt_tokens: u64, completion_tokens: u64) {
        self.push(Answer::Text { text: text.to_string(), usage: Some((prompt_tokens, completion_tokens)) });
    }

    /// Queue a completion with `text`, sent after `delay`.
    pub fn push_slow(&self, text: &str, delay: Duration) {
        let answer = Answer::Text { text: text.to_string(), usage: None };
        self.push(Answer::Slow(delay, Box::new(answer)));
    }

    /// Queue a streamed completion of `pieces`, each after `delay`.
    pub fn push_stream(&self, pieces: &[&str], delay: Duration) {
        let pieces = pieces.iter().map(|p| p.to_string()).collect();
        self.push(Answer::Stream { pieces, delay, done: true });
    }

    /// Answer the next `count` requests with `status`, the JSON `body` and `headers`.
    pub fn fail_next(&self, status: u16, body: Value, headers: &[(&str, &str)], count: usize) {
        let headers: Vec<(String, String)> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        for _ in 0..count {
            self.push(Answer::Status { status, body: body.clone(), headers: headers.clone() });
        }
    }

    /// The answer when the script is empty: a completion with `text`.
    pub fn set_reply(&self, text: &str) {
        self.shared.change(|s| s.default = Some(Answer::Text { text: text.to_string(), usage: None }));
    }

    /// The JSON body of every request so far.
    pub fn requests(&self) -> Vec<Value> {
        self.shared.lock().calls.iter().map(|c| c.body.clone()).collect()
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.lock().calls.clone()
    }

    /// Wait until at least `n` clients hung up on a stream or `deadline` passes; returns
    /// the count.
    pub fn wait_hangups(&self, n: usize, deadline: Instant) -> usize {
        self.shared.wait_until(deadline, |s| s.hangups >= n).hangups
    }

    /// Keep every answer back (the scripted one included) until [`FakeOpenAi::release`].
    pub fn hold(&self) {
        self.shared.change(|s| s.held = true);
    }

    /// Send the answers held back, and answer at once from now on.
    pub fn release(&self) {
        self.shared.change(|s| s.held = false);
    }

    /// The most requests that waited for their answer at the same time.
    pub fn peak(&self) -> usize {
        self.shared.lock().peak
    }

    /// Wait until at least `n` requests wait for their answer at once or `deadline`
    /// passes; returns how many do.
    pub fn wait_in_flight(&self, n: usize, deadline: Instant) -> usize {
        self.shared.wait_until(deadline, |s| s.in_flight >= n).in_flight
    }

    /// Wait until at least `n` requests arrived or `deadline` passes; returns the count.
    pub fn wait_requests(&self, n: usize, deadline: Instant) -> usize {
        self.shared.wait_until(deadline, |s| s.calls.len() >= n).calls.len()
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.shared.change(|state| state.closing = true);
        drop(self.server.take());
    }
}

fn handle(shared: &Shared, request: Request) {
    let header = |name: &str| request.header(name).map(str::to_string);
    let (authorization, content_type) = (header("authorization"), header("content-type"));
    let path = request.url().to_string();
    let body: Value = serde_json::from_str(&request.body_text()).unwrap_or(Value::Null);
    if path != "/v1/chat/completions" || request.method() != "POST" {
        return respond(request, 404, &api_error("Not found", None), &[]);
    }
    let stream = body["stream"] == json!(true);
    let answer = shared.change(|s| {
        s.calls.push(Call { at: Instant::now(), path, authorization, content_type, body });
        s.in_flight += 1;
        s.peak = s.peak.max(s.in_flight);
        s.script.pop_front().or_else(|| s.default.clone())
    });
    let mut answer = answer.unwrap_or(Answer::Text { text: "ok".into(), usage: None });
    drop(shared.wait_until(Instant::now() + Duration::from_secs(3600), |s| !s.held));
    while let Answer::Slow(delay, inner) = answer {
        drop(shared.wait_until(Instant::now() + delay, |_| false));
        answer = *inner;
    }
    // Counted out before the answer is written: the client cannot have it, and send its
    // next request, while this one still counts.
    shared.change(|s| s.in_flight -= 1);
    serve(shared, request, answer, stream);
}

fn serve(shared: &Shared, request: Request, answer: Answer, stream: bool) {
    match answer {
        Answer::Text { text, usage } if stream => {
            let pieces = vec![text];
            write_stream(shared, request, &pieces, Duration::ZERO, true, usage);
        }
        Answer::Text { text, usage } => respond(request, 200, &completion(&text, usage), &[]),
        Answer::Status { status, body, headers } => respond(request, status, &body, &headers),
        Answer::Slow(delay, answer) => {
            drop(shared.wait_until(Instant::now() + delay, |_| false));
            serve(shared, request, *answer, stream);
        }
        Answer::Stream { pieces, delay, done } => write_stream(shared, request, &pieces, delay, done, None),
        Answer::KeepAlive { every } => keep_alive(shared, request, every),
        Answer::Stall { pieces } => {
            let Some(_writer) = start_stream(shared, request, &pieces) else { return };
            drop(shared.wait_until(Instant::now() + Duration::from_secs(3600), |_| false));
        }
    }
}

/// The response head of an event stream.
const STREAM_HEAD: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

/// `bytes` as one chunk of a chunked body, written and flushed at once.
fn write_chunk(writer: &mut dyn Write, bytes: &[u8]) -> std::io::Result<()> {
    writer.write_all(format!("{:x}\r\n", bytes.len()).as_bytes())?;
    writer.write_all(bytes)?;
    writer.write_all(b"\r\n")?;
    writer.flush()
}

/// A piece of text as one `data:` event.
fn piece_event(piece: &str) -> String {
    let event = json!({ "choices": [{ "index": 0, "delta": { "content": piece } }] });
    format!("data: {event}\n\n")
}

/// Send the head, the role event and `pieces`; the writer, or `None` when the client hung up.
fn start_stream(shared: &Shared, request: Request, pieces: &[String]) -> Option<Box<dyn Write + Send>> {
    let mut writer = request.into_writer();
    let role = json!({ "choices": [{ "index": 0, "delta": { "role": "assistant" } }] });
    let mut ok = writer.write_all(STREAM_HEAD.as_bytes()).is_ok();
    for event in std::iter::once(format!("data: {role}\n\n")).chain(pieces.iter().map(|p| piece_event(p))) {
        ok = ok && write_chunk(&mut *writer, event.as_bytes()).is_ok();
    }
    if !ok {
        shared.change(|s| s.hangups += 1);
    }
    ok.then_some(writer)
}

/// [`Answer::KeepAlive`]: comments until a write fails (a hang-up) or the fake closes.
fn keep_alive(shared: &Shared, request: Request, every: Duration) {
    let Some(mut writer) = start_stream(shared, request, &[]) else { return };
    loop {
        if shared.wait_until(Instant::now() + every, |s| s.closing).closing {
            return;
        }
        if write_chunk(&mut *writer, b": keep-alive\n\n").is_err() {
            shared.change(|s| s.hangups += 1);
            return;
        }
    }
}

fn completion(text: &str, usage: Option<(u64, u64)>) -> Value {
    let mut body = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": "fake",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
    });
    if let Some((prompt, completion)) = usage {
        body["usage"] =
            json!({ "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion });
    }
    body
}

fn respond(request: Request, status: u16, body: &Value, headers: &[(String, String)]) {
    let content_type = ("Content-Type".to_string(), "application/json".to_string());
    let headers: Vec<(String, String)> = headers.iter().cloned().chain([content_type]).collect();
    request.respond(status, &headers, body.to_string().as_bytes());
}

/// Write a chunked `text/event-stream` response by hand, flushing each event, so the
/// client sees every piece when it is sent.
fn write_stream(
    shared: &Shared,
    request: Request,
    pieces: &[String],
    delay: Duration,
    done: bool,
    usage: Option<(u64, u64)>,
) {
    let mut writer = request.into_writer();
    let head = STREAM_HEAD;
    let mut events: Vec<String> =
        vec![json!({ "choices": [{ "index": 0, "delta": { "role": "assistant" } }] }).to_string()];
    events.extend(pieces.iter().map(|p| json!({ "choices": [{ "index": 0, "delta": { "content": p } }] }).to_string()));
    if let Some((prompt, completion)) = usage {
        events.push(
            json!({ "choices": [], "usage": { "prompt_tokens": prompt, "completion_tokens": completion } }).to_string(),
        );
    }
    if done {
        events.push("[DONE]".to_string());
    }
    let mut write = |bytes: &[u8]| writer.write_all(bytes).and_then(|_| writer.flush());
    let hung_up = || shared.change(|s| s.hangups += 1);
    if write(head.as_bytes()).is_err() {
        return hung_up();
    }
    for (i, event) in events.iter().enumerate() {
        // The first event (the role) goes at once; each piece waits its delay.
        if i > 0 && !delay.is_zero() && (1..=pieces.len()).contains(&i) {
            drop(shared.wait_until(Instant::now() + delay, |_| false));
        }
        let data = format!("data: {event}\n\n");
        if write(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).is_err() {
            return hung_up();
        }
    }
    let _ = write(b"0\r\n\r\n");
}
