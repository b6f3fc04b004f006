//! Pixel layout and scaling: interleaved 8-bit RGB → planar (CHW) float32.
//!
//! Scaling is `value as f32 / 255.0`, the same IEEE operation as NumPy's
//! `np.asarray(img, np.float32) / 255`, so the tensor is bit-identical to the Python reference.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Order of the three colour planes in the model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    #[default]
    Rgb,
    Bgr,
}

/// Normalisation applied after scaling to `[0, 1]`.
///
/// anomalib 2.x exports normalise inside the graph, so their default is [`Normalisation::None`];
/// normalising twice gives wrong scores without any error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Normalisation {
    #[default]
    None,
    /// `(x - mean) / std` per channel, in the model's channel order.
    MeanStd { mean: [f32; 3], std: [f32; 3] },
}

impl Normalisation {
    /// ImageNet statistics in RGB order.
    pub const IMAGENET: Normalisation = Normalisation::MeanStd {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
    };
}

fn plane_index(order: ChannelOrder, rgb_channel: usize) -> usize {
    match order {
        ChannelOrder::Rgb => rgb_channel,
        ChannelOrder::Bgr => 2 - rgb_channel,
    }
}

/// Writes `image` (already at model size) into `out` as CHW float32.
///
/// `out.len()` must be `3 * width * height`; the caller checks it.
pub fn write_chw(image: &RgbImage, order: ChannelOrder, norm: &Normalisation, out: &mut [f32]) {
    write_chw_pixels(image.as_raw(), order, norm, out);
}

/// [`write_chw`] on interleaved RGB bytes (`out.len()` floats for `out.len() / 3` pixels).
///
/// Each channel's 256 possible values are scaled and normalised once, into a table, with the
/// same operations in the same order as per value (so the floats are bit-identical); the
/// per-plane loop is then one table load and one sequential store per value.
pub(crate) fn write_chw_pixels(
    pixels: &[u8],
    order: ChannelOrder,
    norm: &Normalisation,
    out: &mut [f32],
) {
    let plane = out.len() / 3;
    debug_assert_eq!(pixels.len(), 3 * plane);
    let tables: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| {
            let scaled = f32::from(v as u8) / 255.0;
            match norm {
                Normalisation::None => scaled,
                Normalisation::MeanStd { mean, std } => {
                    // `mean` and `std` are in model order.
                    let m = plane_index(order, c);
                    (scaled - mean[m]) / std[m]
                }
            }
        })
    });
    for (c, table) in tables.iter().enumerate() {
        let dst = plane_index(order, c);
        let target = &mut out[dst * plane..(dst + 1) * plane];
        for (o, px) in target.iter_mut().zip(pixels.chunks_exact(3)) {
            *o = table[usize::from(px[c])];
        }
    }
}

/// Takes RGB float planes in `[0, 1]` (the torchvision path) and writes them to `out` in model
/// order with normalisation.
pub(crate) fn finish_float_planes(
    planes: Vec<f32>,
    order: ChannelOrder,
    norm: &Normalisation,
    out: &mut [f32],
) {
    let plane = out.len() / 3;
    for c in 0..3 {
        let dst = plane_index(order, c);
        out[dst * plane..(dst + 1) * plane].copy_from_slice(&planes[c * plane..(c + 1) * plane]);
    }
    normalise(out, plane, norm);
}

fn normalise(out: &mut [f32], plane: usize, norm: &Normalisation) {
    if let Normalisation::MeanStd { mean, std } = norm {
        for c in 0..3 {
            for v in &mut out[c * plane..(c + 1) * plane] {
                *v = (*v - mean[c]) / std[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chw_layout_and_scaling_match_numpy() {
        let img = RgbImage::from_raw(2, 1, vec![0, 128, 255, 10, 20, 30]).unwrap();
        let mut out = vec![0.0; 6];
        write_chw(&img, ChannelOrder::Rgb, &Normalisation::None, &mut out);
        assert_eq!(
            out,
            vec![
                0.0,
                10.0 / 255.0,
                128.0 / 255.0,
                20.0 / 255.0,
                1.0,
                30.0 / 255.0
            ]
        );
    }

    /// The per-value computation the tables replace: scale, then normalise in model order.
    fn reference(pixels: &[u8], order: ChannelOrder, norm: &Normalisation) -> Vec<f32> {
        let plane = pixels.len() / 3;
        let mut out = vec![0.0f32; pixels.len()];
        for (i, px) in pixels.chunks_exact(3).enumerate() {
            for (c, &v) in px.iter().enumerate() {
                out[plane_index(order, c) * plane + i] = f32::from(v) / 255.0;
            }
        }
        if let Normalisation::MeanStd { mean, std } = norm {
            for c in 0..3 {
                for v in &mut out[c * plane..(c + 1) * plane] {
                    *v = (*v - mean[c]) / std[c];
                }
            }
        }
        out
    }

    #[test]
    fn tables_give_the_per_value_floats_bit_for_bit() {
        // Every byte value in every channel, in both orders, with and without normalisation.
        let pixels: Vec<u8> = (0..256 * 3)
            .map(|i| ((i / 3 + 85 * (i % 3)) % 256) as u8)
            .collect();
        let skewed = Normalisation::MeanStd {
            mean: [0.1, 0.5, 0.9],
            std: [0.3, 0.7, 0.11],
        };
        for order in [ChannelOrder::Rgb, ChannelOrder::Bgr] {
            for norm in [Normalisation::None, Normalisation::IMAGENET, skewed.clone()] {
                let mut out = vec![0.0f32; pixels.len()];
                write_chw_pixels(&pixels, order, &norm, &mut out);
                let want = reference(&pixels, order, &norm);
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&out), bits(&want), "{order:?} {norm:?}");
            }
        }
    }

    #[test]
    fn bgr_swaps_the_outer_planes() {
        let img = RgbImage::from_raw(1, 1, vec![255, 0, 51]).unwrap();
        let mut out = vec![0.0; 3];
        write_chw(&img, ChannelOrder::Bgr, &Normalisation::None, &mut out);
        assert_eq!(out, vec![0.2, 0.0, 1.0]);
    }

    #[test]
    fn mean_std_normalisation_is_applied_per_channel() {
        let img = RgbImage::from_raw(1, 1, vec![255, 255, 255]).unwrap();
        let mut out = vec![0.0; 3];
        write_chw(&img, ChannelOrder::Rgb, &Normalisation::IMAGENET, &mut out);
        let expected = [
            (1.0 - 0.485) / 0.229,
            (1.0f32 - 0.456) / 0.224,
            (1.0f32 - 0.406) / 0.225,
        ];
        assert_eq!(out, expected);
    }
}
