//! The `linesight` binary as a user runs it: output formats, exit codes, error messages.

use std::path::Path;

use crate::common::{linesight, repo};

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn inspect_csv_on_the_synthetic_parts_separates_good_from_defect() {
    let out = linesight()
        .args(["inspect", "--model", "models/demo", "--format", "csv"])
        .arg("testdata/synthetic/test")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    let headers: Vec<String> = reader.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(&headers[..3], ["path", "score", "verdict"]);
    let mut n = 0;
    for record in reader.records() {
        let r = record.unwrap();
        let expected = if r[0].contains("/good/") {
            "good"
        } else {
            "defect"
        };
        assert_eq!(&r[2], expected, "{}: score {}", &r[0], &r[1]);
        n += 1;
    }
    assert_eq!(n, 25);
}

#[test]
fn inspect_json_lines_carry_regions_model_hash_and_timings() {
    let out = linesight()
        .args(["inspect", "-m", "models/demo", "--format", "json"])
        .arg("testdata/synthetic/test/chip/000.png")
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one object per image: {text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["verdict"], "defect");
    assert_eq!(v["width"], 224);
    assert_eq!(v["height"], 176);
    let sha = v["model"]["sha256"].as_str().unwrap();
    assert_eq!(sha.len(), 64);
    assert!(!v["regions"].as_array().unwrap().is_empty(), "{text}");
    let region = &v["regions"][0];
    assert!(region["x"].as_u64().unwrap() + region["width"].as_u64().unwrap() <= 224);
    assert!(v["timings"]["inference_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_bad_image_is_reported_and_the_run_continues_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("testdata/synthetic/test/good/000.png"),
        dir.path().join("a_good.png"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("b_corrupt.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    std::fs::write(dir.path().join("c_empty.jpg"), b"").unwrap();
    std::fs::copy(
        repo().join("testdata/synthetic/test/spot/000.png"),
        dir.path().join("d_spot.png"),
    )
    .unwrap();
    let out = linesight()
        .args(["inspect", "-m"])
        .arg(repo().join("models/demo"))
        .args(["--format", "csv"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let mut reader = csv::Reader::from_reader(out.stdout.as_slice());
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4);
    assert_eq!(&rows[0][2], "good");
    assert!(
        rows[1][8].contains("corrupt or truncated PNG"),
        "{:?}",
        rows[1]
    );
    assert!(rows[2][8].contains("empty"), "{:?}", rows[2]);
    assert_eq!(&rows[3][2], "defect");
    assert!(stderr_of(&out).contains("2 failed"), "{}", stderr_of(&out));
}

#[test]
fn missing_onnx_runtime_is_a_clear_error_with_the_fix_not_a_panic() {
    let empty_cache = tempfile::tempdir().unwrap();
    let out = linesight()
        .args([
            "models",
            "show",
            "models/demo",
            "--ort-lib",
            "/nonexistent/libonnxruntime.so",
        ])
        .current_dir(repo())
        .env("LINESIGHT_CACHE_DIR", empty_cache.path())
        .env_remove("ORT_DYLIB_PATH")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("ONNX Runtime could not be loaded"), "{err}");
    assert!(
        err.contains("/nonexistent/libonnxruntime.so (--ort-lib)"),
        "{err}"
    );
    assert!(err.contains("linesight cache"), "{err}");
    assert!(err.contains("scripts/install-onnxruntime"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_file_that_is_not_onnx_runtime_is_refused_and_the_next_candidate_used() {
    let fake = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(fake.path(), b"not a shared library").unwrap();
    let out = linesight()
        .args(["models", "show", "models/demo", "--ort-lib"])
        .arg(fake.path())
        .current_dir(repo())
        .output()
        .unwrap();
    // The cache (installed by the test script) is the fallback, so the command still works.
    assert!(out.status.success(), "{}", stderr_of(&out));
    assert!(
        stdout_of(&out).contains("linesight cache"),
        "{}",
        stdout_of(&out)
    );
}

#[test]
fn models_show_reports_contract_opset_providers_and_sha256() {
    let out = linesight()
        .args(["models", "show", "models/demo"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let text = stdout_of(&out);
    // The identity covers the graph and then the manifest: cat model.onnx model.toml | sha256sum.
    let mut package = std::fs::read(repo().join("models/demo/model.onnx")).unwrap();
    let onnx_sha = sha256_hex(&package);
    package.extend(std::fs::read(repo().join("models/demo/model.toml")).unwrap());
    let sha = sha256_hex(&package);
    assert!(text.contains(&format!("sha256       {sha}")), "{text}");
    assert!(
        text.contains(&format!(
            "file       model.onnx (234980 bytes) sha256 {onnx_sha}"
        )),
        "{text}"
    );
    assert!(text.contains("file       model.toml"), "{text}");
    for expected in [
        "demo-washer 1.0.0",
        "opset ai.onnx 18",
        "anomalib 2.x export",
        "input float32 [?, 3, 256, 256]",
        "pred_score float32 [?, 1]",
        "CPUExecutionProvider",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn models_show_json_for_each_supported_contract() {
    for (dir, kind, batch) in [
        (
            "testdata/models/map-only",
            "anomaly-map",
            serde_json::json!("dynamic"),
        ),
        (
            "testdata/models/score-only",
            "score",
            serde_json::json!("dynamic"),
        ),
        (
            "testdata/models/fixed-batch",
            "anomalib",
            serde_json::json!({"fixed": 2}),
        ),
        (
            "testdata/models/external-data",
            "anomalib",
            serde_json::json!("dynamic"),
        ),
        (
            "testdata/models/dynamic-size",
            "anomalib",
            serde_json::json!("dynamic"),
        ),
    ] {
        let out = linesight()
            .args(["models", "show", "--json", dir])
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(out.status.success(), "{dir}: {}", stderr_of(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["contract"]["kind"], kind, "{dir}");
        // Graphs without a baked threshold show none; anomalib exports carry 0.5.
        if kind == "anomalib" {
            assert_eq!(v["thresholds"]["image"], 0.5, "{dir}");
        } else {
            assert!(v["thresholds"].is_null(), "{dir}");
        }
        assert_eq!(v["contract"]["batch"], batch, "{dir}");
        assert_eq!(v["contract"]["width"], 256, "{dir}");
    }
    // The external weights are part of the identity: cat model.onnx model.onnx.data | sha256sum.
    let out = linesight()
        .args(["models", "show", "--json", "testdata/models/external-data"])
        .current_dir(repo())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = repo().join("testdata/models/external-data");
    let mut both = std::fs::read(dir.join("model.onnx")).unwrap();
    both.extend(std::fs::read(dir.join("model.onnx.data")).unwrap());
    assert_eq!(v["sha256"], sha256_hex(&both));
    assert_eq!(v["files"].as_array().unwrap().len(), 2);
}

#[test]
fn threshold_flag_applies_to_map_and_score_only_models() {
    for dir in ["testdata/models/map-only", "testdata/models/score-only"] {
        let out = linesight()
            .args(["inspect", "-m", dir])
            .arg("testdata/synthetic/test/good/000.png")
            .current_dir(repo())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{dir}");
        assert!(
            stderr_of(&out).contains("set decision.threshold in model.toml or pass --threshold"),
            "{dir}: {}",
            stderr_of(&out)
        );
        let out = linesight()
            .args([
                "inspect",
                "-m",
                dir,
                "--threshold",
                "0.5",
                "--format",
                "csv",
            ])
            .arg("testdata/synthetic/test/good/000.png")
            .current_dir(repo())
            .output()
            .unwrap();
        assert!(out.status.success(), "{dir}: {}", stderr_of(&out));
        assert!(stdout_of(&out).contains(",0.5,"), "{}", stdout_of(&out));
    }
}

#[test]
fn unsupported_models_name_the_tensor() {
    for (dir, expected) in [
        ("testdata/models/bad-input-type", "expected float32"),
        (
            "testdata/models/bad-input-rank",
            "expected [batch, 3, height, width]",
        ),
        ("testdata/models/no-known-outputs", "no supported outputs"),
        ("testdata/synthetic", "has no model.onnx"),
        ("testdata/nonexistent", "does not exist"),
    ] {
        let out = linesight()
            .args(["models", "show", dir])
            .current_dir(repo())
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{dir}: {err}");
        assert!(err.contains(expected), "{dir}: {err}");
        assert!(!err.contains("panicked"), "{dir}: {err}");
    }
}

#[test]
fn a_corrupt_onnx_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("model.onnx"),
        b"\x08\x07garbage that is not protobuf",
    )
    .unwrap();
    let out = linesight()
        .args(["models", "show"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("not an ONNX model"), "{err}");
}

#[test]
fn missing_external_data_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("testdata/models/external-data/model.onnx"),
        dir.path().join("model.onnx"),
    )
    .unwrap();
    let out = linesight()
        .args(["models", "show"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert!(err.contains("external data file model.onnx.data"), "{err}");
}

#[test]
fn evaluate_writes_report_and_plots() {
    let report = tempfile::tempdir().unwrap();
    let out = linesight()
        .args([
            "evaluate",
            "-m",
            "models/demo",
            "testdata/synthetic",
            "--report",
        ])
        .arg(report.path())
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(json["counts"]["n_images"], 25);
    assert!(json["image_auroc"].as_f64().unwrap() > 0.95, "{json}");
    assert!(json["pixel_auroc"].as_f64().is_some());
    for plot in ["roc.png", "score_histogram.png"] {
        let img = image::open(report.path().join(plot)).unwrap();
        assert_eq!((img.width(), img.height()), (800, 600), "{plot}");
    }
    assert!(stdout_of(&out).contains("Image AUROC"));
}

#[test]
fn config_show_prints_effective_settings_with_environment_overrides() {
    let out = linesight()
        .args(["config", "show"])
        .env("LINESIGHT__INFERENCE__INTRA_THREADS", "3")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let settings: toml::Value = toml::from_str(&stdout_of(&out)).unwrap();
    assert_eq!(settings["inference"]["intra_threads"].as_integer(), Some(3));

    let out = linesight()
        .args(["config", "show"])
        .env("LINESIGHT__DECODE__MAX_WIDTH", "0")
        .env("LINESIGHT__INFERENCE__INTRA_THREADS", "1000")
        .output()
        .unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("decode.max_width = 0") && err.contains("inference.intra_threads = 1000"),
        "{err}"
    );
}

#[test]
fn overlays_are_written_at_original_size_mirroring_folders() {
    let overlays = tempfile::tempdir().unwrap();
    let out = linesight()
        .args(["inspect", "-m", "models/demo", "--overlays"])
        .arg(overlays.path())
        .args([
            "testdata/synthetic/test/good",
            "testdata/synthetic/test/chip",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    for name in ["good/000.png", "chip/000.png"] {
        let path = overlays.path().join(name);
        let img = image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!((img.width(), img.height()), (224, 176));
        let original =
            image::open(Path::new(repo()).join("testdata/synthetic/test").join(name)).unwrap();
        assert_ne!(
            img.to_rgb8(),
            original.to_rgb8(),
            "the overlay changes the image"
        );
    }
}

#[test]
fn bench_reports_linesight_and_bare_onnx_runtime_side_by_side() {
    let out = linesight()
        .args([
            "bench",
            "-m",
            "models/demo",
            "--images",
            "testdata/synthetic/test/good",
        ])
        .args([
            "--duration",
            "0.3",
            "--warmup",
            "0",
            "--batch",
            "2",
            "--json",
        ])
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["image_count"], 10);
    assert_eq!(v["batch"], 2);
    for run in ["linesight", "bare_ort"] {
        assert!(v[run]["images"].as_u64().unwrap() >= 2, "{run}: {v}");
        assert_eq!(
            v[run]["images"].as_u64().unwrap() % 2,
            0,
            "{run}: whole batches"
        );
        assert!(v[run]["images_per_second"].as_f64().unwrap() > 0.0);
        let p = &v[run]["batch_latency_ms"];
        assert!(p["p50"].as_f64().unwrap() <= p["p99"].as_f64().unwrap());
    }
    let ratio = v["ratio_inference_stage"].as_f64().unwrap();
    assert!(ratio > 0.1 && ratio < 10.0, "{ratio}");
    // 0.3 s in rounds of at most half a second: one round of each client.
    assert_eq!(v["rounds"], 1);
    // The inference stage is part of each round's time, so its ratio bounds the end-to-end one.
    let end_to_end = v["ratio_end_to_end_sequential"].as_f64().unwrap();
    assert!(
        end_to_end > 0.0 && end_to_end <= ratio + 1e-9,
        "{end_to_end} vs {ratio}"
    );
    assert!(v["stages"]["inference_ms"]["mean"].as_f64().unwrap() > 0.0);
    let memory = &v["memory"];
    assert!(memory["after_model_mib"].as_f64().unwrap() > 0.0);
    assert!(
        memory["after_warmup_mib"].as_f64().unwrap()
            >= memory["before_model_mib"].as_f64().unwrap()
    );
}
