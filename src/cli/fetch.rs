//! `otp-reconcile fetch`: one record, as the provider answers it, for whoever is on
//! call and wants to see what the job sees.

use super::ProviderArgs;
use crate::clock;
use crate::exit::Exit;
use crate::provider::{Gate, ProviderClient, RetryPolicy};
use anyhow::Context;
use clap::Args;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("id").required(true))]
pub struct FetchArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,

    /// The provider's verificationId.
    #[arg(long, group = "id")]
    pub verification_id: Option<String>,

    /// The company's own orderId (needs --app-id).
    #[arg(long, group = "id", requires = "app_id")]
    pub order_id: Option<String>,

    /// The app the order belongs to.
    #[arg(long)]
    pub app_id: Option<String>,

    /// Attempts in all, retries on transient failures included.
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
}

pub async fn run(args: FetchArgs) -> anyhow::Result<Exit> {
    let settings = args.provider.settings()?;
    let client = ProviderClient::new(&settings, clock::system())?;
    let policy = RetryPolicy {
        max_attempts: args.attempts.max(1),
        ..RetryPolicy::default()
    };
    let gate = Gate::open();
    let fetched = match (&args.verification_id, &args.order_id) {
        (Some(id), _) => {
            policy
                .run(&gate, || client.record_by_verification_id(id))
                .await
        }
        (None, Some(order)) => {
            let app = args.app_id.as_deref().unwrap_or_default();
            policy
                .run(&gate, || client.record_by_order_id(app, order))
                .await
        }
        (None, None) => unreachable!("clap requires one id"),
    }
    .expect("an open gate never stops")
    .context("the provider did not answer with a record")?;
    let out = serde_json::json!({ "record": fetched.record, "raw": fetched.raw_json() });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(Exit::Done)
}
