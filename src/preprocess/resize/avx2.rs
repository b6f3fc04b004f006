//! AVX2 kernels of the 8-bit resamplers, chosen at run time when the CPU has AVX2.
//!
//! Invariant: **the same bytes as the scalar passes** in the parent module, for any weights and
//! sizes. The arithmetic is exact integer arithmetic, only reordered:
//!
//! * Horizontal pass: each 32-bit weight `w` is split into `hi = w >> 11` and `lo = w & 0x7ff`
//!   (so `w = hi * 2048 + lo` exactly, both halves fit an `i16`), and `vpmaddwd` multiplies
//!   pixel pairs by each half. `2048 * Σ p·hi + Σ p·lo` is `Σ p·w` in wrapping 32-bit
//!   arithmetic, which is what the scalar accumulator holds. Four taps of one output pixel go
//!   through one shuffle (two taps per 128-bit lane, channels as `i16` pairs), two output rows
//!   share each weight load.
//! * Vertical pass: the portable chunked kernel of the parent module, compiled with AVX2 so that
//!   its 32-bit multiplies become `vpmulld` (the x86-64 baseline has no 32-bit vector multiply).
//!
//! Safety: the only `unsafe` operations are unaligned 16-byte loads from slices that were sliced
//! to at least 16 bytes first, and calls into `#[target_feature(enable = "avx2")]` functions
//! after `is_x86_feature_detected!("avx2")` said yes.

use std::arch::x86_64::{
    __m128i, __m256i, _mm_add_epi32, _mm_cvtsi32_si128, _mm_cvtsi128_si32, _mm_loadu_si128,
    _mm_packs_epi32, _mm_packus_epi16, _mm_set1_epi32, _mm_sra_epi32, _mm256_add_epi32,
    _mm256_broadcastsi128_si256, _mm256_castsi256_si128, _mm256_extracti128_si256,
    _mm256_loadu_si256, _mm256_madd_epi16, _mm256_setr_epi8, _mm256_setzero_si256,
    _mm256_shuffle_epi8, _mm256_slli_epi32,
};

use super::{AxisTaps, clip8};

/// Bits of the low half of a split weight.
const LO_BITS: i32 = 11;

/// Whether this CPU runs the kernels of this module (the answer is cached by `std`).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Horizontal taps in the kernel's layout: per output pixel, groups of four taps, each group as
/// two `i16` vectors (high and low weight halves) laid out `[w0 w1 w0 w1 w0 w1 0 0 | w2 w3 w2
/// w3 w2 w3 0 0]` to match the pixel shuffle. Taps past a window's length weigh zero.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct PackedTaps {
    /// Four-tap groups per output pixel (the same for all, from the widest window).
    groups: usize,
    /// `2 * groups` vectors per output pixel: high then low half of each group.
    weights: Vec<[i16; 16]>,
}

impl PackedTaps {
    pub(super) fn new(taps: &AxisTaps<i32>) -> Self {
        let groups = taps.stride.div_ceil(4).max(1);
        let mut weights = Vec::with_capacity(taps.windows.len() * groups * 2);
        for (_, row) in taps.iter() {
            for g in 0..groups {
                let (mut hi, mut lo) = ([0i16; 16], [0i16; 16]);
                for k in 0..4 {
                    let w = row.get(g * 4 + k).copied().unwrap_or(0);
                    // Tap k sits in lane k / 2, at i16 position k % 2 of each channel pair.
                    let base = (k / 2) * 8 + k % 2;
                    for c in 0..3 {
                        hi[base + 2 * c] = (w >> LO_BITS) as i16;
                        lo[base + 2 * c] = (w & ((1 << LO_BITS) - 1)) as i16;
                    }
                }
                weights.push(hi);
                weights.push(lo);
            }
        }
        PackedTaps { groups, weights }
    }

