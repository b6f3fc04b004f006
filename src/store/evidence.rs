//! The stored evidence against its SHA-256: images, overlays and NCR attachments are kept
//! under the name of their content's SHA-256 (`<aa>/<sha256>`), and the records name them by
//! it. A file altered or damaged on disk (a disk's bit rot, a picture swapped by hand) would
//! still be served under its old name as the evidence an inspector decides on; these checks
//! read every byte again: [`Store::verify_files`] for the whole folders (`linesight images
//! verify`), [`read_verified`] for each file the API serves.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};
use sqlx::Row as _;

use super::images::{image_path, is_hash_name};
use super::{Store, StoreError, db};

/// Problems listed by name in a [`FileCheck`]; the rest are counted.
const LISTED: usize = 20;

/// What checking one folder of content-addressed files found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FileCheck {
    pub folder: PathBuf,
    /// Files read and hashed (named by a SHA-256; temporary files of writes in progress are
    /// not).
    pub files: u64,
    pub bytes: u64,
    /// Files whose content does not hash to their name.
    pub damaged: u64,
    /// Files a record names (an image not removed by retention, an attachment) that are not
    /// there.
    pub missing: u64,
    /// Files that could not be read.
    pub unreadable: u64,
    /// The first 20 problems, each naming its file.
    pub problems: Vec<String>,
}

impl FileCheck {
    fn problem(&mut self, text: String) {
        if self.problems.len() < LISTED {
            self.problems.push(text);
        }
    }

    /// Whether every file matched and none was missing or unreadable.
    pub fn is_ok(&self) -> bool {
        self.damaged == 0 && self.missing == 0 && self.unreadable == 0
    }
}

/// `Ok` when `bytes` hash to `hash`; else what they hash to.
pub fn check_content(bytes: &[u8], hash: &str) -> Result<(), String> {
    let found = hex::encode(Sha256::digest(bytes));
    if found == hash { Ok(()) } else { Err(found) }
}

/// A blocking task that failed (it panicked): the machine's fault, never the caller's.
fn join_failed(what: &str) -> impl FnOnce(tokio::task::JoinError) -> StoreError {
    let what = what.to_owned();
    move |e| StoreError::Io {
        what,
        source: std::io::Error::other(e),
    }
}

/// Whether `path` is gone: an error reading it may say so in other words (a file removed by
/// another replica on a network file system reads as a stale handle).
fn is_gone(path: &Path, e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
        || std::fs::symlink_metadata(path).is_err_and(|m| m.kind() == std::io::ErrorKind::NotFound)
}

/// The SHA-256 of a file's content and its length, read in blocks.
fn file_sha256(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut block = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = file.read(&mut block)?;
        if n == 0 {
            return Ok((hex::encode(hasher.finalize()), len));
        }
        hasher.update(&block[..n]);
        len += n as u64;
    }
}

/// Reads and hashes every file of `folder` named by a SHA-256 (in its two-character fan-out
/// folders). A folder that does not exist holds nothing.
fn hash_folder(folder: &Path) -> FileCheck {
    let mut check = FileCheck {
        folder: folder.to_path_buf(),
        ..FileCheck::default()
    };
    let mut fan_out: Vec<_> = match std::fs::read_dir(folder) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_name().len() == 2 && e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return check,
        Err(e) => {
            check.unreadable += 1;
            check.problem(format!("{}: cannot be listed: {e}", folder.display()));
            return check;
        }
    };
    fan_out.sort();
    for sub in fan_out {
        let mut names: Vec<_> = match std::fs::read_dir(&sub) {
            Ok(entries) => entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| is_hash_name(n))
                .collect(),
            Err(e) => {
                check.unreadable += 1;
                check.problem(format!("{}: cannot be listed: {e}", sub.display()));
                continue;
            }
        };
        names.sort();
        for name in names {
            let path = sub.join(&name);
            match file_sha256(&path) {
                Ok((found, len)) => {
                    check.files += 1;
                    check.bytes += len;
                    if found != name {
                        check.damaged += 1;
                        check.problem(format!(
                            "{name}: its content hashes to {found}: altered or damaged on disk"
                        ));
                    }
                }
                // Removed meanwhile (image retention): not a file any more.
                Err(e) if is_gone(&path, &e) => {}
                Err(e) => {
                    check.unreadable += 1;
                    check.problem(format!("{name}: cannot be read: {e}"));
                }
            }
        }
    }
    check
}

