//! Test splits in MVTec AD layout and their ground-truth masks.
//!
//! ```text
//! DATASET/test/good/*.png                        good images (no masks)
//! DATASET/test/<defect>/*.png                    defect images, one folder per defect type
//! DATASET/ground_truth/<defect>/<stem>_mask.png  one mask per defect image (optional here)
//! ```
//!
//! Invariants:
//! - [`discover`] is deterministic: samples are sorted by defect-type folder name, then by file
//!   name (byte order), so two runs over the same folder list the same images in the same order.
//! - Only files with an image extension (jpg, jpeg, png, bmp, tif, tiff; any case) are samples;
//!   hidden files (leading `.`, such as macOS `._x.png` shadows) are skipped. Folders are read one
//!   level deep, as MVTec lays them out.
//! - A defect image without a mask is still a sample (image metrics use it); its `mask` is `None`
//!   and pixel metrics must leave it out.
//! - [`load_mask`] resizes like torchvision `Resize(NEAREST)` / `F.interpolate(mode="nearest")`,
//!   which is what anomalib applies to masks, so pixel metrics see the same labels as anomalib's.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

/// Name of the folder of good test images, and the defect type reported for them.
pub const GOOD: &str = "good";

const IMAGE_EXTENSIONS: [&str; 6] = ["jpg", "jpeg", "png", "bmp", "tif", "tiff"];

/// Masks larger than this on either side are refused before decoding (a corrupt or hostile PNG
/// header could otherwise ask for gigabytes).
const MAX_MASK_SIDE: u32 = 16_384;

/// One labelled test image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// The image file.
    pub path: PathBuf,
    /// Name of the folder under `test/`: `"good"` for good images, else the defect type.
    pub defect_type: String,
    /// `true` for every image outside `test/good`.
    pub is_defect: bool,
    /// `ground_truth/<defect>/<stem>_mask.png` when that file exists; always `None` for good
    /// images.
    pub mask: Option<PathBuf>,
}

/// Why a dataset or a mask could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(
        "{path} has no test/ folder; expected MVTec AD layout: test/good/*, test/<defect>/*, ground_truth/<defect>/<name>_mask.png"
    )]
    NoTestDir { path: PathBuf },
    #[error("{path} is missing; an MVTec AD test split keeps its good images there")]
    NoGoodDir { path: PathBuf },
    #[error(
        "no images under {path} (looked for .jpg, .jpeg, .png, .bmp, .tif, .tiff in test/good and test/<defect>)"
    )]
    Empty { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot decode mask {path}: {source}")]
    MaskDecode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("cannot resize mask {path} to {width}x{height}: the target size must be at least 1x1")]
    MaskTargetSize {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("mask {path} is {width}x{height}; the model's ROI {roi:?} does not fit inside it")]
    MaskRoi {
        path: PathBuf,
        roi: crate::preprocess::Roi,
        width: u32,
        height: u32,
    },
}

/// Lists the test split of an MVTec-layout dataset at `root`.
///
/// Errors name the path at fault: no `test/` folder, no `test/good`, an unreadable folder, or no
/// images at all. A `test/good` folder with no images is accepted (image AUROC is then
/// undefined, which the report shows).
pub fn discover(root: &Path) -> Result<Vec<Sample>, DatasetError> {
    let test = root.join("test");
    if !test.is_dir() {
        return Err(DatasetError::NoTestDir {
            path: root.to_path_buf(),
        });
    }
    let good_dir = test.join(GOOD);
    if !good_dir.is_dir() {
        return Err(DatasetError::NoGoodDir { path: good_dir });
    }

    let mut samples = Vec::new();
    for (type_name, type_dir) in sorted_entries(&test)?
        .into_iter()
        .filter(|(_, path)| path.is_dir())
    {
        // A folder name that is not UTF-8 still works as a sample group; it is shown lossily.
        let defect_type = type_name.to_string_lossy().into_owned();
        let is_defect = defect_type != GOOD;
        let mask_dir = root.join("ground_truth").join(&type_name);
        for (_, path) in sorted_entries(&type_dir)?
            .into_iter()
            .filter(|(name, path)| is_image_name(name) && path.is_file())
        {
            let mask = if is_defect {
                mask_path(&mask_dir, &path).filter(|m| m.is_file())
            } else {
                None
            };
            samples.push(Sample {
                path,
                defect_type: defect_type.clone(),
                is_defect,
                mask,
            });
        }
    }
    if samples.is_empty() {
        return Err(DatasetError::Empty { path: test });
    }
    Ok(samples)
}

