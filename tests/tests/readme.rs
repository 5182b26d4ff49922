//! The README's recipe for running a federation, followed line by line. The commands
//! are read from README.md, not copied here, so the two cannot drift apart. Only what
//! a test must change is changed: ports (ephemeral ones), the address the node
//! advertises (this machine's), and the enrollment file behind `FILE...`.

use iryo_node::config::NodeConfig;
use iryo_tests::federation::{field, free_port, start_ready, Proc};
use iryo_tests::rows::{kyokai, Row};
use iryo_tests::{directory_bin, node_bin, write_enrollment};
use std::path::Path;
use std::process::Command;

/// The commands of the code blocks under `heading`, comments and blank lines dropped.
fn blocks(readme: &str, heading: &str) -> Vec<Vec<String>> {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("README has no section {heading:?}"));
    let mut out = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(block) => out.push(block),
                None => current = Some(Vec::new()),
            }
            continue;
        }
        if let Some(block) = current.as_mut() {
            let command = line.split(" #").next().unwrap_or("").trim();
            if !command.is_empty() && !command.starts_with('#') {
                block.push(command.to_string());
            }
        }
    }
    out
}

fn command(line: &str, cwd: &Path) -> Command {
    let mut words = line.split_whitespace();
    let program = match words.next() {
        Some("iryo-directory") => directory_bin(),
        Some("iryo-node") => node_bin(),
        other => panic!("the recipe runs {other:?}, which this test does not know"),
    };
    let mut c = Command::new(program);
    c.args(words)
        .current_dir(cwd)
        .env_remove("IRYO_DIRECTORY_CONFIG")
        .env_remove("IRYO_DATA_DIR")
        .env_remove("IRYO_NODE_CONFIG")
        .env_remove("SSLKEYLOGFILE")
        .env("RUST_LOG", "warn");
    c
}

fn ok(line: &str, cwd: &Path) -> String {
    let out = command(line, cwd).output().expect("run");
    assert!(
        out.status.success(),
        "README line {line:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_readme_recipe_runs_a_federation() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let found = blocks(&readme, "Running a federation");
    let [agency, institution, ..] = found.as_slice() else {
        panic!("the recipe has an agency block and an institution block: {found:?}")
    };
    let tmp = tempfile::tempdir().expect("temp dir");
    let cwd = tmp.path();
    let (p2p, api) = (free_port(), free_port());
    let here = format!("/ip4/127.0.0.1/tcp/{p2p}");

    // The institution makes its identity and registration first: the agency's
    // `institution add` takes the file it sends.
    let init = institution
        .iter()
        .find(|l| l.starts_with("iryo-node init"))
        .expect("iryo-node init in the recipe");
    let init = init
        .replace("/ip4/0.0.0.0/tcp/4711", &here)
        .replace("/ip4/192.0.2.10/tcp/4711", &here)
        + &format!(" --api 127.0.0.1:{api}");
    ok(&init, cwd);

    let file = cwd.join("enrollment.csv");
    write_enrollment(&file, &[&Row::person(1).line()]);
    let mut serving: Option<(Proc, String)> = None;
    for line in agency {
        if line.ends_with(" serve") {
            let cmd = command(
                &format!("{line} --listen /ip4/127.0.0.1/tcp/0 --https 127.0.0.1:0"),
                cwd,
            );
            serving = Some(start_ready(cmd, "iryo-directory serve"));
        } else {
            ok(&line.replace("FILE...", &file.display().to_string()), cwd);
        }
    }
    let (_directory, ready) = serving.expect("the recipe starts serve");
    let directory = field(&ready, "p2p").split(',').next().unwrap().to_string();
    let agency_key = field(&ready, "agency_key").to_string();

    // "put the directory's address and the agency key into hospital/node.toml"
    let config = cwd.join("hospital/node.toml");
    let mut cfg = NodeConfig::load(&config).expect("node.toml");
    cfg.directory.address = directory.into();
    cfg.directory.agency_key = agency_key;
    std::fs::write(&config, cfg.commented()).expect("node.toml");

    let run = institution
        .iter()
        .find(|l| l.starts_with("iryo-node run"))
        .expect("iryo-node run in the recipe");
    let (_node, node_ready) = start_ready(command(run, cwd), "iryo-node run");
    let api_url = field(&node_ready, "api").to_string();

    // The node is a member: an eligibility check at reception goes through it.
    let answer: serde_json::Value = ureq::post(format!("{api_url}/eligibility"))
        .header("Authorization", &format!("Bearer {}", cfg.api.token))
        .send_json(serde_json::json!({
            "insurer": kyokai(),
            "symbol": "10000001",
            "number": "101",
            "branch": "0",
        }))
        .expect("the node answers")
        .body_mut()
        .read_json()
        .expect("JSON");
    assert_eq!(answer["eligible"], true, "{answer}");
}
