//! The provider-level benchmark: keyshard's OpenAI client on one key at 120 requests/min,
//! 16 concurrent callers, 60 s, against the fake OpenAI of keyshard-sim.
//!
//! ```text
//! cargo run --release -p keyshard-providers --example provider_bench -- [--rpm 120] [--callers 16] [--secs 60] [--window-secs 60] [--burst-allowance N] [--json]
//! ```
//!
//! It lives here rather than in the `keyshard-sim` binary because keyshard-sim does not
//! depend on keyshard-providers; the harness itself is `keyshard_sim::providers::bench`.

use std::time::Duration;

use futures::future::BoxFuture;
use keyshard_providers::{ChatMessage, ChatRole, KeyLimits, OpenAi, OpenAiConfig, ProviderConfig};
use keyshard_sim::providers::bench::{run_with, BenchArgs, BenchClient};

struct Chat(OpenAi);

impl BenchClient for Chat {
    fn call(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let messages = vec![ChatMessage::new(ChatRole::User, "benchmark")];
            self.0
                .chat(messages)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
    }
}

fn parse_args() -> anyhow::Result<(BenchArgs, bool)> {
    let mut args = BenchArgs::default();
    let mut json = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<String> {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--rpm" => args.rpm = value()?.parse()?,
            "--callers" => args.callers = value()?.parse()?,
            "--secs" => args.duration = Duration::from_secs_f64(value()?.parse()?),
            "--window-secs" => args.window = Duration::from_secs_f64(value()?.parse()?),
            "--seed" => args.seed = value()?.parse()?,
            "--burst-allowance" => args.burst_allowance = Some(value()?.parse()?),
            "--json" => json = true,
            other => anyhow::bail!(
                "unknown argument {other}; use --rpm N --callers N --secs S --window-secs S --seed N --burst-allowance N --json"
            ),
        }
    }
    Ok((args, json))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (args, json) = parse_args()?;
    let callers = args.callers as u32;
    let report = run_with(args, |target| {
        let mut common = ProviderConfig::new(target.key.clone(), target.openai_base.clone());
        common.limits = KeyLimits {
            rpm: target.rpm,
            tpm: None,
            rpd: None,
            concurrency: callers,
            window: target.window,
        };
        common.max_wait = target.window * 3;
        let client = OpenAi::new(OpenAiConfig::new(common), None)?;
        Ok((Chat(client), "keyshard-providers OpenAi::chat".to_owned()))
    })
    .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
