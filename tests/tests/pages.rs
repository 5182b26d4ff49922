//! Every page of My Portal and the operator console shows hostile free text as text:
//! institutions' and people's names, addresses, emergency reasons, operators' names and
//! reasons, search terms. The pages are templates that escape whatever they are given,
//! so a value cannot become markup wherever it comes from; this proves it on a real
//! federation over real HTTPS.

use iryo_tests::federation::{patient_row, sample_bundle, Federation, Texts};
use iryo_tests::https::{activate, agent, agent_no_redirects, issue, letters};
use iryo_tests::on_every_deployment;
use iryo_tests::write_enrollment;
use serde_json::json;

/// Breaks out of a double- or single-quoted attribute and opens an element.
const HOSTILE: &str = "\"'><svg/onload=alert(1)>";
/// The same without the double quote, which a CSV field would need quoted.
const HOSTILE_CSV: &str = "'><svg/onload=alert(1)>";
/// How the hostile element reads once escaped.
const ESCAPED: &str = "&lt;svg/onload=alert(1)&gt;";

/// The answer's status and body. An HTML page must hold no hostile element, and must
/// show the hostile text (escaped) when `shows` says the page carries it; any other
/// answer must be plain text the browser is told not to sniff.
fn page(
    res: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    what: &str,
    shows: bool,
) -> (u16, String) {
    let mut res = res.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = res.status().as_u16();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (kind, sniff) = (header("content-type"), header("x-content-type-options"));
    let body = res.body_mut().read_to_string().unwrap_or_default();
    if kind.starts_with("text/html") {
        assert!(
            !body.contains("<svg"),
            "{what}: hostile markup in the page:\n{body}"
        );
    } else {
        assert!(
            kind.starts_with("text/plain") && sniff == "nosniff",
            "{what}: {kind:?} {sniff:?}"
        );
    }
    if shows {
        assert!(kind.starts_with("text/html"), "{what}: not an HTML page");
        assert!(
            body.contains(ESCAPED),
            "{what}: the hostile text is not shown:\n{body}"
        );
    }
    (status, body)
}

/// `https://localhost:PORT` for a front listening on `addr`: the name its certificate
/// carries.
fn base(addr: &str) -> String {
    format!(
        "https://localhost:{}",
        addr.rsplit(':').next().unwrap_or_default()
    )
}

