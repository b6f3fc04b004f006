//! Event delivery over MQTT (rumqttc) at QoS 1: a row leaves the outbox only on its PUBACK.
//!
//! rumqttc 0.25 reports the packet id of each publish it writes (`Outgoing::Publish(pkid)`),
//! in the order the publishes were requested, and the broker's `PubAck(pkid)`. The deliverer
//! requests publishes one by one, so the n-th `Outgoing::Publish` belongs to its n-th request;
//! that gives the pkid of every row, and the PUBACK of that pkid deletes it.
//!
//! Sessions are clean: after a reconnect nothing is left in flight inside rumqttc, and the
//! deliverer starts again from the oldest undelivered row. An event whose PUBACK was lost is
//! therefore sent twice, with the same `event_id`; nothing is lost and rows go out in order.
//!
//! Topics under `topic_prefix`: `inspections`, `rejects`, `tasks`, `ncrs`, `lots`, `models`,
//! `events` (every other audited change), `health` (periodic, not queued) and `status` (retained `online`, with a retained `offline`
//! last will). Messages stay under `max_message_bytes` (Greengrass IPC allows 128 KB): a
//! larger event is sent as a reference to its record (`data_ref`) instead of its data.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::queue::{Sink, maybe_clear_alarm};
use super::{OutboxConfig, OutboxError, SCHEMA_VERSION};
use crate::store::Store;

/// `[outbox.mqtt]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttOutConfig {
    pub host: String,
    pub port: u16,
    /// Client id; AWS IoT Core wants the thing name.
    pub client_id: String,
    /// Prefix of every topic, e.g. `plant1/line3/linesight`.
    pub topic_prefix: String,
    pub username: Option<String>,
    /// Shown as `***` by `linesight config show`.
    pub password: Option<String>,
    pub keep_alive_s: u64,
    /// Publishes awaiting their PUBACK at most.
    pub inflight: u16,
    /// Largest message sent as is; larger events are sent as a reference.
    pub max_message_bytes: usize,
    /// Period of the health message; 0 = none.
    pub health_interval_s: u64,
    /// TLS with a client certificate (AWS IoT Core); plain TCP when absent.
    pub tls: Option<MqttTlsConfig>,
}

/// `[outbox.mqtt.tls]`: PEM files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// CA bundle that signed the broker's certificate (AmazonRootCA1.pem for IoT Core).
    pub ca_file: std::path::PathBuf,
    /// Client certificate and its private key; both or neither.
    pub client_cert_file: Option<std::path::PathBuf>,
    pub client_key_file: Option<std::path::PathBuf>,
}

impl Default for MqttOutConfig {
    fn default() -> Self {
        MqttOutConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "linesight".into(),
            topic_prefix: "linesight".into(),
            username: None,
            password: None,
            keep_alive_s: 30,
            inflight: 32,
            max_message_bytes: 128_000,
            health_interval_s: 30,
            tls: None,
        }
    }
}

impl MqttOutConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.host.is_empty() {
            p.push("outbox.mqtt.host is empty".into());
        }
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            p.push(format!(
                "outbox.mqtt.client_id = {:?}: must be 1 to 128 characters",
                self.client_id
            ));
        }
        if self.topic_prefix.is_empty()
            || self.topic_prefix.contains(['+', '#'])
            || self.topic_prefix.ends_with('/')
        {
            p.push(format!(
                "outbox.mqtt.topic_prefix = {:?}: must be non-empty, without + or #, not ending in /",
                self.topic_prefix
            ));
        }
        if !(1..=1000).contains(&self.inflight) {
            p.push(format!(
                "outbox.mqtt.inflight = {}: must be between 1 and 1000",
                self.inflight
            ));
        }
        if !(1024..=131_072).contains(&self.max_message_bytes) {
            p.push(format!(
                "outbox.mqtt.max_message_bytes = {}: must be between 1024 and 131072 (Greengrass IPC limit)",
                self.max_message_bytes
            ));
        }
        if !(5..=3600).contains(&self.keep_alive_s) {
            p.push(format!(
                "outbox.mqtt.keep_alive_s = {}: must be between 5 and 3600",
                self.keep_alive_s
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            p.push(
                "outbox.mqtt.password is set without outbox.mqtt.username: MQTT sends a password only with a user name".into(),
            );
        }
        if let Some(t) = &self.tls {
            if t.client_cert_file.is_some() != t.client_key_file.is_some() {
                p.push(
                    "outbox.mqtt.tls: set both client_cert_file and client_key_file, or neither"
                        .into(),
                );
            }
            // Read when delivery starts; missing, they would stop it long after start-up.
            for (key, path) in [
                ("outbox.mqtt.tls.ca_file", Some(&t.ca_file)),
                (
                    "outbox.mqtt.tls.client_cert_file",
                    t.client_cert_file.as_ref(),
                ),
                (
                    "outbox.mqtt.tls.client_key_file",
                    t.client_key_file.as_ref(),
                ),
            ] {
                if let Some(path) = path {
                    p.extend(crate::config::file_problem(key, path));
                }
            }
        }
        p
    }

    fn options(&self) -> Result<MqttOptions, OutboxError> {
        let mut o = MqttOptions::new(&self.client_id, &self.host, self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_s));
        o.set_clean_session(true);
        o.set_inflight(self.inflight);
        // Headroom above the message bound for topic and header.
        o.set_max_packet_size(256 * 1024, 256 * 1024);
        o.set_last_will(LastWill::new(
            format!("{}/status", self.topic_prefix),
            status_payload(&self.client_id, "offline"),
            QoS::AtLeastOnce,
            true,
        ));
        if let Some(user) = &self.username {
            o.set_credentials(user, self.password.clone().unwrap_or_default());
        }
        if let Some(tls) = &self.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| OutboxError::Tls(format!("{}: {e}", p.display())))
            };
            let ca = read(&tls.ca_file)?;
            let client_auth = match (&tls.client_cert_file, &tls.client_key_file) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            o.set_transport(Transport::tls(ca, client_auth, None));
        }
        Ok(o)
    }
}