    /// Whether the taps can be split exactly: every weight's high half fits an `i16`.
    pub(super) fn fits(taps: &AxisTaps<i32>) -> bool {
        let limit = i32::from(i16::MAX) << LO_BITS;
        taps.weights.iter().all(|&w| (-limit..limit).contains(&w))
    }
}

/// Horizontal pass on interleaved RGB rows of `in_w` pixels into `dst` (`rows` rows of
/// `taps.windows.len()` pixels). `packed` must come from `taps`.
pub(super) fn horizontal(
    src: &[u8],
    in_w: usize,
    taps: &AxisTaps<i32>,
    packed: &PackedTaps,
    dst: &mut [u8],
) {
    debug_assert!(available());
    // Constant group counts let the compiler unroll the tap loop for the usual shrink factors.
    // SAFETY: `available()` was checked when `packed` was built and is checked by the caller.
    unsafe {
        match packed.groups {
            1 => horizontal_avx2::<1>(src, in_w, taps, packed, dst),
            2 => horizontal_avx2::<2>(src, in_w, taps, packed, dst),
            3 => horizontal_avx2::<3>(src, in_w, taps, packed, dst),
            4 => horizontal_avx2::<4>(src, in_w, taps, packed, dst),
            _ => horizontal_avx2::<0>(src, in_w, taps, packed, dst),
        }
    }
}

/// Vertical pass: the portable kernel with AVX2 code generation.
pub(super) fn vertical(src: &[u8], row_len: usize, taps: &AxisTaps<i32>, dst: &mut [u8]) {
    debug_assert!(available());
    // SAFETY: the caller checked `available()`.
    unsafe { vertical_avx2(src, row_len, taps, dst) }
}

#[target_feature(enable = "avx2")]
fn vertical_avx2(src: &[u8], row_len: usize, taps: &AxisTaps<i32>, dst: &mut [u8]) {
    super::vertical_chunked(src, row_len, taps, dst);
}

/// Sixteen bytes of `window` from `at`; `window` must hold them.
#[inline(always)]
fn load16(window: &[u8], at: usize) -> __m128i {
    let bytes = &window[at..at + 16];
    // SAFETY: `bytes` is 16 readable bytes; the load has no alignment requirement.
    unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
}

#[inline(always)]
fn load_weights(w: &[i16; 16]) -> __m256i {
    // SAFETY: `w` is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(w.as_ptr().cast()) }
}

