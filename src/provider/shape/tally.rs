//! The counts an answer is held to while it is read, and the refusal that stops it.

use super::{Limits, Refused};
use serde::de;

/// Values and attempts met so far, and why reading stopped, if it was stopped on
/// purpose (the serde error that stops it then only unwinds the visitors).
pub(super) struct Tally {
    limits: Limits,
    values: usize,
    attempts: usize,
    refused: Option<Refused>,
}

impl Tally {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits,
            values: 0,
            attempts: 0,
            refused: None,
        }
    }

    pub(super) fn into_refused(self) -> Option<Refused> {
        self.refused
    }

    /// Stops reading: the error returned only unwinds, `refused` says why.
    pub(super) fn refuse<E: de::Error>(&mut self, refused: Refused) -> E {
        self.refused = Some(refused);
        E::custom("refused")
    }

    /// One more JSON value.
    pub(super) fn value<E: de::Error>(&mut self) -> Result<(), E> {
        self.values += 1;
        if self.values > self.limits.max_values() {
            let limit = self.limits.max_values();
            return Err(self.refuse(Refused::TooManyValues { limit }));
        }
        Ok(())
    }

    /// One more attempt.
    pub(super) fn attempt<E: de::Error>(&mut self) -> Result<(), E> {
        self.attempts += 1;
        if self.attempts > self.limits.max_attempts {
            let limit = self.limits.max_attempts;
            return Err(self.refuse(Refused::TooManyAttempts { limit }));
        }
        Ok(())
    }

    /// On the way out of a refusal, adds this level (`sms`, `[1]`) to where it
    /// happened: `at` is built from the inside out.
    pub(super) fn locate(&mut self, segment: impl FnOnce() -> String) {
        if let Some(Refused::DuplicateKey { at, .. }) = &mut self.refused {
            enclose(at, segment());
        }
    }
}

/// Puts `segment` (a key, or an index `[1]`) before the place `at` it encloses, with a
/// dot when `at` starts with a key and none when it starts with an index
/// (`sms[0].pay`, `a[0][1]`).
pub(super) fn enclose(at: &mut String, segment: String) {
    *at = if at.is_empty() {
        segment
    } else if at.starts_with('[') {
        format!("{segment}{at}")
    } else {
        format!("{segment}.{at}")
    };
}
