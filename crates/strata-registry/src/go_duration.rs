//! Durations written the way Go's `time.ParseDuration` reads them ("15s", "1m30s", "1.5s",
//! "0.001s", "500ms"), which is how Consul clients send session TTLs, lock delays and blocking
//! waits. `humantime` (used for Strata's own settings) reads neither fractions nor `µs`, and
//! Patroni, for one, sends a lock delay of "0.001s".

use std::time::Duration;

/// Parses a Go duration: an optional sign, then one or more decimal numbers (with an optional
/// fraction), each followed by a unit (`ns`, `us`, `µs`, `μs`, `ms`, `s`, `m`, `h`). "0" alone
/// is zero. A negative duration, a missing unit or one past `u64` nanoseconds is an error.
pub fn parse(text: &str) -> Result<Duration, String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let duration = parse_unsigned(text, unsigned)?;
    // Go accepts "-0s"; a real negative duration is of no use to a TTL, a delay or a wait.
    if negative && !duration.is_zero() {
        return Err(format!("negative duration {text:?}"));
    }
    Ok(duration)
}

fn parse_unsigned(text: &str, unsigned: &str) -> Result<Duration, String> {
    let invalid = || format!("invalid duration {text:?}");
    let mut rest = unsigned;
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(invalid)?;
        let (number, after) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid());
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, remaining) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("unknown unit {unit:?} in duration {text:?}")),
        };
        let whole_value: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid())?
        };
        total_nanos = total_nanos
            .checked_add(whole_value.checked_mul(unit_nanos).ok_or_else(invalid)?)
            .ok_or_else(invalid)?;
        // The fraction, digit by digit, to the nanosecond (Go truncates the same way).
        let mut scale = unit_nanos;
        for digit in fraction.chars() {
            let digit = u128::from(digit.to_digit(10).ok_or_else(invalid)?);
            scale /= 10;
            total_nanos += digit * scale;
        }
        rest = remaining;
    }
    let nanos = u64::try_from(total_nanos).map_err(|_| invalid())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_consul_clients_send() {
        let cases = [
            ("15s", Duration::from_secs(15)),
            ("0.001s", Duration::from_millis(1)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("500ms", Duration::from_millis(500)),
            ("2h", Duration::from_secs(7200)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("0", Duration::ZERO),
            (".5s", Duration::from_millis(500)),
            ("86400s", Duration::from_secs(86400)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).unwrap(), want, "{text}");
        }
    }

    #[test]
    fn refuses_what_go_refuses() {
        for text in [
            "",
            "s",
            "15",
            "15x",
            "1..5s",
            "-3s",
            ".s",
            "9999999999999999999h",
        ] {
            assert!(parse(text).is_err(), "{text:?} parsed");
        }
    }

    proptest! {
        #[test]
        fn never_panics(text in "[-+0-9.µa-z]{0,24}") {
            let _ = parse(&text);
        }
    }
}
