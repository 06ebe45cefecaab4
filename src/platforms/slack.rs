/*!
Slack over Socket Mode (receive) and the Web API (send): the protocol-pure parts.

This file holds what needs no socket: the `[platforms.NAME]` settings with their checks,
how a Web API answer is read (errors come as HTTP 200 with `ok: false`, so `ok` is always
checked), how a Socket Mode envelope becomes an [`Inbound`], the bounded `event_id` set
that drops Slack's redeliveries, and Markdown → mrkdwn. The I/O driver (`auth.test`,
`apps.connections.open`, the socket, acks after the journal, the outlet) is to be built on
the platform kit (`net::api`, `kit::socket`) once it lands on main; until then the kind is
not in the registry, so no configuration can name a platform that cannot run.
*/

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use serde_json::Value;

use crate::config::{Secret, Section};
use crate::message::{ChatType, Inbound, Source};
use crate::text::{Limit, Unit};

/// Where replies are split: Slack truncates above 40,000 characters, but its own
/// guidance (and readability) is about 4,000.
pub const MESSAGE_LIMIT: Limit = Limit { max: 4000, unit: Unit::Chars };

/// How many `event_id`s are remembered to drop redeliveries. Slack redelivers within
/// minutes, so a few thousand cover any burst between two redeliveries.
const SEEN_EVENTS: usize = 4096;

/// The longest wait a `Retry-After` may ask for before it is clamped.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The wait after a `ratelimited` answer that names none.
const FALLBACK_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Web API error codes that retrying cannot fix: a bad, revoked or under-scoped token.
const NON_RETRYABLE: &[&str] =
    &["invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired", "missing_scope"];

// ---------------------------------------------------------------------------------------
// Settings

/// The validated settings of a `kind = "slack"` instance.
#[derive(Clone, Debug)]
pub struct SlackSettings {
    /// `app_token`: the app-level token (`xapp-…`, scope `connections:write`) that opens
    /// Socket Mode connections. Required.
    pub app_token: Secret,
    /// `bot_token`: the bot user OAuth token (`xoxb-…`) for every other Web API call.
    /// Required.
    pub bot_token: Secret,
    /// `api_base`: where the Web API lives. Default `https://slack.com/api`.
    pub api_base: String,
    /// `request_timeout`: the limit on every Web API request. Default 15 s.
    pub request_timeout: Duration,
}

/// Read a `kind = "slack"` table into settings. Problems are recorded in `section`.
pub fn read_settings(section: &mut Section) -> SlackSettings {
    let settings = SlackSettings {
        app_token: section.secret("app_token"),
        bot_token: section.secret("bot_token"),
        api_base: section.string_or("api_base", "https://slack.com/api").trim_end_matches('/').to_string(),
        request_timeout: section.duration_or("request_timeout", Duration::from_secs(15)),
    };
    for (key, problem) in validate(&settings) {
        section.invalid(key, &problem);
    }
    settings
}

/// What is wrong with `s`, per key. A token in the other's place gets a hint, since the
/// two are easy to swap when copying them out of the app's settings pages.
fn validate(s: &SlackSettings) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    let (app, bot) = (s.app_token.expose(), s.bot_token.expose());
    if !app.starts_with("xapp-") {
        let hint = if app.starts_with("xoxb-") {
            "this is a bot token: it belongs in `bot_token`; `app_token` is the app-level token"
        } else {
            "an app-level token starts with `xapp-` (Basic Information → App-Level Tokens, scope connections:write)"
        };
        problems.push(("app_token", format!("not an app-level token: {hint}")));
    }
    if !bot.starts_with("xoxb-") {
        let hint = if bot.starts_with("xapp-") {
            "this is an app-level token: it belongs in `app_token`; `bot_token` is the bot token"
        } else if bot.starts_with("xoxp-") {
            "this is a user token: use the Bot User OAuth Token (`xoxb-`)"
        } else {
            "a bot token starts with `xoxb-` (OAuth & Permissions → Bot User OAuth Token)"
        };
        problems.push(("bot_token", format!("not a bot token: {hint}")));
    }
    if !(s.api_base.starts_with("https://") || s.api_base.starts_with("http://")) {
        problems.push(("api_base", format!("`{}` is not an http:// or https:// URL", s.api_base)));
    }
    if s.request_timeout.is_zero() {
        problems.push(("request_timeout", "must be more than 0s".to_string()));
    }
    problems
}

