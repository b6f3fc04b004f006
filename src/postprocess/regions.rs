//! Defect regions: connected components of the thresholded anomaly map.
//!
//! Job: turn the anomaly map (model resolution, e.g. 256 × 256) into a short list of
//! [`DefectRegion`]s in original-image pixels, the way a user reads them off the heat map.
//!
//! Invariants:
//! - A map pixel belongs to a region when its value is **strictly** above the threshold, as
//!   anomalib's `pred_mask = anomaly_map > threshold`; NaN is never above it.
//! - Pixels are connected through all 8 neighbours, so a diagonal streak is one region.
//! - Components are found at model resolution; only their geometry is scaled, with exact integer
//!   arithmetic, so the cost is O(map pixels) whatever the camera resolution, and a box always
//!   covers every original pixel its map pixels cover.
//! - The output order is deterministic: area descending, then peak descending, then top-left
//!   corner (y, x) ascending, then discovery order (raster order of the first pixel).

use super::{AnomalyMap, DefectRegion, SourceGeometry};

/// A component at model resolution, before scaling.
#[derive(Debug, PartialEq)]
struct Component {
    col_min: u32,
    col_max: u32,
    row_min: u32,
    row_max: u32,
    count: u64,
    peak: f32,
}

/// The rectangle of the original image that the anomaly map covers.
struct Placement {
    x: u64,
    y: u64,
    width: u64,
    height: u64,
}

/// Connected components (8-connectivity) of `map > threshold`, scaled to original-image pixels.
///
/// - The map covers `geometry.roi` when there is one (offset by its x/y, scaled by
///   `roi.width / map.width` and `roi.height / map.height`), else the full
///   `geometry.width × geometry.height` image.
/// - Map column `c` covers original x in `[c·sx, (c+1)·sx)`: a box's left/top edge is floored and
///   its right/bottom edge ceiled, then clamped to the image, so the box never misses a covered
///   pixel.
/// - `area_px` is the component's pixel count × sx × sy, rounded (half up); `peak_score` is the
///   highest map value inside the component.
/// - Regions with `area_px < min_area_px` are dropped.
/// - Sorted by area descending, then peak descending, then (y, x) ascending.
///
/// NaN values are treated as not above the threshold (and a NaN threshold selects nothing). A
/// malformed map, whose `values.len()` is not `width × height`, has no regions: the model module
/// checks output shapes, so this is a guard against misuse, not a path taken on real frames.
pub fn extract_regions(
    map: &AnomalyMap,
    threshold: f32,
    geometry: SourceGeometry,
    min_area_px: u64,
) -> Vec<DefectRegion> {
    let (w, h) = (map.width as usize, map.height as usize);
    if w == 0 || h == 0 || w.checked_mul(h) != Some(map.values.len()) {
        return Vec::new();
    }
    let placement = match geometry.roi {
        Some(roi) => Placement {
            x: u64::from(roi.x),
            y: u64::from(roi.y),
            width: u64::from(roi.width),
            height: u64::from(roi.height),
        },
        None => Placement {
            x: 0,
            y: 0,
            width: u64::from(geometry.width),
            height: u64::from(geometry.height),
        },
    };

    let mut regions: Vec<DefectRegion> = components(map, threshold)
        .into_iter()
        .map(|c| scale(&c, map, &placement, geometry))
        .filter(|r| r.area_px >= min_area_px)
        .collect();
    // Stable sort: full ties keep discovery (raster) order, which is itself deterministic.
    regions.sort_by(|a, b| {
        b.area_px
            .cmp(&a.area_px)
            .then_with(|| b.peak_score.total_cmp(&a.peak_score))
            .then_with(|| (a.y, a.x).cmp(&(b.y, b.x)))
    });
    regions
}

