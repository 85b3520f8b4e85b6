//! ISO 8601 durations (`PT1H`, `PT2S`, `P1DT30M`), the format the spec uses for
//! every interval and frequency.
use std::{fmt, time::Duration};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an ISO 8601 duration ({reason}); examples: PT1H, PT30S, P1DT12H")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses the day-time subset of ISO 8601 durations: `P[nW|nD][T[nH][nM][n[.f]S]]`.
/// Years and months are refused: their length depends on the calendar.
/// Each designator at most once and in that order; all arithmetic is
/// checked, so a huge number is refused, never wrapped.
pub fn parse_iso8601(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError { input: input.to_string(), reason };
    let rest = input.strip_prefix('P').ok_or_else(|| err("it must start with P"))?;
    if rest.is_empty() || rest == "T" {
        return Err(err("it has no components"));
    }
    let (date, time) = match rest.split_once('T') {
        Some((_, "")) => return Err(err("nothing follows T")),
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    const TOO_LONG: &str = "it is too long";
    let mut secs: u64 = 0;
    let mut nanos: u32 = 0;
    // Seconds per unit, in the order the designators must come (P1W1D stays
    // accepted, as it always was).
    let mut take = |part: &str, units: &[(char, u64)]| -> Result<(), &'static str> {
        let mut next = 0;
        for (value, unit) in components(part)? {
            let Some(at) = units.iter().position(|&(u, _)| u == unit) else {
                return Err(match unit {
                    'Y' | 'M' if units[0].0 == 'W' => "years and months have no fixed length",
                    _ => "unknown unit",
                });
            };
            if at < next {
                return Err("a designator repeats or is out of order (W or D, then T, H, M, S)");
            }
            next = at + 1;
            let n = if unit == 'S' {
                let (n, frac) = seconds(value)?;
                nanos = frac;
                n
            } else {
                whole(value)?
            };
            secs = n.checked_mul(units[at].1).and_then(|s| s.checked_add(secs)).ok_or(TOO_LONG)?;
        }
        Ok(())
    };
    take(date, &[('W', 7 * 86_400), ('D', 86_400)]).map_err(err)?;
    if let Some(time) = time {
        take(time, &[('H', 3_600), ('M', 60), ('S', 1)]).map_err(err)?;
    }
    Ok(Duration::new(secs, nanos))
}

/// Splits `12H30M` into `[("12", 'H'), ("30", 'M')]`.
fn components(s: &str) -> Result<Vec<(&str, char)>, &'static str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c.is_ascii_alphabetic() {
            if i == start {
                return Err("a unit has no number before it");
            }
            out.push((&s[start..i], c));
            start = i + 1;
        }
    }
    if start != s.len() {
        return Err("a number has no unit after it");
    }
    Ok(out)
}

fn whole(v: &str) -> Result<u64, &'static str> {
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err("only seconds may have a fraction");
    }
    v.parse().map_err(|_| "a number is too large")
}

/// Whole seconds and the fraction's nanoseconds.
fn seconds(v: &str) -> Result<(u64, u32), &'static str> {
    let Some((int, frac)) = v.split_once(['.', ',']) else { return Ok((whole(v)?, 0)) };
    if int.is_empty() {
        return Err("a fraction needs a digit before its point (PT0.5S)");
    }
    if frac.is_empty() {
        return Err("a point needs a digit after it (PT1.5S, or PT1S)");
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("seconds take at most 9 fraction digits");
    }
    let frac_ns = format!("{frac:0<9}").parse().map_err(|_| "seconds take at most 9 fraction digits")?;
    Ok((whole(int)?, frac_ns))
}

/// Formats as the shortest ISO 8601 form that parses back to the same value.
pub struct Iso8601(pub Duration);

