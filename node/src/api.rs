//! The local HTTP API for the EMR (described in node/openapi.yaml). Every call needs
//! `Authorization: Bearer <token>` from the configuration.

use crate::exchange::{self, FetchError};
use crate::{fhir, Node};
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use iryo_proto::eligibility::{CheckKey, CheckRequest};
use iryo_proto::federation::Purpose;
use iryo_proto::wire::RefusalReason;
use iryo_proto::*;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

/// Largest document the EMR may store in one call.
const MAX_BODY: usize = 8 * 1024 * 1024;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route(
            "/patients/{medical_id}/records",
            get(get_records).put(put_records),
        )
        .route("/exchange/fetch", post(fetch))
        .route("/eligibility", post(eligibility))
        .route("/outbox", get(outbox))
        .route("/backup", post(backup))
        .layer(middleware::from_fn_with_state(node.clone(), authorise))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn(track))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(node)
}

#[derive(Deserialize)]
struct BackupBody {
    /// An absolute path for the backup directory (new or empty).
    out: std::path::PathBuf,
}

/// A consistent copy of the node's database and key while it serves.
async fn backup(State(node): State<Arc<Node>>, Json(b): Json<BackupBody>) -> Response {
    if !b.out.is_absolute() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "out must be an absolute path",
        );
    }
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.store.backup(&n.key_file, &b.out)).await {
        Ok(Ok(m)) => (StatusCode::CREATED, Json(json!(m))).into_response(),
        Ok(Err(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, "backup", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "backup", e),
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let m = crate::metrics::metrics();
    if let Ok(Ok(n)) = tokio::task::spawn_blocking(move || node.store.outbox_len()).await {
        m.outbox_pending.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

async fn track(req: Request, next: Next) -> Response {
    let route = match req.uri().path().split('/').nth(1) {
        Some(r @ ("patients" | "exchange" | "eligibility" | "outbox" | "metrics")) => r.to_string(),
        _ => "other".into(),
    };
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    crate::metrics::metrics().observe(&route, started.elapsed());
    res
}

fn error(status: StatusCode, reason: &str, detail: impl std::fmt::Display) -> Response {
    (
        status,
        Json(json!({ "error": reason, "detail": detail.to_string() })),
    )
        .into_response()
}

async fn authorise(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !node.api_token.is_empty() && t == node.api_token);
    if ok {
        next.run(req).await
    } else {
        drain(req.into_body()).await;
        error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
    }
}

/// Reads what is left of a refused request's body (at most 64 KiB, for at most a second)
/// before the refusal goes out. A socket closed with unread bytes in it is reset by the
/// kernel, and the reset can reach the client before the refusal does, so the EMR would
/// see a dropped connection instead of the reason.
async fn drain(body: axum::body::Body) {
    let read = axum::body::to_bytes(body, 64 << 10);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read).await;
}

/// A Bundle already written as JSON, sent as it is.
fn fhir_json(body: Vec<u8>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn bad_id(e: IdError) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_medical_id", e)
}

async fn put_records(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let id = match MedicalId::parse(&id) {
        Ok(id) => id,
        Err(e) => return bad_id(e),
    };
    // Validation reads the whole document twice: off the async threads.
    let checked = tokio::task::spawn_blocking(move || {
        fhir::validate(&body)?;
        fhir::resources(&body)
    })
    .await;
    let resources = match checked {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return error(StatusCode::UNPROCESSABLE_ENTITY, "not_fhir", e),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "validation", e),
    };
    let n = resources.len();
    match tokio::task::spawn_blocking(move || node.store.put_records(id, &resources)).await {
        Ok(Ok(())) => (StatusCode::CREATED, Json(json!({ "stored": n }))).into_response(),
        Ok(Err(e @ crate::store::StoreError::TooLarge { .. })) => {
            error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e)
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e),
    }
}

async fn get_records(State(node): State<Arc<Node>>, Path(id): Path<String>) -> Response {
    let id = match MedicalId::parse(&id) {
        Ok(id) => id,
        Err(e) => return bad_id(e),
    };
    match tokio::task::spawn_blocking(move || node.store.records(id)).await {
        Ok(Ok(r)) => fhir_json(fhir::bundle("searchset", &r)),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "store", e),
    }
}

#[derive(Deserialize)]
struct FetchBody {
    medical_id: MedicalId,
    from: InstitutionCode,
    purpose: Purpose,
    reason: Option<String>,
}

/// The request's `Idempotency-Key` header, if it has one; a malformed one is refused
/// with 400 `bad_idempotency_key`, after the body is read (see `drain`).
struct Idempotency<T>(Option<IdempotencyKey>, T);