/// Reads a ground-truth mask and brings it to the anomaly-map size `width × height`.
///
/// The mask is decoded with `image` (any format it reads; MVTec masks are 8-bit PNG), converted
/// to 8-bit grey, and binarised with **`value >= 128` = defect pixel**. MVTec and most MVTec-layout
/// datasets store only 0 and 255, where every sensible rule agrees (anomalib 2.x itself keeps
/// only 255, via `uint8(value / 255)`); 128 is the midpoint for masks saved with anti-aliased
/// edges. It is then resized with torchvision's nearest neighbour
/// ([`nearest_source_index`]). Returns `width × height` values, row-major.
pub fn load_mask(path: &Path, width: u32, height: u32) -> Result<Vec<bool>, DatasetError> {
    load_mask_in(path, None, width, height)
}

/// [`load_mask`] for a model that sees only a region of interest: the mask is cropped to `roi`
/// (original-image pixels, as the image is) before it is resized to `width × height`. A ROI that
/// does not fit the mask is an error naming both.
pub fn load_mask_in(
    path: &Path,
    roi: Option<crate::preprocess::Roi>,
    width: u32,
    height: u32,
) -> Result<Vec<bool>, DatasetError> {
    if width == 0 || height == 0 {
        return Err(DatasetError::MaskTargetSize {
            path: path.to_path_buf(),
            width,
            height,
        });
    }
    let decode_error = |source| DatasetError::MaskDecode {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = image::ImageReader::open(path)
        .map_err(|source| DatasetError::Read {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| DatasetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_MASK_SIDE);
    limits.max_image_height = Some(MAX_MASK_SIDE);
    reader.limits(limits);
    let mut grey = reader.decode().map_err(decode_error)?.into_luma8();
    if let Some(roi) = roi {
        let (w, h) = grey.dimensions();
        let fits = roi.x.checked_add(roi.width).is_some_and(|r| r <= w)
            && roi.y.checked_add(roi.height).is_some_and(|b| b <= h);
        if !fits {
            return Err(DatasetError::MaskRoi {
                path: path.to_path_buf(),
                roi,
                width: w,
                height: h,
            });
        }
        grey = image::imageops::crop_imm(&grey, roi.x, roi.y, roi.width, roi.height).to_image();
    }
    let (in_w, in_h) = grey.dimensions();
    let binary: Vec<bool> = grey.as_raw().iter().map(|&v| v >= 128).collect();
    Ok(resize_nearest(&binary, in_w, in_h, width, height))
}

/// Source index of output pixel `dst` along one axis when resizing `in_size` → `out_size` by
/// nearest neighbour, computed as PyTorch's CPU kernel does (`nearest_idx` in ATen's
/// `UpSampleKernel.cpp`): the same size copies, exactly double halves the index, otherwise
/// `min(floor(dst * scale), in_size - 1)` with `scale = in_size / out_size` **in `f32`**. The
/// `f32` arithmetic is kept on purpose: for some size pairs it lands one pixel lower than exact
/// rational arithmetic would, and matching torchvision matters more than being exact.
pub fn nearest_source_index(dst: u32, in_size: u32, out_size: u32) -> u32 {
    if out_size == in_size {
        dst
    } else if u64::from(out_size) == 2 * u64::from(in_size) {
        dst >> 1
    } else {
        let scale = in_size as f32 / out_size as f32;
        let src = (dst as f32 * scale).floor() as u32;
        src.min(in_size.saturating_sub(1))
    }
}

/// Nearest-neighbour resize of a row-major `in_w × in_h` grid to `out_w × out_h`.
fn resize_nearest(values: &[bool], in_w: u32, in_h: u32, out_w: u32, out_h: u32) -> Vec<bool> {
    if in_w == 0 || in_h == 0 {
        // An empty mask image has no defect pixel to map.
        return vec![false; out_w as usize * out_h as usize];
    }
    let columns: Vec<usize> = (0..out_w)
        .map(|x| nearest_source_index(x, in_w, out_w) as usize)
        .collect();
    let mut out = Vec::with_capacity(out_w as usize * out_h as usize);
    for y in 0..out_h {
        let row_start = nearest_source_index(y, in_h, out_h) as usize * in_w as usize;
        let row = &values[row_start..row_start + in_w as usize];
        out.extend(columns.iter().map(|&x| row[x]));
    }
    out
}

/// `(file name, path)` of every entry of `dir`, sorted by name.
fn sorted_entries(dir: &Path) -> Result<Vec<(std::ffi::OsString, PathBuf)>, DatasetError> {
    let read_error = |source| DatasetError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        entries.push((entry.file_name(), entry.path()));
    }
    entries.sort();
    Ok(entries)
}

fn is_image_name(name: &OsStr) -> bool {
    let name = Path::new(name);
    let hidden = name
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|n| n.starts_with('.'));
    let ext_ok = name
        .extension()
        .and_then(OsStr::to_str)
        .is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)));
    ext_ok && !hidden
}

