//! Images and overlays on disk, addressed by content hash, with a retention period and a disk
//! quota.
//!
//! Invariants: a file is written to a temporary name, flushed and renamed, then recorded, so a
//! recorded image is complete on disk; the same bytes are stored once. Expiry deletes the file
//! and marks the row (`deleted_at_ms`) — inspection records keep their `image_ref` and all
//! their metadata. The quota is enforced by deleting the oldest images first.
//!
//! Content addressing means a new upload may be byte-identical to an image that retention is
//! about to delete. Both sides work under the store's write lock, so they cannot interleave
//! inside it: retention marks a row and deletes its file in one write transaction, and only if
//! the row is still the one it chose (not re-recorded since, which moves `stored_at_ms` to the
//! newest record); a writer records a row and then checks, in its transaction, that the file
//! is still there, or fails with [`StoreError::ImageGone`] and writes it again
//! ([`write_and_record_images`]). A live row never names a missing file, and an image
//! recorded again is kept for the retention period from its newest record.
//!
//! Files that no row accounts for escape the quota. [`Store::sweep_image_files`] removes the
//! temporary files a crash left (older than a grace period: no write takes that long) and
//! finds the images written but never recorded (the record failed, or the process stopped in
//! between). It removes those only when asked (`linesight images prune --unrecorded`): an image
//! folder paired with the wrong database would otherwise lose every image. Each is removed
//! under the write lock after checking again that no live row names it, so that a writer about
//! to record it either sees its file or gets [`StoreError::ImageGone`] and writes it again.
//!
//! Images that samples waiting for their upload name are kept past retention and the quota
//! until they are uploaded (checked in each image's deleting transaction): an offline site
//! loses no retraining sample. `outbox.max_bytes` bounds them (the outbox counts their bytes).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use sqlx::{Any, Row as _, Transaction};

use super::{Backend, Store, StoreError, db};

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Images older than the retention period.
    pub expired: u64,
    /// Images removed, oldest first, to get under the quota.
    pub evicted: u64,
    pub bytes_freed: u64,
    /// Rows still live whose file was already gone (deleted by hand, or a pass that stopped
    /// between deleting a file and marking its row): marked deleted now.
    pub missing: u64,
    /// Images due for removal but kept because a sample queued for upload names them: they go
    /// once the sample is in the bucket. They count against the quota meanwhile.
    pub pinned: u64,
    pub pinned_bytes: u64,
    /// Images and overlays due for removal but kept because a secondary-inspection task still
    /// open (pending, claimed, escalated) shows them: the inspector decides on that evidence.
    /// They go once the task is decided, and count against the quota meanwhile.
    pub held_for_tasks: u64,
    pub held_for_tasks_bytes: u64,
    /// Images whose file could not be deleted (logged); their rows stay live for the next pass.
    pub errors: u64,
}

/// Rows of samples still waiting for their upload that name the image `$N` (the inspections'
/// `image_ref` index finds the inspections, then each sample by its key).
fn pending_samples_of(param: &str) -> String {
    format!(
        "SELECT 1 FROM inspections i JOIN sample_manifest m ON m.inspection_id = i.id \
         WHERE i.image_ref = {param} AND m.uploaded = {}",
        crate::outbox::sample_state::WAITING
    )
}

/// Open secondary-inspection tasks whose inspection shows the image `$N`, as its image or its
/// overlay (found from the few open tasks, by the `tasks_state` index).
fn open_tasks_of(param: &str) -> String {
    format!(
        "SELECT 1 FROM tasks t JOIN inspections i ON i.id = t.inspection_id \
         WHERE t.state IN ('pending', 'claimed', 'escalated') \
         AND (i.image_ref = {param} OR i.overlay_ref = {param})"
    )
}

/// How old a file must be before a sweep may take it for left over: far longer than any write
/// and its record take.
pub const SWEEP_GRACE: Duration = Duration::from_secs(3600);

/// What one pass of [`Store::prune_images`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub retention: RetentionReport,
    pub sweep: SweepReport,
}

/// What one sweep of the image folder found and removed ([`Store::sweep_image_files`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Temporary files left by writes that never finished (a crash, a full disk): removed.
    pub temporary: u64,
    /// Images on disk that no live record names (written, then their record failed or never
    /// came), older than the grace period.
    pub unrecorded: u64,
    pub unrecorded_bytes: u64,
    /// How many of those were removed (only when asked).
    pub unrecorded_removed: u64,
    pub bytes_freed: u64,
    /// Files that could not be listed or removed (logged); the rest of the pass went on.
    pub errors: u64,
}

/// What the image keeping of a service has done, for `/metrics`: counters since start-up and
/// the state the last pass found.
#[derive(Debug, Default)]
pub struct ImageKeepingMetrics {
    passes: AtomicU64,
    failed_passes: AtomicU64,
    last_pass_unix_s: AtomicU64,
    expired: AtomicU64,
    evicted: AtomicU64,
    temporary: AtomicU64,
    bytes_freed: AtomicU64,
    errors: AtomicU64,
    pinned: AtomicU64,
    pinned_bytes: AtomicU64,
    held_for_tasks: AtomicU64,
    held_for_tasks_bytes: AtomicU64,
    unrecorded: AtomicU64,
    unrecorded_bytes: AtomicU64,
}

