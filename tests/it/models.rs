//! Model activation and hot swap, on SQLite and on PostgreSQL: broken packages are refused
//! under load while the old model keeps serving, a good one switches the hash with no gap,
//! a second replica follows, and every attempt is audited.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linesight::inspect::Inspector;
use linesight::model::registry::{
    ActivationError, ActivationRequest, FollowEvent, Follower, ModelRegistry, Validator, activate,
};
use linesight::model::{Detector, ModelPackage, SessionOptions};
use linesight::preprocess::DecodeLimits;
use linesight::store::ActivationState;

use crate::common::{linesight, repo, runtime};
use crate::quality::{Db, postgres, sqlite};

const SLOT: &str = "line3";

fn validator() -> Validator {
    Validator {
        runtime: runtime(),
        options: SessionOptions {
            intra_threads: 1,
            ..SessionOptions::default()
        },
        limits: DecodeLimits::default(),
    }
}

fn request(package: &Path, golden: Option<&Path>) -> ActivationRequest {
    ActivationRequest {
        slot: SLOT.into(),
        package: package.to_path_buf(),
        golden: golden.map(Path::to_path_buf),
        actor: "qa-lead".into(),
    }
}

/// One result as a worker of the live service would produce it.
#[derive(Debug, Clone)]
struct Served {
    /// The swap had completed before this inference looked up its model.
    after_swap: bool,
    model_sha: String,
    result_sha: String,
}

/// A worker that looks up the slot's model before every inference (rebuilding its own
/// session when the generation changes) until `stop`. Every call must succeed.
fn hammer(
    registry: ModelRegistry,
    swapped: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Vec<Served>>>,
) -> std::thread::JoinHandle<()> {
    let image = std::fs::read(repo().join("testdata/synthetic/test/good/000.png")).unwrap();
    std::thread::spawn(move || {
        let mut own: Option<(u64, Inspector)> = None;
        while !stop.load(Ordering::SeqCst) {
            let after_swap = swapped.load(Ordering::SeqCst);
            let active = registry.current(SLOT).expect("the slot always has a model");
            if own.as_ref().map(|(g, _)| *g) != Some(active.generation) {
                let detector = Detector::new(
                    runtime(),
                    active.package.clone(),
                    &SessionOptions {
                        intra_threads: 1,
                        ..SessionOptions::default()
                    },
                    None,
                )
                .expect("a validated package builds");
                own = Some((
                    active.generation,
                    Inspector::new(detector, DecodeLimits::default()).unwrap(),
                ));
            }
            let inspector = &mut own.as_mut().unwrap().1;
            let (mut results, _) = inspector.inspect_batch(&[("part".into(), image.as_slice())]);
            let inspection = results.pop().unwrap().expect("inference never fails");
            served.lock().unwrap().push(Served {
                after_swap,
                model_sha: active.sha256.clone(),
                result_sha: inspection.model.sha256,
            });
        }
    })
}

