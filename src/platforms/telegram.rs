/*!
The Telegram Bot API platform: long polling with `getUpdates`, replies with `sendMessage`.

Connecting checks the token (`getMe`) and removes any webhook (`deleteWebhook`, keeping
pending updates), because Telegram refuses `getUpdates` while a webhook is set. Then
[`Platform::run`] long-polls. Telegram confirms ("acknowledges") every update below the
`offset` of the next `getUpdates` call and never sends it again, so the offset may only
move past an update once the update is safe: [`Context::deliver`] returned, which means
it is journaled in the gateway's inbox. The offset is written to
`<state_dir>/cursors/telegram-<instance>.offset` atomically once per batch, before the
next poll. A restart resumes at the stored offset; an update Telegram sends again
because a crash came between the journal and that write is recognised by the inbox
(by message id) and dropped: nothing is lost, nothing is handled twice.

Failures follow the Hermes gateway's Telegram handling, see
`reference/hermes-gateway.md` §2.9 and `reference/protocols.md` §4:

| what                              | in the adapter                        | then                                  |
|-----------------------------------|---------------------------------------|---------------------------------------|
| network, DNS, timeout, 5xx, junk  | `network_retries` quick retries       | retryable `telegram_network_error`    |
| 429                               | wait `parameters.retry_after` (≤ 1 h) | go on                                 |
| 409 (another poller)              | `conflict_retries`, waits n × `conflict_wait` | permanent `telegram_polling_conflict` |
| 401 / 404 (bad token)             | none                                  | permanent `telegram_unauthorized`     |
| any other 4xx                     | none                                  | retryable `telegram_api_error`        |

A success resets both counters. The bot token is part of every URL and so of ureq's
error texts: every text that leaves this module is scrubbed of it.

Sends (`sendMessage`, `editMessageText`, from the outbox) are classified for the outbox's
retry policy instead: a request that never left (DNS, refused, connect timeout) or that
Telegram answered 5xx is `Transient`; one that went out with no usable answer (a timeout
waiting for it, a connection broken after sending, an unreadable 200) is `Unknown`, since
`sendMessage` has no idempotency key and repeating it could post the message twice; 429
is `RetryAfter`; any other refusal is `Rejected`. Each phase of a send has its own
timeout so that a timeout says which side of that line it fell on.

The pure parts (settings, request bodies, reading Telegram's answer, the retry policy,
update parsing) sit apart from the I/O driver and are unit-tested without sockets.
*/

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::{Value, json};

use crate::adapter::{Context, Stopped};
use crate::config::{Secret, Section};
use crate::delivery::{Rate, SendLimits};
use crate::kit::{self, Cursor, Halt};
use crate::message::{ChatType, Inbound, Outbound, Source};
use crate::net;
use crate::net::api::{self, Api, ApiError, Method, Once};
use crate::net::retry::{Retries, RetryPolicy, Service};
use crate::platform::{Fatal, Outlet, Platform, PlatformSpec, SendError, TYPING_TIMEOUT};
use crate::text::{Limit, Unit};

/// Telegram's message text limit: 4096 characters "after entities parsing", which
/// Telegram counts in UTF-16 code units.
pub const MESSAGE_LIMIT: Limit = Limit { max: 4096, unit: Unit::Utf16 };

// ---------------------------------------------------------------------------------------
// Settings

/// The validated `[platforms.NAME]` settings of a Telegram instance (`kind = "telegram"`).
/// Every wait is a setting so tests can run the whole policy in milliseconds.
#[derive(Clone, Debug)]
pub struct TelegramSettings {
    /// `token`: the bot token from @BotFather. Required.
    pub token: Secret,
    /// `api_base`: where the Bot API lives; requests go to `{api_base}/bot{token}/{method}`.
    /// Default `https://api.telegram.org`; point it at a self-hosted Bot API server or a fake.
    pub api_base: String,
    /// `poll_timeout`: how long one `getUpdates` may wait for news. Whole seconds, ≥ 1 s.
    /// Default 50 s.
    pub poll_timeout: Duration,
    /// `allowed_updates`: the update types to receive. Default `["message"]`; add
    /// `"channel_post"` to answer in channels.
    pub allowed_updates: Vec<String>,
    /// `request_timeout`: the limit on every other request, and the margin a long poll
    /// gets on top of `poll_timeout`. Default 15 s.
    pub request_timeout: Duration,
    /// `network_retries`: quick retries of a network failure before the supervisor takes
    /// over. Default 3.
    pub network_retries: u32,
    /// `network_retry_wait`: the wait before the first quick retry, doubling after each.
    /// Default 1 s (so 1, 2, 4 s).
    pub network_retry_wait: Duration,
    /// `conflict_retries`: how often a 409 "terminated by other getUpdates request" is
    /// retried before giving up for good. Default 3.
    pub conflict_retries: u32,
    /// `conflict_wait`: the wait before conflict retry n is n × this. Default 10 s (so 10,
    /// 20, 30 s).
    pub conflict_wait: Duration,
}