/// `G` four-tap groups per output pixel, or `G = 0` for `packed.groups` read at run time.
#[target_feature(enable = "avx2")]
fn horizontal_avx2<const G: usize>(
    src: &[u8],
    in_w: usize,
    taps: &AxisTaps<i32>,
    packed: &PackedTaps,
    dst: &mut [u8],
) {
    let groups = if G == 0 { packed.groups } else { G };
    let out_w = taps.windows.len();
    let row_len = in_w * 3;
    let out_len = out_w * 3;
    if out_len == 0 || row_len == 0 {
        return;
    }
    let bits = taps.precision;
    let half = 1i32 << (bits - 1);
    // Low lane: taps 0 and 1 of the 16 loaded bytes, high lane: taps 2 and 3; each channel as a
    // pair of zero-extended i16 values, the fourth pair zero.
    #[rustfmt::skip]
    let shuffle = _mm256_setr_epi8(
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1,
        6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
    );
    let half_v = _mm_set1_epi32(half);
    let shift = _mm_cvtsi32_si128(bits as i32);
    // Bytes one output pixel reads: the last group loads 16 bytes at its 12-byte offset.
    let span = (groups - 1) * 12 + 16;
    let finish = |hi: __m256i, lo: __m256i| -> [u8; 4] {
        let sum = _mm256_add_epi32(_mm256_slli_epi32(hi, LO_BITS), lo);
        let sum = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let v = _mm_sra_epi32(_mm_add_epi32(sum, half_v), shift);
        // Saturating packs clamp to 0..=255 exactly as `clip8` does.
        let v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);
        (_mm_cvtsi128_si32(v) as u32).to_le_bytes()
    };
    let rows = src.len() / row_len;
    let mut y = 0;
    while y < rows {
        // Two rows at a time share the weight loads; a last odd row runs alone.
        let pair = y + 1 < rows;
        let row0 = y * row_len;
        let (d0, rest) = dst[y * out_len..].split_at_mut(out_len);
        let mut d1 = if pair {
            Some(&mut rest[..out_len])
        } else {
            None
        };
        for (x, (&(start, _), weights)) in taps
            .windows
            .iter()
            .zip(packed.weights.chunks_exact(2 * groups))
            .enumerate()
        {
            let at = row0 + start * 3;
            let last_row_end = at + if pair { row_len } else { 0 } + span;
            if last_row_end > src.len() {
                // The padded loads would leave the buffer (right edge of the last rows).
                scalar_pixel(src, row0, taps, x, &mut d0[x * 3..x * 3 + 3]);
                if let Some(d1) = d1.as_deref_mut() {
                    scalar_pixel(src, row0 + row_len, taps, x, &mut d1[x * 3..x * 3 + 3]);
                }
                continue;
            }
            let w0 = &src[at..at + span];
            let (mut hi0, mut lo0) = (_mm256_setzero_si256(), _mm256_setzero_si256());
            if let Some(d1) = d1.as_deref_mut() {
                let w1 = &src[at + row_len..at + row_len + span];
                let (mut hi1, mut lo1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
                for g in 0..groups {
                    let (wh, wl) = (
                        load_weights(&weights[2 * g]),
                        load_weights(&weights[2 * g + 1]),
                    );
                    let p = _mm256_shuffle_epi8(
                        _mm256_broadcastsi128_si256(load16(w0, g * 12)),
                        shuffle,
                    );
                    hi0 = _mm256_add_epi32(hi0, _mm256_madd_epi16(p, wh));
                    lo0 = _mm256_add_epi32(lo0, _mm256_madd_epi16(p, wl));
                    let p = _mm256_shuffle_epi8(
                        _mm256_broadcastsi128_si256(load16(w1, g * 12)),
                        shuffle,
                    );
                    hi1 = _mm256_add_epi32(hi1, _mm256_madd_epi16(p, wh));
                    lo1 = _mm256_add_epi32(lo1, _mm256_madd_epi16(p, wl));
                }
                d1[x * 3..x * 3 + 3].copy_from_slice(&finish(hi1, lo1)[..3]);
            } else {
                for g in 0..groups {
                    let (wh, wl) = (
                        load_weights(&weights[2 * g]),
                        load_weights(&weights[2 * g + 1]),
                    );
                    let p = _mm256_shuffle_epi8(
                        _mm256_broadcastsi128_si256(load16(w0, g * 12)),
                        shuffle,
                    );
                    hi0 = _mm256_add_epi32(hi0, _mm256_madd_epi16(p, wh));
                    lo0 = _mm256_add_epi32(lo0, _mm256_madd_epi16(p, wl));
                }
            }
            d0[x * 3..x * 3 + 3].copy_from_slice(&finish(hi0, lo0)[..3]);
        }
        y += if pair { 2 } else { 1 };
    }
}

/// One output pixel the scalar way (the parent module's arithmetic).
fn scalar_pixel(src: &[u8], row_start: usize, taps: &AxisTaps<i32>, x: usize, out: &mut [u8]) {
    let (bits, half) = (taps.precision, 1i32 << (taps.precision - 1));
    let (start, len) = taps.windows[x];
    let weights = &taps.weights[x * taps.stride..][..len];
    let window = &src[row_start + start * 3..][..len * 3];
    let mut acc = [half; 3];
    for (px, &w) in window.chunks_exact(3).zip(weights) {
        for (a, &p) in acc.iter_mut().zip(px) {
            *a += i32::from(p) * w;
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = clip8(a, bits);
    }
}
