//! My Portal (proposal §4-3): a person signs in with the medical ID and, the first time, the
//! activation code from their letter; then sees their ID and insurance, their service
//! history, who read their records (each entry proved to be in the signed log), and
//! sets consent, which the next grant obeys.

use super::limits::{Refused, Ticket};
use super::page::{cookie, esc, hidden, layout, table_or_none, Lang};
use super::session::{same, token, Session, FORM_COOKIE, SESSION_COOKIE};
use super::{blocking, Caller, Web, WebError};
use crate::access::{ConsentOrigin, ConsentRecord};
use crate::audit::LogEntry;
use crate::registry::{now, today, IdState, Person};
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
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/", get(start))
        .route("/login", post(login))
        .route("/activate", get(activate_page).post(activate))
        .route("/logout", post(logout))
        .route("/home", get(home))
        .route("/history", get(history))
        .route("/access", get(access))
        .route("/consent", get(consent_page).post(consent_change))
}

const MIN_PASSPHRASE: usize = 10;

fn session_cookie(value: &str, max_age: i64) -> String {
    format!("{SESSION_COOKIE}={value}; Path=/portal; Max-Age={max_age}; Secure; HttpOnly; SameSite=Strict")
}

fn form_cookie(value: &str) -> String {
    format!("{FORM_COOKIE}={value}; Path=/portal; Max-Age=3600; Secure; HttpOnly; SameSite=Strict")
}

fn current(web: &Web, headers: &HeaderMap) -> Option<(String, Session)> {
    let t = cookie(headers, SESSION_COOKIE).filter(|t| !t.is_empty())?;
    let s = web.sessions.get(&t)?;
    Some((t, s))
}

fn signed_out() -> Response {
    Redirect::to("/portal/").into_response()
}

/// A signed-in person; without a session the browser goes to the sign-in page.
struct SignedIn(Session);

impl FromRequestParts<Arc<Web>> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Self, Response> {
        current(web, &parts.headers)
            .map(|(_, s)| SignedIn(s))
            .ok_or_else(signed_out)
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

/// A page of a signed-in person, with the sign-out button.
fn private(lang: Lang, title: &str, here: &str, s: &Session, body: &str) -> Response {
    let body = format!(
        "{body}<form method=\"post\" action=\"/portal/logout\">{}<button id=\"logout\">{}</button></form>",
        hidden("csrf", &s.csrf),
        lang.t("ログアウト", "Sign out")
    );
    (
        [(header::CACHE_CONTROL, "no-store")],
        layout(lang, title, here, &nav(lang), &body),
    )
        .into_response()
}

/// A sign-in or activation form with a fresh double-submit token.
fn public_form(lang: Lang, title: &str, here: &str, error: Option<&str>, form: &str) -> Response {
    let t = token();
    let err = error.map_or(String::new(), |e| {
        format!("<p class=\"err\" id=\"error\">{}</p>", esc(e))
    });
    let body = format!("{err}{}", form.replace("{FORM}", &hidden("form", &t)));
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
        layout(lang, title, here, &[], &body),
    )
        .into_response()
}

fn login_form(lang: Lang, error: Option<&str>) -> Response {
    let form = format!(
        "<form method=\"post\" action=\"/portal/login\" id=\"login\">{{FORM}}\
<label>{id}<input name=\"medical_id\" id=\"medical_id\" inputmode=\"numeric\" autocomplete=\"username\" required placeholder=\"1234-5678-9012-3456\"></label>\
<label>{pw}<input type=\"password\" name=\"passphrase\" id=\"passphrase\" autocomplete=\"current-password\" required></label>\
<button id=\"sign-in\">{go}</button></form>\
<p><a href=\"/portal/activate\" id=\"to-activate\">{first}</a></p>",
        id = lang.t("医療ID", "Medical ID"),
        pw = lang.t("パスフレーズ", "Passphrase"),
        go = lang.t("ログイン", "Sign in"),
        first = lang.t(
            "はじめての方（お知らせの活性化コードで登録）",
            "First time? Activate with the code from your letter"
        ),
    );
    public_form(
        lang,
        lang.t("マイポータル", "My Portal"),
        "/portal/",
        error,
        &form,
    )
}

