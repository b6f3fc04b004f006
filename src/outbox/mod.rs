//! Durable delivery of what leaves the site: events over MQTT and training samples to S3,
//! through a transactional outbox in the quality store.
//!
//! Invariants:
//! - An outbox row is written in the same transaction as the record it belongs to (the hook is
//!   the audit trail: every audited change of an inspection, task, NCR, signature or lot is an
//!   event), so a committed record always has its event and a rolled-back one never has.
//! - A row is deleted only after the peer confirmed it: MQTT PUBACK at QoS 1, an S3 2xx. Until
//!   then it is sent again after a reconnect or a restart (also after `kill -9`), so consumers
//!   see every event at least once and de-duplicate on its stable `event_id`.
//! - Rows are delivered in `id` order, which is commit order (write transactions take turns),
//!   so the order of events with the same ordering key is kept.
//! - Every instance on a database queues; one at a time delivers, the holder of the delivery
//!   lease ([`lease`]), so no row goes out from two deliverers at once.
//! - The outbox is bounded by `outbox.max_bytes`. When full: new samples are refused (counted in
//!   `samples_refused`) once they would take it past `sample_share_percent` of the bound, which
//!   keeps the rest for events; an event that would take it past the bound is not stored but
//!   counted in `events_dropped` and logged. Either raises the `full` alarm (shown by
//!   `linesight outbox status`, in the health messages and the metrics) until the outbox drains
//!   below 90 % of the sample share. The quality record itself always commits.

mod lease;
mod mqtt;
mod queue;
mod sampling;
mod upload;

use serde::{Deserialize, Serialize};

pub use mqtt::{MqttOutConfig, MqttTlsConfig, run_mqtt, topic_for};
pub(crate) use queue::maybe_clear_alarm;
pub(crate) use queue::on_audit;
pub(crate) use queue::sample_state;
pub use queue::{Discarded, OutboxRow, OutboxStatus, Sink, SinkStatus, append_event};
pub use sampling::{SamplingConfig, SamplingReason, manifest_line, sampling_reason};
pub use upload::{UploadConfig, run_upload};

/// Version of the JSON envelope of every event and sample document.
pub const SCHEMA_VERSION: u32 = 1;

/// `[outbox]` settings. The outbox is on when `[outbox.mqtt]` or `[outbox.upload]` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Bound on the bytes waiting in the outbox (payloads plus referenced sample images).
    pub max_bytes: u64,
    /// Share of `max_bytes` samples may take; the rest is kept for events.
    pub sample_share_percent: u8,
    /// Rows read per delivery round.
    pub batch_size: u32,
    /// How often an idle deliverer looks for new rows.
    pub poll_interval_ms: u64,
    /// Events over MQTT.
    pub mqtt: Option<MqttOutConfig>,
    /// Samples to S3 (or a local folder).
    pub upload: Option<UploadConfig>,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_bytes: 1 << 30,
            sample_share_percent: 80,
            batch_size: 64,
            poll_interval_ms: 200,
            mqtt: None,
            upload: None,
        }
    }
}

impl OutboxConfig {
    /// Whether anything is delivered at all.
    pub fn enabled(&self) -> bool {
        self.mqtt.is_some() || self.upload.is_some()
    }

    /// Whether `sink` has a peer configured ( `[outbox.mqtt]`, `[outbox.upload]`).
    pub fn delivers(&self, sink: Sink) -> bool {
        match sink {
            Sink::Mqtt => self.mqtt.is_some(),
            Sink::S3 => self.upload.is_some(),
        }
    }

    /// Bytes samples may fill before new ones are refused.
    pub fn sample_limit_bytes(&self) -> u64 {
        self.max_bytes / 100 * u64::from(self.sample_share_percent)
    }

    /// The full alarm clears once the outbox holds less than this: 90 % of the sample share.
    pub fn alarm_clears_below(&self) -> u64 {
        self.sample_limit_bytes() / 10 * 9
    }

