//! My Portal consent over real HTTPS: nothing is shared by default and wide sharing
//! or the opt-out is confirmed before it is recorded. Split, on the exchange
//! authority's front, with the letter the registry printed.

use iryo_tests::federation::Federation;
use iryo_tests::https::{activate, agent_no_redirects};
use iryo_tests::on_every_deployment;

on_every_deployment! {
    fn consent_never_defaults_to_sharing_and_wide_sharing_is_confirmed(deployment) {
        let fed = Federation::deploy(deployment, 0, 1, 60);
        let d = &fed.registry;
        let letter = d.print_letters("letters", &[]).1.remove(0);
        fed.until_told();
        let base = format!("https://localhost:{}", fed.https.rsplit(':').next().unwrap());
        let a = agent_no_redirects(&fed.exchange_dir().data.join("ca/ca.pem"));
        let session = activate(&a, &base, &letter["medical_id"], &letter["activation_code"]);
        let mut page = a
            .get(format!("{base}/portal/consent"))
            .header("cookie", &session)
            .call()
            .unwrap();
        let html = page.body_mut().read_to_string().unwrap();
        // Nothing is chosen for the person: each choice starts on "choose".
        assert!(html.contains("<option value=\"\" selected>"), "{html}");
        // The opt-out says what it stops and how to undo it, and signing out is away from it.
        assert!(html.contains("いつでも元に戻せます"), "{html}");
        let at = |needle: &str| {
            html.find(needle)
                .unwrap_or_else(|| panic!("{needle}: {html}"))
        };
        assert!(at("id=\"logout\"") < at("id=\"consent-form\""));
        assert!(at("id=\"optout-explained\"") < at("id=\"optout\""));
        let csrf = html
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_string();
        let consents = || {
            let id = letter["medical_id"].replace('-', "");
            let listed = fed.operator(&["consent", "list", "--medical-id", &id, "--json"]);
            serde_json::from_str::<serde_json::Value>(&listed)
                .expect("consent list is JSON")
                .as_array()
                .map_or(0, Vec::len)
        };
        let post = |fields: &[(&str, &str)]| {
            let mut all = vec![("csrf", csrf.as_str())];
            all.extend_from_slice(fields);
            let mut res = a
                .post(format!("{base}/portal/consent"))
                .header("cookie", &session)
                .send_form(all)
                .unwrap();
            let status = res.status().as_u16();
            (status, res.body_mut().read_to_string().unwrap_or_default())
        };
        // A form with a wrong token is refused with a page in the person's language that
        // says what to do.
        let mut res = a
            .post(format!("{base}/portal/consent"))
            .header("cookie", &session)
            .send_form([("csrf", "forged"), ("action", "grant")])
            .unwrap();
        assert_eq!(res.status().as_u16(), 403);
        let page = res.body_mut().read_to_string().unwrap();
        assert!(
            page.contains("読み込み直して") && page.contains("lang=\"ja\""),
            "{page}"
        );
        // Saving the untouched form records nothing.
        let (status, body) = post(&[("action", ""), ("institution", ""), ("purpose", "")]);
        assert_eq!(status, 400, "{body}");
        assert_eq!(consents(), 0);
        // Everyone, every purpose: a second page says what will happen; nothing yet.
        let wide = [
            ("action", "grant"),
            ("institution", "all"),
            ("purpose", "all"),
        ];
        let (status, body) = post(&wide);
        assert_eq!(status, 200);
        assert!(
            body.contains("consent-sentence") && body.contains("研究は含みません"),
            "{body}"
        );
        assert_eq!(consents(), 0, "not recorded before it is confirmed");
        let mut confirmed = wide.to_vec();
        confirmed.push(("confirm", "yes"));
        assert_eq!(post(&confirmed).0, 303);
        assert_eq!(consents(), 1);
        // One institution, one purpose: saved at once. Stopping all sharing is confirmed.
        let one = [
            ("action", "grant"),
            ("institution", "1310000011"),
            ("purpose", "treatment"),
        ];
        assert_eq!(post(&one).0, 303);
        assert_eq!(consents(), 2);
        let (status, body) = post(&[("action", "optout")]);
        assert_eq!(status, 200);
        assert!(body.contains("共有を止めます"), "{body}");
        assert_eq!(consents(), 2);

        // A hostile institution name is text on every appearance, not markup.
        let hostile = "<img src=x onerror=alert(1)>病院";
        let node = d.path("evil");
        iryo_tests::node_ok([
            "init".as_ref(),
            "--code".as_ref(),
            "1310000029".as_ref(),
            "--name".as_ref(),
            hostile.as_ref(),
            "--out".as_ref(),
            node.as_os_str(),
        ]);
        fed.operator(&[
            "institution",
            "add",
            &node.join("registration.json").display().to_string(),
        ]);
        let one = [
            ("action", "grant"),
            ("institution", "1310000029"),
            ("purpose", "treatment"),
        ];
        assert_eq!(post(&one).0, 303);
        let two = [
            ("action", "revoke"),
            ("institution", "1310000029"),
            ("purpose", "treatment"),
        ];
        assert_eq!(post(&two).0, 303);
        let html = a
            .get(format!("{base}/portal/consent"))
            .header("cookie", &session)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert!(
            !html.contains("<img"),
            "markup from a name reached the page: {html}"
        );
        assert!(
            html.matches("&lt;img src=x").count() >= 3,
            "table twice, select once: {html}"
        );
        let wide = [
            ("action", "grant"),
            ("institution", "1310000029"),
            ("purpose", "all"),
        ];
        let (_, confirm) = post(&wide);
        assert!(
            !confirm.contains("<img") && confirm.contains("&lt;img"),
            "{confirm}"
        );
    }
}
