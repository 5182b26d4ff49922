//! The HTTPS front with real rustls on 127.0.0.1: client certificates of the agency CA
//! decide who is calling; other CAs, missing and revoked certificates are refused.

use iryo_proto::MyNumber;
use iryo_tests::https::{agent, issue, kyokai, row, serve, society, with_ca_on};
use iryo_tests::{on_both_backends, write_enrollment, Backend, Directory};

on_both_backends! {
    fn insurers_and_operators_are_who_their_certificates_say(backend) {
        let d = with_ca_on(backend);
        let ins1 = issue(&d, "--insurer", &kyokai(), "ins1");
        let ins2 = issue(&d, "--insurer", &society(), "ins2");
        let op = issue(&d, "--operator", "sato", "op");
        // A certificate with the right name from a CA that is not the agency's.
        let rogue = Directory::new();
        rogue.ok(&["ca", "init"]);
        let forged = issue(&rogue, "--insurer", &kyokai(), "forged");
        let ca = d.data.join("ca/ca.pem");

        let (_serve, https) = serve(&d);
        let url = |p: &str| format!("https://localhost:{}{p}", https.rsplit(':').next().unwrap());

        // Upload: own rows enrolled, another insurer's row and a bad row rejected with reasons.
        let file = d.path("upload.csv");
        write_enrollment(
            &file,
            &[
                &row(&kyokai(), "kyokai", 0),
                &row(&kyokai(), "kyokai", 1),
                &row(&society(), "society", 2),
                "kyokai,XXXX,1,1,00,insured,1,x,x,1900-01-01,1,,2020-01-01,",
            ],
        );
        let a1 = agent(&ca, Some(&ins1));
        let mut res = a1
            .post(url("/insurer/enrollments?wait=true"))
            .send(std::fs::read(&file).unwrap())
            .unwrap();
        assert_eq!(res.status(), 200);
        let job: serde_json::Value = res.body_mut().read_json().unwrap();
        assert_eq!(job["state"], "done", "{job}");
        assert_eq!(job["summary"]["new"], 2, "{job}");
        assert_eq!(job["summary"]["rejected"], 2, "{job}");
        let status_url = url(&format!(
            "/insurer/enrollments/{}",
            job["id"].as_str().unwrap()
        ));
        let mut errors = a1.get(format!("{status_url}/errors")).call().unwrap();
        assert_eq!(errors.status(), 200);
        let errors = errors.body_mut().read_to_string().unwrap();
        assert!(errors.contains("not this insurer's number"), "{errors}");
        assert!(
            errors.contains("5,insurer_number,XXXX"),
            "line 5 named: {errors}"
        );
        // The upload is kept readable by the directory's user alone.
        use std::os::unix::fs::PermissionsExt;
        for entry in std::fs::read_dir(d.data.join("uploads")).unwrap() {
            let path = entry.unwrap().path();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", path.display());
        }
        // The same file again changes nothing.
        let mut again = a1
            .post(url("/insurer/enrollments?wait=true"))
            .send(std::fs::read(&file).unwrap())
            .unwrap();
        let again: serde_json::Value = again.body_mut().read_json().unwrap();
        assert_eq!(again["summary"]["unchanged"], 2, "{again}");
        // A disagreeing row makes a conflict that cites the insurer's own file name and
        // line, never where the server keeps the upload.
        let changed = row(&kyokai(), "kyokai", 0).replace("佐藤 花子", "佐藤 華子");
        let mut res = a1
            .post(url("/insurer/enrollments"))
            .query("wait", "true")
            .query("name", "2026-12 加入者.csv")
            .send(format!("{}\n{changed}\n", iryo_tests::HEADER))
            .unwrap();
        assert_eq!(
            res.status(),
            200,
            "{}",
            res.body_mut().read_to_string().unwrap_or_default()
        );
        let open = d.json(&["conflicts", "list", "--json"]);
        assert_eq!(open[0]["source"], "2026-12 加入者.csv:2", "{open}");
        let id = open[0]["id"].as_u64().unwrap().to_string();
        d.ok(&[
            "conflicts",
            "resolve",
            &id,
            "--dismiss",
            "--reason",
            "registry confirmed",
        ]);

        // While `serve` holds the database, the operator's CLI enrolls and checks through it.
        let more = d.path("more.csv");
        write_enrollment(&more, &[&row(&society(), "society", 7)]);
        let out = d.ok(&["enroll", &more.display().to_string()]);
        assert!(out.contains("1 new"), "{out}");
        let checked = d.ok(&[
            "check",
            "--institution",
            "0110113719",
            "--insurer",
            &society(),
            "--symbol",
            "20000002",
            "--number",
            "307",
        ]);
        assert!(checked.starts_with("ELIGIBLE"), "{checked}");
        // Every other registry command goes the same way while `serve` runs.
        assert_eq!(d.json(&["status"])["persons"], 3);
        let me = MyNumber::from_body(77_700_000_007).to_string();
        let shown = d.json(&["show", "--my-number", &me, "--json"]);
        let id = shown["person"]["medical_id"].as_str().unwrap().to_string();
        let changed = d.ok(&["change", "--medical-id", &id, "--reason", "card lost"]);
        assert!(changed.contains("successor"), "{changed}");
        assert!(d.ok(&["conflicts", "list"]).contains("no open conflicts"));
        assert!(d.ok(&["notices"]).contains("no notices"));
        let assigned = d.path("assigned.csv");
        d.ok(&[
            "assign",
            "--insurer",
            &society(),
            "--out",
            &assigned.display().to_string(),
        ]);
        assert_eq!(
            std::fs::read_to_string(&assigned).unwrap().lines().count(),
            2
        );

        // Another insurer sees neither the upload nor the rows.
        let a2 = agent(&ca, Some(&ins2));
        assert_eq!(a2.get(&status_url).call().unwrap().status(), 404);
        let mut own = a1.get(url("/insurer/assignments")).call().unwrap();
        assert_eq!(own.status(), 200);
        let own = own.body_mut().read_to_string().unwrap();
        assert_eq!(own.lines().count(), 3, "header and two rows: {own}");
        assert!(own.contains(&MyNumber::from_body(77_700_000_000).to_string()));
        let other = a2
            .get(url("/insurer/assignments"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        assert!(!other.contains(&kyokai()), "{other}");
        let mut notices = a1.get(url("/insurer/notices")).call().unwrap();
        assert_eq!(notices.status(), 200);
        assert!(notices
            .body_mut()
            .read_json::<serde_json::Value>()
            .unwrap()
            .is_array());

        // No certificate: the portal is open, insurer and operator paths are not.
        let anon = agent(&ca, None);
        assert_eq!(anon.get(url("/portal/")).call().unwrap().status(), 200);
        assert_eq!(
            anon.get(url("/insurer/assignments"))
                .call()
                .unwrap()
                .status(),
            403
        );
        assert_eq!(anon.get(url("/operator/")).call().unwrap().status(), 403);
        // A certificate of another CA fails the handshake.
        assert!(agent(&ca, Some(&forged))
            .get(url("/insurer/notices"))
            .call()
            .is_err());
        // An insurer is not an operator, and the operator's name comes from the certificate.
        assert_eq!(a1.get(url("/operator/")).call().unwrap().status(), 403);
        let ao = agent(&ca, Some(&op));
        let mut console = ao.get(url("/operator/")).call().unwrap();
        assert_eq!(console.status(), 200);
        assert!(console
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains("operator sato"));
        let mut person = ao
            .get(url(&format!(
                "/operator/person?q={}",
                MyNumber::from_body(77_700_000_000)
            )))
            .call()
            .unwrap();
        assert_eq!(person.status(), 200);
        assert!(person.body_mut().read_to_string().unwrap().contains("佐藤"));
        let mut by_card = ao
            .get(url(&format!(
                "/operator/person?q={}%2020000002%20301",
                kyokai()
            )))
            .call()
            .unwrap();
        assert_eq!(by_card.status(), 200);
        let page = by_card.body_mut().read_to_string().unwrap();
        assert!(
            page.contains(&MyNumber::from_body(77_700_000_001).to_string()),
            "{page}"
        );
        // Every read is in the log, bound to the person read, without the My Number.
        let _ = ao.get(url("/operator/cases")).call().unwrap();
        let me = MyNumber::from_body(77_700_000_000).to_string();
        let id = d.json(&["show", "--my-number", &me, "--json"])["person"]["medical_id"]
            .as_str()
            .unwrap()
            .to_string();
        let shown = d.ok(&["audit", "show", "--medical-id", &id]);
        assert!(
            shown.contains("operator sato read the registry record")
                && shown.contains("found by My Number"),
            "{shown}"
        );
        let size = anon
            .get(url("/audit/tree-head"))
            .call()
            .unwrap()
            .body_mut()
            .read_json::<serde_json::Value>()
            .unwrap()["size"]
            .as_u64()
            .unwrap();
        for i in 0..size {
            let entry = anon
                .get(url(&format!("/audit/proof/{i}")))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap();
            assert!(!entry.contains(&me), "a My Number in the log: {entry}");
        }
        // Registering an institution from the console, as the operator.
        let node_dir = d.path("clinic");
        let init = std::process::Command::new(iryo_tests::node_bin())
            .args([
                "init",
                "--code",
                "1311000010",
                "--name",
                "テスト診療所",
                "--out",
            ])
            .arg(&node_dir)
            .output()
            .unwrap();
        assert!(
            init.status.success(),
            "{}",
            String::from_utf8_lossy(&init.stderr)
        );
        let page = ao
            .get(url("/operator/institutions"))
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap();
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a form token")
            .to_string();
        let request = std::fs::read_to_string(node_dir.join("registration.json")).unwrap();
        let forged = ao
            .post(url("/operator/institutions"))
            .send_form([("csrf", "forged"), ("request", request.as_str())])
            .unwrap();
        assert_eq!(
            forged.status(),
            403,
            "a form without the console's token is refused"
        );
        let mut added = ao
            .post(url("/operator/institutions"))
            .send_form([("csrf", csrf.as_str()), ("request", request.as_str())])
            .unwrap();
        assert_eq!(added.status(), 200);
        assert!(added
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains("テスト診療所"));
        let log = d.ok(&["audit", "verify"]);
        assert!(log.contains("audit log verified"), "{log}");

        // Revoked: refused from the next connection on.
        d.ok(&["ca", "revoke", &format!("insurer {}", kyokai())]);
        assert!(agent(&ca, Some(&ins1))
            .get(url("/insurer/notices"))
            .call()
            .is_err());
        assert_eq!(
            agent(&ca, Some(&ins2))
                .get(url("/insurer/notices"))
                .call()
                .unwrap()
                .status(),
            200
        );

        // Two rows new by upload, and on redb one by the CLI through `serve`'s admin
        // socket; on PostgreSQL the CLI enrolls on the database itself, which this
        // process's counters do not see.
        let mut metrics = anon.get(url("/metrics")).call().unwrap();
        let metrics = metrics.body_mut().read_to_string().unwrap();
        let new = if backend == Backend::Redb { 3 } else { 2 };
        assert!(
            metrics.contains(&format!(
                "iryo_directory_enrollment_rows_total{{outcome=\"new\"}} {new}"
            )),
            "{metrics}"
        );
        assert!(
            metrics.contains("iryo_directory_request_duration_seconds_bucket"),
            "{metrics}"
        );
    }
}

on_both_backends! {
    fn portal_forms_need_their_token_and_sign_in_is_rate_limited(backend) {
        let d = with_ca_on(backend);
        let (_serve, https) = serve(&d);
        let base = format!("https://localhost:{}", https.rsplit(':').next().unwrap());
        let a = agent(&d.data.join("ca/ca.pem"), None);

        let mut page = a.get(format!("{base}/portal/")).call().unwrap();
        let cookie = page
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .unwrap()
            .to_string();
        assert!(
            cookie.contains("Secure")
                && cookie.contains("HttpOnly")
                && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let token = cookie
            .split(';')
            .next()
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v.to_string())
            .unwrap();
        assert!(page
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains("マイポータル"));

        let login = |form_token: &str, with_cookie: bool| {
            let mut req = a.post(format!("{base}/portal/login"));
            if with_cookie {
                req = req.header("cookie", &format!("iryo_form={token}"));
            }
            req.send_form([
                ("form", form_token),
                ("medical_id", "1234-5678-9012-3452"),
                ("passphrase", "not the passphrase"),
            ])
            .unwrap()
            .status()
            .as_u16()
        };
        // A form from another site carries no matching token.
        assert_eq!(login(&token, false), 403);
        assert_eq!(login("forged", true), 403);
        // A failed sign-in keeps the typed ID in its field, escaped.
        let hostile = "1234\"><script>alert(1)</script>";
        let mut failed = a
            .post(format!("{base}/portal/login"))
            .header("cookie", &format!("iryo_form={token}"))
            .send_form([
                ("form", token.as_str()),
                ("medical_id", hostile),
                ("passphrase", "not the passphrase"),
            ])
            .unwrap();
        assert_eq!(failed.status().as_u16(), 401);
        let body = failed.body_mut().read_to_string().unwrap();
        assert!(
            body.contains("value=\"1234&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;\"")
                && !body.contains("<script>"),
            "{body}"
        );
        assert!(
            body.contains("もう一度パスワードを入力してください"),
            "{body}"
        );
        for _ in 0..4 {
            assert_eq!(login(&token, true), 401);
        }
        assert_eq!(
            login(&token, true),
            429,
            "the sixth failure in a row is refused outright"
        );
        // Signed-out pages send the person to the sign-in page.
        let mut home = a.get(format!("{base}/portal/home")).call().unwrap();
        assert!(home
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains("id=\"login\""));
    }
}

on_both_backends! {
    fn garbage_on_the_https_port_harms_nothing(backend) {
        use std::io::{Read, Write};
        let d = with_ca_on(backend);
        let (_serve, https) = serve(&d);
        // Not TLS at all, a truncated ClientHello, and a silent connection.
        let mut junk = std::net::TcpStream::connect(&https).unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 64];
        let _ = junk.read(&mut buf);
        let mut half = std::net::TcpStream::connect(&https).unwrap();
        half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
            .unwrap();
        let _idle = std::net::TcpStream::connect(&https).unwrap();
        drop((junk, half));
        // Over TLS, a request too large for a form and one with a broken body.
        let base = format!("https://localhost:{}", https.rsplit(':').next().unwrap());
        let a = agent(&d.data.join("ca/ca.pem"), None);
        let big = "x".repeat(3 << 20);
        let status = a
            .post(format!("{base}/portal/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(big.as_bytes())
            .map_or(0, |r| r.status().as_u16());
        assert!(status == 413 || status == 0, "oversize form: {status}");
        let status = a
            .post(format!("{base}/portal/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .send(&b"%%%\xff\xfe=&&"[..])
            .unwrap()
            .status()
            .as_u16();
        assert!((400..500).contains(&status), "broken form: {status}");
        // The front still serves.
        assert_eq!(
            a.get(format!("{base}/portal/")).call().unwrap().status(),
            200
        );
    }
}

on_both_backends! {
    fn anyone_can_fetch_a_signed_head_and_an_inclusion_proof(backend) {
        let d = Directory::on(backend);
        let init = d.ok(&["init"]);
        let agency = init
            .lines()
            .find_map(|l| l.strip_prefix("agency root public key (Ed25519): "))
            .unwrap()
            .trim()
            .to_string();
        d.ok(&["ca", "init"]);
        let file = d.path("a.csv");
        write_enrollment(&file, &[&row(&kyokai(), "kyokai", 0)]);
        d.ok(&["enroll", &file.display().to_string()]);
        let me = MyNumber::from_body(77_700_000_000).to_string();
        let id = d.json(&["show", "--my-number", &me, "--json"])["person"]["medical_id"]
            .as_str()
            .unwrap()
            .to_string();
        d.check_by_id(&id);
        let (_serve, https) = serve(&d);
        let base = format!("https://localhost:{}", https.rsplit(':').next().unwrap());
        let a = agent(&d.data.join("ca/ca.pem"), None);
        let head: serde_json::Value = a
            .get(format!("{base}/audit/tree-head"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        assert_eq!(head["signer"], agency.as_str(), "{head}");
        assert_eq!(head["root"].as_str().unwrap().len(), 64, "{head}");
        let size = head["size"].as_u64().unwrap();
        assert!(size >= 1, "{head}");
        let proof: serde_json::Value = a
            .get(format!("{base}/audit/proof/{}", size - 1))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let hash = |s: &serde_json::Value| iryo_proto::merkle::from_hex(s.as_str().unwrap()).unwrap();
        let path: Vec<_> = proof["proof"]
            .as_array()
            .unwrap()
            .iter()
            .map(hash)
            .collect();
        assert!(iryo_proto::merkle::verify_inclusion(
            &hash(&proof["leaf_hash"]),
            size - 1,
            proof["tree_head"]["size"].as_u64().unwrap(),
            &path,
            &hash(&proof["tree_head"]["root"]),
        ));
        assert_eq!(
            a.get(format!("{base}/audit/proof/999999"))
                .call()
                .unwrap()
                .status(),
            404
        );
    }
}
