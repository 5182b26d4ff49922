//! The little of FHIR R4 the node needs: accept a resource or a Bundle, refuse what is
//! not, and assemble the Bundle sent to another institution.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a FHIR resource: no \"resourceType\"")]
    NoResourceType,
    #[error("Bundle entry {0} has no resource with a \"resourceType\"")]
    BadEntry(usize),
}

/// The resources in a document: a Bundle's entries, or the resource itself.
pub fn resources(doc: &[u8]) -> Result<Vec<Value>, FhirError> {
    let v: Value = serde_json::from_slice(doc).map_err(|e| FhirError::Json(e.to_string()))?;
    let kind = v
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or(FhirError::NoResourceType)?;
    if kind != "Bundle" {
        return Ok(vec![v]);
    }
    let entries = v
        .get("entry")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| match e.get("resource") {
            Some(r) if r.get("resourceType").and_then(Value::as_str).is_some() => Ok(r.clone()),
            _ => Err(FhirError::BadEntry(i)),
        })
        .collect()
}

/// A Bundle of `kind` ("collection", "searchset") holding `resources`.
pub fn bundle(kind: &str, resources: &[Value]) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": kind,
        "total": resources.len(),
        "entry": resources.iter().map(|r| json!({ "resource": r })).collect::<Vec<_>>(),
    })
}

/// The distinct resource types, sorted: what a notification may say about content.
pub fn resource_types(resources: &[Value]) -> Vec<String> {
    let mut t: Vec<String> = resources
        .iter()
        .filter_map(|r| {
            r.get("resourceType")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    t.sort();
    t.dedup();
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_and_bundles() {
        let obs = br#"{"resourceType":"Observation","status":"final"}"#;
        assert_eq!(resources(obs).unwrap().len(), 1);
        let b = br#"{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient"}},{"resource":{"resourceType":"Condition"}}]}"#;
        let r = resources(b).unwrap();
        assert_eq!(resource_types(&r), ["Condition", "Patient"]);
        assert_eq!(resources(br#"{"foo":1}"#), Err(FhirError::NoResourceType));
        assert!(matches!(resources(b"<xml/>"), Err(FhirError::Json(_))));
        let bad = br#"{"resourceType":"Bundle","entry":[{"resource":{}}]}"#;
        assert_eq!(resources(bad), Err(FhirError::BadEntry(0)));
        assert_eq!(bundle("collection", &r)["total"], 2);
    }

    proptest::proptest! {
        /// Any bytes an EMR or a peer sends are accepted as FHIR or refused, never a panic.
        #[test]
        fn arbitrary_documents_never_panic(doc in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = resources(&doc);
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
            let _ = resources(doc.as_bytes());
        }
    }
}
