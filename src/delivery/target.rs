/*!
Delivery targets: where a `send`, a scheduled job or an agent's message goes.

| target                      | means                                                    |
|-----------------------------|----------------------------------------------------------|
| `origin`                    | the chat the current turn came from (resolved by the caller) |
| `NAME`                      | the `home_channel` of platform instance `NAME`           |
| `NAME:CHAT`                 | chat `CHAT` of instance `NAME`                           |
| `NAME:CHAT:THREAD`          | thread (topic) `THREAD` of that chat                     |

`NAME` is the `[platforms.NAME]` instance name, not the kind, so two Telegram bots stay
apart. It is matched case-insensitively (`Telegram:1` is `telegram:1`); chat and thread
ids keep their case (`slack:C123ABC`).

**Quoting.** A chat or thread id that contains `:` — a Matrix room `!room:example.org`,
an event `$ev:example.org` — is written in double quotes:
`matrix:"!room:example.org"` or `matrix:"!room:example.org":"$ev:example.org"`. A quoted
id runs to the next `"` and may hold anything but `"` (no platform's ids contain one).
Unquoted, every `:` separates, so `matrix:!room:example.org` reads as chat `!room` in
thread `example.org` — which is why a target with more than two `:`-parts outside quotes
is refused with a hint to quote, rather than guessed at. The rule is the same for every
platform; nothing depends on knowing id shapes.

Hermes (`reference/hermes-gateway.md` §7.1) splits on the first two colons and so cannot
address a Matrix room; it also lower-cased chat ids once (#11768). Both are fixed here.
*/

use std::fmt;

use crate::config::Config;
use crate::message::Outbound;

/// A parsed target, before it is looked up in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `origin`: the chat the current turn came from.
    Origin,
    /// `NAME`: that instance's `home_channel`.
    Home { platform: String },
    /// `NAME:CHAT[:THREAD]`.
    Chat { platform: String, chat_id: String, thread_id: Option<String> },
}

/// A resolved target: one chat (or thread) of one platform instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub platform: String,
    pub chat_id: String,
    pub thread_id: Option<String>,
}

impl Address {
    /// A new message with `text` to this address.
    pub fn message(&self, text: impl Into<String>) -> Outbound {
        Outbound {
            chat_id: self.chat_id.clone(),
            thread_id: self.thread_id.clone(),
            reply_to: None,
            edit_of: None,
            text: text.into(),
        }
    }
}

/// Parse a target (see the module doc). Errors are one line for people.
pub fn parse_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    // Names are case-insensitive, so `ORIGIN` is `origin` too (and no platform instance
    // may be called that: the config refuses the name).
    if text.eq_ignore_ascii_case("origin") {
        return Ok(Target::Origin);
    }
    let (name, rest) = match text.split_once(':') {
        Some((name, rest)) => (name, Some(rest)),
        None => (text, None),
    };
    let platform = name.to_ascii_lowercase();
    if platform.is_empty() || !platform.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(format!("`{text}`: `{name}` is not a platform instance name (a-z, 0-9, _ and -)"));
    }
    let Some(rest) = rest else { return Ok(Target::Home { platform }) };
    let (chat_id, rest) = id_part(rest).map_err(|e| format!("`{text}`: {e}"))?;
    let thread_id = match rest {
        None => None,
        Some(rest) => match id_part(rest).map_err(|e| format!("`{text}`: {e}"))? {
            (thread, None) => Some(thread),
            (_, Some(_)) => {
                return Err(format!(
                    "`{text}` has too many `:`; an id that contains `:` must be quoted: \
                     {platform}:\"!room:example.org\""
                ));
            }
        },
    };
    Ok(Target::Chat { platform, chat_id, thread_id })
}

/// One id at the start of `text`, bare (up to the next `:`) or quoted; and what follows
/// the `:` after it, if anything does.
fn id_part(text: &str) -> Result<(String, Option<&str>), String> {
    let (id, after) = match text.strip_prefix('"') {
        Some(quoted) => {
            let end = quoted.find('"').ok_or("a quoted id has no closing `\"`")?;
            (&quoted[..end], &quoted[end + 1..])
        }
        None => {
            let (id, after) = text.find(':').map_or((text, ""), |i| text.split_at(i));
            if id.contains('"') {
                return Err("a `\"` may only open or close a quoted id".into());
            }
            (id, after)
        }
    };
    if id.is_empty() {
        return Err("an id is empty".into());
    }
    if after.is_empty() {
        return Ok((id.to_string(), None));
    }
    match after.strip_prefix(':') {
        Some(rest) => Ok((id.to_string(), Some(rest))),
        None => Err(format!("expected `:` after the quoted id \"{id}\", found `{after}`")),
    }
}

