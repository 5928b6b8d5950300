//! What ingest-api rereads while it runs: the tokens (with the rate limits of the tokens file)
//! and the TLS certificate and key. Both are reread on SIGHUP and when their files change
//! (their content is compared every [`POLL`], which also sees a Kubernetes Secret's symlink
//! swap). A file that does not parse keeps the set in force; the log says why and
//! `eventtracker_ingest_reloads_total{what, result="error"}` counts it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::web;

use crate::auth::TokenStore;
use crate::ratelimit::RateLimiter;
use crate::tls::CertificateFiles;
use crate::{AppState, Config, StartError, telemetry};

/// How often the files are compared with what was last read: a removed token is refused well
/// within a second of the file changing.
pub const POLL: Duration = Duration::from_millis(250);

/// The tokens and the rate limits that belong to them, swapped together.
pub struct Credentials {
    pub tokens: TokenStore,
    pub rate_limiter: RateLimiter,
}

impl Credentials {
    /// `--tokens`, the tokens file and `--rate-limits`, checked as at start: a `--rate-limits`
    /// source that no token has is a mistake in the flags.
    pub fn load(config: &Config) -> Result<Self, StartError> {
        let tokens = Self::tokens(config)?;
        let rate_limiter = crate::rate_limiter(config, &tokens)?;
        Ok(Credentials {
            tokens,
            rate_limiter,
        })
    }

    /// The same while running, where a `--rate-limits` source that no token has any more was
    /// revoked in the file: its limit is set aside (logged) until a token brings it back, so a
    /// flag can never keep a revoked token working.
    pub fn reload(config: &Config) -> Result<Self, StartError> {
        let tokens = Self::tokens(config)?;
        let sources = tokens.sources();
        let (kept, set_aside): (Vec<String>, Vec<String>) =
            config.rate_limits.iter().cloned().partition(|item| {
                let source = item.split_once('=').map_or(item.as_str(), |(s, _)| s);
                source.trim().is_empty() || sources.contains(&source.trim())
            });
        if !set_aside.is_empty() {
            let names: Vec<&str> = set_aside
                .iter()
                .filter_map(|item| item.split_once('=').map(|(s, _)| s.trim()))
                .collect();
            log::warn!(
                "--rate-limits names sources no token has any more, their limits set aside: {names:?}"
            );
        }
        let config = Config {
            rate_limits: kept,
            ..config.clone()
        };
        let rate_limiter = crate::rate_limiter(&config, &tokens)?;
        Ok(Credentials {
            tokens,
            rate_limiter,
        })
    }

    fn tokens(config: &Config) -> Result<TokenStore, StartError> {
        let tokens = TokenStore::load(&config.tokens, config.tokens_file.as_deref())?;
        if tokens.is_empty() {
            return Err(StartError::NoTokens);
        }
        Ok(tokens)
    }
}

/// A value that requests read and a reload replaces; a request keeps the `Arc` it took.
pub struct Swap<T>(RwLock<Arc<T>>);

impl<T> Swap<T> {
    pub fn new(value: T) -> Self {
        Swap(RwLock::new(Arc::new(value)))
    }

    pub fn current(&self) -> Arc<T> {
        match self.0.read() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub fn replace(&self, value: T) {
        match self.0.write() {
            Ok(mut v) => *v = Arc::new(value),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(value),
        }
    }
}

/// The content of a file as last read (`None`: could not be read).
struct Seen {
    path: PathBuf,
    content: Option<Vec<u8>>,
}

impl Seen {
    fn new(path: &Path) -> Self {
        Seen {
            path: path.to_path_buf(),
            content: std::fs::read(path).ok(),
        }
    }

