/*!
Session keys: which conversation a message belongs to.

The derivation is the reference gateway's `build_session_key`, kept identical so that keys
read the same in logs, in the index and in any tool written against the reference: a DM is
one conversation per chat (and thread); in a group or channel, each participant gets their
own conversation unless `group_sessions_per_user = false`. Every part of the process that
names a session (router, commands, interrupts) must call this one function: the reference
once broke interrupts by keying one side by chat id and the other by session key.
*/

use crate::message::{ChatType, Source};

/// The session key of `source`: `agent:main:{platform}:dm:{chat_id}[:{thread_id}]` for a
/// DM, `agent:main:{platform}:{chat_type}:{chat_id}[:{thread_id}][:{user_id}]` for a group
/// or channel (the user only with `group_sessions_per_user`). `platform` is the instance
/// name. Empty ids count as absent, as the reference's falsy checks do.
pub fn session_key(source: &Source, group_sessions_per_user: bool) -> String {
    let present = |s: &str| !s.is_empty();
    let mut parts = vec!["agent:main", source.platform.as_str(), source.chat_type.as_str()];
    parts.extend(Some(source.chat_id.as_str()).filter(|s| present(s)));
    parts.extend(source.thread_id.as_deref().filter(|s| present(s)));
    if source.chat_type != ChatType::Dm && group_sessions_per_user {
        parts.extend(source.user_id.as_deref().filter(|s| present(s)));
    }
    parts.join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(platform: &str, chat_type: ChatType, chat: &str, thread: Option<&str>, user: Option<&str>) -> Source {
        Source {
            platform: platform.into(),
            chat_id: chat.into(),
            chat_type,
            chat_name: None,
            user_id: user.map(Into::into),
            user_name: None,
            thread_id: thread.map(Into::into),
        }
    }

    /// platform, chat type, chat id, thread id, user id, group_sessions_per_user, key.
    type Row = (&'static str, ChatType, &'static str, Option<&'static str>, Option<&'static str>, bool, &'static str);

    #[test]
    fn keys_match_the_reference_derivation() {
        use ChatType::*;
        #[rustfmt::skip]
        let table: &[Row] = &[
            // The reference's own examples (§5.2).
            ("whatsapp", Dm, "15551234567@s.whatsapp.net", None, None, true,
             "agent:main:whatsapp:dm:15551234567@s.whatsapp.net"),
            ("telegram", Dm, "99", None, None, true, "agent:main:telegram:dm:99"),
            ("discord", Group, "guild-123", None, None, true, "agent:main:discord:group:guild-123"),
            ("telegram", Group, "-1002285219667", Some("17585"), None, true,
             "agent:main:telegram:group:-1002285219667:17585"),
            // A DM never carries the user, whatever the group setting.
            ("telegram", Dm, "99", None, Some("99"), true, "agent:main:telegram:dm:99"),
            ("slack", Dm, "D1", Some("t1"), Some("U1"), true, "agent:main:slack:dm:D1:t1"),
            // A DM without a chat id falls back to the thread, then to nothing.
            ("slack", Dm, "", Some("t1"), None, true, "agent:main:slack:dm:t1"),
            ("slack", Dm, "", None, None, true, "agent:main:slack:dm"),
            // Groups and channels: per user by default, shared when turned off.
            ("tg", Group, "-100", None, Some("42"), true, "agent:main:tg:group:-100:42"),
            ("tg", Group, "-100", None, Some("42"), false, "agent:main:tg:group:-100"),
            ("tg", Group, "-100", Some("7"), Some("42"), true, "agent:main:tg:group:-100:7:42"),
            ("tg", Group, "-100", Some("7"), Some("42"), false, "agent:main:tg:group:-100:7"),
            ("dc", Channel, "c1", None, Some("u1"), true, "agent:main:dc:channel:c1:u1"),
            // Empty ids count as absent.
            ("tg", Group, "-100", Some(""), Some(""), true, "agent:main:tg:group:-100"),
            // The platform is the instance name: two bots of one kind stay apart.
            ("tg_work", Dm, "99", None, None, true, "agent:main:tg_work:dm:99"),
        ];
        for &(platform, chat_type, chat, thread, user, per_user, expected) in table {
            let s = source(platform, chat_type, chat, thread, user);
            assert_eq!(session_key(&s, per_user), expected, "{s:?} per_user={per_user}");
        }
    }
}
