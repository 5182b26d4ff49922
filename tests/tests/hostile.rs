//! Malformed and oversize messages are refused without crashing anything, and the
//! directory and nodes go on serving.

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use iryo_proto::federation::{Notification, Purpose, Side};
use iryo_proto::signed::Signed;
use iryo_proto::wire::*;
use iryo_tests::federation::*;
use iryo_tests::on_every_deployment;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use std::time::Duration;

/// Opens a stream on `protocol` as a peer with a fresh key and hands it to `talk`;
/// `None` if the stream cannot be opened or `talk` gives up or takes over `limit`.
fn on_raw_stream<T, F, Fut>(
    addr: &str,
    protocol: &'static str,
    limit: Duration,
    talk: F,
) -> Option<T>
where
    F: FnOnce(libp2p::Stream) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut swarm = libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                libp2p::tcp::Config::default(),
                libp2p::tls::Config::new,
                libp2p::yamux::Config::default,
            )
            .expect("transport")
            .with_behaviour(|_| libp2p_stream::Behaviour::new())
            .expect("behaviour")
            .build();
        let addr: Multiaddr = addr.parse().expect("address");
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
            panic!("no peer id")
        };
        let peer: PeerId = peer;
        let mut control = swarm.behaviour().new_control();
        swarm
            .dial(DialOpts::peer_id(peer).addresses(vec![addr]).build())
            .expect("dial");
        let driver = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        let exchange = async {
            let stream = control
                .open_stream(peer, StreamProtocol::new(protocol))
                .await
                .ok()?;
            talk(stream).await
        };
        let back = tokio::time::timeout(limit, exchange).await.ok().flatten();
        driver.abort();
        back
    })
}

/// Writes `frame` behind a length of `claimed` bytes (its true length when `None`),
/// and returns the first answer that comes back, or `None` if the stream closes or
/// nothing comes in time.
fn send_raw(
    addr: &str,
    protocol: &'static str,
    frame: &[u8],
    claimed: Option<u32>,
) -> Option<Vec<u8>> {
    on_raw_stream(
        addr,
        protocol,
        Duration::from_secs(10),
        |mut stream| async move {
            let length = claimed.unwrap_or(frame.len() as u32);
            stream.write_all(&length.to_be_bytes()).await.ok()?;
            stream.write_all(frame).await.ok()?;
            stream.flush().await.ok()?;
            // The answerer's welcome is an empty frame; the answer is the next.
            loop {
                let mut length = [0u8; 4];
                stream.read_exact(&mut length).await.ok()?;
                let mut back = vec![0u8; u32::from_be_bytes(length) as usize];
                stream.read_exact(&mut back).await.ok()?;
                if !back.is_empty() {
                    return Some(back);
                }
            }
        },
    )
}

