/*!
Discord (`kind = "discord"`): the Gateway v10 over [`crate::net::ws`] to receive, REST v10
over ureq to send.

The receive side is one thread holding one WebSocket. Discord's Gateway speaks in
*opcodes*: Hello names the heartbeat interval, we Identify (or Resume a session we had),
READY names the session, its resume URL and our own user id, and dispatches
(`MESSAGE_CREATE`) carry a sequence number. Heartbeats go out between frames as
[`WsConn::recv`]'s deadline ticks; a beat not acknowledged by the next one means a
*zombie* connection (TCP alive, Discord gone), which is closed with a non-1000 code (so
the session survives) and resumed.

What is kept across restarts is the resume state (session id, sequence, resume URL), in
a cursor file written only after the messages up to that sequence are journaled
(`ctx.deliver_batch` returned): a restart resumes, Discord replays what came after, and
the inbox drops any message id it already has. So nothing is answered twice and nothing
is lost between a crash and the resume.

Close codes are the Gateway's way to say what is wrong: 4004 (token), 4010–4014 (shard,
version, intents) cannot heal by retrying and end the adapter for good with a message
that says what to fix; every other close is resumed, or re-identified when the session
is gone. A connection that acknowledges heartbeats but delivers no event for
`event_silence` in a bot that had traffic ("connected but deaf") is dropped and
re-identified.

The pure parts (settings, payload parsing, close codes, message filtering, rate-limit
headers) are apart from the I/O and tested on bytes.
*/

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::adapter::{Context, Stopped};
use crate::config::{Secret, Section};
use crate::delivery::{Rate, SendLimits};
use crate::fsutil;
use crate::message::{ChatType, Inbound, Outbound, Source};
use crate::net::api::{self, ApiError};
use crate::net::ws::{self, Frame, WsConn, WsErrorKind, WsOptions};
use crate::net::{self, http};
use crate::platform::{Fatal, Outlet, Platform, PlatformSpec, SendError, TYPING_TIMEOUT};
use crate::text::{Limit, Unit};

/// Discord's limit on a message's `content`: 2000 characters.
pub const MESSAGE_LIMIT: Limit = Limit { max: 2000, unit: Unit::Chars };

/// `GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT`.
pub const DEFAULT_INTENTS: u64 = GUILD_MESSAGES | DIRECT_MESSAGES | MESSAGE_CONTENT;
const GUILD_MESSAGES: u64 = 1 << 9;
const DIRECT_MESSAGES: u64 = 1 << 12;
const MESSAGE_CONTENT: u64 = 1 << 15;
/// Every intent bit Discord defines today (0..=25); a higher bit is a typo.
const ALL_INTENTS: u64 = (1 << 26) - 1;

/// A 429 without a usable `retry_after`.
const FALLBACK_RETRY_AFTER: Duration = Duration::from_secs(5);
/// The longest wait for Hello after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);
/// An interval outside this is not Discord's (it sends 41.25 s).
const MIN_HEARTBEAT: Duration = Duration::from_secs(1);
const MAX_HEARTBEAT: Duration = Duration::from_secs(300);
/// The longest wait for a session start (`session_start_limit.reset_after`).
const MAX_START_WAIT: Duration = Duration::from_secs(24 * 3600);

const UNAUTHORIZED: &str = "discord_unauthorized";
const NETWORK_ERROR: &str = "discord_network_error";
const API_ERROR: &str = "discord_api_error";
const BAD_CONFIG: &str = "discord_bad_config";

// ---------------------------------------------------------------------------------------
// Settings

/// Which messages of other bots are answered (`allow_bots`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowBots {
    /// None (the default: two bots answering each other never stop).
    None,
    /// Only those that mention this bot.
    Mentions,
    /// All.
    All,
}

/// The validated `[platforms.NAME]` settings of a Discord instance (`kind = "discord"`).
#[derive(Clone, Debug)]
pub struct DiscordSettings {
    /// `token`: the bot token from the developer portal (Bot → Reset Token). Required.
    pub token: Secret,
    /// `api_base`: the REST API. Default `https://discord.com/api/v10`; the Gateway URL
    /// comes from its `GET /gateway/bot`.
    pub api_base: String,
    /// `intents`: the Gateway intents bit set. Default guild messages, direct messages and
    /// message content (37376); the last must also be enabled in the developer portal.
    pub intents: u64,
    /// `require_mention`: in guild channels, answer only messages that mention the bot.
    /// Default true. Direct messages are always answered.
    pub require_mention: bool,
    /// `free_response_channels`: channel ids where every message is answered.
    pub free_response_channels: Vec<String>,
    /// `allow_bots`: `none` (default), `mentions` or `all`.
    pub allow_bots: AllowBots,
    /// `request_timeout`: the limit on every REST request. Default 15 s.
    pub request_timeout: Duration,
    /// `event_silence`: a connection that had traffic and then delivers no event for this
    /// long is re-identified. Default 30 min.
    pub event_silence: Duration,
    /// `network_retries`: quick retries of a failed connection before the supervisor
    /// takes over. Default 3.
    pub network_retries: u32,
    /// `network_retry_wait`: the wait before the first quick retry, doubling. Default 1 s.
    pub network_retry_wait: Duration,
}

impl DiscordSettings {
    /// The defaults, with `token`.
    pub fn new(token: Secret) -> DiscordSettings {
        DiscordSettings {
            token,
            api_base: "https://discord.com/api/v10".to_string(),
            intents: DEFAULT_INTENTS,
            require_mention: true,
            free_response_channels: Vec::new(),
            allow_bots: AllowBots::None,
            request_timeout: Duration::from_secs(15),
            event_silence: Duration::from_secs(30 * 60),
            network_retries: 3,
            network_retry_wait: Duration::from_secs(1),
        }
    }
}

/// Read a `kind = "discord"` table. Problems are recorded in `section`.
pub fn parse(section: &mut Section) -> Arc<dyn PlatformSpec> {
    let d = DiscordSettings::new(Secret::default());
    let bots = [("none", AllowBots::None), ("mentions", AllowBots::Mentions), ("all", AllowBots::All)];
    let settings = DiscordSettings {
        token: section.secret("token"),
        api_base: section.string_or("api_base", &d.api_base),
        intents: section.u64_or("intents", d.intents),
        require_mention: section.bool_or("require_mention", d.require_mention),
        free_response_channels: section.string_list("free_response_channels").unwrap_or_default(),
        allow_bots: section.choice("allow_bots", &bots, d.allow_bots),
        request_timeout: section.duration_or("request_timeout", d.request_timeout),
        event_silence: section.duration_or("event_silence", d.event_silence),
        network_retries: section.u32_or("network_retries", d.network_retries),
        network_retry_wait: section.duration_or("network_retry_wait", d.network_retry_wait),
    };
    for (key, problem) in validate(&settings) {
        section.invalid(key, &problem);
    }
    Arc::new(DiscordSpec::new(settings))
}

