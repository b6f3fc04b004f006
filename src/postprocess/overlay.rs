//! Heat-map overlay at the original image size.
//!
//! Job: show an operator where the model looked: the anomaly map is upscaled (bilinear) to the
//! area it covers, coloured with Google's Turbo colour map, alpha-blended over the original image,
//! and the defect regions are outlined on top.
//!
//! Invariants:
//! - The output has the original's size; pixels outside the area the map covers (the ROI) are
//!   the original's, except where a region outline is drawn.
//! - Map values are mapped to colours through `OverlayOptions::range` and clamped, **before**
//!   upscaling: the interpolation then only ever sees finite values in `[0, 1]`, so NaN (drawn as
//!   the cold end) and infinities cannot spread into neighbouring pixels.
//! - Drawn only on request (not on the per-frame path), so it works at the original size.

use fast_image_resize::images::TypedImage;
use fast_image_resize::pixels::F32;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::{AnomalyMap, DefectRegion, SourceGeometry};

/// How [`render_overlay`] draws the heat map and the region outlines.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OverlayOptions {
    /// Opacity of the heat map, from 0 (invisible) to 1 (opaque); clamped to that range, and NaN
    /// draws no heat map. Default 0.4.
    pub alpha: f32,
    /// Map values drawn as the coldest and the hottest colour; values outside are clamped.
    /// Default `(0.0, 1.0)`: anomalib normalises its maps so that the threshold sits at 0.5.
    pub range: (f32, f32),
    /// Colour of the region outlines (RGB). Default magenta, a hue the Turbo map never uses.
    pub outline_rgb: [u8; 3],
    /// Outline thickness in original-image pixels, drawn inside each box; 0 draws none.
    /// Default 2.
    pub outline_px: u32,
}

impl Default for OverlayOptions {
    fn default() -> Self {
        OverlayOptions {
            alpha: 0.4,
            range: (0.0, 1.0),
            outline_rgb: [255, 0, 255],
            outline_px: 2,
        }
    }
}

/// Blends a colour-mapped anomaly map over `original` and outlines `regions`.
///
/// The map covers `geometry.roi` when there is one, else the whole `original` (whose own size is
/// authoritative). It is upscaled to that area with bilinear interpolation, coloured with Turbo
/// (blue = `options.range.0` or below, dark red = `options.range.1` or above) and blended with
/// `options.alpha`; nothing outside that area changes. Then each region's bounding box (in
/// original pixels, clipped to the image) gets an outline `options.outline_px` wide, inside the
/// box.
///
/// Never panics on odd input: a map whose `values.len()` is not `width × height`, an empty map,
/// or an ROI that does not fit inside `original` (pre-processing rejects those) draws no heat map,
/// only the outlines; NaN map values draw as the cold end.
pub fn render_overlay(
    original: &RgbImage,
    map: &AnomalyMap,
    geometry: SourceGeometry,
    regions: &[DefectRegion],
    options: &OverlayOptions,
) -> RgbImage {
    let mut out = original.clone();
    render_overlay_in_place(&mut out, map, geometry, regions, options);
    out
}

/// [`render_overlay`] drawn onto `image` itself, for a caller that no longer needs the
/// original pixels (an upload's decoded image): no copy of a camera-sized frame.
pub fn render_overlay_in_place(
    image: &mut RgbImage,
    map: &AnomalyMap,
    geometry: SourceGeometry,
    regions: &[DefectRegion],
    options: &OverlayOptions,
) {
    if let Some(area) = covered_area(image, geometry)
        && let Some(positions) = colour_positions(map, options.range)
    {
        let blender = Blender::new(options.alpha);
        let (x0, y0, tw, th) = area;
        let stride = image.width() as usize * 3;
        let raw: &mut [u8] = image;
        let mut draw = |y: u32, heat: &[f32]| {
            let start = (y0 + y) as usize * stride + x0 as usize * 3;
            blender.row(&mut raw[start..start + tw as usize * 3], heat);
        };
        if tw >= map.width && th >= map.height {
            enlarge_rows(&positions, (map.width, map.height), (tw, th), &mut draw);
        } else if let Some(heat) = triangle_resized(positions, (map.width, map.height), (tw, th)) {
            for (y, row) in heat.chunks_exact(tw as usize).enumerate() {
                draw(y as u32, row);
            }
        }
    }
    for region in regions {
        outline(image, region, options.outline_px, options.outline_rgb);
    }
}

