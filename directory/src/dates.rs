//! Dates and times as people read them: Japanese style with the era (令和8年12月5日
//! 14:30) for Japanese pages and letters, English style for English pages; times in the
//! directory's local time zone, which is stated.

use chrono::{DateTime, Datelike, FixedOffset, Local, NaiveDate, Offset, Timelike};
use iryo_proto::federation::Time;

/// The eras of the modern calendar: name and first day.
const ERAS: [(&str, (i32, u32, u32)); 5] = [
    ("令和", (2019, 5, 1)),
    ("平成", (1989, 1, 8)),
    ("昭和", (1926, 12, 25)),
    ("大正", (1912, 7, 30)),
    ("明治", (1868, 1, 25)),
];

/// `令和8年12月5日`; the first year of an era is 元年. Before the Meiji era, the
/// Western year.
pub fn ja_date(d: NaiveDate) -> String {
    for (name, (y, m, day)) in ERAS {
        let Some(start) = NaiveDate::from_ymd_opt(y, m, day) else {
            continue;
        };
        if d >= start {
            let year = d.year() - y + 1;
            let year = if year == 1 {
                "元".to_string()
            } else {
                year.to_string()
            };
            return format!("{name}{year}年{}月{}日", d.month(), d.day());
        }
    }
    format!("{}年{}月{}日", d.year(), d.month(), d.day())
}

/// `5 Dec 2026`.
pub fn en_date(d: NaiveDate) -> String {
    d.format("%-d %b %Y").to_string()
}

/// The moment in the directory's time zone.
fn local(t: Time) -> Option<DateTime<FixedOffset>> {
    DateTime::from_timestamp(t, 0).map(|d| {
        let offset = d.with_timezone(&Local).offset().fix();
        d.with_timezone(&offset)
    })
}

/// The time zone as a person reads it: 日本時間 / JST for +09:00, else the offset.
fn zone(offset: FixedOffset, japanese: bool) -> String {
    let secs = offset.local_minus_utc();
    if secs == 9 * 3600 {
        return if japanese { "日本時間" } else { "JST" }.to_string();
    }
    let sign = if secs < 0 { '-' } else { '+' };
    let secs = secs.abs();
    format!("UTC{sign}{:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

/// `令和8年12月5日 14:30（日本時間）`.
pub fn ja_time(t: Time) -> String {
    local(t).map_or_else(String::new, |d| {
        format!(
            "{} {}:{:02}（{}）",
            ja_date(d.date_naive()),
            d.hour(),
            d.minute(),
            zone(*d.offset(), true)
        )
    })
}

/// `5 Dec 2026, 14:30 JST`.
pub fn en_time(t: Time) -> String {
    local(t).map_or_else(String::new, |d| {
        format!(
            "{}, {:02}:{:02} {}",
            en_date(d.date_naive()),
            d.hour(),
            d.minute(),
            zone(*d.offset(), false)
        )
    })
}

/// The day a moment falls on, in the directory's time zone.
pub fn local_day(t: Time) -> Option<NaiveDate> {
    local(t).map(|d| d.date_naive())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn eras_turn_on_their_first_day() {
        assert_eq!(ja_date(day(2026, 12, 5)), "令和8年12月5日");
        assert_eq!(ja_date(day(2019, 5, 1)), "令和元年5月1日");
        assert_eq!(ja_date(day(2019, 4, 30)), "平成31年4月30日");
        assert_eq!(ja_date(day(1989, 1, 8)), "平成元年1月8日");
        assert_eq!(ja_date(day(1989, 1, 7)), "昭和64年1月7日");
        assert_eq!(ja_date(day(1926, 12, 25)), "昭和元年12月25日");
        assert_eq!(ja_date(day(1926, 12, 24)), "大正15年12月24日");
        assert_eq!(ja_date(day(1912, 7, 30)), "大正元年7月30日");
        assert_eq!(ja_date(day(1900, 1, 1)), "明治33年1月1日");
        assert_eq!(ja_date(day(1850, 1, 1)), "1850年1月1日");
        assert_eq!(en_date(day(2026, 12, 5)), "5 Dec 2026");
    }

    #[test]
    fn times_state_their_zone() {
        let t = 1_796_000_000;
        assert!(ja_time(t).ends_with('）'), "{}", ja_time(t));
        assert!(ja_time(t).starts_with("令和"), "{}", ja_time(t));
        let en = en_time(t);
        assert!(en.ends_with("JST") || en.contains("UTC"), "{en}");
        assert_eq!(
            zone(FixedOffset::east_opt(9 * 3600).unwrap(), true),
            "日本時間"
        );
        assert_eq!(
            zone(FixedOffset::west_opt(5 * 3600 + 1800).unwrap(), false),
            "UTC-05:30"
        );
    }
}
