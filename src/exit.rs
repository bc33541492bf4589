//! The process's exit codes, as the README documents them, and how an error maps to one.

use crate::config::ConfigError;
use crate::db::DbError;
use crate::export::ExportError;
use crate::import::ImportError;
use crate::pass::Ended;
use crate::provider::Failure;

/// Why the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: done (also when stopped by `--max-runtime`).
    Done,
    /// 1: an unexpected error.
    Unexpected,
    /// 2: usage or configuration.
    Usage,
    /// 3: the provider refused our credentials or IP.
    Credentials,
    /// 4: the database is unusable or its schema does not match.
    Database,
    /// 5: done, but some input lines were rejected (each reported on stderr).
    Rejected,
    /// 6: the provider was unreachable or failing (the circuit breaker opened); nothing
    /// was counted against the sends. Try again at the next schedule.
    ProviderUnavailable,
    /// 130: interrupted by SIGINT or SIGTERM.
    Interrupted,
}

impl Exit {
    pub fn code(self) -> u8 {
        match self {
            Exit::Done => 0,
            Exit::Unexpected => 1,
            Exit::Usage => 2,
            Exit::Credentials => 3,
            Exit::Database => 4,
            Exit::Rejected => 5,
            Exit::ProviderUnavailable => 6,
            Exit::Interrupted => 130,
        }
    }

    /// The exit code an error calls for, judged by the first cause that says.
    pub fn for_error(error: &anyhow::Error) -> Exit {
        for cause in error.chain() {
            if cause.is::<ConfigError>() {
                return Exit::Usage;
            }
            if cause.is::<DbError>() {
                return Exit::Database;
            }
            if let Some(ExportError::Db(_)) = cause.downcast_ref::<ExportError>() {
                return Exit::Database;
            }
            match cause.downcast_ref::<ImportError>() {
                Some(ImportError::Db(_)) => return Exit::Database,
                Some(ImportError::Header(_) | ImportError::MissingColumns(..)) => {
                    return Exit::Usage;
                }
                _ => {}
            }
            if let Some(Failure::Fatal { .. }) = cause.downcast_ref::<Failure>() {
                return Exit::Credentials;
            }
        }
        Exit::Unexpected
    }
}

/// The exit code for how a pass ended.
impl From<Ended> for Exit {
    fn from(ended: Ended) -> Self {
        match ended {
            Ended::Done | Ended::MaxRuntime => Exit::Done,
            Ended::CredentialsRefused => Exit::Credentials,
            Ended::Interrupted => Exit::Interrupted,
            Ended::Failed => Exit::Database,
            Ended::ProviderUnavailable => Exit::ProviderUnavailable,
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit.code())
    }
}