/// The rectangle `(x, y, width, height)` of `original` that the map covers, if it is non-empty
/// and lies inside the image.
fn covered_area(original: &RgbImage, geometry: SourceGeometry) -> Option<(u32, u32, u32, u32)> {
    let (iw, ih) = original.dimensions();
    let (x, y, w, h) = match geometry.roi {
        Some(roi) => (roi.x, roi.y, roi.width, roi.height),
        None => (0, 0, iw, ih),
    };
    let fits = w > 0
        && h > 0
        && x.checked_add(w).is_some_and(|r| r <= iw)
        && y.checked_add(h).is_some_and(|b| b <= ih);
    fits.then_some((x, y, w, h))
}

/// The map's values as colour positions in `[0, 1]` (NaN → 0), row-major at the map's size;
/// `None` for an empty map or one whose `values` do not match its size.
fn colour_positions(map: &AnomalyMap, (lo, hi): (f32, f32)) -> Option<Vec<f32>> {
    let (mw, mh) = (map.width as usize, map.height as usize);
    if mw == 0 || mh == 0 || mw.checked_mul(mh) != Some(map.values.len()) {
        return None;
    }
    // hi == lo divides by zero on purpose: ±inf clamps to the hot or cold end, 0/0 is NaN → cold.
    let scale = 1.0 / (hi - lo);
    Some(
        map.values
            .iter()
            .map(|&v| {
                let t = (v - lo) * scale;
                if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) }
            })
            .collect(),
    )
}

/// Bilinear taps of one axis when enlarging `src` samples to `dst` (pixel centres aligned,
/// edges clamped): per destination sample, the two source indices and the weight of the second.
/// This is what a convolution with the triangle filter gives when enlarging.
fn enlarge_taps(src: u32, dst: u32) -> Vec<(usize, usize, f32)> {
    let last = src as usize - 1;
    let scale = f64::from(src) / f64::from(dst);
    (0..dst)
        .map(|d| {
            let centre = (f64::from(d) + 0.5) * scale - 0.5;
            if centre <= 0.0 {
                (0, 0, 0.0)
            } else if centre >= last as f64 {
                (last, last, 0.0)
            } else {
                let i = centre.floor();
                (i as usize, i as usize + 1, (centre - i) as f32)
            }
        })
        .collect()
}

/// Enlarges `positions` (`mw × mh`) to `tw × th` with bilinear interpolation, one output row at a
/// time, handing each row to `draw`: the camera-sized image is never held in floating point
/// (a 1280 × 1024 area would take 5 MB and a pass over memory per stage).
fn enlarge_rows(
    positions: &[f32],
    (mw, mh): (u32, u32),
    (tw, th): (u32, u32),
    draw: &mut impl FnMut(u32, &[f32]),
) {
    let (xs, ys) = (enlarge_taps(mw, tw), enlarge_taps(mh, th));
    let mw = mw as usize;
    let mut column_mix = vec![0.0_f32; mw];
    let mut row = vec![0.0_f32; tw as usize];
    for (y, &(r0, r1, wy)) in ys.iter().enumerate() {
        let (top, bottom) = (&positions[r0 * mw..][..mw], &positions[r1 * mw..][..mw]);
        for ((m, &a), &b) in column_mix.iter_mut().zip(top).zip(bottom) {
            *m = a + (b - a) * wy;
        }
        for (t, &(c0, c1, wx)) in row.iter_mut().zip(&xs) {
            let (a, b) = (column_mix[c0], column_mix[c1]);
            *t = a + (b - a) * wx;
        }
        draw(y as u32, &row);
    }
}