impl Target {
    /// Look the target up in `config`. `origin` is the chat the current turn came from,
    /// when there is one (a `send` from the command line has none).
    pub fn resolve(&self, config: &Config, origin: Option<&Address>) -> Result<Address, String> {
        let (platform, chat_id, thread_id) = match self {
            Target::Origin => {
                return origin.cloned().ok_or_else(|| {
                    "`origin` means the chat a conversation came from, and there is none here; \
                     name one: NAME:CHAT"
                        .to_string()
                });
            }
            Target::Home { platform } => (platform, None, None),
            Target::Chat { platform, chat_id, thread_id } => (platform, Some(chat_id), thread_id.clone()),
        };
        let Some(instance) = config.platforms.iter().find(|p| &p.name == platform) else {
            let known: Vec<&str> = config.platforms.iter().map(|p| p.name.as_str()).collect();
            let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
            return Err(format!("no platform instance `{platform}` in the config (known: {known})"));
        };
        if !instance.enabled {
            return Err(format!("platform `{platform}` is disabled (enabled = false): nothing would send to it"));
        }
        let chat_id = match chat_id {
            Some(chat) => chat.clone(),
            None => instance.home_channel.clone().ok_or_else(|| {
                format!("platform `{platform}` has no home_channel; set one in [platforms.{platform}] or name a chat: {platform}:CHAT")
            })?,
        };
        Ok(Address { platform: platform.clone(), chat_id, thread_id })
    }
}

impl fmt::Display for Target {
    /// The target as [`parse_target`] reads it back, quoting ids that need it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Quoted: ids with `:`, a leading `"`, or whitespace at either end (which a bare
        // id would lose to trimming).
        let needs_quotes = |id: &str| id.contains(':') || id.starts_with('"') || id.trim() != id;
        let id = |id: &str| if needs_quotes(id) { format!("\"{id}\"") } else { id.to_string() };
        match self {
            Target::Origin => f.write_str("origin"),
            Target::Home { platform } => f.write_str(platform),
            Target::Chat { platform, chat_id, thread_id: None } => write!(f, "{platform}:{}", id(chat_id)),
            Target::Chat { platform, chat_id, thread_id: Some(t) } => {
                write!(f, "{platform}:{}:{}", id(chat_id), id(t))
            }
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = Target::Chat {
            platform: self.platform.clone(),
            chat_id: self.chat_id.clone(),
            thread_id: self.thread_id.clone(),
        };
        target.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(platform: &str, chat: &str, thread: Option<&str>) -> Target {
        Target::Chat { platform: platform.into(), chat_id: chat.into(), thread_id: thread.map(Into::into) }
    }

    fn config() -> Config {
        let toml = r#"
            [platforms.tg]
            kind = "telegram"
            token = "1:a"
            home_channel = "-100"
            [platforms.other]
            kind = "telegram"
            token = "2:b"
            [platforms.off]
            kind = "telegram"
            enabled = false
            token = "3:c"
            home_channel = "5"
        "#;
        let env = |name: &str| (name == "HOME").then(|| "/home/test".to_string());
        crate::config::parse_str(toml, std::path::Path::new("test.toml"), &env).expect("test config")
    }

    #[test]
    fn resolving() {
        let config = config();
        let resolve = |t: &str, origin: Option<&Address>| parse_target(t).unwrap().resolve(&config, origin);
        let home = Address { platform: "tg".into(), chat_id: "-100".into(), thread_id: None };
        assert_eq!(resolve("tg", None), Ok(home.clone()));
        assert_eq!(resolve("TG:7:9", None).unwrap().to_string(), "tg:7:9");
        assert_eq!(resolve("origin", Some(&home)), Ok(home));
        let errors = [
            ("origin", "there is none here"),
            ("other", "no home_channel"),
            ("nope:5", "no platform instance `nope` in the config (known: off, other, tg)"),
            ("off", "disabled"),
        ];
        for (target, want) in errors {
            let err = resolve(target, None).unwrap_err();
            assert!(err.contains(want), "{target}: {err}");
        }
    }

    #[test]
    fn display_quotes_what_needs_it() {
        assert_eq!(chat("m", "!r:x.org", Some("$e:x.org")).to_string(), r#"m:"!r:x.org":"$e:x.org""#);
        assert_eq!(chat("t", "5", Some("7")).to_string(), "t:5:7");
        assert_eq!(Target::Home { platform: "t".into() }.to_string(), "t");
    }
}
