/*!
A fake Telegram Bot API server for tests, speaking the real wire format.

[`FakeTelegram::start`] listens on `127.0.0.1:0`; point a bot's `api_base` at
[`FakeTelegram::url`]. It serves `POST|GET /bot<TOKEN>/<method>` with parameters as JSON,
form or query string, and answers `{"ok":true,"result":…}` or
`{"ok":false,"error_code":…,"description":…,"parameters":{"retry_after":…}}`:

| method           | behaviour                                                                  |
|------------------|----------------------------------------------------------------------------|
| `getMe`          | a bot user `@fake_bot`                                                     |
| `deleteWebhook`  | `true`                                                                     |
| `getUpdates`     | drops queued updates below `offset` (they are confirmed), keeps only types in `allowed_updates`, returns up to `limit`; with none ready it holds the request up to `timeout` seconds and answers as soon as an update is pushed |
| `sendMessage`    | records the call and returns a `Message`; empty text and text over 4096 UTF-16 units get Telegram's 400s |
| `sendChatAction` | `true`                                                                     |
| `editMessageText`| records the edit and returns the edited `Message`                          |

A path with another token gets 401 Unauthorized, anything else 404, as Telegram does.

Tests push updates ([`FakeTelegram::push_text`], [`FakeTelegram::push_update`]), script
failures per method ([`FakeTelegram::inject`] any [`Fault`], headers included,
[`FakeTelegram::fail_next`], [`FakeTelegram::fail_always`],
[`FakeTelegram::fail_getme_with`]) or per chat ([`FakeTelegram::fail_chat`]), hold sends
to count how many are in flight at once ([`FakeTelegram::hold_sends`]), take the whole server
off the network and back ([`FakeTelegram::set_down`]), and observe calls ([`FakeTelegram::count`],
[`FakeTelegram::call_times`], [`FakeTelegram::last_offset`], [`FakeTelegram::sent`]).
Every `wait_*` method blocks on a condition variable until its condition holds or the
deadline passes, then returns what it saw; the caller asserts.

Each request is handled on its own thread, so a held long poll never delays another
call. Dropping the fake answers held polls at once and stops the server.

It depends on nothing of the crate under test, so end-to-end tests of the binary can use
it as well as tests of the adapter.
*/

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::http::{Request, Server};
use super::watched::{Closing, Watched};

/// A token in Telegram's shape, for tests that need one.
pub const TOKEN: &str = "123456789:AAH-fake_token-for-tests";

/// The description Telegram sends with a 409 when another `getUpdates` took over.
pub const CONFLICT: &str =
    "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";

/// A scripted answer to one call of a method.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Serve the call normally: a gap in a script of faults.
    Pass,
    /// Answer with this status and JSON body (see [`api_error`], [`rate_limited`]).
    Status(u16, Value),
    /// Answer with this status and a body that need not be JSON.
    Raw(u16, String),
    /// [`Fault::Raw`] with extra headers (`Retry-After`), as `(name, value)` pairs.
    WithHeaders(u16, String, Vec<(String, String)>),
    /// Answer with bytes that are not HTTP; the client sees a broken exchange (as after a
    /// dropped connection) and closes it.
    Garbage,
    /// Hold the request this long (or until the fake is dropped), then serve it normally.
    Hang(Duration),
}

/// A Bot API error body: `{"ok":false,"error_code":code,"description":description}`.
pub fn api_error(code: u16, description: &str) -> Value {
    json!({ "ok": false, "error_code": code, "description": description })
}

/// Telegram's 429 body, asking to wait `retry_after` seconds.
pub fn rate_limited(retry_after: u64) -> Value {
    json!({
        "ok": false,
        "error_code": 429,
        "description": format!("Too Many Requests: retry after {retry_after}"),
        "parameters": { "retry_after": retry_after },
    })
}

/// One call as the fake received it.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub at: Instant,
    /// The parameters, merged from the query string and the JSON or form body.
    pub params: Value,
}