impl TelegramSettings {
    /// The defaults, with `token`.
    pub fn new(token: Secret) -> TelegramSettings {
        TelegramSettings {
            token,
            api_base: "https://api.telegram.org".to_string(),
            poll_timeout: Duration::from_secs(50),
            allowed_updates: vec!["message".to_string()],
            request_timeout: Duration::from_secs(15),
            network_retries: 3,
            network_retry_wait: Duration::from_secs(1),
            conflict_retries: 3,
            conflict_wait: Duration::from_secs(10),
        }
    }
}

/// Read a `kind = "telegram"` table. Problems are recorded in `section`.
pub fn parse(section: &mut Section) -> Arc<dyn PlatformSpec> {
    let d = TelegramSettings::new(Secret::default());
    let settings = TelegramSettings {
        token: section.secret("token"),
        api_base: section.string_or("api_base", &d.api_base),
        poll_timeout: section.duration_or("poll_timeout", d.poll_timeout),
        allowed_updates: section.string_list("allowed_updates").unwrap_or(d.allowed_updates),
        request_timeout: section.duration_or("request_timeout", d.request_timeout),
        network_retries: section.u32_or("network_retries", d.network_retries),
        network_retry_wait: section.duration_or("network_retry_wait", d.network_retry_wait),
        conflict_retries: section.u32_or("conflict_retries", d.conflict_retries),
        conflict_wait: section.duration_or("conflict_wait", d.conflict_wait),
    };
    for (key, problem) in validate(&settings) {
        section.invalid(key, &problem);
    }
    Arc::new(TelegramSpec::new(settings))
}

/// What is wrong with `s`, per key.
fn validate(s: &TelegramSettings) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if !(s.api_base.starts_with("https://") || s.api_base.starts_with("http://")) {
        problems.push(("api_base", format!("`{}` is not an http:// or https:// URL", s.api_base)));
    }
    if s.poll_timeout < Duration::from_secs(1) {
        // Telegram takes whole seconds; 0 would turn long polling into a busy loop.
        problems.push(("poll_timeout", "must be at least 1s".to_string()));
    }
    if s.request_timeout.is_zero() {
        problems.push(("request_timeout", "must be more than 0s".to_string()));
    }
    problems
}

/// A validated Telegram instance; builds a fresh adapter (with a fresh HTTP agent) for
/// every generation.
pub struct TelegramSpec {
    settings: Arc<TelegramSettings>,
}

impl TelegramSpec {
    /// A spec from settings built by hand (tests, tools) or by [`parse`]. A trailing `/`
    /// on `api_base` is dropped.
    pub fn new(mut settings: TelegramSettings) -> TelegramSpec {
        let trimmed = settings.api_base.trim_end_matches('/').len();
        settings.api_base.truncate(trimmed);
        TelegramSpec { settings: Arc::new(settings) }
    }
}

impl PlatformSpec for TelegramSpec {
    fn build(&self) -> Box<dyn Platform> {
        Box::new(Telegram::new(self.settings.clone()))
    }

    fn lock_identity(&self) -> Option<&Secret> {
        Some(&self.settings.token)
    }

    fn lock_scope(&self) -> &str {
        &self.settings.api_base
    }

    fn message_limit(&self) -> Limit {
        MESSAGE_LIMIT
    }

    /// The Bot FAQ's limits: about 30 messages a second overall, one a second per chat,
    /// 20 a minute per group (groups and channels have negative ids). Edits count as
    /// messages to their chat; `sendChatAction` (typing) is not counted: the FAQ limits
    /// messages, and typing is bounded per chat by the gateway already. A 429 names no
    /// scope, so every one holds only its chat.
    fn send_limits(&self) -> SendLimits {
        let second = Duration::from_secs(1);
        SendLimits {
            total: Some(Rate::new(30, second)),
            chat: Some(Rate::new(1, second)),
            group: Some(Rate::new(20, 60 * second)),
            group_prefix: Some("-"),
        }
    }

    fn describe(&self) -> String {
        let s = &self.settings;
        format!("telegram via {} (long poll {}s)", s.api_base, s.poll_timeout.as_secs())
    }
}

// ---------------------------------------------------------------------------------------
// Talking to the Bot API

/// The Bot API's answer envelope: `{"ok":true,"result":…}` or
/// `{"ok":false,"error_code":…,"description":…,"parameters":{"retry_after":…}}`.
///
/// Read field by field from a JSON value rather than as one typed struct, so that a field
/// of an unexpected type (a negative or fractional `retry_after`, a `migrate_to_chat_id`
/// beyond `i64`) spoils only itself, not the description and the status beside it.
struct Envelope {
    ok: bool,
    result: Value,
    description: Option<String>,
    /// `parameters.retry_after`, already clamped to [`net::MAX_SERVER_WAIT`].
    retry_after: Option<Duration>,
    /// `parameters.migrate_to_chat_id`: the group became this supergroup.
    migrate_to: Option<i64>,
}

