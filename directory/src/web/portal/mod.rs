//! My Portal (proposal §4-3): a person signs in with the medical ID and, the first time, the
//! activation code from their letter; then sees their ID and insurance, their service
//! history, who read their records (each entry proved to be in the signed log), and
//! sets consent, which the next grant obeys.

use super::limits::now_ms;
use super::limits::{Refused, Ticket};
use super::page::{cookie, hidden, layout, table_or_none, Lang};
use super::session::{self, same, token, Session, FORM_COOKIE, SESSION_COOKIE};
use super::{blocking, Caller, Web, WebError};
use crate::access::{ConsentOrigin, ConsentRecord};
use crate::audit::LogEntry;
use crate::registry::{now, today, IdState};
use crate::store::Patient;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use iryo_proto::federation::{Purpose, Side, Time};
use iryo_proto::wire::RefusalReason;
use iryo_proto::{InstitutionCode, MedicalId};
use maud::{html, Markup};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

mod consent;
mod pages;
mod signin;

use consent::{consent_change, consent_page};
use pages::{access, history, home};
pub(super) use signin::start;
use signin::{activate, activate_page, forgot, login};

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/", get(start))
        .route("/login", post(login))
        .route("/activate", get(activate_page).post(activate))
        .route("/forgot", get(forgot))
        .route("/logout", post(logout))
        .route("/home", get(home))
        .route("/history", get(history))
        .route("/access", get(access))
        .route("/consent", get(consent_page).post(consent_change))
        .layer(axum::middleware::from_fn(error_pages))
}

/// Errors a person meets become a page in their language that says what to do next;
/// the technical reason follows, as text.
async fn error_pages(
    lang: Lang,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let detail = axum::body::to_bytes(response.into_body(), 16 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let (title, what) = match status {
        StatusCode::FORBIDDEN => (
            lang.t("もう一度お試しください", "Please try again"),
            lang.t(
                "この画面の有効期限が切れたか、別のサイトから送られました。ページを読み込み直してから、もう一度お試しください。",
                "This form expired or came from another site. Reload the page and try again.",
            ),
        ),
        StatusCode::NOT_FOUND => (
            lang.t("見つかりません", "Not found"),
            lang.t(
                "お探しのページまたは記録は見つかりませんでした。下のリンクからやり直してください。",
                "The page or record was not found. Start again from the link below.",
            ),
        ),
        s if s.is_server_error() => (
            lang.t("ただいま処理できません", "We cannot do this now"),
            lang.t(
                "ただいま処理できませんでした。管理機関には自動で知らされています。しばらくしてから、もう一度お試しください。",
                "We could not do this now; the agency has been told. Please try again later.",
            ),
        ),
        _ => (
            lang.t("内容を確かめてください", "Please check what you sent"),
            lang.t(
                "送られた内容を受け付けられませんでした。前の画面に戻り、内容を確かめて、もう一度送ってください。",
                "What was sent could not be accepted. Go back, check it and send it again.",
            ),
        ),
    };
    let body = html! {
        p class="err" id="error" { (what) }
        @if !detail.is_empty() {
            p class="detail" { (lang.t("詳しい理由（英語）: ", "Details: ")) (detail) }
        }
        p { a href="/portal/" { (lang.t("マイポータルのはじめの画面へ", "Back to My Portal")) } }
    };
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        layout(lang, title, "/portal/", &[], body),
    )
        .into_response()
}

const MIN_PASSPHRASE: usize = 10;

fn session_cookie(value: &str, max_age: i64) -> String {
    format!("{SESSION_COOKIE}={value}; Path=/portal; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict")
}

fn form_cookie(value: &str) -> String {
    format!("{FORM_COOKIE}={value}; Path=/portal; Max-Age=3600; Secure; HttpOnly; SameSite=Strict")
}

/// The session the request's cookie names, if it is live.
async fn current(
    web: &Arc<Web>,
    headers: &HeaderMap,
) -> Result<Option<(String, Session)>, WebError> {
    let Some(t) = cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    let s = session::current(web, t.clone()).await?;
    Ok(s.map(|s| (t, s)))
}

fn signed_out() -> Response {
    Redirect::to("/portal/").into_response()
}

/// A signed-in person; without a session the browser goes to the sign-in page.
struct SignedIn(Session);

impl FromRequestParts<Arc<Web>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Self, Response> {
        match current(web, &parts.headers).await {
            Ok(Some((_, s))) => Ok(SignedIn(s)),
            Ok(None) => Err(signed_out()),
            Err(e) => Err(e.into_response()),
        }
    }
}