#[derive(Default)]
struct State {
    /// Updates pushed and not yet confirmed, in id order.
    queue: VecDeque<Value>,
    next_update_id: i64,
    next_message_id: i64,
    calls: Vec<Call>,
    /// `sendMessage` parameters, in order.
    sent: Vec<Value>,
    edits: Vec<Value>,
    /// One-shot faults per method, consumed in order.
    script: HashMap<String, VecDeque<Fault>>,
    /// Faults answered to every call of a method (after the script is used up).
    always: HashMap<String, Fault>,
    /// Faults answered to every send or edit to a chat (after the method's script).
    chat_faults: HashMap<String, Fault>,
    /// `sendMessage` calls are held unanswered while this is set.
    sends_held: bool,
    /// `sendMessage` calls being served now, and the most ever at once.
    sends_in_flight: usize,
    peak_sends_in_flight: usize,
    /// The offset of the latest `getUpdates` call.
    last_offset: Option<i64>,
    /// The highest update id ever returned by `getUpdates`.
    last_served: Option<i64>,
    /// Answer every call with [`Fault::Garbage`], as a broken network would.
    down: bool,
    closing: bool,
    /// The bot token the fake answers to.
    token: String,
}

type Shared = Watched<State>;

impl Closing for State {
    fn closing(&self) -> bool {
        self.closing
    }
}

/// A running fake Bot API. Dropping it stops the server.
pub struct FakeTelegram {
    shared: Arc<Shared>,
    token: String,
    /// Dropped after the state is marked closing (see `Drop`), which wakes held calls.
    server: Option<Server>,
}

impl FakeTelegram {
    /// Start a fake for bot `token` on `127.0.0.1:0`.
    pub fn start(token: &str) -> FakeTelegram {
        let state = State { next_update_id: 1000, next_message_id: 1, ..State::default() };
        let shared = Arc::new(Watched::new(State { token: token.to_string(), ..state }));
        let sh = shared.clone();
        let server = Server::start("fake-telegram", move |request| handle(&sh, request));
        FakeTelegram { shared, token: token.to_string(), server: Some(server) }
    }