/// What is wrong with `s`, per key.
fn validate(s: &DiscordSettings) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    if !(s.api_base.starts_with("https://") || s.api_base.starts_with("http://")) {
        problems.push(("api_base", format!("`{}` is not an http:// or https:// URL", s.api_base)));
    }
    if s.intents & !ALL_INTENTS != 0 {
        problems.push(("intents", format!("{} sets bits Discord does not define (0 to 25)", s.intents)));
    } else if s.intents & (GUILD_MESSAGES | DIRECT_MESSAGES) == 0 {
        problems.push((
            "intents",
            "must include GUILD_MESSAGES (512) or DIRECT_MESSAGES (4096), or no message ever arrives".to_string(),
        ));
    }
    if s.free_response_channels.iter().any(|c| c.is_empty() || !c.bytes().all(|b| b.is_ascii_digit())) {
        problems.push(("free_response_channels", "channel ids are numbers (snowflakes), as strings".to_string()));
    }
    if s.request_timeout.is_zero() {
        problems.push(("request_timeout", "must be more than 0s".to_string()));
    }
    if s.event_silence < Duration::from_secs(60) {
        // Quiet servers are normal; less than a minute would re-identify all day long.
        problems.push(("event_silence", "must be at least 1m".to_string()));
    }
    problems
}

/// A validated Discord instance; builds a fresh adapter for every generation.
pub struct DiscordSpec {
    settings: Arc<DiscordSettings>,
}

impl DiscordSpec {
    /// A spec from settings built by hand or by [`parse`]. A trailing `/` on `api_base`
    /// is dropped.
    pub fn new(mut settings: DiscordSettings) -> DiscordSpec {
        let trimmed = settings.api_base.trim_end_matches('/').len();
        settings.api_base.truncate(trimmed);
        DiscordSpec { settings: Arc::new(settings) }
    }
}

impl PlatformSpec for DiscordSpec {
    fn build(&self) -> Box<dyn Platform> {
        Box::new(Discord::new(self.settings.clone()))
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

    /// Discord's global limit of 50 requests a second, and about 5 messages per 5 s to
    /// one channel (the `POST /channels/{id}/messages` bucket). Channel ids carry no
    /// group marker, so no group limit.
    fn send_limits(&self) -> SendLimits {
        let second = Duration::from_secs(1);
        SendLimits {
            total: Some(Rate::new(50, second)),
            chat: Some(Rate::new(5, 5 * second)),
            group: None,
            group_prefix: None,
        }
    }

    fn describe(&self) -> String {
        format!("discord via {} (intents {})", self.settings.api_base, self.settings.intents)
    }
}

// ---------------------------------------------------------------------------------------
// REST

/// A count of seconds as Discord sends it (a float in a 429 body, a float string in
/// `X-RateLimit-Reset-After`). Negative or not a number: none. Clamped.
fn float_seconds(value: f64, what: &str) -> Option<Duration> {
    let secs = Some(value).filter(|s| *s >= 0.0 && s.is_finite())?;
    Some(net::server_wait(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX), what))
}

/// Read a failed answer: 429 with `{"retry_after": 1.5, "global": false}`, 401, others.
fn status_error(status: u16, body: &[u8], header_wait: Option<Duration>) -> ApiError {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let message = value.get("message").and_then(Value::as_str).map_or_else(|| format!("HTTP {status}"), str::to_string);
    match status {
        429 => {
            let body_wait = value
                .get("retry_after")
                .and_then(Value::as_f64)
                .and_then(|s| float_seconds(s, "Discord's retry_after"));
            let global = value.get("global").and_then(Value::as_bool).unwrap_or(false);
            ApiError::RateLimited { wait: body_wait.or(header_wait).unwrap_or(FALLBACK_RETRY_AFTER), global }
        }
        401 => ApiError::Unauthorized(message),
        s if http::is_transient_status(s) => ApiError::Network(format!("HTTP {s}: {message}")),
        s => ApiError::Rejected(s, message),
    }
}

/// The route a rate-limit bucket is kept for: the method and the path with its major
/// parameter (the channel id) kept and the message id replaced, as Discord scopes them.
fn route_key(method: &str, path: &str) -> String {
    let mut parts: Vec<&str> = path.split('?').next().unwrap_or("").split('/').collect();
    if let [_, "channels", _, "messages", id, ..] = parts.as_mut_slice() {
        *id = ":id";
    }
    format!("{method} {}", parts.join("/"))
}

/// One bucket's state from `X-RateLimit-Remaining` and `X-RateLimit-Reset-After`.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Bucket {
    remaining: u64,
    reset_at: Instant,
}

fn read_bucket(headers: &ureq::http::HeaderMap, now: Instant) -> Option<Bucket> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    let remaining = text("x-ratelimit-remaining")?.parse().ok()?;
    let after = float_seconds(text("x-ratelimit-reset-after")?.parse().ok()?, "X-RateLimit-Reset-After")?;
    Some(Bucket { remaining, reset_at: now + after })
}

/// REST v10 of one bot. Cheap to clone; the buckets are shared.
#[derive(Clone)]
struct Api {
    agent: ureq::Agent,
    api_base: String,
    token: Secret,
    timeout: Duration,
    buckets: Arc<Mutex<HashMap<String, Bucket>>>,
    /// Set by a 401: the token is refused, and no request goes out any more.
    refused: Arc<AtomicBool>,
}

impl Api {
    fn new(s: &DiscordSettings) -> Api {
        Api {
            agent: http::agent(s.request_timeout, s.request_timeout),
            api_base: s.api_base.clone(),
            token: s.token.clone(),
            timeout: s.request_timeout,
            buckets: Arc::default(),
            refused: Arc::default(),
        }
    }

