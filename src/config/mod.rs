/*!
The validated configuration (`gateway.toml`).

INTERFACE STUB: the types below are the contract the rest of the gateway relies on;
loading is being written in this module (see `load`, `parse_str`).
*/

mod section;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::adapter::Platform;

pub use section::Section;

/// The whole validated configuration. Nothing after `main` sees raw TOML.
#[derive(Clone)]
pub struct Config {
    /// The file it came from (`<embedded default>` when none existed).
    pub file: PathBuf,
    pub gateway: Gateway,
    pub reconnect: Reconnect,
    pub agent: AgentConfig,
    /// Every `[platforms.NAME]` table, enabled or not, sorted by name.
    pub platforms: Vec<PlatformInstance>,
}

/// `[gateway]`
#[derive(Clone, Debug)]
pub struct Gateway {
    pub state_dir: PathBuf,
    pub lock_dir: PathBuf,
    pub log_level: log::LevelFilter,
    pub log_file: Option<PathBuf>,
}

/// `[reconnect]`: the supervisor's timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reconnect {
    pub base: Duration,
    pub cap: Duration,
    /// 0 means retry forever.
    pub max_attempts: u32,
    pub connect_timeout: Duration,
}

/// `[agent]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentConfig {
    pub backend: AgentBackend,
}

#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentBackend {
    /// Replies `echo: <text>`.
    Echo,
}

/// One `[platforms.NAME]` table.
#[derive(Clone)]
pub struct PlatformInstance {
    pub name: String,
    /// The registry kind (`kind = ...`, defaulting to the table name).
    pub kind: &'static str,
    pub enabled: bool,
    pub spec: Arc<dyn PlatformSpec>,
}

/// A platform kind's validated settings; builds a fresh adapter for each generation.
pub trait PlatformSpec: Send + Sync {
    fn build(&self) -> Box<dyn Platform>;

    /// The bot token that must be used by one gateway at a time on this host.
    fn lock_identity(&self) -> Option<&Secret> {
        None
    }

    /// One line for `switchboard check`. Never contains a secret.
    fn describe(&self) -> String;
}

/// A credential. Its `Debug` and `Display` never show the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The raw value, for building a request. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Every problem found in a config file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Load and validate `path`; when it does not exist, the embedded default.
pub fn load(_path: &Path) -> Result<Config, ConfigErrors> {
    unimplemented!("config loading")
}
