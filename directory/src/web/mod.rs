//! The agency's HTTPS front (axum over rustls): insurers' uploads and downloads and the
//! operator console under client certificates of the agency CA, My Portal for people
//! with server TLS only, and `/metrics`.

pub mod audit;
mod cases;
pub mod conn;
pub mod insurer;
pub mod limits;
pub mod operator;
pub mod page;
pub mod portal;
pub mod session;
pub mod tls;

use crate::ca::ClientIdentity;
use crate::config::Config;
use crate::store::{Front, StoreError};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use ed25519_dalek::SigningKey;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tls::TlsConfigs;
use tower::Layer;

/// Everything the handlers share.
pub struct Web {
    /// The registry on either backend; sessions, sign-in counts and uploads' outcomes
    /// live there too.
    pub store: Arc<dyn Front>,
    pub agency: SigningKey,
    pub config: Config,
    /// Sign-in and activation tries, and password hashing at once.
    pub limits: limits::Limits,
    pub jobs: insurer::Jobs,
    /// Keys the operator console's CSRF tokens; new at every start.
    pub secret: [u8; 32],
}

impl Web {
    pub fn new(
        store: Arc<dyn Front>,
        agency: SigningKey,
        config: Config,
    ) -> Result<Self, WebError> {
        let secret = crate::keys::random32().map_err(|e| WebError::Internal(e.to_string()))?;
        let jobs = insurer::Jobs::new(config.data_dir.join("uploads"));
        jobs.sweep(std::time::Duration::from_secs(
            u64::from(config.https.upload_retention_days) * 86_400,
        ));
        Ok(Self {
            jobs,
            store,
            agency,
            config,
            limits: limits::Limits::default(),
            secret,
        })
    }
}

/// Who is on the other end of a connection: its address, and the identity of the client
/// certificate it presented, which the TLS handshake has verified.
#[derive(Debug, Clone)]
pub struct Caller {
    pub remote: SocketAddr,
    pub identity: Option<ClientIdentity>,
}

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WebError {
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("too many attempts; try again later")]
    TooMany,
    #[error("{0}")]
    TooLarge(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownMedicalId(_)
            | StoreError::UnknownMyNumber(_)
            | StoreError::NoSuchCase { .. }
            | StoreError::EmptyLog
            | StoreError::NotInLog { .. }
            | StoreError::NoAuditEntry(_) => WebError::NotFound(e.to_string()),
            StoreError::CaseClosed { .. }
            | StoreError::NotCurrent { .. }
            | StoreError::ReasonRequired(_)
            | StoreError::Deceased(_)
            | StoreError::StillConflicts(_)
            | StoreError::CardNotRegistered(_)
            | StoreError::UnknownInstitution(_)
            | StoreError::BadRegistration(_)
            | StoreError::BadActivation
            | StoreError::Date(_)
            | StoreError::DeathRecorded { .. }
            | StoreError::NoDeath(_)
            | StoreError::NoConsistency { .. }
            | StoreError::MyNumberTaken(_) => WebError::BadRequest(e.to_string()),
            e => WebError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = match &self {
            WebError::Forbidden(_) => StatusCode::FORBIDDEN,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::TooMany => StatusCode::TOO_MANY_REQUESTS,
            WebError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WebError::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                // The reason stays in the log: it may name the server's files.
                let text = "internal error; the agency has been told. Please try again later.\n";
                return (StatusCode::INTERNAL_SERVER_ERROR, text).into_response();
            }
        };
        if status == StatusCode::FORBIDDEN {
            crate::metrics::metrics().refused("https_forbidden");
        }
        (status, format!("{self}\n")).into_response()
    }
}

/// Runs blocking store work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WebError> + Send + 'static,
) -> Result<T, WebError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?
}

/// The front's pages for this process's role (docs/roles.md): insurers' uploads where
/// persons are kept (the registry), My Portal where the access log and consent are (the
/// exchange authority), and each half's own part of the operator console.
pub fn router(web: Arc<Web>) -> Router {
    let role = web.config.roles.role;
    let mut app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/lang", get(page::switch))
        .route(page::STYLE_PATH, get(page::stylesheet))
        .nest("/audit", audit::routes())
        // A nested "/" answers only without the slash; people type it with one.
        .route("/operator/", get(operator::start))
        .nest("/operator", operator::routes(role));
    if role.registers() {
        app = app.nest("/insurer", insurer::routes());
    }
    if role == crate::config::ServiceRole::Registry {
        app = app.route("/", get(registry_front));
    }
    if role.exchanges() {
        app = app
            .route(
                "/",
                get(|| async { axum::response::Redirect::to("/portal/") }),
            )
            .route("/portal/", get(portal::start))
            .nest("/portal", portal::routes());
    }
    app.layer(axum::middleware::from_fn(track))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(web)
}