impl Envelope {
    fn read(body: &[u8]) -> Option<Envelope> {
        let mut value: Value = serde_json::from_slice(body).ok()?;
        let parameters = value.get("parameters").filter(|p| p.is_object());
        let retry_after = parameters.and_then(|p| seconds(p.get("retry_after")?));
        let migrate_to = parameters.and_then(|p| p.get("migrate_to_chat_id")?.as_i64());
        Some(Envelope {
            ok: value.get("ok")?.as_bool()?,
            result: value.get_mut("result").map(Value::take).unwrap_or(Value::Null),
            description: value.get("description").and_then(Value::as_str).map(str::to_string),
            retry_after: retry_after.map(|d| net::server_wait(d, "Telegram's retry_after")),
            migrate_to,
        })
    }
}

/// A count of seconds as Telegram sends it (an integer; a fraction is taken as it is).
/// Negative or not a number: none. Larger than a `Duration` holds: `Duration::MAX`, for
/// the caller to clamp.
fn seconds(value: &Value) -> Option<Duration> {
    if let Some(secs) = value.as_u64() {
        return Some(Duration::from_secs(secs));
    }
    let secs = value.as_f64().filter(|s| *s >= 0.0)?;
    Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// A successful Bot API answer, read straight into the type wanted: for `sendMessage`
/// this skips building the JSON tree of the whole sent `Message` (chat, sender, text)
/// for the one number the outlet keeps. Anything else is read as an [`Envelope`].
#[derive(Deserialize)]
struct Success<T> {
    ok: bool,
    result: T,
}

/// Read a Bot API answer: its `result` on success, else why not. `header_wait` is the
/// HTTP `Retry-After`, used only when the body names no `retry_after`.
fn interpret<T: DeserializeOwned>(status: u16, body: &[u8], header_wait: Option<Duration>) -> Result<T, ApiError> {
    if (200..300).contains(&status)
        && let Ok(Success { ok: true, result }) = serde_json::from_slice::<Success<T>>(body)
    {
        return Ok(result);
    }
    let envelope = Envelope::read(body);
    if (200..300).contains(&status) {
        // A 200 that is not the Bot API's JSON comes from a proxy or a truncated
        // transfer, never from Telegram itself: the request arrived, its outcome is unknown.
        let malformed = || ApiError::Unconfirmed(format!("malformed answer (HTTP {status})"));
        let result = envelope.filter(|e| e.ok).ok_or_else(malformed)?.result;
        return serde_json::from_value(result).map_err(|_| malformed());
    }
    let description = envelope.as_ref().and_then(|e| e.description.clone());
    let mut description = description.unwrap_or_else(|| format!("HTTP {status}"));
    if let Some(id) = envelope.as_ref().and_then(|e| e.migrate_to) {
        // A group upgraded to a supergroup has a new id; say it, so the dead letter does.
        description.push_str(&format!(" (the group is now chat {id})"));
    }
    Err(match status {
        // A wrong token is a 404 to the Bot API (no such bot), and 401 as usual.
        404 => ApiError::Unauthorized(description),
        s => api::status_error(s, description, envelope.and_then(|e| e.retry_after).or(header_wait)),
    })
}

/// The Bot API of one bot: the token is part of every URL (`{api_base}/bot{token}/…`), so
/// it is a secret of the client, scrubbed from every text. Cheap to clone.
#[derive(Clone)]
struct BotApi {
    api: Api,
}

impl BotApi {
    fn new(s: &TelegramSettings) -> BotApi {
        let base = format!("{}/bot{}", s.api_base, s.token.expose());
        BotApi { api: Api::new(&base, s.request_timeout).secret(s.token.clone()) }
    }

    /// Call `method` with a JSON `body`, waiting at most `timeout`. Blocks. With
    /// [`Once::Yes`] (`sendMessage`) a failure says whether the request may have arrived.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        body: &str,
        once: Once,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let answer = self.api.call(Method::Post, &format!("/{method}"), Some(body), once, Some(timeout))?;
        // Read only where it counts, so a server that sends a hostile one on every
        // answer does not fill the log with clamp warnings.
        let header_wait = (answer.status == 429).then(|| answer.retry_after()).flatten();
        interpret(answer.status, &answer.body, header_wait)
    }
}

/// The `getUpdates` parameters. `offset` is absent on a first start, which asks for
/// every update Telegram still holds.
fn get_updates_body(offset: Option<i64>, s: &TelegramSettings) -> Value {
    let mut body = json!({ "timeout": s.poll_timeout.as_secs(), "allowed_updates": s.allowed_updates });
    if let Some(offset) = offset {
        body["offset"] = json!(offset);
    }
    body
}

/// The `sendMessage` parameters for `msg`. Telegram ids are integers; a chat id that is
/// not (`@channelname`) is passed as the string Telegram also accepts.
fn send_message_body(msg: &Outbound) -> Value {
    let chat_id = msg.chat_id.parse::<i64>().map_or_else(|_| json!(msg.chat_id), |id| json!(id));
    let mut body = json!({ "chat_id": chat_id, "text": msg.text });
    if let Some(thread) = msg.thread_id.as_deref().and_then(|t| t.parse::<i64>().ok()) {
        body["message_thread_id"] = json!(thread);
    }
    if let Some(reply_to) = msg.reply_to.as_deref().and_then(|m| m.parse::<i64>().ok()) {
        // The reply still goes out if the message it answers was deleted meanwhile.
        body["reply_parameters"] = json!({ "message_id": reply_to, "allow_sending_without_reply": true });
    }
    body
}