impl ImageKeepingMetrics {
    /// Counts a pass finished at `at` (`None`: it failed).
    pub fn observe(&self, report: Option<&PruneReport>, at: SystemTime) {
        let unix_s = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.last_pass_unix_s.store(unix_s, Relaxed);
        let Some(PruneReport {
            retention: r,
            sweep: s,
        }) = report
        else {
            self.failed_passes.fetch_add(1, Relaxed);
            return;
        };
        self.passes.fetch_add(1, Relaxed);
        self.expired.fetch_add(r.expired, Relaxed);
        self.evicted.fetch_add(r.evicted, Relaxed);
        self.temporary.fetch_add(s.temporary, Relaxed);
        self.bytes_freed
            .fetch_add(r.bytes_freed + s.bytes_freed, Relaxed);
        self.errors.fetch_add(r.errors + s.errors, Relaxed);
        self.pinned.store(r.pinned, Relaxed);
        self.pinned_bytes.store(r.pinned_bytes, Relaxed);
        self.held_for_tasks.store(r.held_for_tasks, Relaxed);
        self.held_for_tasks_bytes
            .store(r.held_for_tasks_bytes, Relaxed);
        self.unrecorded.store(s.unrecorded, Relaxed);
        self.unrecorded_bytes.store(s.unrecorded_bytes, Relaxed);
    }

    /// Prometheus text; empty before the first pass (image keeping off, or not run yet).
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if self.passes.load(Relaxed) + self.failed_passes.load(Relaxed) == 0 {
            return out;
        }
        let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {}", value.load(Relaxed));
            }
        };
        metric(
            "linesight_image_keeping_passes_total",
            "counter",
            "Passes of image keeping (retention, quota, left-over files), by outcome.",
            &[
                ("{outcome=\"done\"}", &self.passes),
                ("{outcome=\"failed\"}", &self.failed_passes),
            ],
        );
        metric(
            "linesight_image_keeping_last_pass_timestamp_seconds",
            "gauge",
            "When the last pass of image keeping ended (Unix time).",
            &[("", &self.last_pass_unix_s)],
        );
        metric(
            "linesight_images_removed_total",
            "counter",
            "Stored files image keeping removed, by reason.",
            &[
                ("{reason=\"expired\"}", &self.expired),
                ("{reason=\"over_quota\"}", &self.evicted),
                ("{reason=\"temporary\"}", &self.temporary),
            ],
        );
        metric(
            "linesight_images_freed_bytes_total",
            "counter",
            "Bytes image keeping freed.",
            &[("", &self.bytes_freed)],
        );
        metric(
            "linesight_image_keeping_file_errors_total",
            "counter",
            "Files image keeping could not list or remove (tried again at the next pass).",
            &[("", &self.errors)],
        );
        metric(
            "linesight_images_kept_for_samples",
            "gauge",
            "Images due for removal kept because samples waiting for their upload name them (last pass).",
            &[("", &self.pinned)],
        );
        metric(
            "linesight_images_kept_for_samples_bytes",
            "gauge",
            "Bytes of those images (last pass).",
            &[("", &self.pinned_bytes)],
        );
        metric(
            "linesight_images_kept_for_tasks",
            "gauge",
            "Images and overlays due for removal kept because open secondary-inspection tasks show them (last pass).",
            &[("", &self.held_for_tasks)],
        );
        metric(
            "linesight_images_kept_for_tasks_bytes",
            "gauge",
            "Bytes of those images (last pass).",
            &[("", &self.held_for_tasks_bytes)],
        );
        metric(
            "linesight_images_unrecorded",
            "gauge",
            "Images on disk no record names, older than an hour (last pass); `linesight images prune --unrecorded` removes them.",
            &[("", &self.unrecorded)],
        );
        metric(
            "linesight_images_unrecorded_bytes",
            "gauge",
            "Bytes of those images (last pass).",
            &[("", &self.unrecorded_bytes)],
        );
        out
    }
}

/// Where an image with this hash lives under `dir` (two-level fan-out); none when `hash` is
/// not a SHA-256 in lower-case hexadecimal, as the store names its files. Hashes read back from the database or a request go through
/// this check: a short or tampered value must neither panic nor name a path outside `dir`.
pub fn image_path(dir: &Path, hash: &str) -> Option<PathBuf> {
    is_hash_name(hash).then(|| fanned_out(dir, hash))
}

/// [`image_path`] of a hash this module has just computed (64 hexadecimal digits).
fn fanned_out(dir: &Path, hash: &str) -> PathBuf {
    dir.join(&hash[..2]).join(hash)
}

/// The folder under a content-addressed folder where files are written before they are
/// renamed into place: one place to sweep what a crash leaves, on the same file system so that
/// the rename stays atomic.
pub const TEMPORARY_FOLDER: &str = ".tmp";

