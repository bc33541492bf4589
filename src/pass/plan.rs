//! What a pass or a replay would do, for `--dry-run`: how many sends (and conversions
//! and rate windows) it would call for, and the time that takes at the configured
//! rate. Reads only: calls and writes nothing.

use super::PassSettings;
use crate::db::conversions;
use crate::db::rates;
use crate::db::sends::{self, Range};
use crate::db::{Db, DbError};
use chrono::{DateTime, Utc};
use std::fmt;
use std::time::Duration;

/// What a pass would do now.
#[derive(Debug, Clone)]
pub struct Due {
    /// `--app-id`: these apps only (all if empty).
    pub apps: Vec<String>,
    /// Sends due, by state and app.
    pub sends: Vec<sends::Due>,
    /// Conversions due, by kind and app; `None` with `--no-postbacks`.
    pub conversions: Option<Vec<conversions::Due>>,
    /// Rate windows to post; `None` with `--no-rates`.
    pub rate_windows: Option<i64>,
    pub pace: Pace,
}

/// What a replay of a range would do.
#[derive(Debug, Clone)]
pub struct Replay {
    /// Sends in the range, by state.
    pub by_state: Vec<(String, i64)>,
    pub pace: Pace,
}

/// What bounds the time of a pass's calls: its rate, or its concurrency.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub rate: Option<f64>,
    pub concurrency: usize,
}

impl Pace {
    pub fn of(settings: &PassSettings) -> Self {
        Self {
            rate: settings.rate,
            concurrency: settings.concurrency,
        }
    }

    /// How long `calls` requests take at the configured rate, or what bounds them.
    pub fn time(&self, calls: i64) -> String {
        let total = calls.max(0) as f64;
        let at_least = |secs: f64| {
            humantime::format_duration(
                Duration::try_from_secs_f64(secs.ceil()).unwrap_or(Duration::MAX),
            )
        };
        match self.rate {
            Some(rate) => format!(
                "at --rate {rate}/s that takes at least {}",
                at_least(total / rate)
            ),
            None => format!(
                "no --rate: the time is set by the provider's latency at --concurrency {} \
                 (about {} at 100 ms per request)",
                self.concurrency,
                at_least(total * 0.1 / self.concurrency as f64)
            ),
        }
    }
}

/// What is due now in the pass's scope, by state and app.
pub async fn due(db: &Db, settings: &PassSettings, now: DateTime<Utc>) -> Result<Due, DbError> {
    let scope = settings.scope();
    let sends = sends::due(db, now, &scope).await?;
    let conversions = if settings.postbacks {
        Some(conversions::due(db, now, &scope).await?)
    } else {
        None
    };
    let rate_windows = match &settings.rates {
        Some(rules) => Some(rates::preview(db, now, rules, &scope.apps).await?),
        None => None,
    };
    Ok(Due {
        apps: scope.apps,
        sends,
        conversions,
        rate_windows,
        pace: Pace::of(settings),
    })
}

/// The sends a replay of `range` would re-fetch, by state.
pub async fn replay(db: &Db, range: &Range, settings: &PassSettings) -> Result<Replay, DbError> {
    Ok(Replay {
        by_state: sends::count_range(db, range).await?,
        pace: Pace::of(settings),
    })
}

impl fmt::Display for Due {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.apps.is_empty() {
            writeln!(f, "apps: {} only", self.apps.join(", "))?;
        }
        let total: i64 = self.sends.iter().map(|d| d.count).sum();
        writeln!(f, "{:<10} {:<34} {:>10}  oldest due", "state", "app", "due")?;
        for d in &self.sends {
            writeln!(
                f,
                "{:<10} {:<34} {:>10}  {}",
                d.state,
                d.app_id,
                d.count,
                d.oldest_due.to_rfc3339()
            )?;
        }
        writeln!(
            f,
            "{total} sends due: {total} record fetches, plus retries on transient failures"
        )?;
        let mut calls = total;
        if let Some(due) = &self.conversions {
            let n: i64 = due.iter().map(|d| d.count).sum();
            for d in due {
                writeln!(
                    f,
                    "conversions {:<4} {:<34} {:>10}",
                    d.kind, d.app_id, d.count
                )?;
            }
            writeln!(f, "{n} conversions to post back")?;
            calls += n;
        }
        if let Some(n) = self.rate_windows {
            writeln!(f, "{n} conversion-rate windows to post")?;
            calls += n;
        }
        writeln!(f, "{calls} calls in all")?;
        writeln!(f, "{}", self.pace.time(calls))
    }
}

impl fmt::Display for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: i64 = self.by_state.iter().map(|(_, n)| n).sum();
        for (state, n) in &self.by_state {
            writeln!(f, "{state:<10} {n:>10}")?;
        }
        writeln!(
            f,
            "{total} sends in range: {total} record fetches, plus retries on transient failures"
        )?;
        writeln!(f, "{}", self.pace.time(total))
    }
}
