//! The quality store's write path, per inspection: what the pipeline's actions task pays to make
//! a result durable (one transaction: the record, the quality rules, the audit chain, and the
//! trigger's answer), on the embedded SQLite store (WAL, full sync) and, when reachable, on
//! PostgreSQL (`LINESIGHT_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! The `outbox` group measures what delivery adds: a record that also appends its MQTT events
//! to the outbox in the same transaction, and a deliverer's round (read 64 pending events, then
//! delete them as acknowledged).
//!
//! `outbox/metrics_scrape` measures what a Prometheus scrape of the outbox's figures costs
//! with a backlog of pending events.
//!
//! The `images` group measures a pass of image keeping (what `linesight run` and `serve` do
//! every `quality.image_prune_interval_minutes`) over a folder of recorded images with nothing
//! to remove: the steady cost of keeping the quota. `images/serve` reads a frame-sized image
//! bare and checked against its SHA-256, as the API serves it: the ratio is the check's cost.
//! `images/store_again` stores that image again (its file is there): the hash alone, and the
//! whole write with the existing file compared byte for byte.
//!
//! `audit/verify` measures `linesight audit verify` on a store of recorded inspections: the
//! hash chain and every record against the entries that made and changed it, in one snapshot.
//!
//! `cargo bench --bench store` to measure; `cargo bench -- --test` runs each once (CI).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use linesight::outbox::{MqttOutConfig, OutboxConfig, Sink};
use linesight::postprocess::Verdict;
use linesight::quality::{NewInspection, QualityConfig};
use linesight::store::{Store, StoreConfig};

fn inspection(n: u64) -> NewInspection {
    NewInspection {
        part_id: format!("part-{n}"),
        lot: format!("lot-{}", n / 500),
        line: "line-1".into(),
        recipe: "default".into(),
        camera: "cam-1".into(),
        model_name: "demo-washer".into(),
        model_sha256: "dd79cf2e1f7a".repeat(6)[..64].to_string(),
        threshold: 0.5,
        // Mostly good parts, a reject now and then: the rules run as on a line.
        score: if n.is_multiple_of(50) { 0.9 } else { 0.2 },
        verdict: if n.is_multiple_of(50) {
            Verdict::Defect
        } else {
            Verdict::Good
        },
        regions_json: "[]".into(),
        image_ref: None,
        overlay_ref: None,
        timings_json: r#"{"total_ms":7.5}"#.into(),
        source: "automatic".into(),
        defect_class: None,
    }
}

/// Creates an empty schema for this run on PostgreSQL, or `None` when no server answers.
async fn postgres() -> Option<StoreConfig> {
    let url = std::env::var("LINESIGHT_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    sqlx::any::install_default_drivers();
    let pool = tokio::time::timeout(Duration::from_secs(3), sqlx::AnyPool::connect(&url))
        .await
        .ok()?
        .ok()?;
    let schema = format!("lt_bench_{}", std::process::id());
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&pool)
        .await
        .ok()?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .ok()?;
    pool.close().await;
    Some(StoreConfig {
        url: Some(url),
        pg_schema: Some(schema),
        ..StoreConfig::default()
    })
}

/// The runtime each group drives the store with (two workers, as `linesight run` has).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn record(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut backends = vec![(
        "sqlite-wal-fullsync",
        StoreConfig {
            url: Some(format!("sqlite://{}", dir.path().join("b.db").display())),
            ..StoreConfig::default()
        },
    )];
    match rt.block_on(postgres()) {
        Some(config) => backends.push(("postgres", config)),
        None => eprintln!("PostgreSQL not reachable: measuring SQLite only"),
    }
    let quality = QualityConfig::default();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(1));
    for (name, config) in backends {
        let store = rt.block_on(Store::open(&config)).expect("store opens");
        let n = AtomicU64::new(0);
        group.bench_function(BenchmarkId::new("record_inspection", name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let i = inspection(n.fetch_add(1, Ordering::Relaxed));
                        store
                            .record_inspection(&i, &quality, "system")
                            .await
                            .expect("record");
                    }
                    start.elapsed()
                })
            })
        });
        group.bench_function(BenchmarkId::new("journal_and_answer_trigger", name), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let k = n.fetch_add(1, Ordering::Relaxed);
                        let id = format!("bench-{k}");
                        store
                            .journal_trigger(&id, "cam-1", None, None, None, 0)
                            .await
                            .expect("journal");
                        store
                            .record_inspection_for_trigger(
                                &inspection(k),
                                &quality,
                                "system",
                                Some(&id),
                                &[],
                            )
                            .await
                            .expect("record");
                    }
                    start.elapsed()
                })
            })
        });
        if let Some(schema) = &config.pg_schema {
            let url = config.effective_url();
            rt.block_on(async {
                store.close().await;
                if let Ok(pool) = sqlx::AnyPool::connect(&url).await {
                    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                        .execute(&pool)
                        .await;
                }
            });
        }
    }
    group.finish();
}

