//! The agency's directory: issues one medical ID per insured person and keeps the
//! registry, the linkage DB and eligibility answers (seed sections 2, 3 and 4-1).

pub mod access;
pub mod admin;
pub mod audit;
pub mod ca;
pub mod config;
pub mod context;
pub mod dates;
pub mod enrollment;
/// Files of personal data and secrets: 0600, in 0700 directories.
pub use iryo_p2p::files;
pub mod issuance;
pub mod keys;
pub mod letters;
pub mod log_check;
pub mod measure;
pub mod members;
pub mod metrics;
pub mod postgres;
pub mod registry;
pub mod report;
pub mod sample;
pub mod service;
pub mod signatures;
pub mod store;
mod sys;
pub mod tell;
pub mod web;
pub mod witnesses;