    /// True when the content differs from what was last seen (and remembers it).
    fn changed(&mut self) -> bool {
        let now = std::fs::read(&self.path).ok();
        if now == self.content {
            return false;
        }
        self.content = now;
        true
    }
}

/// Why a reload happened, for the log.
#[derive(Clone, Copy)]
enum Cause {
    Hangup,
    FileChanged,
}

/// Replaces SIGHUP's default action (ending the process) at once, before the settings are read
/// and Redis is asked for the queue's layout, which may take seconds: a SIGHUP in that time is
/// ignored (the files are polled anyway) instead of killing the process. Tokio keeps the handler
/// installed after the `Signal` is dropped.
pub fn survive_hangups() {
    if let Err(e) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        log::error!("cannot install the SIGHUP handler: {e}");
    }
}

/// Rereads on SIGHUP and on file changes until the task is dropped. Installing the SIGHUP
/// handler also means SIGHUP no longer ends the process.
pub async fn watch(state: web::Data<AppState>, config: Config, tls: Option<Arc<CertificateFiles>>) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("cannot install the SIGHUP handler (files are still polled): {e}");
            None
        }
    };
    let mut tokens_file = config.tokens_file.as_deref().map(Seen::new);
    let mut tls_files = tls
        .as_ref()
        .map(|t| (Seen::new(&t.cert), Seen::new(&t.key)));
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup = tokio::select! {
            Some(()) = async { hangup.as_mut()?.recv().await } => true,
            _ = tick.tick() => false,
        };
        if hup {
            log::info!(
                "SIGHUP: rereading the tokens{}",
                if tls.is_some() {
                    " and the TLS certificate"
                } else {
                    ""
                }
            );
            // Re-baseline, so the next poll does not reload the same content again.
            if let Some(seen) = tokens_file.as_mut() {
                seen.changed();
            }
            if let Some((cert, key)) = tls_files.as_mut() {
                cert.changed();
                key.changed();
            }
            reload_credentials(&state, &config, Cause::Hangup);
            if let Some(tls) = &tls {
                reload_certificate(tls, Cause::Hangup);
            }
            continue;
        }
        if tokens_file.as_mut().is_some_and(Seen::changed) {
            reload_credentials(&state, &config, Cause::FileChanged);
        }
        if let (Some(tls), Some((cert, key))) = (&tls, tls_files.as_mut()) {
            // Both compared (no short circuit): a renewal writes both files.
            let (c, k) = (cert.changed(), key.changed());
            if c || k {
                reload_certificate(tls, Cause::FileChanged);
            }
        }
    }
}

fn reload_credentials(state: &AppState, config: &Config, cause: Cause) {
    let path = config
        .tokens_file
        .as_deref()
        .map_or_else(|| "--tokens".to_string(), |p| p.display().to_string());
    match Credentials::reload(config) {
        Ok(credentials) => {
            let sources: Vec<String> = credentials
                .tokens
                .sources()
                .into_iter()
                .map(str::to_string)
                .collect();
            // Zeroed series for new sources only: the others keep counting.
            let before = state.credentials.current();
            let known = before.tokens.sources();
            let new: Vec<&str> = sources
                .iter()
                .map(String::as_str)
                .filter(|s| !known.contains(s))
                .collect();
            telemetry::init_source_metrics(&new);
            state.credentials.replace(credentials);
            telemetry::reload("tokens", true);
            log::info!(
                "tokens reloaded from {path}{}: sources {sources:?}",
                cause.suffix()
            );
        }
        Err(e) => {
            telemetry::reload("tokens", false);
            log::error!(
                "tokens not reloaded from {path}{}: {e}; keeping the tokens in force",
                cause.suffix()
            );
        }
    }
}

fn reload_certificate(tls: &CertificateFiles, cause: Cause) {
    match tls.reload() {
        Ok(()) => {
            telemetry::reload("tls", true);
            log::info!(
                "TLS certificate reloaded from {}{}",
                tls.cert.display(),
                cause.suffix()
            );
        }
        Err(e) => {
            telemetry::reload("tls", false);
            log::error!(
                "TLS certificate not reloaded{}: {e}; keeping the certificate in force",
                cause.suffix()
            );
        }
    }
}

impl Cause {
    fn suffix(self) -> &'static str {
        match self {
            Cause::Hangup => " (SIGHUP)",
            Cause::FileChanged => " (the file changed)",
        }
    }
}