/// The outbox on SQLite: recording with events appended, and a delivery round per event.
fn outbox(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StoreConfig {
        url: Some(format!("sqlite://{}", dir.path().join("o.db").display())),
        ..StoreConfig::default()
    };
    let outbox = OutboxConfig {
        mqtt: Some(MqttOutConfig::default()),
        ..OutboxConfig::default()
    };
    let store = rt
        .block_on(Store::open(&config))
        .expect("store opens")
        .with_outbox(outbox);
    let quality = QualityConfig::default();
    let n = AtomicU64::new(0);
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new("record_inspection_with_events", "sqlite-wal-fullsync"),
        |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let i = inspection(n.fetch_add(1, Ordering::Relaxed));
                        store
                            .record_inspection(&i, &quality, "system")
                            .await
                            .expect("record");
                    }
                    start.elapsed()
                })
            })
        },
    );
    // Per event: its share of one read of 64 pending rows and of one acknowledgement.
    const ROUND: u64 = 64;
    group.bench_function(
        BenchmarkId::new("deliver_and_ack_64", "sqlite-wal-fullsync"),
        |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let rounds = iters.div_ceil(ROUND);
                    // Enough pending events first (not timed).
                    loop {
                        let pending = store
                            .outbox_pending(Sink::Mqtt, 0, (rounds * ROUND) as i64)
                            .await
                            .expect("pending");
                        if pending.len() as u64 >= rounds * ROUND {
                            break;
                        }
                        for _ in 0..ROUND {
                            let i = inspection(n.fetch_add(1, Ordering::Relaxed));
                            store
                                .record_inspection(&i, &quality, "system")
                                .await
                                .expect("record");
                        }
                    }
                    let start = Instant::now();
                    for _ in 0..rounds {
                        let rows = store
                            .outbox_pending(Sink::Mqtt, 0, ROUND as i64)
                            .await
                            .expect("pending");
                        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                        store.outbox_ack(Sink::Mqtt, &ids).await.expect("ack");
                    }
                    // Time per event, whatever the rounding of iterations to whole rounds.
                    start
                        .elapsed()
                        .mul_f64(iters as f64 / (rounds * ROUND) as f64)
                })
            })
        },
    );
    group.finish();
}

/// Images in the folder the keeping pass walks, events in the scraped backlog (fewer in test
/// mode, where the setup is all that matters).
fn setup_size() -> usize {
    if std::env::args().any(|a| a == "--test") {
        500
    } else {
        20_000
    }
}

