/*!
Agents: what turns a message into a reply.

For now the only backend is the built-in echo agent; the OpenAI-compatible endpoint and
the local command come with the conversations issue, behind the same trait.
*/

mod echo;

use std::fmt;

use crate::config::{AgentBackend, AgentConfig};
use crate::message::Inbound;

/// A turn that produced no reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentError {
    /// Safe to show the user.
    pub user_message: String,
    /// For the log.
    pub detail: String,
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

/// Answers one message. Shared by the router's threads.
pub trait Agent: Send + Sync {
    fn reply(&self, msg: &Inbound) -> Result<String, AgentError>;
}

/// The agent `[agent]` configures.
pub fn build(config: &AgentConfig) -> Box<dyn Agent> {
    match config.backend {
        AgentBackend::Echo => Box::new(echo::Echo),
    }
}
