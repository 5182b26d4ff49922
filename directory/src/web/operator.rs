//! The operator console (proposal §2-1, 2-5, 5): find a person, see coverages, history,
//! service use and open cases and resolve them with a reason, register and revoke
//! institutions, read the audit log with an inclusion-proof check. The operator is the
//! name in the client certificate, and every action, reads included, is logged under it.

use super::page::{hidden, layout, Lang};
use super::session::same;
use super::{blocking, Caller, Web, WebError};
use crate::admin::{execute, AdminRequest, AdminResponse};
use crate::ca::ClientIdentity;
use crate::config::ServiceRole;
use crate::context::Context;
use crate::registry::{now, Person};
use crate::report;
use crate::store::{ConflictAction, MismatchAction};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use iryo_proto::federation::Role;
use iryo_proto::{CardNumber, CardSymbol, InstitutionCode, InsurerNumber, MedicalId, MyNumber};
use maud::{html, Markup};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// The console of a process in `role`: persons and their cases where persons are kept
/// (the registry), institutions where memberships are (the exchange authority), and
/// each one's own audit log.
pub fn routes(role: ServiceRole) -> Router<Arc<Web>> {
    let mut console = Router::new()
        .route("/", get(start))
        .route("/audit", get(audit));
    if role.registers() {
        console = console
            .route("/person", get(person))
            .route("/cases", get(super::cases::cases))
            .route("/conflicts/{id}", post(resolve_conflict))
            .route("/mismatches/{id}", post(resolve_mismatch));
    }
    if role.exchanges() {
        console = console
            .route("/institutions", get(institutions).post(add_institution))
            .route("/institutions/{code}/revoke", post(revoke_institution));
    }
    console
}

/// The console's first page: the search and counts where persons are kept, the
/// institutions on an exchange authority.
pub(super) async fn start(
    state: State<Arc<Web>>,
    caller: Extension<Caller>,
    lang: Lang,
) -> Result<Response, WebError> {
    if state.config.roles.role.registers() {
        dashboard(state, caller, lang).await
    } else {
        operator(&caller)?;
        Ok(Redirect::to("/operator/institutions").into_response())
    }
}

/// The operator the client certificate names (its common name), or 403.
pub(super) fn operator(caller: &Caller) -> Result<String, WebError> {
    match &caller.identity {
        Some(id @ ClientIdentity::Operator(_)) => Ok(id.to_string()),
        Some(other) => Err(WebError::Forbidden(format!(
            "{other} is not an operator's certificate"
        ))),
        None => Err(WebError::Forbidden(
            "an operator's client certificate from the agency CA is required".into(),
        )),
    }
}

/// The console's form token: bound to the operator and to this run of the server.
pub(super) fn csrf(web: &Web, op: &str) -> String {
    let mut h = Sha256::new();
    h.update(web.secret);
    h.update(op.as_bytes());
    iryo_proto::merkle::to_hex(&h.finalize())
}

/// The operator behind a submitted form, whose token must be the console's own.
fn acting(web: &Web, caller: &Caller, token: &str) -> Result<String, WebError> {
    let op = operator(caller)?;
    if same(&csrf(web, &op), token) {
        Ok(op)
    } else {
        Err(WebError::Forbidden(
            "bad form token; reload the page".into(),
        ))
    }
}

fn nav(lang: Lang, role: ServiceRole) -> Vec<(&'static str, &'static str)> {
    let mut nav = Vec::new();
    if role.registers() {
        nav.push(("/operator/", lang.t("検索", "Search")));
        nav.push(("/operator/cases", lang.t("未処理案件", "Open cases")));
    }
    if role.exchanges() {
        nav.push(("/operator/institutions", lang.t("医療機関", "Institutions")));
    }
    nav.push(("/operator/audit", lang.t("監査ログ", "Audit log")));
    nav
}

