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
    let runtime = match runtime_for(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("otp-reconcile: cannot start the async runtime: {e}");
            return Exit::Unexpected.into();
        }
    };
    runtime.block_on(cli::run(cli)).into()
}

/// The runtime a command runs on. A pass (`run`, `replay`) is one future that drives
/// its requests, their connections and the database on one thread: on a multi-thread
/// runtime every answer woke another thread (a futex, a context switch) and that cost
/// more CPU per send than the work it moved. The simulator and the demo, which serve
/// requests, keep the multi-thread runtime.
fn runtime_for(command: &cli::Command) -> std::io::Result<tokio::runtime::Runtime> {
    match command {
        cli::Command::Run(_) | cli::Command::Replay(_) => {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        _ => tokio::runtime::Runtime::new(),
    }
}
