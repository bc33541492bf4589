//! The sends a pass claims under a lease: the due ones, and for a replay those of a
//! range or of a list of ids, whatever their state.

use super::{Range, SendState, send_due, sent_in};
use crate::db::lease::{self, Claim, Table, leased_by_table};
use crate::db::{Db, in_apps};
use chrono::{DateTime, Utc};
use sqlx::FromRow;
use std::sync::Mutex;
use uuid::Uuid;

/// A send claimed by a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub app_id: String,
    pub verification_id: Option<String>,
    pub order_id: Option<String>,
    pub number: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub state: SendState,
    /// Checks made before this one.
    pub attempts: i32,
    pub lease: Uuid,
    /// When it was due before it was claimed: a release gives that back.
    pub due_at: DateTime<Utc>,
}

impl Claimed {
    /// Checked for the first time: no check counted, still pending. No pass has
    /// completed it, and records and attempts are written only in the transaction of a
    /// completion that takes a send off pending, so it has neither.
    pub fn first_check(&self) -> bool {
        self.attempts == 0 && self.state == SendState::Pending
    }
}

/// The columns a claim of sends returns, read by position ([`claimed_rows`]).
macro_rules! claimed_columns {
    () => {
        "t.id, t.app_id, t.verification_id, t.order_id, t.number, t.sent_at, t.state, t.attempts, t.next_check_at AS due_at"
    };
}

/// The sends a pass claims when they are due, their leases in `send_leases`. A claim
/// leaves the send as it was: a send given back unchecked (or whose lease ran out) is
/// due when it was due before (`due_at`, its `next_check_at`), no check counted,
/// nothing pushed back, so a pass stopped by an outage leaves its sends as they were.
/// It takes them in (next_check_at, id) order after a position (see [`DueClaims`]):
/// $9 now; $10, $11 the position (NULL, 0: from the start).
pub static DUE: Table = leased_by_table! {
    table: "sends",
    leases: "send_leases",
    key: "send_id",
    due: concat!(
        send_due!("t", "$9"),
        " AND (t.next_check_at, t.id) > (coalesce($10::timestamptz, '-infinity'), $11::bigint)"
    ),
    order: "t.next_check_at, t.id",
    shard_key: "coalesce(verification_id, app_id || ':' || order_id)",
    returning: claimed_columns!(),
};

/// A table of sends a replay claims, whatever their state, in id order, by `$due`.
macro_rules! replay_table {
    ($due:expr) => {
        leased_by_table! {
            table: "sends",
            leases: "send_leases",
            key: "send_id",
            due: $due,
            order: "t.id",
            shard_key: "coalesce(verification_id, app_id || ':' || order_id)",
            returning: claimed_columns!(),
        }
    };
}

/// The sends a replay sweeps: in a range, above the highest id claimed so far.
/// $9, $10: the range of sent_at; $11: that id.
pub static IN_RANGE: Table = replay_table!(concat!(sent_in!("t", "$9", "$10"), " AND t.id > $11"));

/// The sends a replay comes back to, by id, once the pass that held them let go.
/// $9: the ids.
pub static BY_ID: Table = replay_table!("t.id = ANY($9::bigint[])");

/// Claims up to `c.limit` sends due at `now`, from the start of the due order, committed
/// at once.
pub async fn claim(
    db: &Db,
    now: DateTime<Utc>,
    c: &Claim<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    claim_after(db, now, None, c).await
}

/// A pass's claims of due sends, each from where the one before stopped in the due
/// order (a keyset), not from the start.
///
/// From the start a claim walks over every send still leased (by this pass or any
/// other) before it reaches a free one, each checked against `send_leases`: with a few
/// thousand sends in flight or waiting to be written, that walk was most of a claim's
/// time. From where the last one stopped it walks only the sends leased by others
/// since, and what it skips locked.
///
/// What comes due behind the keyset (a dead pass's lease that ran out, a send recorded
/// late, one given back) is not lost: when fewer than the limit are left after it, the
/// same call claims the rest from the start, so a pass drains only when nothing is due
/// anywhere.
#[derive(Debug, Default)]
pub struct DueClaims {
    from: Mutex<Option<Position>>,
}

/// A place in the due order, (next_check_at, id): the index `sends_due` has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    due_at: DateTime<Utc>,
    id: i64,
}

impl Position {
    /// The last of `claimed` in the due order: where the claim that took them stopped.
    fn after(claimed: &[Claimed]) -> Option<Position> {
        claimed
            .iter()
            .map(|c| Position {
                due_at: c.due_at,
                id: c.id,
            })
            .max()
    }
}

