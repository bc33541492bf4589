//! The range of sent_at `export` and `replay` take.

use super::ConfigError;
use crate::db::sends::Range;
use crate::export::{self, Bound};
use crate::zone::Zone;
use chrono::Utc;
use clap::Args;

/// The range of sent_at both commands take.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// The first day (UTC; export: in --timezone) or time of sent_at included, e.g. 2026-11-01.
    #[arg(long, value_parser = export::parse_bound)]
    pub from: Bound,
    /// The first day (UTC; export: in --timezone) or time of sent_at excluded, e.g. 2026-12-01.
    #[arg(long, value_parser = export::parse_bound)]
    pub to: Bound,
    /// Only this app (repeatable).
    #[arg(long = "app-id")]
    pub app_ids: Vec<String>,
}

impl RangeArgs {
    /// The range, its days read in UTC.
    pub fn range(&self) -> Result<Range, ConfigError> {
        self.range_in(&Zone::default())
    }

    /// The range, its days (and `today`, `yesterday`) read in `zone`.
    pub fn range_in(&self, zone: &Zone) -> Result<Range, ConfigError> {
        let now = Utc::now();
        let (from, to) = (self.from.resolve(zone, now), self.to.resolve(zone, now));
        if from >= to {
            return Err(ConfigError::Invalid(format!(
                "--from {} is not before --to {}",
                from.to_rfc3339(),
                to.to_rfc3339()
            )));
        }
        Ok(Range {
            from,
            to,
            app_ids: self.app_ids.clone(),
        })
    }
}
