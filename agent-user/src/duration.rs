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
    let mut nanos: u128 = 0;
    for (value, unit) in components(date).map_err(err)? {
        let secs: u128 = match unit {
            'W' => 7 * 86_400,
            'D' => 86_400,
            'Y' | 'M' => return Err(err("years and months have no fixed length")),
            _ => return Err(err("unknown date unit")),
        };
        nanos += whole(value).map_err(err)? * secs * 1_000_000_000;
    }
    if let Some(time) = time {
        let parts = components(time).map_err(err)?;
        let last = parts.len().saturating_sub(1);
        for (i, (value, unit)) in parts.into_iter().enumerate() {
            nanos += match unit {
                'H' => whole(value).map_err(err)? * 3_600_000_000_000,
                'M' => whole(value).map_err(err)? * 60_000_000_000,
                'S' if i == last => seconds(value).map_err(err)?,
                'S' => return Err(err("S must be the last component")),
                _ => return Err(err("unknown time unit")),
            };
        }
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| err("it is too long"))?;
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
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

fn whole(v: &str) -> Result<u128, &'static str> {
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err("only seconds may have a fraction");
    }
    v.parse().map_err(|_| "a number is too large")
}

fn seconds(v: &str) -> Result<u128, &'static str> {
    let (int, frac) = v.split_once(['.', ',']).unwrap_or((v, ""));
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err("seconds take at most 9 fraction digits");
    }
    let frac_ns: u128 = format!("{frac:0<9}").parse().unwrap_or(0);
    Ok(whole(int)? * 1_000_000_000 + frac_ns)
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
}