pub(super) async fn start(State(web): State<Arc<Web>>, lang: Lang, headers: HeaderMap) -> Response {
    if current(&web, &headers).is_some() {
        return Redirect::to("/portal/home").into_response();
    }
    login_form(lang, None)
}

fn activate_form(lang: Lang, error: Option<&str>) -> Response {
    let form = format!(
        "<p>{intro}</p><form method=\"post\" action=\"/portal/activate\" id=\"activate\">{{FORM}}\
<label>{id}<input name=\"medical_id\" id=\"medical_id\" inputmode=\"numeric\" required></label>\
<label>{code}<input name=\"code\" id=\"code\" autocomplete=\"one-time-code\" required placeholder=\"ABCD-EFGH-JKMN\"></label>\
<label>{pw}<input type=\"password\" name=\"passphrase\" id=\"passphrase\" autocomplete=\"new-password\" minlength=\"{MIN_PASSPHRASE}\" required></label>\
<label>{pw2}<input type=\"password\" name=\"passphrase2\" id=\"passphrase2\" autocomplete=\"new-password\" minlength=\"{MIN_PASSPHRASE}\" required></label>\
<button id=\"do-activate\">{go}</button></form>",
        intro = lang.t(
            "お知らせに記載の医療IDと活性化コードを入力し、10文字以上のパスフレーズを決めてください。コードは一度だけ使えます。",
            "Enter the medical ID and activation code from your letter, and choose a passphrase of at least 10 characters. The code works once."
        ),
        id = lang.t("医療ID", "Medical ID"),
        code = lang.t("活性化コード", "Activation code"),
        pw = lang.t("パスフレーズ", "Passphrase"),
        pw2 = lang.t("パスフレーズ（確認）", "Passphrase again"),
        go = lang.t("登録する", "Activate"),
    );
    public_form(
        lang,
        lang.t("はじめての登録", "Activate your account"),
        "/portal/activate",
        error,
        &form,
    )
}

async fn activate_page(lang: Lang) -> Response {
    activate_form(lang, None)
}

/// The double-submit check of a form sent before sign-in.
fn form_ok(headers: &HeaderMap, field: &str) -> Result<(), WebError> {
    match cookie(headers, FORM_COOKIE) {
        Some(c) if same(&c, field) => Ok(()),
        _ => Err(WebError::Forbidden(
            "the form expired or came from another site; reload the page".into(),
        )),
    }
}

/// Admits one sign-in or activation try: the form's own token, then the limits
/// (`super::limits`), which count the try before anything is hashed. The account is
/// the parsed medical ID, however it was typed.
fn attempt(
    web: &Web,
    headers: &HeaderMap,
    caller: &Caller,
    form: &str,
    medical_id: &str,
) -> Result<Result<Ticket, Refused>, WebError> {
    form_ok(headers, form)?;
    let account = MedicalId::parse(medical_id.trim()).ok();
    Ok(web
        .limits
        .admit(caller.remote.ip(), account, std::time::Instant::now()))
}

/// A try admitted by the limits with a slot to hash its password in, or why not.
async fn admit(
    web: &Web,
    headers: &HeaderMap,
    caller: &Caller,
    form: &str,
    medical_id: &str,
) -> Result<Result<(Ticket, tokio::sync::OwnedSemaphorePermit), Refused>, WebError> {
    let ticket = match attempt(web, headers, caller, form, medical_id)? {
        Ok(t) => t,
        Err(why) => return Ok(Err(why)),
    };
    Ok(web.limits.hashing().await.map(|slot| (ticket, slot)))
}

