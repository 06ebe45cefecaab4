//! INTERFACE STUB: access control and pairing (being written).

use crate::config::Section;

/// `[access]`
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AccessConfig {}

/// The access keys of one `[platforms.NAME]` table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlatformAccess {}

/// Read `[access]`. Problems are recorded in the section.
pub fn parse_config(_s: &mut Section<'_>) -> AccessConfig {
    AccessConfig::default()
}

/// Read the access keys of a platform table (`allowed_users`, `allow_all`,
/// `unauthorized_dm`). Problems are recorded in the section.
pub fn parse_platform_access(_s: &mut Section<'_>) -> PlatformAccess {
    PlatformAccess::default()
}
