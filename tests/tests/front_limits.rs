//! The HTTPS front under pressure: security headers on every answer, counted guessing,
//! bounded uploads, and clients that trickle or hog connections cut off.

use iryo_tests::https::{
    agent, agent_no_redirects, issue, kyokai, row, serve, serve_with, with_ca_on,
};
use iryo_tests::on_both_backends;
use iryo_tests::write_enrollment;

on_both_backends! {
    fn every_answer_carries_the_security_headers_and_lang_never_leaves_the_site(backend) {
        let d = with_ca_on(backend);
        let op = issue(&d, "--operator", "sato", "sato");
        let ins = issue(&d, "--insurer", &kyokai(), "ins");
        let (_serve, https) = serve(&d);
        let base = format!("https://localhost:{}", https.rsplit(':').next().unwrap());
        let ca = d.data.join("ca/ca.pem");
        let check = |res: &ureq::http::Response<ureq::Body>, what: &str| {
            let h = |n: &str| {
                res.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string()
            };
            assert!(
                h("strict-transport-security").contains("max-age="),
                "{what}"
            );
            let csp = h("content-security-policy");
            assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
            assert!(
                !csp.contains("unsafe-inline") && csp.contains("default-src 'none'"),
                "{what}: {csp}"
            );
            assert_eq!(h("x-frame-options"), "DENY", "{what}");
            assert_eq!(h("x-content-type-options"), "nosniff", "{what}");
            assert_eq!(h("referrer-policy"), "no-referrer", "{what}");
            assert_eq!(h("cache-control"), "no-store", "{what}");
        };
        let people = agent(&ca, None);
        let res = people.get(format!("{base}/portal/")).call().unwrap();
        check(&res, "portal");
        let page = res.into_body().read_to_string().unwrap();
        assert!(
            !page.contains("<style") && !page.contains("<script"),
            "{page}"
        );
        let css = people.get(format!("{base}/style.css")).call().unwrap();
        assert_eq!(css.status(), 200);
        let res = agent(&ca, Some(&op))
            .get(format!("{base}/operator/institutions"))
            .call()
            .unwrap();
        assert_eq!(res.status(), 200);
        check(&res, "operator page");
        let res = agent(&ca, Some(&ins))
            .get(format!("{base}/insurer/assignments"))
            .call()
            .unwrap();
        assert_eq!(res.status(), 200);
        check(&res, "assignment file");

        let no_follow = agent_no_redirects(&ca);
        for back in [
            "/%09/example.invalid/phish",
            "/%0a/x",
            "//example.invalid",
            "https://example.invalid/",
        ] {
            let res = no_follow
                .get(format!("{base}/lang?to=en&back={back}"))
                .call()
                .unwrap();
            assert!(res.status().is_redirection(), "{back}: {}", res.status());
            let to = res.headers().get("location").unwrap().to_str().unwrap();
            assert_eq!(to, "/portal/", "{back}");
        }
        let res = no_follow
            .get(format!("{base}/lang?to=en&back=/portal/consent"))
            .call()
            .unwrap();
        assert_eq!(res.headers().get("location").unwrap(), "/portal/consent");
    }
}

