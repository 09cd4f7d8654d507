//! Where and when a run happened: the metadata written with the rows.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// A run's circumstances.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// `git rev-parse HEAD` of the working directory, or `"unknown"`.
    pub git_rev: String,
    /// When the run started, UTC, ISO-8601 (`2025-01-31T12:34:56Z`).
    pub date: String,
    /// The CPU's model name from `/proc/cpuinfo` (`"unknown"` elsewhere).
    pub cpu: String,
    /// Logical CPUs available.
    pub cpus: usize,
    /// `/proc/loadavg` when the run started.
    pub load_start: String,
    /// `/proc/loadavg` when it ended.
    pub load_end: String,
    /// A `--quick` run.
    pub quick: bool,
    /// Sets per comparison (each gives one ratio).
    pub sets: usize,
    /// Repetitions of every chunk within a set (the minimum is kept).
    pub reps: usize,
}

impl Meta {
    /// The circumstances now; `load_end` is filled in by [`finish`](Self::finish).
    pub fn start(quick: bool, sets: usize, reps: usize) -> Meta {
        Meta {
            git_rev: git_rev(),
            date: iso8601_utc(SystemTime::now()),
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_start: load_average(),
            load_end: String::new(),
            quick,
            sets,
            reps,
        }
    }

    /// Records the load average at the end of the run.
    pub fn finish(&mut self) {
        self.load_end = load_average();
    }
}

fn git_rev() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".to_string())
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// `t` as `YYYY-MM-DDThh:mm:ssZ` (times before 1970 print as 1970).
pub fn iso8601_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Year, month, day of the day `z` days after 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_iso8601_utc() {
        let at = |s| iso8601_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(at(1_735_689_599), "2024-12-31T23:59:59Z");
    }

    #[test]
    fn the_metadata_is_filled_in() {
        let mut m = Meta::start(true, 3, 2);
        m.finish();
        assert!(!m.git_rev.is_empty() && !m.cpu.is_empty() && !m.load_end.is_empty());
        assert!(m.date.ends_with('Z') && m.date.len() == 20, "{}", m.date);
    }
}