impl<S: Send + Sync, T: DeserializeOwned> axum::extract::FromRequest<S> for Idempotency<T> {
    type Rejection = Response;
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let key = crate::idempotency::from_headers(req.headers());
        let Json(body) = Json::<T>::from_request(req, state)
            .await
            .map_err(IntoResponse::into_response)?;
        key.map(|k| Idempotency(k, body))
            .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_idempotency_key", e))
    }
}

async fn fetch(
    State(node): State<Arc<Node>>,
    Idempotency(key, b): Idempotency<FetchBody>,
) -> Response {
    let ask = exchange::FetchAsk {
        medical_id: b.medical_id,
        source: b.from,
        purpose: b.purpose,
        reason: b.reason,
        key,
    };
    let result = exchange::fetch(&node, ask).await;
    let fetches = &crate::metrics::metrics().fetches;
    crate::metrics::Metrics::count(
        fetches,
        match &result {
            Ok(_) => "ok".to_string(),
            Err(FetchError::Refused(r)) => format!("{:?}", r.reason),
            Err(FetchError::UnknownSource(_)) => "unknown_source".into(),
            Err(FetchError::Unavailable(_)) => "unavailable".into(),
            Err(FetchError::InProgress) => "in_progress".into(),
            Err(FetchError::AlreadyServed) => "already_served".into(),
        },
    );
    match result {
        Ok(bundle) => fhir_json(bundle.into_bytes()),
        Err(FetchError::Refused(r)) => {
            let status = match r.reason {
                RefusalReason::UnknownPatient | RefusalReason::UnknownInstitution => {
                    StatusCode::NOT_FOUND
                }
                RefusalReason::Internal | RefusalReason::Unwitnessed => StatusCode::BAD_GATEWAY,
                _ => StatusCode::FORBIDDEN,
            };
            let reason = serde_json::to_value(r.reason).unwrap_or_default();
            (
                status,
                Json(json!({ "error": "refused", "reason": reason, "detail": r.detail })),
            )
                .into_response()
        }
        Err(e @ FetchError::UnknownSource(_)) => error(StatusCode::NOT_FOUND, "unknown_source", e),
        Err(e @ FetchError::Unavailable(_)) => error(StatusCode::BAD_GATEWAY, "unavailable", e),
        Err(e @ FetchError::InProgress) => error(StatusCode::CONFLICT, "in_progress", e),
        Err(e @ FetchError::AlreadyServed) => error(StatusCode::CONFLICT, "already_served", e),
    }
}

#[derive(Deserialize)]
struct EligibilityBody {
    insurer: Option<InsurerNumber>,
    symbol: Option<String>,
    number: Option<String>,
    branch: Option<String>,
    medical_id: Option<MedicalId>,
    date: Option<chrono::NaiveDate>,
    #[serde(default)]
    visit_consent: bool,
}

async fn eligibility(
    State(node): State<Arc<Node>>,
    Idempotency(idempotency_key, b): Idempotency<EligibilityBody>,
) -> Response {
    let key = match (b.insurer, b.symbol, b.number) {
        (Some(insurer), Some(symbol), Some(number)) => {
            let card = (|| -> Result<CheckKey, IdError> {
                Ok(CheckKey::Card {
                    insurer,
                    symbol: CardSymbol::parse(&symbol)?,
                    number: CardNumber::parse(&number)?,
                    branch: b.branch.as_deref().map(Branch::parse).transpose()?,
                    presented: b.medical_id,
                })
            })();
            match card {
                Ok(k) => k,
                Err(e) => return error(StatusCode::BAD_REQUEST, "bad_card", e),
            }
        }
        _ => match b.medical_id {
            Some(id) => CheckKey::MedicalId(id),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "give insurer, symbol and number, or medical_id",
                )
            }
        },
    };
    let request = CheckRequest {
        institution: node.code,
        key,
        date: b.date.unwrap_or_else(|| chrono::Local::now().date_naive()),
        visit_consent: b.visit_consent,
        idempotency_key,
    };
    match node.directory.check(request).await {
        Ok(a) => {
            crate::metrics::Metrics::count(
                &crate::metrics::metrics().checks,
                format!("{:?}", a.reason),
            );
            Json(a).into_response()
        }
        Err(crate::directory::CheckError::Refused(r))
            if r.reason == iryo_proto::wire::RefusalReason::BadRequest =>
        {
            error(StatusCode::UNPROCESSABLE_ENTITY, "bad_request", r.detail)
        }
        Err(e) => error(StatusCode::BAD_GATEWAY, "unavailable", e),
    }
}

async fn outbox(State(node): State<Arc<Node>>) -> Response {
    match tokio::task::spawn_blocking(move || node.store.outbox_len()).await {
        Ok(Ok(n)) => Json(json!({ "pending": n })).into_response(),
        _ => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "store",
            "cannot read the outbox",
        ),
    }
}
