//! `otp-reconcile demo`: the main job on a ready default. It creates a demo database on
//! the local Postgres, starts the simulator in-process, imports a few thousand
//! generated sends through the CSV importer, runs a pass with a progress bar, and says
//! where to look next.

use crate::clock;
use crate::config::{PassArgs, ProviderSettings};
use crate::db::apps;
use crate::db::{self, DbError};
use crate::exit::Exit;
use crate::import;
use crate::pass::job;
use crate::provider::ProviderClient;
use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use otp_reconcile_simulator::{DEMO_API_KEY, DEMO_API_SECRET, SimConfig, Simulator};
use secrecy::SecretString;
use std::fmt::Write;

/// The apps the demo registers.
const DEMO_APPS: [&str; 3] = ["demo-shop", "demo-bank", "demo-ride"];

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The demo database (created if missing).
    #[arg(
        long,
        env = "DEMO_DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/otp_reconcile_demo"
    )]
    pub database_url: String,
    /// How many sends to generate.
    #[arg(long, default_value_t = 3_000)]
    pub sends: usize,
    /// The simulator's seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Latency the simulator adds to each answer, in milliseconds.
    #[arg(long, default_value_t = 20)]
    pub latency_ms: u64,
    #[command(flatten)]
    pub pass: PassArgs,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<Exit> {
    let settings = args.pass.settings()?;
    db::create_database_if_missing(&args.database_url).await?;
    let db = db::connect(
        &args.database_url,
        u32::try_from(settings.writers + 2).unwrap_or(4),
    )
    .await?;
    db::migrate(&db).await?;
    db::check_schema(&db).await?;
    for app in DEMO_APPS {
        apps::add(&db, app, Some("demo"))
            .await
            .map_err(DbError::from)?;
    }

    let mut sim_config = SimConfig::new(args.seed);
    sim_config.faults.latency_ms = args.latency_ms;
    sim_config.faults.jitter_ms = args.latency_ms / 2;
    let sim = Simulator::start(sim_config)
        .await
        .context("cannot start the simulator")?;
    eprintln!("simulator: {} (seed {})", sim.base_url(), args.seed);

    let start = fresh_start(&db, settings.schedule.max_age)
        .await
        .map_err(DbError::from)?;
    let (sends, conversions) = generate(args.sends, start, Utc::now());
    let report = import::import_sends(&db, csv_input(sends), print_rejected).await?;
    eprintln!(
        "imported {} sends ({} already there)",
        report.inserted, report.duplicates
    );
    let report = import::import_conversions(&db, csv_input(conversions), print_rejected).await?;
    eprintln!("imported {} conversions", report.inserted);

    let provider = ProviderSettings::new(
        &sim.base_url(),
        DEMO_API_KEY,
        SecretString::from(DEMO_API_SECRET),
        false,
    )?;
    let client = ProviderClient::new(&provider, clock::system())?;
    let summary = job::pass(&db, &client, &settings).await?;
    eprintln!("{}", summary.render());
    let stats = sim.stats();
    eprintln!(
        "the simulator received {} requests for {} ids",
        stats.total_requests,
        stats.fetches.len()
    );
    sim.shutdown().await;
    eprintln!(
        "\nwhere to look next:\n  \
         psql {url} -c \"SELECT state, count(*) FROM sends GROUP BY 1\"\n  \
         psql {url} -c \"SELECT channel, settle_currency, count(*), sum(amount), sum(settle_pay) FROM attempts GROUP BY 1, 2\"\n  \
         psql {url} -c \"SELECT state, count(*) FROM conversions GROUP BY 1\"\n  \
         psql {url} -c \"SELECT app_id, mcc, window_start, posted_converted, posted_sent, posted_rate FROM conversion_rates ORDER BY window_start DESC LIMIT 10\"\n  \
         psql {url} -c \"SELECT id, outcome, summary FROM passes ORDER BY id DESC LIMIT 3\"\n  \
         DATABASE_URL={url} otp-reconcile run --dry-run   # what is due now (the sends still sending come due in 2 minutes)",
        url = args.database_url
    );
    Ok(summary.ended.into())
}

fn csv_input(text: String) -> Box<dyn std::io::Read + Send> {
    Box::new(std::io::Cursor::new(text.into_bytes()))
}

fn print_rejected(bad: &import::Rejected) {
    eprintln!("line {}: {}", bad.line, crate::text::escape(&bad.reason));
}

/// Where a demo run's sends may start: three hours before the oldest age a send is
/// still checked at (`--max-age`), or later if earlier runs already have sends or
/// computed conversion-rate windows there.
///
/// - The first run's oldest sends are past `--max-age`: whatever the provider still
///   says of them, they end final (settled, expired or rejected) in this pass, so their
///   rate windows are final and the demo shows rates posted (only final windows are).
/// - A later run's sends never land in a window an earlier run computed (and perhaps
///   posted), so no posted rate changes after the fact and no run ends with a warning.
async fn fresh_start(
    db: &db::Db,
    max_age: std::time::Duration,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let earliest = clock::before(Utc::now(), max_age) - chrono::Duration::hours(3);
    let taken = db::sends::last_sent_at(db)
        .await?
        .max(db::rates::last_window_end(db).await?);
    Ok(taken.map_or(earliest, |t| earliest.max(t + chrono::Duration::seconds(1))))
}

/// CSVs of `n` sends across the demo apps, sent between `start` and `end` (most by
/// verification id, a fifth by the app's own order id, a few the provider will not
/// know), and of the conversions of about a third of them.
fn generate(n: usize, start: DateTime<Utc>, end: DateTime<Utc>) -> (String, String) {
    // To the millisecond: two demo runs within one second (a fast machine, the tests)
    // must not make the same ids, or the second imports nothing.
    let stamp = Utc::now().format("%Y%m%d%H%M%S%3f");
    let span_ms = (end - start).num_milliseconds().max(0);
    let mut sends = String::from("app_id,verification_id,order_id,number,channel,sent_at\n");
    let mut conversions = String::from("kind,app_id,message_id,number,converted_at\n");
    for i in 0..n {
        let app = DEMO_APPS[i % DEMO_APPS.len()];
        let sent_at = end - chrono::Duration::milliseconds((i as i64 * span_ms) / n.max(1) as i64);
        let (verification_id, order_id) = match i % 50 {
            0 => (format!("missing-{stamp}-{i}"), String::new()),
            n if n % 5 == 0 => (String::new(), format!("ord-{stamp}-{i}")),
            _ => (format!("v{stamp}{i:06}"), String::new()),
        };
        let channel = ["sms", "", "call", "sms", "sna"][i % 5];
        let _ = writeln!(
            sends,
            "{app},{verification_id},{order_id},91{:010},{channel},{}",
            7_000_000_000u64 + i as u64,
            sent_at.to_rfc3339()
        );
        if i % 3 == 1 && !verification_id.is_empty() {
            let converted_at = sent_at + chrono::Duration::seconds(40);
            let _ = writeln!(
                conversions,
                "otp,{app},{verification_id},,{}",
                converted_at.to_rfc3339()
            );
        }
    }
    (sends, conversions)
}
