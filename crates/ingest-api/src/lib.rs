//! ingest-api: HTTP in, Redis out. Authenticates a batch, validates each event with
//! `event-model`, and queues the valid ones in one atomic write before answering.
//! Stateless: run as many as the load needs behind any load balancer.

pub mod auth;
pub mod body;
pub mod config;
pub mod error;
pub mod queue;
pub mod ratelimit;
pub mod reload;
pub mod routes;
pub mod telemetry;
pub mod tls;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::{App, HttpServer, web};
use event_model::Limits;
use service_kit::shutdown::Shutdown;

pub use config::Config;

use crate::auth::TokenStore;
use crate::body::{BodyLimits, SharedBudget};
use crate::queue::EventQueue;
use crate::reload::{Credentials, Swap};

/// What every request handler shares.
pub struct AppState {
    /// The tokens and their rate limits; replaced on a reload ([`reload`]).
    pub credentials: Swap<Credentials>,
    pub queue: EventQueue,
    pub limits: Limits,
    /// Past this skew between a batch's `sent_at` and the server's clock its events are
    /// corrected (`--clock-skew-threshold-secs`).
    pub clock_skew_threshold: time::Duration,
    pub body_limits: BodyLimits,
    pub body_budget: SharedBudget,
    pub max_events: usize,
    pub max_queue_len: u64,
    pub retry_after_secs: u32,
    /// Renders `/metrics`; `None` when another recorder owns the process.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Triggered on SIGTERM/SIGINT: from then on `/readyz` answers 503 and every answer closes
    /// its connection, until the listener closes `--drain-delay-secs` later.
    pub shutdown: Shutdown,
}

