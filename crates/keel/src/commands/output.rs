//! How the admin commands (`group`, `txn`) print: aligned tables, partition
//! lists, durations and timestamps.

use std::collections::BTreeMap;

/// `-` for an empty cell.
pub fn or_dash(s: String) -> String {
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}

/// Left-aligned columns two spaces apart, one line per row, without
/// trailing spaces.
pub fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(headers).chain(rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `topic-partition,partition,...` per topic, as a compact assignment.
pub fn partition_list(partitions: &BTreeMap<String, Vec<i32>>) -> String {
    partitions
        .iter()
        .map(|(topic, ps)| {
            let ps: Vec<String> = ps.iter().map(|p| p.to_string()).collect();
            format!("{topic}-{}", ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Milliseconds as the two largest units: `2d 03h`, `1h 05m`, `4m 09s`, `12s`.
pub fn duration(ms: i64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d {h:02}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Milliseconds since the Unix epoch as an ISO 8601 UTC time:
/// `2026-11-22T10:00:00.000Z`.
pub fn timestamp(ms: i64) -> String {
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let s = ms_of_day / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        ms_of_day % 1000
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_trim() {
        let rows = vec![
            vec!["a".to_string(), "1".to_string(), "x".to_string()],
            vec!["long-name".to_string(), "22".to_string(), String::new()],
        ];
        assert_eq!(
            table(&["NAME", "N", "LAST"], rows),
            "NAME       N   LAST\na          1   x\nlong-name  22\n"
        );
    }

    #[test]
    fn partition_lists_group_by_topic() {
        let mut ps = BTreeMap::new();
        ps.insert("b".to_string(), vec![0, 2]);
        ps.insert("a".to_string(), vec![1]);
        assert_eq!(partition_list(&ps), "a-1 b-0,2");
        assert_eq!(partition_list(&BTreeMap::new()), "");
    }

    #[test]
    fn durations_show_two_units() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(12_345), "12s");
        assert_eq!(duration(249_000), "4m 09s");
        assert_eq!(duration(3_900_000), "1h 05m");
        assert_eq!(duration(3 * 86_400_000 + 3 * 3_600_000 + 59_000), "3d 03h");
    }

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_341_600_250), "2026-11-22T10:00:00.250Z");
        assert_eq!(timestamp(951_868_799_900), "2000-02-29T23:59:59.900Z");
        assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(timestamp(1_709_251_200_000), "2024-03-01T00:00:00.000Z");
    }
}
