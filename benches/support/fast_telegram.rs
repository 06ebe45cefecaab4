/*!
A fast fake Telegram Bot API for the benchmarks, on [`super::http`].

It serves `POST /bot<TOKEN>/<method>` with JSON parameters, as the gateway sends them:

| method           | answer                                                                   |
|------------------|--------------------------------------------------------------------------|
| `getMe`          | a bot user, or 502 while [`FastTelegram::fail_get_me`] is set              |
| `deleteWebhook`, `sendChatAction` | `true`                                                  |
| `getUpdates`     | drops updates below `offset`, returns up to `limit` (100); with none ready it holds the call on a `Condvar` up to `timeout` seconds and answers as soon as one is pushed |
| `sendMessage`    | records `(chat_id, text, arrival time)` and returns a `Message`           |

[`FastTelegram::start_real`] makes it behave like the real API at a distance: every answer
is written `latency` after the request was read (a held poll: `latency` after it had
something to answer), each on its own connection thread, so requests on different
connections overlap as they would over a WAN; and `sendMessage` is held to Telegram's send
limits ([`super::telegram_limits`]): a message over them is answered 429 with
`parameters.retry_after` and not recorded, and [`FastTelegram::rate_limited`] counts them.

Updates are serialized when pushed, so a `getUpdates` answer is a string join under
the lock. Message ids are unique across chats (Telegram's are per chat; see the
benchmark README for why that matters to the inbox).

Every `wait_*` takes a deadline and returns what it saw; the caller decides whether
that is a failure.
*/

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value;

use super::http::{self, Handler, Request, Server};
use super::telegram_limits::{Refusal, TelegramLimits};

/// A reply as the fake received it.
#[derive(Clone, Debug)]
pub struct Sent {
    pub chat_id: i64,
    pub text: String,
    pub at: Instant,
}

/// One `getMe`: when it arrived and when its answer had been written.
#[derive(Clone, Copy, Debug)]
pub struct GetMe {
    pub arrived: Instant,
    pub answered: Instant,
}

#[derive(Default)]
struct State {
    /// `(update_id, serialized update)`, not yet confirmed by an offset.
    queue: VecDeque<(i64, String)>,
    next_update_id: i64,
    next_message_id: i64,
    sent: Vec<Sent>,
    get_me: Vec<GetMe>,
    first_get_updates: Option<Instant>,
    get_updates_calls: u64,
    fail_get_me: bool,
    closing: bool,
    /// Telegram's send limits, when enforced.
    limits: Option<TelegramLimits>,
    /// `sendMessage` calls answered 429: to which chat, when it arrived, why.
    refused: Vec<(i64, Instant, Refusal)>,
}

struct Shared {
    token: String,
    /// How long after a request is read its answer is written.
    latency: Duration,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Change the state and wake every waiter (held polls and the bench's `wait_*`).
    fn change<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let result = f(&mut self.lock());
        self.changed.notify_all();
        result
    }

    fn wait_until(&self, deadline: Instant, done: impl Fn(&State) -> bool) -> MutexGuard<'_, State> {
        let mut state = self.lock();
        while !done(&state) && !state.closing {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            state = self.changed.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        state
    }
}

/// A running fake for one bot token. Dropping it releases held polls and stops accepting.
pub struct FastTelegram {
    shared: Arc<Shared>,
    server: Server,
}

impl FastTelegram {
    /// Answers at once, no send limits.
    pub fn start(token: &str) -> FastTelegram {
        FastTelegram::start_as(token, Duration::ZERO, None)
    }

    /// Answers `latency` late and enforces Telegram's send limits (see the module doc).
    pub fn start_real(token: &str, latency: Duration) -> FastTelegram {
        FastTelegram::start_as(token, latency, Some(TelegramLimits::default()))
    }

    fn start_as(token: &str, latency: Duration, limits: Option<TelegramLimits>) -> FastTelegram {
        let state = State { next_update_id: 1, next_message_id: 1, limits, ..State::default() };
        let shared =
            Arc::new(Shared { token: token.to_string(), latency, state: Mutex::new(state), changed: Condvar::new() });
        let sh = shared.clone();
        let handler: Handler = Arc::new(move |req: &Request, stream: &mut TcpStream| handle(&sh, req, stream));
        FastTelegram { shared, server: Server::start("fast-telegram", handler) }
    }

