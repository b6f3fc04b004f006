//! Pre-processing: encoded image bytes → the float tensor a model expects.
//!
//! Every function here is pure (no I/O, no async) so that it can be checked byte for byte against
//! golden files and benchmarked alone. The invariant that matters: **the pixels fed to the model
//! equal what the Python reference sees** (PIL + libjpeg-turbo + Pillow's bilinear resize),
//! because anomaly thresholds are calibrated on the Python side and a ±1 difference per pixel is
//! enough to move PaDiM scores by 1e-2.

mod decode;
pub mod resize;
mod tensor;

pub use decode::{DecodeError, DecodeLimits, ImageFormat, decode, sniff_format};
pub use resize::{resize_bilinear_pillow, resize_torchvision_antialias, resize_torchvision_uint8};
pub use tensor::{ChannelOrder, Normalisation, write_chw};

use std::cell::RefCell;

use image::RgbImage;
use resize::{Resampler8, ResizeCache};
use serde::{Deserialize, Serialize};

thread_local! {
    /// Each thread that prepares frames (an inference worker) keeps its resamplers and resize
    /// buffers, so a camera's stream of same-sized frames builds its weights once.
    static RESIZE_CACHE: RefCell<ResizeCache> = RefCell::new(ResizeCache::default());
}

/// How the image is brought to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ResizeMode {
    /// `PIL.Image.resize((w, h), Image.BILINEAR)` on 8-bit RGB, then `/ 255` (a plain Python client).
    #[default]
    PillowBilinear,
    /// torchvision `Resize((h, w), antialias=True)` on uint8 image tensors (PyTorch's uint8
    /// antialias kernel: 8-bit like Pillow, but int16 weights and always horizontal first).
    TorchvisionAntialias,
    /// torchvision `Resize((h, w), antialias=True)` on float `[0, 1]` tensors: no rounding to
    /// 8 bits anywhere. Scores differ from the uint8 path by up to a few 1e-2 on PaDiM, so use
    /// the one the threshold was calibrated with.
    TorchvisionAntialiasFloat,
}

/// Region of interest in original-image pixels, applied before resizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// Everything pre-processing needs to know about a model's input.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    pub width: u32,
    pub height: u32,
    pub resize: ResizeMode,
    pub channel_order: ChannelOrder,
    pub normalisation: Normalisation,
    pub roi: Option<Roi>,
}

/// Errors of the pre-processing stage.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error(
        "ROI {roi:?} does not fit inside the {width}x{height} image (x + width must be <= image width, y + height <= image height, width and height > 0)"
    )]
    RoiOutOfBounds { roi: Roi, width: u32, height: u32 },
    #[error(
        "output buffer holds {got} floats, the model input needs {expected} (3 x {height} x {width})"
    )]
    BufferSize {
        got: usize,
        expected: usize,
        width: u32,
        height: u32,
    },
}

/// Crops `image` to `roi`, or returns it unchanged when there is none.
pub fn crop_roi(image: &RgbImage, roi: Option<Roi>) -> Result<RgbImage, PreprocessError> {
    let Some(roi) = roi else {
        return Ok(image.clone());
    };
    let (w, h) = image.dimensions();
    let fits = roi.width > 0
        && roi.height > 0
        && roi.x.checked_add(roi.width).is_some_and(|r| r <= w)
        && roi.y.checked_add(roi.height).is_some_and(|b| b <= h);
    if !fits {
        return Err(PreprocessError::RoiOutOfBounds {
            roi,
            width: w,
            height: h,
        });
    }
    Ok(image::imageops::crop_imm(image, roi.x, roi.y, roi.width, roi.height).to_image())
}