/// Labels the map one row of runs at a time: each maximal horizontal run of above-threshold
/// pixels is a node, joined (union-find) with the runs of the row above that touch it, diagonals
/// included. The cost is one comparison per pixel plus a little per run, so a map that is mostly
/// above the threshold (a badly out-of-distribution part) costs no more than a clean one, where
/// a pixel-by-pixel flood fill visited every pixel's eight neighbours.
///
/// Components come out in discovery order (raster order of their first pixel): the union keeps
/// the older run as the root, and runs are numbered in raster order.
///
/// Hand-written rather than taken from a crate: it is short, runs on every frame, and the crates
/// that label components (`imageproc`) work on images of labels, pull in far more than this
/// needs, and would add a pass to build the binary image first.
fn components(map: &AnomalyMap, threshold: f32) -> Vec<Component> {
    let (w, h) = (map.width as usize, map.height as usize);
    let mut runs: Vec<Run> = Vec::new();
    let mut parent: Vec<u32> = Vec::new();
    let mut above = 0..0;
    for (row, values) in map.values.chunks_exact(w).take(h).enumerate() {
        let first = runs.len();
        let mut p = above.start;
        let mut c = 0;
        while c < w {
            // `v > threshold` is false for NaN on either side, which is exactly the rule we want.
            let hot = |v: f32| v > threshold;
            while c < w && !hot(values[c]) {
                c += 1;
            }
            if c == w {
                break;
            }
            let start = c;
            let mut peak = values[c];
            while c < w && values[c] > threshold {
                peak = peak.max(values[c]);
                c += 1;
            }
            let end = c - 1;
            // Casts are lossless: rows, columns and run counts are bounded by the map's u32
            // sides and its pixel count, which the caller checked fits in memory.
            let id = runs.len() as u32;
            runs.push(Run {
                row: row as u32,
                start: start as u32,
                end: end as u32,
                peak,
            });
            parent.push(id);
            // Runs of the row above touching columns start-1 ..= end+1 are connected.
            while p < above.end && (runs[p].end as usize) + 1 < start {
                p += 1;
            }
            let mut q = p;
            while q < above.end && (runs[q].start as usize) <= end + 1 {
                union(&mut parent, id, q as u32);
                q += 1;
            }
        }
        above = first..runs.len();
    }

    // One component per root, in root order (= discovery order).
    let mut slot = vec![u32::MAX; runs.len()];
    let mut found: Vec<Component> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let root = find(&mut parent, i as u32) as usize;
        if slot[root] == u32::MAX {
            slot[root] = found.len() as u32;
            found.push(Component {
                col_min: run.start,
                col_max: run.end,
                row_min: run.row,
                row_max: run.row,
                count: 0,
                peak: f32::NEG_INFINITY,
            });
        }
        let c = &mut found[slot[root] as usize];
        c.col_min = c.col_min.min(run.start);
        c.col_max = c.col_max.max(run.end);
        c.row_max = c.row_max.max(run.row);
        c.count += u64::from(run.end - run.start + 1);
        c.peak = c.peak.max(run.peak);
    }
    found
}

/// A maximal horizontal run of above-threshold pixels, `start..=end` on `row`.
struct Run {
    row: u32,
    start: u32,
    end: u32,
    peak: f32,
}

/// The root of `i`, halving the path on the way.
fn find(parent: &mut [u32], mut i: u32) -> u32 {
    while parent[i as usize] != i {
        let up = parent[parent[i as usize] as usize];
        parent[i as usize] = up;
        i = up;
    }
    i
}

/// Joins the sets of `a` and `b`; the smaller index (the older run) stays the root.
fn union(parent: &mut [u32], a: u32, b: u32) {
    let (ra, rb) = (find(parent, a), find(parent, b));
    if ra != rb {
        let (keep, child) = if ra < rb { (ra, rb) } else { (rb, ra) };
        parent[child as usize] = keep;
    }
}

