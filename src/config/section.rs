//! INTERFACE STUB: typed reading of one TOML table with precise errors.

use std::time::Duration;

use super::Secret;

/// One table of the config (`[gateway]`, `[platforms.NAME]` ...), read key by key.
/// Every getter records the key as known; a key nobody asked for is an error naming
/// the nearest known key. Problems are recorded, not returned, so one pass reports them all.
pub struct Section<'a> {
    _p: std::marker::PhantomData<&'a ()>,
}

impl<'a> Section<'a> {
    /// A string (with `${VAR}` expanded), or `None` when the key is absent.
    pub fn string(&mut self, _key: &str) -> Option<String> {
        unimplemented!()
    }
    pub fn string_or(&mut self, _key: &str, _default: &str) -> String {
        unimplemented!()
    }
    /// A required credential: absent or empty after expansion is an error.
    pub fn secret(&mut self, _key: &str) -> Secret {
        unimplemented!()
    }
    pub fn duration_or(&mut self, _key: &str, _default: Duration) -> Duration {
        unimplemented!()
    }
    pub fn u32_or(&mut self, _key: &str, _default: u32) -> u32 {
        unimplemented!()
    }
    pub fn bool_or(&mut self, _key: &str, _default: bool) -> bool {
        unimplemented!()
    }
    pub fn string_list(&mut self, _key: &str) -> Option<Vec<String>> {
        unimplemented!()
    }
    /// Record a problem with the value of `key` (a bad URL, a value out of range).
    pub fn invalid(&mut self, _key: &str, _message: &str) {
        unimplemented!()
    }
}