pub(super) fn console(
    web: &Web,
    (lang, title, here): (Lang, &str, &str),
    op: &str,
    body: Markup,
) -> Response {
    let role = web.config.roles.role;
    let body = html! {
        p { (lang.t("操作者", "Operator")) ": " b id="operator" { (op) } }
        @if role != ServiceRole::All {
            p id="role" {
                @if role.registers() {
                    (lang.t("登録機関（医療IDと本人の情報）", "Registry (medical IDs and the persons who hold them)"))
                } @else {
                    (lang.t("交換管理機関（医療機関・同意・監査ログ）", "Exchange authority (institutions, consent, the audit log)"))
                }
            }
        }
        (body)
    };
    layout(lang, title, here, &nav(lang, role), body).into_response()
}

fn search_form(lang: Lang, q: &str) -> Markup {
    html! {
        form method="get" action="/operator/person" id="search" {
            label {
                (lang.t(
                    "医療ID・個人番号・保険証（保険者番号 記号 番号 [枝番]）",
                    "Medical ID, My Number, or card (insurer symbol number [branch])"
                ))
                input name="q" id="q" value=(q) required;
            }
            button { (lang.t("検索", "Search")) }
        }
    }
}

pub(super) async fn dashboard(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    lang: Lang,
) -> Result<Response, WebError> {
    let op = operator(&caller)?;
    let (w, o) = (web.clone(), op.clone());
    let counts = blocking(move || {
        w.store
            .log_operator(&o, "viewed the dashboard (counts only)".into())?;
        Ok(w.store.counts()?)
    })
    .await?;
    let body = html! {
        (search_form(lang, ""))
        table {
            tr { th { (lang.t("登録者", "Persons")) } td { (counts.persons) } }
            tr { th { (lang.t("受診記録", "Service uses")) } td { (counts.service_uses) } }
            tr { th { (lang.t("未処理の不整合", "Open conflicts")) } td { (counts.open_conflicts) } }
            tr { th { (lang.t("未処理の不一致", "Open mismatches")) } td { (counts.open_mismatches) } }
            @if web.config.roles.role == ServiceRole::Registry {
                tr {
                    th { (lang.t("交換管理機関へ未反映の通知", "Notices not yet applied")) }
                    td id="notices-waiting" { (counts.notices_waiting) }
                }
            }
        }
    };
    Ok(console(
        &web,
        (
            lang,
            lang.t("運用コンソール", "Operator console"),
            "/operator/",
        ),
        &op,
        body,
    ))
}

/// Finds people by medical ID, My Number or card.
fn find(web: &Web, q: &str) -> Result<Vec<Person>, WebError> {
    let q = q.trim();
    if let Ok(id) = MedicalId::parse(q) {
        return Ok(web.store.person_by_medical_id(id).into_iter().collect());
    }
    if let Ok(n) = MyNumber::parse(q) {
        return Ok(web.store.person_by_my_number(n).into_iter().collect());
    }
    let parts: Vec<&str> = q
        .split([' ', ',', '/', '　'])
        .filter(|p| !p.is_empty())
        .collect();
    if let [insurer, symbol, number, rest @ ..] = parts.as_slice() {
        let bad = |what: &str, e: iryo_proto::IdError| WebError::BadRequest(format!("{what}: {e}"));
        let insurer: InsurerNumber = insurer.parse().map_err(|e| bad("insurer number", e))?;
        let symbol = CardSymbol::parse(symbol).map_err(|e| bad("card symbol", e))?;
        let number = CardNumber::parse(number).map_err(|e| bad("card number", e))?;
        let branch = match rest.first() {
            Some(b) => Some(iryo_proto::Branch::parse(b).map_err(|e| bad("branch", e))?),
            None => None,
        };
        return Ok(web
            .store
            .persons_by_card(&insurer, &symbol, &number, branch)?);
    }
    Err(WebError::BadRequest(format!(
        "{q:?} is not a medical ID, a My Number or a card"
    )))
}

