//! Sessions on a real loopback transport (TCP, TLS 1.3, yamux): answers that come back
//! in another order than the requests, an asker that stops waiting, a peer that never
//! answers, and a peer that disconnects in the middle of a frame.

use futures::{AsyncWriteExt, StreamExt};
use iryo_p2p::answer::answer;
use iryo_p2p::session::Sessions;
use iryo_p2p::transport::drive;
use iryo_p2p::transport::listening;
use iryo_proto::wire::{Answer, Refusal};
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;

const PROTOCOL: &str = "/iryo/test/1";
const LIMITS: (u64, u64) = (64 * 1024, 64 * 1024);

#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    n: u64,
    /// How long the answerer takes.
    delay_ms: u64,
    /// The answerer never answers this one.
    never: bool,
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
enum Reply {
    Echo(u64),
    Refused(Refusal),
}

impl Answer for Reply {
    fn refused(refusal: Refusal) -> Self {
        Reply::Refused(refusal)
    }
}

fn ask(n: u64, delay_ms: u64) -> Ask {
    Ask {
        n,
        delay_ms,
        never: false,
    }
}

/// How the answering peer behaves.
#[derive(Clone, Copy)]
enum Answerer {
    /// Answers each request after its delay, several at once.
    Normal,
    /// Welcomes the stream, writes half a frame, and goes.
    CutsMidFrame,
}

struct Pair {
    asker: Sessions<Ask, Reply>,
    answerer: PeerId,
    addresses: Vec<Multiaddr>,
    /// Keeps the answerer's swarm running.
    _keep: mpsc::Sender<iryo_p2p::session::Dial>,
}

async fn pair(behaviour: Answerer, timeout: Duration) -> Pair {
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    let (swarm, addresses) = listening([7; 32], listen.clone(), Duration::from_secs(10))
        .await
        .unwrap();
    let answerer = *swarm.local_peer_id();
    let mut inbound = swarm
        .behaviour()
        .new_control()
        .accept(StreamProtocol::new(PROTOCOL))
        .unwrap();
    let (keep, idle) = mpsc::channel(1);
    tokio::spawn(drive(swarm, idle));
    tokio::spawn(async move {
        while let Some((peer, mut stream)) = inbound.next().await {
            match behaviour {
                Answerer::Normal => {
                    tokio::spawn(answer(peer, stream, LIMITS, |a: Ask| async move {
                        if a.never {
                            std::future::pending::<()>().await;
                        }
                        tokio::time::sleep(Duration::from_millis(a.delay_ms)).await;
                        Reply::Echo(a.n)
                    }));
                }
                Answerer::CutsMidFrame => {
                    // The welcome (an empty frame), then a frame that promises 100
                    // bytes and carries 10.
                    let _ = stream.write_all(&[0, 0, 0, 0]).await;
                    let _ = stream.write_all(&[0, 0, 0, 100]).await;
                    let _ = stream.write_all(&[1; 10]).await;
                    let _ = stream.flush().await;
                    let _ = stream.close().await;
                }
            }
        }
    });
    let (swarm, _) = listening([8; 32], listen, Duration::from_secs(10))
        .await
        .unwrap();
    let control = swarm.behaviour().new_control();
    let (dial, dials) = mpsc::channel(8);
    tokio::spawn(drive(swarm, dials));
    Pair {
        asker: Sessions::new(PROTOCOL, LIMITS, control, dial).with_request_timeout(timeout),
        answerer,
        addresses,
        _keep: keep,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

#[test]
fn answers_out_of_order_reach_their_own_requests() {
    runtime().block_on(async {
        let p = pair(Answerer::Normal, Duration::from_secs(10)).await;
        // The first asked is the last answered.
        let asks = (0..8u64).map(|n| {
            let p = &p;
            async move {
                let r = p
                    .asker
                    .request(p.answerer, &p.addresses, &ask(n, (8 - n) * 25))
                    .await;
                (n, r)
            }
        });
        for (n, r) in futures::future::join_all(asks).await {
            assert_eq!(r.unwrap(), Reply::Echo(n));
        }
    });
}

#[test]
fn an_asker_that_stops_waiting_leaves_the_session_working() {
    runtime().block_on(async {
        let p = pair(Answerer::Normal, Duration::from_secs(10)).await;
        let slow_ask = ask(1, 400);
        let slow = p.asker.request(p.answerer, &p.addresses, &slow_ask);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), slow)
                .await
                .is_err(),
            "cancelled"
        );
        assert_eq!(p.asker.waiting(), 0, "the dropped request is forgotten");
        // The late answer to the dropped request is discarded; the next requests get
        // their own answers on the same session.
        for n in 2..5 {
            let r = p.asker.request(p.answerer, &p.addresses, &ask(n, 0)).await;
            assert_eq!(r.unwrap(), Reply::Echo(n));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = p.asker.request(p.answerer, &p.addresses, &ask(9, 0)).await;
        assert_eq!(r.unwrap(), Reply::Echo(9));
    });
}

#[test]
fn a_peer_that_never_answers_times_out_and_others_still_answer() {
    runtime().block_on(async {
        let p = pair(Answerer::Normal, Duration::from_millis(300)).await;
        let never = Ask {
            n: 1,
            delay_ms: 0,
            never: true,
        };
        let err = p
            .asker
            .request(p.answerer, &p.addresses, &never)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
        assert_eq!(p.asker.waiting(), 0);
        let r = p.asker.request(p.answerer, &p.addresses, &ask(2, 0)).await;
        assert_eq!(r.unwrap(), Reply::Echo(2));
    });
}

#[test]
fn a_peer_that_disconnects_mid_frame_fails_the_request_at_once() {
    runtime().block_on(async {
        let p = pair(Answerer::CutsMidFrame, Duration::from_secs(20)).await;
        let started = std::time::Instant::now();
        let err = p
            .asker
            .request(p.answerer, &p.addresses, &ask(1, 0))
            .await
            .unwrap_err();
        let text = err.to_string();
        // The session closes with the stream; a retry on a fresh stream meets the
        // same peer and is given up too.
        assert!(
            ["stream", "closed", "no session"]
                .iter()
                .any(|w| text.contains(w)),
            "{text}"
        );
        // Failed by the broken stream, not by the 20 s timeout.
        assert!(started.elapsed() < Duration::from_secs(10), "{text}");
    });
}