/// Resizes `positions` (`mw × mh`) to `tw × th` with a triangle-filter convolution, row-major.
/// Used when the map is larger than the area it covers (rare): the convolution averages rather
/// than skips the map's values, so a small hot spot is not lost between samples.
fn triangle_resized(
    positions: Vec<f32>,
    (mw, mh): (u32, u32),
    (tw, th): (u32, u32),
) -> Option<Vec<f32>> {
    let pixels = positions.into_iter().map(F32::new).collect();
    let src = TypedImage::from_pixels(mw, mh, pixels).ok()?;
    let mut dst = TypedImage::<F32>::new(tw, th);
    let bilinear = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    // Cannot fail: same pixel type on both sides, no crop, sizes checked by the caller.
    Resizer::new()
        .resize_typed(&src, &mut dst, &bilinear)
        .ok()?;
    Some(dst.pixels().iter().map(|p| p.0).collect())
}

/// Alpha-blends Turbo colours onto rows of RGB pixels.
struct Blender {
    /// Per colour position (0..=255): `alpha × colour + 0.5`, the 0.5 making the final `as u8`
    /// round to nearest.
    tinted: [[f32; 3]; 256],
    /// Per original channel value: `(1 − alpha) × value`.
    kept: [f32; 256],
}

impl Blender {
    fn new(alpha: f32) -> Blender {
        let alpha = if alpha.is_nan() {
            0.0
        } else {
            alpha.clamp(0.0, 1.0)
        };
        let keep = 1.0 - alpha;
        let lut = turbo_lut();
        Blender {
            tinted: lut.map(|c| c.map(|v| alpha * f32::from(v) + 0.5)),
            kept: std::array::from_fn(|v| keep * v as f32),
        }
    }

    /// Blends the colours of `heat` (positions in `[0, 1]`) onto `pixels` (RGB, as many pixels).
    fn row(&self, pixels: &mut [u8], heat: &[f32]) {
        for (pixel, &t) in pixels.chunks_exact_mut(3).zip(heat) {
            // Bilinear weights are non-negative and sum to 1, so `t` stays in [0, 1]; the clamp
            // only guards the index against rounding. `+ 0.5` then truncation rounds to nearest
            // (`f32::round` is a library call on baseline x86-64, once per pixel).
            let index = (t.clamp(0.0, 1.0) * 255.0 + 0.5) as usize;
            let colour = &self.tinted[index.min(255)];
            for (channel, add) in pixel.iter_mut().zip(colour) {
                // In [0, 255.5]: `as` saturates, so 255.5 cannot wrap.
                *channel = (self.kept[usize::from(*channel)] + add) as u8;
            }
        }
    }
}

/// Draws the inside border of `region`'s box, clipped to the image, `thickness` pixels wide.
fn outline(out: &mut RgbImage, region: &DefectRegion, thickness: u32, rgb: [u8; 3]) {
    let (iw, ih) = out.dimensions();
    let (x0, y0) = (region.x.min(iw), region.y.min(ih));
    let x1 = region.x.saturating_add(region.width).min(iw);
    let y1 = region.y.saturating_add(region.height).min(ih);
    if thickness == 0 || x0 >= x1 || y0 >= y1 {
        return;
    }
    // The box is clipped first and the visible part outlined, so a box running off the image
    // still reads as a closed shape.
    let stride = iw as usize * 3;
    let raw: &mut [u8] = out;
    let mut fill = |y: u32, from: u32, to: u32| {
        let start = y as usize * stride + from as usize * 3;
        for pixel in raw[start..start + (to - from) as usize * 3].chunks_exact_mut(3) {
            pixel.copy_from_slice(&rgb);
        }
    };
    let band_x = x0.saturating_add(thickness).min(x1);
    let band_x1 = x1.saturating_sub(thickness).max(band_x);
    for y in y0..y1 {
        if y < y0.saturating_add(thickness) || y >= y1.saturating_sub(thickness) {
            fill(y, x0, x1);
        } else {
            fill(y, x0, band_x);
            fill(y, band_x1, x1);
        }
    }
}

