//! Resizing to the model input size, reproducing the two Python references exactly.
//!
//! Anomaly thresholds are calibrated on the Python side, so the pixels fed to the model must be
//! the ones Python fed it. Two references exist (see [`super::ResizeMode`]):
//!
//! * [`resize_bilinear_pillow`] / [`PillowBilinear`]: `PIL.Image.resize((w, h), Image.BILINEAR)`
//!   of **Pillow 13.0.0** on 8-bit RGB. Invariant: **byte-identical** output. Pillow's bilinear is
//!   a separable convolution with a triangle filter stretched by the shrink factor (so it
//!   antialiases when shrinking), float64 weights turned into 22-bit fixed-point integers, and a
//!   rounding to 8 bits after *each* pass. Because of that intermediate rounding the pass order
//!   changes the bytes, and Pillow 13 chooses it: vertical first when
//!   `h_in - h_out > 0 && h_in - h_out > 2 * (w_in - w_out)`, horizontal first otherwise (older
//!   Pillow always went horizontal first). The rule was taken from DOMAIN.md and confirmed
//!   against the installed Pillow 13.0.0 on ~1 200 random size pairs, boundaries included; the
//!   golden files hold cases on both sides of it.
//! * [`resize_torchvision_antialias`] / [`TorchvisionAntialias`]: torchvision
//!   `Resize((h, w), antialias=True)` on float `[0, 1]` tensors, i.e. PyTorch's CPU
//!   `_upsample_bilinear2d_aa` with `align_corners=False`. Same filter geometry as Pillow, but
//!   float32 weights and arithmetic, width pass first, no rounding between passes. Invariant:
//!   within 1e-4 of a float64 evaluation of the same formula (the goldens), so well inside the
//!   1/255 budget against torchvision itself.
//!
//! Both resamplers precompute their per-axis weights once ([`PillowBilinear::new`],
//! [`TorchvisionAntialias::new`]) so that a pipeline resizing every frame of one camera to one
//! model size pays only for the convolution; [`super::prepare`] keeps them, with the scratch
//! buffers, per thread.
//!
//! Speed without changing a byte: the 8-bit passes are integer sums, so any exact evaluation
//! order gives the same bytes. On x86-64 CPUs with AVX2 (detected at run time) the horizontal
//! pass, which dominates when shrinking camera frames, runs the `vpmaddwd` kernel of the `avx2`
//! submodule and the vertical pass is compiled for AVX2; elsewhere the scalar horizontal pass
//! and the portable chunked vertical pass run. The scalar passes stay as the reference that
//! property tests compare the fast ones with, byte for byte.

use image::RgbImage;

#[cfg(target_arch = "x86_64")]
mod avx2;

/// Pillow's fixed-point precision for 8-bit resampling: 32 bits minus 8 for the result and 2 of
/// headroom for filters with negative lobes.
const PRECISION_BITS: u32 = 22;

/// Errors of the resize stage.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResizeError {
    /// A cached resampler was handed an image of a size it was not built for.
    #[error(
        "the resampler was built for {expected_width}x{expected_height} input images, got {width}x{height}; build one per input size"
    )]
    InputSize {
        expected_width: u32,
        expected_height: u32,
        width: u32,
        height: u32,
    },
}

/// A cached resampler only accepts the input size its weights were computed for.
fn check_input_size(src: &RgbImage, width: u32, height: u32) -> Result<(), ResizeError> {
    if src.dimensions() == (width, height) {
        return Ok(());
    }
    Err(ResizeError::InputSize {
        expected_width: width,
        expected_height: height,
        width: src.width(),
        height: src.height(),
    })
}

/// Convolution taps for one axis: for every output index, the first input index and its weights.
///
/// Weights live in one flat buffer with a fixed stride so that looking them up costs one multiply.
#[derive(Debug, Clone, PartialEq)]
struct AxisTaps<W> {
    /// Fixed-point precision of integer weights (bits after the binary point); unused for floats.
    precision: u32,
    /// `(first input index, number of weights)` per output index.
    windows: Vec<(usize, usize)>,
    /// `windows.len() * stride` weights; entries past a window's length are unused.
    weights: Vec<W>,
    stride: usize,
}

impl<W: Copy> AxisTaps<W> {
    /// `(first input index, weights)` for each output index, in order.
    fn iter(&self) -> impl Iterator<Item = (usize, &[W])> + '_ {
        self.windows
            .iter()
            .enumerate()
            .map(|(i, &(start, len))| (start, &self.weights[i * self.stride..][..len]))
    }

    fn from_rows(rows: Vec<(usize, Vec<W>)>, zero: W) -> Self {
        let stride = rows.iter().map(|(_, w)| w.len()).max().unwrap_or(0);
        let mut weights = vec![zero; rows.len() * stride];
        let mut windows = Vec::with_capacity(rows.len());
        for (i, (start, row)) in rows.into_iter().enumerate() {
            weights[i * stride..][..row.len()].copy_from_slice(&row);
            windows.push((start, row.len()));
        }
        AxisTaps {
            precision: 0,
            windows,
            weights,
            stride,
        }
    }
}

/// Pillow's triangle filter (`bilinear_filter` in `Resample.c`), support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 { 1.0 - x } else { 0.0 }
}