fn nav(lang: Lang) -> Vec<(&'static str, &'static str)> {
    vec![
        ("/portal/home", lang.t("ホーム", "Home")),
        ("/portal/history", lang.t("受診履歴", "Visits")),
        ("/portal/access", lang.t("閲覧記録", "Access log")),
        ("/portal/consent", lang.t("同意の設定", "Consent")),
    ]
}

/// A page of a signed-in person, with the sign-out button at the top, away from the
/// forms that change anything (the opt-out is at the foot of the consent page).
fn private(lang: Lang, title: &str, here: &str, s: &Session, body: Markup) -> Response {
    let body = html! {
        form method="post" action="/portal/logout" id="logout-form" {
            (hidden("csrf", &s.csrf))
            button id="logout" { (lang.t("ログアウト", "Sign out")) }
        }
        (body)
    };
    (
        [(header::CACHE_CONTROL, "no-store")],
        layout(lang, title, here, &nav(lang), body),
    )
        .into_response()
}

/// A sign-in or activation form with a fresh double-submit token, which `form` puts
/// inside itself.
fn public_form(
    lang: Lang,
    title: &str,
    here: &str,
    error: Option<&str>,
    form: impl FnOnce(Markup) -> Markup,
) -> Response {
    let t = token();
    let body = html! {
        @if let Some(e) = error {
            p class="err" id="error" { (e) }
        }
        (form(hidden("form", &t)))
    };
    let status = if error.is_some() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    (
        status,
        [
            (header::SET_COOKIE, form_cookie(&t)),
            (header::CACHE_CONTROL, "no-store".into()),
        ],
        layout(lang, title, here, &[], body),
    )
        .into_response()
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    Form(f): Form<CsrfForm>,
) -> Result<Response, WebError> {
    if let Some((t, s)) = current(&web, &headers).await? {
        if !same(&s.csrf, &f.csrf) {
            return Err(WebError::Forbidden("bad form token".into()));
        }
        let w = web.clone();
        blocking(move || Ok(session::end(&*w.store, &t)?)).await?;
    }
    Ok((
        [(header::SET_COOKIE, session_cookie("", 0))],
        Redirect::to("/portal/"),
    )
        .into_response())
}

fn purpose(lang: Lang, p: Option<Purpose>) -> &'static str {
    match p {
        None => lang.t("すべての目的", "all purposes"),
        Some(Purpose::Treatment) => lang.t("診療", "treatment"),
        Some(Purpose::Referral) => lang.t("紹介", "referral"),
        Some(Purpose::Research) => lang.t("研究", "research"),
        Some(Purpose::Emergency) => lang.t("救急", "emergency"),
    }
}

fn refusal(lang: Lang, r: &RefusalReason) -> String {
    let (ja, en) = match r {
        RefusalReason::NoConsent => ("同意がないため", "no consent"),
        RefusalReason::ReasonRequired => ("救急の理由がないため", "no emergency reason given"),
        RefusalReason::NotMember | RefusalReason::Revoked => (
            "登録されていない医療機関のため",
            "not a registered institution",
        ),
        RefusalReason::Retired => ("医療IDが廃止されているため", "medical ID retired"),
        RefusalReason::Deceased => ("研究目的のみ可能なため", "research only"),
        _ => ("その他の理由", "other reason"),
    };
    lang.t(ja, en).to_string()
}

fn origin(lang: Lang, o: &ConsentOrigin) -> String {
    match o {
        ConsentOrigin::Portal => lang.t("マイポータル", "My Portal").to_string(),
        ConsentOrigin::Operator(_) => lang.t("機関の窓口", "agency office").to_string(),
        ConsentOrigin::Visit(code) => format!("{} {code}", lang.t("受診時の同意", "at a visit to")),
    }
}

/// Names of institutions, looked up once per page. Plain text: the templates escape it.
struct Names<'a> {
    web: &'a Web,
    seen: HashMap<InstitutionCode, String>,
}

impl Names<'_> {
    /// The institution's name and code.
    fn of(&mut self, code: InstitutionCode) -> String {
        if let Some(n) = self.seen.get(&code) {
            return n.clone();
        }
        let name = match self.web.store.institution(code) {
            Ok(Some(r)) => r
                .membership()
                .map_or_else(|_| code.to_string(), |m| format!("{} ({code})", m.name)),
            _ => code.to_string(),
        };
        self.seen.insert(code, name.clone());
        name
    }
}
