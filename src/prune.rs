//! Retention: `prune --before DATE` removes the history older than DATE (by a send's
//! sent_at, a conversion's converted_at, a rate window's end) in small transactions, so
//! a pass running beside it is never held up for long.
//!
//! Only what is final goes:
//! - a send that is settled, expired or rejected, not under a lease, whose rate window
//!   is computed and posted (no mark in `rate_dirty` for its hour, no pending window
//!   holding it) and whose OTP conversion, if any, is not waiting to be posted back;
//!   with it go its record, attempts and record revisions, and its OTP conversion;
//! - a conversion acknowledged or refused (`sent`, `rejected`): a pending one, in doubt
//!   or not, stays, and so does an OTP conversion whose send stays;
//! - a rate window posted or refused, not under a lease.
//!
//! Everything else older than DATE is kept, and the report says how much and why.
//! Each batch is one statement (its own transaction) that locks its sends with
//! `FOR UPDATE SKIP LOCKED`: rows a pass holds are skipped, never waited for.
//!
//! This module orchestrates (the batches, the totals, the report); each table's SQL is
//! in its own module: [`sends::prune`], [`conversions`], [`rates`].

use crate::db::{Db, conversions, rates, sends};
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// What to prune.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub before: DateTime<Utc>,
    /// Sends (and conversions, and windows) per transaction.
    pub batch: i64,
    /// Count what would go and what would stay; delete nothing.
    pub dry_run: bool,
}

/// Rows removed (or, in a dry run, that would be), per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub sends: u64,
    pub records: u64,
    pub attempts: u64,
    pub record_revisions: u64,
    pub conversions: u64,
    pub conversion_rates: u64,
}

/// What is older than `before` and stays, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// Sends still pending or recheck.
    pub sends_not_final: i64,
    /// Final sends under a lease (a replay holds them).
    pub sends_leased: i64,
    /// Final sends whose rate window is not computed and posted yet.
    pub sends_window_not_posted: i64,
    /// Final sends whose OTP conversion is not posted back yet.
    pub sends_conversion_pending: i64,
    /// Final sends locked by a pass while prune ran (the next prune takes them).
    pub sends_busy: i64,
    /// Conversions not acknowledged yet (pending), of which `conversions_in_doubt` may
    /// have reached the provider already.
    pub conversions_pending: i64,
    pub conversions_in_doubt: i64,
    /// Acknowledged OTP conversions whose send stays.
    pub conversions_send_kept: i64,
    /// Rate windows not posted yet (pending) or under a lease.
    pub conversion_rates_not_posted: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub before: DateTime<Utc>,
    pub dry_run: bool,
    pub removed: Removed,
    pub kept: Kept,
    /// Transactions (batches) that removed something.
    pub batches: u64,
    pub elapsed_secs: f64,
    /// Sends removed per second of the batches of sends (children included).
    pub sends_per_sec: f64,
}

/// Runs the plan with [`default_jobs`] workers: see [`run_with`].
pub async fn run(db: &Db, plan: &Plan) -> Result<Report, sqlx::Error> {
    run_with(db, plan, default_jobs(db)).await
}

/// Workers for the batches of sends when none is asked for: one per core the machine
/// has, at most one per connection of the pool.
pub fn default_jobs(db: &Db) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    jobs_for(db, cores)
}

/// `jobs` workers, at least one and at most one per connection of the pool.
fn jobs_for(db: &Db, jobs: usize) -> usize {
    let connections = usize::try_from(db.pool().options().get_max_connections()).unwrap_or(1);
    jobs.clamp(1, connections.max(1))
}

/// Runs the plan: batches of sends (with their children), by `jobs` workers at once (at
/// most one per connection of the pool), then conversions, then rate windows; then
/// counts what stayed. In a dry run, only counts.
///
/// The workers share the sends older than `before` as disjoint stripes of sent_at (see
/// [`stripes`]), each taking the next stripe when done with its own, each batch its
/// own statement and transaction: a send is in one stripe, so one worker removes it.
pub async fn run_with(db: &Db, plan: &Plan, jobs: usize) -> Result<Report, sqlx::Error> {
    let started = Instant::now();
    let mut removed = Removed::default();
    let mut batches = 0;
    let mut sends_secs = 0.0;
    if plan.dry_run {
        removed = would_remove(db, plan).await?;
    } else {
        if let Some((first, last)) = sends::prune::sent_range(db, plan.before).await? {
            let jobs = jobs_for(db, jobs);
            let stripes = stripes(first, last, plan.before, jobs);
            let next = AtomicUsize::new(0);
            let done = futures::future::try_join_all(
                (0..jobs).map(|_| remove_stripes(db, plan, &stripes, &next)),
            )
            .await?;
            for (worker_removed, worker_batches) in done {
                add(&mut removed, &worker_removed);
                batches += worker_batches;
            }
        }
        sends_secs = started.elapsed().as_secs_f64();
        loop {
            let n = conversions::remove_old(db, plan.before, plan.batch).await?;
            if n == 0 {
                break;
            }
            batches += 1;
            removed.conversions += n;
        }
        loop {
            let n = rates::remove_old(db, plan.before, plan.batch).await?;
            if n == 0 {
                break;
            }
            batches += 1;
            removed.conversion_rates += n;
        }
    }
    let kept = kept(db, plan).await?;
    let elapsed_secs = started.elapsed().as_secs_f64();
    Ok(Report {
        before: plan.before,
        dry_run: plan.dry_run,
        removed,
        kept,
        batches,
        elapsed_secs,
        sends_per_sec: if sends_secs > 0.0 {
            removed.sends as f64 / sends_secs
        } else {
            0.0
        },
    })
}

