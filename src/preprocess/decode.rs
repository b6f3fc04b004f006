//! Decoding encoded images to 8-bit RGB, with limits checked **before** any pixel is allocated.
//!
//! JPEG goes through libjpeg-turbo (the decoder PIL, torchvision and OpenCV use; default
//! `JDCT_ISLOW` and fancy upsampling, as PIL): the `image` crate's own JPEG decoder differs by ±1
//! on many pixels, which moves anomaly scores by up to 1e-2. PNG, BMP and TIFF go through `image`,
//! which is byte-identical to PIL for 8-bit data. Greyscale becomes RGB by replicating the grey
//! level and alpha is dropped, as `PIL.Image.convert("RGB")` does. EXIF orientation is ignored,
//! like `PIL.Image.open`.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};
use serde::{Deserialize, Serialize};

/// Limits on what an untrusted image may make the decoder allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeLimits {
    /// Largest accepted width in pixels.
    pub max_width: u32,
    /// Largest accepted height in pixels.
    pub max_height: u32,
    /// Largest decoder allocation in bytes (decoded pixels plus decoder buffers).
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_width: 16_384,
            max_height: 16_384,
            max_alloc_bytes: 1 << 30,
        }
    }
}

/// The container formats linesight decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Jpeg,
    Png,
    Bmp,
    Tiff,
}

impl std::fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageFormat::Jpeg => "JPEG",
            ImageFormat::Png => "PNG",
            ImageFormat::Bmp => "BMP",
            ImageFormat::Tiff => "TIFF",
        })
    }
}

/// Why an image could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error(
        "unrecognised image format (first bytes {magic}); supported formats: JPEG, PNG, BMP, TIFF"
    )]
    UnknownFormat { magic: String },
    #[error("image {field} is {value} pixels, the limit is {limit} (decode.max_{field})")]
    TooLarge {
        field: &'static str,
        value: u32,
        limit: u32,
    },
    #[error("image has a zero {field}")]
    ZeroSize { field: &'static str },
    #[error(
        "decoding needs {needed} bytes, more than the {limit}-byte limit (decode.max_alloc_bytes)"
    )]
    AllocationLimit { needed: u64, limit: u64 },
    #[error(
        "{format} image exceeds the decode limits ({reason}); see decode.max_width, decode.max_height, decode.max_alloc_bytes"
    )]
    LimitExceeded { format: ImageFormat, reason: String },
    #[error("corrupt or truncated {format} image: {reason}")]
    Corrupt { format: ImageFormat, reason: String },
    #[error("unsupported {format} image: {reason}")]
    Unsupported { format: ImageFormat, reason: String },
}

/// Identifies the container format from the first bytes.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some(ImageFormat::Jpeg),
        [0x89, b'P', b'N', b'G', ..] => Some(ImageFormat::Png),
        [b'B', b'M', ..] => Some(ImageFormat::Bmp),
        [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => Some(ImageFormat::Tiff),
        _ => None,
    }
}

/// Decodes `bytes` to 8-bit RGB within `limits`.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    match sniff_format(bytes) {
        Some(ImageFormat::Jpeg) => decode_jpeg(bytes, limits),
        // The `image` crate's decoders return errors for bad input; a panic in one (a bug
        // that some crafted file reaches) is caught too, so that it stays that file's error.
        Some(format) => std::panic::catch_unwind(|| decode_with_image(bytes, format, limits))
            .unwrap_or_else(|payload| {
                Err(DecodeError::Corrupt {
                    format,
                    reason: format!(
                        "the decoder failed: {}",
                        crate::panic_text(payload.as_ref()).unwrap_or("no message")
                    ),
                })
            }),
        None => Err(DecodeError::UnknownFormat {
            magic: bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
        }),
    }
}

fn check_dimensions(width: u32, height: u32, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if width == 0 {
        return Err(DecodeError::ZeroSize { field: "width" });
    }
    if height == 0 {
        return Err(DecodeError::ZeroSize { field: "height" });
    }
    if width > limits.max_width {
        return Err(DecodeError::TooLarge {
            field: "width",
            value: width,
            limit: limits.max_width,
        });
    }
    if height > limits.max_height {
        return Err(DecodeError::TooLarge {
            field: "height",
            value: height,
            limit: limits.max_height,
        });
    }
    Ok(())
}

fn check_alloc(needed: u64, limits: &DecodeLimits) -> Result<(), DecodeError> {
    if needed > limits.max_alloc_bytes {
        return Err(DecodeError::AllocationLimit {
            needed,
            limit: limits.max_alloc_bytes,
        });
    }
    Ok(())
}

