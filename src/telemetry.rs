//! Logging through `tracing`: human-readable on a terminal, JSON lines otherwise;
//! `RUST_LOG` filters (default `info`). Logs go to stderr; stdout is for output.
//!
//! Two kinds of database events are made readable here:
//! - sqlx's statement events (a statement slower than [`crate::db::SLOW_STATEMENT`]
//!   at WARN, every statement at DEBUG) carry the whole multi-line SQL. They are written
//!   on one line with the statement's name ([`statement_name`]), its time and its row
//!   counts, never its text.
//! - PostgreSQL NOTICEs (`relation "_sqlx_migrations" already exists, skipping` on every
//!   migration run) are hidden unless `RUST_LOG` names `sqlx::postgres::notice`;
//!   WARNINGs and errors from the server still show.

use clap::ValueEnum;
use std::fmt::Write as _;
use std::io::IsTerminal;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    #[default]
    Auto,
    Pretty,
    Json,
}

static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// True when logs are JSON lines (a container): reports then go out as log events, not
/// as free text between the lines.
pub fn is_json() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// sqlx's target for statement events.
const SQLX_QUERY: &str = "sqlx::query";
/// sqlx's target for the server's NOTICE, WARNING... messages.
const PG_NOTICE: &str = "sqlx::postgres::notice";

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Pretty => false,
        LogFormat::Json => true,
    };
    let _ = JSON.set(json);
    // Also routes the `log` records of the HTTP stack into it.
    let _ = subscriber(
        json,
        std::env::var("RUST_LOG").ok().as_deref(),
        std::io::stderr,
    )
    .try_init();
}

/// The filter: `rust_log` (default `info`), with PostgreSQL NOTICEs (INFO level in
/// sqlx) hidden unless it names their target.
pub fn filter(rust_log: Option<&str>) -> EnvFilter {
    let spec = rust_log.filter(|s| !s.trim().is_empty()).unwrap_or("info");
    let filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    if spec.contains(PG_NOTICE) {
        filter
    } else {
        filter.add_directive(
            format!("{PG_NOTICE}=warn")
                .parse()
                .expect("a valid directive"),
        )
    }
}

/// The subscriber `init` installs, writing to `writer` (tests capture it).
pub fn subscriber<W>(
    json: bool,
    rust_log: Option<&str>,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log))
        .with_writer(writer);
    if json {
        Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .map_event_format(|inner| OneLineStatements { inner, json: true })
                .finish(),
        )
    } else {
        Box::new(
            builder
                .with_target(false)
                .map_event_format(|inner| OneLineStatements { inner, json: false })
                .finish(),
        )
    }
}

/// Formats sqlx's statement events on one line; everything else as `inner` does.
struct OneLineStatements<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for OneLineStatements<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        if event.metadata().target() != SQLX_QUERY {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut fields = StatementFields::default();
        event.record(&mut fields);
        let name = statement_name(fields.sql());
        let message = if fields.slow {
            "slow statement"
        } else {
            "statement"
        };
        let level = event.metadata().level();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let spans: Vec<&str> = ctx
            .event_scope()
            .map(|scope| scope.from_root().map(|span| span.name()).collect())
            .unwrap_or_default();
        if self.json {
            let line = serde_json::json!({
                "timestamp": now,
                "level": level.as_str(),
                "fields": {
                    "message": message,
                    "statement": name,
                    "elapsed_ms": fields.elapsed_ms(),
                    "rows_affected": fields.rows_affected,
                    "rows_returned": fields.rows_returned,
                },
                "target": SQLX_QUERY,
                "spans": spans,
            });
            writeln!(writer, "{line}")
        } else {
            let within = if spans.is_empty() {
                String::new()
            } else {
                format!(" in={}", spans.join(":"))
            };
            writeln!(
                writer,
                "{now} {level:>5} {message} statement={name:?} elapsed_ms={:.1} rows_affected={} rows_returned={}{within}",
                fields.elapsed_ms(),
                fields.rows_affected,
                fields.rows_returned,
            )
        }
    }
}

/// The fields of a sqlx statement event.
#[derive(Debug, Default)]
struct StatementFields {
    summary: String,
    statement: String,
    elapsed_secs: f64,
    rows_affected: u64,
    rows_returned: u64,
    slow: bool,
}

impl StatementFields {
    /// The statement's text: `db.statement` when sqlx gave it (it leaves it empty when
    /// the summary is the whole statement).
    fn sql(&self) -> &str {
        if self.statement.trim().is_empty() {
            &self.summary
        } else {
            &self.statement
        }
    }