    /// Make one request. [`Mode::Once`] gives each phase its own timeout (a send must not
    /// be repeated blindly, so a failure must say whether it may have arrived). A request into an empty bucket is not made: its wait comes back
    /// as a 429 would.
    fn call(&self, method: &str, path: &str, body: Option<&Value>, mode: Mode) -> Result<Value, ApiError> {
        if self.refused.load(Ordering::Relaxed) {
            return Err(ApiError::Unauthorized("the bot token was refused earlier".into()));
        }
        let key = route_key(method, path);
        let now = Instant::now();
        if let Some(b) = self.buckets.lock().get(&key).filter(|b| b.remaining == 0 && b.reset_at > now) {
            return Err(ApiError::RateLimited { wait: b.reset_at - now, global: false });
        }
        let url = format!("{}{path}", self.api_base);
        let auth = format!("Bot {}", self.token.expose());
        let result = match body {
            Some(body) => {
                let request = match method {
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.post(&url),
                };
                let request = match mode {
                    Mode::Once => http::phased(request, self.timeout),
                    Mode::Within(limit) => request.config().timeout_global(Some(limit)).build(),
                };
                request.header("Authorization", &auth).header("Content-Type", "application/json").send(body.to_string())
            }
            None => {
                let limit = match mode {
                    Mode::Once => self.timeout,
                    Mode::Within(limit) => limit,
                };
                let request = self.agent.get(&url).config().timeout_global(Some(limit)).build();
                request.header("Authorization", &auth).call()
            }
        };
        let mut response = result.map_err(|e| api::transport_error(&e, std::slice::from_ref(&self.token)))?;
        let status = response.status().as_u16();
        if let Some(bucket) = read_bucket(response.headers(), Instant::now()) {
            self.buckets.lock().insert(key, bucket);
        }
        let header_wait = (status == 429).then(|| http::retry_after(response.headers(), SystemTime::now())).flatten();
        let bytes = http::read_body(&mut response).unwrap_or_default();
        if (200..300).contains(&status) {
            if bytes.is_empty() {
                return Ok(Value::Null); // 204 (typing)
            }
            return serde_json::from_slice(&bytes)
                .map_err(|_| ApiError::Unconfirmed(format!("malformed answer (HTTP {status})")));
        }
        let err = status_error(status, &bytes, header_wait);
        if matches!(err, ApiError::Unauthorized(_)) {
            self.refused.store(true, Ordering::Relaxed);
        }
        Err(err)
    }
}

/// How a request is bounded.
#[derive(Clone, Copy)]
enum Mode {
    /// A send: per-phase timeouts of `request_timeout`.
    Once,
    /// Everything else: one overall limit.
    Within(Duration),
}

/// The body of `POST /channels/{id}/messages`.
fn create_message_body(msg: &Outbound) -> Value {
    let mut body = json!({ "content": msg.text, "allowed_mentions": { "parse": ["users"] } });
    if let Some(reply_to) = &msg.reply_to {
        // The reply still goes out if the message it answers was deleted meanwhile.
        body["message_reference"] = json!({ "message_id": reply_to, "fail_if_not_exists": false });
    }
    body
}

/// Sends to Discord from the delivery workers, on an agent of its own.
struct DiscordOutlet {
    api: Api,
}

impl Outlet for DiscordOutlet {
    fn send(&self, msg: &Outbound) -> Result<Option<String>, SendError> {
        let path = format!("/channels/{}/messages", msg.chat_id);
        let sent =
            self.api.call("POST", &path, Some(&create_message_body(msg)), Mode::Once).map_err(ApiError::send_error)?;
        Ok(sent.get("id").and_then(Value::as_str).map(str::to_string))
    }

    fn can_edit(&self) -> bool {
        true
    }

    fn edit(&self, chat_id: &str, message_id: &str, text: &str) -> Result<(), SendError> {
        let path = format!("/channels/{chat_id}/messages/{message_id}");
        self.api
            .call("PATCH", &path, Some(&json!({ "content": text })), Mode::Once)
            .map(drop)
            .map_err(ApiError::send_error)
    }

