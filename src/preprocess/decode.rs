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
        Some(format) => decode_with_image(bytes, format, limits),
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
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "libjpeg error".to_string())
        .trim_start_matches("libjpeg fatal error: ")
        .to_string()
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
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format);
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_width);
    image_limits.max_image_height = Some(limits.max_height);
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    reader.limits(image_limits.clone());
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    check_alloc(decoder.total_bytes(), limits)?;
    decoder.set_limits(image_limits).map_err(corrupt)?;
    let decoded = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    Ok(match decoded {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    })
}