    /// Problems with the values, each naming its key.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_bytes < 1 << 20 {
            p.push(format!(
                "outbox.max_bytes = {}: must be at least 1048576 (1 MiB)",
                self.max_bytes
            ));
        }
        if !(1..=99).contains(&self.sample_share_percent) {
            p.push(format!(
                "outbox.sample_share_percent = {}: must be between 1 and 99",
                self.sample_share_percent
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            p.push(format!(
                "outbox.batch_size = {}: must be between 1 and 10000",
                self.batch_size
            ));
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            p.push(format!(
                "outbox.poll_interval_ms = {}: must be between 10 and 60000",
                self.poll_interval_ms
            ));
        }
        if let Some(m) = &self.mqtt {
            p.extend(m.problems());
        }
        if let Some(u) = &self.upload {
            p.extend(u.problems());
        }
        p
    }

    /// A copy safe to print: passwords replaced by `***`.
    pub fn redacted(&self) -> OutboxConfig {
        let mut c = self.clone();
        if let Some(m) = &mut c.mqtt
            && m.password.is_some()
        {
            m.password = Some("***".into());
        }
        if let Some(u) = &mut c.upload
            && u.secret_access_key.is_some()
        {
            u.secret_access_key = Some("***".into());
        }
        c
    }
}

/// What went wrong while delivering.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox store error: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("outbox.upload.destination = {destination:?}: {problem}")]
    Destination {
        destination: String,
        problem: String,
    },
    #[error("cannot upload {key}: {source}")]
    Upload {
        key: String,
        #[source]
        source: object_store::Error,
    },
    #[error("outbox.mqtt.tls: {0}")]
    Tls(String),
    #[error("cannot lock {path} (one outbox deliverer per database): {source}")]
    Lease {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens the quality store for `settings`, with the outbox switched on when it is configured.
/// Every store that records inspections or workflow changes must be opened this way, or its
/// writes produce no events.
pub async fn open_store(
    settings: &crate::config::Settings,
) -> Result<crate::store::Store, crate::store::StoreError> {
    let store = crate::store::Store::open(&settings.store).await?;
    Ok(if settings.outbox.enabled() {
        store.with_outbox(settings.outbox.clone())
    } else {
        store
    })
}

/// Whether an instance delivers this database's outbox now (holds the delivery lease).
pub async fn delivery_lease_held(store: &crate::store::Store) -> Result<bool, OutboxError> {
    lease::held_by_anyone(store).await
}

/// Warns about rows waiting for a sink that is not configured (the section was removed after
/// they were queued): they are kept, hold outbox space and, for samples, their images, until
/// the section is back or `linesight outbox discard` drops them. Returns the warnings.
pub async fn report_backlog(store: &crate::store::Store, config: &OutboxConfig) -> Vec<String> {
    let status = match store.outbox_status().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the outbox.");
            return Vec::new();
        }
    };
    let mut warnings = Vec::new();
    for (sink, st) in [(Sink::Mqtt, &status.mqtt), (Sink::S3, &status.s3)] {
        if st.pending > 0 && !config.delivers(sink) {
            let w = format!(
                "{} {} ({} bytes) wait for {}, which is not configured: they keep their outbox \
                 space{} until it is configured again or `linesight outbox discard --sink {}` \
                 drops them",
                st.pending,
                sink.rows_are(),
                st.bytes,
                sink.section(),
                match sink {
                    Sink::Mqtt => "",
                    Sink::S3 => " and their images",
                },
                sink.as_str()
            );
            tracing::warn!("{w}.");
            warnings.push(w);
        }
    }
    warnings
}