/// The registry's front page: what is served here, and that My Portal is not.
async fn registry_front(lang: page::Lang) -> Response {
    let body = maud::html! {
        p id="registry-front" {
            (lang.t(
                "ここは医療IDの登録機関です。保険者のファイルの受け渡しと、職員の運用コンソールだけを扱います。",
                "This is the medical ID registry: insurers' files and the staff's console only.",
            ))
        }
        p {
            (lang.t(
                "マイポータル（だれがあなたの記録を見たか、同意の設定）は、お知らせの手紙に書かれたアドレスにあります。",
                "My Portal (who read your records, and your consent) is at the address on your letter.",
            ))
        }
    };
    page::layout(
        lang,
        lang.t("医療ID 登録機関", "Medical ID registry"),
        "/",
        &[],
        body,
    )
    .into_response()
}

/// For load balancers and supervisors: 200 while the database can be used, 503 once
/// its storage failed (the process is then stopping, to be started again).
async fn health() -> Response {
    match crate::store::storage_failure() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage failed: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::metrics().render(),
    )
}

/// The Content-Security-Policy of every page: nothing but this site's own stylesheet,
/// images and forms; no script at all, inline or not; never inside a frame.
pub const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self' data:; \
form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Headers every answer carries: HTTPS only for a year (HSTS), the CSP, no framing
/// (for browsers without CSP too), no content-type sniffing, no referrer. Everything
/// but the stylesheet may carry personal data, so nothing else is cached.
async fn security_headers(req: Request, next: Next) -> Response {
    use axum::http::{header, HeaderValue};
    let cacheable = req.uri().path() == page::STYLE_PATH;
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    let mut set = |name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        header::STRICT_TRANSPORT_SECURITY,
        "max-age=31536000; includeSubDomains",
    );
    set(header::CONTENT_SECURITY_POLICY, CSP);
    set(header::X_FRAME_OPTIONS, "DENY");
    set(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(header::REFERRER_POLICY, "no-referrer");
    if !cacheable {
        set(header::CACHE_CONTROL, "no-store");
    }
    res
}

async fn track(req: Request, next: Next) -> Response {
    let area = match req.uri().path().split('/').nth(1) {
        Some(a @ ("insurer" | "operator" | "portal" | "metrics" | "audit")) => a.to_string(),
        _ => "other".into(),
    };
    let started = Instant::now();
    let res = next.run(req).await;
    crate::metrics::metrics().observe_request("https", &area, started.elapsed());
    res
}

/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 4096;

pub struct Running {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn stop(self) {
        self.task.abort();
    }
}

/// Listens on `listen` and serves every connection over TLS.
pub async fn start(
    web: Arc<Web>,
    tls: Arc<TlsConfigs>,
    listen: SocketAddr,
) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "HTTPS front listening");
    let https = &web.config.https;
    let limits = conn::ConnLimits {
        per_address: https.connections_per_address.max(1),
        idle: Duration::from_secs(https.idle_seconds.max(1)),
        min_rate: https.min_bytes_per_second,
    };
    let app = router(web);
    // Bounds what idle or slow clients can hold: connections at once and per address,
    // the time to finish a handshake or send a request's headers, and a connection
    // that stops moving or trickles (`conn`).
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(conn::PerAddress::default());
    let task = tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, remote) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let config = match tls.current() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "no TLS configuration; connection dropped");
                    continue;
                }
            };
            let Some(held) = per_address.take(remote.ip(), limits.per_address) else {
                crate::metrics::metrics().refused("https_connections_per_address");
                tracing::debug!(%remote, "too many connections from one address; closed");
                continue;
            };
            let app = app.clone();
            tokio::spawn(async move {
                let (_slot, _held) = (slot, held);
                let acceptor = tokio_rustls::TlsAcceptor::from(config);
                let tcp = conn::Moving::new(tcp, limits);
                let stream =
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!(%remote, error = %e, "TLS handshake refused");
                            crate::metrics::metrics().refused("tls_handshake");
                            return;
                        }
                        Err(_) => return,
                    };
                let identity = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| ClientIdentity::from_certificate(c));
                let service = Extension(Caller { remote, identity }).layer(app);
                let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                http.http1()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                let served = http
                    .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
                    .await;
                if let Err(e) = served {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
            });
        }
    });
    Ok(Running { addr, task })
}
