//! Triggers over MQTT: a message on `<prefix>/<camera>` (QoS 1) asks camera `<camera>` to
//! inspect its next frame. The payload is JSON, every field optional:
//! `{"id": "T-1", "part_id": "P-42", "lot": "L-7", "recipe": "washer-m8"}` (an empty payload is
//! a trigger without identity).
//!
//! The session is persistent (clean session off, fixed client id), so the broker keeps QoS 1
//! triggers sent while linesight is disconnected; acknowledgements are manual and sent only
//! after the trigger has been queued or answered, so a trigger the broker saw acknowledged has
//! a result coming. A bad payload or an unknown camera is logged and acknowledged (resending it
//! cannot help).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Trigger, TriggerError, Triggers};

/// `[pipeline.mqtt_triggers]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttTriggerConfig {
    pub host: String,
    pub port: u16,
    /// Client id; keep it stable so the broker keeps the session across restarts.
    pub client_id: String,
    /// Topic prefix; linesight subscribes to `<topic_prefix>/+`.
    pub topic_prefix: String,
}

impl Default for MqttTriggerConfig {
    fn default() -> Self {
        MqttTriggerConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: "linesight-triggers".into(),
            topic_prefix: "linesight/triggers".into(),
        }
    }
}

impl MqttTriggerConfig {
    /// Problems with these settings, each naming its key: settings the broker would refuse
    /// (reconnecting for ever) or a topic filter that would never match a trigger.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.host.trim().is_empty() {
            p.push("pipeline.mqtt_triggers.host = \"\": name the broker".to_string());
        }
        if self.port == 0 {
            p.push("pipeline.mqtt_triggers.port = 0: must be between 1 and 65535".to_string());
        }
        // A persistent session needs a client id of the client's own (MQTT 3.1.1 §3.1.3.1).
        if self.client_id.is_empty() || self.client_id.len() > 256 {
            p.push(format!(
                "pipeline.mqtt_triggers.client_id = {:?}: must be 1 to 256 bytes (the broker \
                 keeps the trigger session under it)",
                self.client_id
            ));
        }
        let prefix = &self.topic_prefix;
        if prefix.is_empty()
            || prefix.len() > 200
            || prefix.starts_with('/')
            || prefix.ends_with('/')
            || prefix.contains("//")
            || prefix.contains(['#', '+', '\0'])
        {
            p.push(format!(
                "pipeline.mqtt_triggers.topic_prefix = {prefix:?}: must be 1 to 200 bytes of topic \
                 levels such as \"linesight/triggers\", without '#', '+', empty levels or a \
                 leading or trailing '/'"
            ));
        }
        p
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    part_id: Option<String>,
    #[serde(default)]
    lot: Option<String>,
    #[serde(default)]
    recipe: Option<String>,
    #[serde(default)]
    sent_at_ms: Option<i64>,
}

/// Parses one trigger message; the error says what is wrong with it.
pub fn parse(prefix: &str, topic: &str, payload: &[u8]) -> Result<Trigger, String> {
    let camera = topic
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('/'))
        .filter(|c| !c.is_empty() && !c.contains('/'))
        .ok_or_else(|| format!("topic {topic:?} is not {prefix}/<camera>"))?;
    let payload: Payload = if payload.iter().all(u8::is_ascii_whitespace) {
        Payload::default()
    } else {
        serde_json::from_slice(payload).map_err(|e| format!("payload is not a trigger: {e}"))?
    };
    let trigger = Trigger {
        camera: camera.to_string(),
        id: payload.id,
        part_id: payload.part_id,
        lot: payload.lot,
        recipe: payload.recipe,
        sent_at_ms: payload.sent_at_ms,
    };
    trigger.check_labels().map_err(|(_, message)| message)?;
    Ok(trigger)
}

