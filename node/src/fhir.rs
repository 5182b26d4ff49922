//! The FHIR R4 the node needs: validate what the EMR stores (a resource or a Bundle),
//! refuse what is not valid R4, and assemble the Bundle sent to another institution.

use fhirkit::Json;
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FhirError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a FHIR resource: no \"resourceType\"")]
    NoResourceType,
    #[error("Bundle entry {0} has no resource with a \"resourceType\"")]
    BadEntry(usize),
    #[error("a Bundle's \"entry\" must be a list of entries, each with a resource")]
    BadEntries,
    /// Not valid FHIR R4: each problem with the element's path.
    #[error("not valid FHIR R4: {}", .0.join("; "))]
    Invalid(Vec<String>),
}

/// At most how many problems a refusal lists; the count of the rest follows them.
const MAX_LISTED: usize = 20;

/// The values of Bundle.type, a required binding (http://hl7.org/fhir/ValueSet/bundle-type).
const BUNDLE_TYPES: [&str; 9] = [
    "document",
    "message",
    "transaction",
    "transaction-response",
    "batch",
    "batch-response",
    "history",
    "searchset",
    "collection",
];

/// Validates a document against FHIR R4 (4.0.1): a known resource type, every element
/// known and of its type, required elements present, primitives in their formats
/// (fhirkit, generated from the specification), and what fhirkit leaves to the
/// application: resource ids in the `id` format, Bundle.type in its value set, and the
/// Bundle invariants bdl-1 (`total` only in a search or history) and bdl-2
/// (`entry.search` only in a search).
pub fn validate(doc: &[u8]) -> Result<(), FhirError> {
    // One reading, by fhirkit's reader, which bounds nesting (256); every check below
    // works on the value it read.
    let text = std::str::from_utf8(doc).map_err(|e| FhirError::Json(e.to_string()))?;
    let v = Json::parse(text).map_err(|e| FhirError::Json(e.to_string()))?;
    if v.get("resourceType").and_then(Json::as_str).is_none() {
        return Err(FhirError::NoResourceType);
    }
    let (_, issues) = fhirkit::decode_json::<fhirkit::r4::Resource>(&v);
    let mut problems = errors(&issues);
    if problems.is_empty() {
        problems = off_calendar(&v)?;
    }
    rules(&v, "", &mut problems);
    if problems.is_empty() {
        return Ok(());
    }
    let more = problems.len().saturating_sub(MAX_LISTED);
    problems.truncate(MAX_LISTED);
    if more > 0 {
        problems.push(format!("and {more} more"));
    }
    Err(FhirError::Invalid(problems))
}

fn errors(issues: &[fhirkit::Issue]) -> Vec<String> {
    issues
        .iter()
        .filter(|i| i.severity == fhirkit::Severity::Error)
        .map(|i| format!("{}: {}", i.path, i.message))
        .collect()
}

/// Dates that fit FHIR's pattern but not the calendar ("Dates SHALL be valid dates"):
/// `1984-02-30`. fhirkit checks the pattern only, and only it knows which elements
/// are dates; so each date-shaped string off the calendar is replaced by one that fits
/// no date pattern, and whatever fhirkit then refuses — it accepted the document
/// before — is a date element holding a day that does not exist.
fn off_calendar(doc: &Json) -> Result<Vec<String>, FhirError> {
    fn off(s: &str) -> bool {
        let b = s.as_bytes();
        let shaped = b.len() >= 10
            && b[..10].iter().enumerate().all(|(i, c)| {
                if i == 4 || i == 7 {
                    *c == b'-'
                } else {
                    c.is_ascii_digit()
                }
            })
            && (b.len() == 10 || b[10] == b'T');
        shaped && chrono::NaiveDate::parse_from_str(&s[..10], "%Y-%m-%d").is_err()
    }
    fn any(v: &Json) -> bool {
        match v {
            Json::String(s) => off(s),
            Json::Array(a) => a.iter().any(any),
            Json::Object(o) => o.iter().any(|(_, v)| any(v)),
            _ => false,
        }
    }
    fn replace(v: &mut Json) {
        match v {
            Json::String(s) if off(s) => *s = "off the calendar".into(),
            Json::Array(a) => a.iter_mut().for_each(replace),
            Json::Object(o) => o.iter_mut().for_each(|(_, v)| replace(v)),
            _ => {}
        }
    }
    // Almost every document has none: look before copying it.
    if !any(doc) {
        return Ok(Vec::new());
    }
    let mut marked = doc.clone();
    replace(&mut marked);
    let (_, issues) = fhirkit::decode_json::<fhirkit::r4::Resource>(&marked);
    Ok(issues
        .iter()
        .filter(|i| i.severity == fhirkit::Severity::Error)
        .map(|i| format!("{}: not a day of the calendar", i.path))
        .collect())
}