impl DueClaims {
    /// Up to `c.limit` sends due at `now`, from where the last claim stopped; fewer
    /// than that left after it, the rest from the start.
    pub async fn claim(
        &self,
        db: &Db,
        now: DateTime<Utc>,
        c: &Claim<'_>,
    ) -> Result<Vec<Claimed>, sqlx::Error> {
        let from = *self.from();
        let mut claimed = claim_after(db, now, from, c).await?;
        let mut last = Position::after(&claimed);
        if claimed.len() < c.limit && from.is_some() {
            let rest = Claim {
                limit: c.limit - claimed.len(),
                ..*c
            };
            let behind = claim_after(db, now, None, &rest).await?;
            last = Position::after(&behind);
            claimed.extend(behind);
        }
        *self.from() = last;
        Ok(claimed)
    }

    fn from(&self) -> std::sync::MutexGuard<'_, Option<Position>> {
        self.from.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Claims up to `c.limit` sends due at `now` after `after` in the due order (`None`:
/// from the start), committed at once.
async fn claim_after(
    db: &Db,
    now: DateTime<Utc>,
    after: Option<Position>,
    c: &Claim<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (token, rows) = lease::claim(db, &DUE, c, |q| {
        q.bind(now)
            .bind(after.map(|p| p.due_at))
            .bind(after.map_or(0, |p| p.id))
    })
    .await?;
    claimed_rows(&rows, token)
}

/// A claimed row's columns, in the order of [`claimed_columns`].
type ClaimedColumns = (
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    String,
    i32,
    DateTime<Utc>,
);

/// The claimed rows, read by position ([`claimed_columns`] names them in this order; the
/// claim's `leased` after them is left unread): by name,
/// each column of each row was a hashed lookup, 4% of the job's instructions per send.
fn claimed_rows(rows: &[sqlx::postgres::PgRow], token: Uuid) -> Result<Vec<Claimed>, sqlx::Error> {
    rows.iter()
        .map(|row| {
            let (id, app_id, verification_id, order_id, number, sent_at, state, attempts, due_at) =
                ClaimedColumns::from_row(row)?;
            Ok(Claimed {
                id,
                app_id,
                verification_id,
                order_id,
                number,
                sent_at,
                state: SendState::parse(&state).unwrap_or(SendState::Recheck),
                attempts,
                lease: token,
                due_at,
            })
        })
        .collect()
}

/// Claims, for a replay, up to `c.limit` sends in `range` with an id above `after`,
/// whatever their state, skipping those another pass holds (`c.scope` carries the
/// range's apps).
pub async fn claim_range(
    db: &Db,
    range: &Range,
    after: i64,
    c: &Claim<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (from, to) = (range.from, range.to);
    let (token, rows) =
        lease::claim(db, &IN_RANGE, c, |q| q.bind(from).bind(to).bind(after)).await?;
    claimed_rows(&rows, token)
}

/// The ids in `range` above `after` (and up to `until`, if given), in id order: what a
/// replay's sweep passed over because another pass held them.
pub async fn ids_in_range(
    db: &Db,
    range: &Range,
    after: i64,
    until: Option<i64>,
) -> Result<Vec<i64>, sqlx::Error> {
    db.counted(1);
    sqlx::query_scalar(concat!(
        "SELECT id FROM sends
         WHERE ",
        sent_in!("sends", "$1", "$2"),
        "
           AND ",
        in_apps!("app_id", "$3"),
        "
           AND id > $4 AND ($5::bigint IS NULL OR id <= $5)
         ORDER BY id",
    ))
    .bind(range.from)
    .bind(range.to)
    .bind(&range.app_ids)
    .bind(after)
    .bind(until)
    .fetch_all(db.pool())
    .await
}

/// Claims, for a replay, those of `ids` no other pass holds now, whatever their state,
/// leaving `next_check_at` alone like [`claim_range`].
pub async fn claim_ids(db: &Db, ids: &[i64], c: &Claim<'_>) -> Result<Vec<Claimed>, sqlx::Error> {
    let (token, rows) = lease::claim(db, &BY_ID, c, |q| q.bind(ids.to_vec())).await?;
    claimed_rows(&rows, token)
}

impl lease::Leased for Claimed {
    fn id(&self) -> i64 {
        self.id
    }
    fn lease(&self) -> Uuid {
        self.lease
    }
    fn due_at(&self) -> Option<DateTime<Utc>> {
        Some(self.due_at)
    }
}
