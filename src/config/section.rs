/*!
Typed reading of one TOML table, with precise errors.

A [`Section`] wraps one table of the parsed document (`[gateway]`, `[platforms.tg]` …)
together with the byte spans of its keys and values. Code that knows a table's schema —
the loader for the gateway's own sections, each platform kind's `parse` for its table —
asks for keys through the getters. Each getter:

- remembers the key as *known*, so that [`Section::finish`] can report every key present
  in the file that nobody asked for, with the nearest known key as a suggestion. This is
  `deny_unknown_fields` without a serde struct per platform, and it works for tables whose
  schema lives in another module;
- expands `${VAR}` in strings (see `expand.rs`);
- on a problem (wrong type, bad duration, unset variable) records an error with file,
  line, column and key path, and returns the default. Nothing stops at the first problem,
  so one run reports them all.

A section can be *lenient* (a disabled platform): unset variables and missing or empty
secrets are then not errors, and a key whose value used an unset variable reads as absent.
A whole document is read that way for unset variables when its command needs no secret
(`status`, `pairing`: [`Doc::unset_ok`]), except in paths, which say where to look.
*/

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Secret;
use super::duration;
use super::error::{ConfigError, did_you_mean, line_col};
use super::expand::{self, ExpandError};

/// The document being read: its label for messages, its text for line numbers, and
/// where `${VAR}` values come from.
pub(crate) struct Doc<'a> {
    pub(crate) file: String,
    pub(crate) text: &'a str,
    pub(crate) env: &'a dyn Fn(&str) -> Option<String>,
    /// An unset `${VAR}` outside a path reads as absent instead of being an error: the
    /// command reading the config needs no secret (`status` from a shell without the
    /// token variables).
    pub(crate) unset_ok: bool,
}

impl Doc<'_> {
    /// An error at byte `span` (if any) about `key` (if any).
    pub(crate) fn error(&self, span: Option<Range<usize>>, key: Option<String>, message: String) -> ConfigError {
        let position = span.map(|s| line_col(self.text, s.start));
        ConfigError { file: self.file.clone(), position, key, message }
    }
}

type Value<'a> = Spanned<DeValue<'a>>;

/// One table of the config (`[gateway]`, `[platforms.NAME]` ...), read key by key.
/// Every getter records the key as known; a key nobody asked for is an error naming
/// the nearest known key. Problems are recorded, not returned, so one pass reports them all.
pub struct Section<'a> {
    doc: &'a Doc<'a>,
    /// Dotted path of this table (`platforms.tg`); empty for the document root.
    path: String,
    /// `None` when the table is absent from the file: every getter then returns its default.
    table: Option<&'a DeTable<'a>>,
    /// Where "missing key" errors point: the table header; `None` when the table is
    /// absent from the file (or is the root), so the error names the file only.
    span: Option<Range<usize>>,
    /// Keys some getter asked for.
    known: Vec<String>,
    /// Keys whose value used an unset variable in a lenient section; they read as absent.
    muted: Vec<String>,
    lenient: bool,
    check_unknown: bool,
    errors: Vec<ConfigError>,
}

