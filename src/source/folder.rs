//! Folder replay: the images of a folder, in path order, once or in a loop.
//!
//! The listing is taken when the source opens (and again on reopen, which goes on after the file
//! replayed last), so files added later are seen after a reopen. A file that does not decode is
//! a bad frame: the pipeline answers it with an error and the next grab moves on to the next
//! file. A file that cannot be read (gone) fails the grab: the folder is listed again.
//!
//! With a preload budget (`preload_mib`), the images are decoded once when the source opens and
//! replayed from memory: each grab then costs a copy of the pixels, as a camera's raw frame
//! does, instead of a file read and a PNG or JPEG decode. That is what a replay meant to load a
//! line like its cameras wants. Images beyond the budget are an error at open, not a silent
//! fallback to the disk.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use image::RgbImage;

use super::{Captured, FrameSource, SourceError};
use crate::preprocess::{DecodeError, DecodeLimits, decode};

const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];

/// Replays image files.
#[derive(Debug)]
pub struct FolderSource {
    root: PathBuf,
    repeat: bool,
    limits: DecodeLimits,
    files: Vec<PathBuf>,
    /// Largest decoded size held in memory, in bytes; `None`: every grab reads its file.
    preload_limit: Option<u64>,
    /// With a preload budget, each file's decoded image, `None` for a file that failed to read
    /// or decode (its grab reads it again and reports why); empty otherwise.
    preloaded: Vec<Option<Preloaded>>,
    next: usize,
}

/// One image held by a preloading folder source.
#[derive(Debug)]
struct Preloaded {
    path: PathBuf,
    /// The file's modification time when it was decoded.
    modified: Option<SystemTime>,
    image: RgbImage,
}

fn list(root: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = match entry {
            Ok(entry) => entry,
            // The folder itself cannot be read: the source fails (and is reopened later).
            Err(e) if e.depth() == 0 => {
                return Err(SourceError::ListFolder {
                    path: root.to_path_buf(),
                    source: e.into(),
                });
            }
            // One entry in it cannot (a dangling link, an unreadable subfolder such as a
            // disk's lost+found): the rest is replayed.
            Err(e) => {
                tracing::warn!(folder = %root.display(), error = %e, "Folder entry skipped.");
                continue;
            }
        };
        let is_image = entry
            .path()
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if entry.file_type().is_file() && is_image {
            files.push(entry.into_path());
        }
    }
    if files.is_empty() {
        return Err(SourceError::EmptyFolder {
            path: root.to_path_buf(),
        });
    }
    Ok(files)
}

impl FolderSource {
    /// Lists `root`; fails when it cannot be read or holds no images.
    pub fn open(
        root: PathBuf,
        repeat: bool,
        limits: DecodeLimits,
    ) -> Result<FolderSource, SourceError> {
        let files = list(&root)?;
        Ok(FolderSource {
            root,
            repeat,
            limits,
            files,
            preload_limit: None,
            preloaded: Vec::new(),
            next: 0,
        })
    }

    /// Decodes every image now and replays them from memory, as long as their pixels take at
    /// most `limit_mib` MiB; fails naming the budget when they take more.
    pub fn preload(mut self, limit_mib: u32) -> Result<FolderSource, SourceError> {
        self.preload_limit = Some(u64::from(limit_mib) << 20);
        self.load()?;
        Ok(self)
    }

    /// The files replayed, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Fills `preloaded` from `files` within the budget (nothing without one). Images already
    /// held whose file has not changed since (same modification time) are kept, so that the
    /// reopen after one bad file does not decode the whole folder again.
    fn load(&mut self) -> Result<(), SourceError> {
        let Some(limit) = self.preload_limit else {
            return Ok(());
        };
        let started = Instant::now();
        let mut held: std::collections::HashMap<PathBuf, (Option<SystemTime>, RgbImage)> =
            std::mem::take(&mut self.preloaded)
                .into_iter()
                .flatten()
                .map(|p| (p.path, (p.modified, p.image)))
                .collect();
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let (mut bytes, mut decoded, mut failed) = (0u64, 0usize, 0usize);
        for path in &self.files {
            let stamp = modified(path);
            let image = match held.remove(path) {
                Some((was, image)) if was.is_some() && was == stamp => Some(image),
                _ => {
                    decoded += 1;
                    read_image_file(path, &self.limits)
                        .ok()
                        .and_then(|data| decode(&data.ok()?, &self.limits).ok())
                }
            };
            let Some(image) = image else {
                failed += 1;
                self.preloaded.push(None);
                continue;
            };
            bytes += image.as_raw().len() as u64;
            if bytes > limit {
                self.preloaded.clear();
                return Err(SourceError::PreloadBudget {
                    path: self.root.clone(),
                    files: self.files.len(),
                    limit_mib: limit >> 20,
                });
            }
            self.preloaded.push(Some(Preloaded {
                path: path.clone(),
                modified: stamp,
                image,
            }));
        }
        tracing::info!(
            folder = %self.root.display(),
            images = self.files.len() - failed,
            decoded,
            unreadable = failed,
            mib = bytes as f64 / f64::from(1u32 << 20),
            seconds = started.elapsed().as_secs_f64(),
            "Folder held in memory for replay."
        );
        Ok(())
    }
}

