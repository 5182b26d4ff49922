//! Insurers over mutual TLS (proposal §2-2, 2-3, 2-5): upload enrollment files, download
//! assignment files and mismatch notices. Which insurer is calling comes from its
//! certificate, and it reaches only its own rows.

use super::{blocking, Caller, Web, WebError};
use crate::ca::ClientIdentity;
use crate::context::Context;
use crate::enrollment::{ingest_file, Encoding, IngestOptions, Progress};
use crate::registry::now;
use crate::store::{Front, JobState};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures::StreamExt;
use iryo_proto::InsurerNumber;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/enrollments", post(upload))
        .route("/enrollments/{id}", get(status))
        .route("/enrollments/{id}/errors", get(errors))
        .route("/assignments", get(assignments))
        .route("/notices", get(notices))
        .layer(DefaultBodyLimit::disable())
}

/// The insurer the client certificate names, or 403.
fn insurer(caller: &Caller) -> Result<InsurerNumber, WebError> {
    match &caller.identity {
        Some(ClientIdentity::Insurer(n)) => Ok(n.clone()),
        Some(other) => Err(WebError::Forbidden(format!(
            "{other} is not an insurer's certificate"
        ))),
        None => Err(WebError::Forbidden(
            "an insurer's client certificate from the agency CA is required".into(),
        )),
    }
}

/// Insurers' uploads: the files in `dir` on this machine (0600 in 0700), their
/// outcome in the store, where every `serve` on the same database can report it.
pub struct Jobs {
    dir: PathBuf,
    /// Uploads this process is enrolling now, whose files the sweep leaves alone.
    running: Mutex<HashSet<String>>,
}

impl Jobs {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            running: Mutex::new(HashSet::new()),
        }
    }

    fn set(&self, store: &dyn Front, job: &JobState) {
        if let Ok(mut m) = self.running.lock() {
            if job.state == "running" {
                m.insert(job.id.clone());
            } else {
                m.remove(&job.id);
            }
        }
        if let Err(e) = store.put_job(job) {
            tracing::warn!(id = %job.id, error = %e, "upload status not saved");
        }
    }

    /// Deletes uploaded files and error reports of finished jobs older than `keep`;
    /// the jobs' summaries stay. Returns how many files went.
    pub fn sweep(&self, keep: std::time::Duration) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let running: Vec<String> = self
            .running
            .lock()
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default();
        let mut gone = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name
                .strip_suffix(".csv.errors.csv")
                .or_else(|| name.strip_suffix(".csv"))
            else {
                continue;
            };
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > keep);
            if old && !running.iter().any(|r| r == id) && std::fs::remove_file(entry.path()).is_ok()
            {
                gone += 1;
            }
        }
        if gone > 0 {
            tracing::info!(files = gone, "uploads past their retention deleted");
        }
        gone
    }
}

/// The upload `id`, if its name could be one.
fn job(store: &dyn Front, id: &str) -> Result<Option<JobState>, WebError> {
    if id.is_empty()
        || id.len() > 100
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Ok(None);
    }
    Ok(store.job(id)?)
}

#[derive(Deserialize)]
struct UploadQuery {
    /// Wait for the file to be enrolled and answer with its summary.
    #[serde(default)]
    wait: bool,
    encoding: Option<String>,
    /// The insurer's own name for the file: conflicts and the history cite it.
    name: Option<String>,
}

/// The file name an upload is cited by: the last part of what the insurer called it,
/// as plain text of at most 100 characters; the upload's id when it gave none.
fn cited_name(given: Option<&str>, id: &str) -> String {
    let base = given
        .unwrap_or_default()
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default();
    let clean: String = base.chars().filter(|c| !c.is_control()).take(100).collect();
    if clean.trim().is_empty() {
        format!("{id}.csv")
    } else {
        clean.trim().to_string()
    }
}

