//! The initial load on PostgreSQL (`registry_tx::initial_load`): the files gathered as
//! on redb, then applied to an empty registry in one transaction.

use super::PgStore;
use crate::issuance::Issuer;
use crate::registry::merge::RowOutcome;
use crate::store::{Gathered, Load, LoadProgress, Result};
use std::path::Path;

/// An initial load into PostgreSQL under way.
pub struct PgInitialLoad<'s> {
    store: &'s PgStore,
    gathered: Gathered,
}

impl PgStore {
    /// Begins an initial load whose temporary files go to `scratch`, a directory made
    /// for it (mode 0700: it holds rows with personal data) and removed after. It
    /// enrolls only into an empty registry (`StoreError::RegistryNotEmpty`).
    pub fn initial_load(&self, scratch: &Path) -> Result<PgInitialLoad<'_>> {
        Ok(PgInitialLoad {
            store: self,
            gathered: Gathered::new(scratch)?,
        })
    }

    /// Whether the registry holds no person, My Number, medical ID or card: what an
    /// initial load here needs.
    pub fn registry_empty(&self) -> Result<bool> {
        use crate::postgres::registry_tx::initial_load::REGISTRY_EMPTY;
        self.read(async |c| Ok(c.query_one(REGISTRY_EMPTY, &[]).await?.get(0)))
    }
}

impl Load for PgInitialLoad<'_> {
    fn gathered(&mut self) -> &mut Gathered {
        &mut self.gathered
    }

    fn finish(
        mut self,
        issuer: &Issuer,
        progress: &dyn LoadProgress,
        outcome: &mut dyn FnMut(usize, &RowOutcome),
    ) -> Result<()> {
        let g = &mut self.gathered;
        self.store
            .write_unlogged(|t| t.initial_load(g, issuer, progress, outcome))
    }
}
