//! The witness's HTTP interface (c2sp.org/tlog-witness): `POST /add-checkpoint` and
//! `GET /<origin hash>/checkpoint`. Plain HTTP: a deployment puts TLS (or a bastion)
//! in front. Bodies are bounded, headers must arrive within 10 s and a request is
//! answered within 30 s, and at most `MAX_CONNECTIONS` are served at once, so a
//! hostile client cannot hold the witness.

use crate::state::{Refusal, Witness};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

/// The largest request body: a note of at most 64 KiB and 63 proof lines.
const MAX_BODY: usize = 72 * 1024;
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 256;

pub fn router(witness: Arc<Witness>) -> Router {
    Router::new()
        .route("/add-checkpoint", post(add_checkpoint))
        .route("/{origin}/checkpoint", get(checkpoint))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(witness)
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn add_checkpoint(State(w): State<Arc<Witness>>, body: Bytes) -> Response {
    let Ok(body) = String::from_utf8(body.to_vec()) else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain; charset=utf-8",
            "the body is not UTF-8\n".into(),
        );
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let answer = tokio::task::spawn_blocking(move || w.add_checkpoint(&body, now)).await;
    match answer {
        Ok(Ok(cosignature)) => text(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            cosignature.to_string(),
        ),
        Ok(Err(Refusal::Conflict { latest })) => text(
            StatusCode::CONFLICT,
            "text/x.tlog.size",
            format!("{latest}\n"),
        ),
        Ok(Err(why)) => {
            let status = StatusCode::from_u16(why.status()).unwrap_or(StatusCode::BAD_REQUEST);
            if status.is_server_error() {
                tracing::error!(error = %why, "add-checkpoint failed");
            } else {
                tracing::info!(status = status.as_u16(), reason = %why, "add-checkpoint refused");
            }
            text(status, "text/plain; charset=utf-8", format!("{why}\n"))
        }
        Err(e) => {
            tracing::error!(error = %e, "add-checkpoint task failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                "internal error\n".into(),
            )
        }
    }
}

async fn checkpoint(State(w): State<Arc<Witness>>, Path(origin): Path<String>) -> Response {
    let found = tokio::task::spawn_blocking(move || w.latest(&origin)).await;
    match found {
        Ok(Ok(Some(note))) => text(StatusCode::OK, "text/plain; charset=utf-8", note),
        Ok(Ok(None)) => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "no checkpoint cosigned for that origin\n".into(),
        ),
        Ok(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            format!("{e}\n"),
        ),
        Err(_) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "internal error\n".into(),
        ),
    }
}

/// The answer to a request that took longer than allowed.
async fn timed_out(_: tower::BoxError) -> StatusCode {
    StatusCode::REQUEST_TIMEOUT
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
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
        let service = tower::ServiceBuilder::new()
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(30)))
            .service(router.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            http.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            let service = axum::error_handling::HandleError::new(service, timed_out);
            if let Err(e) = http
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .await
            {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
}