#[derive(Deserialize)]
struct Search {
    q: String,
}

async fn person(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    lang: Lang,
    Query(s): Query<Search>,
) -> Result<Response, WebError> {
    let op = operator(&caller)?;
    let w = web.clone();
    let (o, q) = (op.clone(), s.q.clone());
    let found = blocking(move || {
        let people = find(&w, &q)?;
        // Each person shown sees the read in their access log; the log never holds
        // what was searched for (a My Number, a card).
        let how = if MedicalId::parse(q.trim()).is_ok() {
            "medical ID"
        } else if MyNumber::parse(q.trim()).is_ok() {
            "My Number"
        } else {
            "card"
        };
        if people.is_empty() {
            w.store
                .log_operator(&o, format!("searched by {how}: nobody found"))?;
        }
        let ids: Vec<MedicalId> = people.iter().map(|p| p.medical_id).collect();
        w.store.log_reads(
            &o,
            &ids,
            &format!("the registry record (identity, My Number, address, coverages, history, service use, consent), found by {how}"),
        )?;
        let mut out = Vec::new();
        for p in people {
            let uses = w.store.service_uses(p.pid)?;
            let consents = w.store.consents(p.medical_id)?;
            out.push((p, uses, consents));
        }
        let conflicts = w.store.conflicts(true)?;
        let mismatches = w.store.mismatches(true)?;
        Ok((out, conflicts, mismatches))
    })
    .await?;
    let (people, conflicts, mismatches) = found;
    let retention = web.store.retention_years();
    let today = crate::registry::today();
    let body = html! {
        (search_form(lang, &s.q))
        @if people.is_empty() {
            p id="not-found" { (lang.t("該当者はいません。", "Nobody found.")) }
        }
        @for (p, uses, consents) in &people {
            h2 class="mid" { (p.medical_id.grouped()) }
            pre class="person" { (report::person(p, uses, retention, today)) }
            h3 { (lang.t("同意", "Consent")) }
            ul {
                @for c in consents {
                    li {
                        (if c.allow { "allow" } else { "refuse" }) " "
                        (c.institution.map_or("all".into(), |i| i.to_string())) " "
                        (c.purpose.map_or("all", |p| p.as_str())) " "
                        (c.origin.to_string())
                    }
                }
            }
            @let cards: Vec<Vec<u8>> = p.coverages.iter().map(|c| c.card.key()).collect();
            @for c in conflicts.iter().filter(|c| c.row.my_number == p.my_number) {
                p class="flag" { (report::conflict(c)) }
            }
            @for m in mismatches.iter().filter(|m| cards.contains(&m.card.key()) || m.presented == p.medical_id) {
                p class="flag" { (report::mismatch(m)) }
            }
            p {
                a href=(format!("/operator/audit?medical_id={}", p.medical_id.plain())) {
                    (lang.t("この人の監査ログ", "This person's audit log"))
                }
            }
        }
    };
    Ok(console(
        &web,
        (lang, lang.t("登録者", "Person"), "/operator/"),
        &op,
        body,
    ))
}

pub(super) fn resolve_form(
    token: &str,
    lang: Lang,
    action: &str,
    choices: &[(&str, &str)],
) -> Markup {
    html! {
        form method="post" action=(action) {
            (hidden("csrf", token))
            select name="action" {
                @for (v, l) in choices { option value=(v) { (l) } }
            }
            input name="reason" required placeholder=(lang.t("理由（必須）", "reason (required)"));
            button { (lang.t("処理", "Resolve")) }
        }
    }
}

#[derive(Deserialize)]
struct Resolve {
    csrf: String,
    action: String,
    reason: String,
}

