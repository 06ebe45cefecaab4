/*!
Configuration errors: one [`ConfigError`] per problem, all of them in [`ConfigErrors`].

A config error has to be fixable without reading our source, so each one carries where
it is (file, 1-based line and column), which key it is about (the dotted path such as
`reconnect.max_attempts`) and what is wrong, often with a "did you mean" hint from
[`nearest`]. The loader collects every problem before failing, so a user fixes a file in
one round instead of one error per run.

Messages never quote a secret: getters only ever put key names, variable names and
non-secret values (durations, log levels, kinds) into them.
*/

use std::fmt;

/// One problem in a config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file label: its path, or `<embedded default>`.
    pub file: String,
    /// 1-based line and column (in characters), when the problem has a place in the text.
    pub position: Option<(usize, usize)>,
    /// The dotted key path (`platforms.tg.token`), when the problem is about one key.
    pub key: Option<String>,
    /// What is wrong, and how to fix it when we can tell.
    pub message: String,
}

impl fmt::Display for ConfigError {
    /// `gateway.toml:12:1: reconnect.max_atempts: unknown key (did you mean `max_attempts`?)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some((line, column)) = self.position {
            write!(f, ":{line}:{column}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a config file, in the order they appear in it.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Environment values at least this long never appear in an error message.
const MIN_SCRUBBED: usize = 6;

impl ConfigErrors {
    /// Sort by place in the file (problems without a place first), so the report reads
    /// top to bottom whatever order the sections were checked in.
    pub(crate) fn sorted(mut errors: Vec<ConfigError>) -> ConfigErrors {
        errors.sort_by_key(|e| e.position);
        errors.dedup();
        ConfigErrors(errors)
    }

    /// Replace every environment value in the messages by its `${NAME}`. Values shorter
    /// than [`MIN_SCRUBBED`] are left: they are no secrets, and replacing them would
    /// garble ordinary words.
    pub(crate) fn without_values(mut self, used: &[(String, String)]) -> ConfigErrors {
        let mut used: Vec<&(String, String)> = used.iter().filter(|(_, v)| v.len() >= MIN_SCRUBBED).collect();
        // Longest first, so a value that contains another is replaced whole.
        used.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
        for error in &mut self.0 {
            for (name, value) in &used {
                if error.message.contains(value.as_str()) {
                    error.message = error.message.replace(value.as_str(), &format!("${{{name}}}"));
                }
            }
        }
        self
    }

    /// One error about the file as a whole (unreadable, missing).
    pub(crate) fn whole_file(file: &str, message: String) -> ConfigErrors {
        ConfigErrors(vec![ConfigError { file: file.to_string(), position: None, key: None, message }])
    }
}

impl fmt::Display for ConfigErrors {
    /// One error per line, each ending in a newline (ready for `eprint!`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The 1-based line and column (counted in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    // Spans from the parser are on char boundaries; stepping back keeps a bad one harmless.
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// For a "duplicate key" at byte `offset` of `text`: the dotted key path it is about,
/// and a message saying whether it is a key or a table and where it was first defined.
/// A line-based reading of the text, good for the `key = value` and `[table]` lines a
/// gateway config holds; `None` when the line is neither.
pub(crate) fn duplicate(text: &str, offset: usize) -> Option<(String, String)> {
    let (line_no, _) = line_col(text, offset);
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.get(line_no - 1)?.trim();
    let header = |l: &str| {
        let l = l.trim();
        let inner = l.strip_prefix('[')?.split(']').next()?;
        Some(inner.trim_start_matches('[').split('.').map(|p| p.trim().trim_matches('"')).collect::<Vec<_>>().join("."))
    };
    let first =
        |found: &dyn Fn(&str) -> bool, from: usize| (from..line_no - 1).find(|&i| found(lines[i])).map(|i| i + 1);
    let at = |first: Option<usize>| first.map_or(String::new(), |n| format!(" (first defined at line {n})"));
    if line.starts_with('[') {
        let table = header(line)?;
        let first = first(&|l| header(l).as_deref() == Some(table.as_str()), 0);
        return Some((table, format!("duplicate table{}; merge the two into one", at(first))));
    }
    let key = line.split('=').next()?.trim().trim_matches('"').to_string();
    // The table this key is in: the nearest header above it.
    let table_line = (0..line_no - 1).rev().find(|&i| header(lines[i]).is_some());
    let table = table_line.and_then(|i| header(lines[i]));
    let is_key = |l: &str| l.split('=').next().is_some_and(|k| l.contains('=') && k.trim().trim_matches('"') == key);
    let first = first(&is_key, table_line.map_or(0, |i| i + 1));
    let path = table.map_or(key.clone(), |t| format!("{t}.{key}"));
    Some((path, format!("duplicate key{}; keep one", at(first))))
}

/// ` (did you mean `X`?)` for the candidate closest to `wrong`, or nothing when none is
/// close enough to be a plausible typo.
pub(crate) fn did_you_mean<'c>(wrong: &str, candidates: impl IntoIterator<Item = &'c str>) -> String {
    match nearest(wrong, candidates) {
        Some(best) => format!(" (did you mean `{best}`?)"),
        None => String::new(),
    }
}

/// The candidate with the smallest edit distance to `wrong`, if at most a third of the
/// longer word differs (`tokn` → `token`, `max_atempts` → `max_attempts`, but `tg` is
/// not `telegram`).
pub(crate) fn nearest<'c>(wrong: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (edit_distance(wrong, c), c))
        .filter(|&(d, c)| d > 0 && d * 3 <= wrong.chars().count().max(c.chars().count()))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

/// Edit distance over characters where an insertion, a deletion, a substitution or a
/// swap of two neighbours each count one (optimal string alignment): swapped letters
/// (`wran`, `bto`) are the commonest typo, and plain Levenshtein counts them as two.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    // d[i][j] = distance between a[..i] and b[..j].
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1).min(d[i][j - 1] + 1).min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("max_atempts", "max_attempts"), 1);
        assert_eq!(edit_distance("tokn", "token"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("wran", "warn"), 1, "a swap is one edit");
    }

    #[test]
    fn nearest_ignores_far_candidates() {
        assert_eq!(nearest("max_atempts", ["base", "cap", "max_attempts"]), Some("max_attempts"));
        assert_eq!(nearest("tg", ["console", "telegram"]), None);
        assert_eq!(nearest("base", ["base"]), None, "an exact match is not a typo");
    }

    #[test]
    fn line_col_is_one_based_and_counts_chars() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        // `=` after the two-byte `é` is the fourth character of line 2.
        assert_eq!(line_col(text, 10), (2, 4));
    }

    #[test]
    fn display_lists_one_error_per_line() {
        let e = |line| ConfigError {
            file: "gateway.toml".into(),
            position: Some((line, 1)),
            key: Some("reconnect.max_atempts".into()),
            message: "unknown key".into(),
        };
        let text = ConfigErrors(vec![e(3), e(4)]).to_string();
        assert_eq!(
            text,
            "gateway.toml:3:1: reconnect.max_atempts: unknown key\ngateway.toml:4:1: reconnect.max_atempts: unknown key\n"
        );
    }
}
