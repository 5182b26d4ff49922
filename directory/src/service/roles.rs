//! What a directory service answers in its role (docs/roles.md), and the registry's
//! session with the exchange authority.

use crate::config::ServiceRole;
use crate::store::{Serving, StoreError};
use ed25519_dalek::VerifyingKey;
use iryo_proto::wire::{
    DirectoryRequest, DirectoryResponse, Refusal, RefusalReason, MAX_NOTIFICATIONS_PER_REQUEST,
};
use std::sync::Arc;

/// The role a service plays; on an exchange authority, the registry it hears; on a
/// registry, where it learns who is a member.
#[derive(Clone)]
pub struct Admission {
    pub role: ServiceRole,
    /// The registry's root key, which signs its notices.
    pub registry: Option<VerifyingKey>,
    /// The registry's service key, which its session is authenticated by.
    pub registry_peer: Option<[u8; 32]>,
    /// A registry's: the memberships the authority keeps.
    pub members: Option<Arc<crate::members::RemoteMembers>>,
}

impl Admission {
    /// The single-process directory: both roles, no registry apart.
    pub fn all() -> Self {
        Self {
            role: ServiceRole::All,
            registry: None,
            registry_peer: None,
            members: None,
        }
    }

    /// Whether `key` is the registry's service key, on an authority that hears one.
    pub fn is_registry(&self, key: Option<[u8; 32]>) -> bool {
        self.role == ServiceRole::Authority
            && matches!((key, self.registry_peer), (Some(k), Some(r)) if k == r)
    }

    /// The refusal of a member's request that this role does not answer.
    pub fn refuses(&self, request: &DirectoryRequest) -> Option<DirectoryResponse> {
        let registry_only = matches!(
            request,
            DirectoryRequest::Eligibility { .. } | DirectoryRequest::EligibilityBatch { .. }
        );
        let why = match self.role {
            ServiceRole::Authority if registry_only => {
                "this is the exchange authority: eligibility checks go to the registry (the node's registry address)"
            }
            ServiceRole::Registry if !registry_only => {
                "this is the registry: memberships, consent, grants, notifications and the audit log are the exchange authority's (the node's directory address)"
            }
            _ => return None,
        };
        Some(DirectoryResponse::Refused(Refusal::new(
            RefusalReason::BadRequest,
            why,
        )))
    }
}

/// Answers the registry's session: its notices applied in order (or the number
/// expected next), and the memberships of the nodes whose checks it admits.
pub async fn registry_session(
    store: Arc<dyn Serving>,
    admission: &Admission,
    request: DirectoryRequest,
) -> DirectoryResponse {
    let refuse =
        |why: String| DirectoryResponse::Refused(Refusal::new(RefusalReason::BadRequest, why));
    let notices = match request {
        DirectoryRequest::RegistryNotices { notices } => notices,
        DirectoryRequest::MemberByKey { key } => return member_by_key(store, key).await,
        _ => {
            return refuse(
                "the registry's session carries its notices and membership questions only".into(),
            )
        }
    };
    let Some(registry) = admission.registry else {
        return refuse("this authority hears no registry (roles.registry_key)".into());
    };
    if notices.len() > MAX_NOTIFICATIONS_PER_REQUEST {
        return refuse(format!(
            "at most {MAX_NOTIFICATIONS_PER_REQUEST} notices per request"
        ));
    }
    let applied =
        tokio::task::spawn_blocking(move || store.accept_registry_notices(&notices, &registry))
            .await;
    match applied {
        Ok(Ok(expected)) => DirectoryResponse::NoticesApplied { expected },
        Ok(Err(StoreError::Notice(why))) => {
            tracing::warn!(why, "registry notices refused");
            refuse(why)
        }
        Ok(Err(e)) => super::internal(e),
        Err(e) => super::internal(e),
    }
}

/// The active membership of `key`, for the registry; `None` when there is none (never
/// registered, revoked, expired).
async fn member_by_key(store: Arc<dyn Serving>, key: [u8; 32]) -> DirectoryResponse {
    let now = crate::registry::now();
    let found = tokio::task::spawn_blocking(move || store.institution_by_key(&key)).await;
    match found {
        Ok(Ok(Some(record))) => match super::handler::admit(&record, now) {
            Ok(_) => DirectoryResponse::Membership(Some(record.membership)),
            Err(_) => DirectoryResponse::Membership(None),
        },
        Ok(Ok(None)) => DirectoryResponse::Membership(None),
        Ok(Err(e)) => super::internal(e),
        Err(e) => super::internal(e),
    }
}
