//! What every command needs: the configuration, the open store and the issuer.

use crate::config::Config;
use crate::issuance::{Issuer, Method};
use crate::keys::{AgencyKeys, KeyError};
use crate::postgres::{DatabaseUrl, PgStore};
use crate::store::{Store, StoreError};
use thiserror::Error;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ContextError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("{0}: cannot create the data directory: {1}")]
    DataDir(std::path::PathBuf, std::io::Error),
    #[error("keys exist already in {0}; refusing to overwrite the agency's keys")]
    KeysExist(std::path::PathBuf),
    #[error("{0} holds no issuance key (issuance-ff1.aes256): an exchange authority issues no medical ID; issue on the registry, or restore the registry's key from its backup")]
    NoIssuanceKey(std::path::PathBuf),
    #[error("{0} is not the key that signed this audit log's first tree head; restore the agency's own root key")]
    WrongRootKey(std::path::PathBuf),
}

pub struct Context {
    pub config: Config,
}

impl Context {
    pub fn new(config: Config) -> Self {
        Self { config }
    }

    /// Creates the database and the agency's keys. Fails rather than overwrite either.
    pub fn init(&self) -> Result<(Store, AgencyKeys), ContextError> {
        let c = &self.config;
        crate::files::create_private_dir(&c.data_dir)
            .map_err(|e| ContextError::DataDir(c.data_dir.clone(), e))?;
        if AgencyKeys::exists(&c.keys_dir()) {
            return Err(ContextError::KeysExist(c.keys_dir()));
        }
        let keys = if c.roles.role == crate::config::ServiceRole::Authority {
            AgencyKeys::generate_root_only()?
        } else {
            AgencyKeys::generate()?
        };
        keys.write(&c.keys_dir())?;
        crate::keys::new_service_identity(&c.keys_dir())?;
        let store = Store::create(&c.db_path(), c.registry.cache_mib, c.issuance.method)?;
        let store = self.configure(store).with_signer(keys.root.clone());
        Ok((store, keys))
    }

    /// Opens the store with the agency key that signs the audit log.
    pub fn store(&self) -> Result<Store, ContextError> {
        let c = &self.config;
        let store = Store::open(&c.db_path(), c.registry.cache_mib)?;
        let keys = AgencyKeys::load(&c.keys_dir())?;
        // The root key must be the one this log was begun with: another key would sign
        // heads that no earlier verifier accepts, and only `audit verify` would notice.
        if let Some(first) = store.first_head_signer()? {
            if first != keys.root.verifying_key().to_bytes() {
                return Err(ContextError::WrongRootKey(
                    c.keys_dir().join("agency-root.ed25519"),
                ));
            }
        }
        let store = self
            .configure(store)
            .with_signer(keys.root)
            .with_role(c.roles.role);
        // Checks a process answered and then died before moving into the logs.
        let moved = store.drain_intake()?;
        if moved > 0 {
            tracing::info!(moved, "checks moved from the intake files into the logs");
        }
        Ok(store)
    }

    /// The PostgreSQL database the configuration names (`[storage] url`,
    /// `--database`, `IRYO_DATABASE`), if any; without one the store is redb.
    pub fn database(&self) -> Result<Option<DatabaseUrl>, ContextError> {
        match &self.config.storage.url {
            Some(u) => Ok(Some(
                DatabaseUrl::parse(u)
                    .and_then(|url| url.configured(&self.config.storage))
                    .map_err(StoreError::from)?,
            )),
            None => Ok(None),
        }
    }

    /// Prepares an empty PostgreSQL database as the registry and creates the agency's
    /// keys in the data directory. The database is asked first, so that one that
    /// cannot be reached, or holds a registry already, leaves no keys behind.
    pub fn init_postgres(&self, url: &DatabaseUrl) -> Result<(PgStore, AgencyKeys), ContextError> {
        let c = &self.config;
        crate::files::create_private_dir(&c.data_dir)
            .map_err(|e| ContextError::DataDir(c.data_dir.clone(), e))?;
        if AgencyKeys::exists(&c.keys_dir()) {
            return Err(ContextError::KeysExist(c.keys_dir()));
        }
        PgStore::ensure_empty(url)?;
        let keys = if c.roles.role == crate::config::ServiceRole::Authority {
            AgencyKeys::generate_root_only()?
        } else {
            AgencyKeys::generate()?
        };
        keys.write(&c.keys_dir())?;
        crate::keys::new_service_identity(&c.keys_dir())?;
        let store = PgStore::create(url, c.issuance.method)?.with_signer(keys.root.clone());
        Ok((store, keys))
    }

    /// Opens the registry on PostgreSQL with the agency key that signs the audit log.
    pub fn postgres(&self, url: &DatabaseUrl) -> Result<PgStore, ContextError> {
        let store = PgStore::open(url)?;
        let keys = AgencyKeys::load(&self.config.keys_dir())?;
        if let Some(first) = store.first_head_signer()? {
            if first != keys.root.verifying_key().to_bytes() {
                return Err(ContextError::WrongRootKey(
                    self.config.keys_dir().join("agency-root.ed25519"),
                ));
            }
        }
        let c = &self.config;
        Ok(store
            .with_signer(keys.root)
            .with_role(c.roles.role)
            .with_retention(c.registry.retention_years)
            .with_date_allowance(c.registry.date_allowance_days)
            .with_policy(self.policy()))
    }

    /// The issuer for the method a PostgreSQL registry was initialised with.
    pub fn postgres_issuer(&self, store: &PgStore) -> Result<Issuer, ContextError> {
        self.issuer_for(store.method()?)
    }

    fn configure(&self, store: Store) -> Store {
        let c = &self.config;
        store
            .with_retention(c.registry.retention_years)
            .with_date_allowance(c.registry.date_allowance_days)
            .with_policy(self.policy())
    }

    fn policy(&self) -> crate::store::AccessPolicy {
        let c = &self.config;
        crate::store::AccessPolicy {
            default: c.access.default_policy,
            visit_consent_days: c.access.visit_consent_days,
            grant_seconds: c.access.grant_seconds,
        }
    }

    pub fn keys(&self) -> Result<AgencyKeys, ContextError> {
        Ok(AgencyKeys::load(&self.config.keys_dir())?)
    }

    /// The issuer for the method the database was initialised with; the method is
    /// fixed for the life of a registry, so the configuration only matters at `init`.
    pub fn issuer(&self, store: &Store) -> Result<Issuer, ContextError> {
        self.issuer_for(store.method()?)
    }

    /// The issuer for `method`, with the agency's FF1 key when it needs one.
    pub fn issuer_for(&self, method: Method) -> Result<Issuer, ContextError> {
        if method != self.config.issuance.method {
            tracing::debug!(
                database = method.as_str(),
                configured = self.config.issuance.method.as_str(),
                "issuing by the database's method"
            );
        }
        Ok(match method {
            Method::Fpe => Issuer::fpe(
                &AgencyKeys::load(&self.config.keys_dir())?
                    .issuance
                    .ok_or(ContextError::NoIssuanceKey(self.config.keys_dir()))?,
            ),
            Method::Random => Issuer::Random,
        })
    }
}