    /// The `api_base` to give the bot: `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.as_ref().expect("the server runs until the fake is dropped").url()
    }

    /// The token this fake accepts.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Queue a text message from user `user_id` in chat `chat_id` (a private chat when the
    /// id is positive, a supergroup when negative, as on Telegram). Returns its update id.
    pub fn push_text(&self, chat_id: i64, user_id: i64, text: &str) -> i64 {
        let chat = if chat_id > 0 {
            json!({ "id": chat_id, "type": "private", "first_name": format!("User{user_id}") })
        } else {
            json!({ "id": chat_id, "type": "supergroup", "title": format!("Group {chat_id}") })
        };
        let from = json!({
            "id": user_id, "is_bot": false, "first_name": format!("User{user_id}"), "username": format!("user{user_id}"),
        });
        let message_id = self.next_message_id();
        self.push_update(json!({
            "message": { "message_id": message_id, "date": unix_now(), "from": from, "chat": chat, "text": text },
        }))
    }

    /// Queue any update; its `update_id` is set to the next id, which is returned.
    pub fn push_update(&self, mut update: Value) -> i64 {
        self.shared.change(|state| {
            let id = state.next_update_id;
            state.next_update_id += 1;
            update["update_id"] = json!(id);
            state.queue.push_back(update);
            id
        })
    }

    /// Answer the next `count` calls of `method` with `fault`, after any faults already
    /// scripted for it.
    pub fn inject(&self, method: &str, fault: Fault, count: usize) {
        self.shared.change(|state| {
            state.script.entry(method.to_string()).or_default().extend(std::iter::repeat_n(fault, count));
        });
    }

    /// Answer the next `count` calls of `method` with `status` and the JSON `body`.
    pub fn fail_next(&self, method: &str, status: u16, body: Value, count: usize) {
        self.inject(method, Fault::Status(status, body), count);
    }

    /// Answer every call of `method` with `fault` once its script is used up; `None`
    /// serves it normally again.
    pub fn fail_always(&self, method: &str, fault: Option<Fault>) {
        self.shared.change(|state| match fault {
            Some(fault) => state.always.insert(method.to_string(), fault),
            None => state.always.remove(method),
        });
    }

    /// Answer every `sendMessage` and `editMessageText` to `chat_id` with `fault` (once
    /// the method's script is used up); `None` serves that chat normally again. One chat
    /// the API refuses or fails, while the others work.
    pub fn fail_chat(&self, chat_id: &str, fault: Option<Fault>) {
        self.shared.change(|state| match fault {
            Some(fault) => state.chat_faults.insert(chat_id.to_string(), fault),
            None => state.chat_faults.remove(chat_id),
        });
    }

    /// While `held`, every `sendMessage` is held unanswered (and counted as in flight);
    /// `false` answers them all.
    pub fn hold_sends(&self, held: bool) {
        self.shared.change(|state| state.sends_held = held);
    }

    /// `sendMessage` calls being served right now, and the most at once so far.
    pub fn sends_in_flight(&self) -> (usize, usize) {
        let state = self.shared.lock();
        (state.sends_in_flight, state.peak_sends_in_flight)
    }

    /// Wait until `n` `sendMessage` calls are in flight at once or `deadline` passes;
    /// returns how many are.
    pub fn wait_sends_in_flight(&self, n: usize, deadline: Instant) -> usize {
        self.shared.wait_until(deadline, |s| s.sends_in_flight >= n).sends_in_flight
    }

    /// Make every `getMe` fail with `status` (401: a revoked token).
    pub fn fail_getme_with(&self, status: u16) {
        let description = if status == 401 { "Unauthorized" } else { "Not Found" };
        self.fail_always("getMe", Some(Fault::Status(status, api_error(status, description))));
    }

    /// While `down`, every call (on new and kept-alive connections alike) gets a broken
    /// answer at once and is not recorded: the server looks unreachable until `false`.
    pub fn set_down(&self, down: bool) {
        self.shared.change(|state| state.down = down);
    }

    /// `(chat_id, text)` of every `sendMessage` served so far.
    pub fn sent(&self) -> Vec<(String, String)> {
        sent_pairs(&self.shared.lock())
    }

    /// The full parameters of every `sendMessage` served so far.
    pub fn sent_params(&self) -> Vec<Value> {
        self.shared.lock().sent.clone()
    }

    /// Every `editMessageText` so far: (chat id, message id, text).
    pub fn edits(&self) -> Vec<(String, String, String)> {
        edit_triples(&self.shared.lock())
    }

    /// Wait until at least `n` edits were made or `deadline` passes; returns them all.
    pub fn wait_edits(&self, n: usize, deadline: Instant) -> Vec<(String, String, String)> {
        edit_triples(&self.shared.wait_until(deadline, |s| s.edits.len() >= n))
    }

    /// Wait until at least `n` messages were sent or `deadline` passes; returns them all.
    pub fn wait_sent(&self, n: usize, deadline: Instant) -> Vec<(String, String)> {
        sent_pairs(&self.shared.wait_until(deadline, |s| s.sent.len() >= n))
    }

    /// How many calls of `method` arrived (faulted ones included).
    pub fn count(&self, method: &str) -> usize {
        count_calls(&self.shared.lock(), method)
    }

    /// Wait until at least `n` calls of `method` arrived or `deadline` passes; returns
    /// the count.
    pub fn wait_count(&self, method: &str, n: usize, deadline: Instant) -> usize {
        count_calls(&self.shared.wait_until(deadline, |s| count_calls(s, method) >= n), method)
    }

    /// When each call of `method` arrived, in order.
    pub fn call_times(&self, method: &str) -> Vec<Instant> {
        self.calls(method).iter().map(|c| c.at).collect()
    }

    /// Every call of `method`, in order.
    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.shared.lock().calls.iter().filter(|c| c.method == method).cloned().collect()
    }

    /// The `offset` of the latest `getUpdates` call (`None` before any, or without one).
    pub fn last_offset(&self) -> Option<i64> {
        self.shared.lock().last_offset
    }

    /// Wait until a `getUpdates` call carried an offset ≥ `offset` (so every update below
    /// it is confirmed) or `deadline` passes; returns the latest offset.
    pub fn wait_offset(&self, offset: i64, deadline: Instant) -> Option<i64> {
        self.shared.wait_until(deadline, |s| s.last_offset.is_some_and(|o| o >= offset)).last_offset
    }

    /// The highest update id `getUpdates` has returned so far.
    pub fn last_served(&self) -> Option<i64> {
        self.shared.lock().last_served
    }

    /// Wait until `getUpdates` has returned update `id` or `deadline` passes.
    pub fn wait_served(&self, id: i64, deadline: Instant) -> bool {
        self.shared
            .wait_until(deadline, |s| s.last_served.is_some_and(|x| x >= id))
            .last_served
            .is_some_and(|x| x >= id)
    }

    /// How many pushed updates are not yet confirmed.
    pub fn pending(&self) -> usize {
        self.shared.lock().queue.len()
    }

    fn next_message_id(&self) -> i64 {
        self.shared.change(|state| {
            state.next_message_id += 1;
            state.next_message_id
        })
    }
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        self.shared.change(|state| state.closing = true);
        drop(self.server.take());
    }
}

