//! Folder replay: the images of a folder, in path order, once or in a loop.
//!
//! The listing is taken when the source opens (and again on reopen), so files added later are
//! seen after a reopen. A file that cannot be read or decoded is a failed grab: the pipeline
//! records it and the next grab moves on to the next file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{Captured, FrameSource, SourceError};
use crate::preprocess::{DecodeLimits, decode};

const EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];

/// Replays image files.
#[derive(Debug)]
pub struct FolderSource {
    root: PathBuf,
    repeat: bool,
    limits: DecodeLimits,
    files: Vec<PathBuf>,
    next: usize,
}

fn list(root: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| SourceError::ListFolder {
            path: root.to_path_buf(),
            source: e.into(),
        })?;
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
            next: 0,
        })
    }

    /// The files replayed, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
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
        let path = self.files[self.next].clone();
        self.next += 1;
        let bytes = std::fs::read(&path).map_err(|source| SourceError::Read {
            path: path.clone(),
            source,
        })?;
        let image = decode(&bytes, &self.limits).map_err(|source| SourceError::Decode {
            path: path.clone(),
            source,
        })?;
        Ok(Some(Captured {
            image,
            captured_at: SystemTime::now(),
            origin: path.display().to_string(),
        }))
    }

    fn reopen(&mut self) -> Result<(), SourceError> {
        let position = self.next;
        self.files = list(&self.root)?;
        self.next = position.min(self.files.len());
        Ok(())
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
}