async fn wait_for_results(served: &Mutex<Vec<Served>>, at_least: usize) {
    for _ in 0..2_000 {
        if served.lock().unwrap().len() >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the worker produced fewer than {at_least} results in 10 s");
}

async fn broken_models_are_refused_under_load_and_a_good_one_swaps_without_gap(db: &Db) {
    let store = &db.store;
    let v = validator();
    let registry = ModelRegistry::new();
    let mut follower = Follower::new(store.clone(), registry.clone(), v.clone());

    let old_dir = repo().join("models/demo");
    let new_dir = repo().join("testdata/models/dynamic-size");
    let old_sha = ModelPackage::open(&old_dir).unwrap().sha256;
    let new_sha = ModelPackage::open(&new_dir).unwrap().sha256;
    assert_ne!(old_sha, new_sha);

    let (first, _) = activate(store, &v, request(&old_dir, None)).await.unwrap();
    assert_eq!(first.state, ActivationState::Active);
    let events = follower.poll_once().await.unwrap();
    assert!(
        matches!(&events[..], [FollowEvent::Swapped { active, .. }] if active.sha256 == old_sha),
        "{events:?}"
    );

    let swapped = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(Mutex::new(Vec::new()));
    let worker = hammer(
        registry.clone(),
        swapped.clone(),
        stop.clone(),
        served.clone(),
    );
    wait_for_results(&served, 5).await;

    // Three broken packages, each refused while the worker keeps inspecting.
    let scratch = tempfile::tempdir().unwrap();
    let bad_onnx = scratch.path().join("bad-onnx");
    std::fs::create_dir_all(&bad_onnx).unwrap();
    std::fs::write(bad_onnx.join("model.onnx"), b"this is not a protobuf graph").unwrap();
    let wrong_contract = repo().join("testdata/models/no-known-outputs");
    // The same image expected both good and defect: one of the two must mismatch.
    let golden = scratch.path().join("golden");
    for sub in ["good", "defect"] {
        std::fs::create_dir_all(golden.join(sub)).unwrap();
        std::fs::copy(
            repo().join("testdata/synthetic/test/good/000.png"),
            golden.join(sub).join("000.png"),
        )
        .unwrap();
    }
    let cases: [(&Path, Option<&Path>); 3] = [
        (&bad_onnx, None),
        (&wrong_contract, None),
        (&new_dir, Some(&golden)),
    ];
    for (dir, golden) in cases {
        let before = served.lock().unwrap().len();
        let err = activate(store, &v, request(dir, golden)).await.unwrap_err();
        let ActivationError::Refused { activation, .. } = &err else {
            panic!("{dir:?}: expected a refusal, got {err}");
        };
        assert_eq!(activation.state, ActivationState::Refused);
        assert!(follower.poll_once().await.unwrap().is_empty());
        assert_eq!(registry.current(SLOT).unwrap().sha256, old_sha);
        wait_for_results(&served, before + 2).await;
    }
    assert!(
        served
            .lock()
            .unwrap()
            .iter()
            .all(|s| s.result_sha == old_sha),
        "while broken models were refused, every result came from the old model"
    );

    // The refusals and the activation are in the audit trail, with their reasons.
    let audit = store.audit_for("model_slot", SLOT).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "model.activate",
            "model.refuse",
            "model.refuse",
            "model.refuse"
        ]
    );
    let reasons: Vec<String> = audit[1..]
        .iter()
        .map(|e| e.reason.clone().unwrap())
        .collect();
    assert!(reasons[0].contains("model.onnx"), "{}", reasons[0]);
    assert!(reasons[1].contains("no-known-outputs"), "{}", reasons[1]);
    assert!(
        reasons[2].contains("1 of 2 golden images did not get their expected verdict"),
        "{}",
        reasons[2]
    );
    assert!(audit.iter().all(|e| e.actor == "qa-lead"));
    assert!(matches!(store.verify_audit().await.unwrap(), Ok(4)));

    // A good package: the hash switches with no gap.
    let (good, validated) = activate(store, &v, request(&new_dir, None)).await.unwrap();
    assert_eq!(good.sha256, new_sha);
    assert!(validated.warmup_ms > 0.0);
    let events = follower.poll_once().await.unwrap();
    assert!(
        matches!(&events[..], [FollowEvent::Swapped { active, .. }] if active.sha256 == new_sha && active.generation == 2),
        "{events:?}"
    );
    swapped.store(true, Ordering::SeqCst);
    let after = served.lock().unwrap().len();
    wait_for_results(&served, after + 5).await;
    stop.store(true, Ordering::SeqCst);
    worker.join().expect("the worker never failed");

    let served = served.lock().unwrap().clone();
    let first_new = served
        .iter()
        .position(|s| s.result_sha == new_sha)
        .expect("the new model served");
    for (i, s) in served.iter().enumerate() {
        assert_eq!(s.result_sha, s.model_sha, "result {i} names its own model");
        let expected = if i < first_new { &old_sha } else { &new_sha };
        assert_eq!(&s.result_sha, expected, "result {i}: old, then only new");
        if s.after_swap {
            assert_eq!(s.result_sha, new_sha, "result {i} began after the swap");
        }
    }

    // Another replica on the same database follows the same activation.
    let replica_store = db.another_instance().await;
    let replica = ModelRegistry::new();
    let mut replica_follower = Follower::new(replica_store.clone(), replica.clone(), v);
    let changes = replica.subscribe(SLOT);
    replica_follower.poll_once().await.unwrap();
    assert!(changes.has_changed().unwrap());
    assert_eq!(replica.current(SLOT).unwrap().sha256, new_sha);
    let rows = replica_store.active_models().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, good.id);
    assert_eq!(store.model_activations(SLOT).await.unwrap().len(), 5);
    replica_store.close().await;
}

