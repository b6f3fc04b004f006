//! Sample upload for retraining through `object_store`: S3 (credentials from the standard AWS
//! chain) or a local folder.
//!
//! Layout: `<prefix>/<site>/<line>/<camera>/dt=YYYY-MM-DD/<inspection-id>.png` and `.json`
//! (metadata), and one SageMaker Ground Truth manifest per UTC day,
//! `<prefix>/<site>/manifests/dt=YYYY-MM-DD/manifest.jsonl`.
//!
//! Invariants: a sample leaves the outbox only after its objects were stored (2xx); the
//! manifest of a day is written again, whole, after every change to that day (a version in
//! `sample_days` says which days are behind), so after a crash or an outage it catches up
//! and lists every uploaded sample once. Uploads are idempotent (same key, same bytes), so a
//! sample sent again after a crash is still one object. Requests are retried with exponential
//! back-off by `object_store`; a sample that still fails is retried from the outbox after a
//! pause that doubles up to `max_backoff_ms`. Images above `multipart_threshold_bytes` go up as
//! multipart uploads; a multipart upload cut by a crash starts again from its first part
//! (configure the bucket's lifecycle rule to abort incomplete uploads). A day's manifest is
//! written at most every `manifest_interval_s`, since each write holds the whole day.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, PutPayload, RetryConfig, WriteMultipart};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;
use tokio::sync::watch;

use super::queue::{Sink, ack_in, maybe_clear_alarm, sample_state};
use super::sampling::SamplingConfig;
use super::{OutboxConfig, OutboxError, OutboxRow};
use crate::store::{Store, StoreError, image_path};

/// `[outbox.upload]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// `s3://BUCKET/PREFIX` or `file:///FOLDER/PREFIX`.
    pub destination: String,
    /// AWS region (else `AWS_REGION` / `AWS_DEFAULT_REGION`, else us-east-1).
    pub region: Option<String>,
    /// S3-compatible endpoint (MinIO, a test server); AWS when absent.
    pub endpoint: Option<String>,
    /// Allow `http://` endpoints.
    pub allow_http: bool,
    /// Static credentials for an S3-compatible store (MinIO and the like); on AWS leave them
    /// out and let the standard chain find credentials. Shown as `***`.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Site name, the first level below the prefix.
    pub site: String,
    /// Label attribute name in the Ground Truth manifest.
    pub label_attribute: String,
    pub multipart_threshold_bytes: usize,
    /// Part size of multipart uploads (S3 needs at least 5 MiB).
    pub part_size_bytes: usize,
    /// Retries of one request inside `object_store`.
    pub max_retries: usize,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Least time between two writes of a day's manifest (each write is the whole day).
    pub manifest_interval_s: u64,
    pub sampling: SamplingConfig,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            destination: String::new(),
            region: None,
            endpoint: None,
            allow_http: false,
            access_key_id: None,
            secret_access_key: None,
            site: "site".into(),
            label_attribute: "anomaly".into(),
            multipart_threshold_bytes: 16 << 20,
            part_size_bytes: 8 << 20,
            max_retries: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            manifest_interval_s: 60,
            sampling: SamplingConfig::default(),
        }
    }
}

/// Where objects go, parsed from `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Destination {
    S3 { bucket: String, prefix: String },
    Folder { dir: PathBuf, prefix: String },
}

fn segment(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.is_empty() || cleaned.chars().all(|c| c == '.') {
        "_".into()
    } else {
        cleaned
    }
}

