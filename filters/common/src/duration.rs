//! Durations in configuration: a whole number with a unit, `250ms`, `30s`, `5m`, `12h`, `7d`,
//! or seconds with a fraction as Envoy's configuration writes them (protobuf JSON), `1.5s`,
//! `0.250s`, so a value pasted from an Envoy config means the same here.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Some((whole, fraction)) = text.strip_suffix('s').and_then(|seconds| seconds.split_once('.')) {
        return fractional_seconds(text, whole, fraction);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}` is not a duration: use a whole number with ms, s, m, h or d (`500ms`, `30s`)"
            ))
        }
    };
    let number: u64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration: the number is missing or too large"))?;
    number.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or_else(|| format!("`{text}` is too long"))
}

/// `whole.fraction` seconds, written with up to 9 decimals as protobuf's `Duration` allows,
/// but whole milliseconds: the filters count time (and Envoy takes call timeouts) in ms, and a
/// `0.0001s` timeout must not silently become a timeout of 0 ms.
fn fractional_seconds(text: &str, whole: &str, fraction: &str) -> Result<Duration, String> {
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_digit());
    if !digits(whole) || !digits(fraction) || fraction.len() > 9 {
        return Err(format!("`{text}` is not a duration: write seconds as `1.5s` (at most 9 decimals)"));
    }
    let seconds: u64 = whole.parse().map_err(|_| format!("`{text}` is too long"))?;
    let nanos: u32 = format!("{fraction:0<9}").parse().map_err(|_| format!("`{text}` is not a duration"))?;
    if !nanos.is_multiple_of(1_000_000) {
        return Err(format!("`{text}` is finer than a millisecond"));
    }
    Ok(Duration::new(seconds, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        for (text, millis) in
            [("0ms", 0), ("250ms", 250), ("1s", 1000), ("15m", 900_000), ("2h", 7_200_000), ("7d", 604_800_000)]
        {
            assert_eq!(parse_duration(text), Ok(Duration::from_millis(millis)), "{text}");
        }
        for text in
            ["", "s", "1", "1w", "1.5m", "-1s", " 1s", "1 s", "1S", "99999999999999999999s", "999999999999999999d"]
        {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }

    #[test]
    fn envoy_spells_seconds_with_a_fraction() {
        for (text, nanos) in
            [("1.5s", 1_500_000_000), ("0.250s", 250_000_000), ("0.001000000s", 1_000_000), ("300.0s", 300_000_000_000)]
        {
            assert_eq!(parse_duration(text), Ok(Duration::from_nanos(nanos)), "{text}");
        }
        for text in [
            ".5s",
            "1.s",
            "1.5",
            "1.5ms",
            "1.0000000001s",
            "0.0001s",
            "0.000000001s",
            "1.-5s",
            "1.5e3s",
            "99999999999999999999.5s",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
