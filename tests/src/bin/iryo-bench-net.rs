//! `iryo-bench-net`: the federation's figures on this machine, over loopback — fetch
//! latency, fetch throughput from many requesters, notification intake at the
//! directory, and eligibility checks over the network with group commit. Prints a
//! report for BENCHMARKS.md; nothing here is a test.

use anyhow::{Context as _, Result};
use clap::Parser;
use iryo_directory::access::{ConsentOrigin, ConsentRecord};
use iryo_directory::registry::now;
use iryo_directory::store::verify_notifications;
use iryo_node::exchange::notification;
use iryo_proto::eligibility::CheckRequest;
use iryo_proto::federation::{Grant, Purpose, Side};
use iryo_proto::{InstitutionCode, PointTableKind};
use iryo_tests::local::LocalFederation;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "iryo-bench-net",
    about = "Benchmark the federation over loopback and print a report."
)]
struct Args {
    /// Sequential fetches for the latency figure.
    #[arg(long, default_value_t = 300)]
    fetches: usize,
    /// Concurrent requesters for the throughput figure.
    #[arg(long, default_value_t = 16)]
    requesters: usize,
    /// Seconds each throughput phase runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Notifications for the intake figure.
    #[arg(long, default_value_t = 100_000)]
    notifications: usize,
    /// Nodes sending notification requests at the same time.
    #[arg(long, default_value_t = 8)]
    senders: usize,
    /// Nodes the eligibility checks come from.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Concurrent eligibility checks in flight, for the capacity figure.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Eligibility checks a second offered at a steady pace, for the latency figure.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    /// People in the directory's registry, enrolled from a generated sample before
    /// anything is measured (the national-shape phase is meant for 10,000,000).
    #[arg(long, default_value_t = 10_000)]
    persons: u64,
    /// Nodes the national-shape phase's checks come from.
    #[arg(long, default_value_t = 50)]
    national_nodes: usize,
    /// Checks a second in the national-shape phase; Japan's national peak by default
    /// (see `NATIONAL_PEAK`).
    #[arg(long, default_value_t = NATIONAL_PEAK)]
    national_rate: u32,
    /// Run this phase only; the federation is set up in full either way.
    #[arg(long, value_enum)]
    only: Option<Phase>,
    /// Send every eligibility check with an idempotency key of its own, as an EMR that
    /// retries would (keyed checks take the main writer, not the intake files).
    #[arg(long)]
    keyed: bool,
    /// Keep the directory's registry in this PostgreSQL database (which must hold no
    /// registry) instead of the embedded store, and measure the plain PostgreSQL
    /// baseline there too: lookup-plus-insert transactions from 16 connections.
    #[arg(long, value_name = "URL")]
    database: Option<String>,
    /// With --database: connections that record plain checks beside the group-commit
    /// writer (`[storage] intake_lanes`; 0 sends every check through that writer).
    #[arg(long, value_name = "N", default_value_t = iryo_directory::postgres::INTAKE_LANES)]
    intake_lanes: usize,
}

/// A check with the `n`th key of a run, when keys are asked for.
fn keyed(mut req: CheckRequest, keys: bool, n: usize) -> CheckRequest {
    if keys {
        req.idempotency_key = iryo_proto::IdempotencyKey::parse(&format!("bench-{n}")).ok();
    }
    req
}

/// Japan's eligibility checks a second at their national peak. Online checks ran at
/// about 90 million a month in early 2023 with part of the institutions online
/// (MHLW, 社会保障審議会医療保険部会 2023-02-24); with every institution online and
/// paper cards gone, about 250 million a month. Over 20 working days, most checks fall
/// in the 8 hours desks are open, and the morning peak is about three times the day's
/// mean: 250e6 / (20 × 8 × 3600) × 3 ≈ 1,300 checks a second, for the whole nation.
/// One directory on this machine takes the whole peak, so the phase runs it unscaled.
const NATIONAL_PEAK: u32 = 1_300;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Fetch,
    Notifications,
    Eligibility,
    /// Checks at the national peak from many nodes, for people spread over the whole
    /// registry.
    National,
}