/// Scales one component from map pixels to original-image pixels with exact integer arithmetic
/// (floating-point `c * sx` can land a hair below an integer edge and floor the wrong way).
fn scale(
    c: &Component,
    map: &AnomalyMap,
    placement: &Placement,
    geometry: SourceGeometry,
) -> DefectRegion {
    let (mw, mh) = (u64::from(map.width), u64::from(map.height));
    let floor_edge = |i: u32, span: u64, n: u64| u64::from(i) * span / n;
    let ceil_edge = |i: u32, span: u64, n: u64| (u64::from(i) * span).div_ceil(n);

    let clamp_x = |x: u64| x.min(u64::from(geometry.width));
    let clamp_y = |y: u64| y.min(u64::from(geometry.height));
    let left = clamp_x(placement.x + floor_edge(c.col_min, placement.width, mw));
    let right = clamp_x(placement.x + ceil_edge(c.col_max + 1, placement.width, mw));
    let top = clamp_y(placement.y + floor_edge(c.row_min, placement.height, mh));
    let bottom = clamp_y(placement.y + ceil_edge(c.row_max + 1, placement.height, mh));

    // count × (W / w) × (H / h), rounded half up; u128 so no realistic size can overflow.
    let num = u128::from(c.count) * u128::from(placement.width) * u128::from(placement.height);
    let den = u128::from(mw) * u128::from(mh);
    let area = (2 * num + den) / (2 * den);

    // Clamped values are <= the image's u32 sides, so these conversions cannot fail.
    let to_u32 = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    DefectRegion {
        x: to_u32(left),
        y: to_u32(top),
        width: to_u32(right - left),
        height: to_u32(bottom - top),
        area_px: u64::try_from(area).unwrap_or(u64::MAX),
        peak_score: c.peak,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::Roi;
    use proptest::prelude::*;

    const BELOW: u8 = 0;
    const ABOVE: u8 = 1;
    const TAKEN: u8 = 2;

    /// The plain flood fill the run labelling replaced, kept as the reference it is checked against.
    ///
    /// Hand-written rather than taken from a crate: it is twenty lines, runs on every frame, and the
    /// crates that have it (`imageproc`) pull in far more than this needs.
    fn components_flood(map: &AnomalyMap, threshold: f32) -> Vec<Component> {
        let (w, h) = (map.width as usize, map.height as usize);
        // `v > threshold` is false for NaN on either side, which is exactly the rule we want.
        let mut state: Vec<u8> = map
            .values
            .iter()
            .map(|&v| if v > threshold { ABOVE } else { BELOW })
            .collect();
        let mut stack: Vec<usize> = Vec::new();
        let mut found = Vec::new();

        for start in 0..state.len() {
            if state[start] != ABOVE {
                continue;
            }
            state[start] = TAKEN;
            stack.push(start);
            let mut c = Component {
                col_min: u32::MAX,
                col_max: 0,
                row_min: u32::MAX,
                row_max: 0,
                count: 0,
                peak: f32::NEG_INFINITY,
            };
            while let Some(i) = stack.pop() {
                let (row, col) = (i / w, i % w);
                // Casts are lossless: row < height and col < width, both u32.
                c.col_min = c.col_min.min(col as u32);
                c.col_max = c.col_max.max(col as u32);
                c.row_min = c.row_min.min(row as u32);
                c.row_max = c.row_max.max(row as u32);
                c.count += 1;
                c.peak = c.peak.max(map.values[i]);

                let (r0, r1) = (row.saturating_sub(1), (row + 1).min(h - 1));
                let (c0, c1) = (col.saturating_sub(1), (col + 1).min(w - 1));
                for nr in r0..=r1 {
                    for nc in c0..=c1 {
                        let n = nr * w + nc;
                        if state[n] == ABOVE {
                            state[n] = TAKEN;
                            stack.push(n);
                        }
                    }
                }
            }
            found.push(c);
        }
        found
    }

    /// Builds a map from rows of characters: `#` = 0.9, `.` = 0.1, `n` = NaN, digits d = d / 10.
    fn map_from(rows: &[&str]) -> AnomalyMap {
        let height = rows.len() as u32;
        let width = rows.first().map_or(0, |r| r.len()) as u32;
        let values = rows
            .iter()
            .flat_map(|r| r.chars())
            .map(|ch| match ch {
                '#' => 0.9,
                '.' => 0.1,
                'n' => f32::NAN,
                d => d.to_digit(10).expect("test map digit") as f32 / 10.0,
            })
            .collect();
        AnomalyMap {
            width,
            height,
            values,
        }
    }

    /// The map covers the whole image at one original pixel per map pixel.
    fn same_size(map: &AnomalyMap) -> SourceGeometry {
        SourceGeometry {
            width: map.width,
            height: map.height,
            roi: None,
        }
    }

    fn region(x: u32, y: u32, width: u32, height: u32, area_px: u64, peak: f32) -> DefectRegion {
        DefectRegion {
            x,
            y,
            width,
            height,
            area_px,
            peak_score: peak,
        }
    }

    #[test]
    fn two_separate_blobs_are_two_regions_largest_first() {
        let map = map_from(&[
            "........", //
            ".##.....", //
            ".##...#.", //
            "......#.", //
            "......#.", //
            "..#.....", //
        ]);
        // The 2x2 blob (area 4) comes before the vertical bar (area 3) and the single pixel.
        let got = extract_regions(&map, 0.5, same_size(&map), 0);
        assert_eq!(
            got,
            vec![
                region(1, 1, 2, 2, 4, 0.9),
                region(6, 2, 1, 3, 3, 0.9),
                region(2, 5, 1, 1, 1, 0.9),
            ]
        );
    }

    #[test]
    fn diagonal_neighbours_are_connected() {
        let map = map_from(&[
            "#....", //
            ".#...", //
            "..#..", //
            "...#.", //
            "#...#", //
        ]);
        let got = extract_regions(&map, 0.5, same_size(&map), 0);
        // The five-pixel diagonal is one region (4-connectivity would give five); the corner
        // pixel at (0, 4) touches nothing.
        assert_eq!(
            got,
            vec![region(0, 0, 5, 5, 5, 0.9), region(0, 4, 1, 1, 1, 0.9)]
        );
    }

    #[test]
    fn anti_diagonal_and_u_shape_are_single_regions() {
        let map = map_from(&[
            "#.#..#", //
            "#.#.#.", //
            "###...", //
        ]);
        let got = extract_regions(&map, 0.5, same_size(&map), 0);
        assert_eq!(
            got,
            vec![region(0, 0, 3, 3, 7, 0.9), region(4, 0, 2, 2, 2, 0.9)]
        );
    }

    #[test]
    fn regions_touching_every_border_keep_their_full_extent() {
        let map = map_from(&[
            "##..#", //
            ".....", //
            ".....", //
            "#...#", //
            "#..##", //
        ]);
        let got = extract_regions(&map, 0.5, same_size(&map), 0);
        assert_eq!(
            got,
            vec![
                region(3, 3, 2, 2, 3, 0.9),
                region(0, 0, 2, 1, 2, 0.9),
                region(0, 3, 1, 2, 2, 0.9),
                region(4, 0, 1, 1, 1, 0.9),
            ]
        );
    }

    #[test]
    fn threshold_is_strict_and_peak_is_the_component_maximum() {
        let map = map_from(&[
            "5678", //
            "5555", //
        ]);
        // 0.5 itself is not above 0.5 (anomalib's `>`); 0.6, 0.7, 0.8 are.
        let got = extract_regions(&map, 0.5, same_size(&map), 0);
        assert_eq!(got, vec![region(1, 0, 3, 1, 3, 0.8)]);
    }

    #[test]
    fn equal_areas_are_ordered_by_peak_then_position() {
        let map = map_from(&[
            "7.7.9", //
            ".....", //
            "7.8..", //
        ]);
        let got = extract_regions(&map, 0.5, same_size(&map), 0);
        assert_eq!(
            got,
            vec![
                region(4, 0, 1, 1, 1, 0.9),
                region(2, 2, 1, 1, 1, 0.8),
                region(0, 0, 1, 1, 1, 0.7),
                region(2, 0, 1, 1, 1, 0.7),
                region(0, 2, 1, 1, 1, 0.7),
            ]
        );
    }

    #[test]
    fn full_image_scaling_non_square() {
        // 1280 x 1024 camera image, 256 x 256 map, no ROI: sx = 5, sy = 4.
        let mut values = vec![0.0_f32; 256 * 256];
        // Two pixels on the right border, rows 0 and 1, column 255.
        values[255] = 0.7;
        values[256 + 255] = 0.8;
        let map = AnomalyMap {
            width: 256,
            height: 256,
            values,
        };
        let geometry = SourceGeometry {
            width: 1280,
            height: 1024,
            roi: None,
        };
        let got = extract_regions(&map, 0.5, geometry, 0);
        // x: [255*5, 256*5) = [1275, 1280); y: [0, 2*4) = [0, 8); area 2 * 5 * 4.
        assert_eq!(got, vec![region(1275, 0, 5, 8, 40, 0.8)]);
    }

    #[test]
    fn roi_offset_and_fractional_scaling() {
        // ROI 800 x 600 at (100, 50) in a 1280 x 1024 image: sx = 3.125, sy = 2.34375.
        let mut values = vec![0.0_f32; 256 * 256];
        for row in 20..=21 {
            for col in 10..=12 {
                values[row * 256 + col] = 0.9;
            }
        }
        let map = AnomalyMap {
            width: 256,
            height: 256,
            values,
        };
        let geometry = SourceGeometry {
            width: 1280,
            height: 1024,
            roi: Some(Roi {
                x: 100,
                y: 50,
                width: 800,
                height: 600,
            }),
        };
        let got = extract_regions(&map, 0.5, geometry, 0);
        // left 100 + floor(10 * 3.125 = 31.25) = 131; right 100 + ceil(13 * 3.125 = 40.625) = 141
        // top 50 + floor(20 * 2.34375 = 46.875) = 96; bottom 50 + ceil(22 * 2.34375 = 51.5625) = 102
        // area 6 * 3.125 * 2.34375 = 43.945 -> 44
        assert_eq!(got, vec![region(131, 96, 10, 6, 44, 0.9)]);
    }

    #[test]
    fn boxes_are_clamped_to_the_image() {
        // An ROI that overhangs the right edge (900 + 400 > 1280), sx = 100: map column 3 covers
        // x in [1200, 1300), of which only [1200, 1280) is in the image.
        let map = map_from(&["...#"]);
        let geometry = SourceGeometry {
            width: 1280,
            height: 100,
            roi: Some(Roi {
                x: 900,
                y: 0,
                width: 400,
                height: 100,
            }),
        };
        let got = extract_regions(&map, 0.5, geometry, 0);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].x, got[0].width), (1200, 80));
        assert_eq!((got[0].y, got[0].height), (0, 100));
    }

    #[test]
    fn min_area_drops_small_regions_in_original_pixels() {
        let map = map_from(&[
            "##..#", //
            "##...", //
        ]);
        // Scale 10 x 10: the 2x2 blob is 400 px, the single pixel 100 px.
        let geometry = SourceGeometry {
            width: 50,
            height: 20,
            roi: None,
        };
        let all = extract_regions(&map, 0.5, geometry, 0);
        assert_eq!(
            all.iter().map(|r| r.area_px).collect::<Vec<_>>(),
            [400, 100]
        );
        // The limit is inclusive: a region of exactly min_area_px stays.
        assert_eq!(extract_regions(&map, 0.5, geometry, 100).len(), 2);
        assert_eq!(extract_regions(&map, 0.5, geometry, 101).len(), 1);
        assert_eq!(extract_regions(&map, 0.5, geometry, 401).len(), 0);
    }

    #[test]
    fn empty_and_all_below_maps_have_no_regions() {
        let empty = AnomalyMap {
            width: 0,
            height: 0,
            values: Vec::new(),
        };
        assert!(extract_regions(&empty, 0.5, same_size(&empty), 0).is_empty());
        let cold = map_from(&["....", "...."]);
        assert!(extract_regions(&cold, 0.5, same_size(&cold), 0).is_empty());
    }

    #[test]
    fn all_above_map_is_one_region_covering_the_image() {
        let map = AnomalyMap {
            width: 256,
            height: 256,
            values: vec![0.75; 256 * 256],
        };
        let geometry = SourceGeometry {
            width: 1280,
            height: 1024,
            roi: None,
        };
        let got = extract_regions(&map, 0.5, geometry, 0);
        assert_eq!(got, vec![region(0, 0, 1280, 1024, 1280 * 1024, 0.75)]);
    }

    #[test]
    fn nan_values_are_never_above_the_threshold() {
        let map = map_from(&[
            "#n#", //
            "nnn", //
            "n#n", //
        ]);
        // NaN pixels neither join regions nor connect them, and never become a peak.
        let got = extract_regions(&map, 0.5, same_size(&map), 0);
        assert_eq!(
            got,
            vec![
                region(0, 0, 1, 1, 1, 0.9),
                region(2, 0, 1, 1, 1, 0.9),
                region(1, 2, 1, 1, 1, 0.9),
            ]
        );
        let all_nan = map_from(&["nn", "nn"]);
        assert!(extract_regions(&all_nan, 0.5, same_size(&all_nan), 0).is_empty());
        // A NaN threshold selects nothing rather than everything.
        let hot = map_from(&["##"]);
        assert!(extract_regions(&hot, f32::NAN, same_size(&hot), 0).is_empty());
    }

    #[test]
    fn malformed_map_has_no_regions_instead_of_panicking() {
        let short = AnomalyMap {
            width: 4,
            height: 4,
            values: vec![0.9; 10],
        };
        assert!(extract_regions(&short, 0.5, same_size(&short), 0).is_empty());
        let huge = AnomalyMap {
            width: u32::MAX,
            height: u32::MAX,
            values: vec![0.9; 4],
        };
        assert!(extract_regions(&huge, 0.5, same_size(&huge), 0).is_empty());
    }

    /// A deliberately naive reference: labels spread by repeated min-label relaxation over the
    /// 8-neighbourhood until nothing changes (no flood fill, no stack), and box edges computed in
    /// floating point from exact integer ratios.
    fn reference(
        w: usize,
        h: usize,
        values: &[f32],
        threshold: f32,
        big_w: u32,
        big_h: u32,
    ) -> Vec<DefectRegion> {
        let above: Vec<bool> = values.iter().map(|&v| v > threshold).collect();
        let mut label: Vec<usize> = (0..w * h).collect();
        loop {
            let mut changed = false;
            for r in 0..h {
                for c in 0..w {
                    if !above[r * w + c] {
                        continue;
                    }
                    for dr in -1_i64..=1 {
                        for dc in -1_i64..=1 {
                            let (nr, nc) = (r as i64 + dr, c as i64 + dc);
                            if nr < 0 || nc < 0 || nr >= h as i64 || nc >= w as i64 {
                                continue;
                            }
                            let n = nr as usize * w + nc as usize;
                            if above[n] && label[n] < label[r * w + c] {
                                label[r * w + c] = label[n];
                                changed = true;
                            }
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut roots: Vec<usize> = (0..w * h).filter(|&i| above[i]).map(|i| label[i]).collect();
        roots.sort_unstable();
        roots.dedup();
        let (fw, fh) = (f64::from(big_w), f64::from(big_h));
        roots
            .into_iter()
            .map(|root| {
                let members: Vec<usize> = (0..w * h)
                    .filter(|&i| above[i] && label[i] == root)
                    .collect();
                let cols = members.iter().map(|&i| i % w);
                let rows = members.iter().map(|&i| i / w);
                let (c0, c1) = (cols.clone().min().unwrap(), cols.max().unwrap());
                let (r0, r1) = (rows.clone().min().unwrap(), rows.max().unwrap());
                let edge = |i: usize, span: f64, n: usize| (i as f64 * span) / n as f64;
                let left = edge(c0, fw, w).floor() as u32;
                let right = edge(c1 + 1, fw, w).ceil() as u32;
                let top = edge(r0, fh, h).floor() as u32;
                let bottom = edge(r1 + 1, fh, h).ceil() as u32;
                let area = (members.len() as f64 * fw * fh / (w * h) as f64).round() as u64;
                let peak = members
                    .iter()
                    .map(|&i| values[i])
                    .fold(f32::NEG_INFINITY, f32::max);
                region(left, top, right - left, bottom - top, area, peak)
            })
            .collect()
    }

    fn full_key(r: &DefectRegion) -> (std::cmp::Reverse<u64>, u32, u32, u32, u32, u32) {
        (
            std::cmp::Reverse(r.area_px),
            r.peak_score.to_bits(),
            r.y,
            r.x,
            r.width,
            r.height,
        )
    }

    proptest! {
        /// The run labelling finds exactly the flood fill's components, in the same order,
        /// on maps from nearly empty to nearly full.
        #[test]
        fn run_labelling_equals_the_flood_fill(
            (w, h, values) in (1usize..=40, 1usize..=40).prop_flat_map(|(w, h)| {
                let cell = prop_oneof![
                    8 => 0.0_f32..1.0,
                    1 => Just(f32::NAN),
                ];
                (Just(w), Just(h), proptest::collection::vec(cell, w * h))
            }),
            threshold in prop_oneof![0.0_f32..1.0, Just(f32::NAN)],
        ) {
            let map = AnomalyMap { width: w as u32, height: h as u32, values };
            prop_assert_eq!(components(&map, threshold), components_flood(&map, threshold));
        }

        #[test]
        fn matches_a_naive_reference_and_covers_every_hot_pixel(
            (w, h, values) in (1usize..=12, 1usize..=12).prop_flat_map(|(w, h)| {
                let cell = prop_oneof![
                    6 => 0.0_f32..1.0,
                    1 => Just(f32::NAN),
                    1 => Just(0.5_f32),
                ];
                (Just(w), Just(h), proptest::collection::vec(cell, w * h))
            }),
            scale_w in 1u32..=7,
            scale_h in 1u32..=7,
            extra_w in 0u32..=5,
            extra_h in 0u32..=5,
        ) {
            // Original size: an integer multiple plus a remainder, so sx and sy are fractional.
            let big_w = w as u32 * scale_w + extra_w;
            let big_h = h as u32 * scale_h + extra_h;
            let map = AnomalyMap { width: w as u32, height: h as u32, values: values.clone() };
            let geometry = SourceGeometry { width: big_w, height: big_h, roi: None };
            let got = extract_regions(&map, 0.5, geometry, 0);

            // Order: area desc, then peak desc, then (y, x).
            for pair in got.windows(2) {
                let (a, b) = (&pair[0], &pair[1]);
                let ordered = a.area_px > b.area_px
                    || (a.area_px == b.area_px && a.peak_score > b.peak_score)
                    || (a.area_px == b.area_px && a.peak_score == b.peak_score
                        && (a.y, a.x) <= (b.y, b.x));
                prop_assert!(ordered, "{a:?} before {b:?}");
            }

            // Same regions as the naive reference (compared as multisets).
            let mut want = reference(w, h, &values, 0.5, big_w, big_h);
            let mut sorted_got = got.clone();
            want.sort_by_key(full_key);
            sorted_got.sort_by_key(full_key);
            prop_assert_eq!(&sorted_got, &want);

            // The area every hot map pixel covers, [c·sx, (c+1)·sx) × [r·sy, (r+1)·sy) in real
            // coordinates, lies inside some returned box. (Not "exactly one": a component can
            // sit inside the box of a ring around it.)
            let (sx, sy) = (f64::from(big_w) / w as f64, f64::from(big_h) / h as f64);
            let hot: Vec<usize> = (0..w * h).filter(|&i| values[i] > 0.5).collect();
            let eps = 1e-9;
            for &i in &hot {
                let (col, row) = ((i % w) as f64, (i / w) as f64);
                let inside = |r: &DefectRegion| {
                    f64::from(r.x) <= col * sx + eps
                        && f64::from(r.y) <= row * sy + eps
                        && (col + 1.0) * sx <= f64::from(r.x + r.width) + eps
                        && (row + 1.0) * sy <= f64::from(r.y + r.height) + eps
                };
                prop_assert!(got.iter().any(inside), "hot map pixel {i} is outside every box");
            }

            // Total area equals hot count x sx x sy, up to half a pixel of rounding per region.
            let total: u64 = got.iter().map(|r| r.area_px).sum();
            let exact = hot.len() as f64 * sx * sy;
            prop_assert!((total as f64 - exact).abs() <= 0.5 * got.len() as f64 + 1e-9);
        }
    }
}
