//! Server-rendered pages: Japanese first with an English switch, readable on a phone,
//! plain HTML forms so that nothing needs JavaScript.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;
use std::convert::Infallible;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Ja,
    En,
}

impl Lang {
    pub fn t(self, ja: &'static str, en: &'static str) -> &'static str {
        match self {
            Lang::Ja => ja,
            Lang::En => en,
        }
    }

    /// A day in this language's style: 令和8年12月5日, 5 Dec 2026.
    pub fn date(self, d: chrono::NaiveDate) -> String {
        match self {
            Lang::Ja => crate::dates::ja_date(d),
            Lang::En => crate::dates::en_date(d),
        }
    }

    /// A moment in this language's style, its time zone stated.
    pub fn time(self, t: iryo_proto::federation::Time) -> String {
        match self {
            Lang::Ja => crate::dates::ja_time(t),
            Lang::En => crate::dates::en_time(t),
        }
    }

    fn code(self) -> &'static str {
        match self {
            Lang::Ja => "ja",
            Lang::En => "en",
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Lang {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(match cookie(&parts.headers, "lang").as_deref() {
            Some("en") => Lang::En,
            _ => Lang::Ja,
        })
    }
}

/// The value of one cookie of the request.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

// Tables of records become one card per row on a narrow screen (each cell labelled
// from its `data-label`), so that nothing scrolls sideways on a phone.
const STYLE: &str = "body{font-family:'Noto Sans JP','IPAexGothic',sans-serif;max-width:48rem;margin:0 auto;padding:1rem;line-height:1.6;color:#222}\
nav a{margin-right:1rem;display:inline-block}header{border-bottom:1px solid #ccc;margin-bottom:1rem}\
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}\
th{white-space:nowrap}\
input,select,button,textarea{font-size:1rem;padding:.3rem;margin:.2rem 0;max-width:100%}label{display:block;margin-top:.5rem}\
.flag{color:#b00;font-weight:bold}.ok{color:#070}.err{color:#b00;border:1px solid #b00;padding:.5rem}\
tr.emergency-row{background:#fff3f3}tr.differs td{background:#fff3e0}details.proof summary{cursor:pointer}details.proof .why{font-size:.8rem;margin-left:.2rem}\
.mid{font-family:monospace;font-size:1.2rem;letter-spacing:.1rem;white-space:nowrap}.pager{margin:1rem 0}\
@media (max-width:40rem){table.cards,table.cards tbody,table.cards tr,table.cards td{display:block;width:auto}\
table.cards tr.head{display:none}table.cards tr{border:1px solid #ccc;margin-bottom:.6rem}table.cards td{border:none}\
table.cards td::before{content:attr(data-label);display:block;font-size:.8rem;color:#555}\
table.facts,table.facts tbody,table.facts tr,table.facts th,table.facts td{display:block;width:auto}table.facts th{border-bottom:none}}";

/// Where the pages' stylesheet is served: a file of its own, so that the CSP can
/// forbid inline styles as well as scripts.
pub const STYLE_PATH: &str = "/style.css";

/// The stylesheet (cacheable: it holds nothing personal).
pub async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

/// A whole page. `here` is the path the language switch returns to. Every value is
/// escaped by the template unless it is `Markup` built by one.
pub fn layout(
    lang: Lang,
    title: &str,
    here: &str,
    nav: &[(&str, &str)],
    body: Markup,
) -> Html<String> {
    let (to, other) = match lang {
        Lang::Ja => ("en", "English"),
        Lang::En => ("ja", "日本語"),
    };
    let switch = format!("/lang?to={to}&back={here}");
    Html(
        html! {
            (DOCTYPE)
            html lang=(lang.code()) {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width,initial-scale=1";
                    title { (title) }
                    link rel="stylesheet" href=(STYLE_PATH);
                }
                body {
                    header {
                        nav {
                            @for (href, label) in nav {
                                a href=(href) { (label) }
                            }
                            a href=(switch) id="lang" { (other) }
                        }
                        h1 { (title) }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

/// A table of `rows` under an introduction, or a line saying there is nothing yet.
/// `id` names the table; `id` prefixed `no-`, the line.
pub fn table_or_none(
    id: &str,
    intro: &str,
    headers: &[&str],
    rows: &[Markup],
    none: &str,
) -> Markup {
    html! {
        @if rows.is_empty() {
            p id=(format!("no-{id}")) { (none) }
        } @else {
            p { (intro) }
            table id=(id) class="cards" {
                tr class="head" { @for h in headers { th { (h) } } }
                @for r in rows { (r) }
            }
        }
    }
}

pub fn hidden(name: &str, value: &str) -> Markup {
    html! { input type="hidden" name=(name) value=(value); }
}

#[derive(Deserialize)]
pub struct Switch {
    to: String,
    back: Option<String>,
}

/// `/lang?to=en&back=/portal/home`: remembers the language in a cookie and goes back.
pub async fn switch(Query(q): Query<Switch>) -> Response {
    let lang = if q.to == "en" { "en" } else { "ja" };
    let back = q
        .back
        .filter(|b| local_page(b))
        .unwrap_or_else(|| "/portal/".into());
    (
        [(
            header::SET_COOKIE,
            format!("lang={lang}; Path=/; Max-Age=31536000; Secure; SameSite=Lax"),
        )],
        Redirect::to(&back),
    )
        .into_response()
}

/// Whether `path` is a page of this site to go back to: under `/portal/` or
/// `/operator/`, of plain characters only. Anything else — another host however it is
/// spelt (`//`, `/\t/`, `\`), a line break, an escape — is refused, so `/lang` can
/// never send a browser elsewhere.
pub fn local_page(path: &str) -> bool {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/-_.?=&".contains(c);
    (path.starts_with("/portal/") || path.starts_with("/operator/"))
        && path.len() <= 200
        && path.chars().all(plain)
        && !path.contains("//")
        && !path.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_pages_are_gone_back_to() {
        for good in [
            "/portal/",
            "/portal/consent",
            "/operator/person?id=1234567890123450",
        ] {
            assert!(local_page(good), "{good}");
        }
        for bad in [
            "/\t/example.invalid/phish",
            "//example.invalid",
            "/\\example.invalid",
            "/portal/\nSet-Cookie: x=1",
            "/portal//example.invalid",
            "https://example.invalid/portal/",
            "/portal/../../etc",
            "/metrics",
            "/portal/%0a",
        ] {
            assert!(!local_page(bad), "{bad:?}");
        }
    }

    #[test]
    fn values_are_text_not_markup() {
        let hostile = "\"><svg/onload=alert(1)>";
        let page = layout(
            Lang::Ja,
            hostile,
            hostile,
            &[(hostile, hostile)],
            hidden(hostile, hostile),
        )
        .0;
        assert!(!page.contains("<svg"), "{page}");
        assert!(page.contains("&lt;svg/onload=alert(1)&gt;"), "{page}");
    }

    #[test]
    fn reads_cookies() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, "a=1; lang=en; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "lang").as_deref(), Some("en"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