/// Removes the files in `dir`'s temporary folder last modified more than `grace` before `now`
/// (no write takes that long); returns how many, their bytes, and the entries that could not
/// be listed or removed (logged). A missing folder is empty.
pub fn sweep_temporary_files(dir: &Path, now: SystemTime, grace: Duration) -> (u64, u64, u64) {
    let folder = dir.join(TEMPORARY_FOLDER);
    let (old, mut errors) = old_files(&folder, now, grace);
    let (removed, bytes) = remove_files(&old, &mut errors);
    (removed, bytes, errors)
}

/// Removes `files`; returns how many and their bytes, counting failures (logged) in `errors`.
fn remove_files(files: &[(PathBuf, u64)], errors: &mut u64) -> (u64, u64) {
    let mut removed = (0, 0);
    for (path, len) in files {
        match std::fs::remove_file(path) {
            Ok(()) => {
                removed.0 += 1;
                removed.1 += len;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "Cannot remove a left-over file.");
                *errors += 1;
            }
        }
    }
    removed
}

/// The plain files directly in `folder` last modified more than `grace` before `now`, with
/// their sizes, and how many entries could not be read (logged). Nothing when the folder does
/// not exist.
fn old_files(folder: &Path, now: SystemTime, grace: Duration) -> (Vec<(PathBuf, u64)>, u64) {
    let mut errors = 0;
    let mut old = Vec::new();
    let entries = match std::fs::read_dir(folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (old, 0),
        Err(e) => {
            tracing::warn!(folder = %folder.display(), error = %e, "Cannot list a folder of stored files.");
            return (old, 1);
        }
    };
    for entry in entries {
        let Ok(entry) = entry else {
            errors += 1;
            continue;
        };
        let Ok(meta) = entry.metadata() else {
            continue; // removed meanwhile
        };
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if meta.is_file() && age > grace {
            old.push((entry.path(), meta.len()));
        }
    }
    (old, errors)
}

/// Whether `name`, found beside the images, is a temporary file that versions before the
/// temporary folder wrote there: `.<sha256>.*.tmp`.
fn is_temporary_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Whether `name` is a stored image's name: 64 lowercase hex digits.
pub(super) fn is_hash_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |source| StoreError::Io { what, source }
}

/// Creates `folder` and whatever of its ancestors is missing, and syncs the parent of each
/// folder it created, so that a file synced into `folder` is reachable after a power cut.
/// Nothing to do (no sync) when `folder` exists.
fn create_dir_durably(folder: &Path) -> std::io::Result<()> {
    if folder.is_dir() {
        return Ok(());
    }
    let missing: Vec<&Path> = folder
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.is_dir())
        .collect();
    std::fs::create_dir_all(folder)?;
    // Outermost first: each new folder's name is made durable in its parent.
    for created in missing.iter().rev() {
        let parent = match created.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

/// Writes `bytes` to `dir/<aa>/<sha256>` (fsynced, then renamed into place) unless a file of
/// that name holding these bytes is there already, and returns the SHA-256.
///
/// Each write goes to a temporary file of its own (`tempfile`: a unique name in the `.tmp`
/// folder beside the fan-out folders), so that two uploads of the same bytes at once never
/// write into one file. A file there already is compared with `bytes` (a read, cheaper than
/// the hash just computed): one truncated or damaged outside linesight is replaced, so that
/// the inspection about to record it never points at a file the API refuses to serve.
///
/// The fan-out folder is synced after the rename, and also when the file was there already:
/// the upload that renamed it may not have synced the folder yet (it is doing so at the same
/// moment, or it crashed in between), and this caller is about to record the file as stored.
pub(crate) fn write_content_addressed(dir: &Path, bytes: &[u8]) -> Result<String, StoreError> {
    let hash = hex::encode(Sha256::digest(bytes));
    let path = fanned_out(dir, &hash);
    let parent = path.parent().unwrap_or(dir).to_path_buf();
    let cannot = |source: std::io::Error| StoreError::Io {
        what: format!("cannot store {}", path.display()),
        source,
    };
    let complete = match holds(&path, bytes) {
        Ok(Holds::Same) => true,
        Ok(Holds::Absent) => false,
        Ok(Holds::Different) => {
            tracing::warn!(
                path = %path.display(),
                "A stored file no longer held the content its name is the SHA-256 of \
                 (damaged or changed on disk); writing it again from the same bytes."
            );
            false
        }
        // Unreadable (permissions, an I/O error): writing it again is the way to find out.
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot read a stored file; writing it again.");
            false
        }
    };
    if !complete {
        create_dir_durably(&parent).map_err(io(format!("cannot create {}", parent.display())))?;
        // Dropped on any error before `persist`, the temporary file is removed; one a crash
        // leaves is swept later ([`sweep_temporary_files`]).
        let temporary = dir.join(TEMPORARY_FOLDER);
        std::fs::create_dir_all(&temporary)
            .map_err(io(format!("cannot create {}", temporary.display())))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{hash}."))
            .suffix(".tmp")
            .tempfile_in(&temporary)
            .map_err(cannot)?;
        tmp.write_all(bytes)
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(cannot)?;
        tmp.persist(&path).map_err(|e| cannot(e.error))?;
    }
    // The folder is synced too, so that the name survives a power cut.
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(cannot)?;
    Ok(hash)
}

