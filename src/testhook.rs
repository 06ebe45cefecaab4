/*!
Panics on request, so that tests can prove a panic is never silent.

[`panic_point`] marks a place where a real panic could happen (a send, a turn, a write).
In a debug build (what `cargo test` runs) it panics when the environment variable
`SWITCHBOARD_TEST_PANIC` names that point; in a release build it is an empty function
the compiler removes, and the variable means nothing.

The variable is a comma-separated list of points, each optionally with a count:
`outbox-send` panics every time, `outbox-send:1` only the first time in this process,
`turn-run:2,typing:1` the first two turns and the first typing indicator. It is read
once, at the first point reached.

Points: `adapter-io` (a blocking call of [`crate::adapter::Context::interruptible`]),
`outbox-send`, `turn-run`, `router`, `typing`, `directory-write`.
*/

/// The environment variable naming the points that panic.
pub const VAR: &str = "SWITCHBOARD_TEST_PANIC";

/// Panic if [`VAR`] names `point` (and its count is not used up). Debug builds only.
#[cfg(debug_assertions)]
pub fn panic_point(point: &str) {
    use std::sync::{Mutex, OnceLock};
    static SPEC: OnceLock<Vec<(String, Option<u32>)>> = OnceLock::new();
    // How often each point was reached; only points with a count are counted.
    static HITS: Mutex<Vec<(String, u32)>> = Mutex::new(Vec::new());
    let spec = SPEC.get_or_init(|| parse(&std::env::var(VAR).unwrap_or_default()));
    let Some((_, limit)) = spec.iter().find(|(p, _)| p == point) else { return };
    if let Some(limit) = *limit {
        let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
        let n = match hits.iter_mut().find(|(p, _)| p == point) {
            Some((_, n)) => n,
            None => {
                hits.push((point.to_string(), 0));
                &mut hits.last_mut().expect("just pushed").1
            }
        };
        *n = n.saturating_add(1);
        if *n > limit {
            return;
        }
    }
    panic!("test panic at {point}");
}

/// A release build has no test panics.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn panic_point(_point: &str) {}

/// `a,b:2` → `[("a", None), ("b", Some(2))]`. A count that is not a number means "every
/// time", so a typo panics rather than silently testing nothing.
#[cfg(any(debug_assertions, test))]
fn parse(spec: &str) -> Vec<(String, Option<u32>)> {
    spec.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| match item.split_once(':') {
            Some((point, count)) => (point.to_string(), count.parse().ok()),
            None => (item.to_string(), None),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_points_with_and_without_counts() {
        assert_eq!(
            parse(" outbox-send:1, typing ,,router:x"),
            [("outbox-send".into(), Some(1)), ("typing".into(), None), ("router".into(), None)]
        );
        assert!(parse("").is_empty());
    }

    #[test]
    fn a_point_not_named_does_nothing() {
        // The test process does not set the variable (or not to this name).
        panic_point("no-such-point-in-any-test");
    }
}
