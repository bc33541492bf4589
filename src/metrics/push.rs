//! The push: one POST per pass to its group at the Pushgateway.

use super::{JOB, QueueState, exposition};
use crate::db::Db;
use crate::db::sends::Shard;
use crate::pass::Summary;
use std::time::Duration;
use url::Url;

/// The push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot reach the Pushgateway")]
    Http(#[source] reqwest::Error),
    #[error("the Pushgateway answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the Pushgateway URL cannot take a path")]
    BadUrl,
}

/// The group's URL: `{gateway}/metrics/job/otp-reconcile/kind/{kind}/shard/{shard}`.
pub fn group_url(gateway: &Url, kind: &str, shard: &str) -> Result<Url, PushError> {
    let mut url = gateway.clone();
    url.path_segments_mut()
        .map_err(|()| PushError::BadUrl)?
        .pop_if_empty()
        .extend(["metrics", "job", JOB, "kind", kind, "shard", shard]);
    Ok(url)
}

/// POSTs `body` to the group `kind`/`shard` at `gateway`: metrics of the same names in
/// the group are replaced, the others (the last success) kept.
pub async fn push(gateway: &Url, kind: &str, shard: &str, body: String) -> Result<(), PushError> {
    let url = group_url(gateway, kind, shard)?;
    let http = |e: reqwest::Error| PushError::Http(crate::redact::reqwest_error(e));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(http)?;
    let response = client
        .post(url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(body)
        .send()
        .await
        .map_err(http)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(PushError::Status {
        status: status.as_u16(),
        body: crate::redact::escape_control(body.trim())
            .chars()
            .take(300)
            .collect(),
    })
}

/// Pushes a pass's summary, and the queue's state after it, to the group `kind` and
/// `shard` (`all`, or `I-of-N`). A failed push is logged once, as a warning: it never
/// fails the pass.
pub async fn push_pass(
    gateway: &Url,
    kind: &str,
    shard: Option<Shard>,
    db: &Db,
    summary: &Summary,
) {
    let shown = crate::redact::url(gateway);
    let shard = shard.map_or("all".to_owned(), |s| format!("{}-of-{}", s.index, s.of));
    let now = chrono::Utc::now();
    // After a database failure the queue cannot be read: the pass's own numbers are
    // pushed all the same.
    let queue = match QueueState::read(db, now).await {
        Ok(queue) => Some(queue),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue's state for the metrics");
            None
        }
    };
    let body = exposition(summary, queue.as_ref(), now);
    match push(gateway, kind, &shard, body).await {
        Ok(()) => tracing::info!(gateway = %shown, kind, shard, "metrics pushed"),
        Err(e) => tracing::warn!(
            gateway = %shown,
            error = format!("{:#}", anyhow::Error::from(e)),
            "cannot push the metrics"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_url_keeps_the_gateways_path() {
        let gateway = Url::parse("http://127.0.0.1:9091/prefix/").unwrap();
        assert_eq!(
            group_url(&gateway, "run", "1-of-4").unwrap().as_str(),
            "http://127.0.0.1:9091/prefix/metrics/job/otp-reconcile/kind/run/shard/1-of-4"
        );
    }
}
