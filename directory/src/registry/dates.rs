//! The dates an operator or an institution may state: nothing after today (with an
//! allowance for clocks that run ahead), no death before birth, no retirement judged
//! ahead of time. Plain functions, no I/O.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Why a stated date is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DateError {
    #[error("{what} {date} is in the future (the latest accepted date is {latest})")]
    Future {
        what: String,
        date: NaiveDate,
        latest: NaiveDate,
    },
    #[error("{what} {date} is before the person's birth date {birth}")]
    BeforeBirth {
        what: String,
        date: NaiveDate,
        birth: NaiveDate,
    },
}

/// How far past today a stated date may lie: clocks of institutions and operators'
/// machines differ, and a day's allowance covers time zones and a clock set wrong
/// by hours, not a typed year.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateRules {
    pub today: NaiveDate,
    pub allowance_days: u32,
}

impl DateRules {
    pub fn latest(&self) -> NaiveDate {
        self.today
            .checked_add_days(chrono::Days::new(u64::from(self.allowance_days)))
            .unwrap_or(NaiveDate::MAX)
    }

    /// Refuses a date after today plus the allowance.
    pub fn not_future(&self, what: &str, date: NaiveDate) -> Result<(), DateError> {
        let latest = self.latest();
        if date > latest {
            return Err(DateError::Future {
                what: what.into(),
                date,
                latest,
            });
        }
        Ok(())
    }

    /// A date of death: not in the future, not before birth.
    pub fn death(&self, date: NaiveDate, birth: NaiveDate) -> Result<(), DateError> {
        self.not_future("date of death", date)?;
        if date < birth {
            return Err(DateError::BeforeBirth {
                what: "date of death".into(),
                date,
                birth,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn the_boundary_is_today_plus_the_allowance() {
        let r = DateRules {
            today: d("2026-12-05"),
            allowance_days: 1,
        };
        assert!(r.not_future("date", d("2026-12-06")).is_ok());
        assert!(matches!(
            r.not_future("date", d("2026-12-07")),
            Err(DateError::Future { .. })
        ));
        assert!(r.death(d("2026-12-01"), d("1980-01-01")).is_ok());
        assert!(matches!(
            r.death(d("1850-01-01"), d("1980-01-01")),
            Err(DateError::BeforeBirth { .. })
        ));
        assert!(r.death(d("1980-01-01"), d("1980-01-01")).is_ok());
        assert!(matches!(
            r.death(d("2999-01-01"), d("1980-01-01")),
            Err(DateError::Future { .. })
        ));
    }
}