/// The answer to a refused try, in the page's language, saying what to do next.
fn refused(lang: Lang, why: Refused) -> Response {
    let minutes = |d: std::time::Duration| d.as_secs().div_ceil(60).max(1);
    let text = match why {
        Refused::Address(wait) => match lang {
            Lang::Ja => format!(
                "この端末からの失敗が続いたため、しばらく受け付けません。{}分後にもう一度お試しください。",
                minutes(wait)
            ),
            Lang::En => format!(
                "Too many failed tries from this device. Please try again in {} minutes.",
                minutes(wait)
            ),
        },
        Refused::Account(wait) => {
            let secs = wait.as_secs().max(1);
            match lang {
                Lang::Ja => format!(
                    "この医療IDへの失敗が続いたため、次の試行まで{secs}秒お待ちください。心当たりがなければ、保険者または管理機関にご連絡ください。"
                ),
                Lang::En => format!(
                    "There were many failed tries for this medical ID. Please wait {secs} seconds before the next try. If they were not yours, tell your insurer or the agency."
                ),
            }
        }
        Refused::Busy => lang
            .t(
                "ただいま混み合っています。少し待ってからもう一度お試しください。",
                "We are busy. Please wait a moment and try again.",
            )
            .to_string(),
    };
    let body = format!(
        "<p class=\"err\" id=\"too-many\">{}</p><p><a href=\"/portal/\">{}</a></p>",
        esc(&text),
        lang.t("ログイン画面へ", "Back to sign-in")
    );
    (
        StatusCode::TOO_MANY_REQUESTS,
        layout(
            lang,
            lang.t("しばらくお待ちください", "Please wait"),
            "/portal/",
            &[],
            &body,
        ),
    )
        .into_response()
}

