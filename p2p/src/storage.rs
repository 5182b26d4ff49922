//! The storage's failure, as the directory's and the nodes' redb databases meet it:
//! after an I/O error redb serves nothing until the database is opened again, so the
//! process notes the first such error and stops, for its supervisor to start it again.

use std::sync::OnceLock;

static FAILURE: OnceLock<String> = OnceLock::new();

/// Notes `e` if it is the storage failing (an I/O error, or redb refusing after one);
/// true the first time.
pub fn note(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Io(_) | redb::Error::PreviousIo | redb::Error::DatabaseClosed
    ) && FAILURE.set(e.to_string()).is_ok()
}

/// Why this process's database can no longer be used, if it cannot.
pub fn failure() -> Option<&'static str> {
    FAILURE.get().map(String::as_str)
}

/// Resolves once the storage has failed, with why.
pub async fn failed() -> String {
    loop {
        if let Some(why) = failure() {
            return why.to_string();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
