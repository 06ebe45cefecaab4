/*!
What a turn may use, shared by the router thread and the turn threads: the agent, the
sessions, access, the outbox and the rest, with the router's settings. Its own module so
that the router (which schedules turns) and `turn` (which runs one) both depend on it and
not on each other.
*/

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, BusyMode};
use crate::auth::Auth;
use crate::delivery::Outbox;
use crate::directory::Directory;
use crate::inbox::Inbox;
use crate::message::{Inbound, Outbound};
use crate::session::SessionStore;
use crate::text::Limit;
use crate::typing::Typing;

/// The router's settings, taken from the config once.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// At most this many turns run at once (at least 1).
    pub max_concurrent_turns: usize,
    pub busy: BusyMode,
    pub stream: bool,
    pub edit_interval: Duration,
    pub group_sessions_per_user: bool,
    /// The message limit of each platform instance.
    pub limits: HashMap<String, Limit>,
    /// Enabled platform instances, for `/status`.
    pub platforms: Vec<String>,
}

/// Everything a turn may use. Shared by the router thread and the turn threads.
pub struct Services {
    pub agent: Box<dyn Agent>,
    pub sessions: Arc<SessionStore>,
    pub auth: Auth,
    pub outbox: Outbox,
    pub directory: Arc<Directory>,
    pub inbox: Arc<Inbox>,
    pub typing: Typing,
    pub config: RouterConfig,
}

impl Services {
    /// Queue `text` as a reply to `msg`. A reply that cannot be stored (a full disk) is
    /// logged: the message stays in the inbox and is answered again after a restart.
    pub fn reply(&self, msg: &Inbound, text: String) -> bool {
        match self.outbox.enqueue(&msg.source.platform, Outbound::reply_to(msg, text)) {
            Ok(()) => true,
            Err(e) => {
                log::error!("{}: cannot queue a reply to chat {}: {e}", msg.source.platform, msg.source.chat_id);
                false
            }
        }
    }
}