/// The outbox in Prometheus text format: what waits per sink and how old the oldest row is,
/// what was delivered, dropped or refused, and the full alarm. Read on a read connection.
pub async fn metrics_text(store: &crate::store::Store) -> String {
    use std::fmt::Write as _;
    let s = match store.outbox_status_for_metrics().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the outbox for the metrics.");
            return String::new();
        }
    };
    let config = store.outbox_config().cloned().unwrap_or_default();
    let now = crate::quality::now_ms();
    let sinks = [(Sink::Mqtt, &s.mqtt), (Sink::S3, &s.s3)];
    let mut out = String::new();
    let mut per_sink =
        |name: &str, kind: &str, help: &str, value: &dyn Fn(Sink, &SinkStatus) -> String| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (sink, st) in sinks {
                let _ = writeln!(
                    out,
                    "{name}{{sink=\"{}\"}} {}",
                    sink.as_str(),
                    value(sink, st)
                );
            }
        };
    per_sink(
        "linesight_outbox_pending",
        "gauge",
        "Rows waiting for their peer's confirmation (mqtt: events, s3: samples).",
        &|_, st| st.pending.to_string(),
    );
    per_sink(
        "linesight_outbox_pending_bytes",
        "gauge",
        "Bytes those rows hold (sample images included).",
        &|_, st| st.bytes.to_string(),
    );
    per_sink(
        "linesight_outbox_oldest_age_seconds",
        "gauge",
        "Age of the oldest waiting row; 0 when none waits.",
        &|_, st| {
            format!(
                "{:.3}",
                st.oldest_at_ms
                    .map_or(0.0, |at| (now - at).max(0) as f64 / 1000.0)
            )
        },
    );
    per_sink(
        "linesight_outbox_delivered_total",
        "counter",
        "Rows the peer confirmed (MQTT PUBACK, S3 2xx).",
        &|_, st| st.delivered_total.to_string(),
    );
    per_sink(
        "linesight_outbox_discarded_total",
        "counter",
        "Rows dropped undelivered by `linesight outbox discard` (audited).",
        &|_, st| st.discarded_total.to_string(),
    );
    per_sink(
        "linesight_outbox_sink_configured",
        "gauge",
        "1 when the sink's section ([outbox.mqtt], [outbox.upload]) is configured.",
        &|sink, _| u8::from(config.delivers(sink)).to_string(),
    );
    for (name, kind, help, value) in [
        (
            "linesight_outbox_bytes",
            "gauge",
            "Bytes counted against outbox.max_bytes.",
            s.pending_bytes.to_string(),
        ),
        (
            "linesight_outbox_max_bytes",
            "gauge",
            "outbox.max_bytes.",
            config.max_bytes.to_string(),
        ),
        (
            "linesight_outbox_delivering",
            "gauge",
            "1 while this process delivers the outbox (one deliverer per database).",
            u8::from(lease::delivering()).to_string(),
        ),
        (
            "linesight_outbox_full",
            "gauge",
            "1 while the full alarm is raised (until the outbox drains).",
            u8::from(s.full_since_ms.is_some()).to_string(),
        ),
        (
            "linesight_outbox_events_dropped_total",
            "counter",
            "Events not stored because the outbox was full.",
            s.events_dropped_total.to_string(),
        ),
        (
            "linesight_outbox_samples_refused_total",
            "counter",
            "Samples refused because they would pass their share of the outbox.",
            s.samples_refused_total.to_string(),
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        let _ = writeln!(out, "{name} {value}");
    }
    out
}

/// How often an instance that does not deliver tries to take over, and how often the one that
/// does checks that its lease still holds.
const LEASE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Delivery of one database's outbox: waits for the delivery lease (one deliverer per
/// database, see [`lease`]), then runs one task per configured sink until it stops or the
/// lease is lost, and then waits for the lease again.
#[derive(Debug)]
pub struct Delivery {
    stop: tokio::sync::watch::Sender<bool>,
    supervisor: tokio::task::JoinHandle<()>,
    /// Which sinks it delivers: draining waits for those only.
    sinks: Vec<Sink>,
    /// Whether it holds the lease now; `None` until its first try.
    leading: tokio::sync::watch::Receiver<Option<bool>>,
}

