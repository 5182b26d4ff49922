//! `iryo-directory`: the agency's command line. Parsing and every command live in
//! `src/cli/`, one module per area; this file only starts logging, parses and runs.

#[path = "../cli/mod.rs"]
mod cli;

use clap::{CommandFactory, FromArgMatches};
use std::process::ExitCode;

fn main() -> ExitCode {
    iryo_p2p::logging::init("info");
    let matches = cli::Cli::command().get_matches();
    // Named in the database's holder note, so that a command refused with "in use"
    // can say which command holds it.
    let mut name = String::from("iryo-directory");
    let mut m = &matches;
    while let Some((sub, next)) = m.subcommand() {
        name.push(' ');
        name.push_str(sub);
        m = next;
    }
    iryo_directory::store::describe_holder(&name);
    let parsed = match cli::Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match cli::run(parsed) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
