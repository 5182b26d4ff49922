//! Exchanging records. As a source: a fetch is served only under a grant the agency
//! signed for this requester, this source, this patient and purpose, unexpired and
//! unused, from a requester whose key holds an active membership. As a requester:
//! resolve the source, obtain a grant, fetch, and record the receipt.

use crate::p2p::{peer_key, IncomingStreams};
use crate::{fhir, Node};
use futures::StreamExt;
use iryo_proto::federation::{
    check_grant, FetchContext, Grant, GrantRefusal, LoggedGrant, Notification, Purpose,
    RefusalReport, Side,
};
use iryo_proto::signed::Signed;
use iryo_proto::wire::*;
use iryo_proto::{IdempotencyKey, InstitutionCode, MedicalId};
use std::sync::Arc;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn fresh_id() -> [u8; 16] {
    let mut random = [0u8; 8];
    // Without randomness two notifications of one microsecond could share an id; the OS
    // source does not fail on the platforms nodes run on, and a clash would only be
    // de-duplicated.
    let _ = getrandom::fill(&mut random);
    let micros = chrono::Utc::now().timestamp_micros().max(0) as u64;
    iryo_proto::federation::ordered_id(micros, random)
}

/// The notification of one end of an exchange, signed by this node.
pub fn notification(
    node: &Node,
    side: Side,
    grant: &Grant,
    contents: &fhir::Contents,
) -> Signed<Notification> {
    Signed::sign(
        &Notification {
            id: fresh_id(),
            side,
            grant_id: grant.id,
            medical_id: grant.medical_id,
            source: grant.source,
            requester: grant.requester,
            purpose: grant.purpose,
            emergency: grant.purpose == Purpose::Emergency,
            record_count: contents.count,
            resource_types: contents.types.clone(),
            at: now(),
        },
        &node.key,
    )
}

fn refused(reason: RefusalReason, detail: impl Into<String>) -> ExchangeResponse {
    ExchangeResponse::Refused(Refusal::new(reason, detail))
}

/// Answers fetches from other nodes until the swarm stops: one task per requester's
/// session, answering its requests as they come.
pub async fn serve_inbound(node: Arc<Node>, mut inbound: IncomingStreams) {
    while let Some((peer, stream)) = inbound.next().await {
        let node = node.clone();
        let limits = (MAX_EXCHANGE_REQUEST, MAX_EXCHANGE_RESPONSE);
        // Decoded once a session: it decompresses a curve point.
        let key = peer_key(&peer);
        tokio::spawn(iryo_p2p::answer::answer(
            peer,
            stream,
            limits,
            move |request| {
                let node = node.clone();
                async move {
                    let response = serve(&node, key, request).await;
                    let served = &crate::metrics::metrics().served;
                    if let ExchangeResponse::Refused(r) = &response {
                        tracing::warn!(%peer, reason = %r.reason, "fetch refused: {}", r.detail);
                        crate::metrics::Metrics::count(served, format!("{:?}", r.reason));
                    } else {
                        crate::metrics::Metrics::count(served, "served");
                    }
                    response
                }
            },
        ));
    }
}

/// Queues a signed report of a refused fetch for the directory, so that the patient
/// and the agency see the attempt; the refusal is answered whether or not it queues.
async fn report_refusal(
    node: &Arc<Node>,
    peer: [u8; 32],
    request: (MedicalId, Purpose, &Signed<Grant>),
    reason: RefusalReason,
) {
    let (medical_id, purpose, grant) = request;
    let claimed = grant.open_unverified().ok();
    let report = Signed::sign(
        &RefusalReport {
            id: fresh_id(),
            grant_id: claimed.as_ref().map_or([0; 16], |g| g.id),
            medical_id,
            source: node.code,
            requester: claimed.map(|g| g.requester),
            requester_key: peer,
            purpose,
            reason,
            at: now(),
        },
        &node.key,
    );
    let store = node.store.clone();
    match tokio::task::spawn_blocking(move || store.queue_refusal(&report)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "a refusal report was not queued"),
        Err(e) => tracing::error!(error = %e, "a refusal report was not queued"),
    }
}