/// Pillow's `precompute_coeffs` for the bilinear filter and a full-image box, then its
/// `normalize_coeffs_8bpc`. Every operation is done in the order and precision of the C code
/// (double, truncating casts) because a weight one unit off in the 22nd bit can flip a byte.
/// How float weights become integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WeightPrecision {
    /// Pillow: always 22 fractional bits in 32-bit integers.
    Pillow,
    /// PyTorch's uint8 antialias kernel (`_compute_index_ranges_int16_weights`): int16 weights
    /// with as many fractional bits (at most 22) as keep the largest weight of the axis below
    /// 2^15.
    TorchInt16,
}

fn fixed_point_taps(in_size: u32, out_size: u32, precision: WeightPrecision) -> AxisTaps<i32> {
    // Pillow takes the box as C floats; `in1 - in0` is exact for any realistic size.
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle's support (1.0) stretched when shrinking
    let inv_filterscale = 1.0 / filterscale;
    let rows = (0..out_size)
        .map(|i| {
            let center = (f64::from(i) + 0.5) * scale;
            // `as i64` truncates toward zero like C's `(int)` cast.
            let start = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(i64::from(in_size));
            let len = (end - start).max(0) as usize;
            let start = start as usize;
            let mut k: Vec<f64> = (0..len)
                .map(|x| triangle(((x + start) as f64 - center + 0.5) * inv_filterscale))
                .collect();
            let total: f64 = k.iter().sum();
            if total != 0.0 {
                // Division, not multiplication by the reciprocal: they differ in the last bit.
                k.iter_mut().for_each(|w| *w /= total);
            }
            (start, k)
        })
        .collect::<Vec<(usize, Vec<f64>)>>();
    let bits = match precision {
        WeightPrecision::Pillow => PRECISION_BITS,
        WeightPrecision::TorchInt16 => {
            let max = rows
                .iter()
                .flat_map(|(_, k)| k.iter().copied())
                .fold(0.0f64, f64::max);
            // The largest precision whose doubled value still fits an int16, capped at 22.
            (0..22u32)
                .find(|p| (0.5 + max * f64::from(1u32 << (p + 1))) as i64 >= 1 << 15)
                .unwrap_or(22)
        }
    };
    let rows = rows
        .into_iter()
        .map(|(start, k)| {
            let fixed = k
                .iter()
                .map(|&w| {
                    let scaled = w * f64::from(1u32 << bits);
                    // Round half away from zero by truncating, as Pillow does; `f64::round`
                    // differs for values just under .5.
                    if w < 0.0 {
                        (-0.5 + scaled) as i32
                    } else {
                        (0.5 + scaled) as i32
                    }
                })
                .collect();
            (start, fixed)
        })
        .collect();
    let mut taps = AxisTaps::from_rows(rows, 0);
    taps.precision = bits;
    taps
}

/// Pillow's `clip8`: the accumulator holds the value scaled by 2^precision plus one half.
#[inline(always)]
fn clip8(acc: i32, precision: u32) -> u8 {
    (acc >> precision).clamp(0, 255) as u8
}

/// Pillow 13's choice of pass order (see the module documentation).
fn pillow13_vertical_first(in_width: u32, in_height: u32, width: u32, height: u32) -> bool {
    let dh = i64::from(in_height) - i64::from(height);
    let dw = i64::from(in_width) - i64::from(width);
    dh > 0 && dh > 2 * dw
}

/// Pillow-exact bilinear resampler for one `(input size, output size)` pair, with its weights
/// computed once.
///
/// Build it once per camera/model size pair and call [`PillowBilinear::resize`] per frame; the
/// free function [`resize_bilinear_pillow`] builds one per call.
///
/// The 32-bit accumulator cannot overflow for inputs up to about 8 million pixels per side
/// (far beyond the decode limits).
#[derive(Debug, Clone, PartialEq)]
pub struct PillowBilinear {
    in_width: u32,
    in_height: u32,
    width: u32,
    height: u32,
    /// `None` when the width does not change (Pillow then skips the pass).
    horizontal: Option<FixedPass>,
    /// `None` when the height does not change.
    vertical: Option<FixedPass>,
    vertical_first: bool,
}

impl PillowBilinear {
    /// Pillow 13 resampler from `in_width × in_height` to `width × height` pixels.
    pub fn new(in_width: u32, in_height: u32, width: u32, height: u32) -> Self {
        let taps = |i, o| fixed_point_taps(i, o, WeightPrecision::Pillow);
        PillowBilinear {
            in_width,
            in_height,
            width,
            height,
            horizontal: (in_width != width).then(|| FixedPass::new(taps(in_width, width))),
            vertical: (in_height != height).then(|| FixedPass::new(taps(in_height, height))),
            vertical_first: pillow13_vertical_first(in_width, in_height, width, height),
        }
    }

    /// torchvision `Resize((h, w), antialias=True)` on a **uint8** image tensor: PyTorch's uint8
    /// antialias kernel (`upsample_avx_bilinear_uint8`). Same filter geometry as Pillow, but
    /// int16 weights with a per-axis precision, always the horizontal pass first, and rounding
    /// to 8 bits between the passes.
    pub fn torchvision_uint8(in_width: u32, in_height: u32, width: u32, height: u32) -> Self {
        let taps = |i, o| fixed_point_taps(i, o, WeightPrecision::TorchInt16);
        PillowBilinear {
            in_width,
            in_height,
            width,
            height,
            horizontal: (in_width != width).then(|| FixedPass::new(taps(in_width, width))),
            vertical: (in_height != height).then(|| FixedPass::new(taps(in_height, height))),
            vertical_first: false,
        }
    }

    /// `(width, height)` of the images this resampler accepts.
    pub fn input_size(&self) -> (u32, u32) {
        (self.in_width, self.in_height)
    }

