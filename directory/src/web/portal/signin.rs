//! Signing in and activating an account with the letter's code, under the limits of
//! `web::limits`.

use super::*;

/// The sign-in form; `typed` is the medical ID a failed attempt gave, kept in its field
/// so that only the password has to be typed again.
fn login_form(lang: Lang, error: Option<&str>, typed: &str) -> Response {
    let form = |token: Markup| {
        html! {
            form method="post" action="/portal/login" id="login" {
                (token)
                label {
                    (lang.t("医療ID", "Medical ID"))
                    input name="medical_id" id="medical_id" inputmode="numeric" autocomplete="username"
                        required placeholder="1234-5678-9012-3456" value=(typed);
                }
                label {
                    (lang.t("パスワード", "Password"))
                    input type="password" name="passphrase" id="passphrase" autocomplete="current-password" required;
                }
                button id="sign-in" { (lang.t("ログイン", "Sign in")) }
            }
            p {
                a href="/portal/activate" id="to-activate" {
                    (lang.t(
                        "はじめての方（お知らせの初回登録コードで登録）",
                        "First time? Activate with the code from your letter"
                    ))
                }
            }
            p {
                a href="/portal/forgot" id="to-forgot" {
                    (lang.t(
                        "パスワードを忘れた方・お知らせをなくした方",
                        "Forgot your password or lost your letter?"
                    ))
                }
            }
        }
    };
    public_form(
        lang,
        lang.t("マイポータル", "My Portal"),
        "/portal/",
        error,
        form,
    )
}

pub(in crate::web) async fn start(
    State(web): State<Arc<Web>>,
    lang: Lang,
    headers: HeaderMap,
) -> Response {
    if matches!(current(&web, &headers).await, Ok(Some(_))) {
        return Redirect::to("/portal/home").into_response();
    }
    login_form(lang, None, "")
}

fn activate_form(lang: Lang, error: Option<&str>) -> Response {
    let form = |token: Markup| {
        html! {
            p {
                (lang.t(
                    "お知らせに記載の医療IDと初回登録コードを入力し、10文字以上のパスワードを決めてください。コードは一度だけ使えます。",
                    "Enter the medical ID and first sign-in code from your letter, and choose a password of at least 10 characters. The code works once."
                ))
            }
            form method="post" action="/portal/activate" id="activate" {
                (token)
                label {
                    (lang.t("医療ID", "Medical ID"))
                    input name="medical_id" id="medical_id" inputmode="numeric" required;
                }
                label {
                    (lang.t("初回登録コード", "First sign-in code"))
                    input name="code" id="code" autocomplete="one-time-code" required placeholder="ABCD-EFGH-JKMN";
                }
                label {
                    (lang.t("パスワード（10文字以上）", "Password (10 characters or more)"))
                    input type="password" name="passphrase" id="passphrase" autocomplete="new-password"
                        minlength=(MIN_PASSPHRASE) required;
                }
                label {
                    (lang.t("パスワード（確認のためもう一度）", "Password again"))
                    input type="password" name="passphrase2" id="passphrase2" autocomplete="new-password"
                        minlength=(MIN_PASSPHRASE) required;
                }
                button id="do-activate" { (lang.t("登録する", "Activate")) }
            }
        }
    };
    public_form(
        lang,
        lang.t("はじめての登録", "Activate your account"),
        "/portal/activate",
        error,
        form,
    )
}

/// What to do when the password is forgotten or the letter lost: a new letter.
pub(super) async fn forgot(State(web): State<Arc<Web>>, lang: Lang) -> Response {
    let body = html! {
        p {
            (lang.t(
                "パスワードを忘れたとき、またはお知らせ（初回登録コード）をなくしたときは、管理機関に連絡してください。本人であることを確かめたうえで、新しい初回登録コードを書いたお知らせを、登録されている住所へ郵送します。",
                "If you forgot your password or lost your letter (with its first sign-in code), contact the agency. Once it has confirmed who you are, it posts a new letter with a new first sign-in code to your registered address."
            ))
        }
        p id="contact" { (lang.t("連絡先: ", "Contact: ")) (web.config.letters.contact) }
        p {
            (lang.t(
                "新しいお知らせが届いたら、「はじめての登録」で新しいコードを入力し、新しいパスワードを決めてください。それまでのコードは使えなくなります。",
                "When the new letter arrives, enter its code under \"Activate your account\" and choose a new password. The old code no longer works."
            ))
        }
        p { a href="/portal/activate" { (lang.t("はじめての登録へ", "Activate your account")) } }
        p { a href="/portal/" { (lang.t("ログイン画面へ", "Back to sign-in")) } }
    };
    layout(
        lang,
        lang.t(
            "パスワードを忘れた・お知らせをなくした",
            "Forgot your password or lost your letter",
        ),
        "/portal/forgot",
        &[],
        body,
    )
    .into_response()
}

