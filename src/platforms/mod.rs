/*!
The registry of platform kinds: one row per kind, one file per platform.

Adding a platform is one new file with a `parse` function (reading its config table
into a `PlatformSpec`) plus one row in [`KINDS`].
*/

use std::sync::Arc;

use crate::config::Section;
use crate::platform::PlatformSpec;

pub mod console;
#[cfg(feature = "discord")]
pub mod discord;
#[cfg(feature = "slack")]
pub mod slack;
pub mod telegram;

/// A platform kind: its name in `kind = "..."` and how to read its config table.
pub struct Kind {
    pub name: &'static str,
    /// Read the kind's own keys (everything but `kind` and `enabled`). Problems are
    /// recorded in the section; the spec is discarded if there were any.
    pub parse: fn(&mut Section) -> Arc<dyn PlatformSpec>,
}

/// Every platform kind switchboard knows.
pub static KINDS: &[Kind] =
    &[Kind { name: "console", parse: console::parse }, Kind { name: "telegram", parse: telegram::parse }];

/// The kind called `name`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}