async fn serve(
    node: &Arc<Node>,
    peer: Option<[u8; 32]>,
    request: ExchangeRequest,
) -> ExchangeResponse {
    let Some(peer) = peer else {
        return refused(RefusalReason::NotMember, "the peer's key is not Ed25519");
    };
    let ExchangeRequest::Fetch {
        medical_id,
        purpose,
        grant,
        position,
    } = request;
    let cx = FetchContext {
        agency: node.agency,
        requester_key: peer,
        me: node.code,
        medical_id,
        purpose,
        now: now(),
        clock_tolerance: node.clock.tolerance(),
    };
    let g = match check_grant(&grant, &cx) {
        Ok(g) => g,
        Err(r) => {
            let reason = RefusalReason::Grant(r);
            report_refusal(node, peer, (medical_id, purpose, &grant), reason).await;
            return refused(reason, r.to_string());
        }
    };
    // Records go out only while witnesses vouch for the log this exchange is reported
    // to, when this node requires them.
    if let Some(watch) = &node.witnessed {
        let at = iryo_proto::federation::grant_position(position.as_ref(), &g, &cx.agency);
        if let Err(why) = watch.gate(cx.now, g.issued_at, at) {
            return refused(RefusalReason::Unwitnessed, why);
        }
    }
    match node.directory.resolve(g.requester).await {
        Ok(Some(m)) if m.public_key == peer => {}
        Ok(Some(_)) => {
            report_refusal(
                node,
                peer,
                (medical_id, purpose, &grant),
                RefusalReason::NotMember,
            )
            .await;
            return refused(RefusalReason::NotMember, "the key is not the requester's");
        }
        Ok(None) => {
            report_refusal(
                node,
                peer,
                (medical_id, purpose, &grant),
                RefusalReason::NotMember,
            )
            .await;
            return refused(
                RefusalReason::NotMember,
                format!("{} has no active membership", g.requester),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, requester = %g.requester, "membership not confirmed");
            return refused(
                RefusalReason::Internal,
                "cannot confirm the requester's membership now; try again later",
            );
        }
    }
    let signer = node.clone();
    let job = crate::store::ServeJob {
        grant_id: g.id,
        expires_at: g.expires_at,
        medical_id: g.medical_id,
        notify: Box::new(move |contents| notification(&signer, Side::Disclosed, &g, contents)),
    };
    match node.serving.serve(job).await {
        Ok(records) => ExchangeResponse::Records {
            bundle: fhir::bundle("collection", &records),
        },
        Err(crate::store::StoreError::Replayed) => {
            let reason = RefusalReason::Grant(GrantRefusal::Replayed);
            report_refusal(node, peer, (medical_id, purpose, &grant), reason).await;
            refused(reason, GrantRefusal::Replayed.to_string())
        }
        Err(e @ crate::store::StoreError::TooLarge { .. }) => refused(
            RefusalReason::BadRequest,
            format!("{e}; nothing was disclosed. Ask the source institution for them another way"),
        ),
        Err(e) => {
            tracing::error!(error = %e, "serving a fetch failed");
            refused(
                RefusalReason::Internal,
                "the source could not serve the records now; try again later",
            )
        }
    }
}

/// Why a fetch did not return records, for the EMR.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("institution {0} has no active membership")]
    UnknownSource(InstitutionCode),
    #[error("{0}")]
    Unavailable(String),
    /// A fetch with the same idempotency key is under way.
    #[error("a fetch with this idempotency key is under way; wait for its answer")]
    InProgress,
    /// A keyed retry whose grant the source served before, to an attempt whose
    /// answer never arrived: the source disclosed the records once already.
    #[error(
        "the source sent these records once already for this idempotency key, but they did not arrive; ask again with a new key"
    )]
    AlreadyServed,
}

/// What an EMR asks to fetch.
#[derive(Debug, Clone)]
pub struct FetchAsk {
    pub medical_id: MedicalId,
    pub source: InstitutionCode,
    pub purpose: Purpose,
    pub reason: Option<String>,
    /// The EMR's key: a retry with the same key and the same ask gets the same Bundle,
    /// and is asked and recorded once (`idempotency`).
    pub key: Option<IdempotencyKey>,
}

/// Fetches a patient's records from `source` under a grant, and queues the receipt
/// notification before returning the Bundle's JSON, as the source sent it (checked).
/// A keyed ask answered before is answered from what was kept.
pub async fn fetch(node: &Arc<Node>, ask: FetchAsk) -> Result<String, FetchError> {
    let scope = ask.key.as_ref().map(|k| {
        crate::idempotency::fetch_scope(
            k,
            node.code,
            (
                ask.medical_id,
                ask.source,
                ask.purpose,
                ask.reason.as_deref(),
            ),
        )
    });
    let Some(scope) = scope else {
        return fetch_new(node, ask, None).await;
    };
    let _claim = node.fetching.claim(scope).ok_or(FetchError::InProgress)?;
    let worker = node.clone();
    let kept = tokio::task::spawn_blocking(move || worker.store.kept_answer(&scope, now()))
        .await
        .map_err(|e| FetchError::Unavailable(e.to_string()))?
        .map_err(|e| FetchError::Unavailable(e.to_string()))?;
    if let Some(bundle) = kept {
        crate::metrics::metrics().fetches_kept.inc();
        return String::from_utf8(bundle).map_err(|e| FetchError::Unavailable(e.to_string()));
    }
    match fetch_new(node, ask, Some(scope)).await {
        // The grant the directory handed out again was served before: the records left
        // the source, and did not arrive here.
        Err(FetchError::Refused(r)) if r.reason == RefusalReason::Grant(GrantRefusal::Replayed) => {
            Err(FetchError::AlreadyServed)
        }
        other => other,
    }
}

