//! Consent: the person's decisions, the form that changes them, and the confirmation
//! of wide ones.

use super::*;

pub(super) async fn consent_page(
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
    let purposes = [
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
    ];
    let choose = lang.t("選んでください", "Choose");
    let (l_inst, l_purpose, l_dec, l_exp) = (
        lang.t("医療機関", "Institution"),
        lang.t("目的", "Purpose"),
        lang.t("決定", "Decision"),
        lang.t("有効期限", "Expires"),
    );
    let now_standing = crate::access::standing(&records, now(), web.config.access.default_policy);
    let sentences = present(lang, &mut names, &now_standing);
    let body = html! {
        h2 { (lang.t("いまの設定", "Who can see your records now")) }
        ul id="consent-now" {
            @for s in &sentences { li { (s) } }
            li {
                (lang.t(
                    "命にかかわる救急の場合は、同意がなくても閲覧されることがあります。その場合は閲覧記録に理由とともに表示されます。",
                    "In a life-threatening emergency your records may be read without consent; that reading appears in your access log with its reason."
                ))
            }
        }
        h2 { (lang.t("これまでの決定", "Your decisions so far")) }
        p {
            (lang.t(
                "新しい決定ほど優先され、次の閲覧許可から適用されます。",
                "The newest decision wins and applies from the next access grant."
            ))
        }
        table id="consents" class="cards" {
            tr class="head" {
                th { (lang.t("日時", "When")) } th { (l_inst) } th { (l_purpose) }
                th { (l_dec) } th { (l_exp) } th { (lang.t("登録元", "Set by")) }
            }
            @for r in records.iter().rev() {
                tr class="consent" {
                    td data-label=(lang.t("日時", "When")) { (lang.time(r.at)) }
                    td data-label=(l_inst) {
                        @match r.institution {
                            Some(c) => (names.of(c)),
                            None => (lang.t("すべての医療機関", "all institutions")),
                        }
                    }
                    td data-label=(l_purpose) { (purpose(lang, r.purpose)) }
                    td data-label=(l_dec) class=(if r.allow { "ok" } else { "flag" }) {
                        (if r.allow { lang.t("許可", "allow") } else { lang.t("拒否", "refuse") })
                    }
                    td data-label=(l_exp) { (r.expires_at.map_or_else(|| lang.t("なし", "none").into(), |e| last_day(lang, e))) }
                    td data-label=(lang.t("登録元", "Set by")) { (origin(lang, &r.origin)) }
                }
            }
        }
        h2 { (lang.t("同意を変更する", "Change consent")) }
        form method="post" action="/portal/consent" id="consent-form" {
            (hidden("csrf", &s.csrf))
            label {
                (l_dec)
                select name="action" id="action" required {
                    option value="" selected { (choose) }
                    option value="grant" { (lang.t("許可する", "Allow")) }
                    option value="revoke" { (lang.t("拒否する", "Refuse")) }
                }
            }
            label {
                (l_inst)
                select name="institution" id="institution" required {
                    option value="" selected { (choose) }
                    @for m in institutions.iter().filter(|i| i.revoked_at.is_none()).filter_map(|i| i.membership().ok()) {
                        option value=(m.code) { (m.name) " (" (m.code) ")" }
                    }
                    option value="all" { (lang.t("すべての医療機関", "All institutions")) }
                }
            }
            label {
                (l_purpose)
                select name="purpose" id="purpose" required {
                    @for (v, l) in purposes { option value=(v) { (l) } }
                }
            }
            label { (l_exp) input type="date" name="expires" id="expires"; }
            button id="save-consent" { (lang.t("保存", "Save")) }
        }
        h2 { (lang.t("すべての共有を停止", "Opt out of all exchange")) }
        p id="optout-explained" {
            (lang.t(
                "医療機関どうしであなたの記録を見せ合うことを、すべて止めます。ただし命にかかわる救急の場合は、理由を記録したうえで閲覧されることがあります。止めたあとも、上の「同意を変更する」で許可すれば、いつでも元に戻せます。",
                "Stops all sharing of your records between institutions. Only in a life-threatening emergency may they still be read, with the reason recorded. You can undo this at any time by allowing sharing again under \"Change consent\" above."
            ))
        }
        form method="post" action="/portal/consent" id="optout-form" {
            (hidden("csrf", &s.csrf))
            (hidden("action", "optout"))
            button id="optout" { (lang.t("すべての医療機関への共有を停止する", "Stop all sharing")) }
        }
    };
    Ok(private(
        lang,
        lang.t("同意の設定", "Consent"),
        "/portal/consent",
        &s,
        body,
    ))
}