// ---------------------------------------------------------------------------------------
// Web API answers

/// Why a Web API call failed, as far as its answer says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebError {
    /// A token or scope problem: retrying cannot fix it (`invalid_auth`, `missing_scope`…).
    Auth(String),
    /// HTTP 429 or `ratelimited`: wait this long before calling this method again.
    RateLimited(Duration),
    /// The server failed (5xx) or answered something unreadable: may heal.
    Server(String),
    /// Any other `ok: false` (`channel_not_found`, `msg_too_long`…): this request is refused.
    Refused(String),
}

/// Read one Web API answer: `Ok` with the body when `ok` is true, otherwise the error.
/// `retry_after` is the answer's `Retry-After` header, already parsed.
pub fn read_answer(status: u16, retry_after: Option<Duration>, body: &[u8]) -> Result<Value, WebError> {
    let wait = || retry_after.unwrap_or(FALLBACK_RETRY_AFTER).min(MAX_RETRY_AFTER);
    if status == 429 {
        return Err(WebError::RateLimited(wait()));
    }
    if status >= 500 || status == 408 {
        return Err(WebError::Server(format!("HTTP {status}")));
    }
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => return Err(WebError::Server(format!("HTTP {status} with an unreadable body"))),
    };
    if value.get("ok").and_then(Value::as_bool) == Some(true) {
        return Ok(value);
    }
    let code = value.get("error").and_then(Value::as_str).unwrap_or("unknown_error").to_string();
    Err(match code.as_str() {
        "ratelimited" => WebError::RateLimited(wait()),
        c if NON_RETRYABLE.contains(&c) => WebError::Auth(code),
        "internal_error" | "fatal_error" | "service_unavailable" | "request_timeout" => WebError::Server(code),
        _ => WebError::Refused(code),
    })
}

// ---------------------------------------------------------------------------------------
// Socket Mode envelopes

/// What one Socket Mode frame asks of us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The connection is ready.
    Hello,
    /// Slack will close this connection: `refresh_requested` and `warning` ask for a new
    /// one first; `link_disabled` (Socket Mode switched off) is for good.
    Disconnect { reason: String },
    /// An envelope to acknowledge with its id; `event` is set for a message to deliver.
    Envelope { envelope_id: String, event_id: Option<String>, event: Option<Box<Inbound>> },
    /// Anything else (logged and skipped).
    Other,
}

/// Read one text frame. `bot_user` is our own user id from `auth.test`, `platform` the
/// instance name. `None` for a frame that is not JSON.
pub fn read_frame(text: &str, platform: &str, bot_user: &str) -> Option<Frame> {
    let v: Value = serde_json::from_str(text).ok()?;
    let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
    Some(match kind {
        "hello" => Frame::Hello,
        "disconnect" => Frame::Disconnect { reason: v.get("reason").and_then(Value::as_str).unwrap_or("").to_string() },
        _ => match v.get("envelope_id").and_then(Value::as_str) {
            Some(id) => {
                let payload = v.get("payload");
                let event_id = payload.and_then(|p| p.get("event_id")).and_then(Value::as_str).map(str::to_string);
                let event = if kind == "events_api" {
                    payload.and_then(|p| p.get("event")).and_then(|e| read_event(e, platform, bot_user)).map(Box::new)
                } else {
                    None
                };
                Frame::Envelope { envelope_id: id.to_string(), event_id, event }
            }
            None => Frame::Other,
        },
    })
}

/// A `message` or `app_mention` event as an [`Inbound`]; `None` for our own messages,
/// other bots' messages, subtypes (edits, joins…) and events of other types.
fn read_event(e: &Value, platform: &str, bot_user: &str) -> Option<Inbound> {
    let s = |k: &str| e.get(k).and_then(Value::as_str);
    if !matches!(s("type"), Some("message" | "app_mention")) || s("subtype").is_some() || s("bot_id").is_some() {
        return None;
    }
    let user = s("user")?;
    if user == bot_user {
        return None;
    }
    let chat_type = match s("channel_type") {
        Some("im") => ChatType::Dm,
        _ => ChatType::Group,
    };
    let source = Source {
        platform: platform.to_string(),
        chat_id: s("channel")?.to_string(),
        chat_type,
        chat_name: None,
        user_id: Some(user.to_string()),
        user_name: None,
        thread_id: s("thread_ts").map(str::to_string),
    };
    let text = strip_mention(s("text").unwrap_or(""), bot_user);
    Some(Inbound { source, message_id: s("ts").map(str::to_string), text })
}