/// Fetches under a grant the directory gives for this ask (the same grant again for a
/// keyed retry while it lasts), keeping the answer under `scope` with the receipt.
async fn fetch_new(
    node: &Arc<Node>,
    ask: FetchAsk,
    scope: Option<[u8; 32]>,
) -> Result<String, FetchError> {
    let FetchAsk {
        medical_id,
        source,
        purpose,
        reason,
        key,
    } = ask;
    // Nothing is asked for that could not be recorded on arrival. A write is tried
    // only after one failed; while writes succeed this costs nothing.
    if node.store.write_failed() {
        let worker = node.clone();
        tokio::task::spawn_blocking(move || worker.store.can_record())
            .await
            .map_err(|e| FetchError::Unavailable(e.to_string()))?
            .map_err(|e| FetchError::Unavailable(e.to_string()))?;
    }
    let src = node
        .directory
        .resolve(source)
        .await
        .map_err(|e| match e {
            // This node's own membership was refused (revoked, expired): say so.
            crate::directory::DirectoryError::Refused(r) => FetchError::Refused(r),
            e => FetchError::Unavailable(e.to_string()),
        })?
        .ok_or(FetchError::UnknownSource(source))?;
    let grant = match node
        .directory
        .request(DirectoryRequest::Grant {
            medical_id,
            source,
            purpose,
            reason,
            idempotency_key: key,
        })
        .await
    {
        Ok(DirectoryResponse::Grant(g)) => g,
        Ok(_) => {
            return Err(FetchError::Unavailable(
                "unexpected answer from the directory".into(),
            ))
        }
        Err(crate::directory::DirectoryError::Refused(r)) => return Err(FetchError::Refused(r)),
        Err(e) => return Err(FetchError::Unavailable(e.to_string())),
    };
    // The grant came over the session with the directory, whose key TLS proved; its
    // signature is for the source, which checks it (and everything else) itself.
    let LoggedGrant { grant, position } = grant;
    let g = grant
        .open_unverified()
        .map_err(|e| FetchError::Unavailable(format!("the directory sent a bad grant: {e}")))?;
    // Straight from the directory: its issue time is the agency's clock.
    node.clock.observe(g.issued_at, now());
    let peer = crate::identity::peer_id(&src.public_key)
        .ok_or_else(|| FetchError::Unavailable("the source's key is malformed".into()))?;
    let addresses = src
        .addresses
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect();
    let response = node
        .p2p
        .fetch(
            peer,
            addresses,
            ExchangeRequest::Fetch {
                medical_id,
                purpose,
                grant,
                position,
            },
        )
        .await
        .map_err(|e| FetchError::Unavailable(format!("source {source}: {e}")))?;
    let bundle = match response {
        ExchangeResponse::Records { bundle } => bundle,
        ExchangeResponse::Refused(r) => return Err(FetchError::Refused(r)),
    };
    // The EMR gets valid FHIR R4 only, whatever a source sends.
    let (bundle, contents) = tokio::task::spawn_blocking(move || {
        fhir::validate(&bundle)?;
        let contents = fhir::contents(&bundle)?;
        Ok::<_, fhir::FhirError>((bundle, contents))
    })
    .await
    .map_err(|e| FetchError::Unavailable(e.to_string()))?
    .map_err(|e| FetchError::Unavailable(format!("source sent {e}")))?;
    let receipt = notification(node, Side::Received, &g, &contents);
    let worker = node.clone();
    let bundle = tokio::task::spawn_blocking(move || {
        match scope {
            Some(scope) => worker.store.queue_keeping(
                &receipt,
                crate::store::Keep {
                    scope,
                    bundle: &bundle,
                    now: now(),
                },
            ),
            None => worker.store.queue(&receipt),
        }
        .map(|()| bundle)
    })
    .await
    .map_err(|e| FetchError::Unavailable(e.to_string()))?
    .map_err(|e| FetchError::Unavailable(e.to_string()))?;
    // `contents` has read it as JSON; the strings it skipped may still hold bytes that
    // are not UTF-8.
    String::from_utf8(bundle).map_err(|e| FetchError::Unavailable(format!("source sent {e}")))
}