async fn upload(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Response, WebError> {
    let insurer = insurer(&caller)?;
    let encoding = match q.encoding.as_deref() {
        None => Encoding::from_setting(&web.config.enrollment.encoding).unwrap_or(None),
        Some(e) => Encoding::from_setting(e).map_err(WebError::BadRequest)?,
    };
    let id = format!("{}-{}-{}", insurer, now(), &super::session::token()[..8]);
    let (dir, path) = (web.jobs.dir.clone(), web.jobs.dir.join(format!("{id}.csv")));
    // Streamed to disk: the file may be larger than memory. Personal data: 0600 in 0700.
    let created = path.clone();
    let file = blocking(move || {
        crate::files::create_private_dir(&dir)
            .and_then(|()| crate::files::create_private(&created))
            .map_err(|e| WebError::Internal(e.to_string()))
    })
    .await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut stream = body.into_data_stream();
    let max = web.config.https.max_upload_mib.saturating_mul(1 << 20);
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                drop(file);
                let _ = tokio::fs::remove_file(&path).await;
                return Err(WebError::BadRequest(format!("upload broken off: {e}")));
            }
        };
        size += chunk.len() as u64;
        if size > max {
            // Nothing of a refused upload is kept.
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(WebError::TooLarge(format!(
                "the file is larger than {} MiB, the most one upload may be; split it into several files",
                web.config.https.max_upload_mib
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| WebError::Internal(e.to_string()))?;
    }
    file.sync_all()
        .await
        .map_err(|e| WebError::Internal(e.to_string()))?;
    drop(file);
    let mut job = JobState {
        id: id.clone(),
        insurer: insurer.to_string(),
        state: "running".into(),
        summary: None,
        error: None,
    };
    let (w, running) = (web.clone(), job.clone());
    blocking(move || {
        w.jobs.set(&*w.store, &running);
        Ok(())
    })
    .await?;
    tracing::info!(%insurer, %id, "enrollment file uploaded");
    let source_name = cited_name(q.name.as_deref(), &id);
    let w = web.clone();
    let task = tokio::task::spawn_blocking(move || {
        let ctx = Context::new(w.config.clone());
        let opts = IngestOptions {
            encoding,
            batch_rows: w.config.enrollment.batch_rows,
            only_insurer: Some(insurer),
            max_line_bytes: w.config.enrollment.max_line_bytes,
            source_name: Some(source_name),
        };
        let result = w
            .store
            .method()
            .map_err(|e| e.to_string())
            .and_then(|m| ctx.issuer_for(m).map_err(|e| e.to_string()))
            .and_then(|issuer| {
                ingest_file(&*w.store, &issuer, &path, &opts, &Progress::Silent)
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(mut s) => {
                crate::metrics::metrics().enrolled(&s);
                s.file = format!("{}.csv", job.id);
                s.errors_file = s
                    .errors_file
                    .map(|_| PathBuf::from(format!("/insurer/enrollments/{}/errors", job.id)));
                job.state = "done".into();
                job.summary = Some(s);
            }
            Err(e) => {
                job.state = "failed".into();
                // Said in terms of the upload, never of the server's files.
                job.error =
                    Some(e.replace(&path.display().to_string(), &format!("{}.csv", job.id)));
            }
        }
        w.jobs.set(&*w.store, &job);
        let keep = u64::from(w.config.https.upload_retention_days) * 86_400;
        w.jobs.sweep(std::time::Duration::from_secs(keep));
        job
    });
    let status_url = format!("/insurer/enrollments/{id}");
    if q.wait {
        let job = task.await.map_err(|e| WebError::Internal(e.to_string()))?;
        let code = if job.state == "done" {
            StatusCode::OK
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        return Ok((code, [(header::LOCATION, status_url)], Json(job)).into_response());
    }
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, status_url.clone())],
        Json(serde_json::json!({ "id": id, "status_url": status_url })),
    )
        .into_response())
}

async fn own_job(web: &Arc<Web>, caller: &Caller, id: String) -> Result<JobState, WebError> {
    let insurer = insurer(caller)?;
    let w = web.clone();
    let (found, id) = blocking(move || Ok((job(&*w.store, &id)?, id))).await?;
    match found {
        Some(j) if j.insurer == insurer.as_str() => Ok(j),
        // Another insurer's upload is as good as absent.
        _ => Err(WebError::NotFound(format!("no upload {id}"))),
    }
}

async fn status(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<JobState>, WebError> {
    own_job(&web, &caller, id).await.map(Json)
}

async fn errors(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, WebError> {
    let id = own_job(&web, &caller, id).await?.id;
    let path = web.jobs.dir.join(format!("{id}.csv.errors.csv"));
    let text = tokio::fs::read(&path).await.map_err(|_| {
        WebError::NotFound(format!(
            "this upload had no rejected rows, or its report was deleted after {} days",
            web.config.https.upload_retention_days
        ))
    })?;
    Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], text).into_response())
}

#[derive(Deserialize)]
struct AssignQuery {
    #[serde(default)]
    all: bool,
}

async fn assignments(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AssignQuery>,
) -> Result<Response, WebError> {
    let insurer = insurer(&caller)?;
    let csv = blocking(move || {
        let rows = web.store.assignment_rows(&insurer, q.all)?;
        let bytes = crate::store::AssignmentRow::write_csv(Vec::new(), &rows)
            .map_err(|e| WebError::Internal(e.to_string()))?;
        // Marked only once the file is made; a broken download repeats rows, never loses them.
        web.store.mark_assigned(&rows, now())?;
        tracing::info!(%insurer, rows = rows.len(), "assignment file downloaded");
        Ok(bytes)
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"assignments.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

async fn notices(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, WebError> {
    let insurer = insurer(&caller)?;
    let notices = blocking(move || Ok(web.store.notices(Some(&insurer))?)).await?;
    Ok(Json(notices).into_response())
}

#[cfg(test)]
mod tests {
    use super::cited_name;

    #[test]
    fn an_upload_is_cited_by_the_insurers_file_name_only() {
        assert_eq!(
            cited_name(Some("2026-12 加入者.csv"), "x"),
            "2026-12 加入者.csv"
        );
        assert_eq!(cited_name(Some("C:\\exports\\kenpo.csv"), "x"), "kenpo.csv");
        assert_eq!(cited_name(Some("../../etc/passwd"), "x"), "passwd");
        assert_eq!(cited_name(Some("a\nb.csv"), "x"), "ab.csv");
        assert_eq!(cited_name(None, "up-1"), "up-1.csv");
        assert_eq!(cited_name(Some("  "), "up-1"), "up-1.csv");
        assert_eq!(cited_name(Some(&"x".repeat(300)), "i").len(), 100);
    }
}
