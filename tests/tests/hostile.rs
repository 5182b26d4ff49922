//! Malformed and oversize messages are refused without crashing anything, and the
//! directory and nodes go on serving.

use futures_like::next_event;
use iryo_proto::federation::{Notification, Purpose, Side};
use iryo_proto::signed::Signed;
use iryo_proto::wire::*;
use iryo_tests::federation::*;
use libp2p::request_response::{self as rr, cbor, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use std::time::Duration;

/// Sends `body` as a request on `protocol` with a codec that knows nothing of iryo's
/// types, and reports whether any response came back.
fn send_foreign(addr: &str, protocol: &'static str, body: String) -> bool {
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
            .with_behaviour(|_| {
                cbor::Behaviour::<String, String>::new(
                    [(StreamProtocol::new(protocol), ProtocolSupport::Outbound)],
                    rr::Config::default().with_request_timeout(Duration::from_secs(5)),
                )
            })
            .expect("behaviour")
            .build();
        let addr: Multiaddr = addr.parse().expect("address");
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
            panic!("no peer id")
        };
        let peer: PeerId = peer;
        swarm.add_peer_address(peer, addr);
        swarm.behaviour_mut().send_request(&peer, body);
        loop {
            match tokio::time::timeout(Duration::from_secs(10), next_event(&mut swarm)).await {
                Ok(SwarmEvent::Behaviour(rr::Event::Message { .. })) => return true,
                Ok(SwarmEvent::Behaviour(rr::Event::OutboundFailure { .. })) => return false,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
}

mod futures_like {
    use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};

    pub async fn next_event<B: NetworkBehaviour>(s: &mut Swarm<B>) -> SwarmEvent<B::ToSwarm> {
        use futures::StreamExt;
        s.select_next_some().await
    }
}

#[test]
fn hostile_messages_are_refused_and_everyone_keeps_serving() {
    let fed = Federation::start(2, 1, 60);
    let (a, b) = (&fed.nodes[0], &fed.nodes[1]);
    let p = fed.patients[0];
    assert_eq!(a.put_records(p, &sample_bundle(1, 10)).0, 201);

    // Bytes that are CBOR but not a request, to the directory and to a node.
    assert!(!send_foreign(
        &fed.directory_addr,
        DIRECTORY_PROTOCOL,
        "not a request".into()
    ));
    let node_addr = {
        let cfg = iryo_node::config::NodeConfig::load(&a.config_path()).expect("config");
        let key = node_key(a);
        format!(
            "{}/p2p/{}",
            cfg.p2p.listen,
            iryo_node::identity::peer_id(&key.verifying_key().to_bytes()).expect("peer")
        )
    };
    assert!(!send_foreign(
        &node_addr,
        EXCHANGE_PROTOCOL,
        "GET /records".into()
    ));
    // Larger than any request may be.
    let huge = "x".repeat(MAX_DIRECTORY_REQUEST as usize + 1024);
    assert!(!send_foreign(&fed.directory_addr, DIRECTORY_PROTOCOL, huge));

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
    assert!(fed
        .operator(&["audit", "verify"])
        .contains("audit log verified"));
}
