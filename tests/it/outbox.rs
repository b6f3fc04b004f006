//! The delivery outbox: a model-based test of the queue (append / deliver / ack / crash /
//! restart against a `VecDeque`), events written with their records on both databases, and
//! fault tests against real peers: a private Mosquitto restarted during a stream of events,
//! and a loopback S3 server (moto) cut off mid-stream.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use linesight::outbox::{
    Delivery, MqttOutConfig, OutboxConfig, SamplingConfig, Sink, UploadConfig, append_event,
    delivery_lease_held, metrics_text, report_backlog,
};
use linesight::quality::{NewInspection, QualityConfig, Role, TaskAction, Verdict};
use linesight::store::{NewUser, Store, StoreConfig};
use proptest::prelude::*;

use crate::quality::{Db, postgres, sqlite};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, what: &str) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on 127.0.0.1:{port}");
}

/// A peer binary, or `None` (test skipped, saying so) when it is absent, unless
/// `LINESIGHT_REQUIRE_SHARED_DATA=1` (CI), where its absence fails the test.
fn peer(path: &Path, installed_by: &str) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path.to_path_buf());
    }
    if std::env::var("LINESIGHT_REQUIRE_SHARED_DATA").as_deref() == Ok("1") {
        panic!(
            "{} is missing and LINESIGHT_REQUIRE_SHARED_DATA=1 ({installed_by})",
            path.display()
        );
    }
    eprintln!("SKIPPED: {} is missing ({installed_by})", path.display());
    None
}

fn inspection(n: usize, score: f64, image_ref: Option<String>) -> NewInspection {
    NewInspection {
        part_id: format!("P{n}"),
        lot: "L1".into(),
        line: "line-1".into(),
        recipe: "washer".into(),
        camera: if n.is_multiple_of(2) { "cam0" } else { "cam1" }.into(),
        model_name: "padim".into(),
        model_sha256: "ab".repeat(32),
        threshold: 0.5,
        score,
        verdict: if score > 0.5 {
            Verdict::Defect
        } else {
            Verdict::Good
        },
        regions_json: "[]".into(),
        image_ref,
        overlay_ref: None,
        timings_json: "{}".into(),
        source: "automatic".into(),
        defect_class: None,
    }
}

fn quiet_quality() -> QualityConfig {
    QualityConfig {
        accept_sampling: false,
        // No reject-rate NCRs: the streams below are mostly rejects on purpose.
        reject_rate_alert: 1.0,
        ..QualityConfig::default()
    }
}

fn mqtt_outbox(port: u16, prefix: &str) -> OutboxConfig {
    OutboxConfig {
        poll_interval_ms: 20,
        mqtt: Some(MqttOutConfig {
            port,
            client_id: format!("lt-test-pub-{port}"),
            topic_prefix: prefix.into(),
            inflight: 8,
            health_interval_s: 0,
            keep_alive_s: 5,
            ..MqttOutConfig::default()
        }),
        ..OutboxConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Model-based test of the queue.

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    /// Hand up to n rows to the (simulated) peer.
    Deliver(u8),
    /// The peer confirms the i-th row in flight (modulo their number).
    Ack(u8),
    /// The process dies: pools dropped without closing, nothing in flight survives.
    Crash,
    /// Clean stop and start.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..4).prop_map(Op::Append),
        3 => (1u8..6).prop_map(Op::Deliver),
        3 => any::<u8>().prop_map(Op::Ack),
        1 => Just(Op::Crash),
        1 => Just(Op::Restart),
    ]
}

async fn reopen(config: &StoreConfig, outbox: &OutboxConfig) -> Store {
    Store::open(config)
        .await
        .unwrap()
        .with_outbox(outbox.clone())
}

/// Runs `ops` against the store and a `VecDeque` model of what must still be delivered.
async fn run_model(db: &Db, ops: Vec<Op>) {
    let outbox = mqtt_outbox(1, "model");
    let mut store = reopen(&db.config, &outbox).await;
    // (event id, key) of every undelivered event, in append order.
    let mut model: VecDeque<(String, String)> = VecDeque::new();
    let mut appended: Vec<(String, String)> = Vec::new();
    // Rows handed to the peer and not confirmed yet: (row id, event id).
    let mut inflight: Vec<(i64, String)> = Vec::new();
    let mut cursor = 0;
    // What the peer received, in order (duplicates allowed).
    let mut received: Vec<String> = Vec::new();
    for op in ops {
        match op {
            Op::Append(k) => {
                let key = format!("k{k}");
                let id = append_event(&store, "model.test", &key, serde_json::json!({"k": k}))
                    .await
                    .unwrap()
                    .expect("outbox not full");
                model.push_back((id.clone(), key.clone()));
                appended.push((id, key));
            }
            Op::Deliver(n) => {
                let rows = store
                    .outbox_pending(Sink::Mqtt, cursor, i64::from(n))
                    .await
                    .unwrap();
                for r in rows {
                    cursor = r.id;
                    received.push(r.event_id.clone());
                    inflight.push((r.id, r.event_id));
                }
            }
            Op::Ack(i) => {
                if !inflight.is_empty() {
                    let (row, id) = inflight.remove(usize::from(i) % inflight.len());
                    assert_eq!(store.outbox_ack(Sink::Mqtt, &[row]).await.unwrap(), 1);
                    let pos = model.iter().position(|(e, _)| *e == id).unwrap();
                    model.remove(pos);
                }
            }
            Op::Crash | Op::Restart => {
                if matches!(op, Op::Restart) {
                    store.close().await;
                }
                drop(store);
                store = reopen(&db.config, &outbox).await;
                inflight.clear();
                cursor = 0;
            }
        }
        // The store holds exactly what the model says, in the same order.
        let pending: Vec<String> = store
            .outbox_pending(Sink::Mqtt, 0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        let expected: Vec<String> = model.iter().map(|(e, _)| e.clone()).collect();
        assert_eq!(pending, expected);
    }
    // Drain: deliver and confirm everything left.
    loop {
        let rows = store.outbox_pending(Sink::Mqtt, 0, 100).await.unwrap();
        if rows.is_empty() {
            break;
        }
        for r in rows {
            received.push(r.event_id.clone());
            store.outbox_ack(Sink::Mqtt, &[r.id]).await.unwrap();
        }
    }
    // Nothing lost; per key, first arrivals come in append order.
    let mut first: Vec<&String> = Vec::new();
    let mut seen = HashSet::new();
    for e in &received {
        if seen.insert(e) {
            first.push(e);
        }
    }
    assert_eq!(
        seen.len(),
        appended.len(),
        "every appended event was delivered"
    );
    let key_of: HashMap<&String, &String> = appended.iter().map(|(e, k)| (e, k)).collect();
    for k in 0..4 {
        let key = format!("k{k}");
        let want: Vec<&String> = appended
            .iter()
            .filter(|(_, kk)| *kk == key)
            .map(|(e, _)| e)
            .collect();
        let got: Vec<&String> = first
            .iter()
            .copied()
            .filter(|e| *key_of[e] == key)
            .collect();
        assert_eq!(got, want, "order of key {key}");
    }
    let status = store.outbox_status().await.unwrap();
    assert_eq!(status.pending_bytes, 0, "byte count returns to zero");
    store.close().await;
}

fn model_cases(pg: bool, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            rt.block_on(async {
                let db = if pg { postgres().await } else { sqlite().await };
                run_model(&db, ops).await;
                db.finish().await;
            });
            Ok(())
        })
        .unwrap();
}

