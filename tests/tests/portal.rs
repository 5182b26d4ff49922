//! My Portal in a real browser: Debian's headless Chromium, driven by playwright-core
//! (tests/browser/portal.mjs), against a real directory and two real nodes. `.ci/run`
//! installs Chromium and the npm package. Screenshots go to target/portal-screenshots.

use iryo_tests::federation::{sample_bundle, Federation};
use iryo_tests::on_every_deployment;
use serde_json::json;
use std::path::Path;
use std::process::Command;

on_every_deployment! {
    fn a_person_and_an_operator_use_the_portal_and_console_in_chromium(deployment) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let script = root.join("browser/portal.mjs");
        assert!(
            root.join("browser/node_modules/playwright-core").exists(),
            "run `npm ci --prefix tests/browser` first (.ci/run does)"
        );
        let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists(),
            "{chromium} missing: apt-get install chromium (.ci/run does)"
        );

        let fed = Federation::deploy(deployment, 2, 2, 60);
        let (source, requester) = (&fed.nodes[0], &fed.nodes[1]);
        let patient = fed.patients[0];
        assert_eq!(source.put_records(patient, &sample_bundle(2, 200)).0, 201);
        // Real eligibility checks at the requester put a visit in the patient's history:
        // three today are one visit.
        for _ in 0..3 {
            let (status, answer) = requester.eligibility(&json!({ "medical_id": patient.to_string() }));
            assert_eq!(
                (status, answer["eligible"].as_bool()),
                (200, Some(true)),
                "{answer}"
            );
        }

        // The patient's card shown with another person's medical ID: a mismatch for the console.
        let (status, answer) = requester.eligibility(&json!({
            "insurer": "01130012", "symbol": "10000001", "number": "500", "branch": "00",
            "medical_id": fed.patients[1].to_string(),
        }));
        assert!(status == 200 && answer["mismatch"].is_u64(), "{answer}");
        // The operator's certificate from the CA of each front (one, unless split).
        let operator = fed.registry.path("operator-sato");
        let at_registry = fed.registry.path("operator-sato-registry");
        for (dir, registry) in [(&operator, false), (&at_registry, true)] {
            let args = ["ca", "issue", "--operator", "sato", "--out", &dir.display().to_string()];
            if registry {
                fed.at_registry(&args);
            } else {
                fed.operator(&args);
            }
        }

        // The letter carries the activation code; the vendor CSV has it too.
        let letters = fed.registry.path("letters");
        fed.operator(&[
            "letters",
            "--plan",
            "agency",
            "--out",
            &letters.display().to_string(),
        ]);
        let code = csv::Reader::from_path(letters.join("letters.csv"))
            .expect("letters.csv")
            .deserialize::<std::collections::HashMap<String, String>>()
            .filter_map(Result::ok)
            .find(|r| r["medical_id"] == patient.grouped())
            .map(|r| r["activation_code"].clone())
            .expect("a letter for the patient");
        // Split, the visits and the letter's code reach My Portal by the registry's notices.
        fed.until_told();

        let shots = root.join("../target/portal-screenshots");
        let out = Command::new("node")
            .arg(&script)
            .env("PORTAL_URL", format!("https://{}", fed.https))
            .env("MEDICAL_ID", patient.grouped())
            .env("ACTIVATION_CODE", &code)
            .env("REQUESTER_API", &requester.api)
            .env("REQUESTER_TOKEN", &requester.token)
            .env("REQUESTER_CODE", requester.code.to_string())
            .env("SOURCE_CODE", source.code.to_string())
            .env("SCREENSHOTS", &shots)
            .env("CHROMIUM", &chromium)
            .env("OPERATOR_CERT", operator.join("cert.pem"))
            .env("OPERATOR_KEY", operator.join("key.pem"))
            .env("REGISTRY_URL", format!("https://{}", fed.registry_https()))
            .env("REGISTRY_OPERATOR_CERT", at_registry.join("cert.pem"))
            .env("REGISTRY_OPERATOR_KEY", at_registry.join("key.pem"))
            .output()
            .expect("node (Node.js) runs the browser script");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "browser checks failed:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("portal: all checks passed"), "{stdout}");
        assert!(shots.join("access.png").exists());
    }
}