/// What [`holds`] found at a content-addressed path.
#[derive(Debug, PartialEq, Eq)]
enum Holds {
    Absent,
    Same,
    Different,
}

/// Whether the file at `path` holds exactly `bytes`, read in blocks and compared as it goes.
fn holds(path: &Path, bytes: &[u8]) -> std::io::Result<Holds> {
    use std::io::Read as _;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Holds::Absent),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() || meta.len() != bytes.len() as u64 {
        return Ok(Holds::Different);
    }
    let mut block = vec![0u8; (1 << 20).min(bytes.len().max(1))];
    let mut rest = bytes;
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok(if rest.is_empty() {
                Holds::Same
            } else {
                Holds::Different
            });
        }
        if n > rest.len() || block[..n] != rest[..n] {
            return Ok(Holds::Different);
        }
        rest = &rest[n..];
    }
}

/// An image file written and synced under the image folder, not yet recorded in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    /// SHA-256 of the bytes: the file's name and the reference inspection records keep.
    pub hash: String,
    pub bytes: u64,
    /// Where it was written; recording checks that it is still there.
    pub path: PathBuf,
}

/// Writes and syncs each image under `dir` (content-addressed, on a blocking thread, never on
/// the async runtime). The files are complete on disk when this returns; record them with the
/// inspection that refers to them ([`Store::record_inspection_with_images`]).
pub async fn write_images<B>(dir: &Path, images: Vec<B>) -> Result<Vec<ImageFile>, StoreError>
where
    B: AsRef<[u8]> + Send + 'static,
{
    let folder = dir.to_path_buf();
    tokio::task::spawn_blocking(move || write_image_files(&folder, &images))
        .await
        .map_err(|e| StoreError::Io {
            what: "image writing stopped".into(),
            source: std::io::Error::other(e),
        })?
}

/// [`write_images`] on the calling thread, for code already on a blocking thread.
pub fn write_image_files<B: AsRef<[u8]>>(
    dir: &Path,
    images: &[B],
) -> Result<Vec<ImageFile>, StoreError> {
    images
        .iter()
        .map(|bytes| {
            let bytes = bytes.as_ref();
            let hash = write_content_addressed(dir, bytes)?;
            Ok(ImageFile {
                path: fanned_out(dir, &hash),
                hash,
                bytes: bytes.len() as u64,
            })
        })
        .collect()
}

/// How many times [`write_and_record_images`] writes the files before giving up. Another
/// [`StoreError::ImageGone`] after a retry needs retention to delete the same image again
/// between its writing and its record; the row retention marked stays deleted (it lists live
/// rows only) unless another writer records the same bytes in between.
const IMAGE_WRITE_ATTEMPTS: usize = 3;

/// Writes `images` under `dir` ([`write_images`]) and hands the files to `record`, which records
/// them in its transaction ([`Store::record_inspection_with_images`] or the like). When image
/// retention removed one of them in between ([`StoreError::ImageGone`]), the files are written
/// again and `record` is called again.
pub async fn write_and_record_images<B, T, F, Fut>(
    dir: &Path,
    images: Vec<B>,
    mut record: F,
) -> Result<T, StoreError>
where
    B: AsRef<[u8]> + Send + 'static,
    F: FnMut(Vec<ImageFile>) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut images = images;
    let mut attempt = 1;
    loop {
        let files = if images.is_empty() {
            Vec::new()
        } else {
            // The blocking thread hands the bytes back for a retry: no copy.
            let folder = dir.to_path_buf();
            let (written, back) =
                tokio::task::spawn_blocking(move || (write_image_files(&folder, &images), images))
                    .await
                    .map_err(|e| StoreError::Io {
                        what: "image writing stopped".into(),
                        source: std::io::Error::other(e),
                    })?;
            images = back;
            written?
        };
        match record(files).await {
            Err(StoreError::ImageGone { hash }) if attempt < IMAGE_WRITE_ATTEMPTS => {
                tracing::info!(
                    image = %hash,
                    attempt,
                    "Image retention removed an identical image as it was being recorded; writing it again."
                );
                attempt += 1;
            }
            other => return other,
        }
    }
}

impl Store {
    /// Stores image bytes under `dir` and returns their SHA-256 (the reference kept in
    /// inspection records). Storing the same bytes again is a no-op.
    pub async fn put_image(
        &self,
        dir: &Path,
        bytes: &[u8],
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let mut hashes = self.put_images(dir, vec![bytes.to_vec()], now_ms).await?;
        Ok(hashes.remove(0))
    }