#[test]
fn model_sqlite_nothing_lost_order_per_key_kept() {
    model_cases(false, 24);
}

#[test]
fn model_postgres_nothing_lost_order_per_key_kept() {
    model_cases(true, 12);
}

// ---------------------------------------------------------------------------------------------
// Events with their records, and the full policy.

on_both_databases!(
    records_and_their_events_commit_together,
    a_full_outbox_refuses_samples_and_counts_dropped_events,
    images_of_samples_waiting_for_their_upload_outlive_retention,
    rows_left_for_a_removed_sink_are_reported_skipped_by_the_drain_and_discarded_on_the_record,
    one_instance_delivers_at_a_time_and_another_takes_over,
);

async fn records_and_their_events_commit_together(db: &Db) {
    let outbox = mqtt_outbox(1, "t");
    let s = db.store.clone().with_outbox(outbox);
    let cfg = quiet_quality();
    s.record_inspection(&inspection(1, 0.2, None), &cfg, "system")
        .await
        .unwrap();
    let rec = s
        .record_inspection(&inspection(2, 0.9, None), &cfg, "system")
        .await
        .unwrap();
    let task = rec.task.expect("a reject opens a task");
    let ivo = s
        .add_user(
            NewUser {
                username: "ivo".into(),
                full_name: "Ivo Inspector".into(),
                role: Role::Inspector,
                password: "s3cret-pass".into(),
            },
            "test",
        )
        .await
        .unwrap();
    s.claim_next_task(&ivo).await.unwrap().unwrap();
    s.act_on_task(
        task.id,
        &ivo,
        TaskAction::OverrideGood,
        Some("scratch is dust"),
        &cfg,
    )
    .await
    .unwrap();
    // A refused write leaves no event behind.
    let bad = NewInspection {
        model_sha256: "xyz".into(),
        ..inspection(3, 0.1, None)
    };
    assert!(s.record_inspection(&bad, &cfg, "system").await.is_err());

    let rows = s.outbox_pending(Sink::Mqtt, 0, 100).await.unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "inspection.create",
            "inspection.reject",
            "inspection.create",
            "task.open",
            "task.claim",
            "task.override_good",
        ],
        "user changes are not published; everything else in commit order"
    );
    let ids: HashSet<&str> = rows.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "event ids are unique");
    let env: serde_json::Value = serde_json::from_str(&rows[1].payload).unwrap();
    assert_eq!(env["schema"], 1);
    assert_eq!(env["key"], "camera:line-1/cam0");
    assert_eq!(env["data"]["new_value"]["verdict"], "defect");
    assert_eq!(rows[5].ordering_key, format!("task:{}", task.id));
    let st = s.outbox_status().await.unwrap();
    assert_eq!(st.mqtt.pending, 6);
    assert_eq!(
        st.pending_bytes,
        rows.iter().map(|r| r.bytes).sum::<i64>(),
        "byte count kept in step"
    );
}

