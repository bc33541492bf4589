//! A progress bar (sends done, rate, ETA) on a terminal; nothing otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Progress of a long piece of work. Hidden unless stderr is a terminal.
#[derive(Debug, Clone)]
pub struct Progress(ProgressBar);

impl Progress {
    /// A bar for `total` items (a first estimate; it may grow), shown only on a terminal.
    pub fn new(total: u64, what: &str) -> Self {
        if !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        Self(bar)
    }

    pub fn hidden() -> Self {
        Self(ProgressBar::hidden())
    }

    /// The total, once it is known.
    pub fn set_length(&self, total: u64) {
        self.0.set_length(total);
    }

    pub fn inc(&self, n: u64) {
        self.0.inc(n);
        if let Some(len) = self.0.length()
            && self.0.position() > len
        {
            self.0.set_length(self.0.position());
        }
    }

    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