fn status_payload(client_id: &str, status: &str) -> String {
    serde_json::json!({"schema": SCHEMA_VERSION, "client_id": client_id, "status": status})
        .to_string()
}

/// The topic (below the prefix) of an event kind.
pub fn topic_for(kind: &str) -> &'static str {
    match kind.split('.').next().unwrap_or_default() {
        "inspection" if kind == "inspection.reject" => "rejects",
        "inspection" => "inspections",
        "task" => "tasks",
        "ncr" | "signature" => "ncrs",
        "lot" => "lots",
        "model" => "models",
        "health" => "health",
        _ => "events",
    }
}

/// The message for one row: the stored envelope, or a reference when it is too large.
fn message(payload: &str, max: usize) -> Vec<u8> {
    if payload.len() <= max {
        return payload.as_bytes().to_vec();
    }
    let v: serde_json::Value = serde_json::from_str(payload).unwrap_or_default();
    serde_json::json!({
        "schema": SCHEMA_VERSION,
        "event_id": v["event_id"],
        "kind": v["kind"],
        "key": v["key"],
        "at_ms": v["at_ms"],
        "data_ref": {
            "entity": v["data"]["entity"],
            "entity_id": v["data"]["entity_id"],
            "audit_seq": v["data"]["audit_seq"],
            "audit_hash": v["data"]["audit_hash"],
        },
        "data_bytes": payload.len(),
    })
    .to_string()
    .into_bytes()
}

/// Polls the event loop in its own task and forwards what it yields. After an error it waits
/// for `resume` before reconnecting, and first drops every request still queued: the deliverer
/// publishes only between a ConnAck and the next error, so the n-th `Outgoing::Publish` of a
/// connection always belongs to its n-th request of that connection.
fn spawn_poller(
    mut events: rumqttc::EventLoop,
    tx: tokio::sync::mpsc::Sender<Result<Event, rumqttc::ConnectionError>>,
    mut resume: tokio::sync::mpsc::Receiver<()>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = events.poll().await;
            let failed = event.is_err();
            if tx.send(event).await.is_err() {
                return;
            }
            if failed {
                if resume.recv().await.is_none() {
                    return;
                }
                forget_connection(&mut events);
            }
        }
    })
}

/// Leaves nothing of the failed connection in `events` for the next one: the requests still
/// queued (the deliverer sends every unconfirmed row again after the ConnAck), and the
/// event loop's own state. rumqttc's `clean` keeps two things a reconnect would inherit:
/// - events it queued before a write that then failed, such as `Outgoing::Publish(pkid)` of
///   a packet that never left; the next connection would yield it first, and the deliverer
///   would pair the wrong packet id with its first row, then delete that row on another
///   packet's PUBACK;
/// - a packet-id collision, which stops new requests until it resolves: never, on a new
///   connection, so nothing would be delivered again until a restart.
///
/// A fresh state (packet ids from 1, nothing in flight) is what a new clean session needs.
fn forget_connection(events: &mut rumqttc::EventLoop) {
    events.clean();
    events.pending.clear();
    events.state = rumqttc::MqttState::new(
        events.mqtt_options.inflight(),
        events.mqtt_options.manual_acks(),
    );
}

