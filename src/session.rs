//! INTERFACE STUB: sessions (being written).

use crate::config::Section;

/// `[sessions]`
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionConfig {}

/// Read `[sessions]`. Problems are recorded in the section.
pub fn parse_config(_s: &mut Section<'_>) -> SessionConfig {
    SessionConfig::default()
}
