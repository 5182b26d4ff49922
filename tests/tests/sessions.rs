//! Sessions: many requesters open their streams to one answerer at the same moment and
//! each sends many requests at once on its one stream; every request gets its own
//! answer, although the answers come back in another order than the requests went.

use ed25519_dalek::SigningKey;
use futures::StreamExt;
use iryo_proto::federation::{Grant, Purpose};
use iryo_proto::signed::Signed;
use iryo_proto::wire::*;
use iryo_proto::{InstitutionCode, MedicalId, PointTableKind};
use std::time::Duration;

const REQUESTERS: usize = 16;
const REQUESTS_EACH: u64 = 25;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// A fetch whose medical ID says which requester asked and which request it is.
fn request(requester: usize, n: u64) -> ExchangeRequest {
    let code = InstitutionCode::from_parts(13, PointTableKind::Medical, 1).expect("code");
    let medical_id = MedicalId::from_body(requester as u64 * 1_000_000 + n);
    let grant = Grant {
        id: [0; 16],
        requester: code,
        requester_key: [0; 32],
        source: code,
        medical_id,
        purpose: Purpose::Treatment,
        reason: None,
        issued_at: 0,
        expires_at: 0,
    };
    ExchangeRequest::Fetch {
        medical_id,
        purpose: Purpose::Treatment,
        grant: Signed::sign(&grant, &key(99)),
        position: None,
    }
}

#[test]
fn every_request_gets_its_own_answer_when_many_arrive_at_once() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let listen: libp2p::Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().expect("addr");
        // Nobody asks the directory here; its address is never dialled. The swarm runs
        // as long as its handle (`_answerer`) is held.
        let nowhere: libp2p::Multiaddr = format!(
            "/ip4/127.0.0.1/tcp/9/p2p/{}",
            iryo_node::identity::peer_id(&key(98).verifying_key().to_bytes()).expect("peer")
        )
        .parse()
        .expect("addr");
        let (_answerer, mut inbound, answerer_addrs, _task) =
            iryo_node::p2p::start(&key(1), listen.clone(), std::slice::from_ref(&nowhere), &[])
                .await
                .expect("answerer starts");
        tokio::spawn(async move {
            while let Some((peer, stream)) = inbound.next().await {
                let limits = (MAX_EXCHANGE_REQUEST, MAX_EXCHANGE_RESPONSE);
                tokio::spawn(iryo_p2p::answer::answer(
                    peer,
                    stream,
                    limits,
                    |req: ExchangeRequest| async move {
                        let ExchangeRequest::Fetch { medical_id, .. } = req;
                        // Later requests are answered sooner, so answers overtake.
                        let wait = 10 - (medical_id.body() % 10);
                        tokio::time::sleep(Duration::from_millis(wait)).await;
                        ExchangeResponse::Records {
                            bundle: medical_id.to_string().into_bytes(),
                        }
                    },
                ));
                // A busy answerer: streams that arrive meanwhile find it still taking
                // this one on, and libp2p drops them; their requesters open again.
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });
        let answerer =
            iryo_node::identity::peer_id(&key(1).verifying_key().to_bytes()).expect("peer");

        let mut requesters = Vec::new();
        for r in 0..REQUESTERS {
            let (p2p, _, _, task) = iryo_node::p2p::start(
                &key(10 + r as u8),
                listen.clone(),
                std::slice::from_ref(&nowhere),
                &[],
            )
            .await
            .expect("requester starts");
            requesters.push((p2p, task));
        }
        let mut all = Vec::new();
        for (r, (p2p, _)) in requesters.iter().enumerate() {
            for n in 0..REQUESTS_EACH {
                let (p2p, addrs) = (p2p.clone(), answerer_addrs.clone());
                all.push(tokio::spawn(async move {
                    let asked = request(r, n);
                    let ExchangeRequest::Fetch { medical_id, .. } = &asked;
                    let want = medical_id.to_string().into_bytes();
                    match p2p.fetch(answerer, addrs, asked).await {
                        Ok(ExchangeResponse::Records { bundle }) => assert_eq!(bundle, want),
                        other => panic!("requester {r}, request {n}: {other:?}"),
                    }
                }));
            }
        }
        for t in all {
            t.await
                .expect("every request is answered with its own answer");
        }
    });
}