/// Brings a decoded image to the model's input: ROI crop, resize, channel order, scaling to
/// `[0, 1]`, optional normalisation, CHW layout. `out` is one batch slot (3 × H × W floats).
pub fn prepare(image: &RgbImage, spec: &InputSpec, out: &mut [f32]) -> Result<(), PreprocessError> {
    let expected = 3 * spec.width as usize * spec.height as usize;
    if out.len() != expected {
        return Err(PreprocessError::BufferSize {
            got: out.len(),
            expected,
            width: spec.width,
            height: spec.height,
        });
    }
    let cropped;
    let source = match spec.roi {
        Some(_) => {
            cropped = crop_roi(image, spec.roi)?;
            &cropped
        }
        None => image,
    };
    let same_size = source.dimensions() == (spec.width, spec.height);
    match spec.resize {
        ResizeMode::PillowBilinear | ResizeMode::TorchvisionAntialias if same_size => {
            write_chw(source, spec.channel_order, &spec.normalisation, out);
        }
        ResizeMode::PillowBilinear | ResizeMode::TorchvisionAntialias => {
            let kind = match spec.resize {
                ResizeMode::PillowBilinear => Resampler8::Pillow,
                _ => Resampler8::TorchvisionUint8,
            };
            RESIZE_CACHE.with_borrow_mut(|cache| {
                let pixels = cache.resize(source, spec.width, spec.height, kind);
                tensor::write_chw_pixels(pixels, spec.channel_order, &spec.normalisation, out);
            });
        }
        ResizeMode::TorchvisionAntialiasFloat => {
            let planes = resize_torchvision_antialias(source, spec.width, spec.height);
            tensor::finish_float_planes(planes, spec.channel_order, &spec.normalisation, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, (x + y) as u8]))
    }

    fn spec(roi: Option<Roi>) -> InputSpec {
        InputSpec {
            width: 8,
            height: 6,
            resize: ResizeMode::PillowBilinear,
            channel_order: ChannelOrder::Rgb,
            normalisation: Normalisation::None,
            roi,
        }
    }

    #[test]
    fn roi_is_cropped_before_resizing() {
        let image = gradient(40, 30);
        let roi = Roi {
            x: 10,
            y: 5,
            width: 16,
            height: 12,
        };
        let mut with_roi = vec![0.0; 3 * 8 * 6];
        prepare(&image, &spec(Some(roi)), &mut with_roi).unwrap();
        let cropped = image::imageops::crop_imm(&image, 10, 5, 16, 12).to_image();
        let mut by_hand = vec![0.0; 3 * 8 * 6];
        prepare(&cropped, &spec(None), &mut by_hand).unwrap();
        assert_eq!(with_roi, by_hand);
        let mut whole = vec![0.0; 3 * 8 * 6];
        prepare(&image, &spec(None), &mut whole).unwrap();
        assert_ne!(with_roi, whole, "the ROI changes what the model sees");
    }

    #[test]
    fn roi_outside_the_image_names_both_sizes() {
        let image = gradient(40, 30);
        let roi = Roi {
            x: 30,
            y: 0,
            width: 16,
            height: 12,
        };
        let err = prepare(&image, &spec(Some(roi)), &mut [0.0; 144]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("40x30") && text.contains("x + width"),
            "{text}"
        );
    }

    #[test]
    fn a_wrong_buffer_size_is_an_error_not_a_panic() {
        let err = prepare(&gradient(8, 6), &spec(None), &mut [0.0; 10]).unwrap_err();
        assert!(matches!(
            err,
            PreprocessError::BufferSize {
                got: 10,
                expected: 144,
                ..
            }
        ));
    }

    #[test]
    fn prepare_reuses_resamplers_without_mixing_sizes_or_modes() {
        let (a, b) = (gradient(40, 30), gradient(33, 47));
        for _ in 0..2 {
            for image in [&a, &b] {
                for resize in [ResizeMode::PillowBilinear, ResizeMode::TorchvisionAntialias] {
                    let spec = InputSpec {
                        resize,
                        ..spec(None)
                    };
                    let mut got = vec![0.0; 144];
                    prepare(image, &spec, &mut got).unwrap();
                    let resized = match resize {
                        ResizeMode::PillowBilinear => resize_bilinear_pillow(image, 8, 6),
                        _ => resize_torchvision_uint8(image, 8, 6),
                    };
                    let mut want = vec![0.0; 144];
                    write_chw(&resized, ChannelOrder::Rgb, &Normalisation::None, &mut want);
                    assert_eq!(got, want, "{resize:?} {:?}", image.dimensions());
                }
            }
        }
    }

    #[test]
    fn same_size_images_are_not_resampled() {
        let image = gradient(8, 6);
        let mut out = vec![0.0; 144];
        for resize in [ResizeMode::PillowBilinear, ResizeMode::TorchvisionAntialias] {
            let spec = InputSpec {
                resize,
                ..spec(None)
            };
            prepare(&image, &spec, &mut out).unwrap();
            assert_eq!(out[1], 1.0 / 255.0, "{resize:?}: pixel (1, 0) red is 1");
        }
    }
}
