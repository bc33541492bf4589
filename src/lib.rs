//! otp-reconcile: a batch job that keeps a company's books with its OTP/SMS provider
//! straight. See the README for what it does and how to run it.

pub mod alloc;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod decide;
pub mod exit;
pub mod export;
pub mod import;
pub mod metrics;
pub mod pass;
pub mod progress;
pub mod provider;
pub mod prune;
pub mod rates;
pub mod record;
pub mod redact;
pub mod ser;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod text;
pub mod zone;