// ---------------------------------------------------------------------------------------
// Updates → Inbound

#[derive(Deserialize)]
struct Update {
    message: Option<Message>,
    channel_post: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    message_id: i64,
    message_thread_id: Option<i64>,
    #[serde(default)]
    is_topic_message: bool,
    from: Option<User>,
    chat: Chat,
    text: Option<String>,
}

#[derive(Deserialize)]
struct Chat {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
    title: Option<String>,
    first_name: Option<String>,
}

#[derive(Deserialize)]
struct User {
    id: i64,
    username: Option<String>,
    first_name: String,
}

/// The bits of `getMe` worth a log line.
#[derive(Deserialize)]
struct Me {
    username: Option<String>,
}

/// Why an update produced no [`Inbound`]. It is acknowledged all the same.
#[derive(Debug, PartialEq, Eq)]
enum Skip {
    /// Not a message (an edit, a callback, a member change …).
    NotMessage,
    /// A message without text (a photo, a sticker, a service message).
    NoText,
    /// Not the shape the Bot API documents.
    Malformed(String),
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NotMessage => f.write_str("not a message"),
            Skip::NoText => f.write_str("no text"),
            Skip::Malformed(why) => write!(f, "malformed: {why}"),
        }
    }
}

/// The `update_id` of a raw update, read apart from the rest so that an update that does
/// not parse can still be acknowledged.
fn update_id(raw: &Value) -> Option<i64> {
    raw.get("update_id")?.as_i64()
}

/// Turn one update into an [`Inbound`] for instance `platform`.
fn parse_update(platform: &str, raw: Value) -> Result<Inbound, Skip> {
    let update: Update = serde_json::from_value(raw).map_err(|e| Skip::Malformed(e.to_string()))?;
    let msg = update.message.or(update.channel_post).ok_or(Skip::NotMessage)?;
    let chat_type = match msg.chat.kind.as_str() {
        "private" => ChatType::Dm,
        "group" | "supergroup" => ChatType::Group,
        "channel" => ChatType::Channel,
        other => return Err(Skip::Malformed(format!("unknown chat type `{other}`"))),
    };
    let text = msg.text.ok_or(Skip::NoText)?;
    // In a plain supergroup `message_thread_id` names a reply chain, and sending to it
    // fails ("message thread not found"); only forum topics are threads to answer in.
    let thread_id = msg.message_thread_id.filter(|_| msg.is_topic_message).map(|t| t.to_string());
    let source = Source {
        platform: platform.to_string(),
        chat_id: msg.chat.id.to_string(),
        chat_type,
        chat_name: msg.chat.title.or(msg.chat.first_name),
        user_id: msg.from.as_ref().map(|u| u.id.to_string()),
        user_name: msg.from.map(|u| u.username.unwrap_or(u.first_name)),
        thread_id,
    };
    Ok(Inbound { source, message_id: Some(msg.message_id.to_string()), text })
}

/// `/cmd@our_bot …` becomes `/cmd …`, so that a name left on a command means another
/// bot's (see `commands`). Telegram usernames are case-insensitive.
fn strip_own_mention(text: String, bot: Option<&str>) -> String {
    let Some(bot) = bot else { return text };
    let start = text.len() - text.trim_start().len();
    let rest = &text[start..];
    let word = &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())];
    match word.split_once('@') {
        Some((command, name)) if command.starts_with('/') && name.eq_ignore_ascii_case(bot) => {
            format!("{}{command}{}", &text[..start], &rest[word.len()..])
        }
        _ => text,
    }
}

// ---------------------------------------------------------------------------------------
// The offset file