    /// The `api_base` for the bot.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Queue one text message per `(chat_id, text)` from the chat's own user (a private
    /// chat), all under one lock; returns when they became visible to a held long poll.
    pub fn push(&self, messages: &[(i64, String)]) -> Instant {
        self.shared.change(|state| {
            for (chat, text) in messages {
                let (update_id, message_id) = (state.next_update_id, state.next_message_id);
                state.next_update_id += 1;
                state.next_message_id += 1;
                state.queue.push_back((update_id, update_json(update_id, message_id, *chat, text)));
            }
            Instant::now()
        })
    }

    /// While set, `getMe` answers 502 Bad Gateway.
    pub fn fail_get_me(&self, fail: bool) {
        self.shared.change(|state| state.fail_get_me = fail);
    }

    /// Wait until at least `n` replies arrived or `deadline` passes; returns them all.
    pub fn wait_sent(&self, n: usize, deadline: Instant) -> Vec<Sent> {
        self.shared.wait_until(deadline, |s| s.sent.len() >= n).sent.clone()
    }

    /// How many replies arrived so far.
    pub fn sent_count(&self) -> usize {
        self.shared.lock().sent.len()
    }

    /// Wait until at least `n` `getMe` calls were answered or `deadline` passes.
    pub fn wait_get_me(&self, n: usize, deadline: Instant) -> Vec<GetMe> {
        self.shared.wait_until(deadline, |s| s.get_me.len() >= n).get_me.clone()
    }

    /// Wait for the first `getUpdates` call; when it arrived.
    pub fn wait_first_poll(&self, deadline: Instant) -> Option<Instant> {
        self.shared.wait_until(deadline, |s| s.first_get_updates.is_some()).first_get_updates
    }

    /// How many `getUpdates` calls arrived so far.
    pub fn polls(&self) -> u64 {
        self.shared.lock().get_updates_calls
    }

    /// How many connections the gateway opened so far.
    pub fn connections(&self) -> u64 {
        self.server.connections()
    }

    /// How many `sendMessage` calls were answered 429 so far.
    pub fn rate_limited(&self) -> u64 {
        self.shared.lock().refused.len() as u64
    }

    /// The `sendMessage` calls answered 429 so far: chat, arrival, why.
    pub fn refused(&self) -> Vec<(i64, Instant, Refusal)> {
        self.shared.lock().refused.clone()
    }
}

impl Drop for FastTelegram {
    fn drop(&mut self) {
        self.shared.change(|state| state.closing = true);
    }
}

/// A private-chat text update, as Telegram sends it.
fn update_json(update_id: i64, message_id: i64, chat: i64, text: &str) -> String {
    let text = serde_json::to_string(text).expect("a string serializes");
    format!(
        concat!(
            r#"{{"update_id":{update_id},"message":{{"message_id":{message_id},"date":1700000000,"#,
            r#""from":{{"id":{chat},"is_bot":false,"first_name":"User{chat}"}},"#,
            r#""chat":{{"id":{chat},"type":"private","first_name":"User{chat}"}},"text":{text}}}}}"#,
        ),
        update_id = update_id,
        message_id = message_id,
        chat = chat,
        text = text,
    )
}