/// Turbo, sampled at every 8th entry (and the last) of the official 256-entry table published
/// by Google with the colour map (Anton Mikhailov, "Turbo, An Improved Rainbow Colormap for
/// Visualization", Google AI Blog, 2019; table in gist mikhailov-work/ee72ba4191942acecc03fe6da94fc73f,
/// Apache-2.0). Linear interpolation between these 33 points reproduces the full table within
/// 1.8/255 per channel, while the well-known 5th-degree polynomial fit misses it by up to 32/255
/// at the blue end.
const TURBO_CONTROL: [(u8, [f32; 3]); 33] = [
    (0, [0.18995, 0.07176, 0.23217]),
    (8, [0.22500, 0.16354, 0.45096]),
    (16, [0.25107, 0.25237, 0.63374]),
    (24, [0.26816, 0.33825, 0.78050]),
    (32, [0.27628, 0.42118, 0.89123]),
    (40, [0.27543, 0.50115, 0.96594]),
    (48, [0.25862, 0.57958, 0.99876]),
    (56, [0.21382, 0.65886, 0.97959]),
    (64, [0.15844, 0.73551, 0.92305]),
    (72, [0.11167, 0.80569, 0.84525]),
    (80, [0.09267, 0.86554, 0.76230]),
    (88, [0.12014, 0.91193, 0.68660]),
    (96, [0.19659, 0.94901, 0.59466]),
    (104, [0.30513, 0.97697, 0.48987]),
    (112, [0.42778, 0.99419, 0.38575]),
    (120, [0.54658, 0.99907, 0.29581]),
    (128, [0.64362, 0.98999, 0.23356]),
    (136, [0.72596, 0.96470, 0.20640]),
    (144, [0.80473, 0.92452, 0.20459]),
    (152, [0.87530, 0.87267, 0.21555]),
    (160, [0.93301, 0.81236, 0.22667]),
    (168, [0.97323, 0.74682, 0.22536]),
    (176, [0.99314, 0.67408, 0.20348]),
    (184, [0.99593, 0.58703, 0.16899]),
    (192, [0.98360, 0.49291, 0.12849]),
    (200, [0.95801, 0.39958, 0.08831]),
    (208, [0.92105, 0.31489, 0.05475]),
    (216, [0.87422, 0.24526, 0.03297]),
    (224, [0.81608, 0.18462, 0.01809]),
    (232, [0.74617, 0.13098, 0.00851]),
    (240, [0.66449, 0.08436, 0.00424]),
    (248, [0.57103, 0.04474, 0.00529]),
    (255, [0.47960, 0.01583, 0.01055]),
];

