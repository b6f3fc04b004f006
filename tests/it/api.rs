//! HTTP API: router tests with `oneshot`, a fresh SQLite store per test and the demo model.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use linesight::api::{ApiConfig, ApiState, InspectorPool, SlotConfig, UploadAnswer, app};
use linesight::quality::{NewInspection, QualityConfig, Role};
use linesight::store::NewUser;
use tower::ServiceExt as _;

use linesight::model::SessionOptions;
use linesight::model::registry::Validator;
use linesight::preprocess::DecodeLimits;

use crate::common::{inspector, repo, runtime};
use crate::quality::{Db, sqlite};

struct Fixture {
    db: Db,
    images: tempfile::TempDir,
    state: ApiState,
    /// Kept so that live streams run until the test ends.
    _stopping: tokio::sync::watch::Sender<bool>,
}

async fn fixture(config: ApiConfig) -> Fixture {
    let db = sqlite().await;
    let images = tempfile::tempdir().unwrap();
    for (name, role) in [
        ("op", Role::Operator),
        ("insp", Role::Inspector),
        ("qa", Role::QaApprover),
        ("admin", Role::Admin),
    ] {
        db.store
            .add_user(
                NewUser {
                    username: name.into(),
                    full_name: name.into(),
                    role,
                    password: format!("{name}-secret-pw"),
                },
                "test",
            )
            .await
            .unwrap();
    }
    let (stopping_tx, stopping) = tokio::sync::watch::channel(false);
    let sign_in_throttle = config.sign_in_throttle();
    let state = ApiState {
        store: db.store.clone(),
        quality: QualityConfig::default(),
        config,
        image_dir: images.path().to_path_buf(),
        attachment_dir: images.path().join("attachments"),
        inspectors: Arc::new(InspectorPool::new(vec![inspector(
            &repo().join("models/demo"),
            None,
        )])),
        line: "L1".into(),
        pipeline: None,
        metrics: Arc::default(),
        slots: vec![SlotConfig {
            slot: "cam1".into(),
            camera: "cam1".into(),
            recipe: None,
            model: repo().join("models/demo"),
            threshold: None,
        }],
        upload_model: repo().join("models/demo"),
        validator: Validator {
            runtime: runtime(),
            options: SessionOptions::default(),
            limits: DecodeLimits::default(),
        },
        stopping,
        sign_in_throttle,
    };
    Fixture {
        db,
        images,
        state,
        _stopping: stopping_tx,
    }
}

fn basic(user: &str) -> String {
    basic_with(user, &format!("{user}-secret-pw"))
}

/// An HTTP Basic `Authorization` value.
fn basic_with(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn washer(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("testdata/synthetic/test").join(name)).unwrap()
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, Vec<u8>, Option<String>) {
    let res = app(f.state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let media = res
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, body, media)
}

fn upload(user: Option<&str>, query: &str, media: &str, bytes: Vec<u8>) -> Request<Body> {
    let mut b =
        Request::post(format!("/api/v1/inspections?{query}")).header(header::CONTENT_TYPE, media);
    if let Some(u) = user {
        b = b.header(header::AUTHORIZATION, basic(u));
    }
    b.body(Body::from(bytes)).unwrap()
}

