//! `linesight outbox status`: what waits to leave the site; `linesight outbox discard`: drop,
//! audited, what waits for a peer that is gone for good.

use anyhow::Context as _;

use crate::config::Settings;
use crate::outbox::Sink;
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
    /// Drop undelivered rows of one sink, for a peer that is gone for good (its section
    /// removed from the configuration, a retired bucket). Without --yes, only says what would
    /// be dropped. The drop is one audit entry (`outbox.discard`) with its reason.
    Discard {
        /// mqtt (events) or s3 (samples).
        #[arg(long, value_enum)]
        sink: SinkArg,
        /// Only rows older than this (`7d`, `12h`); default: every waiting row.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Why they are dropped (recorded in the audit trail).
        #[arg(long)]
        reason: Option<String>,
        /// Drop them; without it nothing changes.
        #[arg(long)]
        yes: bool,
    },
}

/// A sink on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum SinkArg {
    Mqtt,
    S3,
}

impl From<SinkArg> for Sink {
    fn from(s: SinkArg) -> Sink {
        match s {
            SinkArg::Mqtt => Sink::Mqtt,
            SinkArg::S3 => Sink::S3,
        }
    }
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
        // With the outbox on when configured: a discard's audit entry is then an event too.
        let store = crate::outbox::open_store(settings).await.with_context(|| {
            format!(
                "cannot open the quality store {}",
                redact(&settings.store.effective_url())
            )
        })?;
        let code = match cmd {
            OutboxCommand::Status { json } => status(settings, &store, json).await?,
            OutboxCommand::Discard {
                sink,
                older_than,
                reason,
                yes,
            } => discard(settings, &store, sink.into(), older_than, reason, yes).await?,
        };
        store.close().await;
        Ok(code)
    })
}

async fn status(settings: &Settings, store: &Store, json: bool) -> anyhow::Result<i32> {
    let s = store.outbox_status().await?;
    let delivering = crate::outbox::delivery_lease_held(store).await?;
    if json {
        let mut v = serde_json::to_value(&s)?;
        v["delivering"] = delivering.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
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
        for (sink, name, k) in [
            (Sink::Mqtt, "mqtt events", &s.mqtt),
            (Sink::S3, "s3 samples", &s.s3),
        ] {
            println!(
                "{name}: {} pending, {} bytes, oldest {}, {} delivered, {} discarded{}",
                k.pending,
                k.bytes,
                age(now, k.oldest_at_ms),
                k.delivered_total,
                k.discarded_total,
                if k.pending > 0 && !settings.outbox.delivers(sink) {
                    format!(
                        " - {} is not configured: configure it again, or `linesight outbox \
                         discard --sink {}`",
                        sink.section(),
                        sink.as_str()
                    )
                } else {
                    String::new()
                }
            );
        }
        println!(
            "events dropped: {}, samples refused: {}",
            s.events_dropped_total, s.samples_refused_total
        );
        println!(
            "delivery: {}",
            if delivering {
                "an instance delivers now (it holds the delivery lease)"
            } else {
                "no instance delivers now (`linesight run` or `serve` with [outbox] does)"
            }
        );
        match s.full_since_ms {
            Some(at) => println!("ALARM: outbox full since {}", age(now, Some(at))),
            None => println!("alarms: none"),
        }
    }
    Ok(if s.full_since_ms.is_some() { 2 } else { 0 })
}

async fn discard(
    settings: &Settings,
    store: &Store,
    sink: Sink,
    older_than: Option<std::time::Duration>,
    reason: Option<String>,
    yes: bool,
) -> anyhow::Result<i32> {
    let now = crate::quality::now_ms();
    let before_ms = now
        .saturating_sub(older_than.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
    let what = sink.rows_are();
    let span = older_than.map_or(String::new(), |d| {
        format!(" older than {}", humantime::format_duration(d))
    });
    if settings.outbox.delivers(sink) {
        eprintln!(
            "note: {} is configured; linesight delivers these {what} when it runs",
            sink.section()
        );
    }
    if !yes {
        let (rows, bytes) = store.outbox_waiting(sink, before_ms).await?;
        println!(
            "would drop {rows} {what}{span} ({bytes} bytes) undelivered; nothing changed \
             (add --yes --reason \"...\" to drop them)"
        );
        return Ok(0);
    }
    let reason = reason.filter(|r| !r.trim().is_empty()).context(
        "--reason: say why these rows are dropped undelivered (it goes in the audit trail)",
    )?;
    let d = store
        .outbox_discard(sink, before_ms, &super::quality::cli_actor(), &reason)
        .await?;
    let _ = crate::outbox::maybe_clear_alarm(store, settings.outbox.alarm_clears_below()).await;
    println!(
        "dropped {} {what}{span} ({} bytes) undelivered; recorded in the audit trail (outbox.discard)",
        d.rows, d.bytes
    );
    Ok(0)
}