/// Sends unreadable requests for `seconds` and never reads an answer; returns how
/// many it managed to write.
fn flood(addr: &str, protocol: &'static str, seconds: u64) -> usize {
    let written = std::sync::atomic::AtomicUsize::new(0);
    let frame = not_a_request("flood");
    let mut framed = (frame.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&frame);
    let (count, framed) = (&written, &framed);
    let _: Option<()> = on_raw_stream(
        addr,
        protocol,
        Duration::from_secs(seconds),
        |mut stream| async move {
            loop {
                stream.write_all(framed).await.ok()?;
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        },
    );
    written.into_inner()
}

/// A frame with request id 7 whose message is CBOR but not a request.
fn not_a_request(text: &str) -> Vec<u8> {
    encode_frame(7, &text.to_string(), u64::MAX).expect("encodes")
}

fn refused_as_bad_request<T: serde::de::DeserializeOwned + Answer + std::fmt::Debug>(
    back: Option<Vec<u8>>,
    bad: impl Fn(&T) -> bool,
) {
    let back = back.expect("an answer comes back");
    let (id, answer) = decode_frame::<T>(&back).expect("the answer is a frame");
    assert_eq!(id, 7, "answered under the request's id");
    assert!(bad(&answer), "refused as a bad request: {answer:?}");
}

/// Hostile frames to a directory process at `addr`: CBOR that is not a request is
/// refused under its id; a length beyond any request, a large frame from a peer without
/// a membership, and a frame too short for a request id close the stream unanswered.
fn hostile_frames_to_a_directory(addr: &str) {
    refused_as_bad_request::<DirectoryResponse>(
        send_raw(
            addr,
            DIRECTORY_PROTOCOL,
            &not_a_request("not a request"),
            None,
        ),
        |a| matches!(a, DirectoryResponse::Refused(r) if r.reason == RefusalReason::BadRequest),
    );
    let over = MAX_DIRECTORY_REQUEST as u32 + 1024;
    let short = not_a_request("short");
    assert_eq!(send_raw(addr, DIRECTORY_PROTOCOL, &short, Some(over)), None);
    // A peer without a membership may not make the directory read a large frame,
    // though a member's may be 512 KiB: 64 KiB, whole and in time, closes the stream.
    let mut big = 7u64.to_be_bytes().to_vec();
    big.resize(64 * 1024, 0x41);
    assert_eq!(send_raw(addr, DIRECTORY_PROTOCOL, &big, None), None);
    // Too short to carry a request id.
    assert_eq!(send_raw(addr, DIRECTORY_PROTOCOL, &[1, 2, 3], None), None);
}

on_every_deployment! {
    fn hostile_messages_are_refused_and_everyone_keeps_serving(deployment) {
        let fed = Federation::deploy(deployment, 2, 1, 60);
        let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
        let p = fed.patients[0];
        assert_eq!(a.put_records(p, &sample_bundle(1, 10)).0, 201);

        // To the directory (split, to each half), and to a node.
        hostile_frames_to_a_directory(&fed.directory_addr);
        if let Some(split) = &fed.split {
            hostile_frames_to_a_directory(&split.registry_addr);
        }
        let node_addr = {
            let cfg = iryo_node::config::NodeConfig::load(&a.config_path()).expect("config");
            let key = node_key(a);
            format!(
                "{}/p2p/{}",
                cfg.p2p.listen,
                iryo_node::identity::peer_id(&key.verifying_key().to_bytes()).expect("peer")
            )
        };
        refused_as_bad_request::<ExchangeResponse>(
            send_raw(
                &node_addr,
                EXCHANGE_PROTOCOL,
                &not_a_request("GET /records"),
                None,
            ),
            |a| matches!(a, ExchangeResponse::Refused(r) if r.reason == RefusalReason::BadRequest),
        );
        // A length larger than any request may be: the stream is closed without an answer,
        // before the rest arrives.
        assert_eq!(
            send_raw(&node_addr, EXCHANGE_PROTOCOL, &not_a_request("short"), Some(u32::MAX)),
            None
        );

        // A member's oversize batch of notifications is refused the same way.
        let b_raw = RawPeer::new(&node_key(b), &fed.directory_addr);
        let key = node_key(b);
        let n = |i: u32| {
            Signed::sign(
                &Notification {
                    id: [(i % 251) as u8; 16],
                    side: Side::Received,
                    grant_id: [0; 16],
                    medical_id: p,
                    source: a.code,
                    requester: b.code,
                    purpose: Purpose::Treatment,
                    emergency: false,
                    record_count: 1,
                    resource_types: vec!["Observation".repeat(100)],
                    at: 0,
                },
                &key,
            )
        };
        let batch: Vec<_> = (0..MAX_NOTIFICATIONS_PER_REQUEST as u32 + 10)
            .map(n)
            .collect();
        let over = b_raw
            .rt
            .block_on(b_raw.p2p.directory(DirectoryRequest::Notify {
                notifications: batch,
            }));
        assert!(
            matches!(over, Err(_) | Ok(DirectoryResponse::Refused(_))),
            "an oversize batch is not accepted: {over:?}"
        );

        // Everything still works.
        match b_raw.directory(DirectoryRequest::Resolve { code: a.code }) {
            DirectoryResponse::Membership(Some(_)) => {}
            other => panic!("{other:?}"),
        }
        match b_raw.directory(DirectoryRequest::Consent { medical_id: p }) {
            DirectoryResponse::Consent(list) => assert!(list.is_empty()),
            other => panic!("{other:?}"),
        }
        fed.consent(p, b.code);
        assert_eq!(b.fetch(p, a.code, "treatment", None).0, 200);
        assert!(b.finds_eligible(p), "checks are answered (split, by the registry)");

        // A peer that sends requests and never reads the answers: the source stops reading
        // from it once 64 answers wait, and goes on serving everyone else meanwhile.
        let flooding = {
            let node_addr = node_addr.clone();
            std::thread::spawn(move || flood(&node_addr, EXCHANGE_PROTOCOL, 4))
        };
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(b.fetch(p, a.code, "treatment", None).0, 200);
        let written = flooding.join().expect("flood thread");
        // Once the source stops reading, the flood stalls when the stream's window and the
        // socket buffers are full: about 15,000 of these frames. A source that kept reading
        // took 175,000 in the same four seconds here.
        assert!(
            (64..50_000).contains(&written),
            "the flood was held back: {written} frames written"
        );

        assert!(fed
            .operator(&["audit", "verify"])
            .contains("audit log verified"));
    }
}