/// Reads an image file whole, unless it is larger than `decode.max_alloc_bytes`: such a file
/// cannot be decoded within that limit, and reading it would first hold all of it in memory (a
/// video or a disk image dropped into the folder by mistake). The outer error is the file's
/// (gone, unreadable); the inner one makes it a bad frame, like a file that does not decode.
fn read_image_file(
    path: &Path,
    limits: &DecodeLimits,
) -> std::io::Result<Result<Vec<u8>, DecodeError>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let too_large = |needed| DecodeError::AllocationLimit {
        needed,
        limit: limits.max_alloc_bytes,
    };
    if size > limits.max_alloc_bytes {
        return Ok(Err(too_large(size)));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // Bounded again while reading: the file may grow after its size was taken.
    file.take(limits.max_alloc_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limits.max_alloc_bytes {
        return Ok(Err(too_large(bytes.len() as u64)));
    }
    Ok(Ok(bytes))
}

impl FrameSource for FolderSource {
    fn describe(&self) -> String {
        format!("folder {}", self.root.display())
    }

    fn next_frame(&mut self) -> Result<Option<Captured>, SourceError> {
        if self.next >= self.files.len() {
            if !self.repeat {
                return Ok(None);
            }
            self.next = 0;
        }
        if let Some(limit) = self.preload_limit
            && self.preloaded.len() != self.files.len()
        {
            // The last listing did not fit the budget (`load` failed): no silent replay from
            // the disk; the reopen after this error lists and loads again.
            return Err(SourceError::PreloadBudget {
                path: self.root.clone(),
                files: self.files.len(),
                limit_mib: limit >> 20,
            });
        }
        let index = self.next;
        self.next += 1;
        if let Some(Some(held)) = self.preloaded.get(index) {
            return Ok(Some(Captured {
                image: held.image.clone(),
                captured_at: SystemTime::now(),
                origin: self.files[index].display().to_string(),
            }));
        }
        let path = self.files[index].clone();
        let bytes = read_image_file(&path, &self.limits).map_err(|source| SourceError::Read {
            path: path.clone(),
            source,
        })?;
        let image = bytes
            .and_then(|bytes| decode(&bytes, &self.limits))
            .map_err(|source| SourceError::Decode {
                path: path.clone(),
                source,
            })?;
        Ok(Some(Captured {
            image,
            captured_at: SystemTime::now(),
            origin: path.display().to_string(),
        }))
    }

    /// The folder is still there (a network share that dropped, a folder moved away). A
    /// preloaded folder replays from memory and needs nothing from the disk.
    fn probe(&mut self) -> Result<(), SourceError> {
        if !self.preloaded.is_empty() {
            return Ok(());
        }
        let listed = |source| SourceError::ListFolder {
            path: self.root.clone(),
            source,
        };
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(listed(std::io::Error::other("not a folder"))),
            Err(e) => Err(listed(e)),
        }
    }

    /// Lists the folder again and goes on after the file replayed last, found by its path: files
    /// removed or added meanwhile (before or after it) neither skip nor repeat any.
    fn reopen(&mut self) -> Result<(), SourceError> {
        let last = self
            .next
            .checked_sub(1)
            .and_then(|i| self.files.get(i))
            .cloned();
        self.files = list(&self.root)?;
        self.next = match &last {
            Some(last) => self.files.partition_point(|f| f <= last),
            None => 0,
        };
        self.load()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path, value: u8) {
        image::RgbImage::from_pixel(4, 3, image::Rgb([value, 0, 0]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn replays_in_order_once_or_in_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("b.png"), 2);
        png(&dir.path().join("a.png"), 1);
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let mut once =
            FolderSource::open(dir.path().into(), false, DecodeLimits::default()).unwrap();
        let first = once.next_frame().unwrap().unwrap();
        assert!(first.origin.ends_with("a.png"), "{}", first.origin);
        assert_eq!(first.image.get_pixel(0, 0)[0], 1);
        assert!(
            once.next_frame()
                .unwrap()
                .unwrap()
                .origin
                .ends_with("b.png")
        );
        assert!(once.next_frame().unwrap().is_none());

        let mut looped =
            FolderSource::open(dir.path().into(), true, DecodeLimits::default()).unwrap();
        let origins: Vec<String> = (0..5)
            .map(|_| looped.next_frame().unwrap().unwrap().origin)
            .collect();
        assert!(origins[4].ends_with("a.png") && origins[3].ends_with("b.png"));
    }

    #[test]
    fn empty_or_missing_folders_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err =
            FolderSource::open(dir.path().into(), false, DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("holds no images"), "{err}");
        let err = FolderSource::open(dir.path().join("gone"), false, DecodeLimits::default())
            .unwrap_err();
        assert!(err.to_string().contains("cannot list"), "{err}");

        std::fs::write(dir.path().join("a.png"), b"not a png").unwrap();
        png(&dir.path().join("b.png"), 9);
        let mut source =
            FolderSource::open(dir.path().into(), false, DecodeLimits::default()).unwrap();
        let err = source.next_frame().unwrap_err();
        assert!(err.to_string().contains("a.png"), "{err}");
        // The bad file fails alone; the next grab moves on.
        assert!(source.next_frame().unwrap().is_some());
    }

    #[test]
    fn a_file_larger_than_the_decoder_may_allocate_is_a_bad_frame_and_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a.png"), 3);
        // 4 GiB that take no disk space (sparse): read whole, they would take the memory.
        let huge = std::fs::File::create(dir.path().join("b.png")).unwrap();
        huge.set_len(4 << 30).unwrap();
        drop(huge);
        png(&dir.path().join("c.png"), 5);
        let limits = DecodeLimits {
            max_alloc_bytes: 1 << 20,
            ..DecodeLimits::default()
        };
        let mut source = FolderSource::open(dir.path().into(), false, limits).unwrap();
        assert_eq!(source.next_frame().unwrap().unwrap().image[(0, 0)][0], 3);
        let err = source.next_frame().unwrap_err();
        assert!(
            matches!(err, SourceError::Decode { .. }),
            "a bad frame, not a camera failure: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("b.png")
                && message.contains("4294967296 bytes")
                && message.contains("decode.max_alloc_bytes"),
            "{message}"
        );
        assert_eq!(source.next_frame().unwrap().unwrap().image[(0, 0)][0], 5);
        // Held in memory: the file is left out like one that does not decode.
        let mut held = FolderSource::open(dir.path().into(), true, limits)
            .unwrap()
            .preload(1)
            .unwrap();
        assert_eq!(held.next_frame().unwrap().unwrap().image[(0, 0)][0], 3);
        assert!(held.next_frame().is_err());
        assert_eq!(held.next_frame().unwrap().unwrap().image[(0, 0)][0], 5);
    }

    #[test]
    fn a_preloaded_folder_replays_the_same_frames_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a.png"), 1);
        png(&dir.path().join("b.png"), 2);
        let open = || FolderSource::open(dir.path().into(), true, DecodeLimits::default());
        let mut disk = open().unwrap();
        let mut held = open().unwrap().preload(1).unwrap();
        // Once the files are gone, only the held frames can be replayed.
        std::fs::remove_file(dir.path().join("a.png")).unwrap();
        std::fs::remove_file(dir.path().join("b.png")).unwrap();
        for i in 0..4 {
            let frame = held.next_frame().unwrap().unwrap();
            let name = if i % 2 == 0 { "a.png" } else { "b.png" };
            assert!(frame.origin.ends_with(name), "{}", frame.origin);
            assert_eq!(frame.image.get_pixel(3, 2)[0], 1 + (i % 2) as u8);
        }
        assert!(disk.next_frame().is_err(), "the disk replay reads the file");
    }

    #[test]
    fn a_preload_over_its_budget_is_an_error_naming_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        // 600 × 600 RGB is about 1.03 MiB: over a 1 MiB budget.
        image::RgbImage::new(600, 600)
            .save(dir.path().join("big.png"))
            .unwrap();
        let err = FolderSource::open(dir.path().into(), true, DecodeLimits::default())
            .unwrap()
            .preload(1)
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("preload_mib = 1 MiB"), "{message}");
        assert!(
            FolderSource::open(dir.path().into(), true, DecodeLimits::default())
                .unwrap()
                .preload(2)
                .is_ok()
        );
    }

    #[test]
    fn preloaded_bad_files_fail_at_their_turn_and_a_reopen_decodes_only_what_changed() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.png");
        png(&a, 1);
        std::fs::write(dir.path().join("b.png"), b"not a png").unwrap();
        let mut source = FolderSource::open(dir.path().into(), true, DecodeLimits::default())
            .unwrap()
            .preload(1)
            .unwrap();
        assert_eq!(
            source.next_frame().unwrap().unwrap().image.get_pixel(0, 0)[0],
            1
        );
        let err = source.next_frame().unwrap_err();
        assert!(err.to_string().contains("b.png"), "{err}");

        // a.png rewritten with its old modification time: the reopen keeps the held image.
        let stamp = std::fs::metadata(&a).unwrap().modified().unwrap();
        png(&a, 7);
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(stamp)
            .unwrap();
        source.reopen().unwrap();
        assert_eq!(
            source.next_frame().unwrap().unwrap().image.get_pixel(0, 0)[0],
            1
        );

        // A new modification time: decoded again.
        let later = stamp + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&a)
            .unwrap()
            .set_modified(later)
            .unwrap();
        source.reopen().unwrap();
        let mut pixels = Vec::new();
        for _ in 0..4 {
            if let Ok(Some(frame)) = source.next_frame() {
                pixels.push(frame.image.get_pixel(0, 0)[0]);
            }
        }
        assert_eq!(pixels, [7, 7], "b.png still fails at its turns");
    }

    #[test]
    fn a_reopen_goes_on_after_the_file_replayed_last() {
        let dir = tempfile::tempdir().unwrap();
        for (name, value) in [("a.png", 1), ("b.png", 2), ("c.png", 3), ("d.png", 4)] {
            png(&dir.path().join(name), value);
        }
        let mut source =
            FolderSource::open(dir.path().into(), false, DecodeLimits::default()).unwrap();
        let pixel = |s: &mut FolderSource| s.next_frame().unwrap().map(|f| f.image[(0, 0)][0]);
        assert_eq!(pixel(&mut source), Some(1));
        assert_eq!(pixel(&mut source), Some(2));
        // Files replayed are removed and one is added before them: c comes next all the same.
        std::fs::remove_file(dir.path().join("a.png")).unwrap();
        std::fs::remove_file(dir.path().join("b.png")).unwrap();
        png(&dir.path().join("0.png"), 9);
        source.reopen().unwrap();
        assert_eq!(pixel(&mut source), Some(3));
        assert_eq!(pixel(&mut source), Some(4));
        assert_eq!(pixel(&mut source), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_dangling_link_in_the_folder_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a.png"), 1);
        std::os::unix::fs::symlink("/nonexistent/z.png", dir.path().join("z.png")).unwrap();
        let mut source =
            FolderSource::open(dir.path().into(), false, DecodeLimits::default()).unwrap();
        assert_eq!(source.files().len(), 1);
        assert!(source.next_frame().unwrap().is_some());
    }

    #[test]
    fn a_preloaded_folder_over_its_budget_after_a_reopen_does_not_replay_from_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        png(&dir.path().join("a.png"), 1);
        let mut source = FolderSource::open(dir.path().into(), true, DecodeLimits::default())
            .unwrap()
            .preload(1)
            .unwrap();
        assert!(source.next_frame().unwrap().is_some());
        // 600 × 600 RGB is about 1.03 MiB: the folder no longer fits the budget.
        image::RgbImage::new(600, 600)
            .save(dir.path().join("big.png"))
            .unwrap();
        let err = source.reopen().unwrap_err();
        assert!(err.to_string().contains("preload_mib = 1 MiB"), "{err}");
        let err = source.next_frame().unwrap_err();
        assert!(err.to_string().contains("preload_mib = 1 MiB"), "{err}");
    }
}
