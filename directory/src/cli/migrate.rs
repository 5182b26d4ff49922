//! `migrate`: prepares a PostgreSQL database for the directory, or brings its schema
//! up to this binary's version.

use anyhow::{bail, Result};
use iryo_directory::config::Config;
use iryo_directory::postgres::{migrate, DatabaseUrl};
use std::process::ExitCode;

pub(super) fn run(config: &Config) -> Result<ExitCode> {
    let Some(text) = &config.storage.url else {
        bail!("give the database: --database URL, IRYO_DATABASE or [storage] url");
    };
    let url = DatabaseUrl::parse(text)?.configured(&config.storage)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let applied = rt.block_on(async {
        let mut client = url.connect().await?;
        migrate::migrate(&mut client).await
    })?;
    if applied.from == applied.to {
        println!("{url}: schema version {} — up to date", applied.to);
    } else {
        println!(
            "{url}: schema version {} → {} ({} migration(s) applied)",
            applied.from,
            applied.to,
            applied.to - applied.from
        );
    }
    Ok(ExitCode::SUCCESS)
}