    fn elapsed_ms(&self) -> f64 {
        (self.elapsed_secs * 10_000.0).round() / 10.0
    }
}

impl Visit for StatementFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_owned(),
            "db.statement" => self.statement = value.to_owned(),
            "message" => self.slow = value.contains("slow"),
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = value;
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            "rows_affected" => self.rows_affected = value,
            "rows_returned" => self.rows_returned = value,
            _ => {}
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.record_u64(field, u64::try_from(value).unwrap_or(0));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let mut text = String::new();
            let _ = write!(text, "{value:?}");
            self.slow = text.contains("slow");
        }
    }
}

/// A statement's name, for a log line: the name a leading comment gives it
/// (`-- name: sends.claim` or `/* sends.claim */`), else its verb and the table it
/// works on (`UPDATE sends`, `INSERT attempts`, `SELECT sends`, `WITH due`, `COMMIT`).
pub fn statement_name(sql: &str) -> String {
    let text = sql.trim_start();
    if let Some(rest) = text.strip_prefix("--") {
        let line = rest.lines().next().unwrap_or_default().trim();
        let name = line.strip_prefix("name:").unwrap_or(line).trim();
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    if let Some(rest) = text.strip_prefix("/*")
        && let Some((comment, _)) = rest.split_once("*/")
    {
        let comment = comment.trim();
        let name = comment.strip_prefix("name:").unwrap_or(comment).trim();
        if !name.is_empty() {
            return name.to_owned();
        }
    }
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let Some(verb) = words.first().map(|w| w.to_ascii_uppercase()) else {
        return "(empty)".to_owned();
    };
    // The first word after `keyword` that names a relation (not a subquery's SELECT).
    let after = |keyword: &str| {
        words
            .windows(2)
            .find(|pair| {
                pair[0].eq_ignore_ascii_case(keyword)
                    && !["SELECT", "LATERAL", "ONLY", "WITH", "VALUES"]
                        .iter()
                        .any(|k| pair[1].eq_ignore_ascii_case(k))
            })
            .map(|pair| pair[1].trim_matches('"').to_owned())
    };
    let table = match verb.as_str() {
        "INSERT" => after("INTO"),
        "UPDATE" => words.get(1).map(|w| w.trim_matches('"').to_owned()),
        "DELETE" | "SELECT" => after("FROM"),
        "WITH" => words
            .get(1)
            .filter(|w| !w.eq_ignore_ascii_case("RECURSIVE"))
            .or_else(|| words.get(2))
            .map(|w| w.to_string()),
        "CREATE" | "ALTER" | "DROP" | "LOCK" | "TRUNCATE" => after("TABLE"),
        _ => None,
    };
    match table {
        Some(table) if !table.starts_with('$') => format!("{verb} {table}"),
        _ => verb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_named_by_comment_or_by_verb_and_table() {
        for (sql, name) in [
            (
                "-- name: sends.claim\nUPDATE sends SET x = 1",
                "sends.claim",
            ),
            (
                "/* passes.finish */ UPDATE passes SET y = 2",
                "passes.finish",
            ),
            (
                "\n\nUPDATE sends s\n   SET state = u.state\n FROM unnest($1)",
                "UPDATE sends",
            ),
            ("INSERT INTO attempts (a, b) SELECT 1", "INSERT attempts"),
            (
                "SELECT count(*) FROM conversion_rates WHERE state = 'sent'",
                "SELECT conversion_rates",
            ),
            (
                "WITH due AS (SELECT id FROM sends) UPDATE sends",
                "WITH due",
            ),
            (
                "DELETE FROM record_revisions WHERE x",
                "DELETE record_revisions",
            ),
            (
                "SELECT x FROM (SELECT 1) AS a JOIN b ON true FROM sends",
                "SELECT sends",
            ),
            ("COMMIT", "COMMIT"),
            ("SELECT $1", "SELECT"),
            ("", "(empty)"),
        ] {
            assert_eq!(statement_name(sql), name, "{sql}");
        }
    }

    #[test]
    fn notices_are_hidden_unless_asked_for() {
        let default = filter(None).to_string();
        assert!(default.contains("sqlx::postgres::notice=warn"), "{default}");
        let asked = filter(Some("info,sqlx::postgres::notice=info")).to_string();
        assert!(!asked.contains("notice=warn"), "{asked}");
    }
}