pub(super) async fn activate_page(lang: Lang) -> Response {
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
async fn attempt(
    web: &Arc<Web>,
    headers: &HeaderMap,
    caller: &Caller,
    form: &str,
    medical_id: &str,
) -> Result<Result<Ticket, Refused>, WebError> {
    form_ok(headers, form)?;
    let account = MedicalId::parse(medical_id.trim()).ok();
    let (w, address) = (web.clone(), caller.remote.ip());
    blocking(move || Ok(w.limits.admit(&*w.store, address, account, now_ms())?)).await
}

/// A try admitted by the limits with a slot to hash its password in, or why not.
async fn admit(
    web: &Arc<Web>,
    headers: &HeaderMap,
    caller: &Caller,
    form: &str,
    medical_id: &str,
) -> Result<Result<(Ticket, tokio::sync::OwnedSemaphorePermit), Refused>, WebError> {
    let ticket = match attempt(web, headers, caller, form, medical_id).await? {
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
    let body = html! {
        p class="err" id="too-many" { (text) }
        p { a href="/portal/" { (lang.t("ログイン画面へ", "Back to sign-in")) } }
    };
    (
        StatusCode::TOO_MANY_REQUESTS,
        layout(
            lang,
            lang.t("しばらくお待ちください", "Please wait"),
            "/portal/",
            &[],
            body,
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

/// Starts the person's session and sends them home; the try that proved them is
/// handed back to the limits.
pub(super) async fn signed_in(
    web: &Arc<Web>,
    ticket: Ticket,
    patient: &Patient,
) -> Result<Response, WebError> {
    let (w, pid, id) = (web.clone(), patient.holder().pid, patient.medical_id());
    let t = blocking(move || {
        w.limits.succeeded(&*w.store, ticket)?;
        Ok(session::create(&*w.store, pid, id)?)
    })
    .await?;
    Ok((
        [(header::SET_COOKIE, session_cookie(&t, session::IDLE))],
        Redirect::to("/portal/home"),
    )
        .into_response())
}

#[derive(Deserialize)]
pub(super) struct ActivateForm {
    form: String,
    medical_id: String,
    code: String,
    passphrase: String,
    passphrase2: String,
}

pub(super) async fn activate(
    State(web): State<Arc<Web>>,
    Extension(caller): Extension<Caller>,
    lang: Lang,
    headers: HeaderMap,
    Form(f): Form<ActivateForm>,
) -> Result<Response, WebError> {
    if f.passphrase != f.passphrase2 {
        return Ok(activate_form(
            lang,
            Some(lang.t("パスワードが一致しません。", "The passwords differ.")),
        ));
    }
    if f.passphrase.chars().count() < MIN_PASSPHRASE {
        return Ok(activate_form(
            lang,
            Some(lang.t(
                "パスワードは10文字以上にしてください。",
                "Use a password of at least 10 characters.",
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
        let Ok(patient) = w.store.patient(id) else {
            return Ok(None);
        };
        match w.store.activate(&patient.holder(), &f.code, &phc, now()) {
            Ok(()) => Ok(Some(patient)),
            Err(crate::store::StoreError::BadActivation) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    if let Some(patient) = outcome {
        tracing::info!(medical_id = %patient.medical_id(), "portal account activated");
        signed_in(&web, ticket, &patient).await
    } else {
        Ok(activate_form(
            lang,
            Some(lang.t(
                "医療IDまたは初回登録コードが正しくないか、使用済み・期限切れです。",
                "The medical ID or first sign-in code is wrong, used or expired.",
            )),
        ))
    }
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    form: String,
    medical_id: String,
    passphrase: String,
}

pub(super) async fn login(
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
    let typed: String = f.medical_id.trim().chars().take(40).collect();
    let w = web.clone();
    let person = blocking(move || {
        let _slot = slot;
        let person = MedicalId::parse(f.medical_id.trim())
            .ok()
            .and_then(|id| w.store.patient(id).ok());
        let phc = match &person {
            Some(p) => w.store.account(p.holder().pid)?.and_then(|a| a.passphrase),
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
        signed_in(&web, ticket, &p).await
    } else {
        Ok(login_form(
            lang,
            Some(lang.t(
                "医療IDまたはパスワードが違います。もう一度パスワードを入力してください。",
                "Wrong medical ID or password. Please type the password again.",
            )),
            &typed,
        ))
    }
}