    /// `(width, height)` of the images it produces.
    pub fn output_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Whether Pillow 13 (and so this resampler) runs the vertical pass before the horizontal one.
    pub fn vertical_first(&self) -> bool {
        self.vertical_first
    }

    /// Resizes `src`, byte-identical to Pillow 13's `Image.resize(size, Image.BILINEAR)`.
    pub fn resize(&self, src: &RgbImage) -> Result<RgbImage, ResizeError> {
        check_input_size(src, self.in_width, self.in_height)?;
        Ok(self.apply(src))
    }

    /// The resize proper; `src` has the input size.
    fn apply(&self, src: &RgbImage) -> RgbImage {
        let mut pixels = Vec::new();
        self.apply_into(src.as_raw(), &mut Vec::new(), &mut pixels);
        debug_assert_eq!(pixels.len(), self.width as usize * self.height as usize * 3);
        // The buffer has exactly width × height × 3 bytes by construction; the fallback is
        // unreachable and only avoids a panic path.
        RgbImage::from_raw(self.width, self.height, pixels)
            .unwrap_or_else(|| RgbImage::new(self.width, self.height))
    }

    /// Resizes the interleaved RGB bytes `src` (input size) into `out`, using `tmp` for the
    /// intermediate image. Both buffers keep their capacity, so a caller that keeps them pays
    /// no allocation per frame.
    pub(crate) fn apply_into(&self, src: &[u8], tmp: &mut Vec<u8>, out: &mut Vec<u8>) {
        let (in_w, in_h) = (self.in_width as usize, self.in_height as usize);
        let (out_w, out_h) = (self.width as usize, self.height as usize);
        let out_len = out_w * out_h * 3;
        if out_len == 0 || in_w == 0 || in_h == 0 {
            // Nothing to sample: every window is empty and Pillow's sums stay at zero.
            out.clear();
            out.resize(out_len, 0);
            return;
        }
        match (&self.horizontal, &self.vertical) {
            (None, None) => {
                out.clear();
                out.extend_from_slice(src);
            }
            (Some(h), None) => h.run_horizontal(src, in_w, sized(out, out_len)),
            (None, Some(v)) => v.run_vertical(src, in_w * 3, sized(out, out_len)),
            (Some(h), Some(v)) if self.vertical_first => {
                v.run_vertical(src, in_w * 3, sized(tmp, in_w * out_h * 3));
                h.run_horizontal(tmp, in_w, sized(out, out_len));
            }
            (Some(h), Some(v)) => {
                h.run_horizontal(src, in_w, sized(tmp, out_w * in_h * 3));
                v.run_vertical(tmp, out_w * 3, sized(out, out_len));
            }
        }
    }

    /// The same resize with the scalar passes only: the reference the fast kernels are tested
    /// against.
    #[cfg(test)]
    fn apply_scalar(&self, src: &RgbImage) -> Vec<u8> {
        let (in_w, in_h) = (self.in_width as usize, self.in_height as usize);
        let (out_w, out_h) = (self.width as usize, self.height as usize);
        if out_w * out_h == 0 || in_w * in_h == 0 {
            return vec![0; out_w * out_h * 3];
        }
        let src = src.as_raw().as_slice();
        let h = |src: &[u8], rows: usize, taps: &AxisTaps<i32>| {
            let mut dst = vec![0; taps.windows.len() * 3 * rows];
            horizontal_scalar(src, in_w, taps, &mut dst);
            dst
        };
        let v = |src: &[u8], row_len: usize, taps: &AxisTaps<i32>| {
            let mut dst = vec![0; taps.windows.len() * row_len];
            vertical_scalar(src, row_len, taps, &mut dst);
            dst
        };
        match (&self.horizontal, &self.vertical) {
            (None, None) => src.to_vec(),
            (Some(hp), None) => h(src, in_h, &hp.taps),
            (None, Some(vp)) => v(src, in_w * 3, &vp.taps),
            (Some(hp), Some(vp)) if self.vertical_first => {
                h(&v(src, in_w * 3, &vp.taps), out_h, &hp.taps)
            }
            (Some(hp), Some(vp)) => v(&h(src, in_h, &hp.taps), out_w * 3, &vp.taps),
        }
    }
}

/// `buf` resized to `len` bytes for a pass to overwrite entirely (no zeroing when the length
/// is already right, as it is for every frame after the first).
fn sized(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() != len {
        buf.clear();
        buf.resize(len, 0);
    }
    buf
}

/// The integer taps of one pass, with the same weights in the layout of the AVX2 kernel when
/// this CPU has one.
#[derive(Debug, Clone, PartialEq)]
struct FixedPass {
    taps: AxisTaps<i32>,
    #[cfg(target_arch = "x86_64")]
    avx2: Option<avx2::PackedTaps>,
}

impl FixedPass {
    fn new(taps: AxisTaps<i32>) -> Self {
        FixedPass {
            #[cfg(target_arch = "x86_64")]
            avx2: (avx2::available() && avx2::PackedTaps::fits(&taps))
                .then(|| avx2::PackedTaps::new(&taps)),
            taps,
        }
    }

    /// Horizontal pass over rows of `in_w` pixels (as many rows as `src` holds) into `dst`.
    fn run_horizontal(&self, src: &[u8], in_w: usize, dst: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if let Some(packed) = &self.avx2 {
            avx2::horizontal(src, in_w, &self.taps, packed, dst);
            return;
        }
        horizontal_scalar(src, in_w, &self.taps, dst);
    }