impl<'a> Section<'a> {
    fn new(doc: &'a Doc<'a>, path: String, table: Option<&'a DeTable<'a>>, span: Option<Range<usize>>) -> Section<'a> {
        let (known, muted, errors) = (Vec::new(), Vec::new(), Vec::new());
        Section { doc, path, table, span, known, muted, lenient: false, check_unknown: true, errors }
    }

    /// The whole document, whose keys are the top-level sections.
    pub(crate) fn root(doc: &'a Doc<'a>, table: &'a DeTable<'a>) -> Section<'a> {
        Section::new(doc, String::new(), Some(table), None)
    }

    /// The dotted path of this table, e.g. `platforms.tg`.
    pub fn table_path(&self) -> &str {
        &self.path
    }

    /// A string (with `${VAR}` expanded), or `None` when the key is absent.
    pub fn string(&mut self, key: &str) -> Option<String> {
        self.string_with(key, self.lenient || self.doc.unset_ok)
    }

    /// [`Section::string`], where an unset variable reads as absent only if `unset_ok`.
    fn string_with(&mut self, key: &str, unset_ok: bool) -> Option<String> {
        let value = self.lookup(key)?;
        let DeValue::String(raw) = value.get_ref() else {
            self.wrong_type(key, value, "a string");
            return None;
        };
        self.expand_with(key, raw, value.span(), unset_ok)
    }

    pub fn string_or(&mut self, key: &str, default: &str) -> String {
        self.string(key).unwrap_or_else(|| default.to_string())
    }

    /// A required credential: absent or empty after expansion is an error (except in a
    /// lenient section, where it reads as an empty secret). Its value never appears in
    /// an error message.
    pub fn secret(&mut self, key: &str) -> Secret {
        let Some(value) = self.lookup(key) else {
            if !self.lenient {
                let message = "required, but missing (or set `enabled = false` on this platform)";
                self.error_at(self.span.clone(), key, message.to_string());
            }
            return Secret::default();
        };
        let DeValue::String(raw) = value.get_ref() else {
            self.wrong_type(key, value, "a string");
            return Secret::default();
        };
        let Some(text) = self.expand(key, raw, value.span()) else {
            return Secret::default();
        };
        if text.is_empty() && !self.lenient {
            // Quoting `raw` is safe here: every literal character and `$$` in it would
            // have produced output, so an empty result means it holds only `${VAR}`s.
            let why = if raw.is_empty() { String::new() } else { format!(" (`{raw}` expanded to nothing)") };
            let message = format!("the secret is empty{why}; set it, or set `enabled = false` on this platform");
            self.error_at(value.span(), key, message);
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            // Otherwise it breaks the request URL, and the error blames `api_base`.
            let message = "contains a space or a line break, which no token does (a stray newline in the \
                           environment file, or a pasted label?); set it to the token alone";
            self.error_at(value.span(), key, message.to_string());
        }
        Secret::new(text)
    }

    /// A duration string like `"30s"`, or `None` when the key is absent or invalid.
    pub fn duration(&mut self, key: &str) -> Option<Duration> {
        let value = self.lookup(key)?;
        let raw = match value.get_ref() {
            DeValue::String(raw) => raw,
            DeValue::Integer(n) => {
                // A bare number is the most likely mistake; show the fix with its digits.
                let digits = if n.radix() == 10 { n.as_str() } else { "30" };
                let message = format!("expected a duration string, found integer (write \"{digits}s\")");
                self.error_at(value.span(), key, message);
                return None;
            }
            _ => {
                self.wrong_type(key, value, "a duration string like \"30s\"");
                return None;
            }
        };
        let text = self.expand(key, raw, value.span())?;
        duration::parse(&text).map_err(|message| self.error_at(value.span(), key, message)).ok()
    }

    pub fn duration_or(&mut self, key: &str, default: Duration) -> Duration {
        self.duration(key).unwrap_or(default)
    }

    pub fn u32_or(&mut self, key: &str, default: u32) -> u32 {
        self.u32(key).unwrap_or(default)
    }

    /// A whole number up to `u32::MAX`, or `None` when absent or invalid.
    pub fn u32(&mut self, key: &str) -> Option<u32> {
        // `unsigned` checked the bound, so the conversion cannot fail.
        self.unsigned(key, u32::MAX.into()).and_then(|n| u32::try_from(n).ok())
    }

    pub fn u64_or(&mut self, key: &str, default: u64) -> u64 {
        self.unsigned(key, u64::MAX).unwrap_or(default)
    }

    /// A number (TOML float or integer), or `None` when absent or invalid.
    pub fn float(&mut self, key: &str) -> Option<f64> {
        let value = self.lookup(key)?;
        // TOML number syntax allows `_` separators; Rust's parser does not.
        let number = |text: &str| text.replace('_', "").parse::<f64>().ok();
        let parsed = match value.get_ref() {
            DeValue::Float(f) => number(f.as_str()),
            DeValue::Integer(n) if n.radix() == 10 => number(n.as_str()),
            _ => None,
        };
        if parsed.is_none() {
            self.wrong_type(key, value, "a number");
        }
        parsed
    }

    pub fn bool_or(&mut self, key: &str, default: bool) -> bool {
        self.bool(key).unwrap_or(default)
    }

    /// `true` or `false`, or `None` when absent or invalid (for settings that fall back
    /// to another section's value).
    pub fn bool(&mut self, key: &str) -> Option<bool> {
        let value = self.lookup(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(key, value, "true or false");
                None
            }
        }
    }

    /// A list of strings, each with `${VAR}` expanded; `None` when absent or invalid.
    pub fn string_list(&mut self, key: &str) -> Option<Vec<String>> {
        let value = self.lookup(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(key, value, "a list of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref() {
                DeValue::String(raw) => out.push(self.expand(key, raw, item.span())?),
                other => {
                    let message = format!("expected a list of strings, found {} in it", other.type_str());
                    self.error_at(item.span(), key, message);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A filesystem path (a non-empty string), or `None` when absent or invalid.
    pub fn path(&mut self, key: &str) -> Option<PathBuf> {
        // Strict even when secrets are not needed: a path with a missing part would send
        // `status` to look in the wrong place.
        let text = self.string_with(key, self.lenient)?;
        if text.is_empty() {
            self.invalid(key, "must not be empty");
            return None;
        }
        Some(PathBuf::from(text))
    }

    pub fn path_or(&mut self, key: &str, default: &str) -> PathBuf {
        self.path(key).unwrap_or_else(|| PathBuf::from(default))
    }

    /// One of a fixed set of words (`log_level = "debug"`), mapped through `choices`.
    /// Anything else is an error listing the choices.
    pub fn choice<T: Clone>(&mut self, key: &str, choices: &[(&str, T)], default: T) -> T {
        let Some(word) = self.string(key) else { return default };
        if let Some((_, v)) = choices.iter().find(|(name, _)| *name == word) {
            return v.clone();
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let hint = did_you_mean(&word, names.iter().copied());
        self.invalid(key, &format!("unknown value `{word}`{hint}; expected one of: {}", names.join(", ")));
        default
    }

    /// A message about `key` that is not an error (a warning), pointing at the key.
    pub(crate) fn note(&mut self, key: &str, message: &str) -> ConfigError {
        let span = self.table.and_then(|t| t.get_key_value(key)).map(|(k, _)| k.span()).or_else(|| self.span.clone());
        self.doc.error(span, Some(self.key_path(key)), message.to_string())
    }

    /// Record a problem with the value of `key` (a bad URL, a value out of range).
    /// Points at the value when present, else at the table header.
    pub fn invalid(&mut self, key: &str, message: &str) {
        if self.muted.iter().any(|k| k == key) {
            // The value came from an unset variable in a disabled platform: not an error.
            return;
        }
        let span = self.lookup(key).map(Spanned::span).or_else(|| self.span.clone());
        self.error_at(span, key, message.to_string());
    }

    /// Every problem recorded, plus one per key present in the table that no getter
    /// asked for, with the nearest known key as a suggestion.
    pub fn finish(mut self) -> Vec<ConfigError> {
        if let Some(table) = self.table
            && self.check_unknown
        {
            for (key, value) in table.iter() {
                let name: &str = key.get_ref();
                if self.known.iter().any(|k| k == name) {
                    continue;
                }
                let what = if self.path.is_empty() && value.get_ref().is_table() { "section" } else { "key" };
                let hint = did_you_mean(name, self.known.iter().map(String::as_str));
                let error =
                    self.doc.error(Some(key.span()), Some(self.key_path(name)), format!("unknown {what}{hint}"));
                self.errors.push(error);
            }
        }
        self.errors
    }

    /// The sub-table `key` (empty when absent). A non-table value is a type error.
    pub(crate) fn section(&mut self, key: &str) -> Section<'a> {
        let path = self.key_path(key);
        let Some(value) = self.lookup(key) else {
            return Section::new(self.doc, path, None, None);
        };
        match value.get_ref() {
            DeValue::Table(table) => Section::new(self.doc, path, Some(table), Some(value.span())),
            _ => {
                self.wrong_type(key, value, "a table");
                Section::new(self.doc, path, None, Some(value.span()))
            }
        }
    }

    /// Every entry of this table as a named sub-table (`[platforms.*]`), in file-key order.
    /// Entries that are not tables are type errors and left out.
    pub(crate) fn sections(&mut self) -> Vec<(String, Section<'a>)> {
        let Some(table) = self.table else { return Vec::new() };
        let mut out = Vec::new();
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            if value.get_ref().is_table() {
                out.push((name.to_string(), self.section(name)));
            } else {
                self.lookup(name);
                self.wrong_type(name, value, "a table");
            }
        }
        out
    }

    /// Record a problem with the key itself (not its value), pointing at the key.
    pub(crate) fn key_error(&mut self, key: &str, message: &str) {
        let span = self.table.and_then(|t| t.get_key_value(key)).map(|(k, _)| k.span()).or_else(|| self.span.clone());
        self.error_at(span, key, message.to_string());
    }

    /// Make unset variables and missing or empty secrets not errors (a disabled platform).
    pub(crate) fn set_lenient(&mut self, lenient: bool) {
        self.lenient = lenient;
    }

    /// Do not report unknown keys: used when the table's schema is unknown (bad `kind`),
    /// where every key would be reported as unknown.
    pub(crate) fn skip_unknown_keys(&mut self) {
        self.check_unknown = false;
    }

    /// Mark `key` known and return its value, if present.
    fn lookup(&mut self, key: &str) -> Option<&'a Value<'a>> {
        if !self.known.iter().any(|k| k == key) {
            self.known.push(key.to_string());
        }
        self.table?.get(key)
    }

    /// A whole number in `0..=max`.
    fn unsigned(&mut self, key: &str, max: u64) -> Option<u64> {
        let value = self.lookup(key)?;
        let DeValue::Integer(n) = value.get_ref() else {
            self.wrong_type(key, value, "an integer");
            return None;
        };
        match u64::from_str_radix(n.as_str(), n.radix()) {
            Ok(n) if n <= max => Some(n),
            _ => {
                self.error_at(value.span(), key, format!("must be a whole number from 0 to {max}"));
                None
            }
        }
    }

    /// `raw` with `${VAR}`s expanded; `None` (and an error, unless muted) when it cannot be.
    fn expand(&mut self, key: &str, raw: &str, span: Range<usize>) -> Option<String> {
        self.expand_with(key, raw, span, self.lenient || self.doc.unset_ok)
    }

    /// [`Section::expand`], where an unset variable mutes the key only if `unset_ok`.
    fn expand_with(&mut self, key: &str, raw: &str, span: Range<usize>, unset_ok: bool) -> Option<String> {
        match expand::expand(raw, self.doc.env) {
            Ok(text) => Some(text),
            Err(ExpandError::Unset(_)) if unset_ok => {
                self.muted.push(key.to_string());
                None
            }
            Err(e) => {
                self.error_at(span, key, e.to_string());
                None
            }
        }
    }

    fn wrong_type(&mut self, key: &str, value: &Value<'_>, expected: &str) {
        let message = format!("expected {expected}, found {}", value.get_ref().type_str());
        self.error_at(value.span(), key, message);
    }

    fn error_at(&mut self, span: impl Into<Option<Range<usize>>>, key: &str, message: String) {
        let error = self.doc.error(span.into(), Some(self.key_path(key)), message);
        self.errors.push(error);
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{key}", self.path) }
    }
}

#[cfg(test)]
impl Section<'static> {
    /// A `[platforms.test]` table holding `toml` (keys only, no header), with `env` as
    /// the environment: for testing a platform kind's `parse`. Call [`Section::finish`]
    /// to get the problems. The text is leaked so the section can outlive this call,
    /// which is harmless in a test.
    ///
    /// Panics if `toml` is not valid TOML (a bug in the test).
    pub fn new_for_test(toml: &str, env: &[(&str, &str)]) -> Section<'static> {
        let text: &'static str = Box::leak(toml.to_string().into_boxed_str());
        let vars: Vec<(String, String)> = env.iter().map(|&(k, v)| (k.to_string(), v.to_string())).collect();
        let lookup = move |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let env: &'static dyn Fn(&str) -> Option<String> = Box::leak(Box::new(lookup));
        let doc = Box::leak(Box::new(Doc { file: "test.toml".to_string(), text, env, unset_ok: false }));
        let table = DeTable::parse(text).expect("test TOML must parse");
        let table: &'static DeTable<'static> = Box::leak(Box::new(table.into_inner()));
        Section::new(doc, "platforms.test".to_string(), Some(table), None)
    }
}