impl UploadConfig {
    fn destination(&self) -> Result<Destination, String> {
        let split = |rest: &str| -> (String, String) {
            let rest = rest.trim_matches('/');
            match rest.split_once('/') {
                Some((a, b)) => (a.to_owned(), b.trim_matches('/').to_owned()),
                None => (rest.to_owned(), String::new()),
            }
        };
        if let Some(rest) = self.destination.strip_prefix("s3://") {
            let (bucket, prefix) = split(rest);
            if bucket.is_empty() {
                return Err("names no bucket".into());
            }
            Ok(Destination::S3 { bucket, prefix })
        } else if let Some(rest) = self.destination.strip_prefix("file://") {
            if !rest.starts_with('/') {
                return Err("must be an absolute path: file:///FOLDER".into());
            }
            Ok(Destination::Folder {
                dir: PathBuf::from(rest),
                prefix: String::new(),
            })
        } else {
            Err("must start with s3:// or file://".into())
        }
    }

    fn prefix(&self) -> String {
        match self.destination() {
            Ok(Destination::S3 { prefix, .. } | Destination::Folder { prefix, .. }) => prefix,
            Err(_) => String::new(),
        }
    }

    /// `<prefix>/<site>/<line>/<camera>/dt=<day>/<inspection-id>` (no extension).
    pub fn key_base(&self, line: &str, camera: &str, day: &str, inspection_id: i64) -> String {
        let mut parts = Vec::new();
        let prefix = self.prefix();
        if !prefix.is_empty() {
            parts.push(prefix);
        }
        parts.extend([
            segment(&self.site),
            segment(line),
            segment(camera),
            format!("dt={day}"),
            inspection_id.to_string(),
        ]);
        parts.join("/")
    }

    fn manifest_key(&self, day: &str) -> String {
        let prefix = self.prefix();
        let site = segment(&self.site);
        if prefix.is_empty() {
            format!("{site}/manifests/dt={day}/manifest.jsonl")
        } else {
            format!("{prefix}/{site}/manifests/dt={day}/manifest.jsonl")
        }
    }

    /// The longest key [`Self::key_base`] can make, with its `.json` ending: line and camera
    /// names of [`crate::quality::MAX_LABEL_BYTES`], the largest inspection id. A key S3 refuses
    /// would be refused on every retry and hold back every sample queued after it, so the
    /// configuration is refused at start-up instead.
    fn longest_key(&self) -> usize {
        let label = "x".repeat(crate::quality::MAX_LABEL_BYTES);
        self.key_base(&label, &label, "2026-12-31", i64::MAX).len() + ".json".len()
    }