    /// Vertical pass over rows of `row_len` bytes into `dst`.
    fn run_vertical(&self, src: &[u8], row_len: usize, dst: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if self.avx2.is_some() {
            avx2::vertical(src, row_len, &self.taps, dst);
            return;
        }
        vertical_chunked(src, row_len, &self.taps, dst);
    }
}

/// Horizontal pass on interleaved RGB rows of `in_w` pixels: the scalar reference.
fn horizontal_scalar(src: &[u8], in_w: usize, taps: &AxisTaps<i32>, dst: &mut [u8]) {
    let out_w = taps.windows.len();
    let (bits, half) = (taps.precision, 1i32 << (taps.precision - 1));
    for (src_row, dst_row) in src
        .chunks_exact(in_w * 3)
        .zip(dst.chunks_exact_mut(out_w * 3))
    {
        for ((start, weights), out_px) in taps.iter().zip(dst_row.chunks_exact_mut(3)) {
            let window = &src_row[start * 3..][..weights.len() * 3];
            let mut acc = [half; 3];
            for (px, &w) in window.chunks_exact(3).zip(weights) {
                acc[0] += i32::from(px[0]) * w;
                acc[1] += i32::from(px[1]) * w;
                acc[2] += i32::from(px[2]) * w;
            }
            out_px[0] = clip8(acc[0], bits);
            out_px[1] = clip8(acc[1], bits);
            out_px[2] = clip8(acc[2], bits);
        }
    }
}

/// Vertical pass on rows of `row_len` bytes: the scalar reference, one output row at a time.
#[cfg(test)]
fn vertical_scalar(src: &[u8], row_len: usize, taps: &AxisTaps<i32>, dst: &mut [u8]) {
    let (bits, half) = (taps.precision, 1i32 << (taps.precision - 1));
    let mut acc = vec![0i32; row_len];
    for ((start, weights), dst_row) in taps.iter().zip(dst.chunks_exact_mut(row_len)) {
        acc.fill(half);
        let rows = src[start * row_len..][..weights.len() * row_len].chunks_exact(row_len);
        for (row, &w) in rows.zip(weights) {
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * w;
            }
        }
        for (d, &a) in dst_row.iter_mut().zip(&acc) {
            *d = clip8(a, bits);
        }
    }
}

/// Bytes of a row the vertical kernel keeps in registers at once.
const VERTICAL_CHUNK: usize = 32;

/// Vertical pass on rows of `row_len` bytes: each output row is a weighted sum of whole input
/// rows. The row is processed in fixed-size chunks whose 32 accumulators stay in registers
/// across all taps, so the compiler vectorises the chunk loop completely.
#[inline(always)]
fn vertical_chunked(src: &[u8], row_len: usize, taps: &AxisTaps<i32>, dst: &mut [u8]) {
    let (bits, half) = (taps.precision, 1i32 << (taps.precision - 1));
    for ((start, weights), dst_row) in taps.iter().zip(dst.chunks_exact_mut(row_len)) {
        let rows = &src[start * row_len..][..weights.len() * row_len];
        let mut chunks = dst_row.chunks_exact_mut(VERTICAL_CHUNK);
        for (c, out) in (&mut chunks).enumerate() {
            let x = c * VERTICAL_CHUNK;
            let mut acc = [half; VERTICAL_CHUNK];
            for (row, &w) in rows.chunks_exact(row_len).zip(weights) {
                let Ok(px) = <&[u8; VERTICAL_CHUNK]>::try_from(&row[x..x + VERTICAL_CHUNK]) else {
                    continue;
                };
                for (a, &p) in acc.iter_mut().zip(px) {
                    *a += i32::from(p) * w;
                }
            }
            for (o, &a) in out.iter_mut().zip(&acc) {
                *o = clip8(a, bits);
            }
        }
        let tail = chunks.into_remainder();
        let x0 = row_len - tail.len();
        for (i, out) in tail.iter_mut().enumerate() {
            let mut acc = half;
            for (row, &w) in rows.chunks_exact(row_len).zip(weights) {
                acc += i32::from(row[x0 + i]) * w;
            }
            *out = clip8(acc, bits);
        }
    }
}

/// Which 8-bit reference a cached resampler reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resampler8 {
    /// [`PillowBilinear::new`].
    Pillow,
    /// [`PillowBilinear::torchvision_uint8`].
    TorchvisionUint8,
}

/// Resamplers kept at most by one [`ResizeCache`]: one per camera and model size in practice.
const CACHED_RESAMPLERS: usize = 4;

/// 8-bit resamplers with their weights, and the scratch buffers of the resize, kept between
/// frames so that a stream of same-sized frames pays neither for weights nor for allocations.
#[derive(Debug, Default)]
pub(crate) struct ResizeCache {
    /// Least recently used first.
    resamplers: Vec<(Resampler8, PillowBilinear)>,
    tmp: Vec<u8>,
    out: Vec<u8>,
}