/// Delivers MQTT rows until `stop` turns true; reconnects with back-off. Returns only on stop
/// (or when the TLS files cannot be read).
pub async fn run_mqtt(
    store: Store,
    config: OutboxConfig,
    mut stop: watch::Receiver<bool>,
) -> Result<(), OutboxError> {
    let Some(m) = config.mqtt.clone() else {
        return Ok(());
    };
    let (client, events) = AsyncClient::new(m.options()?, usize::from(m.inflight) * 2 + 8);
    let (event_tx, mut event_rx) = tokio::sync::mpsc::channel(256);
    let (resume_tx, resume_rx) = tokio::sync::mpsc::channel(1);
    let poller = spawn_poller(events, event_tx, resume_rx);
    let status_topic = format!("{}/status", m.topic_prefix);
    let clear_below = config.alarm_clears_below();
    let mut connected = false;
    // Publishes requested on this connection whose pkid is not known yet (`None`: status and
    // health messages).
    let mut requested: VecDeque<Option<i64>> = VecDeque::new();
    // pkid → outbox row awaiting its PUBACK.
    let mut inflight: HashMap<u16, Option<i64>> = HashMap::new();
    let mut acked: Vec<i64> = Vec::new();
    let mut ready: VecDeque<super::OutboxRow> = VecDeque::new();
    let mut cursor = 0i64;
    let mut backoff = Duration::from_millis(200);
    let mut health = tokio::time::interval(Duration::from_secs(m.health_interval_s.max(1)));
    let mut idle = tokio::time::interval(Duration::from_millis(config.poll_interval_ms));
    loop {
        if !acked.is_empty() {
            match store.outbox_ack(Sink::Mqtt, &acked).await {
                Ok(_) => acked.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot delete delivered outbox rows; retrying.")
                }
            }
            let _ = maybe_clear_alarm(&store, clear_below).await;
        }
        while connected && requested.len() + inflight.len() < usize::from(m.inflight) {
            if ready.is_empty() {
                match store
                    .outbox_pending(Sink::Mqtt, cursor, i64::from(config.batch_size))
                    .await
                {
                    Ok(rows) => ready.extend(rows),
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot read the outbox.");
                        break;
                    }
                }
            }
            let Some(row) = ready.pop_front() else {
                break;
            };
            let topic = format!("{}/{}", m.topic_prefix, topic_for(&row.kind));
            let body = message(&row.payload, m.max_message_bytes);
            if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, body) {
                tracing::warn!(error = %e, "MQTT publish request refused.");
                ready.push_front(row);
                break;
            }
            cursor = row.id;
            requested.push_back(Some(row.id));
        }
        let event = tokio::select! {
            e = event_rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = stop.changed() => break,
            _ = idle.tick() => continue,
            _ = health.tick(), if connected && m.health_interval_s > 0 => {
                // The audit trail's newest entry goes out with it: kept by a subscriber, it
                // is an anchor for `audit verify --expect` that the site cannot take back.
                let head = store.audit_head().await.ok().flatten();
                if let Ok(status) = store.outbox_status().await
                    && client
                        .try_publish(
                            format!("{}/health", m.topic_prefix),
                            QoS::AtLeastOnce,
                            false,
                            serde_json::json!({"schema": SCHEMA_VERSION, "client_id": m.client_id, "outbox": status, "audit_head": head}).to_string(),
                        )
                        .is_ok()
                {
                    requested.push_back(None);
                }
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(broker = %format!("{}:{}", m.host, m.port), "MQTT outbox connected.");
                connected = true;
                // The back-off is not reset here but at the first row the broker confirms: a
                // row the broker answers by disconnecting (a policy that denies its topic)
                // must not have the outbox reconnect five times a second.
                // Clean session: whatever was in flight is gone; resend from the oldest row.
                requested.clear();
                inflight.clear();
                ready.clear();
                cursor = 0;
                if client
                    .try_publish(
                        &status_topic,
                        QoS::AtLeastOnce,
                        true,
                        status_payload(&m.client_id, "online"),
                    )
                    .is_ok()
                {
                    requested.push_back(None);
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                if let Some(row) = requested.pop_front() {
                    inflight.insert(pkid, row);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(Some(id)) = inflight.remove(&ack.pkid) {
                    acked.push(id);
                    backoff = Duration::from_millis(200);
                }
            }
            Ok(_) => {}
            Err(e) => {
                if connected {
                    tracing::warn!(error = %e, "MQTT outbox disconnected; reconnecting.");
                }
                connected = false;
                requested.clear();
                inflight.clear();
                ready.clear();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                let _ = resume_tx.send(()).await;
            }
        }
    }
    if !acked.is_empty() {
        let _ = store.outbox_ack(Sink::Mqtt, &acked).await;
    }
    if connected {
        // A clean stop says so; the last will covers the others.
        let _ = client.try_publish(
            &status_topic,
            QoS::AtLeastOnce,
            true,
            status_payload(&m.client_id, "offline"),
        );
        let _ = client.try_disconnect();
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                e = event_rx.recv() => if !matches!(e, Some(Ok(_))) { break },
                _ = &mut deadline => break,
            }
        }
    }
    drop(resume_tx);
    poller.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_events_are_sent_as_references() {
        let big = serde_json::json!({
            "schema": 1, "event_id": "e1", "kind": "inspection.create", "key": "k", "at_ms": 5,
            "data": {"entity": "inspection", "entity_id": "42", "audit_seq": 7, "audit_hash": "ab", "new_value": "x".repeat(200_000)},
        })
        .to_string();
        let m = message(&big, 128_000);
        assert!(m.len() < 1000);
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        assert_eq!(v["event_id"], "e1");
        assert_eq!(v["data_ref"]["entity_id"], "42");
        assert_eq!(
            v["data_ref"]["audit_hash"], "ab",
            "an anchor for `audit verify --expect`"
        );
        assert_eq!(message("{}", 10), b"{}");
        assert_eq!(topic_for("inspection.reject"), "rejects");
        assert_eq!(topic_for("ncr.approve"), "ncrs");
    }

    /// What a write that failed after rumqttc queued its `Outgoing::Publish` leaves in the
    /// event loop (and a collision pending), then the reconnection the poller makes: the new
    /// connection's first outgoing publish must be the one requested on it, and it must go
    /// out. Against the real Mosquitto on 127.0.0.1:1883 (scripts/test starts it).
    #[tokio::test]
    async fn a_reconnection_inherits_nothing_of_the_failed_connection() {
        use rumqttc::{Event, Outgoing, Packet, QoS};
        let unique = format!(
            "ls-forget-{}-{}",
            std::process::id(),
            crate::quality::now_ms()
        );
        let mut options = rumqttc::MqttOptions::new(&unique, "127.0.0.1", 1883);
        options.set_clean_session(true);
        let (client, mut events) = AsyncClient::new(options, 16);
        async fn next(events: &mut rumqttc::EventLoop) -> Event {
            tokio::time::timeout(Duration::from_secs(5), events.poll())
                .await
                .expect("an event within 5 s")
                .expect("Mosquitto on 127.0.0.1:1883")
        }
        assert!(matches!(
            next(&mut events).await,
            Event::Incoming(Packet::ConnAck(_))
        ));
        // The leftovers of a failed write.
        events
            .state
            .events
            .push_back(Event::Outgoing(Outgoing::Publish(9)));
        let mut held = rumqttc::Publish::new(format!("{unique}/held"), QoS::AtLeastOnce, "x");
        held.pkid = 3;
        events.state.collision = Some(held);

        forget_connection(&mut events);
        assert!(matches!(
            next(&mut events).await,
            Event::Incoming(Packet::ConnAck(_))
        ));
        client
            .publish(format!("{unique}/t"), QoS::AtLeastOnce, false, "row")
            .await
            .unwrap();
        let mut published = None;
        while published.is_none() {
            match next(&mut events).await {
                Event::Outgoing(Outgoing::Publish(pkid)) => published = Some(pkid),
                Event::Incoming(Packet::PubAck(ack)) => {
                    panic!(
                        "a PUBACK ({}) before any publish on this connection",
                        ack.pkid
                    )
                }
                _ => {}
            }
        }
        assert_eq!(
            published,
            Some(1),
            "the first publish of a fresh connection"
        );
        loop {
            if let Event::Incoming(Packet::PubAck(ack)) = next(&mut events).await {
                assert_eq!(ack.pkid, 1);
                break;
            }
        }
    }

    #[test]
    fn problems_name_the_field() {
        let c = MqttOutConfig {
            topic_prefix: "a/#".into(),
            max_message_bytes: 1 << 20,
            ..MqttOutConfig::default()
        };
        let p = c.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("outbox.mqtt.topic_prefix"));
    }

    #[test]
    fn missing_tls_files_and_a_password_without_user_are_problems() {
        let c = MqttOutConfig {
            password: Some("secret".into()),
            tls: Some(MqttTlsConfig {
                ca_file: "/nonexistent/ca.pem".into(),
                client_cert_file: Some("/nonexistent/cert.pem".into()),
                client_key_file: Some("/nonexistent/key.pem".into()),
            }),
            ..MqttOutConfig::default()
        };
        let p = c.problems().join("\n");
        for key in [
            "outbox.mqtt.password is set without outbox.mqtt.username",
            "outbox.mqtt.tls.ca_file = /nonexistent/ca.pem: No such file",
            "outbox.mqtt.tls.client_cert_file = /nonexistent/cert.pem",
            "outbox.mqtt.tls.client_key_file = /nonexistent/key.pem",
        ] {
            assert!(p.contains(key), "{key} missing from\n{p}");
        }
        assert!(!p.contains("secret"), "{p}");
    }
}
