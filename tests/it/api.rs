//! HTTP API: router tests with `oneshot`, a fresh SQLite store per test and the demo model.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use linesight::api::{ApiConfig, ApiState, InspectorPool, UploadAnswer, app};
use linesight::quality::{QualityConfig, Role};
use linesight::store::NewUser;
use tower::ServiceExt as _;

use crate::common::{inspector, repo};
use crate::quality::{Db, sqlite};

struct Fixture {
    db: Db,
    images: tempfile::TempDir,
    state: ApiState,
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
    let state = ApiState {
        store: db.store.clone(),
        quality: QualityConfig::default(),
        config,
        image_dir: images.path().to_path_buf(),
        inspectors: Arc::new(InspectorPool::new(vec![inspector(
            &repo().join("models/demo"),
            None,
        )])),
        line: "L1".into(),
    };
    Fixture { db, images, state }
}

fn basic(user: &str) -> String {
    let raw = format!("{user}:{user}-secret-pw");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
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
    assert!(answer.regions.as_array().is_some_and(|r| !r.is_empty()));
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
    // Deciding again is a state conflict, reported as problem+json.
    let (s, _, media) = send(&f, decide("override_good")).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(media.as_deref(), Some("application/problem+json"));
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
        ("qa", StatusCode::NO_CONTENT),
        ("admin", StatusCode::NO_CONTENT),
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
fn http(port: u16, head: &str, body: &[u8]) -> (u16, String) {
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

/// `linesight serve` from the command line: users added with `linesight users add`, a manual
/// upload over HTTP inspected with the bundled model and recorded, a request without
/// credentials refused, and SIGTERM stops it with exit code 0.
#[cfg(unix)]
#[test]
fn serve_inspects_uploads_over_http_and_stops_on_sigterm() {
    use std::io::Write as _;
    use std::process::Stdio;

    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("q.db").display());
    let env = |cmd: &mut std::process::Command| {
        cmd.env("LINESIGHT__STORE__URL", &url)
            .env("LINESIGHT__STORE__DATA_DIR", dir.path());
    };
    let mut add = crate::common::linesight();
    add.args([
        "users",
        "add",
        "ana",
        "--full-name",
        "Ana",
        "--role",
        "inspector",
    ]);
    env(&mut add);
    let mut child = add
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"ana-long-password\n")
        .unwrap();
    assert!(child.wait().unwrap().success());

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = crate::common::linesight();
    serve.args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
    env(&mut serve);
    let mut server = serve
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "linesight serve never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
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
    let (status, body) = http(
        port,
        &format!(
            "GET /api/v1/inspections/{} HTTP/1.1\r\nAuthorization: Basic {auth}",
            answer.id
        ),
        b"",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"part_id\":\"P-1\""), "{body}");

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = server.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