/// The checks of `validate` beyond fhirkit's, on `resource` found at `at`.
fn rules(resource: &Json, at: &str, problems: &mut Vec<String>) {
    let kind = resource
        .get("resourceType")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let here = if at.is_empty() {
        kind.to_string()
    } else {
        at.to_string()
    };
    if let Some(id) = resource.get("id") {
        let ok = id.as_str().is_some_and(|s| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        });
        if !ok {
            problems.push(format!(
                "{here}.id: {} is not an id (1 to 64 of A-Z, a-z, 0-9, '-', '.')",
                id.to_compact()
            ));
        }
    }
    if kind != "Bundle" {
        return;
    }
    let kind_of = resource.get("type").and_then(Json::as_str);
    match kind_of {
        Some(t) if BUNDLE_TYPES.contains(&t) => {}
        Some(t) => problems.push(format!(
            "{here}.type: {t:?} is not a Bundle type ({})",
            BUNDLE_TYPES.join(", ")
        )),
        // fhirkit reports the missing required element.
        None => {}
    }
    let search = matches!(kind_of, Some("searchset"));
    if resource.get("total").is_some() && !matches!(kind_of, Some("searchset" | "history")) {
        problems.push(format!(
            "{here}.total: bdl-1: only a searchset or a history has a total"
        ));
    }
    let Some(Json::Array(entries)) = resource.get("entry") else {
        return;
    };
    for (i, e) in entries.iter().enumerate() {
        if e.get("search").is_some() && !search {
            problems.push(format!(
                "{here}.entry[{i}].search: bdl-2: only a searchset's entries have a search"
            ));
        }
        if let Some(r) = e.get("resource") {
            rules(r, &format!("{here}.entry[{i}].resource"), problems);
        }
    }
}

/// The resources in a document: a Bundle's entries, or the resource itself.
pub fn resources(doc: &[u8]) -> Result<Vec<Value>, FhirError> {
    let mut v: Value = serde_json::from_slice(doc).map_err(|e| FhirError::Json(e.to_string()))?;
    let kind = v
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or(FhirError::NoResourceType)?;
    if kind != "Bundle" {
        return Ok(vec![v]);
    }
    let entries = match v.get_mut("entry").map(Value::take) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(FhirError::BadEntries),
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| match e.get_mut("resource").map(Value::take) {
            Some(r) if r.get("resourceType").and_then(Value::as_str).is_some() => Ok(r),
            _ => Err(FhirError::BadEntry(i)),
        })
        .collect()
}

/// What a set of resources holds, as a notification may tell it: how many, and the
/// distinct resource types, sorted. Never content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Contents {
    pub count: u32,
    pub types: Vec<String>,
}

impl Contents {
    fn add(&mut self, kind: Option<Cow<'_, str>>) -> bool {
        match kind {
            Some(k) => {
                self.count += 1;
                if let Err(at) = self.types.binary_search_by(|t| t.as_str().cmp(&k)) {
                    self.types.insert(at, k.into_owned());
                }
                true
            }
            None => false,
        }
    }
}

// Views that read only `resourceType` and skip the rest without building it: a
// received Bundle is checked and summarised at the cost of one pass over its bytes.
#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct EntryView<'a> {
    #[serde(borrow)]
    resource: Option<Kind<'a>>,
}

#[derive(Deserialize)]
struct BundleView<'a> {
    #[serde(rename = "resourceType", borrow)]
    resource_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    entry: Option<Vec<EntryView<'a>>>,
}