/// `mask_dir/<stem>_mask.png` for an image path.
fn mask_path(mask_dir: &Path, image: &Path) -> Option<PathBuf> {
    let mut name = image.file_stem()?.to_os_string();
    name.push("_mask.png");
    Some(mask_dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma};

    fn touch(path: &Path) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, b"not decoded by discover").expect("write");
    }

    fn write_mask(path: &Path, width: u32, height: u32, f: impl Fn(u32, u32) -> u8) {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        GrayImage::from_fn(width, height, |x, y| Luma([f(x, y)]))
            .save(path)
            .expect("save png");
    }

    /// A small MVTec tree with the awkward cases: upper-case extension, hidden file, non-image
    /// file, a nested folder, a stray file directly in test/, a defect image without a mask.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        for p in [
            "test/good/b.png",
            "test/good/a.JPG",
            "test/good/.hidden.png",
            "test/good/notes.txt",
            "test/good/sub/deep.png",
            "test/readme.png",
            "test/scratch/002.tiff",
            "test/scratch/001.bmp",
            "test/crack/000.jpeg",
            "train/good/t.png",
        ] {
            touch(&r.join(p));
        }
        write_mask(
            &r.join("ground_truth/scratch/001_mask.png"),
            4,
            4,
            |_, _| 255,
        );
        write_mask(&r.join("ground_truth/crack/000_mask.png"), 4, 4, |_, _| 0);
        // A mask for a good image is ignored (MVTec has none; good pixels are all good).
        write_mask(&r.join("ground_truth/good/b_mask.png"), 4, 4, |_, _| 255);
        dir
    }

    #[test]
    fn discovers_sorted_samples_with_masks() {
        let dir = fixture();
        let r = dir.path();
        let samples = discover(r).expect("valid dataset");
        let got: Vec<(String, String, bool, Option<PathBuf>)> = samples
            .iter()
            .map(|s| {
                (
                    s.path
                        .strip_prefix(r)
                        .expect("under root")
                        .display()
                        .to_string(),
                    s.defect_type.clone(),
                    s.is_defect,
                    s.mask.clone(),
                )
            })
            .collect();
        let mask = |p: &str| Some(r.join(p));
        assert_eq!(
            got,
            vec![
                (
                    "test/crack/000.jpeg".into(),
                    "crack".into(),
                    true,
                    mask("ground_truth/crack/000_mask.png")
                ),
                ("test/good/a.JPG".into(), "good".into(), false, None),
                ("test/good/b.png".into(), "good".into(), false, None),
                (
                    "test/scratch/001.bmp".into(),
                    "scratch".into(),
                    true,
                    mask("ground_truth/scratch/001_mask.png")
                ),
                // No mask on disk: still a sample, pixel metrics skip it.
                ("test/scratch/002.tiff".into(), "scratch".into(), true, None),
            ]
        );
    }

    #[test]
    fn errors_name_the_missing_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = dir.path();
        let err = discover(r).expect_err("no test/");
        assert!(matches!(err, DatasetError::NoTestDir { ref path } if path == r));
        assert!(err.to_string().contains("has no test/ folder"), "{err}");

        fs::create_dir_all(r.join("test/crack")).expect("mkdir");
        let err = discover(r).expect_err("no test/good");
        assert!(
            matches!(err, DatasetError::NoGoodDir { ref path } if path == &r.join("test/good"))
        );
        assert!(err.to_string().contains("test/good"), "{err}");

        fs::create_dir_all(r.join("test/good")).expect("mkdir");
        touch(&r.join("test/good/readme.md"));
        let err = discover(r).expect_err("no images");
        assert!(matches!(err, DatasetError::Empty { ref path } if path == &r.join("test")));
        assert!(err.to_string().contains("no images under"), "{err}");

        // Good folder empty but defects present: allowed (AUROC is undefined, not an error).
        touch(&r.join("test/crack/1.png"));
        assert_eq!(discover(r).expect("defects only").len(), 1);
    }

    #[test]
    fn nearest_index_matches_torch_hand_computed() {
        // Downscale 4 → 2: floor(dst * 2.0) = 0, 2.
        let idx = |i, o| {
            (0..o)
                .map(|d| nearest_source_index(d, i, o))
                .collect::<Vec<_>>()
        };
        assert_eq!(idx(4, 2), vec![0, 2]);
        // Upscale 2 → 4 (the exact-double shortcut): 0, 0, 1, 1.
        assert_eq!(idx(2, 4), vec![0, 0, 1, 1]);
        // 3 → 5: scale 0.6 → floor(0, 0.6, 1.2, 1.8, 2.4) = 0, 0, 1, 1, 2.
        assert_eq!(idx(3, 5), vec![0, 0, 1, 1, 2]);
        // 5 → 3: scale 5/3 → floor(0, 1.67, 3.33) = 0, 1, 3 (not centre-aligned like PIL: 0, 2, 4).
        assert_eq!(idx(5, 3), vec![0, 1, 3]);
        // The f32 quirk: 2 → 82 has scale 2/82 stored slightly low in f32, so 41 × scale falls
        // just below 1 and PyTorch picks row 0 where exact arithmetic (41 × 2 / 82 = 1) picks 1.
        assert_eq!(nearest_source_index(41, 2, 82), 0);
        assert_eq!(nearest_source_index(42, 2, 82), 1);
        // Outputs of 256 (the usual map size) have exact f32 scales: no quirk there.
        for in_size in 1..=700 {
            for d in 0..256u32 {
                let exact = (u64::from(d) * u64::from(in_size) / 256) as u32;
                assert_eq!(
                    nearest_source_index(d, in_size, 256),
                    exact,
                    "{in_size} {d}"
                );
            }
        }
        // 256 → 256 is the identity.
        assert!((0..256).all(|d| nearest_source_index(d, 256, 256) == d));
    }

    #[test]
    fn load_mask_binarises_at_128_and_resizes_nearest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m_mask.png");
        // 4×2 mask: left column 255, then 128, 127, 0; bottom row all 255.
        let levels = [255u8, 128, 127, 0];
        write_mask(
            &path,
            4,
            2,
            |x, y| if y == 1 { 255 } else { levels[x as usize] },
        );
        let same = load_mask(&path, 4, 2).expect("mask");
        assert_eq!(same, vec![true, true, false, false, true, true, true, true]);
        // Downscale to 2×1: source column floor(x * 2) = 0, 2 and row 0.
        assert_eq!(load_mask(&path, 2, 1).expect("mask"), vec![true, false]);
        // Upscale to 8×4 (exact double): every pixel repeats 2×2.
        let big = load_mask(&path, 8, 4).expect("mask");
        assert_eq!(
            &big[0..8],
            &[true, true, true, true, false, false, false, false]
        );
        assert_eq!(&big[8..16], &big[0..8]);
        assert!(big[16..].iter().all(|&v| v));
    }

    #[test]
    fn load_mask_in_crops_to_the_roi_before_resizing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m_mask.png");
        // 4x2 mask, defect only in the right half of the top row.
        image::GrayImage::from_raw(4, 2, vec![0, 0, 255, 255, 0, 0, 0, 0])
            .unwrap()
            .save(&path)
            .unwrap();
        let roi = crate::preprocess::Roi {
            x: 2,
            y: 0,
            width: 2,
            height: 2,
        };
        assert_eq!(
            load_mask_in(&path, Some(roi), 2, 2).unwrap(),
            vec![true, true, false, false]
        );
        let outside = crate::preprocess::Roi { x: 3, ..roi };
        let err = load_mask_in(&path, Some(outside), 2, 2).unwrap_err();
        assert!(err.to_string().contains("does not fit"), "{err}");
    }

    #[test]
    fn load_mask_reports_bad_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope_mask.png");
        let err = load_mask(&missing, 4, 4).expect_err("missing");
        assert!(
            matches!(err, DatasetError::Read { ref path, .. } if path == &missing),
            "{err}"
        );

        let junk = dir.path().join("junk_mask.png");
        fs::write(&junk, b"\x89PNG\r\n\x1a\nbroken").expect("write");
        let err = load_mask(&junk, 4, 4).expect_err("corrupt");
        assert!(matches!(err, DatasetError::MaskDecode { .. }), "{err}");
        assert!(err.to_string().contains("junk_mask.png"), "{err}");

        write_mask(&junk, 2, 2, |_, _| 0);
        assert!(matches!(
            load_mask(&junk, 0, 4),
            Err(DatasetError::MaskTargetSize {
                width: 0,
                height: 4,
                ..
            })
        ));
    }

    /// Runs against a real MVTec-layout split when `LINESIGHT_TEST_DATA` names the shared data
    /// folder (it holds `mini/`: 10 good + 4 images of each of 5 defect types, all with masks).
    #[test]
    fn real_mini_split_when_available() {
        let Some(root) = std::env::var_os("LINESIGHT_TEST_DATA") else {
            eprintln!("LINESIGHT_TEST_DATA not set; skipping");
            return;
        };
        let samples = discover(&Path::new(&root).join("mini")).expect("mini split");
        assert_eq!(samples.len(), 30);
        assert_eq!(samples.iter().filter(|s| !s.is_defect).count(), 10);
        for s in samples.iter().filter(|s| s.is_defect) {
            let mask = s.mask.as_ref().expect("every mini defect image has a mask");
            let bits = load_mask(mask, 256, 256).expect("decodes");
            assert_eq!(bits.len(), 256 * 256);
            assert!(
                bits.iter().any(|&b| b),
                "{} marks no defect pixel",
                mask.display()
            );
        }
    }
}
