//! What ingest-api rereads while it runs: the tokens (with the rate limits of the tokens file)
//! and the TLS certificate and key. Both are reread on SIGHUP and when their files change
//! (their content is compared every [`POLL`], which also sees a Kubernetes Secret's symlink
//! swap, and a change is acted on once it has settled). A file that does not parse keeps the set in force; the log says why and
//! `eventtracker_ingest_reloads_total{what, result="error"}` counts it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::web;

use crate::auth::TokenStore;
use crate::ratelimit::RateLimiter;
use crate::tls::CertificateFiles;
use crate::{AppState, Config, StartError, telemetry};

/// How often the files are compared with what was last read: a change is acted on at the poll
/// after the one that saw it, so a removed token is refused within about two polls (< 1 s).
pub const POLL: Duration = Duration::from_millis(250);

/// The tokens and the rate limits that belong to them, swapped together.
pub struct Credentials {
    pub tokens: TokenStore,
    pub rate_limiter: RateLimiter,
    /// The tokens file as it was read (`None`: no file, or unreadable), so that a change made
    /// while ingest-api was starting is seen.
    file_content: Option<Vec<u8>>,
}

impl Credentials {
    /// `--tokens`, the tokens file and `--rate-limits`, checked as at start: a `--rate-limits`
    /// source that no token has is a mistake in the flags.
    pub fn load(config: &Config) -> Result<Self, StartError> {
        let (tokens, file_content) = Self::tokens(config)?;
        let rate_limiter = crate::rate_limiter(config, &tokens)?;
        Ok(Credentials {
            tokens,
            rate_limiter,
            file_content,
        })
    }

    /// The same while running, where a `--rate-limits` source that no token has any more was
    /// revoked in the file: its limit is set aside (logged) until a token brings it back, so a
    /// flag can never keep a revoked token working.
    pub fn reload(config: &Config) -> Result<Self, StartError> {
        let (tokens, file_content) = Self::tokens(config)?;
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
            file_content,
        })
    }

    /// The tokens, and the file's content read just before them (a change in between is seen
    /// as a change by the watcher: a reread too many, never one too few).
    fn tokens(config: &Config) -> Result<(TokenStore, Option<Vec<u8>>), StartError> {
        let content = config
            .tokens_file
            .as_deref()
            .and_then(|p| std::fs::read(p).ok());
        let tokens = TokenStore::load(&config.tokens, config.tokens_file.as_deref())?;
        if tokens.is_empty() {
            return Err(StartError::NoTokens);
        }
        Ok((tokens, content))
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

/// Files reread together (the tokens file; the certificate and its key), by content. A change
/// is acted on once the files have stayed the same for one more poll, so files written one after
/// the other (a certificate, then its key) or in several writes are read whole, not as a
/// half-written set that would be refused and counted as a failed reload.
struct Watched {
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
    changed: bool,
}

impl Watched {
    fn new(paths: &[&Path]) -> Self {
        let mut watched = Watched::as_read(paths.iter().map(|p| (*p, None)));
        watched.read_all();
        watched
    }

    /// Files with the contents they had when they were last read elsewhere.
    fn as_read<'a>(files: impl Iterator<Item = (&'a Path, Option<Vec<u8>>)>) -> Self {
        Watched {
            files: files.map(|(p, c)| (p.to_path_buf(), c)).collect(),
            changed: false,
        }
    }

    /// Reads every file; true when any differs from what was last read (`None`: unreadable).
    fn read_all(&mut self) -> bool {
        let mut any = false;
        for (path, content) in &mut self.files {
            let now = std::fs::read(&*path).ok();
            if now != *content {
                *content = now;
                any = true;
            }
        }
        any
    }

    /// One poll: true when the files changed and have now settled (time to reread them).
    fn settled_change(&mut self) -> bool {
        if self.read_all() {
            self.changed = true;
            return false;
        }
        std::mem::take(&mut self.changed)
    }

    /// After a reread for another reason (SIGHUP): what is there now counts as read.
    fn rebase(&mut self) {
        self.read_all();
        self.changed = false;
    }
}

/// Why a reload happened, for the log.
#[derive(Clone, Copy)]
enum Cause {
    Hangup,
    FileChanged,
    StartUp,
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

/// Rereads on SIGHUP and on file changes until the task is dropped.
///
/// Called (before the server starts) it first compares the tokens file with what was loaded,
/// and rereads it at once if it changed meanwhile: start-up may have waited seconds for Redis,
/// and a token revoked in that time must not be served. The future then watches.
pub fn watch(
    state: web::Data<AppState>,
    config: Config,
    tls: Option<Arc<CertificateFiles>>,
) -> impl Future<Output = ()> {
    let loaded = state.credentials.current().file_content.clone();
    let mut tokens_file = config
        .tokens_file
        .as_deref()
        .map(|p| Watched::as_read(std::iter::once((p, loaded.clone()))));
    if tokens_file.as_mut().is_some_and(Watched::read_all) {
        reload_credentials(&state, &config, Cause::StartUp);
    }
    // The pair was read just before this call.
    let tls_files = tls.as_ref().map(|t| Watched::new(&[&t.cert, &t.key]));
    watch_files(state, config, tls, tokens_file, tls_files)
}

async fn watch_files(
    state: web::Data<AppState>,
    config: Config,
    tls: Option<Arc<CertificateFiles>>,
    mut tokens_file: Option<Watched>,
    mut tls_files: Option<Watched>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("cannot install the SIGHUP handler (files are still polled): {e}");
            None
        }
    };
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
            // What is reread now is not reread again by the next polls.
            for watched in tokens_file.iter_mut().chain(tls_files.iter_mut()) {
                watched.rebase();
            }
            reload_credentials(&state, &config, Cause::Hangup);
            if let Some(tls) = &tls {
                reload_certificate(tls, Cause::Hangup);
            }
            continue;
        }
        if tokens_file.as_mut().is_some_and(Watched::settled_change) {
            reload_credentials(&state, &config, Cause::FileChanged);
        }
        if let (Some(tls), Some(files)) = (&tls, tls_files.as_mut())
            && files.settled_change()
        {
            reload_certificate(tls, Cause::FileChanged);
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
            Cause::StartUp => " (it changed while ingest-api was starting)",
        }
    }
}