    /// The URI of an object, as the manifest's `source-ref`.
    pub fn source_ref(&self, key: &str) -> String {
        match self.destination() {
            Ok(Destination::S3 { bucket, .. }) => format!("s3://{bucket}/{key}"),
            Ok(Destination::Folder { dir, .. }) => format!("file://{}/{key}", dir.display()),
            Err(_) => key.to_owned(),
        }
    }

    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Err(e) = self.destination() {
            p.push(format!(
                "outbox.upload.destination = {:?}: {e}",
                self.destination
            ));
        }
        if self.site.is_empty() {
            p.push("outbox.upload.site is empty".into());
        }
        let longest = self.longest_key();
        if longest > MAX_KEY_BYTES {
            p.push(format!(
                "outbox.upload.destination prefix and site leave keys of up to {longest} bytes \
                 (with line and camera names of {} bytes): S3 allows {MAX_KEY_BYTES}; shorten them",
                crate::quality::MAX_LABEL_BYTES
            ));
        }
        if self.label_attribute.is_empty()
            || !self
                .label_attribute
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            p.push(format!(
                "outbox.upload.label_attribute = {:?}: must be letters, digits and -",
                self.label_attribute
            ));
        }
        if self.part_size_bytes < 5 << 20 {
            p.push(format!(
                "outbox.upload.part_size_bytes = {}: must be at least 5242880 (5 MiB, the S3 minimum)",
                self.part_size_bytes
            ));
        }
        if self.initial_backoff_ms == 0 || self.max_backoff_ms < self.initial_backoff_ms {
            p.push(format!(
                "outbox.upload.initial_backoff_ms = {} / max_backoff_ms = {}: need 0 < initial <= max",
                self.initial_backoff_ms, self.max_backoff_ms
            ));
        }
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            p.push(
                "outbox.upload: set both access_key_id and secret_access_key, or neither".into(),
            );
        }
        p.extend(self.sampling.problems());
        p
    }

    /// The object store for `destination`. S3 credentials come from the environment (the
    /// standard AWS chain: keys, web identity (IRSA), container credentials, instance profile).
    /// Greengrass's token exchange service passes its token in
    /// `AWS_CONTAINER_AUTHORIZATION_TOKEN`; `object_store` reads it from a file, so it is
    /// written to `state_dir` (mode 0600) first.
    fn object_store(&self, state_dir: &Path) -> Result<Arc<dyn ObjectStore>, OutboxError> {
        let bad = |problem: String| OutboxError::Destination {
            destination: self.destination.clone(),
            problem,
        };
        match self.destination().map_err(bad)? {
            Destination::Folder { dir, .. } => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                Ok(Arc::new(
                    LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?,
                ))
            }
            Destination::S3 { bucket, .. } => {
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(self.allow_http)
                    .with_retry(RetryConfig {
                        backoff: BackoffConfig {
                            init_backoff: Duration::from_millis(self.initial_backoff_ms),
                            max_backoff: Duration::from_millis(self.max_backoff_ms),
                            base: 2.0,
                        },
                        max_retries: self.max_retries,
                        retry_timeout: Duration::from_secs(60),
                    });
                if let Some(r) = &self.region {
                    b = b.with_region(r);
                }
                if let Some(e) = &self.endpoint {
                    b = b.with_endpoint(e);
                }
                if let (Some(id), Some(secret)) = (&self.access_key_id, &self.secret_access_key) {
                    b = b.with_access_key_id(id).with_secret_access_key(secret);
                }
                if let Ok(token) = std::env::var("AWS_CONTAINER_AUTHORIZATION_TOKEN")
                    && std::env::var_os("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_none()
                {
                    let path = state_dir.join(".aws-container-token");
                    write_private(&path, token.as_bytes())
                        .map_err(|e| bad(format!("cannot write {}: {e}", path.display())))?;
                    b = b.with_config(
                        AmazonS3ConfigKey::ContainerAuthorizationTokenFile,
                        path.display().to_string(),
                    );
                }
                Ok(Arc::new(b.build().map_err(|e| bad(e.to_string()))?))
            }
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut o, 0o600);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    o.open(path)?.write_all(bytes)
}

fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Db { op, source }
}