async fn a_full_outbox_refuses_samples_and_counts_dropped_events(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = OutboxConfig {
        max_bytes: 4_000,
        sample_share_percent: 50,
        upload: Some(UploadConfig {
            destination: format!("file://{}", dir.path().display()),
            sampling: SamplingConfig {
                accept_percent: 100.0,
                daily_quota_per_class: 0,
                ..SamplingConfig::default()
            },
            ..UploadConfig::default()
        }),
        ..mqtt_outbox(1, "t")
    };
    let s = db.store.clone().with_outbox(outbox);
    let cfg = quiet_quality();
    for n in 0..12 {
        s.record_inspection(&inspection(n, 0.1, None), &cfg, "system")
            .await
            .expect("records are never refused because the outbox is full");
    }
    assert_eq!(s.inspection_count().await.unwrap(), 12);
    let st = s.outbox_status().await.unwrap();
    assert!(st.pending_bytes <= 4_000, "{st:?}");
    assert!(st.s3.pending >= 1, "{st:?}");
    assert!(st.samples_refused_total >= 1, "{st:?}");
    assert!(st.events_dropped_total >= 1, "{st:?}");
    assert_eq!(
        st.mqtt.pending + st.events_dropped_total,
        12,
        "every event is either queued or counted as dropped: {st:?}"
    );
    assert!(st.full_since_ms.is_some(), "alarm raised: {st:?}");
    // Delivering frees room and clears the alarm.
    let rows = s.outbox_pending(Sink::Mqtt, 0, 100).await.unwrap();
    s.outbox_ack(Sink::Mqtt, &rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    let rows = s.outbox_pending(Sink::S3, 0, 100).await.unwrap();
    s.outbox_ack(Sink::S3, &rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .await
        .unwrap();
    s.record_inspection(&inspection(99, 0.1, None), &cfg, "system")
        .await
        .unwrap();
    let st = s.outbox_status().await.unwrap();
    assert_eq!(st.mqtt.pending, 1, "{st:?}");
}

// ---------------------------------------------------------------------------------------------
// MQTT against a real Mosquitto, restarted during the stream.

struct Mosquitto {
    bin: PathBuf,
    conf: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Mosquitto {
    fn start(bin: PathBuf, dir: &Path) -> Mosquitto {
        Mosquitto::start_with(bin, dir, "")
    }

    /// With `extra` lines (more listeners) at the end of the configuration.
    fn start_with(bin: PathBuf, dir: &Path, extra: &str) -> Mosquitto {
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // Run as whoever runs the test (as root, Mosquitto would switch to its own user, which
        // cannot read the private temporary folder).
        let me = Command::new("id").arg("-un").output().unwrap();
        let me = String::from_utf8_lossy(&me.stdout).trim().to_owned();
        std::fs::write(
            &conf,
            format!(
                "user {me}\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\n{extra}",
                dir.display()
            ),
        )
        .unwrap();
        let mut m = Mosquitto {
            bin,
            conf,
            port,
            child: None,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        self.child = Some(
            Command::new(&self.bin)
                .arg("-c")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for_port(self.port, "mosquitto");
    }

    /// SIGTERM (Mosquitto saves its queued messages), then waits for the exit.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A broker of the test's own in a temporary folder, or `None` (said on stderr) when Mosquitto
/// is not installed.
fn own_broker() -> Option<(tempfile::TempDir, Mosquitto)> {
    let bin = peer(
        Path::new("/usr/sbin/mosquitto"),
        "scripts/test installs mosquitto",
    )?;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(bin, dir.path());
    Some((dir, broker))
}

/// An independent subscriber with a persistent session: collects every message under `prefix`.
fn subscribe(
    port: u16,
    prefix: &str,
    client_id: &str,
) -> Arc<Mutex<Vec<(String, serde_json::Value)>>> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
    o.set_clean_session(false);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    let (client, mut events) = AsyncClient::new(o, 64);
    let filter = format!("{prefix}/#");
    let sink = got.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(&filter, QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let mut v: serde_json::Value =
                        serde_json::from_slice(&p.payload).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        // Whether the broker marked it as a redelivery: tells a broker's resend
                        // from linesight's when an order check fails.
                        o.insert("_mqtt_dup".into(), p.dup.into());
                    }
                    sink.lock().unwrap().push((p.topic.clone(), v));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mqtt_events_survive_broker_restarts_duplicates_only_by_id() {
    let Some((_broker_dir, mut broker)) = own_broker() else {
        return;
    };
    let prefix = format!("lt-test/{}", broker.port);
    let got = subscribe(broker.port, &prefix, "lt-test-sub");
    // Let the subscriber's session exist before anything is published.
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let db = sqlite().await;
    let outbox = mqtt_outbox(broker.port, &prefix);
    let store = db.store.clone().with_outbox(outbox.clone());
    let delivery = Delivery::start(&store, &outbox, PathBuf::new(), PathBuf::new());
    let cfg = quiet_quality();
    let n: usize = 300;
    for i in 0..n {
        let score = if i.is_multiple_of(3) { 0.8 } else { 0.2 };
        store
            .record_inspection(&inspection(i, score, None), &cfg, "system")
            .await
            .unwrap();
        if i == n / 3 || i == 2 * n / 3 {
            broker.stop();
            tokio::time::sleep(Duration::from_millis(400)).await;
            broker.spawn();
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }

    // What must arrive: one event per audited change (users excepted), plus one per reject.
    let audit = store.audit_entries(1, 100_000).await.unwrap();
    let mut expected: HashMap<String, i64> = HashMap::new();
    for e in audit.iter().filter(|e| e.entity != "user") {
        expected.insert(e.hash[..32].to_owned(), e.seq);
        if e.action == "inspection.create"
            && e.new_value
                .as_deref()
                .unwrap_or_default()
                .contains("\"verdict\":\"defect\"")
        {
            expected.insert(format!("{}-reject", &e.hash[..32]), e.seq);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ids: HashSet<String> = got
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, v)| v["event_id"].as_str().map(str::to_owned))
            .collect();
        let pending = store.outbox_status().await.unwrap().mqtt.pending;
        if pending == 0 && expected.keys().all(|k| ids.contains(k)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: {} of {} events arrived, {pending} pending",
            expected.keys().filter(|k| ids.contains(*k)).count(),
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delivery.stop().await;

    let messages = got.lock().unwrap().clone();
    let events: Vec<&serde_json::Value> = messages
        .iter()
        .filter(|(t, _)| !t.ends_with("/status") && !t.ends_with("/health"))
        .map(|(_, v)| v)
        .collect();
    let mut seen = HashSet::new();
    for v in &events {
        let id = v["event_id"].as_str().expect("every event has an id");
        assert!(expected.contains_key(id), "unexpected event {id}");
        seen.insert(id);
    }
    // Per ordering key, first arrivals follow the audit order (a copy sent again after a lost
    // PUBACK may come after later events: consumers de-duplicate on `event_id`).
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut arrived = HashSet::new();
    for v in &events {
        let id = v["event_id"].as_str().unwrap();
        let key = v["key"].as_str().unwrap().to_owned();
        let seq = expected[id];
        let prev = last.entry(key.clone()).or_insert(i64::MIN);
        if arrived.insert(id) {
            if seq < *prev {
                let trace: Vec<String> = events
                    .iter()
                    .filter(|e| e["key"] == key.as_str())
                    .map(|e| {
                        let dup = if e["_mqtt_dup"] == true { "d" } else { "" };
                        format!("{}{dup}", expected[e["event_id"].as_str().unwrap()])
                    })
                    .collect();
                panic!(
                    "key {key}: event of audit {seq} after {prev}; arrivals (audit seq, d = broker's redelivery): {}",
                    trace.join(" ")
                );
            }
            *prev = seq;
        }
    }
    let rejects = messages
        .iter()
        .filter(|(t, _)| t.ends_with("/rejects"))
        .count();
    assert!(rejects >= n / 3, "{rejects} reject messages");
    let online = messages
        .iter()
        .filter(|(t, v)| t.ends_with("/status") && v["status"] == "online")
        .count();
    assert!(
        online >= 3,
        "online announced after each connection: {online}"
    );
    eprintln!(
        "mqtt outbox: {} events sent, {} delivered, {} duplicates (by id), 2 broker restarts, {:.1} s",
        expected.len(),
        seen.len(),
        events.len() - seen.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(seen.len(), expected.len());

    // The retained status says offline after a clean stop.
    let late = subscribe(broker.port, &format!("{prefix}/status"), "lt-test-late");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = late
            .lock()
            .unwrap()
            .iter()
            .map(|(_, v)| v["status"].clone())
            .next_back();
        if status == Some("offline".into()) {
            break;
        }
        assert!(Instant::now() < deadline, "retained status: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_messages_carry_the_audit_head_that_later_reveals_removed_entries() {
    let Some((_broker_dir, broker)) = own_broker() else {
        return;
    };
    let prefix = format!("lt-test/{}", broker.port);
    let got = subscribe(broker.port, &prefix, "lt-test-health");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let db = sqlite().await;
    let mut outbox = mqtt_outbox(broker.port, &prefix);
    outbox.mqtt.as_mut().unwrap().health_interval_s = 1;
    let store = db.store.clone().with_outbox(outbox.clone());
    let delivery = Delivery::start(&store, &outbox, PathBuf::new(), PathBuf::new());
    for i in 0..3 {
        store
            .record_inspection(&inspection(i, 0.8, None), &quiet_quality(), "system")
            .await
            .unwrap();
    }
    let head = store
        .audit_head()
        .await
        .unwrap()
        .expect("entries were written");
    // What a subscriber off the site keeps: the newest head it heard of.
    let heard = || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.ends_with("/health"))
            .filter_map(|(_, v)| {
                Some(linesight::quality::audit::Anchor {
                    seq: v["audit_head"]["seq"].as_i64()?,
                    hash: v["audit_head"]["hash"].as_str()?.to_owned(),
                })
            })
            .next_back()
    };
    eventually(20, "a health message with the newest audit entry", || {
        heard().is_some_and(|a| a.seq == head.seq)
    })
    .await;
    delivery.stop().await;
    let anchor = heard().unwrap();
    assert_eq!(anchor.hash, head.hash);
    let v = store
        .verify_audit_against(std::slice::from_ref(&anchor))
        .await
        .unwrap()
        .chain
        .unwrap();
    assert_eq!((v.anchors_matched, v.head), (1, Some(head.clone())));

    // Someone with the database file removes the newest entry; the chain alone still holds.
    for q in [
        "DROP TRIGGER audit_log_no_delete".to_owned(),
        format!("DELETE FROM audit_log WHERE seq = {}", head.seq),
    ] {
        sqlx::query(&q).execute(store.raw_pool()).await.unwrap();
    }
    assert!(store.verify_audit().await.unwrap().is_ok());
    let b = store
        .verify_audit_against(&[anchor])
        .await
        .unwrap()
        .chain
        .unwrap_err();
    assert_eq!(b.seq, head.seq);
    assert!(b.problem.contains("newest entries were removed"), "{b}");
    db.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Sample upload.

fn sample_outbox(destination: String) -> UploadConfig {
    UploadConfig {
        destination,
        site: "plant-1".into(),
        sampling: SamplingConfig {
            accept_percent: 100.0,
            daily_quota_per_class: 0,
            ..SamplingConfig::default()
        },
        initial_backoff_ms: 50,
        max_backoff_ms: 500,
        manifest_interval_s: 1,
        ..UploadConfig::default()
    }
}

async fn wait_drained(store: &Store, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let st = store.outbox_status().await.unwrap();
        if st.s3.pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still pending {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The image folder, a bucket folder under `dir`, and an outbox that uploads samples there.
fn folder_bucket(dir: &Path) -> (PathBuf, PathBuf, OutboxConfig) {
    let bucket = dir.join("bucket");
    let outbox = OutboxConfig {
        poll_interval_ms: 20,
        upload: Some(sample_outbox(format!("file://{}", bucket.display()))),
        ..OutboxConfig::default()
    };
    (dir.join("images"), bucket, outbox)
}

fn today() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()[..10].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_go_to_a_folder_with_their_manifest_and_take_the_human_label() {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let (images, bucket, outbox) = folder_bucket(dir.path());
    let store = db.store.clone().with_outbox(outbox.clone());
    let cfg = quiet_quality();
    let mut ids = Vec::new();
    for n in 0..3 {
        let image = store
            .put_image(&images, &crate::common::noise_png(16, 16, n as u32 + 1), 0)
            .await
            .unwrap();
        let score = if n == 0 { 0.9 } else { 0.1 };
        let r = store
            .record_inspection(&inspection(n, score, Some(image)), &cfg, "system")
            .await
            .unwrap();
        ids.push((r.inspection_id, r.task));
    }
    let delivery = Delivery::start(&store, &outbox, images.clone(), dir.path().into());
    wait_drained(&store, "first upload", 30).await;
    // The inspector finds the reject good: the manifest follows the human decision.
    let ivo = store
        .add_user(
            NewUser {
                username: "ivo".into(),
                full_name: "Ivo Inspector".into(),
                role: Role::Inspector,
                password: "s3cret-pass".into(),
            },
            "test",
        )
        .await
        .unwrap();
    let task = ids[0].1.clone().expect("the reject opened a task");
    store.claim_next_task(&ivo).await.unwrap();
    store
        .act_on_task(task.id, &ivo, TaskAction::OverrideGood, Some("dust"), &cfg)
        .await
        .unwrap();
    wait_drained(&store, "relabel", 30).await;
    let day = today();
    let manifest = bucket.join(format!("plant-1/manifests/dt={day}/manifest.jsonl"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&manifest).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() == 3 && lines[0]["anomaly-metadata"]["human-annotated"] == "yes" {
            break lines;
        }
        assert!(Instant::now() < deadline, "manifest: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    delivery.stop().await;
    let (first, _) = &ids[0];
    let base = bucket.join(format!("plant-1/line-1/cam0/dt={day}/{first}"));
    assert!(base.with_extension("png").is_file());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.with_extension("json")).unwrap()).unwrap();
    assert_eq!(meta["machine_verdict"], "defect");
    assert_eq!(meta["human_verdict"], "good");
    assert_eq!(meta["sampling_reason"], "reject");
    assert_eq!(lines[0]["anomaly"], 0, "human label wins");
    assert_eq!(lines[0]["anomaly-metadata"]["class-name"], "normal");
    assert_eq!(
        lines[0]["source-ref"],
        format!("file://{}.png", base.display())
    );
    assert_eq!(lines[1]["anomaly-metadata"]["human-annotated"], "no");
    db.finish().await;
}

/// A sample whose image file is there but cannot be read (a failing disk: here a link to a
/// file every read of which fails), or holds another picture than its hash names (altered on
/// disk), goes up as metadata only; the samples after it are not held back behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_or_altered_sample_image_does_not_hold_back_the_samples_after_it() {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let (images, bucket, outbox) = folder_bucket(dir.path());
    let store = db.store.clone().with_outbox(outbox.clone());
    let cfg = quiet_quality();
    let mut ids = Vec::new();
    for n in 0..3 {
        let image = store
            .put_image(&images, &crate::common::noise_png(16, 16, n as u32 + 11), 0)
            .await
            .unwrap();
        if n == 0 {
            // A regular file to `is_file`, an I/O error to every read.
            let path = linesight::store::image_path(&images, &image).unwrap();
            std::fs::remove_file(&path).unwrap();
            std::os::unix::fs::symlink("/proc/self/mem", &path).unwrap();
            assert!(path.is_file() && std::fs::read(&path).is_err());
        }
        if n == 1 {
            // Another picture in its place: a valid PNG, not the evidence recorded.
            let path = linesight::store::image_path(&images, &image).unwrap();
            std::fs::write(&path, crate::common::noise_png(16, 16, 99)).unwrap();
        }
        let r = store
            .record_inspection(&inspection(n, 0.1, Some(image)), &cfg, "system")
            .await
            .unwrap();
        ids.push(r.inspection_id);
    }
    let delivery = Delivery::start(&store, &outbox, images.clone(), dir.path().into());
    wait_drained(&store, "samples after an unreadable one", 30).await;
    delivery.stop().await;
    let day = today();
    // `inspection` puts even parts on cam0 and odd ones on cam1.
    let base = |n: usize| bucket.join(format!("plant-1/line-1/cam{}/dt={day}/{}", n % 2, ids[n]));
    for n in 0..2 {
        assert!(base(n).with_extension("json").is_file(), "sample {n}");
        assert!(!base(n).with_extension("png").exists(), "sample {n}");
    }
    for n in 2..3 {
        assert!(base(n).with_extension("png").is_file(), "sample {n}");
        assert!(base(n).with_extension("json").is_file(), "sample {n}");
    }
    db.finish().await;
}

/// The site is offline for longer than the image retention: retention and the quota keep the
/// images of the samples still queued (and count them), remove the rest, and remove the
/// sampled ones too once they are in the bucket.
async fn images_of_samples_waiting_for_their_upload_outlive_retention(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let (images, bucket, outbox) = folder_bucket(dir.path());
    let store = db.store.clone().with_outbox(outbox.clone());
    let mut sampled = Vec::new();
    for n in 0..3 {
        let image = store
            .put_image(&images, &crate::common::noise_png(8, 8, n as u32 + 1), 0)
            .await
            .unwrap();
        // Good parts (all sampled here): no secondary-inspection task holds their images.
        store
            .record_inspection(
                &inspection(n, 0.1, Some(image.clone())),
                &quiet_quality(),
                "system",
            )
            .await
            .unwrap();
        sampled.push(image);
    }
    let plain = store
        .put_image(&images, &crate::common::noise_png(8, 8, 99), 0)
        .await
        .unwrap();
    assert_eq!(store.outbox_status().await.unwrap().s3.pending, 3);
    let day = 86_400_000;
    let path = |h: &str| linesight::store::image_path(&images, h).unwrap();

    // Expired, then a quota of nothing: only the unsampled image goes.
    let r = store
        .enforce_image_retention(&images, 1, 1 << 30, 3 * day)
        .await
        .unwrap();
    assert_eq!((r.expired, r.pinned), (1, 3), "{r:?}");
    assert!(!path(&plain).exists());
    let r = store
        .enforce_image_retention(&images, 90, 0, 3 * day)
        .await
        .unwrap();
    assert_eq!((r.evicted, r.pinned), (0, 3), "{r:?}");
    assert!(sampled.iter().all(|h| path(h).is_file()));

    // The site is back: the samples go up with their images, then retention takes them.
    let delivery = Delivery::start(&store, &outbox, images.clone(), dir.path().into());
    wait_drained(&store, "samples", 30).await;
    delivery.stop().await;
    let uploaded = walk(&bucket)
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .count();
    assert_eq!(uploaded, 3, "every sample went up with its image");
    let r = store
        .enforce_image_retention(&images, 1, 1 << 30, 3 * day)
        .await
        .unwrap();
    assert_eq!((r.expired, r.pinned), (3, 0), "{r:?}");
    assert!(sampled.iter().all(|h| !path(h).exists()));
}

async fn rows_left_for_a_removed_sink_are_reported_skipped_by_the_drain_and_discarded_on_the_record(
    db: &Db,
) {
    let dir = tempfile::tempdir().unwrap();
    let (images, bucket, upload_only) = folder_bucket(dir.path());
    let both = OutboxConfig {
        mqtt: mqtt_outbox(1, "t").mqtt,
        ..upload_only.clone()
    };
    // Queued while both sinks were configured: 4 inspections, each an event and a sample.
    let store = db.store.clone().with_outbox(both.clone());
    let cfg = quiet_quality();
    let mut cutoff = 0;
    for n in 0..4 {
        if n == 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            cutoff = linesight::quality::now_ms();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let image = store
            .put_image(&images, &crate::common::noise_png(8, 8, n as u32 + 1), 0)
            .await
            .unwrap();
        store
            .record_inspection(&inspection(n, 0.2, Some(image)), &cfg, "system")
            .await
            .unwrap();
    }
    let st = store.outbox_status().await.unwrap();
    assert_eq!((st.mqtt.pending, st.s3.pending), (4, 4), "{st:?}");

    // [outbox.mqtt] is removed: the start reports the events left, the metrics show them.
    let store = db.store.clone().with_outbox(upload_only.clone());
    let warnings = report_backlog(&store, &upload_only).await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "4 events ({} bytes) wait for [outbox.mqtt]",
            st.mqtt.bytes
        )) && warnings[0].contains("`linesight outbox discard --sink mqtt`"),
        "{}",
        warnings[0]
    );
    let metrics = metrics_text(&store).await;
    for line in [
        "linesight_outbox_pending{sink=\"mqtt\"} 4",
        "linesight_outbox_pending{sink=\"s3\"} 4",
        "linesight_outbox_sink_configured{sink=\"mqtt\"} 0",
        "linesight_outbox_sink_configured{sink=\"s3\"} 1",
        "linesight_outbox_full 0",
        "# TYPE linesight_outbox_delivered_total counter",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
    }
    // Delivery uploads the samples; draining does not wait for events nobody delivers.
    let delivery = Delivery::start(&store, &upload_only, images.clone(), dir.path().into());
    assert!(
        delivery.drain(&store, Duration::from_secs(30)).await,
        "the samples drained: {:?}",
        store.outbox_status().await.unwrap()
    );
    delivery.stop().await;
    assert_eq!(
        walk(&bucket)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .count(),
        4
    );
    let st = store.outbox_status().await.unwrap();
    assert_eq!((st.mqtt.pending, st.s3.pending), (4, 0), "{st:?}");

    // Dropped on the record: a reason is required, the cutoff is kept, the counts add up.
    let err = store
        .outbox_discard(Sink::Mqtt, cutoff, "ops", " ")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("reason"), "{err}");
    let audit_before = store.audit_entries(1, 100_000).await.unwrap().len();
    let d = store
        .outbox_discard(Sink::Mqtt, cutoff, "ops", "the cloud broker was retired")
        .await
        .unwrap();
    assert_eq!(d.rows, 2, "only the events older than the cutoff: {d:?}");
    assert!(d.newest_at_ms.unwrap() < cutoff && d.oldest_at_ms <= d.newest_at_ms);
    let after = store.outbox_status().await.unwrap();
    assert_eq!(after.mqtt.pending, 2);
    assert_eq!(after.mqtt.discarded_total, 2);
    assert_eq!(after.mqtt.delivered_total, 0);
    assert_eq!(
        after.pending_bytes,
        st.pending_bytes - d.bytes,
        "byte count kept in step"
    );
    let audit = store.audit_entries(1, 100_000).await.unwrap();
    assert_eq!(audit.len(), audit_before + 1);
    let entry = audit.last().unwrap();
    assert_eq!(
        (
            entry.actor.as_str(),
            entry.action.as_str(),
            entry.entity.as_str(),
            entry.entity_id.as_str()
        ),
        ("ops", "outbox.discard", "outbox", "mqtt")
    );
    assert_eq!(
        entry.reason.as_deref(),
        Some("the cloud broker was retired")
    );
    let value: serde_json::Value =
        serde_json::from_str(entry.new_value.as_deref().unwrap()).unwrap();
    assert_eq!(
        (value["rows"].as_i64(), value["bytes"].as_i64()),
        (Some(2), Some(d.bytes))
    );
    assert_eq!(value["created_before_ms"].as_i64(), Some(cutoff));
    // Nothing left before the cutoff: nothing dropped, nothing recorded.
    let again = store
        .outbox_discard(Sink::Mqtt, cutoff, "ops", "again")
        .await
        .unwrap();
    assert_eq!(again.rows, 0);
    assert_eq!(
        store.audit_entries(1, 100_000).await.unwrap().len(),
        audit.len()
    );
    assert!(store.verify_audit().await.unwrap().is_ok());
    assert!(
        metrics_text(&store)
            .await
            .lines()
            .any(|l| l == "linesight_outbox_discarded_total{sink=\"mqtt\"} 2")
    );

    // Where events are delivered, a discard of samples is itself an event.
    let store = db.store.clone().with_outbox(both.clone());
    let image = store
        .put_image(&images, &crate::common::noise_png(8, 8, 9), 0)
        .await
        .unwrap();
    let discarded = store
        .record_inspection(&inspection(9, 0.2, Some(image.clone())), &cfg, "system")
        .await
        .unwrap()
        .inspection_id;
    let d = store
        .outbox_discard(
            Sink::S3,
            linesight::quality::now_ms() + 1,
            "ops",
            "bucket retired",
        )
        .await
        .unwrap();
    assert_eq!(d.rows, 1);
    let events = store.outbox_pending(Sink::Mqtt, 0, 100).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.ordering_key.as_str()),
        ("outbox.discard", "outbox:s3")
    );
    let env: serde_json::Value = serde_json::from_str(&last.payload).unwrap();
    assert_eq!(env["data"]["new_value"]["rows"], 1);
    assert_eq!(linesight::outbox::topic_for(&last.kind), "events");

    // A discarded sample no longer holds its image past retention; the uploaded ones never did.
    let day = 86_400_000;
    let r = store
        .enforce_image_retention(&images, 1, 1 << 30, 3 * day)
        .await
        .unwrap();
    assert_eq!((r.expired, r.pinned), (5, 0), "{r:?}");
    assert!(
        !linesight::store::image_path(&images, &image)
            .unwrap()
            .exists()
    );
    let state = |id: i64| {
        let pool = store.raw_pool().clone();
        async move {
            let row = sqlx::query("SELECT uploaded FROM sample_manifest WHERE inspection_id = $1")
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap();
            sqlx::Row::try_get::<i64, _>(&row, 0).unwrap()
        }
    };
    assert_eq!(state(discarded).await, 3, "marked discarded");
    assert_eq!(
        state(discarded - 1).await,
        1,
        "uploaded before, stays uploaded"
    );

    // A database where an earlier version discarded samples without marking them: the
    // migration marks every waiting sample whose upload row is gone, and only those.
    let mut ids = Vec::new();
    for n in [10, 11] {
        let image = store
            .put_image(&images, &crate::common::noise_png(8, 8, n as u32 + 1), 0)
            .await
            .unwrap();
        let recorded = store
            .record_inspection(&inspection(n, 0.2, Some(image)), &cfg, "system")
            .await
            .unwrap();
        ids.push(recorded.inspection_id);
    }
    let (dropped, kept) = (ids[0], ids[1]);
    sqlx::query("DELETE FROM outbox WHERE sink = 's3' AND ordering_key = $1")
        .bind(format!("sample:{dropped}"))
        .execute(store.raw_pool())
        .await
        .unwrap();
    let migration = match store.backend() {
        linesight::store::Backend::Sqlite => {
            include_str!("../../migrations/sqlite/0010_discarded_samples.sql")
        }
        linesight::store::Backend::Postgres => {
            include_str!("../../migrations/postgres/0010_discarded_samples.sql")
        }
    };
    sqlx::raw_sql(migration)
        .execute(store.raw_pool())
        .await
        .unwrap();
    assert_eq!((state(dropped).await, state(kept).await), (3, 0));
}

/// Waits until `cond` holds, or fails with `what` after `secs`.
async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two instances on one database (two services on a SQLite file, replicas on PostgreSQL), both
/// configured to deliver: both queue, one delivers, and the other takes over when it stops or
/// loses its database session.
async fn one_instance_delivers_at_a_time_and_another_takes_over(db: &Db) {
    let dir = tempfile::tempdir().unwrap();
    let (images, bucket, outbox) = folder_bucket(dir.path());
    let a = db.store.clone().with_outbox(outbox.clone());
    let b = Store::open(&db.config)
        .await
        .unwrap()
        .with_outbox(outbox.clone());
    let record = |store: &Store, n: usize| {
        let (store, images) = (store.clone(), images.clone());
        async move {
            let image = store
                .put_image(&images, &crate::common::noise_png(8, 8, n as u32 + 1), 0)
                .await
                .unwrap();
            store
                .record_inspection(&inspection(n, 0.2, Some(image)), &quiet_quality(), "system")
                .await
                .unwrap();
        }
    };
    assert!(!delivery_lease_held(&b).await.unwrap());
    let da = Delivery::start(&a, &outbox, images.clone(), dir.path().into());
    eventually(10, "the first instance takes the lease", || {
        da.is_delivering()
    })
    .await;
    assert!(
        delivery_lease_held(&b).await.unwrap(),
        "seen from the other instance"
    );
    let dbb = Delivery::start(&b, &outbox, images.clone(), dir.path().into());
    let t = Instant::now();
    assert!(
        !dbb.drain(&b, Duration::from_secs(10)).await,
        "the second instance does not deliver, so it does not wait to drain"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    for n in 0..4 {
        record(if n % 2 == 0 { &a } else { &b }, n).await;
    }
    assert!(da.drain(&a, Duration::from_secs(30)).await);
    // Over a retry period of the waiting instance, exactly one delivers.
    for _ in 0..30 {
        assert!(da.is_delivering() && !dbb.is_delivering());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    da.stop().await;
    eventually(10, "the second instance takes over", || dbb.is_delivering()).await;
    for n in 4..6 {
        record(&a, n).await;
    }
    assert!(dbb.drain(&b, Duration::from_secs(30)).await);

    if b.backend() == linesight::store::Backend::Postgres {
        // The deliverer's database session ends (a failover, a network cut): its lease is gone
        // with it, it stops delivering, and whichever instance takes the lease next delivers.
        let da2 = Delivery::start(&a, &outbox, images.clone(), dir.path().into());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!da2.is_delivering());
        let killed: i64 = sqlx::query_scalar(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_locks \
             WHERE locktype = 'advisory' AND classid = 1819504482 \
             AND objid = hashtext(current_schema())::oid",
        )
        .fetch_one(a.raw_pool())
        .await
        .unwrap();
        assert_eq!(killed, 1, "one session holds this schema's delivery lease");
        eventually(10, "the lease is noticed lost", || !dbb.is_delivering()).await;
        eventually(10, "an instance delivers again", || {
            dbb.is_delivering() || da2.is_delivering()
        })
        .await;
        record(&b, 6).await;
        let leader = if dbb.is_delivering() { &dbb } else { &da2 };
        assert!(leader.drain(&b, Duration::from_secs(30)).await);
        assert!(dbb.is_delivering() != da2.is_delivering());
        da2.stop().await;
    }
    dbb.stop().await;
    assert!(
        !delivery_lease_held(&b).await.unwrap(),
        "given back at stop"
    );
    let recorded = a.inspection_count().await.unwrap();
    let st = a.outbox_status().await.unwrap();
    assert_eq!(st.s3.pending, 0, "{st:?}");
    assert_eq!(
        st.s3.delivered_total, recorded,
        "each sample delivered once: {st:?}"
    );
    assert_eq!(
        walk(&bucket)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .count() as i64,
        recorded
    );
    b.close().await;
}

#[test]
fn outbox_status_and_discard_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let (images, _bucket, outbox) = folder_bucket(dir.path());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let config = StoreConfig {
                url: Some(url.clone()),
                ..StoreConfig::default()
            };
            let store = reopen(&config, &outbox).await;
            for n in 0..2 {
                let image = store
                    .put_image(&images, &crate::common::noise_png(8, 8, n + 1), 0)
                    .await
                    .unwrap();
                store
                    .record_inspection(
                        &inspection(n as usize, 0.2, Some(image)),
                        &quiet_quality(),
                        "system",
                    )
                    .await
                    .unwrap();
            }
            store.close().await;
        });
    // Run without [outbox.upload]: the samples wait for a sink that is not configured.
    let run = |args: &[&str]| {
        let out = crate::common::linesight()
            .arg("outbox")
            .args(args)
            .env("LINESIGHT__STORE__URL", &url)
            .env("USER", "ops")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("s3 samples: 2 pending")
            && out.contains("0 discarded - [outbox.upload] is not configured: configure it again, or `linesight outbox discard --sink s3`"),
        "{out}"
    );
    assert!(out.contains("delivery: no instance delivers now"), "{out}");
    let (code, out, _) = run(&["discard", "--sink", "s3"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("would drop 2 samples ("), "{out}");
    assert!(out.contains("nothing changed"), "{out}");
    let (_, out, _) = run(&["discard", "--sink", "s3", "--older-than", "1h"]);
    assert!(
        out.starts_with("would drop 0 samples older than 1h ("),
        "{out}"
    );
    let (code, _, err) = run(&["discard", "--sink", "s3", "--yes"]);
    assert_ne!(code, Some(0));
    assert!(err.contains("--reason"), "{err}");
    let (code, _, err) = run(&["discard", "--sink", "kafka"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("kafka"), "{err}");
    let (code, out, err) = run(&[
        "discard",
        "--sink",
        "s3",
        "--yes",
        "--reason",
        "bucket retired",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with("dropped 2 samples ("), "{out}");
    let (_, out, _) = run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (
            v["s3"]["pending"].as_i64(),
            v["s3"]["discarded_total"].as_i64()
        ),
        (Some(0), Some(2))
    );
    assert_eq!(v["pending_bytes"], 0);
    assert_eq!(v["delivering"], false);
    let audit = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = Store::open(&StoreConfig {
                url: Some(url.clone()),
                ..StoreConfig::default()
            })
            .await
            .unwrap();
            store.audit_entries(1, 1000).await.unwrap()
        });
    let entry = audit.last().unwrap();
    assert_eq!(
        (
            entry.actor.as_str(),
            entry.action.as_str(),
            entry.reason.as_deref()
        ),
        ("cli:ops", "outbox.discard", Some("bucket retired"))
    );
}

/// Every file under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A TCP relay in front of the S3 server; `cut` drops every connection and refuses new ones
/// until `restore` (an outage as the client sees it, with the server's state kept).
struct Relay {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: connection reset
                }
                conns2.lock().unwrap().push(tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                }));
            }
        });
        Relay { port, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn samples_reach_s3_exactly_once_through_an_outage_with_a_complete_manifest() {
    use futures::TryStreamExt as _;
    use object_store::ObjectStore as _;
    let venv = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default()
        .join(".cache/linesight/venv/bin/moto_server");
    let Some(bin) = peer(&venv, "scripts/setup --python installs moto[server]") else {
        return;
    };
    let port = free_port();
    let _moto = Moto(
        Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, "moto_server");
    // Create the bucket (moto accepts unsigned requests).
    {
        use std::io::{Read as _, Write as _};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            c,
            "PUT /samples HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = c.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let relay = Relay::start(port).await;
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let upload = UploadConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", relay.port)),
        allow_http: true,
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
        multipart_threshold_bytes: 6 << 20,
        part_size_bytes: 5 << 20,
        max_retries: 1,
        ..sample_outbox("s3://samples/train".into())
    };
    let outbox = OutboxConfig {
        poll_interval_ms: 20,
        upload: Some(upload.clone()),
        ..OutboxConfig::default()
    };
    let store = db.store.clone().with_outbox(outbox.clone());
    let cfg = quiet_quality();
    let record = |n: usize, bytes: Vec<u8>| {
        let store = store.clone();
        let images = images.clone();
        let cfg = cfg.clone();
        async move {
            let image = store.put_image(&images, &bytes, 0).await.unwrap();
            let score = if n.is_multiple_of(4) { 0.9 } else { 0.1 };
            store
                .record_inspection(&inspection(n, score, Some(image)), &cfg, "system")
                .await
                .unwrap()
                .inspection_id
        }
    };
    let t0 = Instant::now();
    let mut ids = Vec::new();
    // One large image (about 6.9 MB of noise) goes up in parts.
    ids.push(record(0, crate::common::noise_png(1200, 1900, 7)).await);
    for n in 1..30 {
        ids.push(record(n, crate::common::noise_png(24, 24, n as u32 + 11)).await);
    }
    let delivery = Delivery::start(&store, &outbox, images.clone(), dir.path().into());
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.outbox_status().await.unwrap().s3.delivered_total < 10 {
        assert!(Instant::now() < deadline, "uploads did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.cut();
    let before = store.outbox_status().await.unwrap();
    for n in 30..50 {
        ids.push(record(n, crate::common::noise_png(24, 24, n as u32 + 11)).await);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = store.outbox_status().await.unwrap();
    assert!(
        during.s3.pending >= 20,
        "nothing lost while cut off: {during:?}"
    );
    relay.restore();
    wait_drained(&store, "after the outage", 120).await;

    // Read back straight from the server, as a user's tooling would.
    let reader = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("samples")
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_allow_http(true)
        .with_region("us-east-1")
        .with_access_key_id("testing")
        .with_secret_access_key("testing")
        .build()
        .unwrap();
    let day = today();
    let manifest_key =
        object_store::path::Path::from(format!("train/plant-1/manifests/dt={day}/manifest.jsonl"));
    let deadline = Instant::now() + Duration::from_secs(30);
    let lines: Vec<serde_json::Value> = loop {
        let text = match reader.get(&manifest_key).await {
            Ok(r) => String::from_utf8(r.bytes().await.unwrap().to_vec()).unwrap(),
            Err(_) => String::new(),
        };
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() == ids.len() {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "manifest has {} of {} lines",
            lines.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    delivery.stop().await;
    let objects: Vec<object_store::ObjectMeta> = reader
        .list(Some(&object_store::path::Path::from("train")))
        .try_collect()
        .await
        .unwrap();
    let keys: Vec<String> = objects.iter().map(|o| o.location.to_string()).collect();
    let pngs = keys.iter().filter(|k| k.ends_with(".png")).count();
    let jsons = keys.iter().filter(|k| k.ends_with(".json")).count();
    let refs: HashSet<&str> = lines
        .iter()
        .map(|l| l["source-ref"].as_str().unwrap())
        .collect();
    for (n, id) in ids.iter().enumerate() {
        let cam = if n.is_multiple_of(2) { "cam0" } else { "cam1" };
        let key = format!("train/plant-1/line-1/{cam}/dt={day}/{id}.png");
        assert!(keys.contains(&key), "missing {key}");
        assert!(refs.contains(format!("s3://samples/{key}").as_str()));
    }
    let big = objects
        .iter()
        .find(|o| {
            o.location
                .to_string()
                .ends_with(&format!("/{}.png", ids[0]))
        })
        .unwrap();
    assert!(
        big.size > 6 << 20,
        "large image stored whole: {} bytes",
        big.size
    );
    let st = store.outbox_status().await.unwrap();
    eprintln!(
        "s3 upload: {} samples, {} uploaded before the cut, {} pending during it, {} png + {} json objects, {} manifest lines, {} distinct source-refs, {:.1} s",
        ids.len(),
        before.s3.delivered_total,
        during.s3.pending,
        pngs,
        jsons,
        lines.len(),
        refs.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(pngs, ids.len(), "one image object per sample");
    assert_eq!(jsons, ids.len(), "one metadata object per sample");
    assert_eq!(refs.len(), ids.len(), "each sample once in the manifest");
    assert_eq!(st.s3.delivered_total, ids.len() as i64);
    db.finish().await;
}

// ---------------------------------------------------------------------------------------------
// kill -9 of the process that writes and delivers.

/// The child half of the `kill -9` test: records inspections and delivers their events until
/// it is killed, printing `COMMITTED <audit hash prefix>` after each commit. Runs only when the
/// parent test starts it (`LINESIGHT_OUTBOX_CHILD_DB` set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of delivery_resumes_after_kill_9"]
async fn kill9_child_process() {
    let Ok(db) = std::env::var("LINESIGHT_OUTBOX_CHILD_DB") else {
        return;
    };
    let port: u16 = std::env::var("LINESIGHT_OUTBOX_CHILD_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let outbox = mqtt_outbox(port, "lt-kill9");
    let config = StoreConfig {
        url: Some(format!("sqlite://{db}")),
        ..StoreConfig::default()
    };
    let store = reopen(&config, &outbox).await;
    let _delivery = Delivery::start(&store, &outbox, PathBuf::new(), PathBuf::new());
    let cfg = quiet_quality();
    for i in 0.. {
        let r = store
            .record_inspection(&inspection(i, 0.2, None), &cfg, "system")
            .await
            .unwrap();
        println!("COMMITTED {}", r.inspection_id);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_kill_9() {
    use std::io::BufRead as _;
    let Some((_broker_dir, broker)) = own_broker() else {
        return;
    };
    let got = subscribe(broker.port, "lt-kill9", "lt-kill9-sub");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("q.db");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "outbox::kill9_child_process",
            "--nocapture",
            "--ignored",
        ])
        .env("LINESIGHT_OUTBOX_CHILD_DB", &db)
        .env("LINESIGHT_OUTBOX_CHILD_PORT", broker.port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut committed = Vec::new();
    let lines = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in lines.lines() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("COMMITTED ") {
            committed.push(id.parse::<i64>().unwrap());
            if committed.len() == 300 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = got.lock().unwrap().len();

    // Restart: every committed inspection has its event, delivered by the new process.
    let outbox = mqtt_outbox(broker.port, "lt-kill9");
    let config = StoreConfig {
        url: Some(format!("sqlite://{}", db.display())),
        ..StoreConfig::default()
    };
    let store = reopen(&config, &outbox).await;
    let pending = store.outbox_status().await.unwrap().mqtt.pending;
    let delivery = Delivery::start(&store, &outbox, PathBuf::new(), PathBuf::new());
    let deadline = Instant::now() + Duration::from_secs(60);
    let arrived = loop {
        let ids: HashSet<String> = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.ends_with("/inspections"))
            .filter_map(|(_, v)| v["data"]["entity_id"].as_str().map(str::to_owned))
            .collect();
        if committed.iter().all(|c| ids.contains(&c.to_string())) {
            break ids;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} committed inspections arrived",
            committed
                .iter()
                .filter(|c| ids.contains(&c.to_string()))
                .count(),
            committed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    delivery.stop().await;
    let messages = got.lock().unwrap().len();
    eprintln!(
        "kill -9: {} inspections committed before the kill, {} messages delivered before it, {} events pending at restart, {} inspections arrived, {} messages in all",
        committed.len(),
        before,
        pending,
        arrived.len(),
        messages
    );
    store.close().await;
}

// ---------------------------------------------------------------------------------------------
// TLS with a client certificate (AWS IoT Core style).

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(ok.success(), "openssl {args:?}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all P-256.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "1",
        "-subj",
        "/CN=linesight-test-ca",
    ];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
        ),
        (
            "client",
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        ),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        let (key, csr, crt, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let cn = format!("/CN=linesight-test-{name}");
        let mut req = vec!["req", "-subj", cn.as_str()];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr]);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                &extfile,
                "-out",
                &crt,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_with_a_client_certificate() {
    let Some(bin) = peer(
        Path::new("/usr/sbin/mosquitto"),
        "scripts/test installs mosquitto",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let tls_port = free_port();
    let d = dir.path().display();
    let broker = Mosquitto::start_with(
        bin,
        dir.path(),
        &format!(
            "listener {tls_port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\n\
             keyfile {d}/server.key\nrequire_certificate true\n"
        ),
    );
    wait_for_port(tls_port, "mosquitto (TLS)");
    let got = subscribe(broker.port, "lt-tls", "lt-tls-sub");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut outbox = mqtt_outbox(tls_port, "lt-tls");
    if let Some(m) = &mut outbox.mqtt {
        m.tls = Some(linesight::outbox::MqttTlsConfig {
            ca_file: dir.path().join("ca.crt"),
            client_cert_file: Some(dir.path().join("client.crt")),
            client_key_file: Some(dir.path().join("client.key")),
        });
    }
    let db = sqlite().await;
    let store = db.store.clone().with_outbox(outbox.clone());
    let delivery = Delivery::start(&store, &outbox, PathBuf::new(), PathBuf::new());
    for i in 0..10 {
        store
            .record_inspection(&inspection(i, 0.2, None), &quiet_quality(), "system")
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = got
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| t.ends_with("/inspections"))
            .count();
        if n >= 10 && store.outbox_status().await.unwrap().mqtt.pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of 10 events arrived over TLS"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delivery.stop().await;
    db.finish().await;
}

/// A change made with the command line (a model activated) queues its event like the same
/// change made through the API: the service delivering this database's outbox publishes it.
#[test]
fn changes_made_with_the_command_line_queue_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("linesight.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nurl = \"sqlite://{}\"\n\n[outbox.mqtt]\nhost = \"127.0.0.1\"\ntopic_prefix = \"plant1/line3\"\n",
            dir.path().join("q.db").display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let out = crate::common::linesight()
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("USER", "ops")
            .current_dir(crate::common::repo())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["models", "activate", "--slot", "press", "models/demo"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run(&["outbox", "status"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("mqtt events: 1 pending"), "{out}");
}
