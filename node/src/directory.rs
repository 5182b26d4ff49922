//! The directory as the node sees it: memberships resolved by institution code, checked
//! against the agency key, and cached for the refresh interval.

use crate::p2p::{P2p, P2pError};
use ed25519_dalek::VerifyingKey;
use iryo_proto::federation::Membership;
use iryo_proto::wire::{DirectoryRequest, DirectoryResponse, Refusal};
use iryo_proto::InstitutionCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("the directory is unreachable: {0}")]
    Unreachable(#[from] P2pError),
    #[error("the directory refused: {0}")]
    Refused(Refusal),
    #[error("the directory's answer is not signed by the agency")]
    BadSignature,
    #[error("unexpected answer from the directory")]
    Unexpected,
}

pub struct Directory {
    p2p: P2p,
    agency: VerifyingKey,
    refresh: Duration,
    cache: Mutex<HashMap<InstitutionCode, (Option<Membership>, Instant)>>,
}

impl Directory {
    pub fn new(p2p: P2p, agency: VerifyingKey, refresh: Duration) -> Self {
        Self {
            p2p,
            agency,
            refresh,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The institution's active membership, `None` if it has none (unknown, revoked,
    /// expired). Answers from the cache while it is fresher than the refresh interval.
    pub async fn resolve(
        &self,
        code: InstitutionCode,
    ) -> Result<Option<Membership>, DirectoryError> {
        if let Ok(cache) = self.cache.lock() {
            if let Some((m, at)) = cache.get(&code) {
                if at.elapsed() < self.refresh {
                    return Ok(m.clone());
                }
            }
        }
        let m = match self
            .p2p
            .directory(DirectoryRequest::Resolve { code })
            .await?
        {
            DirectoryResponse::Membership(Some(signed)) => {
                let m = signed
                    .verify(&self.agency)
                    .map_err(|_| DirectoryError::BadSignature)?;
                (m.code == code && m.valid_at(chrono::Utc::now().timestamp())).then_some(m)
            }
            DirectoryResponse::Membership(None) => None,
            DirectoryResponse::Refused(r) => return Err(DirectoryError::Refused(r)),
            _ => return Err(DirectoryError::Unexpected),
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(code, (m.clone(), Instant::now()));
        }
        Ok(m)
    }

    pub async fn request(
        &self,
        req: DirectoryRequest,
    ) -> Result<DirectoryResponse, DirectoryError> {
        match self.p2p.directory(req).await? {
            DirectoryResponse::Refused(r) => Err(DirectoryError::Refused(r)),
            other => Ok(other),
        }
    }
}