/// An upload gives its inspector back only once it has an overlay slot: with every slot taken
/// (drawings of large images still going on), further uploads wait for the inspector instead of
/// each holding its decoded image in memory; once a slot frees, they go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_wait_for_an_overlay_slot_before_freeing_their_inspector() {
    let f = fixture(ApiConfig {
        inference_timeout_ms: 1_500,
        ..ApiConfig::default()
    })
    .await;
    let slots = f.state.inspectors.overlay_slots();
    let taken = slots.clone().acquire_many_owned(1).await.unwrap();
    let first = send(
        &f,
        upload(
            Some("op"),
            "part_id=P1&lot=L1",
            "image/png",
            washer("good/000.png"),
        ),
    );
    let second = async {
        // Sent once the first holds the only inspector.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        send(
            &f,
            upload(
                Some("op"),
                "part_id=P2&lot=L1",
                "image/png",
                washer("good/001.png"),
            ),
        )
        .await
    };
    let ((s1, b1, _), (s2, b2, _)) = tokio::join!(first, second);
    assert_eq!(
        s1,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&b1)
    );
    assert_eq!(
        s2,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&b2)
    );
    assert!(
        json(&b2)["detail"]
            .as_str()
            .unwrap()
            .contains("inspectors stayed busy"),
        "the inspector was held while the first waited for a slot: {}",
        String::from_utf8_lossy(&b2)
    );
    drop(taken);
    let (s, b, _) = send(
        &f,
        upload(
            Some("op"),
            "part_id=P3&lot=L1",
            "image/png",
            washer("good/002.png"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    assert_eq!(slots.available_permits(), 1);
}

#[tokio::test]
async fn upload_scores_stores_image_and_overlay_and_opens_a_task() {
    let f = fixture(ApiConfig::default()).await;
    let (status, body, _) = send(
        &f,
        upload(
            Some("op"),
            "part_id=P1&lot=LOT7&recipe=r1",
            "image/png",
            washer("scratch/001.png"),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let answer: UploadAnswer = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer.verdict, "defect");
    assert!(answer.score > answer.threshold);
    assert_eq!(answer.model_sha256.len(), 64);
    assert!(!answer.regions.is_empty());
    let task = answer
        .task
        .expect("a rejected part opens a secondary-inspection task");

    // The stored record matches the answer.
    let stored = f.db.store.inspection(answer.id).await.unwrap();
    assert_eq!(stored.inspection.part_id, "P1");
    assert_eq!(stored.inspection.source, "manual");
    assert_eq!(stored.inspection.score, answer.score);

    // Image and overlay come back as PNG; the overlay differs from the upload.
    let get = |path: &str, user: &str| {
        Request::get(path)
            .header(header::AUTHORIZATION, basic(user))
            .body(Body::empty())
            .unwrap()
    };
    let (s, original, media) = send(&f, get(&answer.image, "op")).await;
    assert_eq!((s, media.as_deref()), (StatusCode::OK, Some("image/png")));
    assert_eq!(original, washer("scratch/001.png"));
    let overlay_link = answer.overlay.expect("overlay link");
    let (s, overlay, _) = send(&f, get(&overlay_link, "op")).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(overlay, original);
    assert!(image::load_from_memory(&overlay).is_ok());
    assert!(f.images.path().read_dir().unwrap().next().is_some());
    // Each stored file holds what its name promises, and the record's files are there.
    let verify = || {
        f.db.store
            .verify_files(&f.state.image_dir, &f.state.attachment_dir)
    };
    let (images, _) = verify().await.unwrap();
    assert_eq!((images.files, images.is_ok()), (2, true), "{images:?}");
    // Another folder than the service's (another configuration) is said once, not per file.
    let (elsewhere, _) =
        f.db.store
            .verify_files(&f.state.image_dir.join("nowhere"), &f.state.attachment_dir)
            .await
            .unwrap();
    assert!(
        elsewhere.missing == 2
            && elsewhere.problems.len() == 1
            && elsewhere.problems[0].contains("no such folder, yet 2 images are recorded"),
        "{elsewhere:?}"
    );
    // An overlay altered on disk is no longer served as the evidence; the check names it.
    let overlay_hash = overlay_link.rsplit('/').next().unwrap().to_owned();
    let overlay_file = linesight::store::image_path(&f.state.image_dir, &overlay_hash).unwrap();
    std::fs::write(&overlay_file, &original).unwrap();
    let (s, _, _) = send(&f, get(&overlay_link, "op")).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    let (images, _) = verify().await.unwrap();
    assert_eq!((images.damaged, images.missing), (1, 0), "{images:?}");
    assert!(
        images.problems[0].starts_with(&format!("{overlay_hash}: its content hashes to ")),
        "{images:?}"
    );
    // Removed by hand, it is missing: its record still names it.
    std::fs::remove_file(&overlay_file).unwrap();
    let (images, _) = verify().await.unwrap();
    assert_eq!((images.files, images.missing), (1, 1), "{images:?}");
    assert!(
        images.problems[0].contains("removed outside linesight"),
        "{images:?}"
    );
    std::fs::write(&overlay_file, &overlay).unwrap();

    // The inspector claims it and confirms the defect.
    let (s, _, _) = send(&f, get("/api/v1/tasks?state=pending", "op")).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "operators do not see the queue");
    let (s, body, _) = send(&f, get("/api/v1/tasks?state=pending", "insp")).await;
    assert_eq!(s, StatusCode::OK);
    let pending: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(pending[0]["id"], task);
    let (s, body, _) = send(
        &f,
        Request::post("/api/v1/tasks/claim")
            .header(header::AUTHORIZATION, basic("insp"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let decide = |action: &str| {
        Request::post(format!("/api/v1/tasks/{task}/decision"))
            .header(header::AUTHORIZATION, basic("insp"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(format!(
                r#"{{"action":"{action}","comment":"scratch visible"}}"#
            )))
            .unwrap()
    };
    let (s, body, _) = send(&f, decide("confirm_defect")).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let done: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(done["task"]["state"], "confirmed");
    assert_eq!(done["task"]["claimed_by_username"], "insp");
    assert_eq!(done["task"]["decided_by_username"], "insp");
    // Deciding again is a state conflict, reported as problem+json.
    let (s, _, media) = send(&f, decide("override_good")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(media.as_deref(), Some("application/problem+json"));

    // Removed by image retention (a quota of 0), the image is 410 Gone with the reason; the
    // record keeps its reference. A hash never stored is 404.
    let pruned =
        f.db.store
            .enforce_image_retention(f.images.path(), 90, 0, linesight::quality::now_ms())
            .await
            .unwrap();
    assert_eq!((pruned.evicted, pruned.missing), (2, 0));
    let (s, body, media) = send(&f, get(&answer.image, "op")).await;
    assert_eq!(s, StatusCode::GONE, "{}", String::from_utf8_lossy(&body));
    assert_eq!(media.as_deref(), Some("application/problem+json"));
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("image retention")),
        "{problem}"
    );
    let stored = f.db.store.inspection(answer.id).await.unwrap();
    assert!(
        answer
            .image
            .ends_with(stored.inspection.image_ref.as_deref().unwrap())
    );
    let (s, _, _) = send(&f, get(&format!("/api/v1/images/{}", "0".repeat(64)), "op")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // What `audit verify` compares: the upload's record and its task, claimed and decided
    // over HTTP, agree with the entries that recorded them.
    let check = f.db.store.verify_records().await.unwrap();
    assert_eq!(
        (check.inspections, check.tasks, check.mismatches_total),
        (1, 1, 0),
        "{check:?}"
    );
}

#[tokio::test]
async fn a_good_part_with_a_threshold_override_turns_defect() {
    let f = fixture(ApiConfig::default()).await;
    let (s, body, _) = send(
        &f,
        upload(
            Some("op"),
            "part_id=P2&lot=L",
            "image/png",
            washer("good/000.png"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let good: UploadAnswer = serde_json::from_slice(&body).unwrap();
    assert_eq!(good.verdict, "good");
    let (s, body, _) = send(
        &f,
        upload(
            Some("op"),
            &format!("part_id=P3&lot=L&threshold={}", good.score / 2.0),
            "image/png",
            washer("good/000.png"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let strict: UploadAnswer = serde_json::from_slice(&body).unwrap();
    assert_eq!(strict.verdict, "defect");
    assert!((strict.score - good.score).abs() < 1e-6);
    // A threshold the anomalib model cannot decide with (its scores lie in [0, 1]) is refused.
    let (s, body, _) = send(
        &f,
        upload(
            Some("op"),
            "part_id=P4&lot=L&threshold=1.5",
            "image/png",
            washer("good/000.png"),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(problem_field(&body).as_deref(), Some("threshold"));
}

/// A malformed path parameter, query or JSON body is answered like every other refusal:
/// problem+json naming the part at fault (not axum's plain text), 413 past the body limit, and
/// a store refusal names the field its message is about.
#[tokio::test]
async fn malformed_paths_queries_and_bodies_are_problem_json() {
    let f = fixture(ApiConfig {
        max_body_bytes: 4096,
        ..ApiConfig::default()
    })
    .await;
    let qa = basic("qa");
    let big = format!(r#"{{"reason":"{}"}}"#, "x".repeat(70_000));
    let cases = [
        (
            call("GET", "/api/v1/inspections/abc", Some(&qa), None),
            StatusCode::BAD_REQUEST,
            Some("path"),
        ),
        (
            call("GET", "/api/v1/ncrs/1/attachments/x", Some(&qa), None),
            StatusCode::BAD_REQUEST,
            Some("path"),
        ),
        (
            call("GET", "/api/v1/tasks?state=bogus", Some(&qa), None),
            StatusCode::BAD_REQUEST,
            Some("query"),
        ),
        (
            call(
                "GET",
                "/api/v1/cameras/summary?since_ms=soon",
                Some(&qa),
                None,
            ),
            StatusCode::BAD_REQUEST,
            Some("query"),
        ),
        (
            call("POST", "/api/v1/lots/L1/hold", Some(&qa), Some("{")),
            StatusCode::BAD_REQUEST,
            Some("body"),
        ),
        // A lot no record could carry is refused before anything is written.
        (
            call(
                "POST",
                &format!("/api/v1/lots/{}/release", "L".repeat(257)),
                Some(&qa),
                None,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("lot"),
        ),
        (
            call(
                "POST",
                &format!("/api/v1/lots/{}/hold", "L".repeat(201)),
                Some(&qa),
                Some(r#"{"reason":"suspect"}"#),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("lot"),
        ),
        // Every listing bounds its page: a negative limit is "no limit" to SQLite.
        (
            call("GET", "/api/v1/tasks?limit=-1", Some(&qa), None),
            StatusCode::BAD_REQUEST,
            Some("limit"),
        ),
        (
            call("GET", "/api/v1/ncrs?limit=0", Some(&qa), None),
            StatusCode::BAD_REQUEST,
            Some("limit"),
        ),
        (
            call("GET", "/api/v1/lots?limit=100000", Some(&qa), None),
            StatusCode::BAD_REQUEST,
            Some("limit"),
        ),
        (
            call("POST", "/api/v1/lots/L1/hold", Some(&qa), Some(&big)),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        (
            call(
                "POST",
                "/api/v1/tokens",
                Some(&basic("admin")),
                Some(r#"{"username":"op","name":" "}"#),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("name"),
        ),
    ];
    // A lot longer than a record's, held by an earlier version (holds took 256 bytes): still
    // released. One as long that was never held is refused, and no row is made for it.
    let long = "H".repeat(230);
    sqlx::query("INSERT INTO lots (lot, held_at_ms, hold_reason) VALUES ($1, 1, 'held before')")
        .bind(&long)
        .execute(f.db.store.raw_pool())
        .await
        .unwrap();
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            &format!("/api/v1/lots/{long}/release"),
            Some(&qa),
            None,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let never = "N".repeat(230);
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            &format!("/api/v1/lots/{never}/release"),
            Some(&qa),
            None,
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert!(
        json(&b)["detail"]
            .as_str()
            .unwrap()
            .contains("released only when it is held")
    );
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lots WHERE lot = $1")
        .bind(&never)
        .fetch_one(f.db.store.raw_pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    for (req, status, field) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let res = app(f.state.clone()).oneshot(req).await.unwrap();
        assert_eq!(res.status(), status, "{what}");
        assert_eq!(
            res.headers()[header::CONTENT_TYPE],
            "application/problem+json",
            "{what}"
        );
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let p = json(&body);
        assert_eq!(p["field"].as_str(), field, "{what}: {p}");
        assert!(
            p["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {p}"
        );
    }
}

/// Bodies other than uploads and attachments (JSON) are limited to 64 KiB, also where they
/// are read before the caller is known (a sign-in), so that clients without an account cannot
/// hold `api.max_body_bytes` each in memory; an upload still takes up to `api.max_body_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_are_limited_before_the_caller_is_known_but_uploads_are_not() {
    let f = fixture(ApiConfig::default()).await;
    let padded = |n: usize| format!(r#"{{"username":"qa","password":"{}"}}"#, "A".repeat(n));
    for (req, want) in [
        (
            call("POST", "/api/v1/session", None, Some(&padded(1 << 20))),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            call(
                "POST",
                "/api/v1/lots/L1/hold",
                Some(&basic("qa")),
                Some(&format!(r#"{{"reason":"{}"}}"#, "x".repeat(70_000))),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // Under the limit, the body is read and the password checked as usual.
        (
            call("POST", "/api/v1/session", None, Some(&padded(60_000))),
            StatusCode::UNAUTHORIZED,
        ),
    ] {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, body, media) = send(&f, req).await;
        assert_eq!(status, want, "{what}: {}", String::from_utf8_lossy(&body));
        assert_eq!(media.as_deref(), Some("application/problem+json"), "{what}");
        if want == StatusCode::PAYLOAD_TOO_LARGE {
            let p = json(&body);
            assert!(
                p["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("JSON body larger than 65536 bytes")),
                "{what}: {p}"
            );
        }
    }
    // A noisy 320×256 PNG, several times the JSON limit: taken.
    let noise = image::RgbImage::from_fn(320, 256, |x, y| {
        let v = x
            .wrapping_add(1)
            .wrapping_mul(2_654_435_761u32.wrapping_mul(y + 1))
            >> 7;
        image::Rgb([v as u8, (v >> 8) as u8, (v >> 16) as u8])
    });
    let mut png = Vec::new();
    noise
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    assert!(png.len() > 3 * (64 << 10), "{} bytes", png.len());
    let (status, body, _) = send(
        &f,
        upload(Some("op"), "part_id=P-big&lot=L", "image/png", png),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test]
async fn refusals_are_problem_json_naming_the_cause() {
    let f = fixture(ApiConfig {
        max_body_bytes: 4096,
        ..ApiConfig::default()
    })
    .await;
    let png = washer("good/000.png");
    assert!(png.len() > 4096);
    let cases = [
        (
            upload(None, "part_id=P&lot=L", "image/png", vec![0; 16]),
            StatusCode::UNAUTHORIZED,
        ),
        (
            upload(Some("op"), "part_id=P&lot=L", "text/plain", vec![1, 2]),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            upload(
                Some("op"),
                "part_id=P&lot=L",
                "image/png",
                b"not an image".to_vec(),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            upload(Some("op"), "part_id=P&lot=L", "image/png", png),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (req, want) in cases {
        let (s, body, media) = send(&f, req).await;
        assert_eq!(s, want, "{}", String::from_utf8_lossy(&body));
        if want != StatusCode::PAYLOAD_TOO_LARGE {
            assert_eq!(media.as_deref(), Some("application/problem+json"));
            let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(p["status"], want.as_u16());
            assert!(p["detail"].is_string());
        }
    }
    // Wrong password: 401, and nothing was stored.
    let mut req = upload(Some("op"), "part_id=P&lot=L", "image/png", vec![]);
    req.headers_mut().insert(
        header::AUTHORIZATION,
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("op:wrong")
        )
        .parse()
        .unwrap(),
    );
    assert_eq!(send(&f, req).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(f.db.store.inspection_count().await.unwrap(), 0);
    let (s, _, _) = send(&f, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(s, StatusCode::OK);
}

/// A problem+json answer's status and `field` member.
fn problem_field(body: &[u8]) -> Option<String> {
    let p: serde_json::Value = serde_json::from_slice(body).unwrap();
    p["field"].as_str().map(str::to_owned)
}

/// What the record would refuse is refused before an inspector is taken: with the only
/// inspector lent elsewhere, each of these is answered at once, naming its field, instead of
/// waiting for the inspector and answering 503.
#[tokio::test]
async fn upload_refusals_come_before_the_model_and_name_their_field() {
    let f = fixture(ApiConfig {
        inference_timeout_ms: 2_000,
        ..ApiConfig::default()
    })
    .await;
    let held = f
        .state
        .inspectors
        .lend(std::time::Duration::from_secs(1))
        .await
        .unwrap();
    let png = washer("good/000.png");
    let long = "r".repeat(201);
    let cases = [
        ("part_id=P&lot=L&threshold=high", "query"),
        ("part_id=P&lot=L&colour=red", "query"),
        ("part_id=%20&lot=L", "part_id"),
        ("part_id=P&lot=", "lot"),
        (&*format!("part_id=P&lot=L&recipe={long}"), "recipe"),
        (&*format!("part_id=P&lot=L&camera={long}"), "camera"),
        (
            &*format!("part_id=P&lot=L&defect_class={long}"),
            "defect_class",
        ),
    ];
    for (query, field) in cases {
        let started = std::time::Instant::now();
        let (s, body, media) = send(&f, upload(Some("op"), query, "image/png", png.clone())).await;
        assert_eq!(
            s,
            StatusCode::BAD_REQUEST,
            "{query}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(media.as_deref(), Some("application/problem+json"));
        assert_eq!(problem_field(&body).as_deref(), Some(field), "{query}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "{query}"
        );
    }
    let (_, body, _) = send(
        &f,
        upload(
            Some("op"),
            &format!("part_id=P&lot=L&recipe={long}"),
            "image/png",
            png.clone(),
        ),
    )
    .await;
    assert!(
        String::from_utf8_lossy(&body).contains("201 bytes long: at most 200"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    // A TIFF sent as image/png: refused by what its bytes are.
    let mut tiff = std::io::Cursor::new(Vec::new());
    image::RgbImage::new(8, 8)
        .write_to(&mut tiff, image::ImageFormat::Tiff)
        .unwrap();
    let (s, body, _) = send(
        &f,
        upload(
            Some("op"),
            "part_id=P&lot=L",
            "image/png",
            tiff.into_inner(),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(String::from_utf8_lossy(&body).contains("image/tiff"));
    drop(held);
    assert_eq!(f.db.store.inspection_count().await.unwrap(), 0);
}

/// All inspectors busy for `api.inference_timeout_ms`: 503 saying so, not an endless wait; an
/// inspector whose inspection panics still goes back to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_answers_503_and_a_panic_gives_the_inspector_back() {
    let f = fixture(ApiConfig {
        inference_timeout_ms: 300,
        ..ApiConfig::default()
    })
    .await;
    let pool = f.state.inspectors.clone();
    let held = pool.lend(std::time::Duration::from_secs(1)).await.unwrap();
    let png = washer("good/000.png");
    let (s, body, _) = send(
        &f,
        upload(Some("op"), "part_id=P&lot=L", "image/png", png.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let detail = String::from_utf8_lossy(&body).to_string();
    assert!(
        detail.contains("all 1 inspectors stayed busy") && detail.contains("300"),
        "{detail}"
    );
    // The holder panics: the inspector is back, and the next upload is inspected.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _lent = held;
        panic!("an inspection failed badly");
    }));
    assert!(panicked.is_err());
    assert_eq!(pool.idle(), 1);
    let (s, body, _) = send(&f, upload(Some("op"), "part_id=P&lot=L", "image/png", png)).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
}

/// Upload bodies are read four per inspector at a time: an upload (or an NCR attachment) that
/// finds every slot taken for `api.inference_timeout_ms` is answered 503 before its body is
/// read, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_bodies_in_memory_wait_then_get_503() {
    let f = fixture(ApiConfig {
        inference_timeout_ms: 300,
        ..ApiConfig::default()
    })
    .await;
    let slots = f.state.inspectors.body_slots();
    assert_eq!(
        slots.available_permits(),
        f.state.inspectors.size() * linesight::api::BODIES_PER_INSPECTOR
    );
    let held = slots
        .clone()
        .acquire_many_owned(slots.available_permits() as u32)
        .await
        .unwrap();
    let png = washer("good/000.png");
    let (s, body, _) = send(
        &f,
        upload(Some("op"), "part_id=P&lot=L", "image/png", png.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let detail = json(&body)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("4 request bodies") && detail.contains("300 ms"),
        "{detail}"
    );
    assert_eq!(f.db.store.inspection_count().await.unwrap(), 0);
    // An NCR attachment takes a body slot the same way.
    let (media, form) = multipart(&[], Some(("file", "report.pdf", &[b'%'; 4096])));
    let attachment = Request::post("/api/v1/ncrs/1/attachments")
        .header(header::AUTHORIZATION, basic("insp"))
        .header(header::CONTENT_TYPE, media)
        .body(Body::from(form))
        .unwrap();
    let (s, body, _) = send(&f, attachment).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let detail = json(&body)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("4 request bodies"), "{detail}");
    drop(held);
    let (s, body, _) = send(&f, upload(Some("op"), "part_id=P&lot=L", "image/png", png)).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
    assert_eq!(slots.available_permits(), 4, "the slot is given back");
}

/// A body that stalls halfway, an upload's or an NCR attachment's, is answered 408 after
/// `api.body_timeout_ms`, naming it, and its body slot goes back: a client whose link dropped
/// does not keep the slot (and in the end every upload) for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_gets_408_and_gives_its_slot_back() {
    use futures::StreamExt as _;
    let f = fixture(ApiConfig {
        body_timeout_ms: 300,
        ..ApiConfig::default()
    })
    .await;
    let slots = f.state.inspectors.body_slots();
    let all = slots.available_permits();
    // The first half of the body, then nothing more, and the connection kept open.
    let stalled = |bytes: &[u8]| {
        let half = axum::body::Bytes::copy_from_slice(&bytes[..bytes.len() / 2]);
        Body::from_stream(
            futures::stream::iter([Ok::<_, std::io::Error>(half)])
                .chain(futures::stream::pending()),
        )
    };
    let png = washer("good/000.png");
    let mut raw = upload(Some("op"), "part_id=P&lot=L", "image/png", Vec::new());
    *raw.body_mut() = stalled(&png);
    let (media, form) = multipart(
        &[("part_id", "P"), ("lot", "L")],
        Some(("image", "a.png", &png)),
    );
    let mut multi = upload(Some("op"), "", &media, Vec::new());
    *multi.body_mut() = stalled(&form);
    let (media, form) = multipart(&[], Some(("file", "report.pdf", &[b'%'; 4096])));
    let attachment = Request::post("/api/v1/ncrs/1/attachments")
        .header(header::AUTHORIZATION, basic("insp"))
        .header(header::CONTENT_TYPE, media)
        .body(stalled(&form))
        .unwrap();
    for (what, req) in [
        ("raw upload", raw),
        ("multipart upload", multi),
        ("attachment", attachment),
    ] {
        let (s, body, _) = tokio::time::timeout(std::time::Duration::from_secs(20), send(&f, req))
            .await
            .unwrap_or_else(|_| panic!("{what}: a stalled body is answered, not awaited for ever"));
        assert_eq!(s, StatusCode::REQUEST_TIMEOUT, "{what}");
        let detail = json(&body)["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            detail.contains("api.body_timeout_ms = 300 ms"),
            "{what}: {detail}"
        );
        assert_eq!(
            slots.available_permits(),
            all,
            "{what}: the slot is given back"
        );
    }
    assert_eq!(f.db.store.inspection_count().await.unwrap(), 0);
    // A body sent whole is served as before.
    let (s, body, _) = send(&f, upload(Some("op"), "part_id=P&lot=L", "image/png", png)).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&body));
}

/// Model reports open a session each: one at a time per process. A reader kept waiting past
/// `api.inference_timeout_ms` is answered 503 saying why, and served once the turn is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_reports_are_built_one_at_a_time() {
    let mut f = fixture(ApiConfig {
        inference_timeout_ms: 300,
        ..ApiConfig::default()
    })
    .await;
    let op = basic("op");
    let turn = linesight::api::model_report_turn();
    let held = turn.acquire().await.unwrap();
    let (s, body, _) = send(&f, call("GET", "/api/v1/models/contract", Some(&op), None)).await;
    drop(held);
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let detail = json(&body)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("another model report") && detail.contains("300"),
        "{detail}"
    );
    // The turn is one per process: other tests' reports may hold it a while.
    f.state.config.inference_timeout_ms = 60_000;
    let (s, body, _) = send(&f, call("GET", "/api/v1/models/contract", Some(&op), None)).await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
}

/// A disk that cannot take the files is the service's fault: 500, logged, its detail (the
/// path) not sent, and nothing recorded.
#[tokio::test]
async fn an_image_folder_that_cannot_be_written_is_a_server_error() {
    let mut f = fixture(ApiConfig::default()).await;
    let blocker = f.images.path().join("not-a-folder");
    std::fs::write(&blocker, b"a file where the image folder should be").unwrap();
    f.state.image_dir = blocker.join("images");
    let (s, body, media) = send(
        &f,
        upload(
            Some("op"),
            "part_id=P&lot=L",
            "image/png",
            washer("good/000.png"),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(media.as_deref(), Some("application/problem+json"));
    assert!(
        !String::from_utf8_lossy(&body).contains("not-a-folder"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(f.db.store.inspection_count().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_share_the_inspector_pool() {
    let mut f = fixture(ApiConfig::default()).await;
    f.state.inspectors = Arc::new(InspectorPool::new(vec![
        inspector(&repo().join("models/demo"), None),
        inspector(&repo().join("models/demo"), None),
    ]));
    let bytes = washer("good/000.png");
    let uploads = (0..8).map(|i| {
        let router = app(f.state.clone());
        let req = upload(
            Some("op"),
            &format!("part_id=C{i}&lot=L"),
            "image/png",
            bytes.clone(),
        );
        tokio::spawn(async move { router.oneshot(req).await.unwrap().status() })
    });
    for handle in uploads {
        assert_eq!(handle.await.unwrap(), StatusCode::CREATED);
    }
    assert_eq!(f.db.store.inspection_count().await.unwrap(), 8);
}

#[tokio::test]
async fn only_qa_releases_lots_and_missing_ncrs_are_404() {
    let f = fixture(ApiConfig::default()).await;
    let req = |method: &str, path: &str, user: &str| {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, basic(user))
            .body(Body::empty())
            .unwrap()
    };
    for (user, want) in [
        ("op", StatusCode::FORBIDDEN),
        ("insp", StatusCode::FORBIDDEN),
        ("qa", StatusCode::OK),
        ("admin", StatusCode::OK),
    ] {
        let (s, body, _) = send(&f, req("POST", "/api/v1/lots/L9/release", user)).await;
        assert_eq!(s, want, "{user}: {}", String::from_utf8_lossy(&body));
    }
    let (s, body, _) = send(&f, req("GET", "/api/v1/ncrs/42", "op")).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let p: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(p["detail"], "ncr 42 does not exist");
}

/// One HTTP/1.1 request over a plain socket (`Connection: close`); the status and the body.
pub(crate) fn http(port: u16, head: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let request = format!(
        "{head}\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A `linesight serve` child on a free loopback port, with a store in `dir` and one user added
/// with `linesight users add` (password on stdin); `extra_env` adds settings.
#[cfg(unix)]
struct ServeChild {
    child: std::process::Child,
    port: u16,
    env: Vec<(String, std::ffi::OsString)>,
}

#[cfg(unix)]
impl ServeChild {
    fn start(
        dir: &std::path::Path,
        user: (&str, &str, &str),
        extra_env: &[(&str, &std::path::Path)],
    ) -> ServeChild {
        use std::io::Write as _;
        use std::process::Stdio;

        let mut env: Vec<(String, std::ffi::OsString)> = vec![
            (
                "LINESIGHT__STORE__URL".into(),
                format!("sqlite://{}", dir.join("q.db").display()).into(),
            ),
            ("LINESIGHT__STORE__DATA_DIR".into(), dir.into()),
        ];
        for (k, v) in extra_env {
            env.push(((*k).into(), (*v).into()));
        }
        let (name, role, password) = user;
        let mut add = crate::common::linesight();
        add.args(["users", "add", name, "--full-name", name, "--role", role])
            .envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = add
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = crate::common::linesight()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ServeChild { child, port, env }
    }

    /// Waits until it accepts connections (a minute at most).
    fn wait_listening(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "linesight serve never listened"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// `linesight ARGS` against the same store.
    fn cli(&self, args: &[&str]) -> std::process::Output {
        crate::common::linesight()
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    }

    /// SIGTERM; asserts exit code 0.
    fn stop(self) {
        crate::common::sigterm(&self.child);
        let out = self.child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `linesight serve` from the command line: users added with `linesight users add`, a manual
/// upload over HTTP inspected with the bundled model and recorded, a request without
/// credentials refused, and SIGTERM stops it with exit code 0.
#[cfg(unix)]
#[test]
fn serve_inspects_uploads_over_http_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // A temporary image file a crash left two hours ago: image keeping removes it at start-up.
    let left = dir.path().join("images/.tmp/crashed.tmp");
    std::fs::create_dir_all(left.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&left).unwrap();
    file.set_len(12).unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(7200))
        .unwrap();
    let server = ServeChild::start(
        dir.path(),
        ("ana", "inspector", "ana-long-password"),
        &[(
            "LINESIGHT__API__SIGN_IN_FAILURES_PER_ADDRESS",
            std::path::Path::new("2"),
        )],
    );
    let port = server.port;
    server.wait_listening();
    assert_eq!(http(port, "GET /healthz HTTP/1.1", b""), (200, "ok".into()));

    let image = std::fs::read(repo().join("testdata/synthetic/test/chip/000.png")).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("ana:ana-long-password");
    let (status, body) = http(
        port,
        &format!(
            "POST /api/v1/inspections?part_id=P-1&lot=L-9 HTTP/1.1\r\nContent-Type: image/png\r\nAuthorization: Basic {auth}"
        ),
        &image,
    );
    assert_eq!(status, 201, "{body}");
    let answer: UploadAnswer = serde_json::from_str(&body).unwrap();
    assert_eq!(answer.model_name, "demo-washer");
    assert!(matches!(
        answer.verdict.as_str(),
        "good" | "defect" | "uncertain"
    ));

    let (status, body) = http(
        port,
        &format!("GET /api/v1/inspections/{} HTTP/1.1", answer.id),
        b"",
    );
    assert_eq!(status, 401, "{body}");
    // A machine's bearer token, issued from the command line.
    let issued = server.cli(&["users", "token", "ana", "--name", "MES bridge"]);
    assert!(issued.status.success(), "{issued:?}");
    let token = String::from_utf8(issued.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("lst_"), "{token}");
    let (status, body) = http(
        port,
        &format!(
            "GET /api/v1/inspections/{} HTTP/1.1\r\nAuthorization: Bearer {token}",
            answer.id
        ),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"part_id\":\"P-1\""), "{body}");

    // The start-up pass of image keeping and the outbox, in the service's metrics.
    let (status, metrics) = http(port, "GET /metrics HTTP/1.1", b"");
    assert_eq!(status, 200);
    for line in [
        "linesight_image_keeping_passes_total{outcome=\"done\"} 1",
        "linesight_image_keeping_passes_total{outcome=\"failed\"} 0",
        "linesight_images_removed_total{reason=\"temporary\"} 1",
        "linesight_images_freed_bytes_total 12",
        "linesight_images_unrecorded 0",
        // No [outbox] here: nothing is queued, and the metrics say no sink is configured.
        "linesight_outbox_pending{sink=\"mqtt\"} 0",
        "linesight_outbox_sink_configured{sink=\"s3\"} 0",
        "linesight_outbox_full 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    assert!(!left.exists());

    // The server knows its clients' addresses: two wrong passwords use up 127.0.0.1's
    // allowance, and the right one is refused after them (before it is checked).
    let wrong = base64::engine::general_purpose::STANDARD.encode("ana:guess");
    for _ in 0..2 {
        let (status, _) = http(
            port,
            &format!("GET /api/v1/session HTTP/1.1\r\nAuthorization: Basic {wrong}"),
            b"",
        );
        assert_eq!(status, 401);
    }
    let (status, body) = http(
        port,
        &format!("GET /api/v1/session HTTP/1.1\r\nAuthorization: Basic {auth}"),
        b"",
    );
    assert_eq!(status, 429, "{body}");
    assert!(
        body.contains("api.sign_in_failures_per_address = 2"),
        "{body}"
    );

    server.stop();
}

/// `api.header_timeout_ms`: a connection that sends nothing, trickles its request headers, or
/// sits idle after a response, is closed once the limit passes, and cleartext HTTP/2 is not
/// spoken, while a complete request is served and a live event stream (its headers long sent)
/// stays open past it. A body that stops arriving fails its request after
/// `api.body_timeout_ms`; past `api.max_connections`, connections wait for one to close.
#[cfg(unix)]
#[test]
fn serve_closes_connections_whose_headers_do_not_arrive_in_time() {
    use std::io::{Read as _, Write as _};
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let server = ServeChild::start(
        dir.path(),
        ("ana", "inspector", "ana-long-password"),
        &[
            (
                "LINESIGHT__API__HEADER_TIMEOUT_MS",
                std::path::Path::new("700"),
            ),
            (
                "LINESIGHT__API__BODY_TIMEOUT_MS",
                std::path::Path::new("900"),
            ),
            ("LINESIGHT__API__MAX_CONNECTIONS", std::path::Path::new("2")),
        ],
    );
    let port = server.port;
    server.wait_listening();
    let connect = || {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
    };
    // Sends `bytes` on a new connection: how long until the server closes it (all it sends
    // is read), with what it sent.
    let sent_then_closed = |bytes: &[u8]| {
        let mut stream = connect();
        let since = Instant::now();
        stream.write_all(bytes).unwrap();
        let mut got = Vec::new();
        match stream.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("the connection was not closed: {e}"),
        }
        (since.elapsed(), String::from_utf8_lossy(&got).into_owned())
    };

    // A connection that sends nothing at all, and one that starts HTTP/2's preface (cleartext
    // HTTP/2 is not spoken): closed at the limit, or at once, with no HTTP/2 answer.
    let (after, sent) = sent_then_closed(b"");
    assert!(
        (Duration::from_millis(600)..Duration::from_secs(10)).contains(&after),
        "closed after {after:?}"
    );
    assert!(sent.is_empty(), "{sent}");
    for preface in [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], b"PRI * HT"] {
        let (after, sent) = sent_then_closed(preface);
        assert!(after < Duration::from_secs(10), "closed after {after:?}");
        assert!(sent.is_empty() || sent.starts_with("HTTP/1.1 4"), "{sent}");
    }

    // Headers that stop halfway: closed at the limit, having answered nothing.
    let (after, sent) = sent_then_closed(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    assert!(
        (Duration::from_millis(600)..Duration::from_secs(10)).contains(&after),
        "closed after {after:?}"
    );
    assert!(!sent.contains("200 OK"), "{sent}");

    // A kept-alive connection is answered, then closed once idle for the limit.
    let (after, sent) = sent_then_closed(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    assert!(sent.starts_with("HTTP/1.1 200 OK"), "{sent}");
    assert!(sent.ends_with("\r\n\r\nok"), "{sent}");
    assert!(
        (Duration::from_millis(600)..Duration::from_secs(10)).contains(&after),
        "closed after {after:?}"
    );

    // A body that stops arriving: the request is answered 408 after api.body_timeout_ms
    // (0.9 s here) rather than wait for the rest — a JSON body, and a raw and a multipart
    // upload.
    let auth = base64::engine::general_purpose::STANDARD.encode("ana:ana-long-password");
    let upload =
        format!("/api/v1/inspections?part_id=P&lot=L HTTP/1.1\r\nAuthorization: Basic {auth}");
    for (target, media, start) in [
        (
            "/api/v1/session HTTP/1.1",
            "application/json",
            &b"{\"username\":"[..],
        ),
        (upload.as_str(), "image/png", b"\x89PNG\r\n\x1a\n"),
        (
            upload.as_str(),
            "multipart/form-data; boundary=XyZ",
            b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\
              Content-Type: image/png\r\n\r\n\x89PNG",
        ),
    ] {
        let mut half = connect();
        half.write_all(
            format!(
                "POST {target}\r\nHost: 127.0.0.1\r\nContent-Type: {media}\r\nContent-Length: 5000\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        half.write_all(start).unwrap();
        let since = Instant::now();
        let mut answer = [0u8; 64];
        let n = half.read(&mut answer).unwrap();
        let after = since.elapsed();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 408"), "{media}: {answer}");
        assert!(
            (Duration::from_millis(800)..Duration::from_secs(10)).contains(&after),
            "{media}: answered after {after:?}"
        );
    }

    // A client that stops reading a response larger than the sockets can buffer (an image of
    // about 20 MB): the server's write waits for it, and after api.body_timeout_ms the
    // connection is closed; the client that reads again later finds the response cut short.
    let png = crate::common::noise_png(2600, 2600, 7);
    let (status, body) = http(
        port,
        &format!(
            "POST /api/v1/inspections?part_id=P-big&lot=L HTTP/1.1\r\nContent-Type: image/png\r\n\
             Authorization: Basic {auth}"
        ),
        &png,
    );
    assert_eq!(status, 201, "{body}");
    let stored: UploadAnswer = serde_json::from_str(&body).unwrap();
    let mut reader = connect();
    reader
        .write_all(
            format!(
                "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\nConnection: close\r\n\r\n",
                stored.image
            )
            .as_bytes(),
        )
        .unwrap();
    let mut first = [0u8; 1024];
    let n = reader.read(&mut first).unwrap();
    let head = String::from_utf8_lossy(&first[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    std::thread::sleep(Duration::from_secs(4));
    let mut rest = Vec::new();
    let read = reader.read_to_end(&mut rest);
    assert!(
        read.is_ok() || read.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
        "{read:?}"
    );
    assert!(
        n + rest.len() < png.len(),
        "{} of {} bytes arrived: the connection was kept",
        n + rest.len(),
        png.len()
    );

    // api.max_connections = 2: with two connections held (silent), a third is served only
    // once the header timeout has closed one of them.
    let held = [connect(), connect()];
    std::thread::sleep(Duration::from_millis(100));
    let (after, sent) =
        sent_then_closed(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    assert!(sent.starts_with("HTTP/1.1 200 OK"), "{sent}");
    assert!(
        (Duration::from_millis(500)..Duration::from_secs(10)).contains(&after),
        "served after {after:?}"
    );
    drop(held);

    // The live event stream outlasts the limit: its headers came in time.
    let mut events = connect();
    events
        .write_all(
            format!(
                "GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {auth}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 512];
        let n = events.read(&mut chunk).unwrap();
        assert!(n > 0, "the event stream closed before its headers");
        head.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    std::thread::sleep(Duration::from_millis(2_000));
    events
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut more = [0u8; 512];
    match events.read(&mut more) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        Ok(n) if n > 0 => {}
        other => panic!("the event stream ended: {other:?}"),
    }
    drop(events);
    server.stop();
}

/// The upload model's sessions run once as the API is assembled (`serve` at start): a model
/// that loads but cannot run stops the start with the model's path, before any upload is
/// taken; the bundled model passes the same step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_model_that_cannot_run_fails_its_warm_up_at_start() {
    let db = sqlite().await;
    let dir = tempfile::tempdir().unwrap();
    let broken = crate::common::model_that_cannot_run(dir.path());
    let (_stopping_tx, stopping) = tokio::sync::watch::channel(false);
    for (model, fails) in [(repo().join("models/demo"), false), (broken, true)] {
        let mut settings = linesight::config::Settings::default();
        settings.api.model = Some(model.clone());
        settings.api.inspectors = 2;
        let built = linesight::cli::serve::api_state(
            &settings,
            runtime(),
            db.store.clone(),
            None,
            stopping.clone(),
        )
        .await;
        match built {
            Ok(state) => {
                assert!(!fails, "{} passed its warm-up", model.display());
                assert_eq!(state.upload_model, model);
            }
            Err(e) => {
                assert!(fails, "{e:#}");
                let text = format!("{e:#}");
                assert!(
                    text.starts_with(&format!(
                        "cannot load the upload model {}: the upload model failed its warm-up \
                         inference:",
                        model.display()
                    )),
                    "{text}"
                );
            }
        }
    }
}

/// A bearer token for each test user (cheap to check, unlike a password).
async fn tokens(f: &Fixture) -> std::collections::HashMap<&'static str, String> {
    let mut out = std::collections::HashMap::new();
    for user in ["op", "insp", "qa", "admin"] {
        let (_, token) =
            f.db.store
                .create_token(user, "tests", None, "test")
                .await
                .unwrap();
        out.insert(user, token);
    }
    out
}

fn call(method: &str, path: &str, auth: Option<&str>, json: Option<&str>) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    match json {
        Some(j) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(j.to_owned()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(body)))
}

/// Every route of the OpenAPI document against every role: without credentials 401, with a
/// role the route does not admit 403, with one it admits anything else. The expected roles are
/// written out here, independently of the code; a route missing from this table fails the test.
#[tokio::test]
async fn role_by_route_matrix() {
    const ALL: &str = "op insp qa admin";
    const INSP: &str = "insp qa admin";
    const QA: &str = "qa admin";
    const ADMIN: &str = "admin";
    let matrix: &[(&str, &str, &str)] = &[
        ("GET", "/api/v1/session", ALL),
        ("DELETE", "/api/v1/session", ALL),
        ("POST", "/api/v1/tokens", ADMIN),
        ("GET", "/api/v1/tokens", ADMIN),
        ("POST", "/api/v1/tokens/{id}/revoke", ADMIN),
        ("POST", "/api/v1/session/password", ALL),
        ("GET", "/api/v1/users", ADMIN),
        ("POST", "/api/v1/users/{username}/disable", ADMIN),
        ("POST", "/api/v1/users/{username}/enable", ADMIN),
        ("POST", "/api/v1/users/{username}/password", ADMIN),
        ("POST", "/api/v1/inspections", ALL),
        ("GET", "/api/v1/inspections", ALL),
        ("GET", "/api/v1/inspections/{id}", ALL),
        ("GET", "/api/v1/images/{hash}", ALL),
        ("GET", "/api/v1/cameras/summary", ALL),
        ("GET", "/api/v1/events", ALL),
        ("POST", "/api/v1/triggers", ALL),
        ("GET", "/api/v1/tasks", INSP),
        ("GET", "/api/v1/tasks/{id}", INSP),
        ("POST", "/api/v1/tasks/claim", INSP),
        ("POST", "/api/v1/tasks/{id}/claim", INSP),
        ("POST", "/api/v1/tasks/{id}/decision", INSP),
        ("GET", "/api/v1/ncrs", ALL),
        ("POST", "/api/v1/ncrs", ALL),
        ("GET", "/api/v1/ncrs/{id}", ALL),
        ("POST", "/api/v1/ncrs/{id}/transitions", ALL),
        ("POST", "/api/v1/ncrs/{id}/signatures", ALL),
        ("POST", "/api/v1/ncrs/{id}/attachments", ALL),
        ("GET", "/api/v1/ncrs/{id}/attachments/{attachment_id}", ALL),
        ("GET", "/api/v1/lots", ALL),
        ("GET", "/api/v1/lots/{lot}", ALL),
        ("POST", "/api/v1/lots/{lot}/hold", INSP),
        ("POST", "/api/v1/lots/{lot}/release", QA),
        ("GET", "/api/v1/audit", QA),
        ("GET", "/api/v1/audit/export", QA),
        ("GET", "/api/v1/audit/verify", QA),
        ("GET", "/api/v1/models", ALL),
        ("POST", "/api/v1/models/activate", ADMIN),
        ("GET", "/api/v1/recipes", ALL),
        ("GET", "/api/v1/models/contract", ALL),
    ];
    let doc = linesight::api::openapi();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if op.is_some() {
                documented.push((method.into(), path.clone()));
            }
        }
    }
    // Signing in is the one route that takes no credentials.
    documented.retain(|(m, p)| !(m == "POST" && p == "/api/v1/session"));
    let mut tabled: Vec<(String, String)> = matrix
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    tabled.sort();
    assert_eq!(documented, tabled, "the matrix and the routes differ");

    let f = fixture(ApiConfig::default()).await;
    let tokens = tokens(&f).await;
    for (method, path, allowed) in matrix {
        let uri = path
            .replace("{id}", "1")
            .replace("{attachment_id}", "1")
            .replace("{lot}", "L1")
            .replace("{username}", "op")
            .replace("{hash}", &"0".repeat(64));
        let body = (*method == "POST").then_some("{}");
        let (s, b, _) = send(&f, call(method, &uri, None, body)).await;
        assert_eq!(
            s,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without credentials: {}",
            String::from_utf8_lossy(&b)
        );
        for user in ["op", "insp", "qa", "admin"] {
            let auth = format!("Bearer {}", tokens[user]);
            let req = call(method, &uri, Some(&auth), body);
            let (s, b) = if *path == "/api/v1/events" {
                // A live stream does not end: its status is all there is to check.
                let res = app(f.state.clone()).oneshot(req).await.unwrap();
                (res.status(), Vec::new())
            } else {
                let (s, b, _) = send(&f, req).await;
                (s, b)
            };
            let admitted = allowed.split(' ').any(|u| u == user);
            if admitted {
                assert!(
                    s != StatusCode::FORBIDDEN && s != StatusCode::UNAUTHORIZED,
                    "{method} {path} as {user}: {s} {}",
                    String::from_utf8_lossy(&b)
                );
            } else {
                assert_eq!(
                    s,
                    StatusCode::FORBIDDEN,
                    "{method} {path} as {user}: {}",
                    String::from_utf8_lossy(&b)
                );
            }
        }
    }
}

/// Over the API: a user changes their own password (their session ends with it), and an
/// administrator lists accounts, resets a password and withdraws an account, whose token is
/// refused from then on.
#[tokio::test]
async fn passwords_are_changed_and_accounts_withdrawn_over_the_api() {
    let f = fixture(ApiConfig::default()).await;
    let res = app(f.state.clone())
        .oneshot(call(
            "POST",
            "/api/v1/session",
            None,
            Some(r#"{"username":"insp","password":"insp-secret-pw"}"#),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = cookie_of(&res);
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let csrf = json(&body)["csrf_token"].as_str().unwrap().to_owned();
    let with_cookie = |path: &str, body: &str| {
        let mut req = call("POST", path, None, Some(body));
        req.headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
        req.headers_mut()
            .insert("x-csrf-token", csrf.parse().unwrap());
        req
    };
    let (s, b, _) = send(
        &f,
        with_cookie(
            "/api/v1/session/password",
            r#"{"current_password":"wrong","new_password":"an0ther-secret"}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(problem_field(&b).as_deref(), Some("current_password"));
    let (s, b, _) = send(
        &f,
        with_cookie(
            "/api/v1/session/password",
            r#"{"current_password":"insp-secret-pw","new_password":"x"}"#,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem_field(&b).as_deref(), Some("new_password"));
    // A session without its CSRF token is refused as such, not taken for a change by name.
    let mut forged = call(
        "POST",
        "/api/v1/session/password",
        None,
        Some(
            r#"{"username":"insp","current_password":"insp-secret-pw","new_password":"an0ther-secret"}"#,
        ),
    );
    forged
        .headers_mut()
        .insert(header::COOKIE, cookie.parse().unwrap());
    let (s, b, _) = send(&f, forged).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&b));
    assert!(json(&b)["detail"].as_str().unwrap().contains("CSRF"));
    let res = app(f.state.clone())
        .oneshot(with_cookie(
            "/api/v1/session/password",
            r#"{"current_password":"insp-secret-pw","new_password":"an0ther-secret"}"#,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    let set = res.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.contains("Max-Age=0"), "the cookie is cleared: {set}");
    let mut whoami = call("GET", "/api/v1/session", None, None);
    whoami
        .headers_mut()
        .insert(header::COOKIE, cookie.parse().unwrap());
    let (s, _, _) = send(&f, whoami).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "the session ended with the change"
    );
    let new_basic = basic_with("insp", "an0ther-secret");
    let (s, _, _) = send(&f, call("GET", "/api/v1/session", Some(&new_basic), None)).await;
    assert_eq!(s, StatusCode::OK);

    let admin = basic("admin");
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/users/admin/password",
            Some(&admin),
            Some(r#"{"new_password":"s0me-new-secret","reason":"mine"}"#),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/users/insp/password",
            Some(&admin),
            Some(r#"{"new_password":"s0me-new-secret","reason":"forgotten"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));

    // The reset password signs nobody in: it serves to choose a new one, sent without
    // credentials but with the user name.
    let reset = basic_with("insp", "s0me-new-secret");
    let (s, b, _) = send(&f, call("GET", "/api/v1/session", Some(&reset), None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert_eq!(json(&b)["code"], "password_change_due");
    let change = r#"{"current_password":"s0me-new-secret","new_password":"my-0wn-secret"}"#;
    let (s, _, _) = send(
        &f,
        call("POST", "/api/v1/session/password", None, Some(change)),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "whose password: no credentials, no username"
    );
    let change = r#"{"username":"insp","current_password":"s0me-new-secret","new_password":"my-0wn-secret"}"#;
    let (s, b, _) = send(
        &f,
        call("POST", "/api/v1/session/password", None, Some(change)),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
    let own = basic_with("insp", "my-0wn-secret");
    let (s, _, _) = send(&f, call("GET", "/api/v1/session", Some(&own), None)).await;
    assert_eq!(s, StatusCode::OK);

    let (_, token) =
        f.db.store
            .create_token("op", "line 3", None, "test")
            .await
            .unwrap();
    let bearer = format!("Bearer {token}");
    let (s, _, _) = send(&f, call("GET", "/api/v1/lots", Some(&bearer), None)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/users/op/disable",
            Some(&admin),
            Some(r#"{"reason":"station retired"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{}", String::from_utf8_lossy(&b));
    let (s, _, _) = send(&f, call("GET", "/api/v1/lots", Some(&bearer), None)).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "a withdrawn account's token is void"
    );
    let (s, b, _) = send(&f, call("GET", "/api/v1/lots", Some(&basic("op")), None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&b));
    assert!(json(&b)["detail"].as_str().unwrap().contains("disabled"));
    let (s, b, _) = send(&f, call("GET", "/api/v1/users", Some(&admin), None)).await;
    assert_eq!(s, StatusCode::OK);
    let listed = json(&b);
    let op = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "op")
        .unwrap();
    assert!(op["disabled_at_ms"].is_i64(), "{op}");
    assert!(op.get("password_hash").is_none());
    let (s, _, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/users/op/enable",
            Some(&admin),
            Some(r#"{"reason":"back in use"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = send(&f, call("GET", "/api/v1/lots", Some(&bearer), None)).await;
    assert_eq!(s, StatusCode::OK);
}

fn cookie_of(res: &axum::response::Response) -> String {
    let set = res
        .headers()
        .get(header::SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .unwrap();
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("SameSite=Strict"), "{set}");
    set.split(';').next().unwrap().to_owned()
}

/// Failed sign-ins count per client address: a password sprayed over every user name (one
/// guess each, so no user reaches its own lockout) uses up the address's allowance; its next
/// sign-in is refused with 429, `Retry-After` and the setting named, before any password is
/// checked, even a right one, through the form and through HTTP Basic alike. Another address
/// signs in as usual; the users are not locked.
#[tokio::test]
async fn failed_sign_ins_are_limited_per_client_address() {
    let f = fixture(ApiConfig {
        sign_in_failures_per_address: 4,
        ..ApiConfig::default()
    })
    .await;
    let from = |addr: &str, mut req: Request<Body>| {
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            addr.parse::<std::net::SocketAddr>().unwrap(),
        ));
        req
    };
    let form = |user: &str, password: &str| {
        call(
            "POST",
            "/api/v1/session",
            None,
            Some(&format!(
                r#"{{"username":"{user}","password":"{password}"}}"#
            )),
        )
    };
    for user in ["op", "insp", "qa", "admin"] {
        let res = app(f.state.clone())
            .oneshot(from("10.1.2.3:50000", form(user, "Summer2026!")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{user}");
    }
    let refused = |res: axum::response::Response| async move {
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let wait: u64 = res.headers()[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=900).contains(&wait), "Retry-After {wait}");
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        let detail = json(&body)["detail"].as_str().unwrap().to_owned();
        assert!(
            detail.contains("api.sign_in_failures_per_address = 4"),
            "{detail}"
        );
    };
    // Another connection from the same address: refused, the right password too.
    refused(
        app(f.state.clone())
            .oneshot(from("10.1.2.3:50001", form("qa", "qa-secret-pw")))
            .await
            .unwrap(),
    )
    .await;
    refused(
        app(f.state.clone())
            .oneshot(from(
                "10.1.2.3:50002",
                call("GET", "/api/v1/session", Some(&basic("op")), None),
            ))
            .await
            .unwrap(),
    )
    .await;
    // Elsewhere on the floor: signed in, the same users, none locked.
    for user in ["qa", "op"] {
        let res = app(f.state.clone())
            .oneshot(from(
                "10.1.2.4:50000",
                form(user, &format!("{user}-secret-pw")),
            ))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{user}");
    }
    let res = app(f.state.clone())
        .oneshot(from(
            "10.1.2.4:50001",
            call("GET", "/api/v1/session", Some(&basic("admin")), None),
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// Behind a trusted reverse proxy the client is the address the proxy forwards: failed
/// sign-ins count per client, the audit trail records it, and the proxy's
/// `X-Forwarded-Proto: https` makes the cookie `Secure`. The same headers from anyone else are
/// ignored, and an address a client writes into `X-Forwarded-For` itself is never taken.
#[tokio::test]
async fn behind_a_trusted_proxy_sign_ins_count_and_are_audited_by_the_forwarded_client() {
    let f = fixture(ApiConfig {
        sign_in_failures_per_address: 2,
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "172.16.0.1".parse().unwrap()],
        ..ApiConfig::default()
    })
    .await;
    // A sign-in arriving over a connection from `peer` with `headers`.
    let sign_in = |peer: &str, headers: &[(&str, &str)], user: &str, password: &str| {
        let mut req = call(
            "POST",
            "/api/v1/session",
            None,
            Some(&format!(
                r#"{{"username":"{user}","password":"{password}"}}"#
            )),
        );
        for (k, v) in headers {
            req.headers_mut().append(
                header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        req.extensions_mut().insert(axum::extract::ConnectInfo(
            peer.parse::<std::net::SocketAddr>().unwrap(),
        ));
        let app = app(f.state.clone());
        async move { app.oneshot(req).await.unwrap() }
    };
    // Client 192.0.2.1, through two proxies, writing a false address of its own first.
    let chain = [("x-forwarded-for", "203.0.113.66, 192.0.2.1, 172.16.0.1")];
    for _ in 0..2 {
        let res = sign_in("10.0.0.5:40000", &chain, "op", "Summer2026!").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = sign_in("10.0.0.5:40001", &chain, "op", "op-secret-pw").await;
    assert_eq!(
        res.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "192.0.2.1 used up its allowance"
    );
    // The address it wrote itself is not the one refused; nor is the proxy.
    let spoofed = [("x-forwarded-for", "203.0.113.66")];
    let res = sign_in("10.0.0.5:40002", &spoofed, "qa", "qa-secret-pw").await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!set.contains("Secure"), "plain HTTP all the way: {set}");
    // Another client through the proxy, which terminated TLS: signed in, cookie `Secure`.
    let tls = [
        ("x-forwarded-for", "192.0.2.2"),
        ("x-forwarded-proto", "https"),
    ];
    let res = sign_in("10.0.0.5:40003", &tls, "insp", "insp-secret-pw").await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set.contains("Secure"), "{set}");
    // From a peer that is not a trusted proxy the headers count for nothing: its failures are
    // its own, the cookie is not `Secure`, and 192.0.2.2 is untouched.
    let forged = [
        ("x-forwarded-for", "192.0.2.2"),
        ("x-forwarded-proto", "https"),
    ];
    for _ in 0..2 {
        let res = sign_in("198.51.100.7:40000", &forged, "admin", "guess").await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
    let res = sign_in("198.51.100.7:40001", &forged, "admin", "admin-secret-pw").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let res = sign_in("10.0.0.5:40004", &tls, "admin", "admin-secret-pw").await;
    assert_eq!(
        res.status(),
        StatusCode::OK,
        "192.0.2.2 still has its allowance"
    );
    let res = sign_in("198.51.100.8:40000", &forged, "insp", "insp-secret-pw").await;
    assert_eq!(res.status(), StatusCode::OK);
    let set = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!set.contains("Secure"), "a forged X-Forwarded-Proto: {set}");
    // The audit trail names each client.
    let values = |user: &'static str, action: &'static str| {
        let store = f.db.store.clone();
        async move {
            store
                .audit_for("user", user)
                .await
                .unwrap()
                .into_iter()
                .filter(|e| e.action == action)
                // Sign-ins end with the fingerprint of their session's secret.
                .map(|e| {
                    let text = e.new_value.unwrap_or_default();
                    match text.split_once("; credential=") {
                        Some((text, fp)) if fp.len() == 64 => text.to_owned(),
                        _ => text,
                    }
                })
                .collect::<Vec<_>>()
        }
    };
    for (user, action, expected) in [
        (
            "op",
            "user.sign_in_failed",
            &[
                "failed_attempts=1; from=192.0.2.1",
                "failed_attempts=2; from=192.0.2.1",
            ][..],
        ),
        (
            "admin",
            "user.sign_in_failed",
            &[
                "failed_attempts=1; from=198.51.100.7",
                "failed_attempts=2; from=198.51.100.7",
            ],
        ),
        (
            "qa",
            "user.sign_in",
            &["session opened (web UI); from=203.0.113.66"],
        ),
        (
            "insp",
            "user.sign_in",
            &[
                "session opened (web UI); from=192.0.2.2",
                "session opened (web UI); from=198.51.100.8",
            ],
        ),
        (
            "admin",
            "user.sign_in",
            &["session opened (web UI); from=192.0.2.2"],
        ),
    ] {
        assert_eq!(values(user, action).await, expected, "{user} {action}");
    }
}

/// The web UI's session: sign in, a cookie that works only with its CSRF token for changes,
/// idle expiry, sign-out; and bearer tokens issued, used and revoked by an administrator.
#[tokio::test]
async fn sessions_need_their_csrf_token_and_end_on_sign_out_or_idle() {
    let f = fixture(ApiConfig::default()).await;
    let sign_in = |password: &str| {
        call(
            "POST",
            "/api/v1/session",
            None,
            Some(&format!(r#"{{"username":"qa","password":"{password}"}}"#)),
        )
    };
    let res = app(f.state.clone())
        .oneshot(sign_in("wrong"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        res.headers()[header::WWW_AUTHENTICATE],
        "Bearer realm=\"linesight\"",
        "no Basic challenge: browsers would show their own dialog"
    );
    let res = app(f.state.clone())
        .oneshot(sign_in("qa-secret-pw"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let cookie = cookie_of(&res);
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let info = json(&body);
    assert_eq!(info["role"], "qa_approver");
    let csrf = info["csrf_token"].as_str().unwrap().to_owned();
    assert_eq!(csrf.len(), 64);

    let with_cookie = |method: &str, path: &str, csrf: Option<&str>, body: Option<&str>| {
        let mut req = call(method, path, None, body);
        req.headers_mut()
            .insert(header::COOKIE, cookie.parse().unwrap());
        if let Some(c) = csrf {
            req.headers_mut().insert("x-csrf-token", c.parse().unwrap());
        }
        req
    };
    let (s, b, _) = send(&f, with_cookie("GET", "/api/v1/session", None, None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["csrf_token"], csrf.as_str());
    let hold = r#"{"reason":"suspect seal"}"#;
    let (s, b, _) = send(
        &f,
        with_cookie("POST", "/api/v1/lots/L1/hold", None, Some(hold)),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&b));
    assert!(
        json(&b)["detail"]
            .as_str()
            .unwrap()
            .contains("X-CSRF-Token")
    );
    let (s, _, _) = send(
        &f,
        with_cookie("POST", "/api/v1/lots/L1/hold", Some("forged"), Some(hold)),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(!f.db.store.lot("L1").await.unwrap().held);
    let (s, b, _) = send(
        &f,
        with_cookie("POST", "/api/v1/lots/L1/hold", Some(&csrf), Some(hold)),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json(&b)["held_by"], "qa");

    // The UI's own refreshes (X-Linesight-Background) and the live stream do not keep the
    // session alive; a request of the user's does.
    let far = linesight::quality::now_ms() + 100_000;
    let expiry = || async {
        sqlx::query_scalar::<_, i64>("SELECT expires_at_ms FROM api_sessions")
            .fetch_one(f.db.store.raw_pool())
            .await
            .unwrap()
    };
    sqlx::query(&format!(
        "UPDATE api_sessions SET last_seen_ms = 0, expires_at_ms = {far}"
    ))
    .execute(f.db.store.raw_pool())
    .await
    .unwrap();
    let mut refresh = with_cookie("GET", "/api/v1/tasks?state=pending", None, None);
    refresh
        .headers_mut()
        .insert("x-linesight-background", "1".parse().unwrap());
    assert_eq!(send(&f, refresh).await.0, StatusCode::OK);
    let live = app(f.state.clone())
        .oneshot(with_cookie("GET", "/api/v1/events", None, None))
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    drop(live);
    assert_eq!(expiry().await, far, "not extended by the UI's own requests");
    let (s, _, _) = send(
        &f,
        with_cookie("GET", "/api/v1/tasks?state=pending", None, None),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(expiry().await > far, "extended by the user's request");

    // Idle past the limit: the session is gone.
    sqlx::query("UPDATE api_sessions SET expires_at_ms = 1")
        .execute(f.db.store.raw_pool())
        .await
        .unwrap();
    let (s, _, _) = send(&f, with_cookie("GET", "/api/v1/session", None, None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // A fresh session, ended by signing out.
    let res = app(f.state.clone())
        .oneshot(sign_in("qa-secret-pw"))
        .await
        .unwrap();
    let cookie2 = cookie_of(&res);
    let body = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let csrf2 = json(&body)["csrf_token"].as_str().unwrap().to_owned();
    let mut out = call("DELETE", "/api/v1/session", None, None);
    out.headers_mut()
        .insert(header::COOKIE, cookie2.parse().unwrap());
    out.headers_mut()
        .insert("x-csrf-token", csrf2.parse().unwrap());
    assert_eq!(send(&f, out).await.0, StatusCode::NO_CONTENT);
    let mut again = call("GET", "/api/v1/session", None, None);
    again
        .headers_mut()
        .insert(header::COOKIE, cookie2.parse().unwrap());
    assert_eq!(send(&f, again).await.0, StatusCode::UNAUTHORIZED);
    // A lockout ends the user's sessions: lifted, it does not bring an old cookie back.
    let res = app(f.state.clone())
        .oneshot(sign_in("qa-secret-pw"))
        .await
        .unwrap();
    let cookie3 = cookie_of(&res);
    let session3 = || {
        let mut r = call("GET", "/api/v1/session", None, None);
        r.headers_mut()
            .insert(header::COOKIE, cookie3.parse().unwrap());
        r
    };
    assert_eq!(send(&f, session3()).await.0, StatusCode::OK);
    for _ in 0..f.state.quality.max_failed_logins {
        let res = app(f.state.clone())
            .oneshot(sign_in("not-the-password"))
            .await
            .unwrap();
        assert_ne!(res.status(), StatusCode::OK);
    }
    assert!(
        f.db.store
            .user("qa")
            .await
            .unwrap()
            .unwrap()
            .locked_until_ms
            .is_some()
    );
    f.db.store
        .unlock_user("qa", "admin", "called the help desk")
        .await
        .unwrap();
    assert_eq!(send(&f, session3()).await.0, StatusCode::UNAUTHORIZED);
    let res = app(f.state.clone())
        .oneshot(sign_in("qa-secret-pw"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK, "signs in again once unlocked");
    let audit = f.db.store.audit_for("user", "qa").await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|a| a.action.as_str()).collect();
    assert!(actions.contains(&"user.sign_in"), "{actions:?}");
    assert!(actions.contains(&"user.sign_out"), "{actions:?}");
    assert!(actions.contains(&"user.sign_in_failed"), "{actions:?}");

    // Tokens: issued by an administrator (shown once), used, revoked.
    let admin = basic("admin");
    // Not for an inspector or a QA approver: a token would let the administrator act as them.
    for user in ["qa", "insp"] {
        let (s, b, _) = send(
            &f,
            call(
                "POST",
                "/api/v1/tokens",
                Some(&admin),
                Some(&format!(r#"{{"username":"{user}","name":"as {user}"}}"#)),
            ),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{}", String::from_utf8_lossy(&b));
    }
    let (s, _, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/tokens",
            Some(&admin),
            Some(r#"{"username":"admin","name":"my script"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "one's own");
    // An expiry past the ten-year limit (here past the year 9999, which no timestamp in the
    // audit trail could show) is refused, naming the field.
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/tokens",
            Some(&admin),
            Some(r#"{"username":"op","name":"far","expires_at_ms":253402300800000}"#),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&b)
    );
    let problem = json(&b);
    assert_eq!(problem["field"], "expires_at_ms", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("3650 days"),
        "{problem}"
    );
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/tokens",
            Some(&admin),
            Some(r#"{"username":"op","name":"MES bridge"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let issued = json(&b);
    let bearer = format!("Bearer {}", issued["token"].as_str().unwrap());
    assert!(bearer.starts_with("Bearer lst_"));
    let (s, b, _) = send(&f, call("GET", "/api/v1/session", Some(&bearer), None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b)["username"], "op");
    let (s, b, _) = send(&f, call("GET", "/api/v1/tokens", Some(&admin), None)).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        !String::from_utf8_lossy(&b).contains("lst_"),
        "secrets are never listed"
    );
    let revoke = format!("/api/v1/tokens/{}/revoke", issued["id"]);
    let (s, _, _) = send(
        &f,
        call(
            "POST",
            &revoke,
            Some(&admin),
            Some(r#"{"reason":"bridge replaced"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = send(&f, call("GET", "/api/v1/session", Some(&bearer), None)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

fn multipart(fields: &[(&str, &str)], file: Option<(&str, &str, &[u8])>) -> (String, Vec<u8>) {
    let boundary = "linesight-test-boundary";
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    if let Some((field, filename, bytes)) = file {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The manual inspection page's upload: a multipart form; a missing field is named.
#[tokio::test]
async fn multipart_upload_inspects_and_names_missing_fields() {
    let f = fixture(ApiConfig::default()).await;
    let image = washer("scratch/001.png");
    let post = |(media, body): (String, Vec<u8>)| {
        Request::post("/api/v1/inspections")
            .header(header::AUTHORIZATION, basic("op"))
            .header(header::CONTENT_TYPE, media)
            .body(Body::from(body))
            .unwrap()
    };
    let (s, b, _) = send(
        &f,
        post(multipart(
            &[("part_id", "M-1"), ("lot", "LOT-M"), ("recipe", "washer")],
            Some(("image", "scratch.png", &image)),
        )),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let answer: UploadAnswer = serde_json::from_slice(&b).unwrap();
    assert_eq!(answer.verdict, "defect");
    assert!(!answer.regions.is_empty());
    assert!(answer.overlay.is_some());
    let stored = f.db.store.inspection(answer.id).await.unwrap();
    assert_eq!(stored.inspection.recipe, "washer");

    let (s, b, _) = send(
        &f,
        post(multipart(
            &[("lot", "LOT-M")],
            Some(("image", "scratch.png", &image)),
        )),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "part_id");
    let (s, b, _) = send(
        &f,
        post(multipart(&[("part_id", "M-2"), ("lot", "LOT-M")], None)),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "image");
    let (s, b, _) = send(
        &f,
        post(multipart(
            &[("part_id", "M-2"), ("lot", "LOT-M"), ("threshold", "high")],
            Some(("image", "scratch.png", &image)),
        )),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "threshold");
    assert_eq!(f.db.store.inspection_count().await.unwrap(), 1);
    let check = f.db.store.verify_records().await.unwrap();
    assert_eq!(
        (check.inspections, check.mismatches_total),
        (1, 0),
        "{check:?}"
    );
}

fn recorded(i: usize, camera: &str, verdict: linesight::quality::Verdict) -> NewInspection {
    NewInspection {
        part_id: format!("P{i}"),
        lot: if i.is_multiple_of(2) { "EVEN" } else { "ODD" }.into(),
        line: "L1".into(),
        recipe: "r".into(),
        camera: camera.into(),
        model_name: "m".into(),
        model_sha256: "0".repeat(64),
        threshold: 0.5,
        score: if verdict == linesight::quality::Verdict::Defect {
            0.9
        } else {
            0.1
        },
        verdict,
        regions_json: "[]".into(),
        image_ref: None,
        overlay_ref: None,
        timings_json: "{}".into(),
        source: "automatic".into(),
        defect_class: None,
    }
}

/// Listing: filters, newest first, cursor paging without gaps or repeats; the per-camera
/// summary; the live stream sends what is recorded after it starts.
#[tokio::test]
async fn inspections_list_by_filter_and_cursor_and_stream_live() {
    use futures::StreamExt as _;
    use linesight::quality::Verdict;

    let f = fixture(ApiConfig::default()).await;
    let cfg = QualityConfig::default();
    for i in 0..7 {
        let (camera, verdict) = if i < 5 {
            ("cam-a", Verdict::Good)
        } else {
            ("cam-b", Verdict::Defect)
        };
        f.db.store
            .record_inspection(&recorded(i, camera, verdict), &cfg, "system")
            .await
            .unwrap();
    }
    let op = basic("op");
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let uri = match &cursor {
            Some(c) => format!("/api/v1/inspections?limit=3&cursor={c}"),
            None => "/api/v1/inspections?limit=3".into(),
        };
        let (s, b, _) = send(&f, call("GET", &uri, Some(&op), None)).await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        let page = json(&b);
        for item in page["items"].as_array().unwrap() {
            seen.push(item["id"].as_i64().unwrap());
        }
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(seen, vec![7, 6, 5, 4, 3, 2, 1]);

    let (_, b, _) = send(
        &f,
        call("GET", "/api/v1/inspections?verdict=defect", Some(&op), None),
    )
    .await;
    let ids: Vec<i64> = json(&b)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![7, 6]);
    let (_, b, _) = send(
        &f,
        call(
            "GET",
            "/api/v1/inspections?camera=cam-a&lot=EVEN",
            Some(&op),
            None,
        ),
    )
    .await;
    let page = json(&b);
    let parts: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["part_id"].as_str().unwrap())
        .collect();
    assert_eq!(parts, vec!["P4", "P2", "P0"]);
    let (s, b, _) = send(
        &f,
        call("GET", "/api/v1/inspections?limit=0", Some(&op), None),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "limit");
    let (s, b, _) = send(
        &f,
        call("GET", "/api/v1/inspections?verdict=maybe", Some(&op), None),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );

    let (_, b, _) = send(
        &f,
        call("GET", "/api/v1/cameras/summary?since_ms=0", Some(&op), None),
    )
    .await;
    let summary = json(&b);
    assert_eq!(summary[0]["camera"], "cam-a");
    assert_eq!(summary[0]["total"], 5);
    assert_eq!(summary[0]["reject_rate"], 0.0);
    assert_eq!(summary[1]["camera"], "cam-b");
    assert_eq!(summary[1]["defects"], 2);
    assert_eq!(summary[1]["reject_rate"], 1.0);

    // Live: a stream opened now receives only what is recorded afterwards, in order.
    let res = app(f.state.clone())
        .oneshot(call("GET", "/api/v1/events", Some(&op), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut stream = res.into_body().into_data_stream();
    for i in 7..9 {
        f.db.store
            .record_inspection(&recorded(i, "cam-c", Verdict::Good), &cfg, "system")
            .await
            .unwrap();
    }
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !text.contains("id: 9\n") {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("live events within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!text.contains("id: 7\n"), "{text}");
    let at8 = text.find("id: 8\n").expect("inspection 8 streamed");
    assert!(at8 < text.find("id: 9\n").unwrap());
    assert!(text.contains("event: inspection"), "{text}");
    assert!(text.contains("\"part_id\":\"P8\""), "{text}");

    // A stream ends with the credentials it was opened with: revoking the token ends it.
    let (listed, token) =
        f.db.store
            .create_token("op", "wall screen", None, "test")
            .await
            .unwrap();
    let res = app(f.state.clone())
        .oneshot(call(
            "GET",
            "/api/v1/events",
            Some(&format!("Bearer {token}")),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.into_body().into_data_stream();
    f.db.store
        .revoke_token(listed.id, "admin", "screen removed")
        .await
        .unwrap();
    let ended = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while let Some(chunk) = stream.next().await {
            chunk.unwrap();
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a revoked token ends");
}

/// The QA path over the API: raise an NCR, bring it to a proposed disposition, hold the lot,
/// attach a file, sign with the password entered again (a wrong one signs nothing), approve
/// with the signature, close; the lot is released only then; the audit trail holds it all,
/// can be exported and verifies.
#[tokio::test]
async fn ncr_to_signed_disposition_with_attachments_lot_hold_and_audit() {
    let f = fixture(ApiConfig::default()).await;
    let (op, insp, qa) = (basic("op"), basic("insp"), basic("qa"));
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/ncrs",
            Some(&op),
            Some(r#"{"lot":"LOT-7","title":"Burr on flange","description":"Found at final inspection"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let id = json(&b)["id"].as_i64().unwrap();
    assert_eq!(json(&b)["line"], "L1");
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/ncrs",
            Some(&op),
            Some(r#"{"lot":"","title":"t","description":"d"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "lot");

    let path = format!("/api/v1/ncrs/{id}/transitions");
    let step = |who: &str, body: &str| call("POST", &path, Some(who), Some(body));
    // Operators may not contain: the workflow's role rule answers 403.
    let (s, _, _) = send(&f, step(&op, r#"{"action":"contain"}"#)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    for body in [r#"{"action":"contain"}"#, r#"{"action":"investigate"}"#] {
        let (s, b, _) = send(&f, step(&insp, body)).await;
        assert_eq!(s, StatusCode::OK, "{body}: {}", String::from_utf8_lossy(&b));
    }
    let (s, b, _) = send(&f, step(&insp, r#"{"action":"propose"}"#)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "disposition");
    let (s, b, _) = send(
        &f,
        step(&insp, r#"{"action":"propose","disposition":"rework"}"#),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json(&b)["state"], "disposition_proposed");

    // The lot is held meanwhile.
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/lots/LOT-7/hold",
            Some(&insp),
            Some(r#"{"reason":"NCR open"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let (_, b, _) = send(&f, call("GET", "/api/v1/lots?held=true", Some(&op), None)).await;
    let held = json(&b);
    assert_eq!(held[0]["lot"], "LOT-7");
    assert_eq!(held[0]["open_ncrs"][0], id);

    // An attachment, downloaded as a file.
    let (media, body) = multipart(&[], Some(("file", "caliper report.pdf", b"%PDF-1.4 test")));
    let (s, b, _) = send(
        &f,
        Request::post(format!("/api/v1/ncrs/{id}/attachments"))
            .header(header::AUTHORIZATION, &insp)
            .header(header::CONTENT_TYPE, media)
            .body(Body::from(body))
            .unwrap(),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let url = json(&b)["url"].as_str().unwrap().to_owned();
    // A file name with a slash: refused, naming the form field it came with.
    let (media, body) = multipart(&[], Some(("file", "../report.pdf", b"%PDF-1.4 test")));
    let (s, b, _) = send(
        &f,
        Request::post(format!("/api/v1/ncrs/{id}/attachments"))
            .header(header::AUTHORIZATION, &insp)
            .header(header::CONTENT_TYPE, media)
            .body(Body::from(body))
            .unwrap(),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_eq!(json(&b)["field"], "file");
    let res = app(f.state.clone())
        .oneshot(call("GET", &url, Some(&op), None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_DISPOSITION],
        "attachment; filename=\"caliper report.pdf\""
    );
    let bytes = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(&bytes[..], b"%PDF-1.4 test");
    // Altered on disk, it is no longer served; `images verify` names it.
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(b"%PDF-1.4 test"))
    };
    let file = linesight::store::image_path(&f.state.attachment_dir, &digest).unwrap();
    std::fs::write(&file, b"%PDF-1.4 edited").unwrap();
    let (s, b, _) = send(&f, call("GET", &url, Some(&op), None)).await;
    assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !String::from_utf8_lossy(&b).contains(&digest),
        "the details stay in the log"
    );
    let (_, attachments) =
        f.db.store
            .verify_files(&f.state.image_dir, &f.state.attachment_dir)
            .await
            .unwrap();
    assert_eq!(
        (attachments.files, attachments.damaged, attachments.missing),
        (1, 1, 0),
        "{attachments:?}"
    );
    std::fs::remove_file(&file).unwrap();
    let (_, attachments) =
        f.db.store
            .verify_files(&f.state.image_dir, &f.state.attachment_dir)
            .await
            .unwrap();
    assert_eq!(
        (attachments.files, attachments.damaged, attachments.missing),
        (0, 0, 1),
        "{attachments:?}"
    );
    assert!(
        attachments.problems[0].contains("of NCR ")
            && attachments.problems[0].contains("\"caliper report.pdf\""),
        "{attachments:?}"
    );
    std::fs::write(&file, b"%PDF-1.4 test").unwrap();

    // Signing: a wrong password signs nothing; approval without a signature is refused.
    let seen = f.db.store.ncr(id).await.unwrap().version;
    let sign = |password: &str| {
        call(
            "POST",
            &format!("/api/v1/ncrs/{id}/signatures"),
            Some(&qa),
            Some(&format!(
                r#"{{"password":"{password}","meaning":"approved","version":{seen}}}"#
            )),
        )
    };
    // The version the signer was shown is part of the request.
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            &format!("/api/v1/ncrs/{id}/signatures"),
            Some(&qa),
            Some(r#"{"password":"qa-secret-pw","meaning":"approved"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&b).contains("version"));
    let (s, b, _) = send(&f, sign("not-it")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "password");
    // A signature on a version the signer did not see is refused, and nothing is signed.
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            &format!("/api/v1/ncrs/{id}/signatures"),
            Some(&qa),
            Some(r#"{"password":"qa-secret-pw","meaning":"approved","version":1}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&b));
    assert!(f.db.store.ncr_signatures(id).await.unwrap().is_empty());
    let (s, _, _) = send(&f, step(&qa, r#"{"action":"approve"}"#)).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, b, _) = send(&f, sign("qa-secret-pw")).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let signature = json(&b);
    assert_eq!(signature["full_name"], "qa");
    assert_eq!(signature["meaning"], "approved");
    let (s, b, _) = send(
        &f,
        step(
            &qa,
            &format!(
                r#"{{"action":"approve","signature_id":{}}}"#,
                signature["id"]
            ),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    assert_eq!(json(&b)["state"], "approved");

    // Still open (approved, not closed): the lot cannot be released.
    let (s, b, _) = send(
        &f,
        call("POST", "/api/v1/lots/LOT-7/release", Some(&qa), None),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{}", String::from_utf8_lossy(&b));
    assert_eq!(
        json(&b)["detail"],
        format!("lot LOT-7 cannot be released: NCR {id} is still open")
    );
    let (s, _, _) = send(&f, step(&qa, r#"{"action":"close"}"#)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b, _) = send(
        &f,
        call("POST", "/api/v1/lots/LOT-7/release", Some(&qa), None),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let lot = json(&b);
    assert_eq!(lot["held"], false);
    assert_eq!(lot["released_by"], "qa");

    let (_, b, _) = send(
        &f,
        call("GET", &format!("/api/v1/ncrs/{id}"), Some(&op), None),
    )
    .await;
    let detail = json(&b);
    let states: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["to"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        [
            "contained",
            "under_investigation",
            "disposition_proposed",
            "approved",
            "closed"
        ]
    );
    assert_eq!(detail["signatures"][0]["username"], "qa");
    assert_eq!(detail["history"][0]["actor_username"], "insp");
    assert_eq!(detail["attachments"][0]["name"], "caliper report.pdf");

    // Audit: QA reads and exports it, inspectors may not; the chain verifies.
    let (s, _, _) = send(&f, call("GET", "/api/v1/audit", Some(&insp), None)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b, _) = send(
        &f,
        call(
            "GET",
            &format!("/api/v1/audit?entity=ncr&entity_id={id}"),
            Some(&qa),
            None,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let actions: Vec<String> = json(&b)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    for a in ["ncr.create", "ncr.attach", "signature.create"] {
        assert!(
            actions.iter().any(|x| x == a),
            "{a} missing from {actions:?}"
        );
    }
    // A page of one record's entries: from a sequence number on, at most `limit`.
    let seqs = |b: &[u8]| -> Vec<i64> {
        json(b)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect()
    };
    let all = seqs(&b);
    assert!(all.len() >= 4, "{all:?}");
    let (s, b, _) = send(
        &f,
        call(
            "GET",
            &format!(
                "/api/v1/audit?entity=ncr&entity_id={id}&from_seq={}&limit=2",
                all[1]
            ),
            Some(&qa),
            None,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(seqs(&b), all[1..3], "{all:?}");
    // A page of one kind of record's entries.
    let (s, b, _) = send(
        &f,
        call(
            "GET",
            &format!("/api/v1/audit?entity=ncr&from_seq={}&limit=3", all[1]),
            Some(&qa),
            None,
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let page = json(&b);
    let page = page.as_array().unwrap();
    assert_eq!(page.len(), 3, "{page:?}");
    assert!(page.iter().all(|e| e["entity"] == "ncr"), "{page:?}");
    assert_eq!(page[0]["seq"].as_i64(), Some(all[1]), "{page:?}");
    let res = app(f.state.clone())
        .oneshot(call(
            "GET",
            "/api/v1/audit/export?format=csv",
            Some(&qa),
            None,
        ))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "text/csv; charset=utf-8"
    );
    let csv = axum::body::to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap();
    let csv = String::from_utf8_lossy(&csv);
    assert!(csv.starts_with("seq,at_ms,actor,action,"), "{csv}");
    assert!(csv.contains("lot.hold"), "{csv}");
    let (s, b, _) = send(
        &f,
        call("GET", "/api/v1/audit/export?format=xml", Some(&qa), None),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "format");
    let (_, b, _) = send(&f, call("GET", "/api/v1/audit/verify", Some(&qa), None)).await;
    let v = json(&b);
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checked"].as_u64().unwrap() > 10);
    assert_eq!(v["records"]["mismatches_total"], 0, "{v}");
    // The NCR worked, signed and attached to over HTTP, and its lot's hold, agree with the
    // trail.
    for counted in ["ncrs", "attachments", "lots", "signatures", "users"] {
        assert!(
            v["records"][counted].as_u64().unwrap() > 0,
            "{counted}: {v}"
        );
    }
    // The newest entry, to keep outside the store, and checked against later.
    let seq = v["head"]["seq"].as_i64().unwrap();
    assert_eq!(seq, v["checked"].as_i64().unwrap());
    let anchor = format!("{seq}:{}", v["head"]["hash"].as_str().unwrap());
    let verify = |expect: String| {
        let f = &f;
        let qa = &qa;
        async move {
            let uri = format!("/api/v1/audit/verify?expect={expect}");
            let (s, b, _) = send(f, call("GET", &uri, Some(qa), None)).await;
            (s, json(&b))
        }
    };
    let (_, v) = verify(format!("{anchor},{anchor}")).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["anchors_matched"], 2, "{v}");
    // An entry recorded outside that the trail no longer holds, or holds with another hash.
    let (_, v) = verify(format!("{}:{}", seq + 1, "a".repeat(64))).await;
    assert_eq!(
        (v["ok"].clone(), v["break"]["seq"].clone()),
        (false.into(), (seq + 1).into()),
        "{v}"
    );
    assert!(
        v["break"]["problem"].as_str().unwrap().contains("removed"),
        "{v}"
    );
    let (_, v) = verify(format!("{seq}:{}", "a".repeat(64))).await;
    assert_eq!(v["break"]["seq"], seq, "{v}");
    assert!(
        v["break"]["problem"]
            .as_str()
            .unwrap()
            .contains("rewritten"),
        "{v}"
    );
    let (s, v) = verify("12".into()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["field"], "expect", "{v}");
    // A record changed in the database rather than through linesight: the check fails.
    let id =
        f.db.store
            .record_inspection(
                &recorded(1, "cam0", linesight::quality::Verdict::Defect),
                &QualityConfig::default(),
                "system",
            )
            .await
            .unwrap()
            .inspection_id;
    sqlx::query(&format!(
        "UPDATE inspections SET verdict = 'good' WHERE id = {id}"
    ))
    .execute(f.db.store.raw_pool())
    .await
    .unwrap();
    let (_, v) = verify(String::new()).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["records"]["mismatches"][0]["id"], id, "{v}");
    assert_eq!(
        v["break"],
        serde_json::Value::Null,
        "the chain itself holds: {v}"
    );
    let export = f.db.store.audit_for("audit", "trail").await.unwrap();
    assert_eq!(export.len(), 1, "the export itself is audited");
}

/// An export holds the whole trail however long it is (read and sent page by page), ends
/// where the trail ended when it began, and its audit entry names the range it covers.
#[tokio::test]
async fn the_audit_export_holds_the_whole_trail_and_audits_its_range() {
    let f = fixture(ApiConfig::default()).await;
    let qa = basic("qa");
    // A long trail: 2,345 entries more than the fixture's, written in one statement (their
    // hashes are not a chain; the export does not check it).
    let head = f.db.store.audit_head().await.unwrap().map_or(0, |h| h.seq);
    let bulk = 2_345;
    sqlx::query(&format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {bulk}) \
         INSERT INTO audit_log (seq, at_ms, actor, action, entity, entity_id, prev_hash, hash) \
         SELECT {head} + i, 0, 'test', 'test.bulk', 'bulk', CAST(i AS TEXT), 'x', 'x' FROM n"
    ))
    .execute(f.db.store.raw_pool())
    .await
    .unwrap();
    let end = head + bulk;
    let export = |query: &str| {
        let req = call(
            "GET",
            &format!("/api/v1/audit/export?{query}"),
            Some(&qa),
            None,
        );
        let app = app(f.state.clone());
        async move {
            let res = app.oneshot(req).await.unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            axum::body::to_bytes(res.into_body(), usize::MAX)
                .await
                .unwrap()
        }
    };
    let csv = export("format=csv").await;
    let seqs: Vec<i64> = csv::Reader::from_reader(&csv[..])
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=end).collect::<Vec<_>>(),
        "every entry, once, in order"
    );
    let json_seqs = |body: &[u8]| -> Vec<i64> {
        json(body)
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect()
    };
    // The first export's own entry came after its end: the next export starts there.
    let later = json_seqs(&export(&format!("format=json&from_seq={}", end + 1)).await);
    assert_eq!(later, [end + 1]);
    let part = json_seqs(&export(&format!("format=json&from_seq={}&limit=1500", head + 1)).await);
    assert_eq!(part, (head + 1..=head + 1500).collect::<Vec<_>>());
    let about = json_seqs(&export("format=json&entity=bulk").await);
    assert_eq!(about.len(), bulk as usize);
    let none = export("format=json&entity=nothing").await;
    assert!(json_seqs(&none).is_empty());
    let header_only = export("format=csv&entity=nothing").await;
    assert!(String::from_utf8_lossy(&header_only).starts_with("seq,at_ms,actor,action,"));
    let (s, b, _) = send(
        &f,
        call("GET", "/api/v1/audit/export?limit=0", Some(&qa), None),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(json(&b)["field"], "limit");
    let recorded: Vec<String> =
        f.db.store
            .audit_for("audit", "trail")
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.new_value.unwrap_or_default())
            .collect();
    assert_eq!(recorded[0], format!("entries from seq 1 to {end} as csv"));
    assert_eq!(
        recorded[2],
        format!(
            "entries from seq {} to {}, at most 1500 as json",
            head + 1,
            end + 2
        )
    );
}

/// The OpenAPI document is served, is OpenAPI 3.1 and describes every route with its
/// security schemes.
#[tokio::test]
async fn openapi_document_is_served_and_triggers_need_cameras() {
    let f = fixture(ApiConfig::default()).await;
    let (s, b, media) = send(&f, call("GET", "/api/v1/openapi.json", None, None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(media.as_deref(), Some("application/json"));
    let doc = json(&b);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    for path in [
        "/api/v1/inspections",
        "/api/v1/ncrs/{id}/signatures",
        "/api/v1/events",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} undocumented");
    }
    for scheme in ["bearer", "basic", "session"] {
        assert!(
            doc["components"]["securitySchemes"][scheme].is_object(),
            "{scheme}"
        );
    }
    assert!(doc["components"]["schemas"]["UploadAnswer"].is_object());

    // Without cameras here, triggers are refused with a reason.
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/triggers",
            Some(&basic("op")),
            Some(r#"{"camera":"cam1"}"#),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert!(json(&b)["detail"].as_str().unwrap().contains("api.listen"));
}

/// Model activation through the API: administrators only; a broken package is refused with
/// its reason and audited, and nothing becomes active.
#[tokio::test]
async fn admins_activate_models_and_a_broken_package_is_refused() {
    let f = fixture(ApiConfig::default()).await;
    let broken = tempfile::tempdir().unwrap();
    std::fs::write(broken.path().join("model.onnx"), b"not a model").unwrap();
    let body = format!(
        r#"{{"slot":"cam1","package":"{}"}}"#,
        broken.path().display()
    );
    let (s, _, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/models/activate",
            Some(&basic("qa")),
            Some(&body),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/models/activate",
            Some(&basic("admin")),
            Some(&body),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert!(
        json(&b)["detail"]
            .as_str()
            .unwrap()
            .contains("keeps serving")
    );
    let (s, b, _) = send(&f, call("GET", "/api/v1/models", Some(&basic("op")), None)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(json(&b), serde_json::json!([]));
    let good = format!(
        r#"{{"slot":"cam1","package":"{}"}}"#,
        repo().join("models/demo").display()
    );
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/models/activate",
            Some(&basic("admin")),
            Some(&good),
        ),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    // A slot no camera here has is refused rather than recorded as active with nothing
    // following it.
    let (s, b, _) = send(
        &f,
        call(
            "POST",
            "/api/v1/models/activate",
            Some(&basic("admin")),
            Some(&good.replace("cam1", "washer-b")),
        ),
    )
    .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&b)
    );
    assert_eq!(json(&b)["field"], "slot");
    let (_, b, _) = send(&f, call("GET", "/api/v1/models", Some(&basic("op")), None)).await;
    assert_eq!(json(&b).as_array().unwrap().len(), 1);
    assert_eq!(json(&b)[0]["slot"], "cam1");
    assert_eq!(json(&b)[0]["actor"], "admin");
    // The recipes here, with what each serves; the contract of a slot's model.
    let op = basic("op");
    let (s, b, _) = send(&f, call("GET", "/api/v1/recipes", Some(&op), None)).await;
    assert_eq!(s, StatusCode::OK);
    let recipes = json(&b);
    assert_eq!(recipes[0]["slot"], "cam1");
    assert_eq!(recipes[0]["active"]["actor"], "admin");
    let (s, b, _) = send(
        &f,
        call("GET", "/api/v1/models/contract?slot=cam1", Some(&op), None),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let report = json(&b);
    assert_eq!(report["name"], "demo-washer");
    assert_eq!(
        report["sha256"],
        linesight::model::ModelPackage::open(&repo().join("models/demo"))
            .unwrap()
            .sha256
    );
    assert!(report["contract"]["input"].is_string(), "{report}");
    let (s, _, _) = send(&f, call("GET", "/api/v1/models/contract", Some(&op), None)).await;
    assert_eq!(s, StatusCode::OK, "the upload model's contract");
    let (s, _, _) = send(
        &f,
        call("GET", "/api/v1/models/contract?slot=nope", Some(&op), None),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// The web UI is served from the binary, under a strict content security policy, and only
/// its own files.
#[tokio::test]
async fn web_ui_is_served_with_a_strict_content_security_policy() {
    let f = fixture(ApiConfig::default()).await;
    let (s, _, _) = send(&f, call("GET", "/", None, None)).await;
    assert!(s.is_redirection());
    let res = app(f.state.clone())
        .oneshot(call("GET", "/ui/", None, None))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()[header::CONTENT_TYPE],
        "text/html; charset=utf-8"
    );
    let csp = res.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    for bad in ["/ui/../Cargo.toml", "/ui/.hidden", "/ui/nothing-here.js"] {
        let (s, _, _) = send(&f, call("GET", bad, None, None)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
    }
    // Nothing is loaded from elsewhere: the plant network has no internet.
    for (file, marker) in [
        ("/ui/index.html", "://"),
        ("/ui/app.css", "url(http"),
        ("/ui/app.js", "from 'http"),
    ] {
        let (s, b, _) = send(&f, call("GET", file, None, None)).await;
        assert_eq!(s, StatusCode::OK, "{file}");
        assert!(
            !String::from_utf8_lossy(&b).contains(marker),
            "{file} loads {marker}"
        );
    }
}

/// `api.tls`: `linesight serve` answers over HTTPS with the configured certificate (checked by
/// curl against it), in HTTP/1.1 even to a client offering HTTP/2, refuses plain HTTP on that
/// port, marks the session cookie `Secure`, and closes a connection whose TLS handshake does
/// not start within `api.header_timeout_ms`.
#[cfg(unix)]
#[test]
fn serve_speaks_https_with_the_configured_certificate() {
    use std::process::Command;

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=linesight-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/setup installs it)");
    assert!(made.status.success(), "{made:?}");
    let server = ServeChild::start(
        dir.path(),
        ("quinn", "qa_approver", "quinn-long-password"),
        &[
            ("LINESIGHT__API__TLS__CERT", &cert),
            ("LINESIGHT__API__TLS__KEY", &key),
            (
                "LINESIGHT__API__SIGN_IN_FAILURES_PER_ADDRESS",
                std::path::Path::new("1"),
            ),
            (
                "LINESIGHT__API__HEADER_TIMEOUT_MS",
                std::path::Path::new("3000"),
            ),
        ],
    );
    let port = server.port;
    let base = format!("https://127.0.0.1:{port}");
    let curl = |args: &[&str]| {
        Command::new("curl")
            .args(["-s", "--max-time", "20", "--cacert"])
            .arg(&cert)
            .args(args)
            .output()
            .expect("curl (scripts/setup installs it)")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = curl(&[&format!("{base}/healthz")]);
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no HTTPS answer: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let signed_in = curl(&[
        "-i",
        "--http2",
        "-H",
        "content-type: application/json",
        "-d",
        r#"{"username":"quinn","password":"quinn-long-password"}"#,
        &format!("{base}/api/v1/session"),
    ]);
    assert!(signed_in.status.success(), "{signed_in:?}");
    let head = String::from_utf8_lossy(&signed_in.stdout).to_lowercase();
    // HTTP/1.1 even to a client that offers HTTP/2 (ALPN): the header timeout covers it.
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let cookie = head
        .lines()
        .find(|l| l.starts_with("set-cookie: linesight_session="))
        .expect("a session cookie");
    assert!(cookie.contains("; secure"), "{cookie}");
    assert!(cookie.contains("; httponly"), "{cookie}");
    // Plain HTTP on the HTTPS port gets no API answer.
    let plain = Command::new("curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&plain.stdout), "200");
    // The HTTPS server knows its clients' addresses: one failed sign-in uses up 127.0.0.1's
    // allowance of 1, and the right password is refused after it.
    let code = |password: &str| {
        let out = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            &format!(r#"{{"username":"quinn","password":"{password}"}}"#),
            &format!("{base}/api/v1/session"),
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code("wrong"), "401");
    assert_eq!(code("quinn-long-password"), "429");
    // A client that connects and never starts its TLS handshake is closed at
    // api.header_timeout_ms (3 s here).
    {
        use std::io::Read as _;
        let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        silent
            .set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let since = std::time::Instant::now();
        let mut got = Vec::new();
        let read = silent.read_to_end(&mut got);
        let after = since.elapsed();
        assert!(
            read.is_ok()
                || read.as_ref().unwrap_err().kind() == std::io::ErrorKind::ConnectionReset,
            "not closed: {read:?}"
        );
        assert!(
            (std::time::Duration::from_millis(2_500)..std::time::Duration::from_secs(15))
                .contains(&after),
            "closed after {after:?}"
        );
    }

    server.stop();
}
