//! Bearer tokens. Only SHA-256 digests of the secrets are kept in memory; a presented token is
//! hashed and compared with every known digest in constant time, so neither timing nor an early
//! exit tells an attacker how close a guess was.

use std::path::Path;

use service_kit::secret::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The known tokens, each as (source name, SHA-256 of the secret), and the rate limits the
/// tokens file sets per source.
#[derive(Clone, Default)]
pub struct TokenStore {
    entries: Vec<(String, [u8; 32])>,
    /// `rate=`/`burst=` options of tokens file lines, by source.
    pub limits: Vec<(String, crate::ratelimit::Limit)>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Sources only: never the digests.
        let sources: Vec<&str> = self.entries.iter().map(|(s, _)| s.as_str()).collect();
        f.debug_struct("TokenStore")
            .field("sources", &sources)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenConfigError {
    #[error("token #{index}: expected source=secret")]
    Malformed { index: usize },
    #[error(
        "{path}: line {line}: expected source=secret or source=sha256:<64 hex digits>, then optionally rate=<events/s> and burst=<events>"
    )]
    MalformedLine { path: String, line: usize },
    #[error("{path}: line {line}: {problem}")]
    BadLimit {
        path: String,
        line: usize,
        problem: String,
    },
    #[error("reading tokens file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl TokenStore {
    /// Builds the store from `--tokens` pairs and an optional tokens file.
    pub fn load(pairs: &[Secret], file: Option<&Path>) -> Result<Self, TokenConfigError> {
        let mut store = TokenStore::default();
        for (index, pair) in pairs.iter().enumerate() {
            let pair = pair.expose().trim();
            if pair.is_empty() {
                continue;
            }
            let (source, secret) =
                split_pair(pair).ok_or(TokenConfigError::Malformed { index: index + 1 })?;
            store.add_secret(source, secret);
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| TokenConfigError::Io {
                path: path.display().to_string(),
                source,
            })?;
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let bad = || TokenConfigError::MalformedLine {
                    path: path.display().to_string(),
                    line: n + 1,
                };
                let mut words = line.split_whitespace();
                let pair = words.next().unwrap_or_default();
                let (source, value) = split_pair(pair).ok_or_else(bad)?;
                let (mut rate, mut burst) = (None, None);
                for option in words {
                    match option.split_once('=') {
                        Some(("rate", v)) => rate = Some(v),
                        Some(("burst", v)) => burst = Some(v),
                        _ => return Err(bad()),
                    }
                }
                if let Some(rate) = rate {
                    let text = match burst {
                        Some(b) => format!("{rate}/{b}"),
                        None => rate.to_string(),
                    };
                    let limit = crate::ratelimit::Limit::parse(&text).map_err(|problem| {
                        TokenConfigError::BadLimit {
                            path: path.display().to_string(),
                            line: n + 1,
                            problem,
                        }
                    })?;
                    store.limits.push((source.to_string(), limit));
                } else if burst.is_some() {
                    return Err(bad());
                }
                match value.strip_prefix("sha256:") {
                    Some(hex_digest) => {
                        let mut digest = [0u8; 32];
                        hex::decode_to_slice(hex_digest, &mut digest).map_err(|_| bad())?;
                        store.entries.push((source.to_string(), digest));
                    }
                    None => store.add_secret(source, value),
                }
            }
        }
        Ok(store)
    }

    fn add_secret(&mut self, source: &str, secret: &str) {
        self.entries
            .push((source.to_string(), Sha256::digest(secret.as_bytes()).into()));
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The distinct source names, for the start-up log line.
    pub fn sources(&self) -> Vec<&str> {
        let mut s: Vec<&str> = self.entries.iter().map(|(s, _)| s.as_str()).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// The source of an `Authorization` header value, if it is `Bearer <known token>`.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Option<&str> {
        let token = bearer_token(header?)?;
        let digest: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for (source, known) in &self.entries {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(source.as_str());
            }
        }
        found
    }
}

fn split_pair(s: &str) -> Option<(&str, &str)> {
    let (source, secret) = s.split_once('=')?;
    let (source, secret) = (source.trim(), secret.trim());
    (!source.is_empty() && !secret.is_empty()).then_some((source, secret))
}

/// `Bearer <token>` with the scheme in any letter case; the token must be non-empty.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_and_file_lines_authenticate() {
        let dir = std::env::temp_dir().join(format!("et-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        let digest = hex::encode(Sha256::digest(b"hashed-secret"));
        std::fs::write(
            &file,
            format!("# comment\n\ngame=plain-secret\nweb=sha256:{digest}\ngame=rotated\n"),
        )
        .unwrap();
        let store =
            TokenStore::load(&[Secret::new("cli=s1"), Secret::new("cli=s2")], Some(&file)).unwrap();
        assert_eq!(store.authenticate(Some(b"Bearer s1")), Some("cli"));
        assert_eq!(store.authenticate(Some(b"bearer s2")), Some("cli"));
        assert_eq!(
            store.authenticate(Some(b"Bearer plain-secret")),
            Some("game")
        );
        assert_eq!(store.authenticate(Some(b"Bearer rotated")), Some("game"));
        assert_eq!(
            store.authenticate(Some(b"Bearer hashed-secret")),
            Some("web")
        );
        assert_eq!(store.sources(), vec!["cli", "game", "web"]);
        for bad in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Basic s1",
            b"s1",
            b"Bearer s",
            b"Bearer s11",
            b"Bearer s3",
            b"Bearer sha256:",
        ] {
            assert_eq!(
                store.authenticate(Some(bad)),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(store.authenticate(None), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn malformed_config_is_refused() {
        assert!(TokenStore::load(&[Secret::new("no-equals")], None).is_err());
        assert!(TokenStore::load(&[Secret::new("=secret")], None).is_err());
        assert!(TokenStore::load(&[Secret::new("source=")], None).is_err());
        let dir = std::env::temp_dir().join(format!("et-tokens-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tokens");
        std::fs::write(&file, "web=sha256:abcd\n").unwrap();
        let err = TokenStore::load(&[], Some(&file)).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(!err.contains("abcd"), "a secret must not be echoed: {err}");
        std::fs::write(&file, "web=s3cret rate=0\n").unwrap();
        assert!(TokenStore::load(&[], Some(&file)).is_err());
        std::fs::write(&file, "web=s3cret burst=10\n").unwrap();
        assert!(TokenStore::load(&[], Some(&file)).is_err());
        std::fs::write(&file, "web=s3cret rate=10 burst=20\n").unwrap();
        let store = TokenStore::load(&[], Some(&file)).unwrap();
        assert_eq!(store.limits.len(), 1);
        assert_eq!(store.authenticate(Some(b"Bearer s3cret")), Some("web"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