impl Delivery {
    /// Starts delivering what `store`'s outbox holds. `image_dir` is where the store keeps
    /// images; `state_dir` a private folder (credentials handed over in the environment).
    pub fn start(
        store: &crate::store::Store,
        config: &OutboxConfig,
        image_dir: std::path::PathBuf,
        state_dir: std::path::PathBuf,
    ) -> Delivery {
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let (leading_tx, leading) = tokio::sync::watch::channel(None);
        let (store, config) = (store.clone(), config.clone());
        let sinks = [Sink::Mqtt, Sink::S3]
            .into_iter()
            .filter(|s| config.delivers(*s))
            .collect();
        let supervisor = tokio::spawn(async move {
            // Said once until the lease is taken, not at every try.
            let mut said_waiting = false;
            let mut claimant = lease::Claimant::default();
            loop {
                let mut held = match claimant.try_acquire(&store).await {
                    Ok(Some(lease)) => lease,
                    Ok(None) => {
                        let _ = leading_tx.send(Some(false));
                        if !said_waiting {
                            tracing::info!(
                                "Another instance delivers this database's outbox; this one \
                                 queues and takes over when that one stops."
                            );
                            said_waiting = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(LEASE_INTERVAL) => continue,
                            _ = stop_rx.changed() => return,
                        }
                    }
                    Err(e) => {
                        let _ = leading_tx.send(Some(false));
                        if !said_waiting {
                            tracing::warn!(error = %e, "Cannot take the outbox delivery lease; retrying.");
                            said_waiting = true;
                        }
                        tokio::select! {
                            _ = tokio::time::sleep(LEASE_INTERVAL) => continue,
                            _ = stop_rx.changed() => return,
                        }
                    }
                };
                said_waiting = false;
                tracing::info!("This instance delivers the outbox.");
                let _ = leading_tx.send(Some(true));
                let (tasks_stop, tasks) =
                    spawn_sinks(&store, &config, image_dir.clone(), state_dir.clone());
                let stopping = loop {
                    tokio::select! {
                        _ = tokio::time::sleep(LEASE_INTERVAL) => {
                            if !held.alive().await {
                                tracing::warn!("Outbox delivery lease lost (database connection); delivery pauses until it is taken again.");
                                break false;
                            }
                        }
                        _ = stop_rx.changed() => break true,
                    }
                };
                let _ = tasks_stop.send(true);
                for t in tasks {
                    let abort = t.abort_handle();
                    if tokio::time::timeout(std::time::Duration::from_secs(5), t)
                        .await
                        .is_err()
                    {
                        // Stopped mid-delivery (a long upload): what it had not confirmed
                        // stays in the outbox. Left running, it would deliver beside the next
                        // holder of the lease.
                        abort.abort();
                        tracing::warn!("An outbox sink did not stop within 5 s; stopped it.");
                    }
                }
                let _ = leading_tx.send(Some(false));
                held.release().await;
                if stopping {
                    return;
                }
                // After a lost session, give the other instances a turn before trying again.
                tokio::select! {
                    _ = tokio::time::sleep(LEASE_INTERVAL) => {}
                    _ = stop_rx.changed() => return,
                }
            }
        });
        Delivery {
            stop,
            supervisor,
            sinks,
            leading,
        }
    }

    /// Whether this instance delivers now (holds the lease).
    pub fn is_delivering(&self) -> bool {
        *self.leading.borrow() == Some(true)
    }

