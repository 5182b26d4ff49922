//! `migrate`: prepares a PostgreSQL database for the directory, or brings its schema
//! up to this binary's version.

use anyhow::Result;
use clap::Args;
use iryo_directory::postgres::{migrate, DatabaseUrl};
use std::process::ExitCode;

#[derive(Args)]
pub(super) struct MigrateArgs {
    /// The PostgreSQL database, as a libpq URL: postgresql://USER@HOST/DATABASE, or
    /// postgresql://USER@/DATABASE?host=/socket/dir for a unix socket. A password is
    /// better given in ~/.pgpass or PGPASSWORD than here; it is never printed.
    #[arg(long, value_name = "URL")]
    database: String,
}

pub(super) fn run(a: &MigrateArgs) -> Result<ExitCode> {
    let url = DatabaseUrl::parse(&a.database)?;
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