/// The 256-entry 8-bit Turbo table, interpolated from [`TURBO_CONTROL`]. Built per call: 256
/// entries cost nothing next to blending an image.
fn turbo_lut() -> [[u8; 3]; 256] {
    let mut lut = [[0_u8; 3]; 256];
    for pair in TURBO_CONTROL.windows(2) {
        let ((i0, c0), (i1, c1)) = (pair[0], pair[1]);
        for i in i0..=i1 {
            let f = f32::from(i - i0) / f32::from(i1 - i0);
            lut[usize::from(i)] = [0, 1, 2].map(|k| {
                let v = c0[k] + (c1[k] - c0[k]) * f;
                (v * 255.0).round().clamp(0.0, 255.0) as u8
            });
        }
    }
    lut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::Roi;
    use image::Rgb;

    const GREY: Rgb<u8> = Rgb([200, 200, 200]);

    fn grey(width: u32, height: u32) -> RgbImage {
        RgbImage::from_pixel(width, height, GREY)
    }

    fn uniform(width: u32, height: u32, v: f32) -> AnomalyMap {
        AnomalyMap {
            width,
            height,
            values: vec![v; (width * height) as usize],
        }
    }

    /// A `side × side` map of zeros with ones at `rows × cols`.
    fn hot_block(
        side: u32,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> AnomalyMap {
        let mut map = uniform(side, side, 0.0);
        for row in rows {
            for col in cols.clone() {
                map.values[row * side as usize + col] = 1.0;
            }
        }
        map
    }

    fn whole(image: &RgbImage) -> SourceGeometry {
        SourceGeometry {
            width: image.width(),
            height: image.height(),
            roi: None,
        }
    }

    fn opaque() -> OverlayOptions {
        OverlayOptions {
            alpha: 1.0,
            ..OverlayOptions::default()
        }
    }

    /// Each channel within `tol` of `want`.
    fn assert_close(got: Rgb<u8>, want: [u8; 3], tol: u8, what: &str) {
        let ok = got.0.iter().zip(want).all(|(g, w)| g.abs_diff(w) <= tol);
        assert!(ok, "{what}: got {:?}, want {want:?} ± {tol}", got.0);
    }

    #[test]
    fn lut_matches_the_published_turbo_table_between_control_points() {
        // Entries of the official table that are not control points, × 255 and rounded by hand.
        let lut = turbo_lut();
        for (index, want) in [
            (4, [53, 30, 88]),
            (60, [47, 178, 244]),
            (100, [63, 246, 138]),
            (127, [161, 253, 61]),
            (180, [254, 161, 48]),
            (220, [216, 55, 6]),
            (252, [133, 7, 2]),
        ] {
            assert_close(Rgb(lut[index]), want, 2, &format!("turbo[{index}]"));
        }
        assert_eq!(lut[0], [48, 18, 59]);
        assert_eq!(lut[255], [122, 4, 3]);
    }

    #[test]
    fn output_has_the_original_size() {
        let original = grey(123, 45);
        let map = uniform(16, 16, 0.3);
        let out = render_overlay(
            &original,
            &map,
            whole(&original),
            &[],
            &OverlayOptions::default(),
        );
        assert_eq!(out.dimensions(), (123, 45));
    }

    #[test]
    fn zero_map_blends_the_cold_colour_everywhere() {
        let original = grey(64, 48);
        let map = uniform(16, 16, 0.0);
        let out = render_overlay(
            &original,
            &map,
            whole(&original),
            &[],
            &OverlayOptions::default(),
        );
        // Turbo(0) = (0.18995, 0.07176, 0.23217) → (48, 18, 59); 0.6 × 200 + 0.4 × colour.
        for pixel in out.pixels() {
            assert_close(*pixel, [139, 127, 144], 1, "cold blend");
        }
    }

    #[test]
    fn hot_spot_is_hot_at_its_location_and_cold_elsewhere() {
        // 16 × 16 map on a 160 × 160 image (10 px per map pixel); hot block at columns 8..12,
        // rows 4..8, i.e. original x 80..120, y 40..80.
        let original = grey(160, 160);
        let map = hot_block(16, 4..8, 8..12);
        let out = render_overlay(&original, &map, whole(&original), &[], &opaque());
        // Turbo(1) = (0.47960, 0.01583, 0.01055) → (122, 4, 3): dark red.
        assert_close(*out.get_pixel(100, 60), [122, 4, 3], 1, "hot spot centre");
        assert_close(*out.get_pixel(10, 150), [48, 18, 59], 1, "far corner");
        // Bilinear, not nearest: just outside the block the colour is in between.
        let edge = out.get_pixel(78, 60);
        assert!(edge.0 != [122, 4, 3] && edge.0 != [48, 18, 59], "{edge:?}");
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// The row-by-row enlargement is the triangle-filter convolution that `triangle_resized` (and the
        /// usual resize libraries) compute, for any map and any enlargement.
        #[test]
        fn enlarging_row_by_row_is_the_triangle_filter_convolution(
            (mw, mh, values) in (1u32..12, 1u32..12).prop_flat_map(|(w, h)| {
                (
                    proptest::strategy::Just(w),
                    proptest::strategy::Just(h),
                    proptest::collection::vec(0.0f32..=1.0, (w * h) as usize),
                )
            }),
            (fx, fy) in (1u32..9, 1u32..9),
            (ex, ey) in (0u32..7, 0u32..7),
        ) {
            let (tw, th) = (mw * fx + ex, mh * fy + ey);
            let mut rows = Vec::new();
            enlarge_rows(&values, (mw, mh), (tw, th), &mut |y, row: &[f32]| {
                assert_eq!(y as usize, rows.len() / tw as usize, "rows in order");
                rows.extend_from_slice(row);
            });
            let convolved = triangle_resized(values, (mw, mh), (tw, th)).unwrap();
            proptest::prop_assert_eq!(rows.len(), convolved.len());
            for (i, (got, want)) in rows.iter().zip(&convolved).enumerate() {
                proptest::prop_assert!(
                    (got - want).abs() < 1e-5,
                    "pixel {} of {}x{}: {} vs {}", i, tw, th, got, want
                );
            }
        }
    }

    #[test]
    fn a_map_larger_than_its_area_is_averaged_not_sampled() {
        // 64 × 64 map on a 16 × 16 image: output pixel centres fall at map coordinates 1.5,
        // 5.5, …, 29.5, 33.5, so a plain bilinear lookup never sees the hot 2 × 2 block at 31..33;
        // averaging keeps it visible.
        let original = grey(16, 16);
        let map = hot_block(64, 31..33, 31..33);
        let out = render_overlay(&original, &map, whole(&original), &[], &opaque());
        assert_eq!(out.dimensions(), (16, 16));
        let warm = out.pixels().filter(|p| p.0 != [48, 18, 59]).count();
        assert!(warm > 0, "the hot spot vanished");
        assert_close(*out.get_pixel(0, 0), [48, 18, 59], 1, "cold corner");
    }

    #[test]
    fn range_maps_values_to_the_colour_scale() {
        let original = grey(20, 20);
        // 0.5 in (0, 1) is the middle of the scale: Turbo[127.5] ≈ lime (161..164, 252, 60).
        let out = render_overlay(
            &original,
            &uniform(4, 4, 0.5),
            whole(&original),
            &[],
            &opaque(),
        );
        assert_close(*out.get_pixel(10, 10), [163, 252, 60], 2, "mid scale");
        // The same 0.5 with range (0.5, 2.5) is the cold end, with range (-1.0, 0.5) the hot end.
        let shifted = OverlayOptions {
            range: (0.5, 2.5),
            ..opaque()
        };
        let out = render_overlay(
            &original,
            &uniform(4, 4, 0.5),
            whole(&original),
            &[],
            &shifted,
        );
        assert_close(*out.get_pixel(10, 10), [48, 18, 59], 1, "range low");
        let shifted = OverlayOptions {
            range: (-1.0, 0.5),
            ..opaque()
        };
        let out = render_overlay(
            &original,
            &uniform(4, 4, 0.5),
            whole(&original),
            &[],
            &shifted,
        );
        assert_close(*out.get_pixel(10, 10), [122, 4, 3], 1, "range high");
    }

    #[test]
    fn roi_leaves_outside_pixels_untouched() {
        // A textured original, so that "unchanged" cannot pass by coincidence.
        let original = RgbImage::from_fn(100, 80, |x, y| Rgb([x as u8, y as u8, (x + y) as u8]));
        let roi = Roi {
            x: 20,
            y: 10,
            width: 40,
            height: 30,
        };
        let geometry = SourceGeometry {
            width: 100,
            height: 80,
            roi: Some(roi),
        };
        let out = render_overlay(
            &original,
            &uniform(8, 8, 1.0),
            geometry,
            &[],
            &OverlayOptions::default(),
        );
        for (x, y, pixel) in out.enumerate_pixels() {
            let inside = (20..60).contains(&x) && (10..40).contains(&y);
            let before = original.get_pixel(x, y);
            if inside {
                let want = before.0.map(|c| 0.6 * f32::from(c));
                let want = [
                    (want[0] + 0.4 * 122.0).round() as u8,
                    (want[1] + 0.4 * 4.0).round() as u8,
                    (want[2] + 0.4 * 3.0).round() as u8,
                ];
                assert_close(*pixel, want, 1, &format!("inside ({x}, {y})"));
            } else {
                assert_eq!(pixel, before, "outside pixel ({x}, {y}) changed");
            }
        }
    }

    #[test]
    fn roi_outside_the_image_draws_no_heat_map() {
        let original = grey(50, 50);
        let geometry = SourceGeometry {
            width: 50,
            height: 50,
            roi: Some(Roi {
                x: 40,
                y: 0,
                width: 20,
                height: 20,
            }),
        };
        let out = render_overlay(&original, &uniform(4, 4, 1.0), geometry, &[], &opaque());
        assert_eq!(out, original);
    }

    #[test]
    fn nan_and_infinite_values_do_not_panic_or_spread() {
        let original = grey(80, 80);
        let mut map = uniform(8, 8, 1.0);
        map.values[0] = f32::NAN; // top-left map pixel, original 0..10 × 0..10
        map.values[63] = f32::INFINITY;
        map.values[7] = f32::NEG_INFINITY;
        let out = render_overlay(&original, &map, whole(&original), &[], &opaque());
        // NaN draws as the cold end; its neighbours stay hot instead of turning NaN-coloured.
        assert_close(*out.get_pixel(0, 0), [48, 18, 59], 1, "NaN pixel");
        assert_close(*out.get_pixel(40, 40), [122, 4, 3], 1, "hot centre");
        assert_close(*out.get_pixel(79, 79), [122, 4, 3], 1, "+inf pixel");
        assert_close(*out.get_pixel(79, 0), [48, 18, 59], 1, "-inf pixel");
        // Interpolated pixels between a NaN / -inf map pixel and its hot neighbour get an
        // in-between colour, not the cold end that a NaN leaking through the resize would give.
        for (x, y) in [(12, 5), (67, 5)] {
            let got = out.get_pixel(x, y).0;
            let far_from_cold = got
                .iter()
                .zip([48_u8, 18, 59])
                .any(|(g, c)| g.abs_diff(c) > 20);
            assert!(far_from_cold, "({x}, {y}) is {got:?}, the cold end");
        }
        // Bad options do not panic either.
        for options in [
            OverlayOptions {
                alpha: f32::NAN,
                ..OverlayOptions::default()
            },
            OverlayOptions {
                range: (f32::NAN, f32::NAN),
                ..OverlayOptions::default()
            },
            OverlayOptions {
                range: (0.5, 0.5),
                alpha: 7.0,
                ..OverlayOptions::default()
            },
        ] {
            let out = render_overlay(&original, &map, whole(&original), &[], &options);
            assert_eq!(out.dimensions(), (80, 80));
        }
    }

    #[test]
    fn malformed_or_empty_map_leaves_the_image_as_is() {
        let original = grey(30, 30);
        let short = AnomalyMap {
            width: 8,
            height: 8,
            values: vec![1.0; 10],
        };
        let empty = AnomalyMap {
            width: 0,
            height: 0,
            values: Vec::new(),
        };
        for map in [short, empty] {
            let out = render_overlay(&original, &map, whole(&original), &[], &opaque());
            assert_eq!(out, original);
        }
    }

    #[test]
    fn regions_are_outlined_two_pixels_wide_inside_their_box() {
        let original = grey(60, 40);
        let region = DefectRegion {
            x: 10,
            y: 10,
            width: 20,
            height: 10,
            area_px: 100,
            peak_score: 0.9,
        };
        // Alpha 0: only the outline changes the image.
        let options = OverlayOptions {
            alpha: 0.0,
            ..OverlayOptions::default()
        };
        let map = uniform(4, 4, 1.0);
        let out = render_overlay(&original, &map, whole(&original), &[region], &options);
        let magenta = Rgb([255, 0, 255]);
        for (x, y) in [(10, 10), (11, 11), (29, 19), (28, 18), (20, 11), (11, 15)] {
            assert_eq!(*out.get_pixel(x, y), magenta, "outline at ({x}, {y})");
        }
        for (x, y) in [(9, 9), (12, 12), (27, 17), (30, 20), (20, 15)] {
            assert_eq!(*out.get_pixel(x, y), GREY, "not outline at ({x}, {y})");
        }
        let changed = out.pixels().filter(|p| **p == magenta).count();
        // 20 × 10 box minus its 16 × 6 interior.
        assert_eq!(changed, 20 * 10 - 16 * 6);
    }

    #[test]
    fn outlines_are_clipped_to_the_image() {
        let original = grey(20, 20);
        let region = DefectRegion {
            x: 15,
            y: 15,
            width: u32::MAX,
            height: 10,
            area_px: 1,
            peak_score: 1.0,
        };
        let options = OverlayOptions {
            alpha: 0.0,
            ..OverlayOptions::default()
        };
        let out = render_overlay(
            &original,
            &uniform(2, 2, 0.0),
            whole(&original),
            &[region],
            &options,
        );
        assert_eq!(*out.get_pixel(15, 15), Rgb([255, 0, 255]));
        assert_eq!(*out.get_pixel(19, 19), Rgb([255, 0, 255]));
        assert_eq!(*out.get_pixel(17, 17), GREY);
    }
}