/// The bytes of the content-addressed file `hash` in `folder`, refused unless they hash to
/// it: a file altered or damaged on disk is never served as the evidence it replaced.
/// `Ok(None)` when there is no such file.
pub async fn read_verified(folder: &Path, hash: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(path) = image_path(folder, hash) else {
        return Err(StoreError::Invalid(format!(
            "{hash:?}: not a SHA-256 (64 hexadecimal digits)"
        )));
    };
    let hash = hash.to_owned();
    // Never closed: the semaphore is a static. Moved into the read, so that the turn lasts as
    // long as the read itself, also when the request is dropped meanwhile.
    let turn = READS.acquire().await.map_err(|e| StoreError::Io {
        what: "wait to read a stored file".into(),
        source: std::io::Error::other(e),
    })?;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StoreError::Io {
                    what: format!("read {}", path.display()),
                    source,
                });
            }
        };
        check_content(&bytes, &hash).map_err(|found| StoreError::Damaged { path, hash: found })?;
        Ok(Some(bytes))
    })
    .await
    .map_err(join_failed("read a stored file"))?
}

/// Stored files read and checked at once by [`read_verified`]: many downloads at once take
/// their turn instead of each taking a thread of the blocking pool that password checks and
/// uploads also need, and reading and hashing all at once. A turn is one read and hash (about
/// 2.5 ms for a 4 MB file from the page cache); the bytes read are then held until the answer
/// is sent, as many as there are downloads under way (`api.max_connections` bounds those).
const READS_AT_ONCE: usize = 4;
static READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(READS_AT_ONCE);

/// Of `hashes`, those whose file is not in `folder` (on a blocking thread).
async fn absent(folder: &Path, hashes: Vec<String>) -> Result<Vec<String>, StoreError> {
    let folder = folder.to_path_buf();
    tokio::task::spawn_blocking(move || {
        hashes
            .into_iter()
            .filter(|h| !image_path(&folder, h).is_some_and(|p| p.exists()))
            .collect()
    })
    .await
    .map_err(join_failed("look for stored files"))
}

impl Store {
    /// Reads every stored image and overlay (`image_dir`) and every NCR attachment
    /// (`attachment_dir`) and checks it against its SHA-256, then that every image a record
    /// still names (not removed by image retention) and every attachment has its file. Reads
    /// each file once, on a blocking thread; may run beside a working service (an image that
    /// retention removes meanwhile is not missing).
    pub async fn verify_files(
        &self,
        image_dir: &Path,
        attachment_dir: &Path,
    ) -> Result<(FileCheck, FileCheck), StoreError> {
        let (images, attachments) = (image_dir.to_path_buf(), attachment_dir.to_path_buf());
        let (mut images, mut attachments) =
            tokio::task::spawn_blocking(move || (hash_folder(&images), hash_folder(&attachments)))
                .await
                .map_err(join_failed("check the stored files"))?;
        // A folder that is not there is most likely not the service's (another configuration):
        // said once, not as every record's missing file.
        if tokio::fs::try_exists(image_dir).await.unwrap_or(false) {
            self.missing_images(image_dir, &mut images).await?;
        } else {
            let live: i64 = sqlx::query("SELECT COUNT(*) FROM images WHERE deleted_at_ms IS NULL")
                .fetch_one(self.reader())
                .await
                .and_then(|r| r.try_get(0))
                .map_err(db("count the image records"))?;
            if live > 0 {
                images.missing += live as u64;
                images.problem(format!(
                    "{}: no such folder, yet {live} images are recorded as stored in it: is it \
                     the service's quality.image_dir (the same --config and LINESIGHT__ settings)?",
                    image_dir.display()
                ));
            }
        }
        let mut after = i64::MIN;
        loop {
            let rows = sqlx::query(
                "SELECT id, ncr_id, name, sha256 FROM ncr_attachments WHERE id > $1 ORDER BY id LIMIT 1000",
            )
            .bind(after)
            .fetch_all(self.reader())
            .await
            .map_err(db("read the NCR attachments"))?;
            let mut page = Vec::new();
            for row in &rows {
                let d = || db("read an NCR attachment");
                after = row.try_get("id").map_err(d())?;
                let ncr: i64 = row.try_get("ncr_id").map_err(d())?;
                let name: String = row.try_get("name").map_err(d())?;
                let hash: String = row.try_get("sha256").map_err(d())?;
                page.push((after, ncr, name, hash));
            }
            let gone = absent(
                attachment_dir,
                page.iter().map(|(.., hash)| hash.clone()).collect(),
            )
            .await?;
            // Attachments are never removed by linesight: a file gone is gone for good.
            for (id, ncr, name, hash) in page.iter().filter(|p| gone.contains(&p.3)) {
                attachments.missing += 1;
                attachments.problem(format!(
                    "{hash}: attachment {id} ({name:?}) of NCR {ncr} has no file: removed outside linesight; restore it from a backup"
                ));
            }
            if rows.len() < 1000 {
                break;
            }
        }
        Ok((images, attachments))
    }