/// Stripes per worker: a worker that finishes early takes another stripe, so uneven
/// stripes (history is not spread evenly over time) even out.
const STRIPES_PER_JOB: usize = 4;

/// The ranges of sent_at the workers take one at a time, oldest first: the sends older
/// than `before`, whose first and last sent_at are `first` and `last`, cut into equal
/// spans of time; disjoint, and together all of `first..before`. One worker: one stripe.
fn stripes(
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    before: DateTime<Utc>,
    jobs: usize,
) -> Vec<Range<DateTime<Utc>>> {
    let count = if jobs <= 1 { 1 } else { jobs * STRIPES_PER_JOB };
    // In microseconds, PostgreSQL's resolution, so no send falls between two stripes.
    let span = (last - first).num_microseconds().unwrap_or(i64::MAX).max(0) + 1;
    let step = (span / i64::try_from(count).unwrap_or(1)).max(1);
    let mut out = Vec::with_capacity(count);
    let mut start = first;
    for _ in 1..count {
        let end = start + TimeDelta::microseconds(step);
        if end > last {
            break;
        }
        out.push(start..end);
        start = end;
    }
    out.push(start..before);
    out
}

/// One worker: the next stripe not taken yet, batch after batch from its start to its
/// end, until no stripe is left. Answers what it removed and its batches.
async fn remove_stripes(
    db: &Db,
    plan: &Plan,
    stripes: &[Range<DateTime<Utc>>],
    next: &AtomicUsize,
) -> Result<(Removed, u64), sqlx::Error> {
    let mut removed = Removed::default();
    let mut batches = 0;
    while let Some(stripe) = stripes.get(next.fetch_add(1, Ordering::Relaxed)) {
        let mut cursor = stripe.start;
        loop {
            let (batch, last) =
                sends::prune::remove_batch(db, plan.before, cursor..stripe.end, plan.batch).await?;
            if batch.sends > 0 {
                batches += 1;
                add(&mut removed, &removed_by(&batch));
                tracing::debug!(sends = removed.sends, "pruning");
            }
            // Fewer than a batch: nothing removable is left in the stripe but what a
            // pass holds (SKIP LOCKED passes it by, and the next prune takes it).
            if batch.sends < u64::try_from(plan.batch).unwrap_or(0) {
                break;
            }
            cursor = last.unwrap_or(cursor);
        }
    }
    Ok((removed, batches))
}

/// Before any send (the dry run's range starts there).
fn earliest() -> DateTime<Utc> {
    DateTime::from_timestamp(-2_208_988_800, 0).unwrap_or_default() // 1900-01-01
}

fn add(total: &mut Removed, batch: &Removed) {
    total.sends += batch.sends;
    total.records += batch.records;
    total.attempts += batch.attempts;
    total.record_revisions += batch.record_revisions;
    total.conversions += batch.conversions;
    total.conversion_rates += batch.conversion_rates;
}

/// A batch of sends, as the totals count it.
fn removed_by(batch: &sends::prune::Batch) -> Removed {
    Removed {
        sends: batch.sends,
        records: batch.records,
        attempts: batch.attempts,
        record_revisions: batch.record_revisions,
        conversions: batch.conversions,
        conversion_rates: 0,
    }
}

/// For `--dry-run`: what would go, per table (the same conditions as the batches).
async fn would_remove(db: &Db, plan: &Plan) -> Result<Removed, sqlx::Error> {
    let batch = sends::prune::count_removable(db, plan.before, earliest()..plan.before).await?;
    // Conversions without a send that goes or stays: those whose send is gone already.
    let orphans = conversions::count_removable(db, plan.before).await?;
    let rates = rates::count_removable(db, plan.before).await?;
    Ok(Removed {
        conversions: batch.conversions + u64::try_from(orphans).unwrap_or(0),
        conversion_rates: u64::try_from(rates).unwrap_or(0),
        ..removed_by(&batch)
    })
}

