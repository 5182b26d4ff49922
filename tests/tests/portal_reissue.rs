//! A lost letter or a forgotten password: the portal says what to do, and the operator
//! reissues the letter; the old code stops working, the new one works, and the person
//! sees the reissue in their access log. Split, the registry prints the letters and My
//! Portal is the exchange authority's: the new code and the staff's read reach it by
//! the registry's notices.

use iryo_tests::federation::Federation;
use iryo_tests::https::{activate, agent_no_redirects, try_activate};
use iryo_tests::on_every_deployment;

on_every_deployment! {
    fn a_reissued_letter_replaces_the_old_code(deployment) {
        let fed = Federation::deploy(deployment, 0, 1, 60);
        let d = &fed.registry;
        let old = d.print_letters("letters-1", &[]).1.remove(0);
        let id = old["medical_id"].clone();
        fed.until_told();

        let base = format!("https://localhost:{}", fed.https.rsplit(':').next().unwrap());
        let a = agent_no_redirects(&fed.exchange_dir().data.join("ca/ca.pem"));

        // The sign-in page leads to what to do, with the agency's contact line.
        let mut page = a.get(format!("{base}/portal/")).call().unwrap();
        assert!(page
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains("/portal/forgot"));
        let mut page = a.get(format!("{base}/portal/forgot")).call().unwrap();
        let help = page.body_mut().read_to_string().unwrap();
        assert!(
            help.contains("医療ID管理機関 お問い合わせ窓口") && help.contains("郵送"),
            "{help}"
        );

        // The reissue, while the directory serves: one letter, a new code.
        let plain = id.replace('-', "");
        let (_, mut reissued) = d.print_letters("letters-2", &["--reissue", "--medical-id", &plain]);
        assert_eq!(reissued.len(), 1, "one letter");
        let new = reissued.remove(0);
        assert_eq!(new["medical_id"], id);
        assert_ne!(new["activation_code"], old["activation_code"]);
        // --reissue without the person is refused by the command line.
        assert!(d
            .fails(&["letters", "--plan", "agency", "--reissue", "--out", "x"])
            .contains("--medical-id"));
        fed.until_told();

        // The old code no longer works; the new one does.
        let res = try_activate(&a, &base, &id, &old["activation_code"]);
        assert_eq!(res.status(), 401);
        let session = activate(&a, &base, &id, &new["activation_code"]);

        // The person sees the reissue in their access log; it is in the registry's
        // audit log.
        let mut page = a
            .get(format!("{base}/portal/access"))
            .header("cookie", &session)
            .call()
            .unwrap();
        let log = page.body_mut().read_to_string().unwrap();
        assert!(log.contains("お知らせの再発行"), "{log}");
        let entries = fed.at_registry(&["audit", "show", "--medical-id", &plain, "--json"]);
        assert!(entries.contains("reissued their letter"), "{entries}");
    }
}