impl ResizeCache {
    /// Resizes `src` to `width × height` and returns its interleaved RGB bytes, valid until the
    /// next call.
    pub(crate) fn resize(
        &mut self,
        src: &RgbImage,
        width: u32,
        height: u32,
        kind: Resampler8,
    ) -> &[u8] {
        let (in_width, in_height) = src.dimensions();
        let found = self.resamplers.iter().position(|(k, r)| {
            *k == kind
                && r.input_size() == (in_width, in_height)
                && r.output_size() == (width, height)
        });
        let entry = match found {
            Some(i) => self.resamplers.remove(i),
            None => {
                if self.resamplers.len() >= CACHED_RESAMPLERS {
                    self.resamplers.remove(0);
                }
                let resampler = match kind {
                    Resampler8::Pillow => PillowBilinear::new(in_width, in_height, width, height),
                    Resampler8::TorchvisionUint8 => {
                        PillowBilinear::torchvision_uint8(in_width, in_height, width, height)
                    }
                };
                (kind, resampler)
            }
        };
        entry
            .1
            .apply_into(src.as_raw(), &mut self.tmp, &mut self.out);
        self.resamplers.push(entry);
        &self.out
    }
}

/// torchvision `Resize((height, width), antialias=True)` applied to a uint8 image tensor (see
/// [`PillowBilinear::torchvision_uint8`]); the result is 8-bit like the Pillow path.
pub fn resize_torchvision_uint8(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    PillowBilinear::torchvision_uint8(src.width(), src.height(), width, height).apply(src)
}

/// Pillow-exact `Image.resize((width, height), Image.BILINEAR)` on 8-bit RGB (Pillow 13.0.0).
///
/// Same size returns a copy, as Pillow does. A zero `width` or `height` gives an empty image
/// (Pillow raises); an empty source gives a black image of the requested size (as Pillow).
/// For repeated resizes between the same sizes, keep a [`PillowBilinear`] instead.
pub fn resize_bilinear_pillow(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    PillowBilinear::new(src.width(), src.height(), width, height).apply(src)
}

/// PyTorch's antialiased bilinear weights (`_compute_indices_min_size_weights_aa` with
/// `scalar_t = float`, interp size 2, `align_corners=False`), reproducing its mix of float and
/// double promotions.
fn torch_aa_taps(in_size: u32, out_size: u32) -> AxisTaps<f32> {
    // area_pixel_compute_scale<float>: float(input) / output.
    let scale = in_size as f32 / out_size as f32;
    let (support, invscale) = if scale >= 1.0 {
        // (interp_size * 0.5) * scale and 1.0 / scale are evaluated in double, stored as float.
        (scale, (1.0 / f64::from(scale)) as f32)
    } else {
        (1.0f32, 1.0f32)
    };
    // Torch clips the window to this length ("rare cases when due to precision ...").
    // Saturating: a zero output size makes the support infinite (no windows are built then).
    let max_len = (support.ceil() as usize)
        .saturating_mul(2)
        .saturating_add(1);
    let rows = (0..out_size)
        .map(|i| {
            let center = (f64::from(scale) * (f64::from(i) + 0.5)) as f32;
            let start = ((f64::from(center - support) + 0.5) as i64).max(0);
            let end = ((f64::from(center + support) + 0.5) as i64).min(i64::from(in_size));
            let len = (end - start).clamp(0, max_len as i64) as usize;
            let start = start as usize;
            let mut k: Vec<f32> = (0..len)
                .map(|j| {
                    let x = (f64::from((j + start) as f32 - center) + 0.5) * f64::from(invscale);
                    let x = (x as f32).abs();
                    if x < 1.0 { 1.0 - x } else { 0.0 }
                })
                .collect();
            let mut total = 0.0f32;
            k.iter().for_each(|w| total += w);
            if total != 0.0 {
                k.iter_mut().for_each(|w| *w /= total);
            }
            (start, k)
        })
        .collect();
    AxisTaps::from_rows(rows, 0.0)
}

/// torchvision `Resize(antialias=True)` resampler (float path) for one size pair, with its
/// weights computed once. Output is RGB planes (CHW) in `[0, 1]`, never rounded to 8 bits.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchvisionAntialias {
    in_width: u32,
    in_height: u32,
    width: u32,
    height: u32,
    horizontal: Option<AxisTaps<f32>>,
    vertical: Option<AxisTaps<f32>>,
}

impl TorchvisionAntialias {
    /// Resampler from `in_width × in_height` to `width × height` pixels.
    pub fn new(in_width: u32, in_height: u32, width: u32, height: u32) -> Self {
        TorchvisionAntialias {
            in_width,
            in_height,
            width,
            height,
            horizontal: (in_width != width).then(|| torch_aa_taps(in_width, width)),
            vertical: (in_height != height).then(|| torch_aa_taps(in_height, height)),
        }
    }

    /// `(width, height)` of the images this resampler accepts.
    pub fn input_size(&self) -> (u32, u32) {
        (self.in_width, self.in_height)
    }

    /// `(width, height)` of the planes it produces.
    pub fn output_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Resizes `src` (scaled to `[0, 1]` by `/ 255` first, as `ToDtype(float32, scale=True)`)
    /// and returns `3 × height × width` floats, R plane then G then B.
    pub fn resize(&self, src: &RgbImage) -> Result<Vec<f32>, ResizeError> {
        check_input_size(src, self.in_width, self.in_height)?;
        Ok(self.apply(src))
    }

