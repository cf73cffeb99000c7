//! Kubernetes resource quantities (`500m`, `1.5`, `128Mi`, `1G`, `1e3`), as the API server
//! writes them into `resources.requests`, `capacity` and plugin configs.
//!
//! Conversions round up, as Kubernetes' own `MilliValue`/`Value` do: `0.1m` of CPU is 1
//! milli, `1.5` bytes is 2 bytes. A request is never silently shrunk.

/// Errors of quantity parsing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QuantityError {
    #[error("failed to parse quantity {input:?}: {reason}")]
    Invalid { input: String, reason: &'static str },
    #[error(
        "failed to parse quantity {input:?}: unknown suffix {suffix:?} (use n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent like e3)"
    )]
    Suffix { input: String, suffix: String },
    #[error("failed to convert quantity {input:?}: negative values are not allowed here")]
    Negative { input: String },
    #[error("failed to convert quantity {input:?}: it does not fit in 64 bits")]
    Overflow { input: String },
}

impl QuantityError {
    /// As a `PluginError::InvalidConfig` naming the config field the quantity came from.
    pub fn into_config_error(self, field: &str) -> crate::PluginError {
        crate::PluginError::InvalidConfig(format!("config field `{field}`: {self}"))
    }
}

/// A non-negative quantity: `digits × 10^exp10 × 2^exp2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quantity {
    digits: u128,
    exp10: i32,
    exp2: u32,
}

/// Parse a quantity into its exact parts.
fn parse(input: &str) -> Result<Quantity, QuantityError> {
    let invalid = |reason| QuantityError::Invalid {
        input: input.to_string(),
        reason,
    };
    let text = input.trim();
    if text.is_empty() {
        return Err(invalid("it is empty"));
    }
    let (negative, text) = match text.as_bytes()[0] {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return Err(invalid("it has no digits"));
    }
    if fraction.contains('.') {
        return Err(invalid("it has two decimal points"));
    }
    let all_digits = format!("{whole}{fraction}");
    let significant = all_digits.trim_start_matches('0');
    if significant.len() > 38 {
        return Err(QuantityError::Overflow {
            input: input.to_string(),
        });
    }
    let digits: u128 = if significant.is_empty() {
        0
    } else {
        significant.parse().map_err(|_| invalid("bad digits"))?
    };
    if negative && digits != 0 {
        return Err(QuantityError::Negative {
            input: input.to_string(),
        });
    }
    let mut exp10 = -(fraction.len() as i32);
    let mut exp2 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        other => {
            let exponent = other
                .strip_prefix(['e', 'E'])
                .and_then(|e| e.parse::<i32>().ok())
                .filter(|e| e.abs() <= 60)
                .ok_or_else(|| QuantityError::Suffix {
                    input: input.to_string(),
                    suffix: other.to_string(),
                })?;
            exp10 += exponent;
        }
    }
    Ok(Quantity {
        digits,
        exp10,
        exp2,
    })
}

/// The quantity times `10^scale`, rounded up to an integer.
fn scaled(input: &str, scale: i32) -> Result<u64, QuantityError> {
    let q = parse(input)?;
    let overflow = || QuantityError::Overflow {
        input: input.to_string(),
    };
    let mantissa = q
        .digits
        .checked_mul(1u128.checked_shl(q.exp2).ok_or_else(overflow)?)
        .ok_or_else(overflow)?;
    let exp = q.exp10 + scale;
    let value = if exp >= 0 {
        10u128
            .checked_pow(exp as u32)
            .and_then(|p| mantissa.checked_mul(p))
            .ok_or_else(overflow)?
    } else {
        match 10u128.checked_pow(exp.unsigned_abs()) {
            Some(divisor) => mantissa.div_ceil(divisor),
            // The divisor exceeds any mantissa: a non-zero value rounds up to 1.
            None => u128::from(mantissa != 0),
        }
    };
    u64::try_from(value).map_err(|_| overflow())
}

/// CPU in millicores: `500m` → 500, `1.5` → 1500, `2` → 2000.
pub fn cpu_millis(input: &str) -> Result<u64, QuantityError> {
    scaled(input, 3)
}

/// A byte count (memory, storage): `128Mi` → 134217728, `1G` → 1000000000.
pub fn bytes(input: &str) -> Result<u64, QuantityError> {
    scaled(input, 0)
}

/// A plain count (pods): `110` → 110, `1k` → 1000.
pub fn count(input: &str) -> Result<u64, QuantityError> {
    scaled(input, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("500m"), Ok(500));
        assert_eq!(cpu_millis("1.5"), Ok(1500));
        assert_eq!(cpu_millis("2"), Ok(2000));
        assert_eq!(cpu_millis("0.1m"), Ok(1), "rounds up");
        assert_eq!(cpu_millis("100u"), Ok(1));
        assert_eq!(cpu_millis("1e3"), Ok(1_000_000));
        assert_eq!(cpu_millis("1E-3"), Ok(1));
        assert_eq!(cpu_millis(".5"), Ok(500));
        assert_eq!(cpu_millis("0"), Ok(0));
    }

    #[test]
    fn memory() {
        assert_eq!(bytes("128Mi"), Ok(128 * 1024 * 1024));
        assert_eq!(bytes("1G"), Ok(1_000_000_000));
        assert_eq!(bytes("1.5Gi"), Ok(1_610_612_736));
        assert_eq!(bytes("1e3"), Ok(1000));
        assert_eq!(bytes("1.5"), Ok(2), "rounds up");
        assert_eq!(
            bytes("16Ei"),
            Err(QuantityError::Overflow {
                input: "16Ei".into()
            })
        );
        assert_eq!(bytes("15Ei"), Ok(15 << 60));
        assert_eq!(count("110"), Ok(110));
    }

    #[test]
    fn errors() {
        assert!(matches!(bytes(""), Err(QuantityError::Invalid { .. })));
        assert!(matches!(bytes("Mi"), Err(QuantityError::Invalid { .. })));
        assert!(matches!(bytes("1.2.3"), Err(QuantityError::Invalid { .. })));
        assert!(
            matches!(bytes("12MB"), Err(QuantityError::Suffix { suffix, .. }) if suffix == "MB")
        );
        assert!(matches!(bytes("1e"), Err(QuantityError::Suffix { .. })));
        assert!(matches!(
            cpu_millis("-1"),
            Err(QuantityError::Negative { .. })
        ));
        assert_eq!(cpu_millis("-0"), Ok(0));
        let message = bytes("12MB").unwrap_err().to_string();
        assert!(
            message.contains("\"12MB\"") && message.contains("Mi"),
            "{message}"
        );
    }
}
