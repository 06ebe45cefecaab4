/*!
`${VAR}` expansion in config strings.

Secrets belong in the environment (a systemd `EnvironmentFile`, a shell export), not in a
file that ends up in backups and bug reports, so every string value may name environment
variables: `token = "${TELEGRAM_BOT_TOKEN}"`. The rules are deliberately small:

- `${NAME}` is replaced by the variable's value; `NAME` is `[A-Za-z_][A-Za-z0-9_]*`.
  An unset variable is an error (a silently empty token fails much later and less
  clearly); a variable set to the empty string expands to nothing.
- `$$` is a literal `$`, for the rare value that needs `${` literally.
- Any other `$` is kept as it is, so `"pa$word"` needs no escaping.
*/

use std::fmt;

/// Why a string could not be expanded. Names the variable, never a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ExpandError {
    /// `${NAME}` where `NAME` is not set.
    Unset(String),
    /// `${` without a closing `}`.
    Unterminated,
    /// `${...}` whose content is not a variable name. The content is not kept: a user
    /// who misread the syntax may have pasted the token itself between the braces.
    BadName,
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpandError::Unset(name) => write!(f, "environment variable `{name}` is not set"),
            ExpandError::Unterminated => f.write_str("`${` without a closing `}` (write `$$` for a literal `$`)"),
            ExpandError::BadName => f.write_str(
                "`${...}` must hold a variable name: letters, digits and `_` (write `$$` for a literal `$`)",
            ),
        }
    }
}

/// `raw` with every `${NAME}` replaced by `env(NAME)` and every `$$` by `$`.
pub(crate) fn expand(raw: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let close = tail.find('}').ok_or(ExpandError::Unterminated)?;
            let name = &tail[..close];
            if !is_var_name(name) {
                return Err(ExpandError::BadName);
            }
            out.push_str(&env(name).ok_or_else(|| ExpandError::Unset(name.to_string()))?);
            rest = &tail[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables() {
        assert_eq!(expand("${TOKEN}", &env).unwrap(), "s3cret");
        assert_eq!(expand("a-${TOKEN}-${EMPTY}-b", &env).unwrap(), "a-s3cret--b");
        assert_eq!(expand("no variables", &env).unwrap(), "no variables");
    }

    #[test]
    fn unset_variable_is_named() {
        assert_eq!(expand("x${NOPE}", &env), Err(ExpandError::Unset("NOPE".into())));
        assert!(ExpandError::Unset("NOPE".into()).to_string().contains("`NOPE`"));
    }

    #[test]
    fn dollar_escapes_and_lone_dollars() {
        assert_eq!(expand("$${TOKEN}", &env).unwrap(), "${TOKEN}");
        assert_eq!(expand("pa$word $", &env).unwrap(), "pa$word $");
    }

    #[test]
    fn malformed_references_are_errors() {
        assert_eq!(expand("${TOKEN", &env), Err(ExpandError::Unterminated));
        assert_eq!(expand("${A B}", &env), Err(ExpandError::BadName));
        assert_eq!(expand("${}", &env), Err(ExpandError::BadName));
        assert!(!ExpandError::BadName.to_string().contains("A B"));
    }
}