/// The longest object key S3 accepts, in bytes.
const MAX_KEY_BYTES: usize = 1024;

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// PNG bytes of a stored image (other formats are converted, so the layout's `.png` holds).
fn as_png(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    if bytes.starts_with(PNG_MAGIC) {
        return Ok(bytes);
    }
    let img = image::load_from_memory(&bytes).map_err(|e| e.to_string())?;
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

struct Uploader {
    store: Store,
    objects: Arc<dyn ObjectStore>,
    up: UploadConfig,
    image_dir: PathBuf,
}

impl Uploader {
    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), OutboxError> {
        let path = ObjectPath::from(key);
        let err = |source| OutboxError::Upload {
            key: key.to_owned(),
            source,
        };
        if bytes.len() > self.up.multipart_threshold_bytes {
            let upload = self.objects.put_multipart(&path).await.map_err(err)?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, self.up.part_size_bytes);
            w.write(&bytes);
            w.finish().await.map_err(err)?;
        } else {
            self.objects
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(err)?;
        }
        Ok(())
    }

    /// Uploads one outbox row's objects, then deletes the row in the same transaction that
    /// marks the sample uploaded and its day's manifest stale.
    async fn deliver(&self, row: &OutboxRow) -> Result<(), OutboxError> {
        let v: serde_json::Value = serde_json::from_str(&row.payload).unwrap_or_default();
        let data = &v["data"];
        let inspection_id = data["inspection_id"].as_i64().unwrap_or_default();
        let key_base = data["key_base"].as_str().unwrap_or_default().to_owned();
        let sample = sqlx::query(
            "SELECT metadata, day, uploaded FROM sample_manifest WHERE inspection_id = $1",
        )
        .bind(inspection_id)
        .fetch_optional(self.store.raw_pool())
        .await
        .map_err(db("read a sample"))?;
        let Some(sample) = sample else {
            // Nothing recorded for it (cannot happen through the store's write paths): there
            // is nothing to upload, and keeping the row would block the queue.
            tracing::warn!(inspection_id, event_id = %row.event_id, "Sample without metadata skipped.");
            let mut tx = self.store.begin_plain().await?;
            ack_in(&mut tx, Sink::S3, &[row.id]).await?;
            tx.commit().await.map_err(db("commit a sample upload"))?;
            return Ok(());
        };
        let metadata: String = sample.try_get(0).map_err(db("read a sample"))?;
        let day: String = sample.try_get(1).map_err(db("read a sample"))?;
        let mut uploaded: i64 = sample.try_get(2).map_err(db("read a sample"))?;
        if row.kind == "sample.upload" {
            let hash = data["image_ref"].as_str().unwrap_or_default();
            let image = image_path(&self.image_dir, hash);
            match image {
                Some(path) if path.is_file() => {
                    // An image that cannot be read or decoded, or that no longer holds what
                    // its hash names (altered or damaged on disk: not the evidence recorded),
                    // goes up as metadata only, like one that is gone: kept as an error, this
                    // row would be retried first on every pass and hold back every sample
                    // after it.
                    match std::fs::read(&path)
                        .map_err(|e| format!("cannot read {}: {e}", path.display()))
                        .and_then(|bytes| {
                            crate::store::check_content(&bytes, hash)
                                .map(|()| bytes)
                                .map_err(|found| {
                                    format!(
                                        "{} holds what hashes to {found}, not {hash}: altered or damaged on disk",
                                        path.display()
                                    )
                                })
                        })
                        .and_then(as_png)
                    {
                        Ok(png) => {
                            self.put(&format!("{key_base}.png"), png).await?;
                            uploaded = sample_state::UPLOADED;
                        }
                        Err(e) => {
                            tracing::warn!(inspection_id, error = %e, "Sample image cannot be read; uploading its metadata only.");
                            uploaded = sample_state::METADATA_ONLY;
                        }
                    }
                }
                _ => {
                    tracing::warn!(
                        inspection_id,
                        "Sample image no longer stored; uploading its metadata only."
                    );
                    uploaded = sample_state::METADATA_ONLY;
                }
            }
        }
        // The metadata sent must still be the sample's when the row is deleted: an
        // inspector's decision that commits during the upload changes it (and queues no
        // relabel while the sample waits), so it is sent again until it holds still.
        let mut metadata = metadata;
        let mut attempts = 0;
        let mut tx = loop {
            self.put(&format!("{key_base}.json"), metadata.clone().into_bytes())
                .await?;
            let mut tx = self.store.begin_plain().await?;
            if mark_uploaded(&mut tx, inspection_id, uploaded, &metadata).await? {
                break tx;
            }
            tx.rollback().await.map_err(db("mark a sample uploaded"))?;
            attempts += 1;
            let now: Option<String> =
                sqlx::query("SELECT metadata FROM sample_manifest WHERE inspection_id = $1")
                    .bind(inspection_id)
                    .fetch_optional(self.store.raw_pool())
                    .await
                    .map_err(db("read a sample"))?
                    .map(|r| r.try_get(0))
                    .transpose()
                    .map_err(db("read a sample"))?;
            match now {
                Some(now) if attempts < 5 => metadata = now,
                // Gone (discarded meanwhile) or changing without end: the row stays, and is
                // delivered again after the back-off.
                _ => {
                    return Err(OutboxError::Store(StoreError::Invalid(format!(
                        "sample {inspection_id} changed while it was uploaded; it is uploaded again"
                    ))));
                }
            }
        };
        ack_in(&mut tx, Sink::S3, &[row.id]).await?;
        sqlx::query(
            "INSERT INTO sample_days (day, version, written) VALUES ($1, 1, 0) \
             ON CONFLICT (day) DO UPDATE SET version = sample_days.version + 1",
        )
        .bind(&day)
        .execute(&mut *tx)
        .await
        .map_err(db("mark a manifest stale"))?;
        tx.commit().await.map_err(db("commit a sample upload"))?;
        Ok(())
    }

    /// Writes the manifest of every day that changed since it was last written.
    async fn write_manifests(&self) -> Result<(), OutboxError> {
        let days = sqlx::query("SELECT day, version FROM sample_days WHERE version <> written")
            .fetch_all(self.store.raw_pool())
            .await
            .map_err(db("find stale manifests"))?;
        for d in days {
            let day: String = d.try_get(0).map_err(db("read a manifest day"))?;
            let version: i64 = d.try_get(1).map_err(db("read a manifest day"))?;
            let lines = sqlx::query(
                "SELECT line FROM sample_manifest WHERE day = $1 AND uploaded = $2 ORDER BY inspection_id",
            )
            .bind(&day)
            .bind(sample_state::UPLOADED)
            .fetch_all(self.store.raw_pool())
            .await
            .map_err(db("read manifest lines"))?;
            let mut body = String::new();
            for l in lines {
                body.push_str(
                    &l.try_get::<String, _>(0)
                        .map_err(db("read a manifest line"))?,
                );
                body.push('\n');
            }
            self.put(&self.up.manifest_key(&day), body.into_bytes())
                .await?;
            sqlx::query("UPDATE sample_days SET written = $1 WHERE day = $2")
                .bind(version)
                .bind(&day)
                .execute(self.store.raw_pool())
                .await
                .map_err(db("mark a manifest written"))?;
        }
        Ok(())
    }
}