/// Why ingest-api could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("tokens: {0}")]
    Tokens(#[from] auth::TokenConfigError),
    #[error("no API tokens configured: give --tokens or --tokens-file")]
    NoTokens,
    #[error("--min-timestamp: {0}")]
    MinTimestamp(&'static str),
    #[error("{0}")]
    Queue(#[from] queue::QueueError),
    /// Settings that are fine alone but not together: exit code 2, as clap's own refusals.
    #[error("{0}")]
    Usage(String),
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
    #[error("--tls-cert/--tls-key: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("cannot listen on {addr} (--bind): {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl AppState {
    pub fn from_config(config: &Config, shutdown: Shutdown) -> Result<Self, StartError> {
        let credentials = Credentials::load(config)?;
        let min_timestamp = event_model::timestamp::parse_timestamp(&config.min_timestamp)
            .map_err(StartError::MinTimestamp)?;
        let queue = EventQueue::new(
            config.redis_url.expose(),
            config.redis_cluster,
            &config.stream_key,
            config.shards,
            Duration::from_millis(config.redis_timeout_ms),
            config.max_redis_memory_ratio,
        )?;
        Ok(AppState {
            credentials: Swap::new(credentials),
            queue,
            limits: Limits {
                max_properties_bytes: config.max_properties_bytes,
                min_timestamp,
                max_future: time::Duration::seconds(config.max_future_secs),
                ..Limits::default()
            },
            clock_skew_threshold: time::Duration::seconds(config.clock_skew_threshold_secs),
            body_limits: BodyLimits {
                wire_bytes: config.max_body_bytes,
                decompressed_bytes: config.max_decompressed_bytes,
                timeout: Duration::from_millis(config.body_timeout_ms),
                retry_after_secs: config.retry_after_secs,
            },
            body_budget: SharedBudget::new(config.max_inflight_bytes),
            max_events: config.max_events,
            max_queue_len: config.max_queue_len,
            retry_after_secs: config.retry_after_secs,
            metrics: None,
            shutdown,
        })
    }
}

/// The limits of `--rate-limits` and of the tokens file (the flag wins), each for a known source
/// and with room for a full batch.
fn rate_limiter(
    config: &Config,
    tokens: &TokenStore,
) -> Result<ratelimit::RateLimiter, StartError> {
    let mut limits: std::collections::HashMap<String, ratelimit::Limit> =
        tokens.limits.iter().cloned().collect();
    for item in config
        .rate_limits
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
    {
        let (source, limit) = item.split_once('=').ok_or_else(|| {
            StartError::Usage(format!(
                "--rate-limits: {item:?} is not source=RATE[/BURST]"
            ))
        })?;
        let limit = ratelimit::Limit::parse(limit)
            .map_err(|e| StartError::Usage(format!("--rate-limits: {e}")))?;
        limits.insert(source.trim().to_string(), limit);
    }
    let sources = tokens.sources();
    for (source, limit) in &limits {
        if !sources.contains(&source.as_str()) {
            return Err(StartError::Usage(format!(
                "--rate-limits: no token has the source {source:?} (sources: {sources:?})"
            )));
        }
        if limit.burst < config.max_events as u64 {
            return Err(StartError::Usage(format!(
                "--rate-limits: the burst of {source:?} ({}) is below --max-events ({}): a full \
                 batch would never be admitted",
                limit.burst, config.max_events
            )));
        }
    }
    Ok(ratelimit::RateLimiter::new(limits, &config.stream_key))
}

impl StartError {
    /// Settings that do not fit together: exit code 2.
    pub fn is_usage(&self) -> bool {
        matches!(self, StartError::Usage(_))
    }
}

/// Binds `--bind` (with SO_REUSEPORT, so a new instance can bind it while this one still
/// serves), says where it listens (tests and scripts read the line to learn the port when it
/// ends in `:0`), and serves until `shutdown` resolves.
pub async fn serve(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let listener = bind(config.bind).map_err(|source| StartError::Bind {
        addr: config.bind,
        source,
    })?;
    let scheme = if config.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    println!(
        "ingest-api listening on {scheme}://{}",
        listener.local_addr()?
    );
    run(config, listener, shutdown).await
}

/// A listening socket that shares its port with other processes of the same user that ask for
/// the same (SO_REUSEPORT: the kernel spreads new connections over them), as a rolling restart
/// on one host needs. The backlog is actix-web's default.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(2048)?;
    Ok(socket.into())
}

/// Serves until `shutdown` resolves (or a fatal error), then drains: `/readyz` answers 503 and
/// every answer closes its connection for `--drain-delay-secs`, then the listener closes and
/// in-flight requests get `--shutdown-timeout-secs` to finish; the tasks spawned are waited for.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    reload::survive_hangups();
    // The grace counts from the signal: the drain delay, then the in-flight requests' time.
    let stop = Shutdown::new(Duration::from_secs(
        config.drain_delay_secs + config.shutdown_timeout_secs,
    ));
    let mut state = AppState::from_config(&config, stop.clone())?;
    state.metrics = telemetry::install_metrics();
    telemetry::init_shard_metrics(config.shards);
    telemetry::init_source_metrics(&state.credentials.current().tokens.sources());
    let state = web::Data::new(state);
    log::info!(
        "ingest-api: stream {:?}, {} shard(s){}, sources {:?}",
        config.stream_key,
        config.shards,
        if config.redis_cluster {
            " on a Redis Cluster"
        } else {
            ""
        },
        state.credentials.current().tokens.sources()
    );
    // A shard count that differs from the recorded one is fatal; Redis being down is not (the
    // check is repeated until it passes, and no request is queued before it has).
    match state.queue.check_layout().await {
        Err(e) if e.is_fatal() => return Err(e.into()),
        Err(e) => log::warn!("cannot check the queue's shard count yet: {e}"),
        Ok(()) => {}
    }
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel();
    // Backpressure needs fresh lengths while requests are served, the drain included.
    let (served_tx, served_rx) = tokio::sync::oneshot::channel::<()>();
    stop.spawn(track_queue_length(state.clone(), fatal_tx, served_rx));
    let tls = tls::from_config(&config)?;
    let reload = reload::watch(state.clone(), config.clone(), tls.clone());
    let until = stop.clone();
    stop.spawn(async move {
        tokio::select! {
            () = reload => {}
            () = until.triggered() => {}
        }
    });
    let server = http_server(state, &config, listener, tls)?;
    let handle = server.handle();
    let drain = Duration::from_secs(config.drain_delay_secs);
    let stopper = {
        let stop = stop.clone();
        async move {
            let fatal = tokio::select! {
                () = shutdown => None,
                Ok(e) = fatal_rx => Some(e),
            };
            stop.trigger();
            match &fatal {
                None => {
                    log::info!(
                        "draining: /readyz answers 503 and connections close after each answer; \
                         the listener closes in {} s",
                        drain.as_secs()
                    );
                    tokio::time::sleep(drain).await;
                    log::info!("shutting down: no new connections, finishing in-flight requests");
                }
                Some(e) => log::error!("stopping: {e}"),
            }
            handle.stop(true).await;
            fatal
        }
    };
    let (served, fatal) = tokio::join!(server, stopper);
    let _ = served_tx.send(());
    if !stop.tasks_done().await {
        log::warn!("background tasks still running at the shutdown deadline: abandoned");
    }
    served?;
    if let Some(e) = fatal {
        return Err(e.into());
    }
    log::info!("ingest-api stopped");
    Ok(())
}

