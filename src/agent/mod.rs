/*!
Agents: what turns a message into a reply.

For now the only backend is the built-in echo agent; the OpenAI-compatible endpoint and
the local command come with the conversations issue, behind the same trait.
*/

mod echo;

use std::fmt;

use crate::config::Section;
use crate::message::Inbound;

/// `[agent]`
#[derive(Clone, Debug, PartialEq)]
pub struct AgentConfig {
    pub backend: AgentBackend,
}

impl Default for AgentConfig {
    fn default() -> AgentConfig {
        AgentConfig { backend: AgentBackend::Echo }
    }
}

impl AgentConfig {
    /// One line for `switchboard check`. Never contains a secret.
    pub fn describe(&self) -> String {
        self.backend.name().to_string()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentBackend {
    /// Replies `echo: <text>`.
    Echo,
}

/// `backend = "..."` names.
const BACKENDS: &[(&str, AgentBackend)] = &[("echo", AgentBackend::Echo)];

impl AgentBackend {
    /// The name used in `backend = "..."`.
    pub fn name(&self) -> &'static str {
        BACKENDS.iter().find(|(_, b)| b == self).map_or("unknown", |(name, _)| name)
    }
}

/// Read `[agent]`. Problems are recorded in the section.
pub fn parse_config(s: &mut Section<'_>) -> AgentConfig {
    let backend = s.choice("backend", BACKENDS, AgentBackend::Echo);
    AgentConfig { backend }
}

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