    /// Waits until what the configured sinks deliver is confirmed, or `deadline` passes (a
    /// graceful shutdown gives the peers a chance to confirm what is queued); returns whether
    /// it emptied. Rows of a sink that is not configured are not waited for.
    pub async fn drain(&self, store: &crate::store::Store, deadline: std::time::Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        let mut leading = self.leading.clone();
        let tried = tokio::time::timeout_at(until, leading.wait_for(Option::is_some)).await;
        if !matches!(tried, Ok(Ok(_))) || !self.is_delivering() {
            // Another instance delivers (or none can now): nothing to wait for here.
            return false;
        }
        loop {
            let waiting = |s: &OutboxStatus| {
                self.sinks
                    .iter()
                    .map(|sink| match sink {
                        Sink::Mqtt => s.mqtt.pending,
                        Sink::S3 => s.s3.pending,
                    })
                    .sum::<i64>()
            };
            match store.outbox_status().await {
                Ok(s) if waiting(&s) == 0 => return true,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot read the outbox while draining it.");
                    return false;
                }
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stops the tasks and gives the lease back (what is not delivered stays in the outbox for
    /// the next deliverer).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.supervisor).await;
    }
}

/// One task per configured sink, and the switch that stops them.
fn spawn_sinks(
    store: &crate::store::Store,
    config: &OutboxConfig,
    image_dir: std::path::PathBuf,
    state_dir: std::path::PathBuf,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    if config.mqtt.is_some() {
        let (store, config, stop) = (store.clone(), config.clone(), rx.clone());
        tasks.push(tokio::spawn(keep_delivering(
            "MQTT event delivery",
            rx.clone(),
            move || run_mqtt(store.clone(), config.clone(), stop.clone()),
        )));
    }
    if config.upload.is_some() {
        let (store, config, stop) = (store.clone(), config.clone(), rx.clone());
        tasks.push(tokio::spawn(keep_delivering(
            "Sample upload",
            rx,
            move || {
                run_upload(
                    store.clone(),
                    config.clone(),
                    image_dir.clone(),
                    state_dir.clone(),
                    stop.clone(),
                )
            },
        )));
    }
    (stop, tasks)
}

/// How long a sink that failed waits before it starts again.
const SINK_RESTART: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs a sink until `stop`. A sink that fails (its TLS files became unreadable, its state
/// folder unwritable) starts again after [`SINK_RESTART`]: this instance holds the delivery
/// lease, so no other would deliver in its place, and what waits in the outbox goes out once
/// the cause is fixed.
async fn keep_delivering<F, Fut>(
    what: &'static str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), OutboxError>>,
{
    while !*stop.borrow() {
        let Err(e) = start().await else { return };
        tracing::error!(
            error = %e,
            retry_in_s = SINK_RESTART.as_secs(),
            "{what} stopped; it starts again shortly."
        );
        tokio::select! {
            _ = tokio::time::sleep(SINK_RESTART) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_failed_sink_starts_again_until_it_ends_or_is_stopped() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let starts = Arc::new(AtomicUsize::new(0));
        let counted = starts.clone();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        // Fails twice (its certificate missing), then runs to its end.
        tokio::time::timeout(
            SINK_RESTART * 3,
            keep_delivering("test sink", rx, move || {
                let n = counted.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n < 2 {
                        Err(OutboxError::Tls("ca.pem: no such file".into()))
                    } else {
                        Ok(())
                    }
                }
            }),
        )
        .await
        .expect("ends once the sink ends");
        assert_eq!(starts.load(Ordering::SeqCst), 3);

        // A stop while it waits to start again ends it at once.
        let (stop, rx) = tokio::sync::watch::channel(false);
        let waiting = tokio::spawn(keep_delivering("test sink", rx, || async {
            Err(OutboxError::Tls("ca.pem: no such file".into()))
        }));
        tokio::time::sleep(SINK_RESTART / 2).await;
        stop.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_millis(10), waiting)
            .await
            .expect("stopped at once")
            .unwrap();
    }

    #[test]
    fn secrets_are_redacted_and_problems_name_their_keys() {
        let c = OutboxConfig {
            max_bytes: 10,
            mqtt: Some(MqttOutConfig {
                username: Some("line3".into()),
                password: Some("hunter22".into()),
                ..MqttOutConfig::default()
            }),
            upload: Some(UploadConfig {
                destination: "s3://b/p".into(),
                access_key_id: Some("AKIA".into()),
                secret_access_key: Some("wJalr".into()),
                ..UploadConfig::default()
            }),
            ..OutboxConfig::default()
        };
        let shown = toml::to_string(&c.redacted()).unwrap();
        assert!(
            !shown.contains("hunter22") && !shown.contains("wJalr"),
            "{shown}"
        );
        assert!(shown.contains("AKIA"), "key ids are not secret: {shown}");
        let p = c.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("outbox.max_bytes = 10"), "{p:?}");
        assert!(c.enabled() && !OutboxConfig::default().enabled());
    }
}