/// Resolves one case as the operator behind the form, then shows the queue again.
async fn resolve<A: Copy + Send + 'static>(
    web: Arc<Web>,
    caller: &Caller,
    f: Resolve,
    actions: &[(&str, A)],
    apply: impl FnOnce(&Web, A, &str, &str) -> Result<(), WebError> + Send + 'static,
) -> Result<Response, WebError> {
    let op = acting(&web, caller, &f.csrf)?;
    let action = actions
        .iter()
        .find(|(name, _)| *name == f.action)
        .map(|(_, a)| *a)
        .ok_or_else(|| WebError::BadRequest(format!("unknown action {:?}", f.action)))?;
    blocking(move || apply(&web, action, &f.reason, &op)).await?;
    Ok(Redirect::to("/operator/cases").into_response())
}

async fn resolve_conflict(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Form(f): Form<Resolve>,
) -> Result<Response, WebError> {
    let actions = [
        ("apply", ConflictAction::Apply),
        ("dismiss", ConflictAction::Dismiss),
    ];
    resolve(web, &caller, f, &actions, move |web, action, reason, op| {
        let issuer = Context::new(web.config.clone())
            .issuer_for(web.store.method()?)
            .map_err(|e| WebError::Internal(e.to_string()))?;
        web.store
            .resolve_conflict(id, action, reason, op, &issuer, now())?;
        Ok(())
    })
    .await
}

async fn resolve_mismatch(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<u64>,
    Form(f): Form<Resolve>,
) -> Result<Response, WebError> {
    let actions = [
        ("keep", MismatchAction::Keep),
        ("rebind", MismatchAction::Rebind),
    ];
    resolve(web, &caller, f, &actions, move |web, action, reason, op| {
        web.store.resolve_mismatch(id, action, reason, op, now())?;
        Ok(())
    })
    .await
}

/// Runs one of the operator commands the CLI also has, as this operator.
async fn admin(web: Arc<Web>, op: String, req: AdminRequest) -> Result<AdminResponse, WebError> {
    blocking(
        move || match execute(&*web.store, &web.agency, &web.config, &op, req) {
            AdminResponse::Error(e) => Err(WebError::BadRequest(e)),
            r => Ok(r),
        },
    )
    .await
}

async fn institutions(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    lang: Lang,
) -> Result<Response, WebError> {
    let op = operator(&caller)?;
    let AdminResponse::Institutions(list) =
        admin(web.clone(), op.clone(), AdminRequest::Institutions).await?
    else {
        return Err(WebError::Internal("unexpected answer".into()));
    };
    let token = csrf(&web, &op);
    let body = html! {
        table {
            tr {
                th { (lang.t("機関コード", "Code")) }
                th { (lang.t("名称", "Name")) }
                th { (lang.t("役割", "Roles")) }
                th { (lang.t("操作", "Action")) }
            }
            @for (r, m) in list.iter().filter_map(|r| r.membership().ok().map(|m| (r, m))) {
                tr class="institution" {
                    td { (m.code) }
                    td { (m.name) }
                    td { (format!("{:?}", m.roles)) }
                    td {
                        @if r.revoked_at.is_some() {
                            span class="flag" { (lang.t("失効", "revoked")) }
                        } @else {
                            form method="post" action=(format!("/operator/institutions/{}/revoke", m.code)) {
                                (hidden("csrf", &token))
                                button { (lang.t("失効させる", "Revoke")) }
                            }
                        }
                    }
                }
            }
        }
        h2 { (lang.t("医療機関の登録", "Register an institution")) }
        form method="post" action="/operator/institutions" id="register" {
            (hidden("csrf", &token))
            label {
                (lang.t("登録申請ファイル（registration.json）の内容", "Contents of the registration request (registration.json)"))
                textarea name="request" rows="8" cols="60" required {}
            }
            button { (lang.t("登録", "Register")) }
        }
    };
    Ok(console(
        &web,
        (
            lang,
            lang.t("医療機関", "Institutions"),
            "/operator/institutions",
        ),
        &op,
        body,
    ))
}