/// In `tx`, marks the sample of `inspection_id` as `uploaded` if its metadata is still `sent`
/// (what went to the bucket); false, leaving it as it is, when it changed since.
async fn mark_uploaded(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    inspection_id: i64,
    uploaded: i64,
    sent: &str,
) -> Result<bool, OutboxError> {
    let marked = sqlx::query(
        "UPDATE sample_manifest SET uploaded = $1 WHERE inspection_id = $2 AND metadata = $3",
    )
    .bind(uploaded)
    .bind(inspection_id)
    .bind(sent)
    .execute(&mut **tx)
    .await
    .map_err(db("mark a sample uploaded"))?
    .rows_affected();
    Ok(marked == 1)
}

/// Uploads samples until `stop` turns true. `image_dir` is where the store keeps images,
/// `state_dir` a private folder for credentials handed over in the environment.
pub async fn run_upload(
    store: Store,
    config: OutboxConfig,
    image_dir: PathBuf,
    state_dir: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> Result<(), OutboxError> {
    let Some(up) = config.upload.clone() else {
        return Ok(());
    };
    let uploader = Uploader {
        objects: up.object_store(&state_dir)?,
        store,
        up,
        image_dir,
    };
    let initial = Duration::from_millis(uploader.up.initial_backoff_ms);
    let max = Duration::from_millis(uploader.up.max_backoff_ms);
    let clear_below = config.alarm_clears_below();
    let mut backoff = initial;
    let mut healthy = true;
    let manifest_every = Duration::from_secs(uploader.up.manifest_interval_s);
    let mut manifests_due = tokio::time::Instant::now();
    while !*stop.borrow() {
        let pause = match uploader
            .store
            .outbox_pending(Sink::S3, 0, i64::from(config.batch_size))
            .await
        {
            Ok(rows) if rows.is_empty() => Ok(false),
            Ok(rows) => {
                let mut result = Ok(true);
                for row in &rows {
                    if *stop.borrow() {
                        break;
                    }
                    if let Err(e) = uploader.deliver(row).await {
                        result = Err(e);
                        break;
                    }
                }
                result
            }
            Err(e) => Err(e.into()),
        };
        let pause = match pause {
            Ok(busy) if tokio::time::Instant::now() >= manifests_due => {
                match uploader.write_manifests().await {
                    Ok(()) => {
                        manifests_due = tokio::time::Instant::now() + manifest_every;
                        Ok(busy)
                    }
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        let wait = match pause {
            Ok(busy) => {
                if !healthy {
                    tracing::info!("Sample upload recovered.");
                }
                healthy = true;
                backoff = initial;
                let _ = maybe_clear_alarm(&uploader.store, clear_below).await;
                if busy {
                    continue;
                }
                Duration::from_millis(config.poll_interval_ms)
            }
            Err(e) => {
                if healthy {
                    tracing::warn!(error = %e, "Sample upload failed; retrying with back-off.");
                }
                healthy = false;
                let w = backoff;
                backoff = (backoff * 2).min(max);
                w
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sample whose metadata changed after it was sent (an inspector decided meanwhile) is
    /// not marked uploaded with the old document; with the current one it is.
    #[tokio::test]
    async fn a_sample_is_marked_uploaded_only_with_the_metadata_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite_in(dir.path()).await;
        sqlx::query(
            "INSERT INTO sample_manifest (inspection_id, day, line, metadata, uploaded) \
             VALUES (7, '2026-12-06', 'L1', '{\"human_verdict\":\"defect\"}', 0)",
        )
        .execute(store.raw_pool())
        .await
        .unwrap();
        let state = || async {
            sqlx::query("SELECT uploaded FROM sample_manifest WHERE inspection_id = 7")
                .fetch_one(store.raw_pool())
                .await
                .unwrap()
                .try_get::<i64, _>(0)
                .unwrap()
        };
        let mut tx = store.begin_plain().await.unwrap();
        let stale = r#"{"human_verdict":null}"#;
        assert!(
            !mark_uploaded(&mut tx, 7, sample_state::UPLOADED, stale)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        assert_eq!(state().await, sample_state::WAITING);
        let mut tx = store.begin_plain().await.unwrap();
        let current = r#"{"human_verdict":"defect"}"#;
        assert!(
            mark_uploaded(&mut tx, 7, sample_state::UPLOADED, current)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        assert_eq!(state().await, sample_state::UPLOADED);
    }

    #[test]
    fn layout_and_destinations() {
        let up = UploadConfig {
            destination: "s3://bucket/train/v1/".into(),
            site: "plant 1".into(),
            ..UploadConfig::default()
        };
        assert!(up.problems().is_empty(), "{:?}", up.problems());
        assert_eq!(
            up.key_base("line/3", "cam-a", "2026-11-23", 42),
            "train/v1/plant_1/line_3/cam-a/dt=2026-11-23/42"
        );
        assert_eq!(
            up.source_ref("train/v1/x.png"),
            "s3://bucket/train/v1/x.png"
        );
        assert_eq!(
            up.manifest_key("2026-11-23"),
            "train/v1/plant_1/manifests/dt=2026-11-23/manifest.jsonl"
        );
        let long = UploadConfig {
            destination: format!("s3://bucket/{}", "p".repeat(500)),
            site: "s".repeat(100),
            ..UploadConfig::default()
        };
        let p = long.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("keys of up to 1042 bytes"), "{p:?}");
        let fits = UploadConfig {
            destination: format!("s3://bucket/{}", "p".repeat(470)),
            ..long
        };
        assert!(fits.problems().is_empty(), "{:?}", fits.problems());
        let bad = UploadConfig {
            destination: "ftp://x".into(),
            part_size_bytes: 1,
            ..UploadConfig::default()
        };
        let p = bad.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("outbox.upload.destination"));
    }
}