fn copy_package(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.path().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// A replica follows an activation once the package reaches it, and refuses a package whose
/// files differ from what was activated.
async fn replicas_wait_for_the_package_and_refuse_other_bytes(db: &Db) {
    let store = &db.store;
    let v = validator();
    let scratch = tempfile::tempdir().unwrap();
    let shared = scratch.path().join("washer");
    copy_package(&repo().join("models/demo"), &shared);
    let (first, _) = activate(store, &v, request(&shared, None)).await.unwrap();

    // On the replica, the package has not arrived yet.
    let hidden = scratch.path().join("in-transit");
    std::fs::rename(&shared, &hidden).unwrap();
    let replica = ModelRegistry::new();
    let mut follower = Follower::new(db.another_instance().await, replica.clone(), v.clone());
    assert!(follower.poll_once().await.unwrap().is_empty());
    assert!(replica.current(SLOT).is_none());
    std::fs::rename(&hidden, &shared).unwrap();
    let events = follower.poll_once().await.unwrap();
    assert!(
        matches!(&events[..], [FollowEvent::Swapped { active, .. }] if active.sha256 == first.sha256 && active.activation_id == Some(first.id)),
        "{events:?}"
    );

    // A second package whose files change on this machine after activation.
    let next = scratch.path().join("next");
    copy_package(&repo().join("testdata/models/dynamic-size"), &next);
    activate(store, &v, request(&next, None)).await.unwrap();
    std::fs::copy(
        repo().join("models/demo/model.onnx"),
        next.join("model.onnx"),
    )
    .unwrap();
    let events = follower.poll_once().await.unwrap();
    assert!(
        matches!(&events[..], [FollowEvent::Failed { error, .. }] if error.contains("this machine has other files at that path")),
        "{events:?}"
    );
    assert_eq!(replica.current(SLOT).unwrap().sha256, first.sha256);
    assert_eq!(replica.current(SLOT).unwrap().generation, 1);

    // The replica left on the old model is in the audit trail, with the reason and the host.
    let audit = store.audit_for("model_slot", SLOT).await.unwrap();
    let failed: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "model.load_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{audit:?}");
    let reason = failed[0].reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("this machine has other files at that path")
            && reason.contains(&linesight::model::registry::instance_name()),
        "{reason}"
    );
    assert!(store.verify_audit().await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_on_sqlite() {
    let db = sqlite().await;
    replicas_wait_for_the_package_and_refuse_other_bytes(&db).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_on_postgres() {
    let db = postgres().await;
    replicas_wait_for_the_package_and_refuse_other_bytes(&db).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_on_sqlite() {
    let db = sqlite().await;
    broken_models_are_refused_under_load_and_a_good_one_swaps_without_gap(&db).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_on_postgres() {
    let db = postgres().await;
    broken_models_are_refused_under_load_and_a_good_one_swaps_without_gap(&db).await;
    db.finish().await;
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn models_activate_refuses_with_a_clear_message_and_active_lists_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("q.db").display());
    let run = |args: &[&str]| {
        linesight()
            .args(args)
            .env("LINESIGHT__STORE__URL", &db_url)
            .env("USER", "ops")
            .current_dir(repo())
            .output()
            .unwrap()
    };
    let out = run(&["models", "activate", "--slot", "press", "models/demo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("slot press now serves"));

    let out = run(&[
        "models",
        "activate",
        "--slot",
        "press",
        "testdata/models/bad-input-rank",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("model for slot press refused, the current model keeps serving")
            && err.contains("bad-input-rank"),
        "{err}"
    );

    let out = run(&["models", "active", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let demo_sha = ModelPackage::open(&repo().join("models/demo"))
        .unwrap()
        .sha256;
    assert_eq!(rows[0]["slot"], "press");
    assert_eq!(rows[0]["sha256"], demo_sha.as_str());
    assert_eq!(rows[0]["actor"], "cli:ops");
}

#[test]
fn config_check_prints_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config: PathBuf = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[models]\npoll_interval_ms = 1\n[store]\nmax_connections = 0\n\
         [[cameras]]\nid = \"press\"\nsource = { kind = \"synthetic\", seed = 1, defect_rate = 0.3 }\n\
         mode = \"free-run\"\nmodel = \"/nonexistent/model\"\n\
         [[cameras]]\nid = \"replay\"\nsource = { kind = \"folder\", path = \"/data\", preload_mib = 0 }\n\
         model = \"/nonexistent/model\"\n",
    )
    .unwrap();
    let out = linesight()
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("models.poll_interval_ms = 1"), "{err}");
    assert!(err.contains("store.max_connections = 0"), "{err}");
    assert!(
        err.contains("cameras[1].source.preload_mib = 0: must be between 1 and 65536"),
        "{err}"
    );
    // The model packages are checked in the same run.
    assert!(
        err.contains("cameras.press.model = \"/nonexistent/model\""),
        "{err}"
    );

    // Values valid, but the camera's model package is missing.
    std::fs::write(
        &config,
        "[[cameras]]\nid = \"press\"\nsource = { kind = \"synthetic\", seed = 1, defect_rate = 0.3 }\n\
         mode = \"free-run\"\nmodel = \"/nonexistent/model\"\n",
    )
    .unwrap();
    let out = linesight()
        .args(["config", "check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cameras.press.model = \"/nonexistent/model\""),
        "{}",
        text(&out.stderr)
    );

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[[cameras]]\nid = \"press\"\nsource = {{ kind = \"synthetic\", seed = 1, defect_rate = 0.3 }}\n\
             mode = \"free-run\"\nmodel = \"{}\"\n",
            repo().join("models/demo").display()
        ),
    )
    .unwrap();
    let out = linesight()
        .args(["config", "check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration valid (1 cameras)"));
}
