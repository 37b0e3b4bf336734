//! Durations in configuration: a whole number with a unit, `250ms`, `30s`, `5m`, `12h`, `7d`.

use std::time::Duration;

pub fn parse_duration(text: &str) -> Result<Duration, String> {
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
            ["", "s", "1", "1w", "1.5s", "-1s", " 1s", "1 s", "1S", "99999999999999999999s", "999999999999999999d"]
        {
            assert!(parse_duration(text).is_err(), "{text}");
        }
    }
}