/// Checks a document the way `resources` does — a resource, or a Bundle whose every
/// entry holds a resource — and summarises it, without building it. A Bundle, what
/// nodes send, takes one pass; only a document that does not read as one takes a second.
pub fn contents(doc: &[u8]) -> Result<Contents, FhirError> {
    let mut c = Contents::default();
    let entries = match serde_json::from_slice::<BundleView>(doc) {
        Ok(BundleView {
            resource_type: Some(kind),
            entry,
        }) if kind == "Bundle" => entry.unwrap_or_default(),
        // Another resource, whose "entry" (if any) is its own business; or no Bundle.
        _ => {
            let k: Kind =
                serde_json::from_slice(doc).map_err(|e| FhirError::Json(e.to_string()))?;
            match k.resource_type {
                Some(kind) if kind == "Bundle" => return Err(FhirError::BadEntries),
                Some(kind) => {
                    c.add(Some(kind));
                    return Ok(c);
                }
                None => return Err(FhirError::NoResourceType),
            }
        }
    };
    for (i, e) in entries.into_iter().enumerate() {
        if !c.add(e.resource.and_then(|r| r.resource_type)) {
            return Err(FhirError::BadEntry(i));
        }
    }
    Ok(c)
}

/// Summarises stored resources, each the JSON of one resource.
pub fn stored_contents<R: AsRef<[u8]>>(records: &[R]) -> Result<Contents, FhirError> {
    let mut c = Contents::default();
    for r in records {
        let k: Kind =
            serde_json::from_slice(r.as_ref()).map_err(|e| FhirError::Json(e.to_string()))?;
        if !c.add(k.resource_type) {
            return Err(FhirError::NoResourceType);
        }
    }
    Ok(c)
}