impl Args {
    fn runs(&self, phase: Phase) -> bool {
        self.only.is_none_or(|only| only == phase)
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    iryo_directory::measure::percentile(sorted, p).as_secs_f64() * 1e3
}

/// "N checks in S s: R checks/s, p50 …, p99 … (p90 …, p99.9 …)", from the answered
/// checks' latencies; p90 tells a wide distribution from a few stalls.
fn checks_summary(lat: &mut [Duration], took: Duration) -> String {
    lat.sort();
    let secs = took.as_secs_f64();
    format!(
        "{} checks in {secs:.1} s: {:.0} checks/s, p50 {:.2} ms, p99 {:.2} ms (p90 {:.2} ms, p99.9 {:.2} ms)",
        lat.len(),
        lat.len() as f64 / secs,
        pct(lat, 0.5),
        pct(lat, 0.99),
        pct(lat, 0.90),
        pct(lat, 0.999)
    )
}

/// The p99 of the checks due in each second of the run, in ms: a run spoiled by one
/// stall shows one high second, a machine that is slower throughout shows all of them.
fn p99_by_second(answered: &[(Instant, Duration)], start: Instant) -> String {
    let mut seconds: Vec<Vec<Duration>> = Vec::new();
    for (due, lat) in answered {
        let s = due.saturating_duration_since(start).as_secs() as usize;
        if seconds.len() <= s {
            seconds.resize_with(s + 1, Vec::new);
        }
        seconds[s].push(*lat);
    }
    seconds
        .iter_mut()
        .map(|lat| {
            lat.sort();
            format!("{:.2}", pct(lat, 0.99))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn consent(
    fed: &LocalFederation,
    patient: iryo_proto::MedicalId,
    who: InstitutionCode,
) -> Result<()> {
    // The store blocks (PostgreSQL's client drives a runtime of its own): off the
    // async workers.
    Ok(tokio::task::block_in_place(|| {
        fed.store.add_consent(
            patient,
            &ConsentRecord {
                institution: Some(who),
                purpose: Some(Purpose::Treatment),
                allow: true,
                expires_at: None,
                at: now(),
                origin: ConsentOrigin::Operator("bench".into()),
            },
        )
    })?)
}

fn main() -> Result<()> {
    let args = Args::parse();
    iryo_tests::init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let database = args
        .database
        .as_deref()
        .map(iryo_directory::postgres::DatabaseUrl::parse)
        .transpose()?
        .map(|u| u.with_intake_lanes(args.intake_lanes));
    let enrolling = Instant::now();
    let fed = LocalFederation::start_on(tmp.path(), args.persons, database.as_ref()).await?;
    println!(
        "iryo-bench-net — directory with {} people (enrolled in {:.0} s) on {}, nodes on 127.0.0.1",
        args.persons,
        enrolling.elapsed().as_secs_f64(),
        database
            .as_ref()
            .map_or("the embedded store (redb)".to_string(), |u| format!(
                "PostgreSQL ({u})"
            ))
    );
    let source_code = InstitutionCode::from_parts(13, PointTableKind::Medical, 1)?;
    let (source, _) = fed.add_node("source", source_code, "source").await?;
    let people = tokio::task::block_in_place(|| fed.store.first_persons(2_000))?;
    let patient = people[0].medical_id;
    let ask = move |key| iryo_node::exchange::FetchAsk {
        medical_id: patient,
        source: source_code,
        purpose: Purpose::Treatment,
        reason: None,
        key,
    };
    // A 20 KB Bundle: 10 resources of about 2 KB.
    let entries: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({ "resource": { "resourceType": "Observation", "id": format!("o{i}"), "status": "final", "code": { "text": "所見" }, "note": [{ "text": "所見".repeat(330) }] } }))
        .collect();
    let bundle =
        serde_json::json!({ "resourceType": "Bundle", "type": "collection", "entry": entries });
    let doc = serde_json::to_vec(&bundle)?;
    iryo_node::fhir::validate(&doc)?;
    let resources = iryo_node::fhir::resources(&doc)?;
    source.node.store.put_records(patient, &resources)?;
    let stored = source.node.store.records(patient)?;
    let contents = iryo_node::fhir::stored_contents(&stored)?;
    println!(
        "bundle: {} bytes",
        iryo_node::fhir::bundle("collection", &stored).len()
    );

    // 1. Latency of one consented fetch, end to end.
    let req_code = InstitutionCode::from_parts(13, PointTableKind::Medical, 2)?;
    let (requester, _) = fed.add_node("requester", req_code, "requester").await?;
    consent(&fed, patient, req_code)?;
    if args.runs(Phase::Fetch) {
        // The first fetches open the sessions and fill the caches; they are not counted.
        const WARM_UP: usize = 20;
        let mut lat = Vec::with_capacity(args.fetches);
        for i in 0..WARM_UP + args.fetches {
            let t = Instant::now();
            iryo_node::exchange::fetch(&requester.node, ask(None)).await?;
            if i >= WARM_UP {
                lat.push(t.elapsed());
            }
        }
        lat.sort();
        println!(
            "\n[fetch, one requester] {} consented fetches of the 20 KB Bundle (grant, round trip, both notifications queued): p50 {:.2} ms, p99 {:.2} ms",
            args.fetches,
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
    // 2. Throughput from many requesters to one source.
    let mut nodes = Vec::new();
    for i in 0..args.requesters {
        let code = InstitutionCode::from_parts(13, PointTableKind::Medical, 100 + i as u32)?;
        let (n, _) = fed.add_node(&format!("r{i}"), code, "requester").await?;
        consent(&fed, patient, code)?;
        nodes.push(n);
    }
    if args.runs(Phase::Fetch) {
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for n in &nodes {
            let node = n.node.clone();
            tasks.push(tokio::spawn(async move {
                let (mut done, mut failed, mut why) = (0u64, 0u64, None);
                while Instant::now() < deadline {
                    match iryo_node::exchange::fetch(&node, ask(None)).await {
                        Ok(_) => done += 1,
                        Err(e) => {
                            failed += 1;
                            why.get_or_insert(e.to_string());
                        }
                    }
                }
                (done, failed, why)
            }));
        }
        let (mut done, mut failed) = (0, 0);
        for t in tasks {
            let (d, f, why) = t.await?;
            done += d;
            failed += f;
            if let Some(why) = why {
                eprintln!("a fetch failed: {why}");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "[fetch, {} concurrent requesters -> one source] {} fetches in {:.1} s: {:.0} fetches/s ({} failed)",
            args.requesters,
            done,
            secs,
            done as f64 / secs,
            failed
        );
    }
    if args.runs(Phase::Notifications) {
        // 3. Notification intake: verify (batch) and append to the audit log.
        let membership = tokio::task::block_in_place(|| fed.store.institution(source_code))?
            .context("source registered")?
            .membership()?;
        let grant = Grant {
            id: [1; 16],
            requester: req_code,
            requester_key: [0; 32],
            source: source_code,
            medical_id: patient,
            purpose: Purpose::Treatment,
            reason: None,
            issued_at: now(),
            expires_at: now() + 300,
        };
        let signed: Vec<_> = (0..args.notifications)
            .map(|_| notification(&source.node, Side::Disclosed, &grant, &contents))
            .collect();
        // As `serve` takes them: requests from several nodes at once, each verified off the
        // writer, then appended in the group commit shared with checks and grants.
        let writers = fed
            .store
            .clone()
            .start_writers(fed.keys.root.clone(), 512)?;
        let committer = writers.committer();
        let chunks: Arc<Vec<Vec<_>>> = Arc::new(
            signed
                .chunks(iryo_proto::wire::MAX_NOTIFICATIONS_PER_REQUEST)
                .map(<[_]>::to_vec)
                .collect(),
        );
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = Instant::now();
        let senders: Vec<_> = (0..args.senders)
            .map(|_| {
                let (chunks, next, committer, membership) = (
                    chunks.clone(),
                    next.clone(),
                    committer.clone(),
                    membership.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(chunk) = chunks.get(i).cloned() else {
                            return anyhow::Ok(());
                        };
                        let m = membership.clone();
                        let (valid, out) =
                            tokio::task::spawn_blocking(move || verify_notifications(&m, &chunk))
                                .await??;
                        anyhow::ensure!(out.refused.is_empty(), "notifications refused");
                        match committer.notify(membership.code, valid).await {
                            Ok(_) => {}
                            other => anyhow::bail!("notifications not logged: {:?}", other.err()),
                        }
                    }
                })
            })
            .collect();
        for s in senders {
            s.await??;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "[notifications] {} verified (Ed25519 batch) and appended to the Merkle log in {:.2} s, {} senders: {:.0}/s",
            args.notifications,
            secs,
            args.senders,
            args.notifications as f64 / secs
        );
    }
    if args.runs(Phase::Eligibility) {
        // 4. Eligibility checks over the network, each durable before its answer.
        let checks = iryo_directory::measure::card_checks(
            &people,
            req_code,
            chrono::Local::now().date_naive(),
        );
        let checks = Arc::new(checks);
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        let clients: Vec<Arc<iryo_node::Node>> = nodes
            .iter()
            .take(args.clients.max(1))
            .map(|n| n.node.clone())
            .collect();
        for i in 0..args.in_flight {
            let node = clients[i % clients.len()].clone();
            let checks = checks.clone();
            let (keys, in_flight) = (args.keyed, args.in_flight);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut k = i;
                let mut sent = 0usize;
                while Instant::now() < deadline {
                    let req = keyed(checks[k % checks.len()].clone(), keys, sent * in_flight + i);
                    sent += 1;
                    k += 7;
                    let t = Instant::now();
                    if node.directory.check(req).await.is_ok() {
                        lat.push(t.elapsed());
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        println!(
            "[eligibility over the network{}] {} in flight from {} nodes: {}",
            if args.keyed { ", keyed" } else { "" },
            args.in_flight,
            clients.len(),
            checks_summary(&mut lat, started.elapsed())
        );
        // What every durable answer waits for at least, and how often the disk stalls
        // it, measured just before on the same disk.
        println!(
            "[disk, for comparison] 8 KiB appends, each made durable before the next: {}",
            iryo_directory::measure::disk_floor(tmp.path(), 20_000)?
        );
        // 5. The same checks arriving at a steady pace: the latency at the target rate.
        let run = paced(
            &clients,
            checks.clone(),
            (args.rate, args.seconds),
            args.keyed,
        )
        .await?;
        println!(
            "[eligibility at a steady {} checks/s{}] from {} nodes: {}, max {:.2} ms ({} failed); the pacing thread itself sent late by p50 {:.2} ms, p99 {:.2} ms; p99 of each second's checks: {}",
            args.rate,
            if args.keyed { ", keyed" } else { "" },
            clients.len(),
            run.summary,
            run.max_ms,
            run.failed,
            pct(&run.late, 0.50),
            pct(&run.late, 0.99),
            run.by_second
        );
    }
    if args.runs(Phase::National) {
        national(&fed, &args).await?;
    }
    if let Some(url) = &database {
        // The plain PostgreSQL baseline, in the same run and database.
        let rows = 100_000;
        iryo_directory::postgres::baseline::copy_rate(url, rows).await?;
        let tps =
            iryo_directory::postgres::baseline::lookup_insert(url, rows, 16, args.seconds).await?;
        println!(
            "[baseline] one lookup and one insert per durable transaction, 16 connections: {:.0} transactions/s (p50 {:.2} ms, p99 {:.2} ms)",
            tps.per_second,
            tps.p50.as_secs_f64() * 1e3,
            tps.p99.as_secs_f64() * 1e3
        );
        iryo_directory::postgres::baseline::clean(url).await?;
    }
    match &fed.embedded {
        Some(store) => println!(
            "\naudit log: {} entries; service use not yet folded into the per-person index: {}",
            store.audit_size()?,
            store.unfolded_linkage()?
        ),
        None => println!(
            "\naudit log: {} entries",
            tokio::task::block_in_place(|| fed.store.audit_size())?
        ),
    }
    for n in nodes {
        n.stop();
    }
    requester.stop();
    source.stop();
    fed.service.stop().await;
    Ok(())
}

/// Checks at the national peak (`NATIONAL_PEAK`) from `national_nodes` nodes of their
/// own, for people spread over the whole registry, each durable before its answer.
async fn national(fed: &LocalFederation, args: &Args) -> Result<()> {
    let mut nodes = Vec::new();
    for i in 0..args.national_nodes {
        let code = InstitutionCode::from_parts(27, PointTableKind::Medical, 500 + i as u32)?;
        let (n, _) = fed.add_node(&format!("n{i}"), code, "clinic").await?;
        nodes.push(n);
    }
    let today = chrono::Local::now().date_naive();
    let checks =
        tokio::task::block_in_place(|| fed.spread_checks(100_000, nodes[0].node.code, today))?;
    let clients: Vec<Arc<iryo_node::Node>> = nodes.iter().map(|n| n.node.clone()).collect();
    // A round of checks first: every node opens its session to the directory, and
    // the people asked about are there.
    let mut found = 0;
    for (node, check) in clients.iter().zip(checks.iter().step_by(37)) {
        found += usize::from(
            node.directory
                .check(check.clone())
                .await?
                .medical_id
                .is_some(),
        );
    }
    anyhow::ensure!(
        found * 10 >= clients.len() * 9,
        "only {found} of {} spread checks found their person",
        clients.len()
    );
    let rate = (args.national_rate, args.seconds);
    let run = paced(&clients, Arc::new(checks), rate, false).await?;
    println!(
        "[eligibility at the national peak, {} checks/s] from {} nodes, people spread over {} in the registry: {}, max {:.2} ms ({} failed); p99 of each second's checks: {}",
        args.national_rate,
        clients.len(),
        args.persons,
        run.summary,
        run.max_ms,
        run.failed,
        run.by_second
    );
    for n in nodes {
        n.stop();
    }
    Ok(())
}

/// What a run of checks at a steady pace gave.
struct Paced {
    /// `checks_summary` of the answered checks.
    summary: String,
    max_ms: f64,
    failed: usize,
    /// How late the pacing thread sent each check, sorted.
    late: Vec<Duration>,
    /// `p99_by_second`.
    by_second: String,
}

/// The checks arriving at a steady pace, as reception desks send them: `rate` checks a
/// second for `seconds`, round robin over `clients`. A thread of its own paces them
/// (Tokio's timer is only good to a millisecond), and each check's latency counts from
/// the moment it was due, so a stall delays every check behind it and shows.
async fn paced(
    clients: &[Arc<iryo_node::Node>],
    checks: Arc<Vec<CheckRequest>>,
    (rate, seconds): (u32, u64),
    keys: bool,
) -> Result<Paced> {
    let started = Instant::now();
    let (queues, takers): (Vec<_>, Vec<_>) = clients
        .iter()
        .map(|node| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            (tx, tokio::spawn(answer_checks(node.clone(), rx)))
        })
        .unzip();
    let pacer = std::thread::spawn(move || pace_checks(&checks, &queues, (rate, seconds), keys));
    let (paced_from, sent, mut late) = pacer
        .join()
        .map_err(|_| anyhow::anyhow!("the pacing thread panicked"))?;
    late.sort();
    let (mut answered, mut failed) = (Vec::new(), 0usize);
    for t in takers {
        let (a, f) = t.await?;
        answered.extend(a);
        failed += f;
    }
    anyhow::ensure!(answered.len() + failed == sent, "checks went missing");
    let by_second = p99_by_second(&answered, paced_from);
    let mut lat: Vec<Duration> = answered.into_iter().map(|(_, l)| l).collect();
    let summary = checks_summary(&mut lat, started.elapsed());
    Ok(Paced {
        summary,
        max_ms: lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        failed,
        late,
        by_second,
    })
}

/// Hands `rate` checks a second, round robin, to the nodes' queues for `seconds`, each
/// with the moment it was due. Returns when the first was due, how many it sent, and
/// how late it sent each.
fn pace_checks(
    checks: &[CheckRequest],
    queues: &[tokio::sync::mpsc::UnboundedSender<(CheckRequest, Instant)>],
    (rate, seconds): (u32, u64),
    keys: bool,
) -> (Instant, usize, Vec<Duration>) {
    let start = Instant::now();
    let total = rate as usize * seconds as usize;
    let interval = Duration::from_secs(1) / rate.max(1);
    let (mut sent, mut late) = (0, Vec::with_capacity(total));
    while sent < total {
        let now = Instant::now();
        while sent < total {
            let due = start + interval * sent as u32;
            if due > now {
                break;
            }
            // Keys of their own, apart from the saturation run's.
            let req = keyed(
                checks[(sent * 7) % checks.len()].clone(),
                keys,
                usize::MAX - sent,
            );
            if queues[sent % queues.len()].send((req, due)).is_err() {
                return (start, sent, late);
            }
            late.push(now - due);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    (start, sent, late)
}

/// Sends each check that arrives on `queue` from `node` at once, and returns each
/// answered check's due moment and latency from it.
async fn answer_checks(
    node: Arc<iryo_node::Node>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<(CheckRequest, Instant)>,
) -> (Vec<(Instant, Duration)>, usize) {
    use futures::stream::{FuturesUnordered, StreamExt as _};
    let (mut lat, mut failed) = (Vec::new(), 0usize);
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            next = queue.recv(), if open => match next {
                Some((req, due)) => {
                    let node = node.clone();
                    pending.push(async move { (node.directory.check(req).await.is_ok(), due) });
                }
                None => open = false,
            },
            Some((ok, due)) = pending.next() => {
                if ok {
                    lat.push((due, due.elapsed()));
                } else {
                    failed += 1;
                }
            }
        }
    }
    (lat, failed)
}