#[derive(Deserialize)]
struct Register {
    csrf: String,
    request: String,
}

async fn add_institution(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Form(f): Form<Register>,
) -> Result<Response, WebError> {
    let op = acting(&web, &caller, &f.csrf)?;
    let file: serde_json::Value = serde_json::from_str(&f.request)
        .map_err(|e| WebError::BadRequest(format!("the request is not JSON: {e}")))?;
    let request = serde_json::from_value(file.get("signed").cloned().unwrap_or(file))
        .map_err(|e| WebError::BadRequest(format!("no signed registration in it: {e}")))?;
    admin(
        web,
        op,
        AdminRequest::InstitutionAdd {
            request,
            roles: vec![Role::Source, Role::Requester],
        },
    )
    .await?;
    Ok(Redirect::to("/operator/institutions").into_response())
}

#[derive(Deserialize)]
struct Csrf {
    csrf: String,
}

async fn revoke_institution(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    Path(code): Path<String>,
    Form(f): Form<Csrf>,
) -> Result<Response, WebError> {
    let op = acting(&web, &caller, &f.csrf)?;
    let code: InstitutionCode = code
        .parse()
        .map_err(|e| WebError::BadRequest(format!("institution code: {e}")))?;
    admin(web, op, AdminRequest::InstitutionRevoke { code }).await?;
    Ok(Redirect::to("/operator/institutions").into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    medical_id: Option<String>,
}

async fn audit(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    lang: Lang,
    Query(q): Query<AuditQuery>,
) -> Result<Response, WebError> {
    let op = operator(&caller)?;
    let w = web.clone();
    let o = op.clone();
    let wanted = q.medical_id.clone().filter(|s| !s.trim().is_empty());
    let (entries, size) = blocking(move || {
        let size = w.store.audit_size()?;
        let entries: Vec<(u64, crate::audit::LogEntry)> = if let Some(id) = &wanted {
            let id = MedicalId::parse(id.trim())
                .map_err(|e| WebError::BadRequest(format!("medical ID: {e}")))?;
            let patient = w.store.patient(id)?;
            w.store.log_reads(
                &o,
                &[patient.medical_id()],
                "the audit log of their records",
            )?;
            w.store.audit_for_patient(&patient.holder().ids)?
        } else {
            w.store
                .log_operator(&o, "viewed the latest 50 audit log entries".into())?;
            (size.saturating_sub(50)..size)
                .map(|i| Ok((i, w.store.audit_entry(i)?)))
                .collect::<Result<_, crate::store::StoreError>>()?
        };
        let agency = w.agency.verifying_key();
        let mut out = Vec::new();
        for (i, e) in entries.into_iter().rev().take(200) {
            let proved = w.store.prove_entry(i, &agency)?;
            out.push((i, e, proved));
        }
        Ok((out, size))
    })
    .await?;
    let body = html! {
        form method="get" action="/operator/audit" {
            label {
                (lang.t("医療ID（空欄で最新50件）", "Medical ID (empty: the latest 50)"))
                input name="medical_id" value=(q.medical_id.as_deref().unwrap_or(""));
            }
            button { (lang.t("表示", "Show")) }
        }
        p { (lang.t("ログの件数", "Entries in the log")) ": " (size) }
        table id="audit" {
            tr { th { "#" } th { (lang.t("内容", "Entry")) } th { (lang.t("包含証明", "Inclusion proof")) } }
            @for (i, e, proved) in &entries {
                tr class="entry" {
                    td { (i) }
                    td { (report::audit_entry(e)) }
                    td {
                        @match proved {
                            Some(size) => span class="ok proof" { "✔ " (i) "/" (size) },
                            None => span class="flag proof" { "✘" },
                        }
                    }
                }
            }
        }
    };
    Ok(console(
        &web,
        (lang, lang.t("監査ログ", "Audit log"), "/operator/audit"),
        &op,
        body,
    ))
}