on_every_deployment! {
    fn hostile_text_is_text_on_every_page(deployment) {
        let split = matches!(deployment, iryo_tests::Deployment::Split(_));
        let texts = Texts {
            institution: HOSTILE,
            person: HOSTILE_CSV,
            address: HOSTILE_CSV,
        };
        let fed = Federation::deploy_with(deployment, 2, 2, 60, &texts);
        let (source, requester) = (&fed.nodes[0], &fed.nodes[1]);
        let patient = fed.patients[0];

        // A visit, a consent and an emergency read with a hostile reason.
        assert_eq!(source.put_records(patient, &sample_bundle(1, 10)).0, 201);
        let (status, answer) = requester.eligibility(&json!({ "medical_id": patient.to_string() }));
        assert_eq!(status, 200, "{answer}");
        fed.consent(patient, requester.code);
        let (status, answer) = requester.fetch(patient, source.code, "emergency", Some(HOSTILE));
        assert_eq!(status, 200, "{answer}");
        assert!(requester.drain_outbox(20) && source.drain_outbox(20));

        // Two enrollment conflicts under hostile names; one resolved by a hostile operator
        // with a hostile reason, one left open for the console's queue.
        let file = fed.registry.path("changed.csv");
        let renamed = format!("{HOSTILE_CSV}別名");
        let rows = [
            patient_row(0, &renamed, "東京都"),
            patient_row(1, &renamed, "東京都"),
        ];
        write_enrollment(&file, &[&rows[0], &rows[1]]);
        fed.operator(&["enroll", &file.display().to_string()]);
        let open: serde_json::Value =
            serde_json::from_str(&fed.at_registry(&["conflicts", "list", "--json"])).unwrap();
        let first = open[0]["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("no conflict: {open}"));
        fed.operator(&[
            "conflicts",
            "resolve",
            &first.to_string(),
            "--dismiss",
            "--reason",
            HOSTILE,
            "--operator",
            HOSTILE,
        ]);

        let out = fed.registry.path("letters");
        fed.operator(&[
            "letters",
            "--plan",
            "agency",
            "--out",
            &out.display().to_string(),
        ]);
        let letter = letters(&out)
            .into_iter()
            .find(|l| l["medical_id"] == patient.grouped())
            .expect("the patient's letter");
        fed.until_told();
        // My Portal and the institutions are the exchange authority's, persons and
        // cases the registry's: each on its own front under its own CA when split.
        let (ca, registry_ca) = (
            fed.exchange_dir().data.join("ca/ca.pem"),
            fed.registry.data.join("ca/ca.pem"),
        );
        let (base, registry_base) = (base(&fed.https), base(fed.registry_https()));

        // My Portal, signed in as the patient. Split, its home holds no name.
        let a = agent_no_redirects(&ca);
        let session = activate(&a, &base, &letter["medical_id"], &letter["activation_code"]);
        let get = |path: &str| {
            a.get(format!("{base}{path}"))
                .header("cookie", &session)
                .call()
        };
        for (path, shows) in [
            ("/portal/home", !split),
            ("/portal/history", true),
            ("/portal/access", true),
            ("/portal/consent", true),
        ] {
            let (status, body) = page(get(path), path, shows);
            assert_eq!(status, 200, "{path}: {body}");
        }
        let (_, consent) = page(get("/portal/consent"), "consent", true);
        let csrf = consent
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("form token")
            .to_string();
        // The confirmation of a wide grant names the institution in a sentence.
        let res = a
            .post(format!("{base}/portal/consent"))
            .header("cookie", &session)
            .send_form([
                ("csrf", csrf.as_str()),
                ("action", "grant"),
                ("institution", &requester.code.to_string()),
                ("purpose", "all"),
                ("expires", ""),
            ]);
        let (status, body) = page(res, "consent confirmation", true);
        assert_eq!(status, 200, "{body}");
        let res = a
            .post(format!("{base}/portal/consent"))
            .header("cookie", &session)
            .send_form([
                ("csrf", csrf.as_str()),
                ("action", "grant"),
                ("institution", &requester.code.to_string()),
                ("purpose", "treatment"),
                ("expires", HOSTILE),
            ]);
        let (status, body) = page(res, "a hostile expiry date", false);
        assert_eq!(status, 400, "{body}");

        // The console, as an operator: the registry's, and the authority's when split.
        let operator = issue(&fed.registry, "--operator", "sato", "operator-sato");
        let op = agent(&registry_ca, Some(&operator));
        let at_authority = issue(fed.exchange_dir(), "--operator", "sato", "operator-sato-a");
        let auth_op = agent(&ca, Some(&at_authority));
        let by_id = format!("/operator/person?q={}", patient.plain());
        for (front, path, shows) in [
            (&registry_base, "/operator/", false),
            (&registry_base, by_id.as_str(), true),
            (&registry_base, "/operator/cases", true),
            (&registry_base, "/operator/audit", true),
            (&base, "/operator/institutions", true),
            (&base, "/operator/audit", true),
        ] {
            let agent = if front == &base { &auth_op } else { &op };
            let (status, body) = page(agent.get(format!("{front}{path}")).call(), path, shows);
            assert_eq!(status, 200, "{front}{path}: {body}");
        }
        // The registry's own front page says My Portal is elsewhere.
        if split {
            let res = agent_no_redirects(&registry_ca)
                .get(format!("{registry_base}/"))
                .call();
            let (status, body) = page(res, "the registry's front page", false);
            assert!(status == 200 && body.contains("registry-front"), "{body}");
        }
        // A patient's audit log: where the exchanges are logged, it shows the hostile
        // emergency reason.
        let res = auth_op
            .get(format!("{base}/operator/audit"))
            .query("medical_id", patient.plain())
            .call();
        let (status, body) = page(res, "a patient's audit log", true);
        assert_eq!(status, 200, "{body}");
        if split {
            let res = op
                .get(format!("{registry_base}/operator/audit"))
                .query("medical_id", patient.plain())
                .call();
            let (status, body) = page(res, "a person's audit log at the registry", false);
            assert_eq!(status, 200, "{body}");
        }
        // A hostile search term is refused as plain text, never echoed as markup.
        for path in ["/operator/person", "/operator/audit"] {
            let key = if path.ends_with("person") {
                "q"
            } else {
                "medical_id"
            };
            let res = op
                .get(format!("{registry_base}{path}"))
                .query(key, HOSTILE)
                .call();
            let (status, _) = page(res, path, false);
            assert_eq!(status, 400, "{path}");
        }
    }
}