    /// The images recorded as stored (not removed by retention) whose file is not in
    /// `image_dir`, a page at a time. A file missing while retention removes it, or written
    /// again since, is not: those of a page are looked up again at once, after writers in
    /// progress have committed, then looked for again.
    async fn missing_images(
        &self,
        image_dir: &Path,
        check: &mut FileCheck,
    ) -> Result<(), StoreError> {
        let mut after = String::new();
        loop {
            let rows = sqlx::query(
                "SELECT hash, stored_at_ms FROM images WHERE deleted_at_ms IS NULL AND hash > $1 \
                 ORDER BY hash LIMIT 1000",
            )
            .bind(&after)
            .fetch_all(self.reader())
            .await
            .map_err(db("read the image records"))?;
            let mut page = HashMap::new();
            for row in &rows {
                let hash: String = row.try_get("hash").map_err(db("read an image record"))?;
                let stored: i64 = row
                    .try_get("stored_at_ms")
                    .map_err(db("read an image record"))?;
                after = hash.clone();
                page.insert(hash, stored);
            }
            let gone = absent(image_dir, page.keys().cloned().collect()).await?;
            if !gone.is_empty() {
                let live = self.live_images_settled(&gone).await?;
                let mut still = absent(image_dir, live).await?;
                still.sort();
                for hash in still {
                    check.missing += 1;
                    check.problem(format!(
                        "{hash}: recorded as stored ({}) but has no file: removed outside linesight; restore it from a backup",
                        crate::quality::format_ms(page[&hash])
                    ));
                }
            }
            if rows.len() < 1000 {
                return Ok(());
            }
        }
    }

    /// Of `hashes`, those whose image record is live once writers in progress have committed
    /// (see [`Store::image_deleted_at_settled`]): one transaction for them all.
    async fn live_images_settled(&self, hashes: &[String]) -> Result<Vec<String>, StoreError> {
        let (mut tx, lock) = self.begin_settled().await?;
        let marks: Vec<String> = (1..=hashes.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT hash FROM images WHERE deleted_at_ms IS NULL AND hash IN ({}){lock}",
            marks.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for h in hashes {
            query = query.bind(h);
        }
        let rows = query
            .fetch_all(&mut *tx)
            .await
            .map_err(db("look up image records"))?;
        tx.rollback().await.map_err(db("look up image records"))?;
        rows.iter()
            .map(|r| {
                r.try_get::<String, _>(0)
                    .map_err(db("look up image records"))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_against_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"a picture".as_slice();
        let hash = hex::encode(Sha256::digest(good));
        let path = image_path(dir.path(), &hash).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, good).unwrap();
        // A file that is not content-addressed is not evidence: left alone.
        std::fs::write(path.parent().unwrap().join("notes.txt"), b"x").unwrap();
        let check = hash_folder(dir.path());
        assert_eq!((check.files, check.bytes, check.is_ok()), (1, 9, true));
        std::fs::write(&path, b"another picture").unwrap();
        let check = hash_folder(dir.path());
        assert_eq!((check.files, check.damaged), (1, 1));
        assert!(
            check.problems[0].starts_with(&format!("{hash}: its content hashes to ")),
            "{check:?}"
        );
        assert_eq!(
            hash_folder(&dir.path().join("none")),
            FileCheck {
                folder: dir.path().join("none"),
                ..FileCheck::default()
            }
        );
    }

    #[tokio::test]
    async fn a_file_is_served_only_with_the_content_its_name_promises() {
        let dir = tempfile::tempdir().unwrap();
        let hash = hex::encode(Sha256::digest(b"evidence"));
        assert!(read_verified(dir.path(), &hash).await.unwrap().is_none());
        let path = image_path(dir.path(), &hash).unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"evidence").unwrap();
        assert_eq!(
            read_verified(dir.path(), &hash).await.unwrap().as_deref(),
            Some(b"evidence".as_slice())
        );
        std::fs::write(&path, b"swapped").unwrap();
        let err = read_verified(dir.path(), &hash).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Damaged { hash: found, .. } if *found == hex::encode(Sha256::digest(b"swapped"))),
            "{err}"
        );
        assert!(read_verified(dir.path(), "nope").await.is_err());
    }
}
