//! The binary: parse the command line, start logging, run, exit with the code the
//! README documents. Everything else lives in the library.

use clap::Parser;
use otp_reconcile::cli::{self, Cli};
use otp_reconcile::exit::Exit;
use otp_reconcile::telemetry;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("otp-reconcile: cannot start the async runtime: {e}");
            return Exit::Unexpected.into();
        }
    };
    runtime.block_on(cli::run(cli)).into()
}