/// What is older than `before` and stays (in a dry run: stays besides what would go),
/// by reason, first reason first.
async fn kept(db: &Db, plan: &Plan) -> Result<Kept, sqlx::Error> {
    let sends = sends::prune::kept_old(db, plan.before).await?;
    let conversions = conversions::kept_old(db, plan.before).await?;
    let rates = rates::kept_old(db, plan.before).await?;
    Ok(Kept {
        sends_not_final: sends.not_final,
        sends_leased: sends.leased,
        sends_window_not_posted: sends.window_not_posted,
        sends_conversion_pending: sends.conversion_pending,
        // In a dry run, what would go is not kept.
        sends_busy: if plan.dry_run { 0 } else { sends.busy },
        conversions_pending: conversions.pending,
        conversions_in_doubt: conversions.in_doubt,
        conversions_send_kept: if plan.dry_run {
            0
        } else {
            conversions.send_kept
        },
        conversion_rates_not_posted: rates,
    })
}

impl Report {
    /// For a terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let r = &self.removed;
        let _ = writeln!(out, "prune before {}: {verb}", self.before.to_rfc3339());
        for (table, n) in [
            ("sends", r.sends),
            ("records", r.records),
            ("attempts", r.attempts),
            ("record_revisions", r.record_revisions),
            ("conversions", r.conversions),
            ("conversion_rates", r.conversion_rates),
        ] {
            let _ = writeln!(out, "  {table:<18} {n:>12}");
        }
        let k = &self.kept;
        let _ = writeln!(
            out,
            "kept (older than --before, not final or not done yet):"
        );
        for (n, why) in [
            (k.sends_not_final, "sends not final (pending or recheck)"),
            (k.sends_leased, "sends under a lease (a replay holds them)"),
            (
                k.sends_window_not_posted,
                "sends whose conversion-rate window is not posted yet",
            ),
            (
                k.sends_conversion_pending,
                "sends whose OTP conversion is not posted back yet",
            ),
            (
                k.sends_busy,
                "sends locked by a pass meanwhile (next prune)",
            ),
            (
                k.conversions_pending,
                "conversions not acknowledged yet (pending)",
            ),
            (
                k.conversions_in_doubt,
                "  of them in doubt (may have reached the provider)",
            ),
            (
                k.conversions_send_kept,
                "OTP conversions whose send is kept",
            ),
            (
                k.conversion_rates_not_posted,
                "conversion-rate windows not posted yet",
            ),
        ] {
            let _ = writeln!(out, "  {n:>12} {why}");
        }
        if !self.dry_run {
            let _ = writeln!(
                out,
                "{} sends at {:.0} sends/s; {:.1} s in all, {} transactions",
                r.sends, self.sends_per_sec, self.elapsed_secs, self.batches
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    /// Disjoint, in order, end to end from `first` to `before`, `last` inside.
    fn check(
        stripes: &[Range<DateTime<Utc>>],
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        before: DateTime<Utc>,
    ) {
        assert_eq!(stripes.first().unwrap().start, first);
        assert_eq!(stripes.last().unwrap().end, before);
        for pair in stripes.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert!(stripes.iter().all(|s| s.start < s.end));
        assert_eq!(stripes.iter().filter(|s| s.contains(&last)).count(), 1);
    }

    #[test]
    fn stripes_cover_the_range_once() {
        let first = at("2026-11-01T00:00:00.000001Z");
        let last = at("2026-11-01T23:59:59.999999Z");
        let before = at("2026-11-02T00:00:00Z");
        for jobs in [1, 2, 3, 7] {
            let stripes = stripes(first, last, before, jobs);
            let expected = if jobs == 1 { 1 } else { jobs * STRIPES_PER_JOB };
            assert_eq!(stripes.len(), expected);
            check(&stripes, first, last, before);
        }
        // Equal spans but the last (which runs on to `before`).
        let four = stripes(first, last, before, 2);
        let span = four[0].end - four[0].start;
        assert!(
            four[..four.len() - 1]
                .iter()
                .all(|s| s.end - s.start == span)
        );
    }

    #[test]
    fn stripes_of_a_single_instant_or_a_few_microseconds() {
        let first = at("2026-11-01T12:00:00Z");
        let before = at("2026-11-02T00:00:00Z");
        let one = stripes(first, first, before, 4);
        assert_eq!(one, vec![first..before]);
        let last = first + TimeDelta::microseconds(2);
        let few = stripes(first, last, before, 4);
        assert_eq!(few.len(), 3);
        check(&few, first, last, before);
    }
}
