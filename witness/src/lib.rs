//! A transparency-log witness for the audit log (c2sp.org/tlog-witness): it cosigns a
//! log's checkpoint only after checking a consistency proof from the last checkpoint
//! it cosigned, so two witnesses that never agreed to lie make a split view of the log
//! impossible to hide. Any witness speaking the same protocol can serve the log.

pub mod config;
pub mod http;
pub mod state;