/// A PHC string of the same Argon2 parameters as real accounts', checked when the
/// account has none, so that a wrong guess costs the same whoever the ID belongs to.
fn dummy_phc() -> &'static str {
    static PHC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PHC.get_or_init(|| {
        Argon2::default()
            .hash_password(b"no account has this passphrase")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

fn signed_in(web: &Web, person: &Person) -> Response {
    let (t, _) = web.sessions.create(person.pid, person.medical_id);
    (
        [(header::SET_COOKIE, session_cookie(&t, 1800))],
        Redirect::to("/portal/home"),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ActivateForm {
    form: String,
    medical_id: String,
    code: String,
    passphrase: String,
    passphrase2: String,
}

async fn activate(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    lang: Lang,
    headers: HeaderMap,
    Form(f): Form<ActivateForm>,
) -> Result<Response, WebError> {
    if f.passphrase != f.passphrase2 {
        return Ok(activate_form(
            lang,
            Some(lang.t("パスフレーズが一致しません。", "The passphrases differ.")),
        ));
    }
    if f.passphrase.chars().count() < MIN_PASSPHRASE {
        return Ok(activate_form(
            lang,
            Some(lang.t(
                "パスフレーズは10文字以上にしてください。",
                "Use a passphrase of at least 10 characters.",
            )),
        ));
    }
    let (ticket, slot) = match admit(&web, &headers, &caller, &f.form, &f.medical_id).await? {
        Ok(admitted) => admitted,
        Err(why) => return Ok(refused(lang, why)),
    };
    let w = web.clone();
    let outcome = blocking(move || {
        let _slot = slot;
        // The hash comes first, for every try: an unknown ID costs what a known one does.
        let phc = Argon2::default()
            .hash_password(f.passphrase.as_bytes())
            .map_err(|e| WebError::Internal(e.to_string()))?
            .to_string();
        crate::metrics::metrics().portal_hash();
        let Ok(id) = MedicalId::parse(f.medical_id.trim()) else {
            return Ok(None);
        };
        let Ok(person) = w.store.person_by_medical_id(id) else {
            return Ok(None);
        };
        match w.store.activate(person.pid, &f.code, &phc, now()) {
            Ok(()) => Ok(Some(person)),
            Err(crate::store::StoreError::BadActivation) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    if let Some(person) = outcome {
        web.limits.succeeded(ticket);
        tracing::info!(medical_id = %person.medical_id, "portal account activated");
        Ok(signed_in(&web, &person))
    } else {
        Ok(activate_form(
            lang,
            Some(lang.t(
                "医療IDまたは活性化コードが正しくないか、使用済み・期限切れです。",
                "The medical ID or activation code is wrong, used or expired.",
            )),
        ))
    }
}

#[derive(Deserialize)]
struct LoginForm {
    form: String,
    medical_id: String,
    passphrase: String,
}

async fn login(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    lang: Lang,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Result<Response, WebError> {
    let (ticket, slot) = match admit(&web, &headers, &caller, &f.form, &f.medical_id).await? {
        Ok(admitted) => admitted,
        Err(why) => return Ok(refused(lang, why)),
    };
    let w = web.clone();
    let person = blocking(move || {
        let _slot = slot;
        let person = MedicalId::parse(f.medical_id.trim())
            .ok()
            .and_then(|id| w.store.person_by_medical_id(id).ok());
        let phc = match &person {
            Some(p) => w.store.account(p.pid)?.and_then(|a| a.passphrase),
            None => None,
        };
        // One verification whoever the ID belongs to, activated or not: the time of
        // the answer tells nothing about the account.
        let real = phc.is_some();
        let against = phc.unwrap_or_else(|| dummy_phc().to_string());
        let ok = Argon2::default()
            .verify_password(f.passphrase.as_bytes(), against.as_str())
            .is_ok();
        crate::metrics::metrics().portal_hash();
        Ok(person.filter(|_| ok && real))
    })
    .await?;
    if let Some(p) = person {
        web.limits.succeeded(ticket);
        Ok(signed_in(&web, &p))
    } else {
        Ok(login_form(
            lang,
            Some(lang.t(
                "医療IDまたはパスフレーズが違います。",
                "Wrong medical ID or passphrase.",
            )),
        ))
    }
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
    if let Some((t, s)) = current(&web, &headers) {
        if !same(&s.csrf, &f.csrf) {
            return Err(WebError::Forbidden("bad form token".into()));
        }
        web.sessions.end(&t);
    }
    Ok((
        [(header::SET_COOKIE, session_cookie("", 0))],
        Redirect::to("/portal/"),
    )
        .into_response())
}

fn time(t: Time) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| {
            d.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        })
        .unwrap_or_default()
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

/// Names of institutions, looked up once per page.
struct Names<'a> {
    web: &'a Web,
    seen: HashMap<InstitutionCode, String>,
}

impl Names<'_> {
    /// The institution's name and code, escaped for HTML: every time, the first and
    /// any later (the cache holds the escaped form, never the raw name).
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
        let html = esc(&name);
        self.seen.insert(code, html.clone());
        html
    }
}

async fn home(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
) -> Result<Response, WebError> {
    let w = web.clone();
    let pid_id = s.medical_id;
    let person = blocking(move || Ok(w.store.person_by_medical_id(pid_id)?)).await?;
    let day = today();
    let coverage = match person.coverage_on(day) {
        Some(c) => format!(
            "<span class=\"ok\" id=\"coverage\">{}</span> — {} {} {} ({} {}〜{})",
            lang.t("加入中", "Covered"),
            lang.t("保険者番号", "insurer"),
            esc(c.card.insurer.as_str()),
            esc(&c.card.to_string()),
            lang.t("資格取得日", "from"),
            c.from,
            c.until.map(|u| u.to_string()).unwrap_or_default()
        ),
        None => format!(
            "<span class=\"flag\" id=\"coverage\">{}</span>",
            lang.t(
                "現在、有効な保険資格はありません",
                "No insurance in force today"
            )
        ),
    };
    let state = match person.id_state(day, web.store.retention_years()) {
        IdState::Active => lang.t("有効", "active"),
        IdState::Deceased { .. } => lang.t("死亡により資格終了", "ended by death"),
        IdState::Retired => lang.t("廃止", "retired"),
    };
    let body = format!(
        "<table><tr><th>{l_id}</th><td class=\"mid\" id=\"medical-id\">{id}</td></tr>\
<tr><th>{l_name}</th><td>{name}<br>{kana}</td></tr>\
<tr><th>{l_state}</th><td>{state}</td></tr>\
<tr><th>{l_ins}</th><td>{coverage}</td></tr></table>",
        l_id = lang.t("医療ID", "Medical ID"),
        id = esc(&person.medical_id.grouped()),
        l_name = lang.t("氏名", "Name"),
        name = esc(&person.identity.name.to_string()),
        kana = esc(&person.identity.kana.to_string()),
        l_state = lang.t("医療IDの状態", "ID status"),
        l_ins = lang.t("保険", "Insurance"),
    );
    Ok(private(
        lang,
        lang.t("マイポータル", "My Portal"),
        "/portal/home",
        &s,
        &body,
    ))
}

async fn history(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
) -> Result<Response, WebError> {
    let w = web.clone();
    let pid = s.pid;
    let rows = blocking(move || {
        let uses = w.store.reader()?.service_uses(pid)?;
        let mut names = Names {
            web: &w,
            seen: HashMap::new(),
        };
        Ok(uses
            .iter()
            .rev()
            .map(|u| {
                format!(
                    "<tr class=\"visit\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                    u.date,
                    names.of(u.institution),
                    if u.eligible {
                        lang.t("資格確認済み", "eligible")
                    } else {
                        lang.t("資格なし", "not eligible")
                    }
                )
            })
            .collect::<String>())
    })
    .await?;
    let body = table_or_none(
        "visits",
        lang.t(
            "医療機関で資格確認が行われた記録です（新しい順）。",
            "Where your eligibility was checked (newest first).",
        ),
        &[
            lang.t("日付", "Date"),
            lang.t("医療機関", "Institution"),
            lang.t("結果", "Result"),
        ],
        &rows,
        lang.t("受診の記録はまだありません。", "No visits recorded yet."),
    );
    Ok(private(
        lang,
        lang.t("受診履歴", "Visits"),
        "/portal/history",
        &s,
        &body,
    ))
}

fn describe(lang: Lang, names: &mut Names<'_>, entry: &LogEntry) -> Option<(Time, String, bool)> {
    match entry {
        LogEntry::Notification { notification, .. } => {
            let n = notification.open_unverified().ok()?;
            let what = match n.side {
                Side::Disclosed => format!(
                    "{} → {}: {} ({} {})",
                    names.of(n.source),
                    names.of(n.requester),
                    lang.t("記録を開示", "records disclosed"),
                    n.record_count,
                    esc(&n.resource_types.join(", "))
                ),
                Side::Received => format!(
                    "{} ← {}: {} ({} {})",
                    names.of(n.requester),
                    names.of(n.source),
                    lang.t("記録を受領", "records received"),
                    n.record_count,
                    esc(&n.resource_types.join(", "))
                ),
            };
            Some((
                n.at,
                format!("{what} — {}", purpose(lang, Some(n.purpose))),
                n.emergency,
            ))
        }
        LogEntry::GrantIssued {
            requester,
            source,
            purpose: p,
            emergency_reason,
            at,
            ..
        } => Some((
            *at,
            format!(
                "{}: {} ← {} — {}{}",
                lang.t("閲覧を許可", "access granted"),
                names.of(*requester),
                names.of(*source),
                purpose(lang, Some(*p)),
                emergency_reason.as_ref().map_or(String::new(), |r| format!(
                    " — {}: {}",
                    lang.t("理由", "reason"),
                    esc(r)
                ))
            ),
            emergency_reason.is_some(),
        )),
        LogEntry::GrantRefused {
            requester,
            source,
            purpose: p,
            reason,
            at,
            ..
        } => Some((
            *at,
            format!(
                "{}: {} ← {} — {} ({})",
                lang.t("閲覧を拒否", "access refused"),
                names.of(*requester),
                names.of(*source),
                purpose(lang, Some(*p)),
                refusal(lang, reason)
            ),
            false,
        )),
        LogEntry::AccessRefused { report, .. } => {
            let r = report.open_unverified().ok()?;
            let requester = match r.requester {
                Some(c) => names.of(c),
                None => lang.t("不明な機関", "an unknown institution").to_string(),
            };
            Some((
                r.at,
                format!(
                    "{}: {} ← {} — {} ({})",
                    lang.t(
                        "閲覧を拒否（記録の保有機関）",
                        "access refused by the source"
                    ),
                    requester,
                    names.of(r.source),
                    purpose(lang, Some(r.purpose)),
                    refusal(lang, &r.reason)
                ),
                true,
            ))
        }
        LogEntry::OperatorRead {
            operator, what, at, ..
        } => Some((
            *at,
            format!(
                "{}: {} ({})",
                lang.t("管理機関の職員が閲覧", "read by the agency's staff"),
                esc(what),
                esc(operator)
            ),
            false,
        )),
        LogEntry::Eligibility { .. } | LogEntry::Operator { .. } => None,
    }
}

async fn access(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
) -> Result<Response, WebError> {
    let w = web.clone();
    let id = s.medical_id;
    let rows = blocking(move || {
        let person = w.store.person_by_medical_id(id)?;
        let entries = w.store.audit_for_person(&person)?;
        let agency = w.agency.verifying_key();
        let mut names = Names {
            web: &w,
            seen: HashMap::new(),
        };
        let mut out = String::new();
        // The newest 200: a person reads what happened lately.
        for (index, entry) in entries.iter().rev().take(200) {
            let Some((at, text, emergency)) = describe(lang, &mut names, entry) else {
                continue;
            };
            let proof = match w.store.prove_entry(*index, &agency)? {
                Some(size) => format!(
                    "<span class=\"ok proof\">✔ {} #{index} / {size}</span>",
                    lang.t("署名付き監査ログに記録", "in the signed audit log")
                ),
                None => format!(
                    "<span class=\"flag proof\">✘ {}</span>",
                    lang.t("検証できません", "cannot be verified")
                ),
            };
            let flag = if emergency {
                format!(
                    " <span class=\"flag emergency\">{}</span>",
                    lang.t("救急アクセス", "EMERGENCY")
                )
            } else {
                String::new()
            };
            out.push_str(&format!(
                "<tr class=\"access\"><td>{}</td><td>{text}{flag}</td><td>{proof}</td></tr>",
                time(at)
            ));
        }
        Ok(out)
    })
    .await?;
    let body = table_or_none(
        "access",
        lang.t(
            "どの医療機関が、いつ、なぜあなたの記録を閲覧したかの記録です。各行は機関が署名した監査ログに含まれることを確認しています。",
            "Which institution read your records, when and why. Each line is checked to be in the agency's signed audit log.",
        ),
        &[
            lang.t("日時", "When"),
            lang.t("内容", "What"),
            lang.t("証明", "Proof"),
        ],
        &rows,
        lang.t("閲覧の記録はありません。", "Nobody has accessed your records."),
    );
    Ok(private(
        lang,
        lang.t("閲覧記録", "Access log"),
        "/portal/access",
        &s,
        &body,
    ))
}

async fn consent_page(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
) -> Result<Response, WebError> {
    let w = web.clone();
    let id = s.medical_id;
    let (records, institutions) = blocking(move || {
        let records = w.store.consents(id)?;
        let institutions = w.store.institutions()?;
        Ok((records, institutions))
    })
    .await?;
    let mut names = Names {
        web: &web,
        seen: HashMap::new(),
    };
    let rows: String = records
        .iter()
        .rev()
        .map(|r| {
            format!(
                "<tr class=\"consent\"><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
                time(r.at),
                r.institution
                    .map_or(lang.t("すべての医療機関", "all institutions").to_string(), |c| names.of(c)),
                purpose(lang, r.purpose),
                if r.allow { "ok" } else { "flag" },
                if r.allow { lang.t("許可", "allow") } else { lang.t("拒否", "refuse") },
                r.expires_at.map_or_else(|| lang.t("なし", "none").into(), time),
                esc(&origin(lang, &r.origin)),
            )
        })
        .collect();
    let options: String = institutions
        .iter()
        .filter(|i| i.revoked_at.is_none())
        .filter_map(|i| i.membership().ok())
        .map(|m| {
            format!(
                "<option value=\"{}\">{} ({})</option>",
                m.code,
                esc(&m.name),
                m.code
            )
        })
        .collect();
    let purposes: String = [
        ("", lang.t("選んでください", "Choose")),
        ("treatment", purpose(lang, Some(Purpose::Treatment))),
        ("referral", purpose(lang, Some(Purpose::Referral))),
        (
            "all",
            lang.t(
                "診療と紹介（研究は含みません）",
                "Treatment and referral (not research)",
            ),
        ),
        ("research", purpose(lang, Some(Purpose::Research))),
    ]
    .iter()
    .map(|(v, l)| format!("<option value=\"{v}\">{l}</option>"))
    .collect();
    let body = format!(
        "<p>{intro}</p><table id=\"consents\"><tr><th>{l_at}</th><th>{l_inst}</th><th>{l_purpose}</th><th>{l_dec}</th><th>{l_exp}</th><th>{l_origin}</th></tr>{rows}</table>\
<h2>{l_change}</h2><form method=\"post\" action=\"/portal/consent\" id=\"consent-form\">{csrf}\
<label>{l_dec}<select name=\"action\" id=\"action\" required><option value=\"\" selected>{l_choose}</option><option value=\"grant\">{l_allow}</option><option value=\"revoke\">{l_refuse}</option></select></label>\
<label>{l_inst}<select name=\"institution\" id=\"institution\" required><option value=\"\" selected>{l_choose}</option>{options}<option value=\"all\">{l_all}</option></select></label>\
<label>{l_purpose}<select name=\"purpose\" id=\"purpose\" required>{purposes}</select></label>\
<label>{l_exp}<input type=\"date\" name=\"expires\" id=\"expires\"></label>\
<button id=\"save-consent\">{l_save}</button></form>\
<h2>{l_optout}</h2><form method=\"post\" action=\"/portal/consent\" id=\"optout-form\">{csrf}{optout}\
<button id=\"optout\">{l_optout_btn}</button></form>",
        intro = lang.t(
            "記録の共有についてのあなたの決定です。新しい決定ほど優先され、次の閲覧許可から適用されます。救急の場合は同意なしで閲覧されることがあり、その場合は閲覧記録に表示されます。",
            "Your decisions on sharing your records. The newest decision wins and applies from the next access grant. In an emergency records may be read without consent; such access is flagged in your access log."
        ),
        l_at = lang.t("日時", "When"),
        l_inst = lang.t("医療機関", "Institution"),
        l_purpose = lang.t("目的", "Purpose"),
        l_dec = lang.t("決定", "Decision"),
        l_exp = lang.t("有効期限", "Expires"),
        l_origin = lang.t("登録元", "Set by"),
        l_change = lang.t("同意を変更する", "Change consent"),
        l_allow = lang.t("許可する", "Allow"),
        l_refuse = lang.t("拒否する", "Refuse"),
        l_all = lang.t("すべての医療機関", "All institutions"),
        l_choose = lang.t("選んでください", "Choose"),
        l_save = lang.t("保存", "Save"),
        l_optout = lang.t("すべての共有を停止", "Opt out of all exchange"),
        l_optout_btn = lang.t("すべての医療機関への共有を停止する", "Stop all sharing"),
        csrf = hidden("csrf", &s.csrf),
        optout = hidden("action", "optout"),
    );
    Ok(private(
        lang,
        lang.t("同意の設定", "Consent"),
        "/portal/consent",
        &s,
        &body,
    ))
}

#[derive(Deserialize)]
struct ConsentForm {
    csrf: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    institution: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    expires: String,
    /// "yes" from the confirmation page.
    #[serde(default)]
    confirm: String,
}

/// The answer to a consent form sent without a choice: nothing is recorded.
fn consent_incomplete(lang: Lang) -> Response {
    let body = format!(
        "<p class=\"err\" id=\"consent-incomplete\">{}</p><p><a href=\"/portal/consent\">{}</a></p>",
        lang.t(
            "決定・医療機関・目的をすべて選んでください。何も変更していません。",
            "Choose a decision, an institution and a purpose. Nothing was changed."
        ),
        lang.t("同意の設定に戻る", "Back to consent")
    );
    (
        StatusCode::BAD_REQUEST,
        layout(
            lang,
            lang.t("同意の設定", "Consent"),
            "/portal/consent",
            &[],
            &body,
        ),
    )
        .into_response()
}

/// The second page of a wide decision: what will happen, in a sentence, and a button
/// that confirms it; nothing is recorded until it is pressed.
fn consent_confirm(
    lang: Lang,
    s: &Session,
    f: &ConsentForm,
    all: bool,
    institution: Option<InstitutionCode>,
    purpose_: Option<Purpose>,
    mut names: Names<'_>,
) -> Response {
    let who = institution.map_or_else(
        || esc(lang.t("すべての医療機関", "every institution")),
        |c| names.of(c),
    );
    let why = match purpose_ {
        Some(p) => purpose(lang, Some(p)).to_string(),
        None => lang
            .t(
                "診療と紹介（研究は含みません）",
                "treatment and referral (not research)",
            )
            .to_string(),
    };
    let sentence = if all {
        lang.t(
            "すべての医療機関への記録の共有を止めます。救急の場合を除き、どの医療機関もあなたの記録を閲覧できなくなります。あとで、この画面からいつでも共有を許可し直せます。",
            "Sharing with every institution stops: no institution can read your records, except in an emergency. You can allow sharing again on this page at any time.",
        )
        .to_string()
    } else {
        match lang {
            Lang::Ja => format!("{who}が、{why}のために、あなたの記録を閲覧できるようになります。"),
            Lang::En => format!("{who} will be able to read your records for {why}."),
        }
    };
    let keep = [
        hidden("csrf", &s.csrf),
        hidden("action", &f.action),
        hidden("institution", &f.institution),
        hidden("purpose", &f.purpose),
        hidden("expires", &f.expires),
        hidden("confirm", "yes"),
    ]
    .concat();
    // `who` is escaped already (`Names::of`); the rest is the page's own text.
    let body = format!(
        "<p id=\"consent-sentence\">{}</p><form method=\"post\" action=\"/portal/consent\" id=\"confirm-form\">{keep}\
<button id=\"confirm-consent\">{}</button></form><p><a href=\"/portal/consent\" id=\"cancel-consent\">{}</a></p>",
        sentence,
        lang.t("はい、このとおりにします", "Yes, do this"),
        lang.t("やめる（何も変更しません）", "Cancel (nothing changes)"),
    );
    layout(
        lang,
        lang.t("確認してください", "Please confirm"),
        "/portal/consent",
        &[],
        &body,
    )
    .into_response()
}

async fn consent_change(
    State(web): State<Arc<Web>>,
    lang: Lang,
    SignedIn(s): SignedIn,
    Form(f): Form<ConsentForm>,
) -> Result<Response, WebError> {
    if !same(&s.csrf, &f.csrf) {
        return Err(WebError::Forbidden(
            "bad form token; reload the page".into(),
        ));
    }
    let (allow, all) = match f.action.as_str() {
        "grant" => (true, false),
        "revoke" => (false, false),
        "optout" => (false, true),
        // Nothing is decided for a person who chose nothing.
        "" => return Ok(consent_incomplete(lang)),
        other => return Err(WebError::BadRequest(format!("unknown action {other:?}"))),
    };
    let institution = match f.institution.trim() {
        _ if all => None,
        "" => return Ok(consent_incomplete(lang)),
        "all" => None,
        c => Some(
            c.parse::<InstitutionCode>()
                .map_err(|e| WebError::BadRequest(format!("institution: {e}")))?,
        ),
    };
    let purpose = match f.purpose.trim() {
        _ if all => None,
        "" => return Ok(consent_incomplete(lang)),
        "all" => None,
        p => Some(Purpose::parse(p).ok_or_else(|| WebError::BadRequest(format!("purpose {p:?}")))?),
    };
    let expires_at = match f.expires.trim() {
        "" => None,
        _ if all => None,
        d => Some(
            // Valid through the day chosen: it lapses at the next midnight.
            chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d")
                .map_err(|_| WebError::BadRequest(format!("expiry date {d:?}")))?
                .succ_opt()
                .and_then(|next| next.and_hms_opt(0, 0, 0))
                .and_then(|t| t.and_local_timezone(chrono::Local).single())
                .map(|t| t.timestamp())
                .ok_or_else(|| WebError::BadRequest(format!("expiry date {d:?}")))?,
        ),
    };
    // Sharing wider than one institution and one purpose, and stopping all sharing,
    // are confirmed on a second page that says what will happen.
    let wide = all || (allow && (institution.is_none() || purpose.is_none()));
    if wide && f.confirm != "yes" {
        let names = Names {
            web: &web,
            seen: HashMap::new(),
        };
        return Ok(consent_confirm(
            lang,
            &s,
            &f,
            all,
            institution,
            purpose,
            names,
        ));
    }
    let record = ConsentRecord {
        institution,
        purpose,
        allow,
        expires_at,
        at: now(),
        origin: ConsentOrigin::Portal,
    };
    let id = s.medical_id;
    let w = web.clone();
    blocking(move || Ok(w.store.add_consent(id, &record)?)).await?;
    tracing::info!(medical_id = %id, action = %f.action, "consent changed in the portal");
    Ok(Redirect::to("/portal/consent").into_response())
}