impl fmt::Display for Iso8601 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.0.as_secs();
        let nanos = self.0.subsec_nanos();
        let (d, h, m, s) = (total / 86_400, total / 3_600 % 24, total / 60 % 60, total % 60);
        f.write_str("P")?;
        if d > 0 {
            write!(f, "{d}D")?;
        }
        if h == 0 && m == 0 && s == 0 && nanos == 0 {
            return if d == 0 { f.write_str("T0S") } else { Ok(()) };
        }
        f.write_str("T")?;
        if h > 0 {
            write!(f, "{h}H")?;
        }
        if m > 0 {
            write!(f, "{m}M")?;
        }
        if s > 0 || nanos > 0 {
            if nanos > 0 {
                let frac = format!("{nanos:09}");
                write!(f, "{s}.{}S", frac.trim_end_matches('0'))?;
            } else {
                write!(f, "{s}S")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_spec_examples() {
        assert_eq!(parse_iso8601("PT1H").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_iso8601("PT7M").unwrap(), Duration::from_secs(420));
        assert_eq!(parse_iso8601("PT5H").unwrap(), Duration::from_secs(18_000));
        assert_eq!(parse_iso8601("PT13H").unwrap(), Duration::from_secs(46_800));
        assert_eq!(parse_iso8601("PT2S").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_iso8601("P1DT2H3M4S").unwrap(), Duration::from_secs(93_784));
        assert_eq!(parse_iso8601("P2W").unwrap(), Duration::from_secs(14 * 86_400));
        assert_eq!(parse_iso8601("PT0.25S").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_iso8601("PT1,5S").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "",
            "P",
            "PT",
            "1H",
            "PT1",
            "PTH",
            "P1Y",
            "P1M",
            "PT1.5M",
            "PT1S2M",
            "PT1X",
            "pt1h",
            "PT-1S",
            "PT1.1234567891S",
            "P1DT",
            "PT1H1H",
            "P1D1D",
            "PT1M1H",
            "P1D1W",
            "PT1S1S",
        ] {
            assert!(parse_iso8601(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn error_names_input_and_reason() {
        let e = parse_iso8601("P1Y").unwrap_err().to_string();
        assert!(e.contains("`P1Y`") && e.contains("years and months"), "{e}");
    }

    #[test]
    fn formats_round_trip() {
        for s in ["PT1H", "PT7M", "PT2S", "P1DT2H3M4S", "P1D", "PT0.25S", "PT0S", "PT1H30M"] {
            let d = parse_iso8601(s).unwrap();
            assert_eq!(Iso8601(d).to_string(), s);
            assert_eq!(parse_iso8601(&Iso8601(d).to_string()).unwrap(), d);
        }
    }

    fn reason(input: &str) -> &'static str {
        parse_iso8601(input).unwrap_err().reason
    }

    #[test]
    fn huge_numbers_are_refused_not_wrapped() {
        // Found by fuzzing: wrapped to a 5-second window in release builds.
        assert_eq!(reason("PT664613997892457936451903530140172293S"), "a number is too large");
        assert_eq!(reason("PT18446744073709551615H"), "it is too long");
        assert_eq!(reason("P18446744073709551615W"), "it is too long");
        assert_eq!(reason("P213503982334601DT8H"), "it is too long", "in range alone, too long together");
        let max = format!("PT{}S", u64::MAX);
        assert_eq!(parse_iso8601(&max).unwrap(), Duration::from_secs(u64::MAX));
        assert_eq!(reason(&format!("PT1M{}S", u64::MAX)), "it is too long");
    }

    #[test]
    fn designators_come_once_and_in_order() {
        for bad in ["PT1H1H", "P1D1D", "PT1M1H", "PT1S1M", "P1D1W", "PT2S2S"] {
            assert!(reason(bad).contains("repeats or is out of order"), "{bad}: {}", reason(bad));
        }
        assert_eq!(parse_iso8601("P1DT1H1M1S").unwrap(), Duration::from_secs(90_061));
    }

    #[test]
    fn fractions_need_digits_on_both_sides() {
        assert_eq!(reason("PT1.S"), "a point needs a digit after it (PT1.5S, or PT1S)");
        assert_eq!(reason("PT.5S"), "a fraction needs a digit before its point (PT0.5S)");
        assert_eq!(reason("PT,5S"), "a fraction needs a digit before its point (PT0.5S)");
        assert_eq!(reason("PT1.5H"), "only seconds may have a fraction");
        assert_eq!(parse_iso8601("PT0.5S").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_iso8601("PT1.000000001S").unwrap(), Duration::new(1, 1));
    }
}
