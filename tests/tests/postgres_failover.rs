//! Failover to a synchronous standby: two `serve` processes answer checks, fetches and
//! notifications on a primary whose every commit waits for its standby; the primary is
//! killed with SIGKILL mid-stream and the standby promoted. The processes find the new
//! primary by themselves (a multi-host URL with target_session_attrs=read-write), and
//! everything they acknowledged is on it, none of it twice, in one audit log that
//! verifies and extends the head signed before the failover.

use iryo_tests::federation::*;
use iryo_tests::pg::Cluster;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[test]
fn a_synchronous_standby_takes_over_and_nothing_acknowledged_is_lost() {
    let mut primary = Cluster::start();
    let standby = Cluster::standby_of(&primary);
    primary.make_synchronous();
    let url = format!(
        "postgresql://iryo@{},{}/iryo?target_session_attrs=read-write",
        primary.socket_dir().replace('/', "%2F"),
        standby.socket_dir().replace('/', "%2F")
    );
    let mut fed = Federation::start_on_postgres(&url, 2, 2, 600);
    let (p, q) = (fed.patients[0], fed.patients[1]);

    // A second process of the agency's directory on the same database and keys.
    let (_second, second) = fed.another_directory();
    let first = fed.directory_addr.clone();
    fed.nodes[0].set_directory_addresses(vec![first.clone(), second.clone()]);
    fed.nodes[1].set_directory_addresses(vec![second, first]);
    fed.consent(p, fed.nodes[1].code);
    let (stored, body) = fed.nodes[0].put_records(p, &sample_bundle(2, 20));
    assert!(stored == 200 || stored == 201, "{stored} {body}");
    let before = fed.registry.json(&["audit", "consistency", "1"]);
    let (head_size, head_root) = (
        before["tree_head"]["size"].as_u64().unwrap(),
        before["tree_head"]["root"].as_str().unwrap().to_string(),
    );

    // Checks from both nodes and fetches from node 1, counted as they are answered.
    let stop = AtomicBool::new(false);
    let killed: Mutex<Option<Instant>> = Mutex::new(None);
    // When each check was answered.
    let answers: Mutex<Vec<Instant>> = Mutex::new(Vec::new());
    let (checks_tried, checks_answered) = (AtomicU64::new(0), AtomicU64::new(0));
    let (fetches_tried, fetches_answered) = (AtomicU64::new(0), AtomicU64::new(0));
    let answered = |at: Instant| answers.lock().unwrap().push(at);
    let after_kill = || {
        let k = *killed.lock().unwrap();
        k.map_or(0, |k| {
            answers.lock().unwrap().iter().filter(|a| **a > k).count()
        })
    };
    std::thread::scope(|s| {
        for (node, who) in fed.nodes.iter().zip([p, q]) {
            let (stop, tried, ok, answered) = (&stop, &checks_tried, &checks_answered, &answered);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    tried.fetch_add(1, Ordering::Relaxed);
                    if node.finds_eligible(who) {
                        ok.fetch_add(1, Ordering::Relaxed);
                        answered(Instant::now());
                    }
                }
            });
        }
        let (requester, source) = (&fed.nodes[1], fed.nodes[0].code);
        let (stop, tried, ok) = (&stop, &fetches_tried, &fetches_answered);
        s.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                tried.fetch_add(1, Ordering::Relaxed);
                if requester.fetch(p, source, "treatment", None).0 == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        });

        std::thread::sleep(Duration::from_secs(2));
        assert!(
            checks_answered.load(Ordering::Relaxed) > 0,
            "no checks before the failover"
        );
        primary.kill();
        *killed.lock().unwrap() = Some(Instant::now());
        standby.promote();
        // Service comes back by itself; then the load runs on for a while.
        let deadline = Instant::now() + Duration::from_secs(60);
        while after_kill() < 20 {
            assert!(
                Instant::now() < deadline,
                "no checks answered after the failover"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
    });
    // Without service: the longest wait between two answers from the kill on.
    let kill = killed.lock().unwrap().unwrap();
    let mut times = answers.lock().unwrap().clone();
    times.sort();
    let last_before = times
        .iter()
        .rev()
        .find(|t| **t <= kill)
        .copied()
        .unwrap_or(kill);
    let outage = times
        .iter()
        .filter(|t| **t > kill)
        .scan(last_before, |prev, t| {
            let gap = *t - *prev;
            *prev = *t;
            Some(gap)
        })
        .max()
        .unwrap();
    println!(
        "failover: {:.1} s without service; checks {} answered of {} tried, fetches {} of {}",
        outage.as_secs_f64(),
        checks_answered.load(Ordering::Relaxed),
        checks_tried.load(Ordering::Relaxed),
        fetches_answered.load(Ordering::Relaxed),
        fetches_tried.load(Ordering::Relaxed),
    );
    assert!(fetches_answered.load(Ordering::Relaxed) > 0);
    assert!(fed.nodes[0].drain_outbox(60) && fed.nodes[1].drain_outbox(60));

    // What follows reads the new primary: the old one is gone.
    assert_eq!(standby.sql("SELECT pg_is_in_recovery()"), "f");
    assert!(!primary.path().join("data/postmaster.pid").exists() || !primary.accepts());

    // Every answered check is recorded on the new primary, and no check more than was
    // tried: an answer is sent only after its commit reached the standby.
    let uses = fed.registry.json(&["status"])["service_uses"]
        .as_u64()
        .unwrap();
    let (tried, ok) = (
        checks_tried.load(Ordering::Relaxed),
        checks_answered.load(Ordering::Relaxed),
    );
    assert!(
        ok <= uses && uses <= tried,
        "{ok} answered, {uses} recorded, {tried} tried"
    );
    // Every answered fetch has its grant, and every grant's reports arrived once each.
    let entries = fed.audit_show(p);
    let of = |kind: &str| -> Vec<&Value> {
        entries
            .iter()
            .map(|e| &e[1])
            .filter(|e| e.get(kind).is_some())
            .collect()
    };
    let grants = of("GrantIssued").len() as u64;
    let fetched = fetches_answered.load(Ordering::Relaxed);
    assert!(
        fetched <= grants && grants <= fetches_tried.load(Ordering::Relaxed),
        "{fetched} fetched, {grants} grants"
    );
    let notes: Vec<String> = of("Notification").iter().map(ToString::to_string).collect();
    let unique: std::collections::HashSet<&String> = notes.iter().collect();
    assert_eq!(unique.len(), notes.len(), "a report logged twice");
    assert!(
        notes.len() as u64 >= 2 * fetched,
        "{} reports for {fetched} fetches",
        notes.len()
    );

    // One log: it verifies, and the head signed before the failover is a prefix of
    // the one after.
    let verified = fed.registry.ok(&["audit", "verify"]);
    assert!(verified.contains("audit log verified"), "{verified}");
    let after = fed
        .registry
        .json(&["audit", "consistency", &head_size.to_string()]);
    assert_eq!(after["verified"], true, "{after}");
    assert_eq!(after["old_root"].as_str().unwrap(), head_root, "{after}");
}