fn images(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let folder = dir.path().join("images");
    let store = rt
        .block_on(Store::open(&StoreConfig {
            url: Some(format!("sqlite://{}", dir.path().join("i.db").display())),
            ..StoreConfig::default()
        }))
        .expect("store opens");
    let n = setup_size();
    // Files of 2 KiB written without syncing, then recorded 500 to a transaction (the store
    // finds them complete and does not write them again): a quick setup of a large folder.
    let images: Vec<Vec<u8>> = (0..n as u32)
        .map(|i| {
            let mut bytes = vec![0u8; 2048];
            bytes[..4].copy_from_slice(&i.to_le_bytes());
            bytes
        })
        .collect();
    for bytes in &images {
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(bytes));
        let path = linesight::store::image_path(&folder, &hash).unwrap();
        std::fs::create_dir_all(path.parent().expect("fan-out folder")).expect("folder");
        std::fs::write(path, bytes).expect("image file");
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    for batch in images.chunks(500) {
        rt.block_on(store.put_images(&folder, batch.to_vec(), now_ms))
            .expect("recorded");
    }
    // Two hours on, every file is past the sweep's grace period: the pass lists them all and
    // looks each up among the live records, as it does on a folder in service.
    let later = std::time::SystemTime::now() + Duration::from_secs(7200);
    let mut group = c.benchmark_group("images");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function(
        BenchmarkId::new(
            "keeping_pass_nothing_to_remove",
            format!("sqlite/{n}images"),
        ),
        |b| {
            b.iter(|| {
                let report = rt
                    .block_on(store.prune_images(&folder, 90, 1 << 40, later, false))
                    .expect("pass");
                assert_eq!(report.retention.expired + report.sweep.unrecorded, 0);
            });
        },
    );
    group.finish();

    // What serving an image costs now that its content is checked against its name: a file
    // the size of a 1280×1024 RGB frame's PNG of noise (about 3.9 MB), read bare and read
    // checked. The ratio of the two is the figure to watch.
    let frame: Vec<u8> = (0..1280 * 1024 * 3u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let hash = rt
        .block_on(store.put_image(&folder, &frame, now_ms))
        .expect("frame stored");
    let path = linesight::store::image_path(&folder, &hash).expect("a SHA-256");
    let mut group = c.benchmark_group("images/serve");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function(BenchmarkId::new("read", "3.9MB"), |b| {
        b.iter(|| rt.block_on(tokio::fs::read(&path)).expect("read"));
    });
    group.bench_function(BenchmarkId::new("read_verified", "3.9MB"), |b| {
        b.iter(|| {
            rt.block_on(linesight::store::read_verified(&folder, &hash))
                .expect("read")
                .expect("there")
        });
    });
    group.finish();

    // What storing a frame costs when its file is there already (folder replay in a loop, a
    // part photographed twice): the SHA-256 that names it, then the existing file compared
    // with it byte for byte so that a damaged one is replaced. The ratio of the whole to the
    // hash alone is the comparison's share.
    let mut group = c.benchmark_group("images/store_again");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function(BenchmarkId::new("sha256_only", "3.9MB"), |b| {
        b.iter(|| linesight::store::check_content(&frame, &hash).expect("same"));
    });
    group.bench_function(BenchmarkId::new("write_image_files", "3.9MB"), |b| {
        b.iter(|| {
            let written =
                linesight::store::write_image_files(&folder, &[&frame]).expect("stored again");
            assert_eq!(written[0].hash, hash);
        });
    });
    group.finish();
}

/// What a Prometheus scrape of the outbox costs while the site is cut off: its figures read
/// with a backlog of pending events (20,000; 500 in test mode).
fn outbox_scrape(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = rt
        .block_on(Store::open(&StoreConfig {
            url: Some(format!("sqlite://{}", dir.path().join("s.db").display())),
            ..StoreConfig::default()
        }))
        .expect("store opens")
        .with_outbox(OutboxConfig {
            mqtt: Some(MqttOutConfig::default()),
            ..OutboxConfig::default()
        });
    let n = setup_size();
    // Events of a typical size, appended in one transaction (the write path is measured above).
    rt.block_on(async {
        let mut tx = store.raw_pool().begin().await.expect("begin");
        for i in 0..n {
            sqlx::query(
                "INSERT INTO outbox (event_id, sink, kind, ordering_key, payload, bytes, created_at_ms) \
                 VALUES ($1, 'mqtt', 'inspection.create', 'camera:line-1/cam0', $2, 800, $3)",
            )
            .bind(format!("e{i}"))
            .bind("x".repeat(800))
            .bind(i as i64)
            .execute(&mut *tx)
            .await
            .expect("insert");
        }
        tx.commit().await.expect("commit");
    });
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(1));
    group.bench_function(
        BenchmarkId::new("metrics_scrape", format!("sqlite/{n}pending")),
        |b| {
            b.iter(|| {
                let text = rt.block_on(linesight::outbox::metrics_text(&store));
                assert!(text.contains(&format!("linesight_outbox_pending{{sink=\"mqtt\"}} {n}")));
            });
        },
    );
    group.finish();
}

/// `audit verify` over a store of inspections recorded as the pipeline records them (10,000;
/// 500 in test mode), with their tasks and audit entries.
fn audit_verify(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("temp dir");
    let store = rt
        .block_on(Store::open(&StoreConfig {
            url: Some(format!("sqlite://{}", dir.path().join("v.db").display())),
            ..StoreConfig::default()
        }))
        .expect("store opens");
    let n = setup_size().min(10_000);
    let quality = QualityConfig::default();
    rt.block_on(async {
        for i in 0..n as u64 {
            store
                .record_inspection(&inspection(i), &quality, "system")
                .await
                .expect("recorded");
        }
    });
    let mut group = c.benchmark_group("audit");
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);
    group.bench_function(
        BenchmarkId::new("verify", format!("sqlite/{n}inspections")),
        |b| {
            b.iter(|| {
                let check = rt
                    .block_on(store.verify_audit_against(&[]))
                    .expect("verified");
                assert!(check.chain.is_ok() && check.records.mismatches_total == 0);
                assert_eq!(check.records.inspections, n as u64);
            });
        },
    );
    group.finish();
}

criterion_group! {
    name = benches;
    // Each write is a synced transaction: a handful of samples says enough.
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5));
    targets = record, outbox, outbox_scrape, images, audit_verify
}
criterion_main!(benches);