    fn apply(&self, src: &RgbImage) -> Vec<f32> {
        let (in_w, in_h) = (self.in_width as usize, self.in_height as usize);
        let (out_w, out_h) = (self.width as usize, self.height as usize);
        let mut out = Vec::with_capacity(3 * out_w * out_h);
        if out_w == 0 || out_h == 0 {
            return out;
        }
        if in_w == 0 || in_h == 0 {
            out.resize(3 * out_w * out_h, 0.0);
            return out;
        }
        let in_plane = in_w * in_h;
        let mut plane = vec![0.0f32; in_plane];
        let mut tmp = Vec::new();
        for c in 0..3 {
            for (p, px) in plane.iter_mut().zip(src.as_raw().chunks_exact(3)) {
                *p = f32::from(px[c]) / 255.0;
            }
            // Width first, then height, as PyTorch's separable kernel does.
            let after_h: &[f32] = match &self.horizontal {
                Some(taps) => {
                    tmp.clear();
                    horizontal_pass_f32(&plane, in_w, taps, &mut tmp);
                    &tmp
                }
                None => &plane,
            };
            match &self.vertical {
                Some(taps) => vertical_pass_f32(after_h, out_w, taps, &mut out),
                None => out.extend_from_slice(after_h),
            }
        }
        out
    }
}

/// Horizontal pass on one float plane with rows of `in_w` values; appends to `dst`.
fn horizontal_pass_f32(src: &[f32], in_w: usize, taps: &AxisTaps<f32>, dst: &mut Vec<f32>) {
    for row in src.chunks_exact(in_w) {
        dst.extend(taps.iter().map(|(start, weights)| {
            let window = &row[start..][..weights.len()];
            let mut acc = 0.0f32;
            for (&v, &w) in window.iter().zip(weights) {
                acc += v * w;
            }
            acc
        }));
    }
}

/// Vertical pass on one float plane with rows of `row_len` values; appends to `dst`.
fn vertical_pass_f32(src: &[f32], row_len: usize, taps: &AxisTaps<f32>, dst: &mut Vec<f32>) {
    for (start, weights) in taps.iter() {
        let first = dst.len();
        dst.resize(first + row_len, 0.0);
        let acc = &mut dst[first..];
        let rows = src[start * row_len..][..weights.len() * row_len].chunks_exact(row_len);
        for (row, &w) in rows.zip(weights) {
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += v * w;
            }
        }
    }
}

