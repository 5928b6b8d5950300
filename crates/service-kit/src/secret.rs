//! Settings that must never be printed — tokens, URLs that may hold a password — as zero2prod
//! keeps them in `secrecy::SecretString`: `Debug` and `Display` show `[redacted]`, and the value
//! is reached only through [`Secret::expose`], at the one place that uses it. Written here
//! rather than taken from `secrecy`: clap needs `FromStr` and `Clone`, and nothing else is needed.

use std::fmt;
use std::str::FromStr;

/// A secret string; see the module.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the connection or the check that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_printed_only_exposed() {
        let s: Secret = "postgres://u:hunter2@db/x".parse().unwrap();
        assert_eq!(format!("{s:?} {s}"), "Secret([redacted]) [redacted]");
        assert_eq!(format!("{:?}", vec![s.clone()]), "[Secret([redacted])]");
        assert_eq!(s.expose(), "postgres://u:hunter2@db/x");
    }
}