fn handle(shared: &Shared, req: &Request, stream: &mut TcpStream) -> io::Result<()> {
    let method = req.path.strip_prefix("/bot").and_then(|rest| rest.strip_prefix(shared.token.as_str()));
    let Some(method) = method.and_then(|m| m.strip_prefix('/')) else {
        return http::respond(stream, 404, r#"{"ok":false,"error_code":404,"description":"Not Found"}"#);
    };
    match method {
        "getMe" => get_me(shared, req, stream),
        "deleteWebhook" | "sendChatAction" => {
            delay(shared, req.at);
            http::respond(stream, 200, r#"{"ok":true,"result":true}"#)
        }
        "getUpdates" => {
            let answer = get_updates(shared, req);
            http::respond(stream, 200, &answer)
        }
        "sendMessage" => {
            // Judged on arrival, answered after the latency.
            let answer = send_message(shared, req);
            delay(shared, req.at);
            match answer {
                Ok(answer) => http::respond(stream, 200, &answer),
                Err(retry_after) => http::respond(stream, 429, &too_many_requests(retry_after)),
            }
        }
        _ => http::respond(stream, 404, r#"{"ok":false,"error_code":404,"description":"Not Found"}"#),
    }
}

fn get_me(shared: &Shared, req: &Request, stream: &mut TcpStream) -> io::Result<()> {
    delay(shared, req.at);
    let written = if shared.lock().fail_get_me {
        http::respond(stream, 502, r#"{"ok":false,"error_code":502,"description":"Bad Gateway"}"#)
    } else {
        http::respond(
            stream,
            200,
            r#"{"ok":true,"result":{"id":1,"is_bot":true,"first_name":"Fast","username":"fast_bot"}}"#,
        )
    };
    // The reconnect bench measures from here: the gateway has the answer in its socket.
    let answered = Instant::now();
    shared.change(|state| state.get_me.push(GetMe { arrived: req.at, answered }));
    written
}

#[derive(Deserialize)]
struct PollParams {
    offset: Option<i64>,
    limit: Option<usize>,
    timeout: Option<u64>,
}

/// Confirm what lies below `offset`, then answer with what is ready, holding the call
/// up to `timeout` seconds while nothing is.
fn get_updates(shared: &Shared, req: &Request) -> String {
    let params: PollParams =
        serde_json::from_slice(&req.body).unwrap_or(PollParams { offset: None, limit: None, timeout: None });
    let limit = params.limit.unwrap_or(100).clamp(1, 100);
    let deadline = req.at + Duration::from_secs(params.timeout.unwrap_or(0));
    shared.change(|state| {
        state.first_get_updates.get_or_insert(req.at);
        state.get_updates_calls += 1;
        if let Some(offset) = params.offset {
            while state.queue.front().is_some_and(|(id, _)| *id < offset) {
                state.queue.pop_front();
            }
        }
    });
    let state = shared.wait_until(deadline, |s| !s.queue.is_empty());
    let ready: Vec<&str> = state.queue.iter().take(limit).map(|(_, json)| json.as_str()).collect();
    let answer = format!(r#"{{"ok":true,"result":[{}]}}"#, ready.join(","));
    drop(state);
    delay(shared, Instant::now());
    answer
}

/// Sleep until `latency` after `from`.
fn delay(shared: &Shared, from: Instant) {
    let until = from + shared.latency;
    let now = Instant::now();
    if until > now {
        std::thread::sleep(until - now);
    }
}

/// Telegram's answer to a message over its limits.
fn too_many_requests(retry_after: u64) -> String {
    format!(
        r#"{{"ok":false,"error_code":429,"description":"Too Many Requests: retry after {retry_after}","parameters":{{"retry_after":{retry_after}}}}}"#
    )
}

#[derive(Deserialize)]
struct SendParams {
    chat_id: Value,
    text: String,
}

/// Record a message and answer its `Message`, or `Err(retry_after)` over the limits
/// (counted where Telegram counts them: when the request arrived).
fn send_message(shared: &Shared, req: &Request) -> Result<String, u64> {
    let params: SendParams = match serde_json::from_slice(&req.body) {
        Ok(params) => params,
        Err(e) => panic!("the gateway sent a sendMessage the fake cannot read: {e}"),
    };
    let chat_id = params.chat_id.as_i64().expect("an integer chat_id");
    let text = serde_json::to_string(&params.text).expect("a string serializes");
    let message_id = shared.change(|state| {
        if let Some(Err(refusal)) = state.limits.as_mut().map(|l| l.admit(chat_id, req.at)) {
            let retry_after = refusal.retry_after;
            state.refused.push((chat_id, req.at, refusal));
            return Err(retry_after);
        }
        state.next_message_id += 1;
        state.sent.push(Sent { chat_id, text: params.text, at: req.at });
        Ok(state.next_message_id)
    })?;
    Ok(format!(
        r#"{{"ok":true,"result":{{"message_id":{message_id},"date":1700000000,"chat":{{"id":{chat_id},"type":"private"}},"text":{text}}}}}"#
    ))
}