/// The last day an expiry at `expires_at` (the first second not covered) covers.
fn last_day(lang: Lang, expires_at: Time) -> String {
    crate::dates::local_day(expires_at - 1).map_or_else(String::new, |d| lang.date(d))
}

/// The standing as sentences: who can read the records, for what, until when.
fn present(lang: Lang, names: &mut Names<'_>, standing: &[crate::access::Standing]) -> Vec<String> {
    let named = standing.iter().any(|s| s.institution.is_some());
    let mut out = Vec::new();
    let mut scopes: Vec<Option<InstitutionCode>> = Vec::new();
    for s in standing {
        if !scopes.contains(&s.institution) {
            scopes.push(s.institution);
        }
    }
    for scope in scopes {
        let who = match scope {
            Some(c) => names.of(c),
            None if named => lang
                .t("ほかのすべての医療機関", "Every other institution")
                .to_string(),
            None => lang.t("すべての医療機関", "Every institution").to_string(),
        };
        // The purposes allowed, grouped by when they lapse.
        let mut groups: Vec<(Option<Time>, Vec<&'static str>)> = Vec::new();
        for s in standing
            .iter()
            .filter(|s| s.institution == scope && s.allowed)
        {
            let p = purpose(lang, Some(s.purpose));
            match groups.iter_mut().find(|(u, _)| *u == s.until) {
                Some((_, ps)) => ps.push(p),
                None => groups.push((s.until, vec![p])),
            }
        }
        if groups.is_empty() {
            out.push(match lang {
                Lang::Ja => format!("{who}は、あなたの記録を閲覧できません。"),
                Lang::En => format!("{who} cannot read your records."),
            });
        }
        for (until, purposes) in groups {
            out.push(match (lang, until) {
                (Lang::Ja, Some(u)) => format!(
                    "{who}は、{}のために、{}まで閲覧できます。",
                    purposes.join("・"),
                    last_day(lang, u)
                ),
                (Lang::Ja, None) => format!(
                    "{who}は、{}のために閲覧できます（期限なし）。",
                    purposes.join("・")
                ),
                (Lang::En, Some(u)) => format!(
                    "{who} can read them for {} until {}.",
                    purposes.join(" and "),
                    last_day(lang, u)
                ),
                (Lang::En, None) => format!(
                    "{who} can read them for {}, with no end date.",
                    purposes.join(" and ")
                ),
            });
        }
    }
    out
}

#[derive(Deserialize)]
pub(super) struct ConsentForm {
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
    let body = html! {
        p class="err" id="consent-incomplete" {
            (lang.t(
                "決定・医療機関・目的をすべて選んでください。何も変更していません。",
                "Choose a decision, an institution and a purpose. Nothing was changed."
            ))
        }
        p { a href="/portal/consent" { (lang.t("同意の設定に戻る", "Back to consent")) } }
    };
    (
        StatusCode::BAD_REQUEST,
        layout(
            lang,
            lang.t("同意の設定", "Consent"),
            "/portal/consent",
            &[],
            body,
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
        || lang.t("すべての医療機関", "every institution").to_string(),
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
    let body = html! {
        p id="consent-sentence" { (sentence) }
        form method="post" action="/portal/consent" id="confirm-form" {
            (hidden("csrf", &s.csrf))
            (hidden("action", &f.action))
            (hidden("institution", &f.institution))
            (hidden("purpose", &f.purpose))
            (hidden("expires", &f.expires))
            (hidden("confirm", "yes"))
            button id="confirm-consent" { (lang.t("はい、このとおりにします", "Yes, do this")) }
        }
        p { a href="/portal/consent" id="cancel-consent" { (lang.t("やめる（何も変更しません）", "Cancel (nothing changes)")) } }
    };
    layout(
        lang,
        lang.t("確認してください", "Please confirm"),
        "/portal/consent",
        &[],
        body,
    )
    .into_response()
}

pub(super) async fn consent_change(
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