/// `text` without `<@BOT>` mentions of our bot, trimmed.
fn strip_mention(text: &str, bot_user: &str) -> String {
    let tag = format!("<@{bot_user}>");
    text.replace(&tag, "").split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The `event_id`s seen lately, oldest dropped first: Slack delivers at least once.
#[derive(Default)]
pub struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    /// True the first time `id` is offered (and remembers it), false for a repeat.
    pub fn first(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN_EVENTS
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

// ---------------------------------------------------------------------------------------
// Markdown → mrkdwn

/// The common Markdown an agent writes, as Slack's mrkdwn: `**x**` → `*x*`,
/// `[t](u)` → `<u|t>`, `# heading` → `*heading*`. Code spans and blocks are left alone
/// (mrkdwn uses the same backticks); anything else passes through.
pub fn to_mrkdwn(md: &str) -> String {
    let mut out = Vec::new();
    let mut in_code = false;
    for line in md.split('\n') {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            out.push(line.to_string());
        } else if in_code {
            out.push(line.to_string());
        } else {
            out.push(convert_line(line));
        }
    }
    out.join("\n")
}

fn convert_line(line: &str) -> String {
    let trimmed = line.trim_start();
    let hashes = trimmed.chars().take_while(|&c| c == '#').count();
    if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
        let title = inline(trimmed[hashes..].trim()).replace('*', "");
        return format!("*{title}*");
    }
    inline(line)
}

/// Bold and links outside code spans.
fn inline(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for (i, part) in line.split('`').enumerate() {
        if i > 0 {
            out.push('`');
        }
        if i % 2 == 1 {
            out.push_str(part);
        } else {
            out.push_str(&links(&part.replace("**", "*")));
        }
    }
    out
}