on_both_backends! {
    fn guessing_is_counted_before_hashing_and_costs_the_same_for_any_id(backend) {
        let d = with_ca_on(backend);
        let (_serve, https) = serve(&d);
        let base = format!("https://localhost:{}", https.rsplit(':').next().unwrap());
        let a = agent(&d.data.join("ca/ca.pem"), None);
        let hashes = || -> u64 {
            let text = a
                .get(format!("{base}/metrics"))
                .call()
                .unwrap()
                .body_mut()
                .read_to_string()
                .unwrap();
            text.lines()
                .find_map(|l| l.strip_prefix("iryo_directory_portal_password_hashes_total "))
                .map_or(0, |v| v.trim().parse().unwrap())
        };
        let page = a.get(format!("{base}/portal/")).call().unwrap();
        let token = page
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|c| c.split(';').next())
            .and_then(|kv| kv.split_once('='))
            .map(|(_, v)| v.to_string())
            .unwrap();
        let unknown = iryo_proto::MedicalId::from_body(987_654_321).grouped();
        let before = hashes();
        // An ID nobody holds costs a password check, as a real account's does.
        let res = a
            .post(format!("{base}/portal/login"))
            .header("cookie", &format!("iryo_form={token}"))
            .send_form([
                ("form", token.as_str()),
                ("medical_id", unknown.as_str()),
                ("passphrase", "a wrong guess"),
            ])
            .unwrap();
        assert_eq!(res.status(), 401);
        assert_eq!(hashes(), before + 1, "the same work for an unknown ID");
        // A hundred tries at once from one address: counted before any is checked, so at
        // most the address's remaining four reach the password hash.
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..100)
                .map(|_| {
                    let (a, token, unknown, base) =
                        (a.clone(), token.clone(), unknown.clone(), base.clone());
                    s.spawn(move || {
                        a.post(format!("{base}/portal/login"))
                            .header("cookie", &format!("iryo_form={token}"))
                            .send_form([
                                ("form", token.as_str()),
                                ("medical_id", unknown.as_str()),
                                ("passphrase", "another guess"),
                            ])
                            .map_or(0, |r| r.status().as_u16())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(hashes() <= before + 5, "{} hashes", hashes() - before);
        // The rest are refused: 429, or the connection itself, past the address's share
        // of connections.
        assert!(
            statuses.iter().filter(|s| **s == 401).count() <= 4,
            "{statuses:?}"
        );
        // The refusal says what to do, in the page's language.
        let mut res = a
            .post(format!("{base}/portal/login"))
            .header("cookie", &format!("iryo_form={token}"))
            .send_form([
                ("form", token.as_str()),
                ("medical_id", unknown.as_str()),
                ("passphrase", "x"),
            ])
            .unwrap();
        assert_eq!(res.status(), 429);
        let page = res.body_mut().read_to_string().unwrap();
        assert!(
            page.contains("id=\"too-many\"") && page.contains("分後にもう一度"),
            "{page}"
        );
    }
}

on_both_backends! {
    fn uploads_are_bounded_in_size_and_line_and_kept_only_for_their_retention(backend) {
        let d = with_ca_on(backend);
        let ins = issue(&d, "--insurer", &kyokai(), "ins");
        let config = d.path("directory.toml");
        std::fs::write(
            &config,
            "[https]\nmax_upload_mib = 1\nupload_retention_days = 0\n[enrollment]\nmax_line_bytes = 4096\n",
        )
        .unwrap();
        let (_serve, https) = serve_with(&d, &["--config", &config.display().to_string()]);
        let base = format!("https://localhost:{}", https.rsplit(':').next().unwrap());
        let a = agent(&d.data.join("ca/ca.pem"), Some(&ins));
        let uploads = d.data.join("uploads");
        let csvs = || {
            std::fs::read_dir(&uploads).map_or(0, |r| {
                r.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".csv"))
                    .count()
            })
        };
        // Over the size limit: refused, nothing kept. The front answers 413 as soon as
        // the limit is passed and closes, so a client still sending may see its
        // connection broken instead of the answer.
        let big = vec![b'a'; 2 << 20];
        let status = a
            .post(format!("{base}/insurer/enrollments?wait=true"))
            .send(&big[..])
            .map_or(0, |r| r.status().as_u16());
        assert!(status == 413 || status == 0, "oversize upload: {status}");
        assert_eq!(csvs(), 0);
        // A line longer than allowed stops the file, named, without the server's paths.
        let mut long = format!("{}\n", iryo_tests::HEADER).into_bytes();
        long.extend(std::iter::repeat_n(b'x', 10_000));
        long.push(b'\n');
        let mut res = a
            .post(format!("{base}/insurer/enrollments?wait=true"))
            .send(&long[..])
            .unwrap();
        assert_eq!(res.status(), 422);
        let job: serde_json::Value = res.body_mut().read_json().unwrap();
        let error = job["error"].as_str().unwrap();
        assert!(
            error.contains("line 2 is longer than 4096 bytes"),
            "{error}"
        );
        assert!(!error.contains(&d.data.display().to_string()), "{error}");
        // A good file is enrolled; with a retention of 0 days the file itself goes, the
        // summary stays.
        let good = d.path("good.csv");
        write_enrollment(&good, &[&row(&kyokai(), "kyokai", 0)]);
        let mut res = a
            .post(format!("{base}/insurer/enrollments?wait=true"))
            .send(std::fs::read(&good).unwrap())
            .unwrap();
        assert_eq!(res.status(), 200);
        let job: serde_json::Value = res.body_mut().read_json().unwrap();
        assert_eq!(csvs(), 0, "uploads past their retention are deleted");
        let status = a
            .get(format!(
                "{base}/insurer/enrollments/{}",
                job["id"].as_str().unwrap()
            ))
            .call()
            .unwrap()
            .body_mut()
            .read_json::<serde_json::Value>()
            .unwrap();
        assert_eq!(status["summary"]["new"], 1, "{status}");
    }
}

on_both_backends! {
    fn idle_trickling_and_greedy_clients_are_cut_off_and_others_served(backend) {
        use std::io::{Read, Write};
        use std::time::{Duration, Instant};
        let d = with_ca_on(backend);
        let config = d.path("directory.toml");
        std::fs::write(
            &config,
            "[https]\nconnections_per_address = 3\nidle_seconds = 1\nmin_bytes_per_second = 100\n",
        )
        .unwrap();
        let (_serve, https) = serve_with(&d, &["--config", &config.display().to_string()]);
        let closed_within = |s: &mut std::net::TcpStream, limit: Duration| {
            s.set_read_timeout(Some(limit)).unwrap();
            let started = Instant::now();
            let mut buf = [0u8; 256];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) if started.elapsed() < limit => return true,
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        };
        // Three idle connections hold the address's share; a fourth is closed at once.
        let mut idle: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(&https).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut fourth = std::net::TcpStream::connect(&https).unwrap();
        assert!(
            closed_within(&mut fourth, Duration::from_millis(900)),
            "over the share"
        );
        // Idle ones are closed after the idle limit, far sooner than a minute.
        for s in &mut idle {
            assert!(
                closed_within(s, Duration::from_secs(5)),
                "idle connection kept"
            );
        }
        // A peer trickling its handshake a byte at a time is cut off too.
        let mut trickle = std::net::TcpStream::connect(&https).unwrap();
        let started = Instant::now();
        let mut cut = false;
        for b in [
            0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ] {
            std::thread::sleep(Duration::from_millis(400));
            if trickle.write_all(&[b]).is_err() {
                cut = true;
                break;
            }
        }
        cut = cut || closed_within(&mut trickle, Duration::from_secs(3));
        assert!(
            cut && started.elapsed() < Duration::from_secs(10),
            "trickle kept"
        );
        // And the front serves a well-behaved client.
        let base = format!("https://localhost:{}", https.rsplit(':').next().unwrap());
        let a = agent(&d.data.join("ca/ca.pem"), None);
        assert_eq!(
            a.get(format!("{base}/portal/")).call().unwrap().status(),
            200
        );
    }
}