fn decode_jpeg(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    // libjpeg reports fatal errors by unwinding out of the C code (the `mozjpeg` crate's error
    // manager); catch that here so that a corrupt frame is an error, never a crash.
    let decoded = std::panic::catch_unwind(|| decode_jpeg_unguarded(bytes, limits));
    match decoded {
        Ok(result) => result,
        Err(payload) => Err(DecodeError::Corrupt {
            format: ImageFormat::Jpeg,
            reason: panic_message(payload.as_ref()),
        }),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    crate::panic_text(payload)
        .unwrap_or("libjpeg error")
        .trim_start_matches("libjpeg fatal error: ")
        .to_string()
}

/// Whether an end-of-image marker (`FF D9`) follows the last start-of-scan (`FF DA`).
///
/// libjpeg pads a truncated stream with grey and only warns; PIL refuses it ("image file is
/// truncated"), and a half-grey frame must never be scored as a part. Entropy-coded data cannot
/// contain `FF D9` (a data `FF` is always followed by `00` or a restart marker), so the search
/// is exact.
fn has_end_of_image(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    last_scan.is_some_and(|start| bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]))
}

fn decode_jpeg_unguarded(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, DecodeError> {
    let corrupt = |e: std::io::Error| DecodeError::Corrupt {
        format: ImageFormat::Jpeg,
        reason: e.to_string(),
    };
    let mut header = mozjpeg::Decompress::new_mem(bytes).map_err(corrupt)?;
    let (width, height) = (header.width() as u32, header.height() as u32);
    check_dimensions(width, height, limits)?;
    let colour_space = header.color_space();
    if matches!(
        colour_space,
        mozjpeg::ColorSpace::JCS_CMYK | mozjpeg::ColorSpace::JCS_YCCK
    ) {
        return Err(DecodeError::Unsupported {
            format: ImageFormat::Jpeg,
            reason: "CMYK/YCCK colour space (convert the image to RGB)".into(),
        });
    }
    if !has_end_of_image(bytes) {
        return Err(DecodeError::Corrupt {
            format: ImageFormat::Jpeg,
            reason: "truncated: no end-of-image marker after the last scan".into(),
        });
    }
    let grey = matches!(colour_space, mozjpeg::ColorSpace::JCS_GRAYSCALE);
    let pixels = u64::from(width) * u64::from(height);
    // The grey plane (if any) plus the RGB result.
    check_alloc(pixels * if grey { 4 } else { 3 }, limits)?;
    // PIL's defaults: accurate integer IDCT, fancy upsampling, no block smoothing.
    header.dct_method(mozjpeg::DctMethod::IntegerSlow);
    header.do_fancy_upsampling(true);
    header.do_block_smoothing(false);
    let rgb = if grey {
        let mut started = header.grayscale().map_err(corrupt)?;
        let plane: Vec<u8> = started.read_scanlines().map_err(corrupt)?;
        started.finish().map_err(corrupt)?;
        // Replicate the grey level, as PIL's `convert("RGB")` does for mode "L".
        plane.iter().flat_map(|&v| [v, v, v]).collect::<Vec<u8>>()
    } else {
        let mut started = header.rgb().map_err(corrupt)?;
        let data: Vec<u8> = started.read_scanlines().map_err(corrupt)?;
        started.finish().map_err(corrupt)?;
        data
    };
    if rgb.len() as u64 != pixels * 3 {
        return Err(DecodeError::Corrupt {
            format: ImageFormat::Jpeg,
            reason: format!(
                "decoded {} bytes, expected {} for {width}x{height} RGB",
                rgb.len(),
                pixels * 3
            ),
        });
    }
    Ok(RgbImage::from_raw(width, height, rgb).expect("length checked above"))
}

fn decode_with_image(
    bytes: &[u8],
    format: ImageFormat,
    limits: &DecodeLimits,
) -> Result<RgbImage, DecodeError> {
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(l) => DecodeError::LimitExceeded {
            format,
            reason: l.to_string(),
        },
        image::ImageError::Unsupported(u) => DecodeError::Unsupported {
            format,
            reason: u.to_string(),
        },
        other => DecodeError::Corrupt {
            format,
            reason: other.to_string(),
        },
    };
    let image_format = match format {
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::Bmp => image::ImageFormat::Bmp,
        ImageFormat::Tiff => image::ImageFormat::Tiff,
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
    };
    // Header first, without pixel limits, so that an oversized image is refused with its real
    // dimensions named (the limits below would only say "exceeds limit").
    let mut header = ImageReader::with_format(Cursor::new(bytes), image_format);
    header.no_limits();
    let (width, height) = header.into_dimensions().map_err(corrupt)?;
    check_dimensions(width, height, limits)?;

    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits.clone());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    check_alloc(decoder.total_bytes(), limits)?;
    decoder.set_limits(image_limits).map_err(corrupt)?;
    let decoded = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    Ok(match decoded {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn golden_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/golden/decode")
    }

    #[derive(serde::Deserialize)]
    struct Case {
        name: String,
        input: String,
        expected: String,
    }

    fn cases() -> Vec<Case> {
        #[derive(serde::Deserialize)]
        struct Index {
            cases: Vec<Case>,
        }
        let text = std::fs::read_to_string(golden_dir().join("cases.json")).unwrap();
        serde_json::from_str::<Index>(&text).unwrap().cases
    }

    fn expected(case: &Case) -> RgbImage {
        image::open(golden_dir().join(&case.expected))
            .unwrap()
            .to_rgb8()
    }

    #[test]
    fn every_format_decodes_to_the_pixels_pillow_gives() {
        let cases = cases();
        assert!(cases.len() >= 14);
        for case in &cases {
            let bytes = std::fs::read(golden_dir().join(&case.input)).unwrap();
            let got = decode(&bytes, &DecodeLimits::default())
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let want = expected(case);
            assert_eq!(got.dimensions(), want.dimensions(), "{}", case.name);
            let diff = got
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .position(|(a, b)| a != b);
            assert!(
                diff.is_none(),
                "{}: first differing byte at {:?} (linesight {}, Pillow {})",
                case.name,
                diff,
                got.as_raw()[diff.unwrap()],
                want.as_raw()[diff.unwrap()]
            );
        }
    }

    #[test]
    fn the_image_crate_jpeg_decoder_would_not_match() {
        // Why libjpeg-turbo: the pure-Rust decoder differs from PIL on colour JPEGs.
        let case = cases().into_iter().find(|c| c.name == "jpeg_420").unwrap();
        let bytes = std::fs::read(golden_dir().join(&case.input)).unwrap();
        let other = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8();
        assert_ne!(other, expected(&case));
    }

    fn jpeg_bytes() -> Vec<u8> {
        std::fs::read(golden_dir().join("jpeg_420.jpg")).unwrap()
    }

    #[test]
    fn empty_and_unknown_inputs_are_named() {
        let limits = DecodeLimits::default();
        assert!(matches!(decode(b"", &limits), Err(DecodeError::Empty)));
        let err = decode(b"GIF89a....", &limits).unwrap_err();
        assert!(err.to_string().contains("47 49 46 38"), "{err}");
        assert!(err.to_string().contains("supported formats"), "{err}");
    }

    #[test]
    fn truncated_and_corrupt_jpegs_are_errors_not_grey_frames() {
        let limits = DecodeLimits::default();
        let full = jpeg_bytes();
        for cut in [full.len() - 2, full.len() / 2, 200, 4] {
            let err = decode(&full[..cut], &limits).unwrap_err();
            assert!(
                matches!(
                    err,
                    DecodeError::Corrupt {
                        format: ImageFormat::Jpeg,
                        ..
                    }
                ),
                "cut at {cut}: {err}"
            );
        }
        // Garbage after a valid header: libjpeg's fatal error must come back as an error.
        let mut broken = full[..20].to_vec();
        broken.extend(std::iter::repeat_n(0xA5u8, 400));
        broken.extend([0xFF, 0xD9]);
        assert!(decode(&broken, &limits).is_err());
    }

    #[test]
    fn dimensions_are_checked_before_allocation() {
        let limits = DecodeLimits {
            max_width: 32,
            max_height: 32,
            max_alloc_bytes: 1 << 30,
        };
        let err = decode(&jpeg_bytes(), &limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "image width is 61 pixels, the limit is 32 (decode.max_width)"
        );
        let png = std::fs::read(golden_dir().join("png_rgb.png")).unwrap();
        let err = decode(&png, &limits).unwrap_err();
        assert!(err.to_string().contains("width"), "{err}");
    }

    /// A PNG header claiming 100000 x 100000 pixels with almost no data: a decompression bomb.
    fn bomb_png(width: u32, height: u32) -> Vec<u8> {
        let mut png = std::fs::read(golden_dir().join("png_grey.png")).unwrap();
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        // Fix the IHDR CRC so the header itself is valid.
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn decompression_bombs_are_refused_without_allocating() {
        let limits = DecodeLimits::default();
        let err = decode(&bomb_png(100_000, 100_000), &limits).unwrap_err();
        assert!(err.to_string().contains("100000"), "{err}");
        // Within the side limits but over the allocation limit.
        let small = DecodeLimits {
            max_alloc_bytes: 1 << 20,
            ..DecodeLimits::default()
        };
        let err = decode(&bomb_png(4000, 4000), &small).unwrap_err();
        assert!(err.to_string().contains("max_alloc_bytes"), "{err}");
    }

    #[test]
    fn zero_sized_images_are_refused() {
        let err = decode(&bomb_png(0, 10), &DecodeLimits::default()).unwrap_err();
        // The PNG decoder refuses a zero dimension while reading the header.
        assert!(err.to_string().contains("dimensions"), "{err}");
    }

    #[test]
    fn corrupt_png_is_an_error() {
        let mut png = std::fs::read(golden_dir().join("png_rgb.png")).unwrap();
        let n = png.len();
        png.truncate(n / 2);
        let err = decode(&png, &DecodeLimits::default()).unwrap_err();
        assert!(err.to_string().contains("PNG"), "{err}");
    }
}