/// The routes, the request metrics around them, and the connection limits of the settings.
fn http_server(
    state: web::Data<AppState>,
    config: &Config,
    listener: TcpListener,
    tls: Option<std::sync::Arc<tls::CertificateFiles>>,
) -> Result<actix_web::dev::Server, StartError> {
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap_fn(|req, srv| {
                let start = std::time::Instant::now();
                let fut = actix_web::dev::Service::call(srv, req);
                async move {
                    let mut res = fut.await?;
                    // Draining: the client opens its next connection elsewhere.
                    let draining = res
                        .request()
                        .app_data::<web::Data<AppState>>()
                        .is_some_and(|s| s.shutdown.is_triggered());
                    if draining {
                        res.response_mut()
                            .head_mut()
                            .set_connection_type(actix_web::http::ConnectionType::Close);
                    }
                    let route = res.request().match_pattern();
                    telemetry::request(
                        route.as_deref().unwrap_or("unmatched"),
                        res.status().as_u16(),
                        start.elapsed(),
                    );
                    Ok(res)
                }
            })
            .service(resource(
                "/v1/events",
                web::post().to(routes::ingest),
                "POST",
            ))
            .service(resource("/test", web::post().to(routes::ingest), "POST"))
            .service(resource(
                "/healthz",
                web::get().to(service_kit::metrics::healthz),
                "GET",
            ))
            .service(resource("/readyz", web::get().to(routes::readyz), "GET"))
            .service(resource("/metrics", web::get().to(routes::metrics), "GET"))
            .service(resource(
                "/openapi.json",
                web::get().to(routes::openapi),
                "GET",
            ))
            .default_service(web::to(routes::not_found))
    })
    .disable_signals()
    .client_request_timeout(Duration::from_millis(config.header_timeout_ms))
    .client_disconnect_timeout(Duration::from_secs(1))
    .keep_alive(Duration::from_secs(config.keep_alive_secs))
    .max_connections(config.max_connections)
    .shutdown_timeout(config.shutdown_timeout_secs);
    if config.workers > 0 {
        server = server.workers(config.workers);
    }
    let server = match tls {
        Some(tls) => server.listen_rustls_0_23(listener, tls.server_config()?)?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// A path with one method; any other method gets 405 with `Allow` (not the app's 404).
fn resource(path: &str, route: actix_web::Route, allow: &'static str) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move || routes::method_not_allowed(allow)))
}

/// Keeps the cached shard lengths (and the recorded retention) fresh, so backpressure costs no
/// Redis call per request, and finds shards whose node answers again, until the server has
/// `served` its last request. Sends a layout mismatch (found once Redis is reachable) to `fatal`.
async fn track_queue_length(
    state: web::Data<AppState>,
    fatal: tokio::sync::oneshot::Sender<queue::QueueError>,
    mut served: tokio::sync::oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut served => return,
        }
        if let Err(e) = state.queue.check_layout().await
            && e.is_fatal()
        {
            let _ = fatal.send(e);
            return;
        }
        // Failures show in the length's read just below, over the same connection.
        let _ = state.queue.refresh_retention().await;
        let result = state.queue.refresh_state().await;
        match &result {
            Ok(queue) => queue.publish(false),
            Err(_) => {
                telemetry::redis_error();
                redis_queue::QueueState::publish_unknown(state.queue.layout().shards(), false);
            }
        }
        match result {
            Ok(_) if failing => {
                failing = false;
                log::info!("redis reachable again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                log::warn!("reading the queue length: {e}");
            }
            Err(_) => {}
        }
    }
}