/// Subscribes and fires triggers until `stop` turns true. Reconnects with back-off.
///
/// The connection is polled without pause: the triggers are journalled in arrival order by a
/// task of their own ([`journal_in_order`]), so that a journal slow to take one (a store being
/// retried) does not starve the connection of its keep-alive, which would make the broker drop
/// it and deliver the triggers again. At stop, the acknowledgements already given are sent
/// before the disconnection, so that the next start is not handed triggers journalled here.
pub async fn run(config: MqttTriggerConfig, triggers: Triggers, mut stop: watch::Receiver<bool>) {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options.set_keep_alive(Duration::from_secs(5));
    options.set_clean_session(false);
    options.set_manual_acks(true);
    let (client, mut events) = AsyncClient::new(options, 64);
    let filter = format!("{}/+", config.topic_prefix);
    // Unbounded, but not without limit: the broker sends no more than its in-flight window of
    // unacknowledged triggers per connection, and a reconnection's redeliveries of those
    // still queued are passed over by the journal (see `Arrived::connection`).
    let (arrived, to_journal) = tokio::sync::mpsc::unbounded_channel();
    let links = Arc::new(Links::default());
    let mut journal = tokio::spawn(journal_in_order(
        to_journal,
        client.clone(),
        triggers,
        config.topic_prefix.clone(),
        links.clone(),
        stop.clone(),
    ));
    let mut backoff = Duration::from_millis(200);
    loop {
        let event = tokio::select! {
            e = events.poll() => e,
            _ = stop.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff = Duration::from_millis(200);
                if !ack.session_present {
                    links.sessions_lost.fetch_add(1, Ordering::SeqCst);
                }
                tracing::info!(broker = %format!("{}:{}", config.host, config.port), topic = %filter, "MQTT trigger subscription connected.");
                // Subscribing again on every connection is harmless and covers a broker that
                // lost the session.
                if let Err(e) = client.try_subscribe(&filter, QoS::AtLeastOnce) {
                    tracing::warn!(error = %e, "MQTT subscribe request failed.");
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let item = Arrived {
                    connection: links.connection.load(Ordering::SeqCst),
                    publish,
                    received: super::Received::now(),
                };
                if arrived.send(item).is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                // The connection is over: what came on it is acknowledged on it or not at all.
                links.connection.fetch_add(1, Ordering::SeqCst);
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT trigger connection failed.");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
    drop(arrived);
    // The journal task ends at the stop too: a trigger it was still trying to journal stays
    // unacknowledged (delivered again to the next start); those it journalled were
    // acknowledged. The connection is polled meanwhile, so that an acknowledgement waiting
    // for room in the client's queue gets it; a journal that does not end is left behind.
    let ended = async {
        loop {
            tokio::select! {
                _ = &mut journal => return,
                e = events.poll() => {
                    if e.is_err() {
                        links.connection.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };
    if tokio::time::timeout(STOP_WAIT, ended).await.is_err() {
        journal.abort();
        tracing::warn!(
            "MQTT trigger journal still busy at stop; the trigger it held is delivered again to the next start."
        );
    }
    // The acknowledgements wait in the client's queue until the connection is polled: poll
    // until the disconnection queued behind them has gone out (or the connection is gone).
    // A client queue too full to take the disconnection now takes it once polling has
    // made room.
    let mut queued = client.try_disconnect().is_ok();
    let flushed = async {
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
            if !queued {
                queued = client.try_disconnect().is_ok();
            }
        }
    };
    if tokio::time::timeout(STOP_WAIT, flushed).await.is_err() {
        tracing::warn!(
            "MQTT trigger acknowledgements not all sent at stop; the broker will deliver those triggers again (answered as duplicates when they carry an id)."
        );
    }
}

/// What the journal task needs to know of the connections.
#[derive(Default)]
struct Links {
    /// Counts the connections that ended (an error from the event loop): a message carries
    /// the count it came under ([`Arrived::connection`]).
    connection: AtomicU64,
    /// Counts the connections on which the broker had not kept the session: the packet ids
    /// of earlier messages then mean nothing, and [`Redeliveries`] forgets them.
    sessions_lost: AtomicU64,
}

/// How long each step of the stop (the journal's last trigger, sending the acknowledgements)
/// may take.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// A trigger message as it came, with the connection it came on.
struct Arrived {
    /// [`Links::connection`] when it came. A message of an earlier connection that was not
    /// acknowledged on it is delivered again by the broker on the next one (the session is
    /// persistent), and its packet id may name another message on the new connection: it is
    /// not acknowledged there, and a copy delivered again is recognised ([`Redeliveries`]).
    connection: u64,
    publish: rumqttc::Publish,
    /// When it came off the connection: its deadline counts from then, not from when the
    /// journal takes it.
    received: super::Received,
}

/// The ids given to triggers that came without one, by the message that carried them, for the
/// broker's redeliveries of those messages: a copy delivered again (the `dup` flag, same packet
/// id, topic and payload) gets the id its first copy got, and the journal answers it as a
/// duplicate instead of inspecting the part under the camera a second time.
#[derive(Default)]
struct Redeliveries {
    recent: std::collections::VecDeque<(u16, String, axum::body::Bytes, String)>,
    /// [`Links::sessions_lost`] when last seen.
    sessions_lost: u64,
}

/// Messages remembered for their redeliveries: more than a broker keeps in flight.
const REMEMBERED: usize = 1024;

impl Redeliveries {
    /// Forgets every message when the broker has lost the session since the last call
    /// (`sessions_lost` has changed): it numbers its messages afresh, and a packet id
    /// remembered from before would match an unrelated message.
    fn follow(&mut self, sessions_lost: u64) {
        if sessions_lost != self.sessions_lost {
            self.sessions_lost = sessions_lost;
            self.recent.clear();
        }
    }

    fn id_of(&self, p: &rumqttc::Publish) -> Option<&str> {
        if !p.dup {
            return None;
        }
        self.recent
            .iter()
            .rev()
            .find(|(pkid, topic, payload, _)| {
                *pkid == p.pkid && *topic == p.topic && *payload == p.payload
            })
            .map(|(.., id)| id.as_str())
    }

    fn remember(&mut self, p: &rumqttc::Publish, id: &str) {
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent
            .push_back((p.pkid, p.topic.clone(), p.payload.clone(), id.to_owned()));
    }
}

/// Journals the triggers in the order they came and acknowledges each once it is durable (or
/// refused for good: a bad payload, an unknown camera). Returns at `stop`, or when the
/// connection's loop has ended.
async fn journal_in_order(
    mut arrived: tokio::sync::mpsc::UnboundedReceiver<Arrived>,
    client: AsyncClient,
    triggers: Triggers,
    prefix: String,
    links: Arc<Links>,
    mut stop: watch::Receiver<bool>,
) {
    let mut redeliveries = Redeliveries::default();
    loop {
        let Arrived {
            connection: came_on,
            publish,
            received,
        } = tokio::select! {
            p = arrived.recv() => match p {
                Some(p) => p,
                None => return,
            },
            _ = stop.changed() => return,
        };
        redeliveries.follow(links.sessions_lost.load(Ordering::SeqCst));
        match parse(&prefix, &publish.topic, &publish.payload) {
            Ok(mut trigger) => {
                // Acknowledged only once durable: while the journal cannot take it, keep
                // trying (the triggers behind it would fail the same way); at shutdown leave
                // it unacknowledged, and the broker redelivers it next time. The id is given
                // once, before the tries: a try whose commit went through although it
                // reported an error is then recognised as a duplicate by the next one instead
                // of being inspected twice; so is a copy the broker delivers again.
                if trigger.id.is_none() {
                    let id = match redeliveries.id_of(&publish) {
                        Some(id) => id.to_owned(),
                        None => triggers.new_id(&trigger.camera),
                    };
                    redeliveries.remember(&publish, &id);
                    trigger.id = Some(id);
                }
                let mut wait = Duration::from_millis(100);
                loop {
                    match triggers.fire_received(trigger.clone(), received).await {
                        Err(e @ TriggerError::Journal(_)) => {
                            tracing::warn!(topic = %publish.topic, error = %e, retry_in_ms = wait.as_millis() as u64, "MQTT trigger not journalled yet; retrying.");
                            tokio::select! {
                                () = tokio::time::sleep(wait) => {}
                                _ = stop.changed() => return,
                            }
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                        // Not taken: unacknowledged, the broker delivers it again to the next
                        // start.
                        Err(TriggerError::ShuttingDown) => return,
                        Err(e) => {
                            tracing::warn!(topic = %publish.topic, error = %e, "MQTT trigger refused.");
                            break;
                        }
                        Ok(_) => break,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(topic = %publish.topic, error = %e, "Bad MQTT trigger ignored.")
            }
        }
        // On a later connection this packet id names another message, or none: the broker
        // delivers this one again, and its copy is acknowledged.
        if came_on != links.connection.load(Ordering::SeqCst) {
            continue;
        }
        if let Err(e) = client.ack(&publish).await {
            tracing::warn!(error = %e, "MQTT acknowledgement failed.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_delivered_again_gets_the_id_its_first_copy_got() {
        let message = |pkid: u16, dup: bool, payload: &str| {
            let mut p = rumqttc::Publish::new("lt/trig/press", QoS::AtLeastOnce, payload);
            p.pkid = pkid;
            p.dup = dup;
            p
        };
        let mut seen = Redeliveries::default();
        let first = message(7, false, r#"{"part_id":"P-1"}"#);
        assert_eq!(seen.id_of(&first), None, "a first copy is new");
        seen.remember(&first, "press-1-0");
        assert_eq!(
            seen.id_of(&message(7, true, r#"{"part_id":"P-1"}"#)),
            Some("press-1-0"),
            "delivered again"
        );
        // Not a redelivery: a new message (no dup flag) under a packet id used again, or
        // another message.
        assert_eq!(seen.id_of(&message(7, false, r#"{"part_id":"P-1"}"#)), None);
        assert_eq!(seen.id_of(&message(7, true, r#"{"part_id":"P-2"}"#)), None);
        assert_eq!(seen.id_of(&message(8, true, r#"{"part_id":"P-1"}"#)), None);
        // The broker lost the session: packet ids start afresh, nothing is matched.
        seen.follow(0);
        assert!(
            seen.id_of(&message(7, true, r#"{"part_id":"P-1"}"#))
                .is_some()
        );
        seen.follow(1);
        assert_eq!(seen.id_of(&message(7, true, r#"{"part_id":"P-1"}"#)), None);
        seen.remember(&first, "press-1-0");
        for n in 0..REMEMBERED as u16 {
            seen.remember(&message(n + 100, false, ""), "x");
        }
        assert_eq!(
            seen.id_of(&message(7, true, r#"{"part_id":"P-1"}"#)),
            None,
            "only the recent ones are kept"
        );
    }

    #[test]
    fn topics_and_payloads_are_checked() {
        let t = parse(
            "lt/trig",
            "lt/trig/press-1",
            br#"{"id":"T1","part_id":"P","lot":"L","recipe":"r"}"#,
        )
        .unwrap();
        assert_eq!(t.camera, "press-1");
        assert_eq!(
            (
                t.id.as_deref(),
                t.part_id.as_deref(),
                t.lot.as_deref(),
                t.recipe.as_deref()
            ),
            (Some("T1"), Some("P"), Some("L"), Some("r"))
        );
        assert_eq!(parse("lt/trig", "lt/trig/cam", b"").unwrap().camera, "cam");
        assert!(
            parse("lt/trig", "other/cam", b"")
                .unwrap_err()
                .contains("not lt/trig/<camera>")
        );
        assert!(
            parse("lt/trig", "lt/trig/cam", b"{\"colour\":1}")
                .unwrap_err()
                .contains("colour")
        );
        // A blank part id or lot would be refused by the record after the inspection.
        for blank in [
            br#"{"part_id":"  "}"#.as_slice(),
            br#"{"lot":""}"#,
            br#"{"id":" "}"#,
        ] {
            let e = parse("lt/trig", "lt/trig/cam", blank).unwrap_err();
            assert!(e.contains("is blank"), "{e}");
        }
        let long = format!("{{\"lot\":\"{}\"}}", "x".repeat(300));
        assert!(
            parse("lt/trig", "lt/trig/cam", long.as_bytes())
                .unwrap_err()
                .contains("lot")
        );
    }
}
