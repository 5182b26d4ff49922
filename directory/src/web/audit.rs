//! The audit log for anyone who wants to check it (no certificate needed): the latest
//! signed tree head, and an entry with its inclusion proof against it. Entries name
//! institutions and medical IDs, never clinical content; the same data travel to
//! members over `/iryo/directory/1`.

use super::{blocking, Web, WebError};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/tree-head", get(tree_head))
        .route("/proof/{index}", get(proof))
}

async fn tree_head(State(web): State<Arc<Web>>) -> Result<Response, WebError> {
    let head = blocking(move || Ok(web.store.current_head()?.0)).await?;
    Ok(Json(crate::audit::head_json(&head)).into_response())
}

async fn proof(State(web): State<Arc<Web>>, Path(index): Path<u64>) -> Result<Response, WebError> {
    let v = blocking(move || {
        let (head, size) = web.store.current_head()?;
        let entry = web.store.audit_entry(index)?;
        let proof = web.store.inclusion_proof(index, size)?;
        Ok(crate::audit::proof_json(index, &entry, &head, &proof))
    })
    .await?;
    Ok(Json(v).into_response())
}