    /// Stores several images (an upload and its overlay) with one database transaction; the
    /// files are written and synced on a blocking thread, never on the async runtime.
    pub async fn put_images(
        &self,
        dir: &Path,
        images: Vec<Vec<u8>>,
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        write_and_record_images(dir, images, |written| async move {
            let mut tx = self.begin().await?;
            Self::record_images(&mut tx, &written, now_ms).await?;
            tx.commit().await.map_err(db("record an image"))?;
            Ok(written.into_iter().map(|f| f.hash).collect())
        })
        .await
    }

    /// Records image files written by [`write_images`] in the transaction `tx` (the one that
    /// records what refers to them, so that both are kept or neither). An image recorded again
    /// is live again and dated by its newest record. Fails with [`StoreError::ImageGone`] when
    /// a file is no longer there: retention deleted it after it was written (see the module
    /// notes); the caller writes it again.
    pub(crate) async fn record_images(
        tx: &mut Transaction<'static, Any>,
        files: &[ImageFile],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for file in files {
            sqlx::query(
                "INSERT INTO images (hash, bytes, stored_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (hash) DO UPDATE SET deleted_at_ms = NULL, stored_at_ms = \
                 CASE WHEN excluded.stored_at_ms > images.stored_at_ms \
                 THEN excluded.stored_at_ms ELSE images.stored_at_ms END",
            )
            .bind(&file.hash)
            .bind(file.bytes as i64)
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .map_err(db("record an image"))?;
            // Under the write lock: retention cannot delete it between this check and the
            // commit.
            if !file.path.is_file() {
                return Err(StoreError::ImageGone {
                    hash: file.hash.clone(),
                });
            }
        }
        Ok(())
    }

    /// Whether an image is recorded: `None` when no record names this hash, `Some(None)` when it
    /// is live, `Some(Some(ms))` when image retention deleted it at `ms`.
    pub async fn image_deleted_at(&self, hash: &str) -> Result<Option<Option<i64>>, StoreError> {
        let row = sqlx::query("SELECT deleted_at_ms FROM images WHERE hash = $1")
            .bind(hash)
            .fetch_optional(self.reader())
            .await
            .map_err(db("look up an image"))?;
        row.map(|r| r.try_get::<Option<i64>, _>(0))
            .transpose()
            .map_err(db("look up an image"))
    }