    /// Discord shows typing for about 10 s; the gateway's typing schedule repeats it.
    fn typing(&self, chat_id: &str, _thread_id: Option<&str>) {
        let limit = Mode::Within(self.api.timeout.min(TYPING_TIMEOUT));
        if let Err(e) = self.api.call("POST", &format!("/channels/{chat_id}/typing"), Some(&json!({})), limit) {
            log::debug!("discord typing failed: {e}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Gateway protocol (pure)

/// One Gateway payload `{"op":…,"d":…,"s":…,"t":…}`, as far as we act on it.
#[derive(Debug, PartialEq)]
enum Payload {
    /// Op 0: an event, with its sequence number.
    Dispatch { seq: Option<u64>, kind: String, data: Value },
    /// Op 1: Discord asks for a heartbeat now.
    Heartbeat,
    /// Op 7: reconnect and resume.
    Reconnect,
    /// Op 9: the session is invalid; `true` if it may be resumed.
    InvalidSession(bool),
    /// Op 10: the heartbeat interval.
    Hello(Duration),
    /// Op 11.
    HeartbeatAck,
    /// Anything else (ops we never receive).
    Other(u64),
}

fn parse_payload(text: &str) -> Result<Payload, String> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let op = v.get("op").and_then(Value::as_u64).ok_or("no op")?;
    let data = v.get_mut("d").map(Value::take).unwrap_or(Value::Null);
    Ok(match op {
        0 => Payload::Dispatch {
            seq: v.get("s").and_then(Value::as_u64),
            kind: v.get("t").and_then(Value::as_str).ok_or("a dispatch without t")?.to_string(),
            data,
        },
        1 => Payload::Heartbeat,
        7 => Payload::Reconnect,
        9 => Payload::InvalidSession(data.as_bool().unwrap_or(false)),
        10 => {
            let ms =
                data.get("heartbeat_interval").and_then(Value::as_u64).ok_or("a Hello without heartbeat_interval")?;
            Payload::Hello(Duration::from_millis(ms).clamp(MIN_HEARTBEAT, MAX_HEARTBEAT))
        }
        11 => Payload::HeartbeatAck,
        other => Payload::Other(other),
    })
}

fn heartbeat(seq: Option<u64>) -> String {
    json!({ "op": 1, "d": seq }).to_string()
}

fn identify(token: &str, intents: u64) -> String {
    let properties = json!({ "os": std::env::consts::OS, "browser": "switchboard", "device": "switchboard" });
    json!({ "op": 2, "d": { "token": token, "intents": intents, "properties": properties } }).to_string()
}

fn resume(token: &str, r: &ResumeState) -> String {
    json!({ "op": 6, "d": { "token": token, "session_id": r.session_id, "seq": r.seq } }).to_string()
}

/// What to do after the Gateway closed the connection with `code`.
#[derive(Debug, PartialEq)]
enum AfterClose {
    /// Connect again and resume the session.
    Resume,
    /// The session is gone: connect again and identify afresh.
    Identify,
    /// Retrying cannot help.
    Fatal(Fatal),
}

/// The Gateway's close codes (discord.com/developers/docs/topics/opcodes-and-status-codes).
fn after_close(code: u16) -> AfterClose {
    let fatal = |code: &str, message: &str| AfterClose::Fatal(Fatal::permanent(code, message));
    match code {
        4004 => fatal(UNAUTHORIZED, "Discord refused the bot token (close 4004); check `token`"),
        4010 => fatal("discord_invalid_shard", "Discord refused the shard (close 4010)"),
        4011 => fatal(
            "discord_sharding_required",
            "the bot is in too many guilds for one connection (close 4011); sharding is not supported",
        ),
        4012 => fatal("discord_invalid_api_version", "Discord refused Gateway version 10 (close 4012)"),
        4013 => fatal("discord_invalid_intents", "Discord refused the intents (close 4013); check `intents`"),
        4014 => fatal(
            "discord_disallowed_intents",
            "Discord refused a privileged intent (close 4014): enable the Message Content intent \
             (Bot → Privileged Gateway Intents) in the developer portal, or remove it from `intents`",
        ),
        // Not authenticated, invalid seq, session timed out: the session cannot be resumed.
        4003 | 4007 | 4009 => AfterClose::Identify,
        _ => AfterClose::Resume,
    }
}

/// What is kept across connections and restarts to resume a session.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ResumeState {
    session_id: String,
    seq: u64,
    url: String,
}

impl ResumeState {
    /// The cursor file's text: three lines.
    fn to_text(&self) -> String {
        format!("{}\n{}\n{}\n", self.session_id, self.seq, self.url)
    }

    fn from_text(text: &str) -> Option<ResumeState> {
        let mut lines = text.lines();
        let session_id = lines.next()?.trim().to_string();
        let seq = lines.next()?.trim().parse().ok()?;
        let url = lines.next()?.trim().to_string();
        let fits = |s: &str| !s.is_empty() && s.len() <= 512 && !s.contains(char::is_whitespace);
        (fits(&session_id) && fits(&url) && (url.starts_with("wss://") || url.starts_with("ws://")))
            .then_some(ResumeState { session_id, seq, url })
    }
}

/// Where instance `name` keeps its resume state.
fn cursor_path(state_dir: &Path, name: &str) -> PathBuf {
    let safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    state_dir.join("cursors").join(format!("discord-{safe}.session"))
}

fn read_cursor(path: &Path) -> io::Result<Option<ResumeState>> {
    match fs::read(path) {
        Ok(bytes) => Ok(std::str::from_utf8(&bytes).ok().and_then(ResumeState::from_text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// The Gateway URL with the version and encoding we speak.
fn gateway_url(base: &str) -> String {
    format!("{}/?v=10&encoding=json", base.split('?').next().unwrap_or(base).trim_end_matches('/'))
}

/// The `READY` fields we keep.
#[derive(Debug, Deserialize)]
struct Ready {
    session_id: String,
    resume_gateway_url: String,
    user: User,
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    username: Option<String>,
    global_name: Option<String>,
    #[serde(default)]
    bot: bool,
}

#[derive(Debug, Deserialize)]
struct MessageCreate {
    id: String,
    channel_id: String,
    guild_id: Option<String>,
    author: User,
    #[serde(default)]
    content: String,
    #[serde(default)]
    mentions: Vec<Mention>,
}

#[derive(Debug, Deserialize)]
struct Mention {
    id: String,
}

/// Why a `MESSAGE_CREATE` yields no inbound message.
#[derive(Debug, PartialEq)]
enum Skip {
    Malformed(String),
    Own,
    Bot,
    NotMentioned,
    NoText,
}

/// Who we are and what we answer: the filter on `MESSAGE_CREATE`.
struct Filter<'a> {
    platform: &'a str,
    me: &'a str,
    settings: &'a DiscordSettings,
}

impl Filter<'_> {
    fn message(&self, data: Value) -> Result<Inbound, Skip> {
        let m: MessageCreate = serde_json::from_value(data).map_err(|e| Skip::Malformed(e.to_string()))?;
        if m.author.id == self.me {
            return Err(Skip::Own);
        }
        let mentioned = m.mentions.iter().any(|u| u.id == self.me) || mentions_me(&m.content, self.me);
        if m.author.bot
            && !matches!((self.settings.allow_bots, mentioned), (AllowBots::All, _) | (AllowBots::Mentions, true))
        {
            return Err(Skip::Bot);
        }
        let free = self.settings.free_response_channels.contains(&m.channel_id);
        if m.guild_id.is_some() && self.settings.require_mention && !free && !mentioned {
            return Err(Skip::NotMentioned);
        }
        let text = strip_mentions(&m.content, self.me);
        if text.is_empty() {
            return Err(Skip::NoText);
        }
        let source = Source {
            platform: self.platform.to_string(),
            chat_id: m.channel_id,
            chat_type: if m.guild_id.is_some() { ChatType::Group } else { ChatType::Dm },
            chat_name: None,
            user_id: Some(m.author.id),
            user_name: m.author.global_name.or(m.author.username),
            thread_id: None,
        };
        Ok(Inbound { source, message_id: Some(m.id), text })
    }
}

fn mentions_me(content: &str, me: &str) -> bool {
    content.contains(&format!("<@{me}>")) || content.contains(&format!("<@!{me}>"))
}

/// The text without the bot's mentions (`<@id>`, `<@!id>`), trimmed.
fn strip_mentions(content: &str, me: &str) -> String {
    content.replace(&format!("<@!{me}>"), "").replace(&format!("<@{me}>"), "").trim().to_string()
}

/// A wait in `0..max` that differs between calls (the first heartbeat's jitter, the
/// 1–5 s before re-identifying): spread, not secret.
fn jitter(max: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    max.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// `session_start_limit` of `GET /gateway/bot`: how long to wait before identifying.
fn start_wait(gateway_bot: &Value) -> Duration {
    let Some(limit) = gateway_bot.get("session_start_limit") else { return Duration::ZERO };
    if limit.get("remaining").and_then(Value::as_u64) != Some(0) {
        return Duration::ZERO;
    }
    let ms = limit.get("reset_after").and_then(Value::as_u64).unwrap_or(5000);
    Duration::from_millis(ms).min(MAX_START_WAIT)
}

// ---------------------------------------------------------------------------------------
// The adapter

/// How a wait or a call sequence ended early.
enum Halt {
    Stopped,
    Fatal(Fatal),
}

impl From<Stopped> for Halt {
    fn from(_: Stopped) -> Halt {
        Halt::Stopped
    }
}

/// One generation of a Discord instance.
struct Discord {
    settings: Arc<DiscordSettings>,
    /// For the adapter's own REST calls; shut down on a stop.
    api: Api,
    /// For the outlet, on an agent of its own: sends go on after a clean stop.
    send_api: Api,
    /// The open connection's stop handle, replaced on each connect: registered with the
    /// stop once, so that reconnecting does not pile up a socket per connection.
    ws_stop: Arc<Mutex<Option<ws::StopHandle>>>,
    cursor: PathBuf,
    /// The session to resume, if any; written to `cursor` as it advances.
    resume: Option<ResumeState>,
    stored: Option<ResumeState>,
    /// Our own user id (from `GET /users/@me`, then READY).
    me: String,
    /// Connection attempts that failed in a row.
    failures: u32,
    /// A `MESSAGE_CREATE` came since the last identify: silence is now suspicious.
    had_traffic: bool,
}

impl Discord {
    fn new(settings: Arc<DiscordSettings>) -> Discord {
        Discord {
            api: Api::new(&settings),
            send_api: Api::new(&settings),
            settings,
            ws_stop: Arc::default(),
            cursor: PathBuf::new(),
            resume: None,
            stored: None,
            me: String::new(),
            failures: 0,
            had_traffic: false,
        }
    }

    /// A REST call, retried on network failures and 429s until the policy gives up.
    fn request(&mut self, ctx: &Context, path: &str) -> Result<Value, Halt> {
        loop {
            let err = match ctx
                .interruptible(|| self.api.call("GET", path, None, Mode::Within(self.settings.request_timeout)))?
            {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            log::warn!("{}: GET {path}: {err}", ctx.name);
            let wait = match err {
                ApiError::RateLimited { wait, .. } => wait,
                ApiError::Network(why) | ApiError::Unconfirmed(why) => self.network_failure(&why)?,
                ApiError::Unauthorized(why) => {
                    let message = format!("Discord refused the bot token ({why}); check `token`");
                    return Err(Halt::Fatal(Fatal::permanent(UNAUTHORIZED, message)));
                }
                ApiError::Rejected(status, why) => {
                    let message = format!("Discord refused GET {path} ({status}): {why}");
                    return Err(Halt::Fatal(Fatal::retryable(API_ERROR, message)));
                }
                // Discord's answers never map to a conflict (its `status_error` has no 409).
                ApiError::Conflict(why) => {
                    return Err(Halt::Fatal(Fatal::retryable(API_ERROR, format!("Discord refused GET {path}: {why}"))));
                }
                ApiError::Config(why) => {
                    return Err(Halt::Fatal(Fatal::permanent(BAD_CONFIG, format!("check `api_base`: {why}"))));
                }
            };
            ctx.sleep(wait)?;
        }
    }

    /// Count one more failure in a row: the wait before the next attempt (1, 2, 4 … ×
    /// `network_retry_wait`), or the end once `network_retries` are used up.
    fn network_failure(&mut self, why: &str) -> Result<Duration, Halt> {
        self.failures += 1;
        if self.failures > self.settings.network_retries {
            let message = format!("Discord unreachable after {} attempts: {why}", self.failures);
            return Err(Halt::Fatal(Fatal::retryable(NETWORK_ERROR, message)));
        }
        Ok(self.settings.network_retry_wait.saturating_mul(1 << (self.failures - 1).min(16)))
    }

    fn prepare(&mut self, ctx: &Context) -> Result<(), Halt> {
        let me = self.request(ctx, "/users/@me")?;
        self.me = me.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        self.cursor = cursor_path(&ctx.state_dir, &ctx.name);
        self.resume = read_cursor(&self.cursor).map_err(|e| {
            Halt::Fatal(Fatal::retryable("discord_state_error", format!("cannot read {}: {e}", self.cursor.display())))
        })?;
        self.stored = self.resume.clone();
        log::info!("{}: bot user {}, resuming: {}", ctx.name, self.me, self.resume.is_some());
        Ok(())
    }

    /// Connect, resume or identify, receive until the connection ends; again and again.
    fn receive(&mut self, ctx: &Context) -> Result<(), Halt> {
        loop {
            match self.connection(ctx) {
                Ok(AfterClose::Resume) => {}
                Ok(AfterClose::Identify) => self.forget_session(ctx),
                Ok(AfterClose::Fatal(fatal)) => return Err(Halt::Fatal(fatal)),
                Err(halt) => return Err(halt),
            }
        }
    }

    /// The session is gone: the next connection identifies.
    fn forget_session(&mut self, ctx: &Context) {
        self.resume = None;
        if self.stored.take().is_some()
            && let Err(e) = fs::remove_file(&self.cursor)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::error!("{}: cannot remove {}: {e}", ctx.name, self.cursor.display());
        }
    }

    /// Where to connect: the session's resume URL, or (identifying) `GET /gateway/bot`'s,
    /// after the wait its `session_start_limit` asks for.
    fn target(&mut self, ctx: &Context) -> Result<String, Halt> {
        if let Some(r) = &self.resume {
            return Ok(r.url.clone());
        }
        let bot = self.request(ctx, "/gateway/bot")?;
        let wait = start_wait(&bot);
        if !wait.is_zero() {
            log::warn!("{}: no session starts left today; waiting {wait:?} before identifying", ctx.name);
            ctx.sleep(wait)?;
        }
        let url = bot
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| Halt::Fatal(Fatal::retryable(API_ERROR, "GET /gateway/bot named no url")))?;
        Ok(url.to_string())
    }

    /// One connection, from connect to close. Returns what to do next.
    fn connection(&mut self, ctx: &Context) -> Result<AfterClose, Halt> {
        let url = self.target(ctx)?;
        let slot = self.ws_stop.clone();
        let connected = ws::connect(&gateway_url(&url), &WsOptions::default(), |h| *slot.lock() = Some(h));
        if ctx.stop_requested() {
            return Err(Halt::Stopped);
        }
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(e) if e.kind() == WsErrorKind::Stopped => return Err(Halt::Stopped),
            Err(e) if e.is_retryable() => {
                log::warn!("{}: connecting to the Gateway: {e}", ctx.name);
                let wait = e.retry_after().map_or_else(|| self.network_failure(&e.to_string()), Ok)?;
                ctx.sleep(wait)?;
                // A resume URL that does not answer is worth no more tries.
                self.resume = None;
                return Ok(AfterClose::Resume);
            }
            Err(e) => return Err(Halt::Fatal(e.fatal("discord"))),
        };
        let result = self.session(ctx, &mut conn);
        if let Ok(AfterClose::Resume | AfterClose::Identify) = &result {
            // Not 1000/1001: those end the session on Discord's side too.
            let _ = conn.send_close(4000, "reconnecting");
        }
        result
    }

    /// Hello, identify or resume, then receive and beat.
    fn session(&mut self, ctx: &Context, conn: &mut WsConn) -> Result<AfterClose, Halt> {
        let interval = match self.next(ctx, conn, Instant::now() + HELLO_TIMEOUT)? {
            Step::Payload(Payload::Hello(interval)) => interval,
            Step::Payload(other) => {
                log::warn!("{}: expected Hello, got {other:?}", ctx.name);
                return Ok(AfterClose::Resume);
            }
            Step::Tick => return self.lost(ctx, "no Hello from the Gateway"),
            Step::Closed(next) => return Ok(next),
        };
        let token = self.settings.token.expose();
        let hello = match &self.resume {
            Some(r) => resume(token, r),
            None => identify(token, self.settings.intents),
        };
        if let Err(e) = conn.send_text(&hello) {
            return self.lost(ctx, &e.to_string());
        }
        let mut beat = Beat { next: Instant::now() + jitter(interval), interval, acked: true };
        let mut last_event = Instant::now();
        loop {
            let silence_at = last_event + self.settings.event_silence;
            let until = if self.had_traffic { beat.next.min(silence_at) } else { beat.next };
            match self.next(ctx, conn, until)? {
                Step::Closed(next) => return Ok(next),
                Step::Tick => {
                    let now = Instant::now();
                    if self.had_traffic && now >= silence_at {
                        log::warn!("{}: no event for {:?}; identifying afresh", ctx.name, self.settings.event_silence);
                        self.had_traffic = false;
                        return Ok(AfterClose::Identify);
                    }
                    if now >= beat.next {
                        if !beat.acked {
                            log::warn!("{}: heartbeat not acknowledged (zombie connection); resuming", ctx.name);
                            return Ok(AfterClose::Resume);
                        }
                        self.beat(ctx, conn, &mut beat)?;
                    }
                }
                Step::Payload(Payload::Dispatch { seq, kind, data }) => {
                    last_event = Instant::now();
                    self.dispatch(ctx, seq, &kind, data)?;
                }
                Step::Payload(Payload::HeartbeatAck) => beat.acked = true,
                Step::Payload(Payload::Heartbeat) => self.beat(ctx, conn, &mut beat)?,
                Step::Payload(Payload::Reconnect) => return Ok(AfterClose::Resume),
                Step::Payload(Payload::InvalidSession(true)) => return Ok(AfterClose::Resume),
                Step::Payload(Payload::InvalidSession(false)) => {
                    ctx.sleep(Duration::from_secs(1) + jitter(Duration::from_secs(4)))?;
                    return Ok(AfterClose::Identify);
                }
                Step::Payload(Payload::Hello(_) | Payload::Other(_)) => {}
            }
        }
    }

    /// Send a heartbeat, and store the resume state (the events up to `seq` are handled).
    fn beat(&mut self, ctx: &Context, conn: &mut WsConn, beat: &mut Beat) -> Result<(), Halt> {
        if let Err(e) = conn.send_text(&heartbeat(self.resume.as_ref().map(|r| r.seq))) {
            return self.lost(ctx, &e.to_string()).map(drop);
        }
        beat.acked = false;
        beat.next = Instant::now() + beat.interval;
        self.store(ctx);
        Ok(())
    }

    /// The connection broke without a close: resume on a new one.
    fn lost(&mut self, ctx: &Context, why: &str) -> Result<AfterClose, Halt> {
        log::warn!("{}: Gateway connection lost: {why}", ctx.name);
        let wait = self.network_failure(why)?;
        ctx.sleep(wait)?;
        Ok(AfterClose::Resume)
    }

    /// Read the next frame (or a tick at `until`).
    fn next(&mut self, ctx: &Context, conn: &mut WsConn, until: Instant) -> Result<Step, Halt> {
        loop {
            return match conn.recv(until) {
                Ok(None) => Ok(Step::Tick),
                Ok(Some(Frame::Text(text))) => match parse_payload(&text) {
                    Ok(payload) => Ok(Step::Payload(payload)),
                    Err(why) => {
                        log::warn!("{}: skipping a Gateway payload: {why}", ctx.name);
                        continue;
                    }
                },
                Ok(Some(Frame::Binary(_))) => continue, // We ask for JSON text.
                Ok(Some(Frame::Close { code, reason })) => {
                    log::warn!("{}: the Gateway closed the connection ({code} {reason})", ctx.name);
                    Ok(Step::Closed(after_close(code)))
                }
                Err(e) if e.kind() == WsErrorKind::Stopped || ctx.stop_requested() => Err(Halt::Stopped),
                Err(e) => self.lost(ctx, &e.to_string()).map(Step::Closed),
            };
        }
    }

    /// One event: READY and RESUMED mark a working session, MESSAGE_CREATE is delivered.
    fn dispatch(&mut self, ctx: &Context, seq: Option<u64>, kind: &str, data: Value) -> Result<(), Halt> {
        if let (Some(seq), Some(r)) = (seq, self.resume.as_mut()) {
            r.seq = seq;
        }
        match kind {
            "READY" => match serde_json::from_value::<Ready>(data) {
                Ok(ready) => {
                    self.failures = 0;
                    self.me = ready.user.id;
                    let url = ready.resume_gateway_url;
                    self.resume = Some(ResumeState { session_id: ready.session_id, seq: seq.unwrap_or(0), url });
                    log::info!("{}: connected to the Gateway as {}", ctx.name, ready.user.username.unwrap_or_default());
                }
                Err(e) => log::warn!("{}: a READY that does not parse: {e}", ctx.name),
            },
            "RESUMED" => {
                self.failures = 0;
                log::info!("{}: session resumed", ctx.name);
            }
            "MESSAGE_CREATE" => {
                let filter = Filter { platform: &ctx.name, me: &self.me, settings: &self.settings };
                match filter.message(data) {
                    Ok(inbound) => {
                        self.had_traffic = true;
                        ctx.deliver_batch(vec![inbound])?;
                        self.store(ctx);
                    }
                    Err(skip @ Skip::Malformed(_)) => log::warn!("{}: skipping a message: {skip:?}", ctx.name),
                    Err(skip) => log::debug!("{}: skipping a message: {skip:?}", ctx.name),
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Write the resume state if it moved. Called only once everything up to its `seq`
    /// is handled (delivered and journaled).
    fn store(&mut self, ctx: &Context) {
        if self.resume == self.stored {
            return;
        }
        self.stored = self.resume.clone();
        let Some(state) = &self.resume else { return };
        if let Err(e) = fsutil::write_atomic_lazy(&self.cursor, state.to_text().as_bytes()) {
            log::error!("{}: cannot store the session in {}: {e}", ctx.name, self.cursor.display());
        }
    }
}

/// What [`Discord::next`] read.
enum Step {
    Payload(Payload),
    Tick,
    Closed(AfterClose),
}

/// The heartbeat schedule of one connection.
struct Beat {
    next: Instant,
    interval: Duration,
    acked: bool,
}

impl Platform for Discord {
    fn connect(&mut self, ctx: &Context) -> Result<Arc<dyn Outlet>, Fatal> {
        let agent = self.api.agent.clone();
        ctx.on_stop(move || agent.shutdown());
        let slot = self.ws_stop.clone();
        ctx.on_stop(move || {
            if let Some(handle) = slot.lock().take() {
                handle.stop();
            }
        });
        let outlet = Arc::new(DiscordOutlet { api: self.send_api.clone() });
        match self.prepare(ctx) {
            Ok(()) | Err(Halt::Stopped) => Ok(outlet),
            Err(Halt::Fatal(fatal)) => Err(fatal),
        }
    }

    fn run(&mut self, ctx: &Context) -> Result<(), Fatal> {
        match self.receive(ctx) {
            Ok(()) | Err(Halt::Stopped) => Ok(()),
            Err(Halt::Fatal(fatal)) => Err(fatal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "MTIz.secret-token";
    const ME: &str = "111";

    fn settings() -> DiscordSettings {
        DiscordSettings::new(Secret::new(TOKEN.to_string()))
    }

    fn message(guild: Option<&str>, author: &str, bot: bool, content: &str) -> Value {
        json!({
            "id": "900", "channel_id": "42", "guild_id": guild, "content": content,
            "author": { "id": author, "username": "ann", "global_name": "Ann", "bot": bot },
            "mentions": [],
        })
    }

    #[test]
    fn payloads() {
        let hello = parse_payload(r#"{"op":10,"d":{"heartbeat_interval":41250},"s":null,"t":null}"#);
        assert_eq!(hello, Ok(Payload::Hello(Duration::from_millis(41250))));
        let hostile = parse_payload(r#"{"op":10,"d":{"heartbeat_interval":0}}"#);
        assert_eq!(hostile, Ok(Payload::Hello(MIN_HEARTBEAT)), "an interval of 0 would beat in a busy loop");
        let huge = parse_payload(r#"{"op":10,"d":{"heartbeat_interval":18446744073709551615}}"#);
        assert_eq!(huge, Ok(Payload::Hello(MAX_HEARTBEAT)));
        assert_eq!(parse_payload(r#"{"op":11}"#), Ok(Payload::HeartbeatAck));
        assert_eq!(parse_payload(r#"{"op":1,"d":null}"#), Ok(Payload::Heartbeat));
        assert_eq!(parse_payload(r#"{"op":7,"d":null}"#), Ok(Payload::Reconnect));
        assert_eq!(parse_payload(r#"{"op":9,"d":true}"#), Ok(Payload::InvalidSession(true)));
        assert_eq!(parse_payload(r#"{"op":9,"d":false}"#), Ok(Payload::InvalidSession(false)));
        let dispatch = parse_payload(r#"{"op":0,"s":5,"t":"RESUMED","d":{}}"#).unwrap();
        assert_eq!(dispatch, Payload::Dispatch { seq: Some(5), kind: "RESUMED".into(), data: json!({}) });
        assert!(parse_payload("nope").is_err());
        assert!(parse_payload(r#"{"d":1}"#).is_err());
        assert!(parse_payload(r#"{"op":0,"s":1,"d":{}}"#).is_err());
        assert!(parse_payload(r#"{"op":10,"d":{}}"#).is_err());
    }

    #[test]
    fn outgoing_payloads() {
        assert_eq!(heartbeat(None), r#"{"d":null,"op":1}"#);
        assert_eq!(heartbeat(Some(7)), r#"{"d":7,"op":1}"#);
        let id: Value = serde_json::from_str(&identify(TOKEN, DEFAULT_INTENTS)).unwrap();
        assert_eq!(
            (id["op"].clone(), id["d"]["intents"].clone(), id["d"]["token"].clone()),
            (json!(2), json!(37376), json!(TOKEN))
        );
        let r = ResumeState { session_id: "abc".into(), seq: 9, url: "wss://r.example".into() };
        let res: Value = serde_json::from_str(&resume(TOKEN, &r)).unwrap();
        assert_eq!(res, json!({"op": 6, "d": {"token": TOKEN, "session_id": "abc", "seq": 9}}));
        assert_eq!(gateway_url("wss://gateway.discord.gg"), "wss://gateway.discord.gg/?v=10&encoding=json");
        assert_eq!(gateway_url("wss://r.example/?v=9"), "wss://r.example/?v=10&encoding=json");
    }

    #[test]
    fn close_codes() {
        for code in [4004, 4010, 4011, 4012, 4013, 4014] {
            let AfterClose::Fatal(fatal) = after_close(code) else { panic!("{code} must be fatal") };
            assert!(!fatal.retryable, "{code}");
        }
        let AfterClose::Fatal(intents) = after_close(4014) else { unreachable!() };
        assert!(intents.message.contains("Message Content intent") && intents.message.contains("developer portal"));
        let AfterClose::Fatal(token) = after_close(4004) else { unreachable!() };
        assert_eq!(token.code, UNAUTHORIZED);
        for code in [4003, 4007, 4009] {
            assert_eq!(after_close(code), AfterClose::Identify, "{code}");
        }
        for code in [1000, 1001, 1005, 1006, 4000, 4001, 4002, 4005, 4008] {
            assert_eq!(after_close(code), AfterClose::Resume, "{code}");
        }
    }

    #[test]
    fn resume_state_round_trip_and_hostile_files() {
        let r = ResumeState { session_id: "abc".into(), seq: 12, url: "wss://r.example".into() };
        assert_eq!(ResumeState::from_text(&r.to_text()), Some(r));
        assert_eq!(ResumeState::from_text(""), None);
        assert_eq!(ResumeState::from_text("abc\nx\nwss://r\n"), None);
        assert_eq!(ResumeState::from_text("abc\n1\nhttp://r\n"), None, "not a ws URL");
        assert_eq!(ResumeState::from_text("\n1\nwss://r\n"), None);
        let dir = tempfile::tempdir().unwrap();
        let path = cursor_path(dir.path(), "main/../bot");
        assert_eq!(path, dir.path().join("cursors").join("discord-main____bot.session"));
        assert_eq!(read_cursor(&path).unwrap(), None);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, b"a\xff\n1\nwss://r\n").unwrap();
        assert_eq!(read_cursor(&path).unwrap(), None);
    }

    #[test]
    fn message_filter() {
        let s = settings();
        let f = Filter { platform: "dc", me: ME, settings: &s };
        let dm = f.message(message(None, "5", false, "hello")).unwrap();
        assert_eq!(dm.source.chat_type, ChatType::Dm);
        assert_eq!(
            (dm.source.chat_id.as_str(), dm.message_id.as_deref(), dm.text.as_str()),
            ("42", Some("900"), "hello")
        );
        assert_eq!(dm.source.user_name.as_deref(), Some("Ann"));
        assert_eq!(f.message(message(None, ME, false, "mine")), Err(Skip::Own));
        assert_eq!(f.message(message(Some("7"), "5", false, "hello")), Err(Skip::NotMentioned));
        let guild = f.message(message(Some("7"), "5", false, "<@111> hi <@!111>")).unwrap();
        assert_eq!((guild.source.chat_type, guild.text.as_str()), (ChatType::Group, "hi"));
        let mut listed = message(Some("7"), "5", false, "hi there");
        listed["mentions"] = json!([{ "id": ME }]);
        assert_eq!(f.message(listed).unwrap().text, "hi there");
        assert_eq!(f.message(message(None, "5", false, "<@111>")), Err(Skip::NoText));
        assert_eq!(f.message(message(None, "6", true, "<@111> hi")), Err(Skip::Bot));
        assert!(matches!(f.message(json!({"id": 1})), Err(Skip::Malformed(_))));

        let s = DiscordSettings {
            allow_bots: AllowBots::Mentions,
            free_response_channels: vec!["42".into()],
            ..settings()
        };
        let f = Filter { platform: "dc", me: ME, settings: &s };
        assert!(f.message(message(None, "6", true, "<@111> hi")).is_ok());
        assert_eq!(f.message(message(None, "6", true, "hi")), Err(Skip::Bot));
        assert!(f.message(message(Some("7"), "5", false, "free channel")).is_ok());
        let s = DiscordSettings { allow_bots: AllowBots::All, require_mention: false, ..settings() };
        let f = Filter { platform: "dc", me: ME, settings: &s };
        assert!(f.message(message(Some("7"), "6", true, "hi")).is_ok());
    }

    #[test]
    fn rate_limits_and_errors() {
        let limited =
            status_error(429, br#"{"message":"You are being rate limited.","retry_after":1.5,"global":true}"#, None);
        assert_eq!(limited, ApiError::RateLimited { wait: Duration::from_millis(1500), global: true });
        assert_eq!(limited.send_error(), SendError::RetryAfterAll(Duration::from_millis(1500)));
        let local = status_error(429, br#"{"retry_after":0.25,"global":false}"#, None);
        assert_eq!(local.send_error(), SendError::RetryAfter(Duration::from_millis(250)));
        let hostile = status_error(429, br#"{"retry_after":1e300}"#, None);
        assert_eq!(hostile, ApiError::RateLimited { wait: net::MAX_SERVER_WAIT, global: false });
        let negative = status_error(429, br#"{"retry_after":-3}"#, Some(Duration::from_secs(2)));
        assert_eq!(negative, ApiError::RateLimited { wait: Duration::from_secs(2), global: false });
        assert_eq!(status_error(429, b"", None), ApiError::RateLimited { wait: FALLBACK_RETRY_AFTER, global: false });
        assert!(matches!(status_error(401, br#"{"message":"401: Unauthorized"}"#, None), ApiError::Unauthorized(_)));
        assert_eq!(
            status_error(403, br#"{"message":"Missing Access"}"#, None),
            ApiError::Rejected(403, "Missing Access".into())
        );
        assert!(matches!(status_error(502, b"<html>", None), ApiError::Network(_)));

        assert_eq!(route_key("POST", "/channels/42/messages"), "POST /channels/42/messages");
        assert_eq!(route_key("PATCH", "/channels/42/messages/77"), "PATCH /channels/42/messages/:id");
        let mut headers = ureq::http::HeaderMap::new();
        headers.insert("x-ratelimit-remaining", "0".parse().unwrap());
        headers.insert("x-ratelimit-reset-after", "2.5".parse().unwrap());
        let now = Instant::now();
        assert_eq!(
            read_bucket(&headers, now),
            Some(Bucket { remaining: 0, reset_at: now + Duration::from_millis(2500) })
        );
        headers.insert("x-ratelimit-reset-after", "nan".parse().unwrap());
        assert_eq!(read_bucket(&headers, now), None);
    }

    #[test]
    fn session_start_limit() {
        assert_eq!(start_wait(&json!({"url": "wss://g"})), Duration::ZERO);
        let left = json!({"session_start_limit": {"remaining": 3, "reset_after": 1000}});
        assert_eq!(start_wait(&left), Duration::ZERO);
        let none = json!({"session_start_limit": {"remaining": 0, "reset_after": 1500}});
        assert_eq!(start_wait(&none), Duration::from_millis(1500));
        let hostile = json!({"session_start_limit": {"remaining": 0, "reset_after": u64::MAX}});
        assert_eq!(start_wait(&hostile), MAX_START_WAIT);
    }

    #[test]
    fn reply_bodies() {
        let msg = Outbound {
            chat_id: "42".into(),
            thread_id: None,
            reply_to: Some("900".into()),
            edit_of: None,
            text: "hi".into(),
        };
        let body = create_message_body(&msg);
        assert_eq!(body["content"], json!("hi"));
        assert_eq!(body["message_reference"], json!({"message_id": "900", "fail_if_not_exists": false}));
        assert!(create_message_body(&Outbound { reply_to: None, ..msg })["message_reference"].is_null());
    }

    #[test]
    fn reads_and_checks_its_config_table() {
        let toml = "token = \"${DC_TOKEN}\"\nallow_bots = \"mentions\"\nfree_response_channels = [\"123\"]\n";
        let mut section = Section::new_for_test(toml, &[("DC_TOKEN", TOKEN)]);
        let spec = parse(&mut section);
        assert!(section.finish().is_empty());
        assert_eq!(spec.describe(), "discord via https://discord.com/api/v10 (intents 37376)");
        assert!(!spec.describe().contains(TOKEN));
        assert_eq!(spec.message_limit(), MESSAGE_LIMIT);

        let toml = "token = \"t\"\napi_base = \"discord.com\"\nintents = 1\nallow_bots = \"some\"\n\
                    free_response_channels = [\"general\"]\nevent_silence = \"5s\"\n";
        let mut section = Section::new_for_test(toml, &[]);
        parse(&mut section);
        let mut keys: Vec<_> = section.finish().into_iter().filter_map(|e| e.key).collect();
        keys.sort();
        let want = ["allow_bots", "api_base", "event_silence", "free_response_channels", "intents"];
        assert_eq!(keys, want.map(|k| format!("platforms.test.{k}")));
        let bits = DiscordSettings { intents: 1 << 30, ..settings() };
        assert_eq!(validate(&bits)[0].0, "intents");
    }
}
