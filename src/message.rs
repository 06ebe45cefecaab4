/*!
The messages that flow through the gateway, independent of any platform.

An adapter turns a platform payload into an [`Inbound`]; the router hands it to the
agent; the reply travels back as an [`Outbound`] addressed to a chat of the same
platform instance.
*/

use serde::{Deserialize, Serialize};

/// What kind of conversation a message belongs to; it shapes the session key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatType {
    /// A one-to-one conversation with the bot.
    Dm,
    /// A group chat with several people.
    Group,
    /// A broadcast channel.
    Channel,
}

impl ChatType {
    pub fn as_str(self) -> &'static str {
        match self {
            ChatType::Dm => "dm",
            ChatType::Group => "group",
            ChatType::Channel => "channel",
        }
    }
}

/// Where a message came from. `platform` is the instance name from the config
/// (`[platforms.NAME]`), not the kind, so two Telegram bots stay apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub platform: String,
    pub chat_id: String,
    pub chat_type: ChatType,
    pub chat_name: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub thread_id: Option<String>,
}

impl Source {
    /// A direct chat on `platform` with nothing else known (no names, no user): the
    /// base that tests and tools fill in with `Source { user_id: …, ..Source::dm(…) }`.
    pub fn dm(platform: &str, chat_id: &str) -> Source {
        Source {
            platform: platform.to_string(),
            chat_id: chat_id.to_string(),
            chat_type: ChatType::Dm,
            chat_name: None,
            user_id: None,
            user_name: None,
            thread_id: None,
        }
    }
}

/// A message received from a platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbound {
    pub source: Source,
    /// The platform's id for the message, when it has one (used to de-duplicate replays).
    pub message_id: Option<String>,
    pub text: String,
}

/// A message to send to one chat of one platform instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    pub chat_id: String,
    pub thread_id: Option<String>,
    /// The platform message this answers, if any.
    pub reply_to: Option<String>,
    /// When set, replace the text of this earlier message of the bot instead of sending
    /// a new one (the final state of a streamed reply).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit_of: Option<String>,
    pub text: String,
}

impl Outbound {
    /// A reply to `inbound`, in the same chat and thread.
    pub fn reply_to(inbound: &Inbound, text: String) -> Outbound {
        Outbound {
            chat_id: inbound.source.chat_id.clone(),
            thread_id: inbound.source.thread_id.clone(),
            reply_to: inbound.message_id.clone(),
            edit_of: None,
            text,
        }
    }
}

/// Who said something in a conversation, in the chat-completions sense.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

/// One entry of a session's history, as sent to the agent and kept in transcripts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> ChatMessage {
        ChatMessage { role, content: content.into() }
    }
}
