//! otp-reconcile: a batch job that keeps a company's books with its OTP/SMS provider
//! straight. See the README for what it does and how to run it.

pub mod cli;
pub mod clock;
pub mod config;
pub mod exit;
pub mod provider;
pub mod record;
pub mod shutdown;
pub mod simulator;
pub mod telemetry;