/// A Bundle of `kind` ("collection", "searchset") around resources kept as JSON,
/// spliced in as they are stored instead of parsed and written again.
pub fn bundle<R: AsRef<[u8]>>(kind: &str, resources: &[R]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bundle_size(resources.iter().map(|r| r.as_ref().len())));
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"#);
    // A `&str` always serialises.
    let _ = serde_json::to_writer(&mut out, kind);
    // FHIR's bdl-1: only a search or history result carries `total`.
    if matches!(kind, "searchset" | "history") {
        out.extend_from_slice(format!(r#","total":{}"#, resources.len()).as_bytes());
    }
    out.extend_from_slice(br#","entry":["#);
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"resource":"#);
        out.extend_from_slice(r.as_ref());
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

/// At most how many bytes a Bundle of resources of these sizes takes.
pub fn bundle_size(sizes: impl Iterator<Item = usize>) -> usize {
    sizes.map(|n| n + 16).sum::<usize>() + 96
}

/// The most one patient's records at one institution may take, so that the Bundle
/// a fetch returns always fits one exchange response (with room for its framing).
pub const MAX_RECORDS_BYTES: usize = iryo_proto::wire::MAX_EXCHANGE_RESPONSE as usize - 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_and_bundles() {
        let obs = br#"{"resourceType":"Observation","status":"final"}"#;
        assert_eq!(resources(obs).unwrap().len(), 1);
        let b = br#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient"}},{"resource":{"resourceType":"Condition"}}]}"#;
        let r = resources(b).unwrap();
        assert_eq!(r.len(), 2);
        let c = contents(b).unwrap();
        assert_eq!(
            (c.count, c.types),
            (2, vec!["Condition".into(), "Patient".into()])
        );
        assert_eq!(resources(br#"{"foo":1}"#), Err(FhirError::NoResourceType));
        assert!(matches!(resources(b"<xml/>"), Err(FhirError::Json(_))));
        let bad = br#"{"resourceType":"Bundle","entry":[{"resource":{}}]}"#;
        assert_eq!(resources(bad), Err(FhirError::BadEntry(0)));
        assert_eq!(contents(bad), Err(FhirError::BadEntry(0)));
        assert_eq!(contents(br#"{"foo":1}"#), Err(FhirError::NoResourceType));
        assert_eq!(contents(obs).unwrap().types, ["Observation"]);
        // "entry" belongs to the Bundle: another resource may carry one of any shape.
        let odd = br#"{"resourceType":"Patient","entry":5}"#;
        assert_eq!(resources(odd).unwrap().len(), 1);
        assert_eq!(contents(odd).unwrap().count, 1);
        let not_a_list = br#"{"resourceType":"Bundle","entry":5}"#;
        assert_eq!(resources(not_a_list), Err(FhirError::BadEntries));
        assert_eq!(contents(not_a_list), Err(FhirError::BadEntries));
    }

    #[test]
    fn a_spliced_bundle_is_the_bundle_of_its_resources() {
        let stored: Vec<Vec<u8>> = [
            r#"{"resourceType":"Patient","name":[{"text":"山田 \"花子\""}]}"#,
            r#"{"resourceType":"Condition","code":{}}"#,
            r#"{"resourceType":"Patient"}"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let doc = bundle("collection", &stored);
        let v: Value = serde_json::from_slice(&doc).unwrap();
        assert_eq!(v["type"], "collection");
        assert!(
            v.get("total").is_none(),
            "bdl-1: a collection carries no total"
        );
        let search: Value = serde_json::from_slice(&bundle("searchset", &stored)).unwrap();
        assert_eq!(search["total"], 3);
        assert!(doc.len() <= bundle_size(stored.iter().map(Vec::len)));
        assert_eq!(
            v["entry"][0]["resource"]["name"][0]["text"],
            "山田 \"花子\""
        );
        assert_eq!(resources(&doc).unwrap().len(), 3);
        let c = contents(&doc).unwrap();
        assert_eq!(c, stored_contents(&stored).unwrap());
        assert_eq!(
            (c.count, c.types),
            (3, vec!["Condition".into(), "Patient".into()])
        );
        assert_eq!(
            contents(&bundle::<Vec<u8>>("searchset", &[]))
                .unwrap()
                .count,
            0
        );
    }

    /// The node's verdicts on a corpus of valid and invalid resources agree with an
    /// independent validator's (fhir.resources, recorded by fhir-corpus/verdicts.py),
    /// except where a case says why the node decides otherwise, and then it must.
    #[test]
    fn verdicts_agree_with_an_independent_validator() {
        let cases: Vec<Value> =
            serde_json::from_str(include_str!("../fhir-corpus/cases.json")).unwrap();
        assert!(cases.len() >= 50);
        let mut wrong = Vec::new();
        for case in &cases {
            let name = case["name"].as_str().unwrap();
            let doc = serde_json::to_vec(&case["resource"]).unwrap();
            let ours = validate(&doc);
            let theirs = case["independent"] == "valid";
            let differs = case.get("iryo_differs").is_some();
            if ours.is_ok() != (theirs != differs) {
                wrong.push(format!(
                    "{name}: iryo {ours:?}, independent {}{}",
                    case["independent"],
                    if differs { " (differs on purpose)" } else { "" }
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn refusals_name_the_element() {
        let doc = br#"{"resourceType":"Patient","birthDate":"1984-13-45","id":"a b"}"#;
        let Err(FhirError::Invalid(problems)) = validate(doc) else {
            panic!("accepted")
        };
        assert!(
            problems.iter().any(|p| p.starts_with("Patient.birthDate")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("Patient.id")),
            "{problems:?}"
        );
        let many: Vec<String> = (0..50).map(|i| format!(r#""x{i}":1"#)).collect();
        let doc = format!(r#"{{"resourceType":"Patient",{}}}"#, many.join(","));
        let Err(FhirError::Invalid(problems)) = validate(doc.as_bytes()) else {
            panic!("accepted")
        };
        assert_eq!(problems.len(), MAX_LISTED + 1);
        assert_eq!(problems[MAX_LISTED], "and 30 more");
        // Hostile nesting is refused by the reader, not a stack overflow.
        let deep = format!(
            r#"{{"resourceType":"Patient","extension":{}{}}}"#,
            "[{\"extension\":".repeat(100_000),
            "]}".repeat(100_000)
        );
        assert!(matches!(validate(deep.as_bytes()), Err(FhirError::Json(_))));
    }

    proptest::proptest! {
        /// Any bytes an EMR or a peer sends are accepted as FHIR or refused, never a panic.
        #[test]
        fn arbitrary_documents_never_panic(doc in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = resources(&doc);
            let _ = contents(&doc);
            let _ = validate(&doc);
        }

        #[test]
        fn json_shaped_documents_never_panic(
            rt in "[A-Za-z]{0,12}",
            entries in proptest::collection::vec("[a-zA-Z{}\\[\\]\":,0-9 ]{0,24}", 0..4),
        ) {
            let doc = format!(
                r#"{{"resourceType":"{rt}","entry":[{}]}}"#,
                entries.join(",")
            );
            // The summary accepts exactly what the full reading accepts.
            let full = resources(doc.as_bytes());
            let summary = contents(doc.as_bytes());
            proptest::prop_assert_eq!(full.is_ok(), summary.is_ok());
            if let (Ok(r), Ok(c)) = (full, summary) {
                proptest::prop_assert_eq!(r.len() as u32, c.count);
            }
        }
    }
}
