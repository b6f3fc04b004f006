//! `linesight outbox status`: what waits to leave the site.

use anyhow::Context as _;

use crate::config::Settings;
use crate::store::{Store, redact};

/// `linesight outbox ...`.
#[derive(Debug, clap::Subcommand)]
pub enum OutboxCommand {
    /// Pending events and samples, bytes, the oldest of each, counters and the full alarm.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn age(now_ms: i64, at_ms: Option<i64>) -> String {
    match at_ms {
        Some(at) => format!(
            "{} ago",
            humantime::format_duration(std::time::Duration::from_secs(
                ((now_ms - at).max(0) / 1000) as u64
            ))
        ),
        None => "-".into(),
    }
}

pub fn run(settings: &Settings, cmd: OutboxCommand) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let store = Store::open(&settings.store).await.with_context(|| {
            format!(
                "cannot open the quality store {}",
                redact(&settings.store.effective_url())
            )
        })?;
        let OutboxCommand::Status { json } = cmd;
        let s = store.outbox_status().await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&s)?);
        } else {
            let now = crate::quality::now_ms();
            let limit = settings.outbox.max_bytes;
            println!(
                "outbox: {} of {} bytes ({:.1} %){}",
                s.pending_bytes,
                limit,
                s.pending_bytes as f64 * 100.0 / limit as f64,
                if settings.outbox.enabled() {
                    ""
                } else {
                    " - delivery not configured ([outbox.mqtt], [outbox.upload])"
                }
            );
            for (name, k) in [("mqtt events", &s.mqtt), ("s3 samples", &s.s3)] {
                println!(
                    "{name}: {} pending, {} bytes, oldest {}, {} delivered",
                    k.pending,
                    k.bytes,
                    age(now, k.oldest_at_ms),
                    k.delivered_total
                );
            }
            println!(
                "events dropped: {}, samples refused: {}",
                s.events_dropped_total, s.samples_refused_total
            );
            match s.full_since_ms {
                Some(at) => println!("ALARM: outbox full since {}", age(now, Some(at))),
                None => println!("alarms: none"),
            }
        }
        store.close().await;
        Ok(if s.full_since_ms.is_some() { 2 } else { 0 })
    })
}