fn sent_pairs(state: &State) -> Vec<(String, String)> {
    state.sent.iter().map(|p| (id_string(&p["chat_id"]), p["text"].as_str().unwrap_or_default().to_string())).collect()
}

fn edit_triples(state: &State) -> Vec<(String, String, String)> {
    let text = |p: &Value| p["text"].as_str().unwrap_or_default().to_string();
    state.edits.iter().map(|p| (id_string(&p["chat_id"]), id_string(&p["message_id"]), text(p))).collect()
}

fn count_calls(state: &State, method: &str) -> usize {
    state.calls.iter().filter(|c| c.method == method).count()
}

/// A chat id as Telegram accepts it (a number or an `@name` string), as text.
fn id_string(v: &Value) -> String {
    v.as_str().map_or_else(|| v.to_string(), str::to_string)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------------------
// Serving one request

fn handle(shared: &Shared, request: Request) {
    let url = request.url().to_string();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let params = read_params(&request, query);
    let token = shared.lock().token.clone();
    let method = match route(path, &token) {
        Ok(method) => method,
        Err((status, description)) => return respond(request, status, &api_error(status, description).to_string()),
    };
    let fault = if shared.lock().down { Some(Fault::Garbage) } else { record_call(shared, &method, &params) };
    match fault {
        None | Some(Fault::Pass) => serve(shared, request, &method, &params),
        Some(Fault::Status(status, body)) => respond(request, status, &body.to_string()),
        Some(Fault::Raw(status, body)) => respond(request, status, &body),
        Some(Fault::WithHeaders(status, body, headers)) => respond_with(request, status, &body, &headers),
        Some(Fault::Garbage) => {
            let mut writer = request.into_writer();
            let _ = writer.write_all(b"this is not HTTP\r\n\r\n").and_then(|_| writer.flush());
        }
        Some(Fault::Hang(d)) => {
            drop(shared.wait_until(Instant::now() + d, |_| false));
            serve(shared, request, &method, &params);
        }
    }
}

/// The method named by `/bot<token>/<method>`, or the error Telegram gives.
fn route(path: &str, token: &str) -> Result<String, (u16, &'static str)> {
    let rest = path.strip_prefix("/bot").ok_or((404, "Not Found"))?;
    let (given, method) = rest.split_once('/').ok_or((404, "Not Found"))?;
    if given != token {
        return Err((401, "Unauthorized"));
    }
    Ok(method.to_string())
}

/// Log the call and take the fault it should get, if any.
fn record_call(shared: &Shared, method: &str, params: &Value) -> Option<Fault> {
    shared.change(|state| {
        state.calls.push(Call { method: method.to_string(), at: Instant::now(), params: params.clone() });
        let scripted = state.script.get_mut(method).and_then(VecDeque::pop_front);
        let to_chat = || match method {
            "sendMessage" | "editMessageText" => state.chat_faults.get(&id_string(&params["chat_id"])).cloned(),
            _ => None,
        };
        scripted.or_else(to_chat).or_else(|| state.always.get(method).cloned())
    })
}

fn serve(shared: &Shared, request: Request, method: &str, params: &Value) {
    let result = match method {
        "getMe" => Ok(json!({ "id": 1, "is_bot": true, "first_name": "Fake", "username": "fake_bot" })),
        "deleteWebhook" | "sendChatAction" => Ok(json!(true)),
        "getUpdates" => Ok(Value::Array(get_updates(shared, params))),
        "sendMessage" => held_send(shared, params),
        "editMessageText" => edit_message(shared, params),
        _ => Err((404, "Not Found")),
    };
    match result {
        Ok(result) => respond(request, 200, &json!({ "ok": true, "result": result }).to_string()),
        Err((status, description)) => respond(request, status, &api_error(status, description).to_string()),
    }
}

/// Confirm what lies below `offset`, then return what is ready, holding the call up to
/// `timeout` seconds while nothing is.
fn get_updates(shared: &Shared, params: &Value) -> Vec<Value> {
    let offset = number(&params["offset"]);
    let limit = number(&params["limit"]).unwrap_or(100).clamp(1, 100) as usize;
    let timeout = Duration::from_secs(number(&params["timeout"]).unwrap_or(0).max(0) as u64);
    let allowed: Vec<String> = match &params["allowed_updates"] {
        Value::Array(types) => types.iter().filter_map(|t| t.as_str().map(str::to_string)).collect(),
        Value::String(s) => serde_json::from_str(s).unwrap_or_default(),
        _ => Vec::new(),
    };
    // Telegram discards confirmed updates and never sends types that were not asked for.
    let wanted = |u: &Value| allowed.is_empty() || allowed.iter().any(|t| u.get(t).is_some());
    let confirmed = |u: &Value| offset.is_some_and(|o| number(&u["update_id"]).is_none_or(|id| id < o));
    shared.change(|state| {
        state.last_offset = offset;
        state.queue.retain(|u| !confirmed(u) && wanted(u));
    });
    let ready: Vec<Value> = {
        let state = shared.wait_until(Instant::now() + timeout, |s| s.queue.iter().any(wanted));
        state.queue.iter().filter(|u| wanted(u)).take(limit).cloned().collect()
    };
    let served = ready.iter().filter_map(|u| number(&u["update_id"])).max();
    shared.change(|state| state.last_served = state.last_served.max(served));
    ready
}

/// [`send_message`], counted in flight, and held while sends are held.
fn held_send(shared: &Shared, params: &Value) -> Result<Value, (u16, &'static str)> {
    shared.change(|state| {
        state.sends_in_flight += 1;
        state.peak_sends_in_flight = state.peak_sends_in_flight.max(state.sends_in_flight);
    });
    // A held send waits for release (or the fake closing); a minute is "forever" here.
    drop(shared.wait_until(Instant::now() + Duration::from_secs(60), |s| !s.sends_held));
    let result = send_message(shared, params);
    shared.change(|state| state.sends_in_flight -= 1);
    result
}

fn send_message(shared: &Shared, params: &Value) -> Result<Value, (u16, &'static str)> {
    let text = params["text"].as_str().unwrap_or_default();
    if text.trim().is_empty() {
        return Err((400, "Bad Request: message text is empty"));
    }
    if text.encode_utf16().count() > 4096 {
        return Err((400, "Bad Request: message is too long"));
    }
    let chat_id = &params["chat_id"];
    if chat_id.is_null() {
        return Err((400, "Bad Request: chat not found"));
    }
    let message_id = shared.change(|state| {
        state.next_message_id += 1;
        state.sent.push(params.clone());
        state.next_message_id
    });
    let chat_type = if number(chat_id).is_some_and(|id| id > 0) { "private" } else { "supergroup" };
    Ok(json!({
        "message_id": message_id,
        "date": unix_now(),
        "chat": { "id": chat_id, "type": chat_type },
        "from": { "id": 1, "is_bot": true, "first_name": "Fake", "username": "fake_bot" },
        "text": text,
    }))
}

fn edit_message(shared: &Shared, params: &Value) -> Result<Value, (u16, &'static str)> {
    let text = params["text"].as_str().unwrap_or_default();
    if text.trim().is_empty() {
        return Err((400, "Bad Request: message text is empty"));
    }
    let Some(message_id) = number(&params["message_id"]) else {
        return Err((400, "Bad Request: message to edit not found"));
    };
    shared.change(|state| state.edits.push(params.clone()));
    Ok(json!({
        "message_id": message_id,
        "date": unix_now(),
        "chat": { "id": params["chat_id"], "type": "private" },
        "text": text,
    }))
}

/// An integer parameter, sent as a JSON number or as text (form and query values).
fn number(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

fn respond(request: Request, status: u16, body: &str) {
    respond_with(request, status, body, &[]);
}

fn respond_with(request: Request, status: u16, body: &str, headers: &[(String, String)]) {
    let content_type = ("Content-Type".to_string(), "application/json".to_string());
    let headers: Vec<(String, String)> = std::iter::once(content_type).chain(headers.iter().cloned()).collect();
    request.respond(status, &headers, body.as_bytes());
}

// ---------------------------------------------------------------------------------------
// Parameters

/// The call's parameters: the query string, then the body (JSON, or form-encoded).
fn read_params(request: &Request, query: &str) -> Value {
    let mut params = form_params(query);
    let body = request.body_text();
    match serde_json::from_str::<Value>(&body) {
        Ok(Value::Object(fields)) => params.extend(fields),
        _ => params.extend(form_params(&body)),
    }
    Value::Object(params)
}

/// `a=1&b=x%20y` as string values.
fn form_params(text: &str) -> serde_json::Map<String, Value> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), Value::String(percent_decode(v)))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
