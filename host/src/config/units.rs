//! The two value syntaxes of the config that are not plain YAML: durations in humantime
//! style (`30s`, `1m 30s`, `500ms`) and memory sizes in Kubernetes quantity style (`64Mi`,
//! `1Gi`, `500M`, or a plain number of bytes), so that operators write limits the way they
//! write them in pod specs.

use std::time::Duration;

/// Parse a duration such as `30s` or `1m30s`. A bare number is refused: a unit-less
/// deadline is ambiguous (seconds? milliseconds?), so the message asks for one.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if !text.is_empty() && text.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{text}` has no unit (write e.g. `{text}s` or `{text}ms`)"
        ));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("`{text}` is not a duration ({e}); write e.g. `30s` or `500ms`"))
}

/// Binary (`Ki`, `Mi`, `Gi`, `Ti`) and decimal (`k`, `M`, `G`, `T`) suffixes of Kubernetes
/// quantities that make sense for memory. Milli (`m`) and exponents are left out: a
/// fractional byte count is meaningless here.
const SUFFIXES: [(&str, u64); 8] = [
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

/// Parse a memory size: `64Mi`, `1Gi`, `500M`, or a number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, mult)| text.strip_suffix(suffix).map(|d| (d, *mult)))
        .unwrap_or((text, 1));
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "`{text}` is not a memory size (write a whole number with an optional suffix: Ki, Mi, Gi, Ti, k, M, G, T)"
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn memory_sizes_follow_kubernetes_quantities() {
        assert_eq!(parse_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(parse_bytes("1Gi"), Ok(1 << 30));
        assert_eq!(parse_bytes("500M"), Ok(500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("64MB").is_err());
        assert!(parse_bytes("1.5Gi").is_err());
        assert!(parse_bytes("Mi").is_err());
        assert!(
            parse_bytes("99999999999999Ti")
                .unwrap_err()
                .contains("too large")
        );
    }
}
