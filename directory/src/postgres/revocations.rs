//! The agency CA's revocation list across several `serve` processes on one database:
//! `ca revoke` publishes the list it wrote, and every front installs a newer one
//! within `FOLLOW_EVERY`, so a revoked certificate is refused at every front, not only
//! at the one beside the CA's register.

use super::PgStore;
use crate::ca::{Ca, CaError};
use crate::store::StoreError;
use std::time::Duration;
use thiserror::Error;

/// How often a front reads the published list.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CrlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Brings this front's list and the published one into step: installs the published
/// one if it is newer, publishes this one if it is newer (it was revoked here before
/// the database was named). Returns the number installed, if one was.
pub fn follow(store: &PgStore, ca: &Ca) -> Result<Option<u64>, CrlError> {
    let (here, pem) = ca.crl()?;
    match store.crl()? {
        Some((published, text)) if published > here => {
            ca.install_crl(published, &text)?;
            tracing::info!(
                number = published,
                "revocation list from the database installed"
            );
            Ok(Some(published))
        }
        Some((published, _)) if published == here => Ok(None),
        _ => {
            store.publish_crl(here, &pem)?;
            Ok(None)
        }
    }
}

/// `ca revoke`'s part: publishes the list the CA just wrote.
pub fn publish(store: &PgStore, ca: &Ca) -> Result<u64, CrlError> {
    let (number, pem) = ca.crl()?;
    store.publish_crl(number, &pem)?;
    Ok(number)
}