/// `[t](u)` → `<u|t>`.
fn links(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let parsed = after.find("](").and_then(|mid| {
            let url_part = &after[mid + 2..];
            url_part.find(')').map(|close| (&after[..mid], &url_part[..close], &url_part[close + 1..]))
        });
        match parsed {
            Some((text, url, tail)) if !text.contains('[') && !url.contains(' ') => {
                out.push_str(&rest[..open]);
                out.push_str(&format!("<{url}|{text}>"));
                rest = tail;
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(toml: &str) -> Vec<Option<String>> {
        let mut section = Section::new_for_test(toml, &[]);
        read_settings(&mut section);
        section.finish().into_iter().map(|e| e.key).collect()
    }

    #[test]
    fn tokens_are_checked_and_a_swap_is_named() {
        assert!(settings("app_token = \"xapp-1\"\nbot_token = \"xoxb-2\"\n").is_empty());
        let mut section = Section::new_for_test("app_token = \"xoxb-2\"\nbot_token = \"xapp-1\"\n", &[]);
        read_settings(&mut section);
        let errors: Vec<String> = section.finish().iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].contains("belongs in `bot_token`"), "{errors:?}");
        assert!(errors[1].contains("belongs in `app_token`"), "{errors:?}");
        assert!(errors.iter().all(|e| !e.contains("xoxb-2") && !e.contains("xapp-1")), "no secret: {errors:?}");
        let keys = settings("app_token = \"xapp-1\"\nbot_token = \"xoxb-2\"\napi_base = \"slack.com\"\n");
        assert_eq!(keys, [Some("platforms.test.api_base".to_string())]);
    }

    #[test]
    fn ok_false_is_an_error_even_with_http_200() {
        assert!(read_answer(200, None, br#"{"ok":true,"user_id":"U1"}"#).is_ok());
        for code in NON_RETRYABLE {
            let body = format!(r#"{{"ok":false,"error":"{code}"}}"#);
            assert_eq!(read_answer(200, None, body.as_bytes()), Err(WebError::Auth(code.to_string())));
        }
        let refused = read_answer(200, None, br#"{"ok":false,"error":"channel_not_found"}"#);
        assert_eq!(refused, Err(WebError::Refused("channel_not_found".into())));
        assert!(matches!(read_answer(200, None, b"<html>"), Err(WebError::Server(_))));
        assert!(matches!(read_answer(503, None, b""), Err(WebError::Server(_))));
    }

    #[test]
    fn rate_limits_honour_retry_after_clamped() {
        let secs = Duration::from_secs;
        assert_eq!(read_answer(429, Some(secs(7)), b""), Err(WebError::RateLimited(secs(7))));
        assert_eq!(read_answer(429, Some(secs(999_999)), b""), Err(WebError::RateLimited(MAX_RETRY_AFTER)));
        let body = br#"{"ok":false,"error":"ratelimited"}"#;
        assert_eq!(read_answer(200, None, body), Err(WebError::RateLimited(FALLBACK_RETRY_AFTER)));
    }

    fn envelope(event: &str) -> String {
        format!(r#"{{"envelope_id":"E1","type":"events_api","payload":{{"event_id":"Ev1","event":{event}}}}}"#)
    }

    #[test]
    fn messages_become_inbound_and_the_rest_is_skipped() {
        let dm =
            envelope(r#"{"type":"message","channel":"D1","channel_type":"im","user":"U2","text":"hi","ts":"1.1"}"#);
        let Some(Frame::Envelope { envelope_id, event_id, event: Some(msg) }) = read_frame(&dm, "slack", "UB") else {
            panic!("not a message envelope");
        };
        assert_eq!((envelope_id.as_str(), event_id.as_deref()), ("E1", Some("Ev1")));
        assert_eq!((msg.source.chat_type, msg.source.chat_id.as_str(), msg.text.as_str()), (ChatType::Dm, "D1", "hi"));
        assert_eq!(msg.message_id.as_deref(), Some("1.1"));

        let mention = envelope(
            r#"{"type":"app_mention","channel":"C1","channel_type":"channel","user":"U2","text":"<@UB> help me","ts":"2.2","thread_ts":"1.0"}"#,
        );
        let Some(Frame::Envelope { event: Some(msg), .. }) = read_frame(&mention, "slack", "UB") else { panic!() };
        assert_eq!((msg.source.chat_type, msg.text.as_str()), (ChatType::Group, "help me"));
        assert_eq!(msg.source.thread_id.as_deref(), Some("1.0"));

        for skipped in [
            r#"{"type":"message","channel":"C1","user":"UB","text":"own","ts":"3"}"#,
            r#"{"type":"message","channel":"C1","user":"U3","bot_id":"B1","text":"bot","ts":"3"}"#,
            r#"{"type":"message","subtype":"message_changed","channel":"C1","ts":"3"}"#,
            r#"{"type":"reaction_added","user":"U2"}"#,
        ] {
            let frame = read_frame(&envelope(skipped), "slack", "UB");
            assert!(matches!(frame, Some(Frame::Envelope { event: None, .. })), "{skipped}: {frame:?}");
        }
        assert_eq!(read_frame(r#"{"type":"hello"}"#, "slack", "UB"), Some(Frame::Hello));
        let bye = read_frame(r#"{"type":"disconnect","reason":"link_disabled"}"#, "slack", "UB");
        assert_eq!(bye, Some(Frame::Disconnect { reason: "link_disabled".into() }));
        assert_eq!(read_frame("not json", "slack", "UB"), None);
    }

    #[test]
    fn event_ids_are_deduplicated_in_a_bounded_set() {
        let mut seen = Seen::default();
        assert!(seen.first("a"));
        assert!(!seen.first("a"));
        for i in 0..SEEN_EVENTS {
            seen.first(&i.to_string());
        }
        assert!(seen.set.len() <= SEEN_EVENTS);
        assert!(seen.first("a"), "the oldest id was forgotten");
    }

    #[test]
    fn markdown_becomes_mrkdwn() {
        assert_eq!(to_mrkdwn("a **bold** word"), "a *bold* word");
        assert_eq!(to_mrkdwn("see [the docs](https://x.y/z) now"), "see <https://x.y/z|the docs> now");
        assert_eq!(to_mrkdwn("## Title **here**"), "*Title here*");
        assert_eq!(to_mrkdwn("`**kept**` and **not**"), "`**kept**` and *not*");
        assert_eq!(to_mrkdwn("```\n# not a heading\n**x**\n```"), "```\n# not a heading\n**x**\n```");
        assert_eq!(to_mrkdwn("[unclosed](x and [a](b)"), "[unclosed](x and <b|a>");
        assert_eq!(to_mrkdwn("#hashtag"), "#hashtag");
    }
}