/// torchvision `Resize((height, width), antialias=True)` on `[0, 1]` floats; returns RGB planes
/// (CHW, 3 × height × width).
///
/// Same size returns the input scaled to `[0, 1]`. A zero `width` or `height` gives an empty
/// vector. For repeated resizes between the same sizes, keep a [`TorchvisionAntialias`].
pub fn resize_torchvision_antialias(src: &RgbImage, width: u32, height: u32) -> Vec<f32> {
    TorchvisionAntialias::new(src.width(), src.height(), width, height).apply(src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;
    use std::path::{Path, PathBuf};

    /// `testdata/golden/resize/cases.json`, written by `tools/golden/make_resize_golden.py`.
    #[derive(Debug, Deserialize)]
    struct GoldenSet {
        pillow_version: String,
        tv16_scale: f64,
        cases: Vec<GoldenCase>,
    }

    #[derive(Debug, Deserialize)]
    struct GoldenCase {
        name: String,
        input: String,
        in_size: [u32; 2],
        out_size: [u32; 2],
        pillow: String,
        vertical_first: bool,
        order_matters: bool,
        tv16: Option<String>,
    }

    fn golden_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/golden/resize")
    }

    fn golden_set() -> GoldenSet {
        let path = golden_dir().join("cases.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let set: GoldenSet = serde_json::from_str(&text).expect("cases.json parses");
        assert_eq!(
            set.pillow_version, "13.0.0",
            "goldens must come from Pillow 13.0.0"
        );
        assert!(set.cases.len() >= 10, "golden set looks truncated");
        set
    }

    fn load_rgb(name: &str) -> RgbImage {
        let path = golden_dir().join(name);
        image::open(&path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
            .into_rgb8()
    }

    /// Describes the first differing pixel, or `None` when the images are byte-identical.
    fn first_mismatch(got: &RgbImage, want: &RgbImage) -> Option<String> {
        if got.dimensions() != want.dimensions() {
            return Some(format!(
                "size {:?}, expected {:?}",
                got.dimensions(),
                want.dimensions()
            ));
        }
        let differing = got
            .pixels()
            .zip(want.pixels())
            .filter(|(a, b)| a != b)
            .count();
        let (x, y, a, b) = got
            .enumerate_pixels()
            .zip(want.pixels())
            .find(|((_, _, a), b)| a != b)
            .map(|((x, y, a), b)| (x, y, a.0, b.0))?;
        Some(format!(
            "first mismatch at (x={x}, y={y}): got {a:?}, Pillow {b:?}; {differing} of {} pixels differ",
            got.width() * got.height()
        ))
    }

    #[test]
    fn golden_pillow_bilinear_is_byte_identical() {
        let set = golden_set();
        let mut failures = Vec::new();
        for case in &set.cases {
            let src = load_rgb(&case.input);
            assert_eq!(
                src.dimensions(),
                (case.in_size[0], case.in_size[1]),
                "{}",
                case.name
            );
            let want = load_rgb(&case.pillow);
            let got = resize_bilinear_pillow(&src, case.out_size[0], case.out_size[1]);
            if let Some(msg) = first_mismatch(&got, &want) {
                failures.push(format!("{}: {msg}", case.name));
            }
            // The cached resampler must give the same bytes as the free function.
            let cached =
                PillowBilinear::new(src.width(), src.height(), want.width(), want.height());
            assert_eq!(cached.resize(&src).as_ref(), Ok(&got), "{}", case.name);
        }
        assert!(
            failures.is_empty(),
            "not Pillow-exact:\n{}",
            failures.join("\n")
        );
    }

    #[test]
    fn goldens_exercise_both_pass_orders_and_the_rule_matches() {
        let set = golden_set();
        for case in &set.cases {
            let r = PillowBilinear::new(
                case.in_size[0],
                case.in_size[1],
                case.out_size[0],
                case.out_size[1],
            );
            assert_eq!(r.vertical_first(), case.vertical_first, "{}", case.name);
        }
        // `order_matters` means the generator checked that the other order gives other bytes, so
        // the byte-equality test above fails if the order rule is wrong either way.
        for vertical_first in [true, false] {
            assert!(
                set.cases
                    .iter()
                    .any(|c| c.vertical_first == vertical_first && c.order_matters),
                "no golden where order matters with vertical_first = {vertical_first}"
            );
        }
    }

    #[test]
    fn image_crate_triangle_is_not_pillow_exact() {
        // Proves the golden comparison can fail: a close-but-different bilinear is caught.
        let set = golden_set();
        let caught = set
            .cases
            .iter()
            .filter(|c| c.in_size != c.out_size)
            .any(|case| {
                let src = load_rgb(&case.input);
                let want = load_rgb(&case.pillow);
                let other = image::imageops::resize(
                    &src,
                    case.out_size[0],
                    case.out_size[1],
                    image::imageops::FilterType::Triangle,
                );
                first_mismatch(&other, &want).is_some()
            });
        assert!(caught, "image's Triangle filter matched every golden");
    }

    #[test]
    fn golden_torchvision_matches_float64_reference() {
        let set = golden_set();
        let mut checked = 0;
        for case in set.cases.iter().filter(|c| c.tv16.is_some()) {
            let Some(tv16) = &case.tv16 else { continue };
            let path = golden_dir().join(tv16);
            let planes = image::open(&path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
                .into_luma16();
            let (w, h) = (case.out_size[0], case.out_size[1]);
            assert_eq!(planes.dimensions(), (w, 3 * h), "{}", case.name);
            let got = resize_torchvision_antialias(&load_rgb(&case.input), w, h);
            assert_eq!(got.len(), planes.as_raw().len(), "{}", case.name);
            let (worst, at) = got
                .iter()
                .zip(planes.as_raw())
                .map(|(&g, &q)| (f64::from(g) - f64::from(q) / set.tv16_scale).abs())
                .enumerate()
                .fold(
                    (0.0f64, 0),
                    |best, (i, d)| if d > best.0 { (d, i) } else { best },
                );
            // 16-bit storage is good to 7.7e-6; float32 arithmetic adds ~1e-6.
            assert!(
                worst < 1e-4,
                "{}: {worst:.2e} off the float64 reference at CHW index {at}",
                case.name
            );
            checked += 1;
        }
        assert!(checked >= 5, "too few torchvision goldens ({checked})");
    }

    #[test]
    fn hand_computed_small_cases() {
        // 2x1 -> 4x1 (upscale, support 1): centres 0.25, 0.75, 1.25, 1.75 give weights
        // [1, 0], [.75, .25], [.25, .75], [0, 1]; 63.75 rounds to 64 and 191.25 to 191.
        let src = RgbImage::from_raw(2, 1, vec![0, 10, 200, 255, 21, 100]).expect("2x1");
        let up = resize_bilinear_pillow(&src, 4, 1);
        assert_eq!(
            up.as_raw(),
            &[0, 10, 200, 64, 13, 175, 191, 18, 125, 255, 21, 100]
        );
        // 2x1 -> 1x1 (shrink by 2, support 2): both pixels weigh 1/2, halves round up.
        let down = resize_bilinear_pillow(&src, 1, 1);
        assert_eq!(down.as_raw(), &[128, 16, 150]);
        // The float path keeps the fractions: 63.75 / 255 = 0.25, 15.5 / 255 ...
        let tv = resize_torchvision_antialias(&src, 4, 1);
        let want = [0.0, 0.25, 0.75, 1.0];
        for (g, w) in tv[..4].iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{tv:?}");
        }
        let tv = resize_torchvision_antialias(&src, 1, 1);
        for (g, w) in tv.iter().zip([127.5, 15.5, 150.0]) {
            assert!((g * 255.0 - w).abs() < 1e-4, "{tv:?}");
        }
    }

    #[test]
    fn cached_resampler_rejects_other_input_sizes() {
        let r = PillowBilinear::new(10, 8, 4, 4);
        let err = r.resize(&RgbImage::new(8, 10)).expect_err("wrong size");
        assert_eq!(
            err,
            ResizeError::InputSize {
                expected_width: 10,
                expected_height: 8,
                width: 8,
                height: 10
            }
        );
        assert!(err.to_string().contains("10x8"), "{err}");
        let t = TorchvisionAntialias::new(10, 8, 4, 4);
        assert!(t.resize(&RgbImage::new(8, 10)).is_err());
        assert_eq!(t.resize(&RgbImage::new(10, 8)).map(|v| v.len()), Ok(48));
    }

    #[test]
    fn degenerate_sizes_do_not_panic() {
        let src = RgbImage::from_pixel(3, 2, image::Rgb([9, 9, 9]));
        assert_eq!(resize_bilinear_pillow(&src, 0, 5).dimensions(), (0, 5));
        assert!(resize_torchvision_antialias(&src, 4, 0).is_empty());
        // Pillow returns black for an empty source.
        let empty = RgbImage::new(0, 4);
        let out = resize_bilinear_pillow(&empty, 3, 3);
        assert_eq!(out.as_raw(), &[0u8; 27]);
        assert_eq!(resize_torchvision_antialias(&empty, 2, 2), vec![0.0; 12]);
    }

    /// A camera-sized frame through the cached path (buffers reused between sizes and both pass
    /// orders) gives the scalar reference's bytes; this runs the AVX2 kernel's unrolled group
    /// counts and its edge fallback on large rows.
    #[test]
    fn camera_frames_through_reused_buffers_equal_the_scalar_reference() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let src = RgbImage::from_fn(1280, 1024, |_, _| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
        });
        let mut cache = ResizeCache::default();
        for (w, h) in [
            (256, 256),
            (224, 176),
            (1280, 300),
            (640, 1024),
            (333, 1001),
            (64, 50),
        ] {
            for kind in [Resampler8::Pillow, Resampler8::TorchvisionUint8] {
                let mut r = match kind {
                    Resampler8::Pillow => PillowBilinear::new(1280, 1024, w, h),
                    Resampler8::TorchvisionUint8 => {
                        PillowBilinear::torchvision_uint8(1280, 1024, w, h)
                    }
                };
                // The fast path under test is the one this CPU dispatches to.
                #[cfg(target_arch = "x86_64")]
                if let Some(pass) = &r.horizontal {
                    assert_eq!(pass.avx2.is_some(), avx2::available());
                }
                let want = r.apply_scalar(&src);
                assert_eq!(
                    cache.resize(&src, w, h, kind),
                    want.as_slice(),
                    "{kind:?} {w}x{h}"
                );
                r.vertical_first = !r.vertical_first;
                let (mut tmp, mut out) = (vec![7; 3], vec![9; 5]);
                r.apply_into(src.as_raw(), &mut tmp, &mut out);
                assert_eq!(out, r.apply_scalar(&src), "{kind:?} {w}x{h}, other order");
            }
        }
    }

    fn image_strategy(max_side: u32) -> impl Strategy<Value = RgbImage> {
        (1..=max_side, 1..=max_side).prop_flat_map(|(w, h)| {
            proptest::collection::vec(any::<u8>(), (w * h * 3) as usize)
                .prop_map(move |data| RgbImage::from_raw(w, h, data).expect("length matches"))
        })
    }

    proptest! {
        #[test]
        fn constant_image_stays_constant(
            color in any::<[u8; 3]>(),
            (w, h) in (1u32..=80, 1u32..=80),
            (ow, oh) in (1u32..=100, 1u32..=100),
        ) {
            let src = RgbImage::from_pixel(w, h, image::Rgb(color));
            let out = resize_bilinear_pillow(&src, ow, oh);
            prop_assert_eq!(out.dimensions(), (ow, oh));
            prop_assert!(out.pixels().all(|p| p.0 == color));
            let tv = resize_torchvision_antialias(&src, ow, oh);
            let plane = (ow * oh) as usize;
            prop_assert_eq!(tv.len(), 3 * plane);
            for (c, &v) in color.iter().enumerate() {
                let want = f32::from(v) / 255.0;
                prop_assert!(tv[c * plane..][..plane].iter().all(|x| (x - want).abs() < 1e-5));
            }
        }

        #[test]
        fn same_size_is_identity(src in image_strategy(32)) {
            let (w, h) = src.dimensions();
            prop_assert_eq!(&resize_bilinear_pillow(&src, w, h), &src);
            let tv = resize_torchvision_antialias(&src, w, h);
            let plane = (w * h) as usize;
            for (i, px) in src.pixels().enumerate() {
                for c in 0..3 {
                    prop_assert_eq!(tv[c * plane + i], f32::from(px.0[c]) / 255.0);
                }
            }
        }

        /// The fast kernels (AVX2 where the CPU has it, the chunked vertical pass elsewhere)
        /// give the scalar reference's bytes, for both references and both pass orders.
        #[test]
        fn fast_kernels_equal_the_scalar_reference(
            src in image_strategy(90),
            (ow, oh) in (1u32..=100, 1u32..=100),
            torch in any::<bool>(),
        ) {
            let (w, h) = src.dimensions();
            let mut r = if torch {
                PillowBilinear::torchvision_uint8(w, h, ow, oh)
            } else {
                PillowBilinear::new(w, h, ow, oh)
            };
            for _ in 0..2 {
                let fast = r.apply(&src);
                prop_assert_eq!(fast.as_raw(), &r.apply_scalar(&src), "{:?}", (w, h, ow, oh));
                r.vertical_first = !r.vertical_first;
            }
        }

        /// Both paths share the weights; Pillow rounds to 8 bits after each pass (at most half
        /// a level each, and weights sum to one), so they stay within one level of each other.
        #[test]
        fn torchvision_path_is_pillow_without_rounding(
            src in image_strategy(40),
            (ow, oh) in (1u32..=60, 1u32..=60),
        ) {
            let pil = resize_bilinear_pillow(&src, ow, oh);
            prop_assert_eq!(pil.dimensions(), (ow, oh));
            let tv = resize_torchvision_antialias(&src, ow, oh);
            let plane = (ow * oh) as usize;
            prop_assert_eq!(tv.len(), 3 * plane);
            for (i, px) in pil.pixels().enumerate() {
                for c in 0..3 {
                    let v = tv[c * plane + i];
                    prop_assert!((-1e-6..=1.0 + 1e-6).contains(&v), "{} out of range", v);
                    let diff = (v * 255.0 - f32::from(px.0[c])).abs();
                    prop_assert!(diff <= 1.0 + 1e-3, "pixel {} channel {}: {}", i, c, diff);
                }
            }
        }
    }
}