    /// [`Store::image_deleted_at`] read once a write in progress on the image's record has
    /// committed: an image whose file is missing while its record still says it is stored is,
    /// most often, one that retention is deleting right now (the file goes before the record's
    /// commit). On PostgreSQL it waits for that row only (`FOR SHARE`); on SQLite it takes the
    /// write lock for a moment. For that rare case only.
    pub async fn image_deleted_at_settled(
        &self,
        hash: &str,
    ) -> Result<Option<Option<i64>>, StoreError> {
        let (mut tx, lock) = self.begin_settled().await?;
        let row = sqlx::query(&format!(
            "SELECT deleted_at_ms FROM images WHERE hash = $1{lock}"
        ))
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db("look up an image"))?;
        tx.rollback().await.map_err(db("look up an image"))?;
        row.map(|r| r.try_get::<Option<i64>, _>(0))
            .transpose()
            .map_err(db("look up an image"))
    }

    /// A transaction whose reads of image records see writes in progress committed: on
    /// PostgreSQL with the suffix that waits for the rows read (`FOR SHARE`), on SQLite under
    /// the write lock (no suffix). Rolled back by the caller: it only reads.
    pub(super) async fn begin_settled(
        &self,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Any>, &'static str), StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => (self.begin().await?, ""),
            Backend::Postgres => (
                self.writer
                    .begin()
                    .await
                    .map_err(db("begin a transaction"))?,
                " FOR SHARE",
            ),
        })
    }

    /// Deletes images older than `retention_days` and then the oldest ones until the rest fit
    /// in `quota_bytes`.
    pub async fn enforce_image_retention(
        &self,
        dir: &Path,
        retention_days: u32,
        quota_bytes: u64,
        now_ms: i64,
    ) -> Result<RetentionReport, StoreError> {
        let cutoff = now_ms - i64::from(retention_days) * 86_400_000;
        // Listed on a read connection (the writer stays free for records); each image is
        // checked again in its deleting transaction.
        let rows = sqlx::query(
            "SELECT hash, bytes, stored_at_ms FROM images WHERE deleted_at_ms IS NULL ORDER BY stored_at_ms, hash",
        )
        .fetch_all(self.reader())
        .await
        .map_err(db("list images"))?;
        let mut live: Vec<(String, u64, i64)> = Vec::with_capacity(rows.len());
        for r in &rows {
            live.push((
                r.try_get(0).map_err(db("decode an image"))?,
                r.try_get::<i64, _>(1).map_err(db("decode an image"))? as u64,
                r.try_get(2).map_err(db("decode an image"))?,
            ));
        }
        let mut total: u64 = live.iter().map(|l| l.1).sum();
        let mut report = RetentionReport::default();
        let not_pinned = format!(
            "NOT EXISTS ({}) AND NOT EXISTS ({})",
            pending_samples_of("$2"),
            open_tasks_of("$2")
        );
        for (hash, bytes, at) in &live {
            let expired = *at < cutoff;
            if !(expired || total > quota_bytes) {
                continue;
            }
            // The row is marked and its file deleted in one write transaction, and only if it
            // is still the row listed above (an image recorded again since is dated by that
            // record and kept), no sample waiting for its upload names it and no open task
            // shows it. A writer checks
            // for its file under the same lock.
            let mut tx = self.begin().await?;
            let marked = sqlx::query(&format!(
                "UPDATE images SET deleted_at_ms = $1 \
                 WHERE hash = $2 AND deleted_at_ms IS NULL AND stored_at_ms = $3 AND {not_pinned}"
            ))
            .bind(now_ms)
            .bind(hash)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(db("mark an image deleted"))?
            .rows_affected();
            if marked == 0 {
                let pinned = sqlx::query(&pending_samples_of("$1"))
                    .bind(hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("look up pending samples"))?
                    .is_some();
                if pinned {
                    report.pinned += 1;
                    report.pinned_bytes += bytes;
                } else if sqlx::query(&open_tasks_of("$1"))
                    .bind(hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("look up open tasks"))?
                    .is_some()
                {
                    report.held_for_tasks += 1;
                    report.held_for_tasks_bytes += bytes;
                }
                continue;
            }
            // A record whose hash is not a SHA-256 (a damaged database) names no file the
            // store could have written: it is a missing file, marked like one, so that its
            // claimed bytes stop counting against the quota.
            let removed = match image_path(dir, hash) {
                Some(path) => std::fs::remove_file(path),
                None => {
                    tracing::warn!(image = %hash, "An image record's hash is not a SHA-256; it names no file.");
                    Err(std::io::ErrorKind::NotFound.into())
                }
            };
            let freed = match removed {
                Ok(()) => *bytes,
                // Its record is marked now; no file, so nothing freed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    report.missing += 1;
                    0
                }
                Err(e) => {
                    // The row stays live (rolled back with `tx`); the next pass tries again.
                    tracing::warn!(image = %hash, error = %e, "Cannot delete an image; keeping its record live.");
                    report.errors += 1;
                    continue;
                }
            };
            // Should the commit fail, the row stays live without its file: the next pass marks
            // it again, and a writer recording the same bytes finds the file missing and
            // writes it again.
            tx.commit().await.map_err(db("mark an image deleted"))?;
            if expired {
                report.expired += 1;
            } else {
                report.evicted += 1;
            }
            total -= bytes;
            report.bytes_freed += freed;
        }
        Ok(report)
    }

    /// One pass of image keeping on the image folder `dir`: retention and the quota
    /// ([`Store::enforce_image_retention`]), then left-over files older than [`SWEEP_GRACE`]
    /// ([`Store::sweep_image_files`]; unrecorded images removed only with `remove_unrecorded`).
    /// `linesight images prune` runs one; the services run one every
    /// `quality.image_prune_interval_minutes`.
    pub async fn prune_images(
        &self,
        dir: &Path,
        retention_days: u32,
        quota_bytes: u64,
        now: SystemTime,
        remove_unrecorded: bool,
    ) -> Result<PruneReport, StoreError> {
        let now_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let retention = self
            .enforce_image_retention(dir, retention_days, quota_bytes, now_ms)
            .await?;
        let sweep = self
            .sweep_image_files(dir, now, SWEEP_GRACE, remove_unrecorded)
            .await?;
        Ok(PruneReport { retention, sweep })
    }

    /// Sweeps the image folder `dir`: removes the temporary files of writes last modified more
    /// than `grace` before `now`, and counts the images as old that no live row names. With
    /// `remove_unrecorded` it removes those too, each checked again and deleted under the write
    /// lock (see the module notes), but refuses when the store holds no image record at all (a
    /// new or wrong database beside a full folder). Files that cannot be listed or removed are
    /// logged and counted; the rest of the sweep goes on.
    pub async fn sweep_image_files(
        &self,
        dir: &Path,
        now: SystemTime,
        grace: Duration,
        remove_unrecorded: bool,
    ) -> Result<SweepReport, StoreError> {
        let folder = dir.to_path_buf();
        let (mut report, candidates) = tokio::task::spawn_blocking(move || {
            let (temporary, bytes, mut errors) = sweep_temporary_files(&folder, now, grace);
            let mut report = SweepReport {
                temporary,
                bytes_freed: bytes,
                ..SweepReport::default()
            };
            let mut candidates = Vec::new();
            let mut left_temporary = Vec::new();
            let fan_out = match std::fs::read_dir(&folder) {
                Ok(entries) => entries.flatten().collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => {
                    tracing::warn!(folder = %folder.display(), error = %e, "Cannot list the image folder.");
                    errors += 1;
                    Vec::new()
                }
            };
            for entry in fan_out {
                let is_fan_out = entry.file_name().len() == 2
                    && entry.file_type().is_ok_and(|t| t.is_dir());
                if !is_fan_out {
                    continue;
                }
                let (old, failed) = old_files(&entry.path(), now, grace);
                errors += failed;
                for (path, len) in old {
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                    if is_hash_name(name) {
                        candidates.push((name.to_owned(), path, len));
                    } else if is_temporary_name(name) {
                        left_temporary.push((path, len));
                    }
                }
            }
            let (removed, bytes) = remove_files(&left_temporary, &mut errors);
            report.temporary += removed;
            report.bytes_freed += bytes;
            report.errors = errors;
            (report, candidates)
        })
        .await
        .map_err(|e| StoreError::Io {
            what: "image folder sweep stopped".into(),
            source: std::io::Error::other(e),
        })?;
        if candidates.is_empty() {
            return Ok(report);
        }
        let live: std::collections::HashSet<String> =
            sqlx::query("SELECT hash FROM images WHERE deleted_at_ms IS NULL")
                .fetch_all(self.reader())
                .await
                .map_err(db("list images"))?
                .iter()
                .map(|r| r.try_get::<String, _>(0))
                .collect::<Result<_, _>>()
                .map_err(db("decode an image"))?;
        let unrecorded: Vec<_> = candidates
            .into_iter()
            .filter(|(hash, _, _)| !live.contains(hash))
            .collect();
        report.unrecorded = unrecorded.len() as u64;
        report.unrecorded_bytes = unrecorded.iter().map(|u| u.2).sum();
        if !remove_unrecorded || unrecorded.is_empty() {
            return Ok(report);
        }
        let any_record = sqlx::query("SELECT 1 FROM images LIMIT 1")
            .fetch_optional(self.reader())
            .await
            .map_err(db("look up an image"))?
            .is_some();
        if !any_record {
            return Err(StoreError::Invalid(format!(
                "the quality store holds no image record but {} has {} images: is store.url the \
                 database of this image folder? Nothing was removed",
                dir.display(),
                report.unrecorded
            )));
        }
        for (hash, path, bytes) in unrecorded {
            // Checked again under the write lock: a writer recording these bytes now either
            // committed before (the row is live: kept) or checks for the file after (and
            // writes it again).
            let mut tx = self.begin().await?;
            let recorded =
                sqlx::query("SELECT 1 FROM images WHERE hash = $1 AND deleted_at_ms IS NULL")
                    .bind(&hash)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db("look up an image"))?
                    .is_some();
            if !recorded {
                let (removed, freed) = remove_files(&[(path, bytes)], &mut report.errors);
                report.unrecorded_removed += removed;
                report.bytes_freed += freed;
            }
            tx.rollback().await.map_err(db("release the write lock"))?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_bytes_written_at_once_from_many_threads_are_stored_whole() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let hashes: Vec<String> = std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let mut hash = String::new();
                        for _ in 0..10 {
                            hash = write_content_addressed(dir.path(), &bytes).unwrap();
                        }
                        hash
                    })
                })
                .collect();
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert!(hashes.windows(2).all(|w| w[0] == w[1]));
        let path = image_path(dir.path(), &hashes[0]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let temporary = std::fs::read_dir(dir.path().join(TEMPORARY_FOLDER))
            .unwrap()
            .count();
        assert_eq!(temporary, 0, "no temporary file left");
    }

    /// A lookup made while retention's transaction has removed the file but not yet committed
    /// its record: the plain read still sees the image as stored, the settled one waits for the
    /// commit and sees when it was removed.
    #[tokio::test]
    async fn the_settled_lookup_sees_a_removal_that_is_committing() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite_in(dir.path()).await;
        let hash = "ab".repeat(32);
        sqlx::query("INSERT INTO images (hash, bytes, stored_at_ms) VALUES ($1, 10, 1)")
            .bind(&hash)
            .execute(store.raw_pool())
            .await
            .unwrap();
        let mut tx = store.begin().await.unwrap();
        sqlx::query("UPDATE images SET deleted_at_ms = 99 WHERE hash = $1")
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .unwrap();
        assert_eq!(store.image_deleted_at(&hash).await.unwrap(), Some(None));
        let (started, asked) = tokio::sync::oneshot::channel();
        let settled = tokio::spawn({
            let (store, hash) = (store.clone(), hash.clone());
            async move {
                let _ = started.send(());
                store.image_deleted_at_settled(&hash).await.unwrap()
            }
        });
        asked.await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !settled.is_finished(),
            "the settled lookup waits for the writer"
        );
        tx.commit().await.unwrap();
        assert_eq!(settled.await.unwrap(), Some(Some(99)));
    }

    /// A record whose hash is not a SHA-256 (a damaged database) names no file: retention
    /// marks it like a missing file instead of panicking, and its claimed bytes stop counting
    /// against the quota (which would otherwise evict good images on every pass).
    #[tokio::test]
    async fn a_record_whose_hash_is_not_a_sha256_is_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite_in(dir.path()).await;
        sqlx::query("INSERT INTO images (hash, bytes, stored_at_ms) VALUES ('../x', 1000000, 1)")
            .execute(store.raw_pool())
            .await
            .unwrap();
        let report = store
            .enforce_image_retention(dir.path(), 1, 10, 10 * 86_400_000)
            .await
            .unwrap();
        assert_eq!(
            (report.expired, report.missing, report.errors),
            (1, 1, 0),
            "{report:?}"
        );
        assert_eq!(
            store.image_deleted_at("../x").await.unwrap(),
            Some(Some(10 * 86_400_000))
        );
    }

    #[test]
    fn temporary_files_are_swept_once_older_than_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join(TEMPORARY_FOLDER);
        std::fs::create_dir_all(&folder).unwrap();
        let now = SystemTime::now();
        for (name, age_s) in [("old.tmp", 7200), ("young.tmp", 60)] {
            let f = std::fs::File::create(folder.join(name)).unwrap();
            f.set_len(10).unwrap();
            f.set_modified(now - Duration::from_secs(age_s)).unwrap();
        }
        std::fs::create_dir(folder.join("sub")).unwrap();
        let grace = Duration::from_secs(3600);
        assert_eq!(sweep_temporary_files(dir.path(), now, grace), (1, 10, 0));
        assert!(!folder.join("old.tmp").exists());
        assert!(folder.join("young.tmp").exists());
        assert!(folder.join("sub").is_dir(), "folders are not swept");
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(sweep_temporary_files(empty.path(), now, grace), (0, 0, 0));
    }

    #[test]
    fn keeping_metrics_count_passes_and_show_the_last_state() {
        let m = ImageKeepingMetrics::default();
        assert_eq!(m.render(), "", "nothing before the first pass");
        let mut report = PruneReport::default();
        report.retention.expired = 3;
        report.retention.pinned = 2;
        report.retention.held_for_tasks = 4;
        report.sweep.unrecorded = 5;
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        m.observe(Some(&report), at);
        report.sweep.unrecorded = 1;
        m.observe(Some(&report), at);
        m.observe(None, at);
        let text = m.render();
        for line in [
            "linesight_image_keeping_passes_total{outcome=\"done\"} 2",
            "linesight_image_keeping_passes_total{outcome=\"failed\"} 1",
            "linesight_image_keeping_last_pass_timestamp_seconds 1700000000",
            "linesight_images_removed_total{reason=\"expired\"} 6",
            "linesight_images_kept_for_samples 2",
            "linesight_images_kept_for_tasks 4",
            "linesight_images_unrecorded 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn only_sha256_names_are_taken_for_images() {
        assert!(is_hash_name(&"ab".repeat(32)));
        assert!(!is_hash_name(&"AB".repeat(32)));
        assert!(!is_hash_name(&"ab".repeat(31)));
        assert!(!is_hash_name(&format!(".{}", "ab".repeat(32))));
        assert!(is_temporary_name(&format!(".{}.x1Yz.tmp", "ab".repeat(32))));
        assert!(!is_temporary_name(&"ab".repeat(32)));
    }

    #[test]
    fn only_a_sha256_becomes_a_path() {
        let dir = Path::new("/images");
        let hash = "0f".repeat(32);
        assert_eq!(
            image_path(dir, &hash),
            Some(dir.join("0f").join(&hash)),
            "two-level fan-out"
        );
        // Values read back from a damaged or tampered database: no panic, no path.
        for bad in [
            "",
            "a",
            "é",
            "../../etc/passwd",
            &"0F".repeat(32),
            &"0f".repeat(33),
        ] {
            assert_eq!(image_path(dir, bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_file_of_the_wrong_size_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![42u8; 4096];
        let hash = write_content_addressed(dir.path(), &bytes).unwrap();
        let path = image_path(dir.path(), &hash).unwrap();
        std::fs::write(&path, &bytes[..100]).unwrap();
        assert_eq!(write_content_addressed(dir.path(), &bytes).unwrap(), hash);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn a_damaged_file_of_the_right_size_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        // Larger than one read block, so that the comparison crosses blocks.
        let bytes: Vec<u8> = (0..(3 << 20) + 17).map(|i: u32| (i % 251) as u8).collect();
        let hash = write_content_addressed(dir.path(), &bytes).unwrap();
        let path = image_path(dir.path(), &hash).unwrap();
        assert_eq!(holds(&path, &bytes).unwrap(), Holds::Same);
        let mut damaged = bytes.clone();
        *damaged.last_mut().unwrap() ^= 0x10;
        std::fs::write(&path, &damaged).unwrap();
        assert_eq!(holds(&path, &bytes).unwrap(), Holds::Different);
        assert_eq!(write_content_addressed(dir.path(), &bytes).unwrap(), hash);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        // A file left as it is when it holds the bytes: same inode, not renamed over.
        use std::os::unix::fs::MetadataExt as _;
        let inode = std::fs::metadata(&path).unwrap().ino();
        write_content_addressed(dir.path(), &bytes).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), inode);
        // An empty file is stored and found again.
        let empty = write_content_addressed(dir.path(), b"").unwrap();
        assert_eq!(
            holds(&image_path(dir.path(), &empty).unwrap(), b"").unwrap(),
            Holds::Same
        );
        assert_eq!(
            holds(&dir.path().join("nothing"), b"x").unwrap(),
            Holds::Absent
        );
    }
}
