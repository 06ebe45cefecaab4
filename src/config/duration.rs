/*!
Durations written as `"250ms"`, `"30s"`, `"5m"`, `"1h"`.

A unit is mandatory: a bare `30` in a config file is ambiguous (seconds? milliseconds?),
and guessing wrong turns a 30-second backoff into a 30-millisecond busy loop. One number
and one unit is all the config needs, so this is a few lines rather than a dependency.
*/

use std::time::Duration;

/// The units, longest suffix first so that `ms` is not read as `m`.
const UNITS: &[(&str, u64)] = &[("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

/// Parse `<digits><unit>`. The error says what is accepted.
pub(crate) fn parse(text: &str) -> Result<Duration, String> {
    let invalid =
        || format!("invalid duration `{text}`: write a whole number and a unit: ms, s, m or h (e.g. \"30s\")");
    let digits_end = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    if number.is_empty() {
        return Err(invalid());
    }
    let Some(&(_, millis_per_unit)) = UNITS.iter().find(|(suffix, _)| *suffix == unit) else {
        return Err(invalid());
    };
    let millis = number.parse::<u64>().ok().and_then(|n| n.checked_mul(millis_per_unit));
    millis.map(Duration::from_millis).ok_or_else(|| format!("duration `{text}` is too large"))
}

/// The shortest exact spelling of `d` in the units [`parse`] reads (`300s` → `5m`).
/// Sub-millisecond parts, which no config can produce, are dropped.
pub(crate) fn format(d: Duration) -> String {
    let millis = d.as_millis();
    let (suffix, per_unit) = UNITS
        .iter()
        .rev()
        .find(|&&(_, per_unit)| millis > 0 && millis.is_multiple_of(u128::from(per_unit)))
        .copied()
        .unwrap_or(("ms", 1));
    format!("{}{suffix}", millis / u128::from(per_unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_missing_or_unknown_units() {
        for bad in ["30", "30x", "s", "", "1.5s", "-1s", "30 s", "5min"] {
            let err = parse(bad).unwrap_err();
            assert!(err.contains("ms, s, m or h"), "{bad}: {err}");
        }
        assert!(parse("99999999999999999999h").unwrap_err().contains("too large"));
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format(Duration::from_secs(300)), "5m");
        assert_eq!(format(Duration::from_secs(90)), "90s");
        assert_eq!(format(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format(Duration::from_secs(7200)), "2h");
        assert_eq!(format(Duration::ZERO), "0ms");
    }
}