fn parse_offset(text: &str) -> Option<i64> {
    text.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------
// The adapter

/// One generation of a Telegram instance.
struct Telegram {
    settings: Arc<TelegramSettings>,
    /// For the adapter's own calls (`getMe`, `deleteWebhook`, `getUpdates`): its agent
    /// is shut down on a stop, which cuts a long poll short.
    api: BotApi,
    /// For the outlet's sends, on an agent of their own: they go on after a clean stop
    /// (replies to what was received), so the stop must not close their connections.
    send_api: BotApi,
    /// The next `getUpdates` offset: one past the last update handled.
    offset: Option<i64>,
    /// Where the offset is kept; opened by `connect`, which knows the instance name.
    cursor: Option<Cursor>,
    /// The bot's username from `getMe`, to tell `/cmd@us` from `/cmd@another_bot`.
    username: Option<String>,
}

/// Who the adapter's failures are about.
const SERVICE: Service = Service {
    prefix: "telegram",
    name: "Telegram",
    credential_key: "token",
    address_key: "api_base",
    conflict: "polling_conflict",
};

impl Telegram {
    fn new(settings: Arc<TelegramSettings>) -> Telegram {
        let (api, send_api) = (BotApi::new(&settings), BotApi::new(&settings));
        Telegram { settings, api, send_api, offset: None, cursor: None, username: None }
    }

    fn retries(&self) -> Retries {
        let s = &self.settings;
        let policy = RetryPolicy {
            network_retries: s.network_retries,
            network_retry_wait: s.network_retry_wait,
            conflict_retries: s.conflict_retries,
            conflict_wait: s.conflict_wait,
        };
        Retries::new(policy, SERVICE)
    }

    /// Call `method` until it succeeds, the retry policy gives up, or a stop is requested.
    /// A stop shuts down the agent (see `connect`), so it never waits for the network.
    fn request<T>(&self, ctx: &Context, retries: &mut Retries, method: &'static str, body: &Value) -> Result<T, Halt>
    where
        T: DeserializeOwned,
    {
        // A long poll may rightly take `poll_timeout` before it answers; the margin
        // covers connecting and the transfer.
        let timeout = match method {
            "getUpdates" => self.settings.poll_timeout.saturating_add(self.settings.request_timeout),
            _ => self.settings.request_timeout,
        };
        let body = body.to_string();
        kit::call(ctx, retries, method, || self.api.call::<T>(method, &body, Once::No, timeout))
    }

    /// Check the token, make room for polling, load the offset.
    fn prepare(&mut self, ctx: &Context) -> Result<(), Halt> {
        let mut retries = self.retries();
        let me: Me = self.request(ctx, &mut retries, "getMe", &json!({}))?;
        let _: IgnoredAny =
            self.request(ctx, &mut retries, "deleteWebhook", &json!({ "drop_pending_updates": false }))?;
        let cursor = Cursor::open(ctx, "telegram", "offset")?;
        self.offset = cursor.get().and_then(parse_offset);
        if cursor.get().is_some() && self.offset.is_none() {
            log::warn!("{}: ignoring the stored offset: it is not a number", ctx.name);
        }
        self.cursor = Some(cursor);
        let bot = me.username.as_deref().unwrap_or("?");
        log::info!("{}: connected as @{bot}, resuming at offset {:?}", ctx.name, self.offset);
        self.username = me.username;
        Ok(())
    }

    /// Long-poll until stopped or broken. Never returns `Ok`.
    fn poll(&mut self, ctx: &Context) -> Result<Infallible, Halt> {
        let mut retries = self.retries();
        loop {
            let body = get_updates_body(self.offset, &self.settings);
            // Each update stays raw until handled, so one bad update cannot spoil the batch.
            let updates: Vec<Value> = self.request(ctx, &mut retries, "getUpdates", &body)?;
            self.handle(ctx, updates)?;
        }
    }

    /// Hand a batch of updates to the gateway (one inbox sync for all), then move the
    /// offset past them and store it. On a stop the offset stays put, so the updates
    /// come again after a restart, and the inbox recognises the ones it already has.
    fn handle(&mut self, ctx: &Context, updates: Vec<Value>) -> Result<(), Stopped> {
        let mut last = None;
        let mut batch = Vec::with_capacity(updates.len());
        for raw in updates {
            let Some(id) = update_id(&raw) else {
                // Without an id it cannot be acknowledged alone; the next update's offset will.
                log::warn!("{}: skipping an update without update_id", ctx.name);
                continue;
            };
            if self.offset.is_some_and(|next| id < next) {
                continue; // Already handled: a server that resends what it was told to drop.
            }
            last = last.max(Some(id));
            match parse_update(&ctx.name, raw) {
                Ok(mut inbound) => {
                    inbound.text = strip_own_mention(inbound.text, self.username.as_deref());
                    batch.push(inbound);
                }
                Err(skip @ Skip::Malformed(_)) => log::warn!("{}: skipping update {id}: {skip}", ctx.name),
                Err(skip) => log::debug!("{}: skipping update {id}: {skip}", ctx.name),
            }
        }
        kit::deliver_then(ctx, batch, || {
            // A server sending i64::MAX must not overflow us; it simply has no successor.
            let Some(next) = last.map(|last: i64| last.saturating_add(1)) else { return };
            self.offset = Some(next);
            if let Some(cursor) = &mut self.cursor {
                cursor.set(&next.to_string());
            }
        })
    }
}

impl Platform for Telegram {
    fn connect(&mut self, ctx: &Context) -> Result<Arc<dyn Outlet>, Fatal> {
        let agent = self.api.api.agent().clone();
        ctx.on_stop(move || agent.shutdown());
        let outlet = Arc::new(TelegramOutlet { api: self.send_api.clone(), timeout: self.settings.request_timeout });
        match self.prepare(ctx) {
            // On a stop the harness sees `stop_requested` and ends the generation cleanly.
            Ok(()) | Err(Halt::Stopped) => Ok(outlet),
            Err(Halt::Fatal(fatal)) => Err(fatal),
        }
    }

    fn run(&mut self, ctx: &Context) -> Result<(), Fatal> {
        self.poll(ctx).map(|never| match never {}).or_else(Halt::into_run_result)
    }
}

/// Sends to Telegram from the delivery workers, over an agent of its own. Telegram has
/// no idempotency key for `sendMessage`, so the outlet is not idempotent: a send whose
/// outcome is unknown is set aside by the outbox, never repeated.
struct TelegramOutlet {
    api: BotApi,
    timeout: Duration,
}

/// The part of a sent `Message` the outlet needs.
#[derive(Deserialize)]
struct SentMessage {
    message_id: i64,
}

impl Outlet for TelegramOutlet {
    fn send(&self, msg: &Outbound) -> Result<Option<String>, SendError> {
        let body = send_message_body(msg).to_string();
        let sent: SentMessage =
            self.api.call("sendMessage", &body, Once::Yes, self.timeout).map_err(ApiError::send_error)?;
        Ok(Some(sent.message_id.to_string()))
    }

    fn can_edit(&self) -> bool {
        true
    }

    fn edit(&self, chat_id: &str, message_id: &str, text: &str) -> Result<(), SendError> {
        let body = json!({"chat_id": chat_id, "message_id": message_id, "text": text}).to_string();
        match self.api.call::<IgnoredAny>("editMessageText", &body, Once::Yes, self.timeout) {
            // The message already reads so: an edit repeated after an unknown outcome.
            Err(ApiError::Rejected(400, why)) if why.contains("message is not modified") => Ok(()),
            other => other.map(drop).map_err(ApiError::send_error),
        }
    }

    fn typing(&self, chat_id: &str, thread_id: Option<&str>) {
        let mut body = json!({"chat_id": chat_id, "action": "typing"});
        if let Some(thread) = thread_id {
            body["message_thread_id"] = json!(thread);
        }
        let timeout = self.timeout.min(TYPING_TIMEOUT);
        if let Err(e) = self.api.call::<IgnoredAny>("sendChatAction", &body.to_string(), Once::No, timeout) {
            log::debug!("sendChatAction failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456:ABC-secret";

    fn settings() -> TelegramSettings {
        TelegramSettings { network_retry_wait: Duration::from_millis(100), ..TelegramSettings::new(Secret::new(TOKEN)) }
    }

    #[test]
    fn only_our_own_name_is_stripped_from_a_command() {
        let strip = |t: &str| strip_own_mention(t.to_string(), Some("fake_bot"));
        assert_eq!(strip("/new@fake_bot"), "/new");
        assert_eq!(strip(" /queue@Fake_Bot then this"), " /queue then this");
        assert_eq!(strip("/new@otherbot"), "/new@otherbot");
        assert_eq!(strip("mail me@fake_bot"), "mail me@fake_bot");
        assert_eq!(strip("/new@fake_bot2"), "/new@fake_bot2");
        assert_eq!(strip_own_mention("/new@fake_bot".into(), None), "/new@fake_bot");
    }

    fn update(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn private_text_message() {
        let raw = update(
            r#"{"update_id": 10, "message": {"message_id": 7, "date": 1,
                "from": {"id": 42, "is_bot": false, "first_name": "Ada", "username": "ada"},
                "chat": {"id": 42, "type": "private", "first_name": "Ada"}, "text": "hi"}}"#,
        );
        assert_eq!(update_id(&raw), Some(10));
        let inbound = parse_update("tg", raw).unwrap();
        let want = Source {
            platform: "tg".into(),
            chat_id: "42".into(),
            chat_type: ChatType::Dm,
            chat_name: Some("Ada".into()),
            user_id: Some("42".into()),
            user_name: Some("ada".into()),
            thread_id: None,
        };
        assert_eq!(inbound, Inbound { source: want, message_id: Some("7".into()), text: "hi".into() });
    }

    #[test]
    fn group_and_forum_topic() {
        let raw = update(
            r#"{"update_id": 11, "message": {"message_id": 8, "message_thread_id": 3, "is_topic_message": true,
                "from": {"id": 5, "first_name": "Bob"},
                "chat": {"id": -100123, "type": "supergroup", "title": "Ops"}, "text": "deploy?"}}"#,
        );
        let inbound = parse_update("tg", raw).unwrap();
        assert_eq!(inbound.source.chat_type, ChatType::Group);
        assert_eq!(inbound.source.chat_id, "-100123");
        assert_eq!(inbound.source.chat_name.as_deref(), Some("Ops"));
        assert_eq!(inbound.source.user_name.as_deref(), Some("Bob"), "first name when there is no username");
        assert_eq!(inbound.source.thread_id.as_deref(), Some("3"));

        // A reply in a plain group carries a thread id that is not a topic.
        let raw = update(
            r#"{"update_id": 12, "message": {"message_id": 9, "message_thread_id": 4,
                "from": {"id": 5, "first_name": "Bob"}, "chat": {"id": -5, "type": "group", "title": "G"}, "text": "x"}}"#,
        );
        assert_eq!(parse_update("tg", raw).unwrap().source.thread_id, None);
    }

    #[test]
    fn channel_post() {
        let raw = update(
            r#"{"update_id": 13, "channel_post": {"message_id": 1, "chat": {"id": -1001, "type": "channel", "title": "News"}, "text": "t"}}"#,
        );
        let inbound = parse_update("tg", raw).unwrap();
        assert_eq!(inbound.source.chat_type, ChatType::Channel);
        assert_eq!(inbound.source.user_id, None);
    }

    #[test]
    fn updates_that_yield_nothing() {
        let no_text = update(
            r#"{"update_id": 1, "message": {"message_id": 1, "chat": {"id": 1, "type": "private"}, "photo": []}}"#,
        );
        assert_eq!(parse_update("tg", no_text), Err(Skip::NoText));
        let edit = update(
            r#"{"update_id": 2, "edited_message": {"message_id": 1, "chat": {"id": 1, "type": "private"}, "text": "x"}}"#,
        );
        assert_eq!(parse_update("tg", edit), Err(Skip::NotMessage));
        let bad_chat = update(r#"{"update_id": 3, "message": {"message_id": 1, "chat": "oops", "text": "x"}}"#);
        assert!(matches!(parse_update("tg", bad_chat), Err(Skip::Malformed(_))));
        let odd_type =
            update(r#"{"update_id": 4, "message": {"message_id": 1, "chat": {"id": 1, "type": "x"}, "text": "x"}}"#);
        assert!(matches!(parse_update("tg", odd_type), Err(Skip::Malformed(_))));
        assert_eq!(update_id(&update(r#"{"message": {}}"#)), None);
    }

    #[test]
    fn interpreting_answers() {
        let ok: Result<Vec<Value>, _> = interpret(200, br#"{"ok":true,"result":[{"update_id":1}]}"#, None);
        assert_eq!(ok.unwrap().len(), 1);
        let junk = [&b"<html>bad gateway</html>"[..], b"", br#"{"ok":false}"#, br#"{"ok":true,"result":5}"#];
        for body in junk {
            let got: Result<Vec<Value>, _> = interpret(200, body, None);
            assert!(matches!(got, Err(ApiError::Unconfirmed(_))), "{body:?}");
        }
        let error = |code: u16, body: &str| interpret::<IgnoredAny>(code, body.as_bytes(), None).unwrap_err();
        let rate = r#"{"ok":false,"error_code":429,"description":"Too Many Requests","parameters":{"retry_after":7}}"#;
        assert_eq!(error(429, rate), ApiError::rate_limited(Duration::from_secs(7)));
        assert_eq!(
            interpret::<IgnoredAny>(429, b"", Some(Duration::from_secs(3))).unwrap_err(),
            ApiError::rate_limited(Duration::from_secs(3))
        );
        assert_eq!(error(429, ""), ApiError::rate_limited(api::FALLBACK_RETRY_AFTER));
        let unauthorized = r#"{"ok":false,"error_code":401,"description":"Unauthorized"}"#;
        assert_eq!(error(401, unauthorized), ApiError::Unauthorized("Unauthorized".into()));
        assert!(matches!(error(404, "Not Found"), ApiError::Unauthorized(_)));
        let conflict =
            r#"{"ok":false,"error_code":409,"description":"Conflict: terminated by other getUpdates request"}"#;
        assert!(matches!(error(409, conflict), ApiError::Conflict(d) if d.contains("terminated")));
        assert_eq!(error(502, "<html>"), ApiError::Network("HTTP 502: HTTP 502".into()));
        let blocked = r#"{"ok":false,"error_code":403,"description":"Forbidden: bot was blocked by the user"}"#;
        assert!(matches!(error(403, blocked), ApiError::Rejected(403, _)));
    }

    /// Issue 7 §1: a 429 with `retry_after` 2^64 − 1 panicked the outbox worker. Every
    /// wait Telegram asks for is at most `net::MAX_SERVER_WAIT`; a `retry_after` of the
    /// wrong type is no `retry_after`, and spoils nothing else.
    #[test]
    fn r_hostile_retry_after_is_clamped() {
        let max = ApiError::rate_limited(net::MAX_SERVER_WAIT);
        let limited = |retry_after: Value, header: Option<Duration>| {
            let body = json!({"ok": false, "error_code": 429, "description": "Too Many Requests",
                              "parameters": {"retry_after": retry_after}});
            interpret::<IgnoredAny>(429, body.to_string().as_bytes(), header).unwrap_err()
        };
        assert_eq!(limited(json!(u64::MAX), None), max);
        assert_eq!(limited(json!(3601), None), max);
        assert_eq!(limited(json!(1e300), None), max);
        assert_eq!(limited(json!(3600), None), ApiError::rate_limited(Duration::from_secs(3600)));
        assert_eq!(limited(json!(2.5), None), ApiError::rate_limited(Duration::from_millis(2500)));
        let header = Some(Duration::from_secs(3));
        for odd in [json!(-1), json!(i64::MIN), json!("7"), json!(null), json!([1])] {
            assert_eq!(limited(odd.clone(), header), ApiError::rate_limited(Duration::from_secs(3)), "{odd}");
        }
        assert_eq!(limited(json!(-1), None), ApiError::rate_limited(api::FALLBACK_RETRY_AFTER));
    }

    #[test]
    fn a_migrated_group_names_its_new_id() {
        let body = json!({"ok": false, "error_code": 400,
                          "description": "Bad Request: group chat was upgraded to a supergroup chat",
                          "parameters": {"migrate_to_chat_id": -1001234567890i64}});
        let err = interpret::<IgnoredAny>(400, body.to_string().as_bytes(), None).unwrap_err();
        assert!(matches!(&err, ApiError::Rejected(400, m) if m.contains("now chat -1001234567890")), "{err:?}");
        // One that fits no chat id is left out; the rest of the answer still counts.
        let body = json!({"ok": false, "description": "Bad Request: upgraded",
                          "parameters": {"migrate_to_chat_id": u64::MAX, "retry_after": "x"}});
        let err = interpret::<IgnoredAny>(400, body.to_string().as_bytes(), None).unwrap_err();
        assert_eq!(err, ApiError::Rejected(400, "Bad Request: upgraded".into()));
    }

    #[test]
    fn transport_errors_never_show_the_token() {
        let url = format!("https://api.telegram.org/bot{TOKEN}/getUpdates");
        let api = BotApi::new(&settings()).api;
        let transport_error = |e: &ureq::Error, _| api.transport_error(e);
        let bad_uri = transport_error(&ureq::Error::BadUri(url.clone()), TOKEN);
        assert!(matches!(&bad_uri, ApiError::Config(m) if !m.contains(TOKEN) && m.contains("bot***")), "{bad_uri:?}");
        let proxy = transport_error(&ureq::Error::ConnectProxyFailed(url), TOKEN);
        assert!(matches!(&proxy, ApiError::Network(m) if !m.contains(TOKEN)), "{proxy:?}");
        let lost = transport_error(&ureq::Error::Timeout(ureq::Timeout::RecvResponse), TOKEN);
        assert!(matches!(lost, ApiError::Unconfirmed(_)), "{lost:?}");
        let fatal = Telegram::new(Arc::new(settings())).retries().after(bad_uri).unwrap_err();
        assert_eq!((fatal.code.as_str(), fatal.retryable), ("telegram_bad_config", false));
        assert!(!fatal.to_string().contains(TOKEN));
    }

    #[test]
    fn a_send_that_never_left_is_transient() {
        // Nothing listens on a port that was just free: refused before anything was sent.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let api_base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let timeout = Duration::from_secs(2);
        let api = BotApi::new(&TelegramSettings { api_base, ..settings() });
        let outlet = TelegramOutlet { api, timeout };
        let msg = Outbound { chat_id: "1".into(), thread_id: None, reply_to: None, edit_of: None, text: "hi".into() };
        let got = outlet.send(&msg);
        assert!(matches!(&got, Err(SendError::Transient(m)) if !m.contains(TOKEN)), "{got:?}");
        assert!(matches!(outlet.edit("1", "2", "x"), Err(SendError::Transient(_))));
    }

    #[test]
    fn request_bodies() {
        let s = TelegramSettings { poll_timeout: Duration::from_secs(30), ..settings() };
        assert_eq!(get_updates_body(None, &s), json!({"timeout": 30, "allowed_updates": ["message"]}));
        assert_eq!(get_updates_body(Some(8), &s)["offset"], json!(8));

        let plain =
            Outbound { chat_id: "42".into(), thread_id: None, reply_to: None, edit_of: None, text: "hi".into() };
        assert_eq!(send_message_body(&plain), json!({"chat_id": 42, "text": "hi"}));
        let threaded = Outbound {
            chat_id: "-100".into(),
            thread_id: Some("3".into()),
            reply_to: Some("7".into()),
            edit_of: None,
            text: "x".into(),
        };
        assert_eq!(
            send_message_body(&threaded),
            json!({"chat_id": -100, "text": "x", "message_thread_id": 3,
                   "reply_parameters": {"message_id": 7, "allow_sending_without_reply": true}})
        );
        let named = Outbound { chat_id: "@news".into(), ..plain };
        assert_eq!(send_message_body(&named)["chat_id"], json!("@news"));
    }

    #[test]
    fn settings_checks_and_description() {
        assert!(validate(&settings()).is_empty());
        let bad = TelegramSettings { api_base: "api.telegram.org".into(), poll_timeout: Duration::ZERO, ..settings() };
        let keys: Vec<_> = validate(&bad).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["api_base", "poll_timeout"]);
        let spec = TelegramSpec::new(TelegramSettings { api_base: "http://127.0.0.1:8081/".into(), ..settings() });
        assert_eq!(spec.describe(), "telegram via http://127.0.0.1:8081 (long poll 50s)");
        assert!(!spec.describe().contains(TOKEN));
        assert_eq!(spec.lock_identity().map(Secret::expose), Some(TOKEN));
    }

    #[test]
    fn reads_its_config_table() {
        let toml = "token = \"${TG_TOKEN}\"\npoll_timeout = \"30s\"\nconflict_wait = \"1s\"\nallowed_updates = [\"message\", \"channel_post\"]\n";
        let mut section = Section::new_for_test(toml, &[("TG_TOKEN", TOKEN)]);
        let spec = parse(&mut section);
        assert!(section.finish().is_empty());
        assert_eq!(spec.describe(), "telegram via https://api.telegram.org (long poll 30s)");
        assert_eq!(spec.lock_identity().map(Secret::expose), Some(TOKEN));

        let toml = "token = \"t\"\napi_base = \"api.telegram.org\"\npoll_timeout = \"500ms\"\n";
        let mut section = Section::new_for_test(toml, &[]);
        parse(&mut section);
        let keys: Vec<_> = section.finish().into_iter().filter_map(|e| e.key).collect();
        assert_eq!(keys, ["platforms.test.api_base", "platforms.test.poll_timeout"]);
    }
}
