//! Synthetic machined washers on a conveyor belt, some with defects: a camera for demos and
//! tests that need no hardware.
//!
//! The scene is a port of `tools/synth_washer.py` (the generator the demo model was fitted on):
//! same geometry, lighting, turning marks, contact shadow, sensor noise and the three defects
//! (scratch, spot, chip), drawn from our own seeded random stream. The pixels are therefore not
//! the Python generator's pixels, but they follow the same distribution, so `models/demo`
//! classifies these parts as it classifies the Python ones (checked by a test).
//!
//! Invariant: a frame is a pure function of `(seed, index)`; the part kind of frame `index` is
//! decided by the same stream, so a replayed sequence is identical.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Width of a synthetic frame (the Python generator's, non-square on purpose).
pub const WIDTH: u32 = 224;
/// Height of a synthetic frame.
pub const HEIGHT: u32 = 176;

const OUTER_R: f64 = 66.0;
const INNER_R: f64 = 27.0;
const JITTER: f64 = 3.0;

/// What kind of part a synthetic frame shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartKind {
    Good,
    Scratch,
    Spot,
    Chip,
}

impl PartKind {
    /// The defect kinds, in the Python generator's order.
    pub const DEFECTS: [PartKind; 3] = [PartKind::Scratch, PartKind::Spot, PartKind::Chip];

    pub fn is_defect(self) -> bool {
        self != PartKind::Good
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PartKind::Good => "good",
            PartKind::Scratch => "scratch",
            PartKind::Spot => "spot",
            PartKind::Chip => "chip",
        }
    }
}

/// xoshiro256++ seeded through SplitMix64: small, fast and deterministic across platforms.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A stream determined by `key` alone.
    pub fn new(key: &[u64]) -> Rng {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for &k in key {
            x ^= k.wrapping_mul(0xD1B5_4A32_D192_ED03);
            x = splitmix(&mut x.clone());
        }
        let mut state = x;
        let s = [
            splitmix(&mut state),
            splitmix(&mut state),
            splitmix(&mut state),
            splitmix(&mut state),
        ];
        Rng { s }
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = (s[0].wrapping_add(s[3])).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn coverage(signed_dist: f64) -> f64 {
    (0.5 - signed_dist).clamp(0.0, 1.0)
}

/// Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly upsampled.
fn smooth_noise(rng: &mut Rng, h: usize, w: usize, cell: usize) -> Vec<f64> {
    let (gh, gw) = (h / cell + 2, w / cell + 2);
    let grid: Vec<f64> = (0..gh * gw).map(|_| rng.uniform(-1.0, 1.0)).collect();
    let mut out = vec![0.0; h * w];
    for y in 0..h {
        let fy = (y % cell) as f64 / cell as f64;
        let y0 = y / cell;
        for x in 0..w {
            let fx = (x % cell) as f64 / cell as f64;
            let x0 = x / cell;
            let g = |r: usize, c: usize| grid[r * gw + c];
            out[y * w + x] = (g(y0, x0) * (1.0 - fx) + g(y0, x0 + 1) * fx) * (1.0 - fy)
                + (g(y0 + 1, x0) * (1.0 - fx) + g(y0 + 1, x0 + 1) * fx) * fy;
        }
    }
    out
}

/// Which part frame `index` of stream `seed` shows: good with probability
/// `1 - defect_rate`, otherwise one of the defects with equal odds.
pub fn part_kind(seed: u64, index: u64, defect_rate: f64) -> PartKind {
    let mut rng = Rng::new(&[seed, index, 0xC0FFEE]);
    if rng.unit() >= defect_rate {
        PartKind::Good
    } else {
        PartKind::DEFECTS[(rng.next_u64() % 3) as usize]
    }
}

/// Renders one washer of `kind`; the same `(seed, index, kind)` always gives the same pixels.
pub fn render(seed: u64, index: u64, kind: PartKind) -> RgbImage {
    let kind_id = match kind {
        PartKind::Good => 0,
        PartKind::Scratch => 1,
        PartKind::Spot => 2,
        PartKind::Chip => 3,
    };
    let mut rng = Rng::new(&[seed, index, kind_id]);
    let (h, w) = (HEIGHT as usize, WIDTH as usize);
    let pi = std::f64::consts::PI;

    // Pose and lighting jitter.
    let cx = w as f64 / 2.0 + rng.uniform(-JITTER, JITTER);
    let cy = h as f64 / 2.0 + rng.uniform(-JITTER, JITTER);
    let scale = rng.uniform(0.97, 1.03);
    let outer_r = OUTER_R * scale;
    let inner_r = INNER_R * scale;
    let light_dir = rng.uniform(-0.5, 0.5) + pi * 0.75;
    let gain = rng.uniform(0.92, 1.08);
    let tint = [
        1.0 + rng.uniform(-0.02, 0.02),
        1.0 + rng.uniform(-0.02, 0.02),
        1.0 + rng.uniform(-0.02, 0.02),
    ];
    let ring_phase = [
        rng.uniform(0.0, 2.0 * pi),
        rng.uniform(0.0, 2.0 * pi),
        rng.uniform(0.0, 2.0 * pi),
    ];
    let fabric = smooth_noise(&mut rng, h, w, 6);
    let belt = [46.0, 52.0, 62.0];
    let metal = [178.0 * tint[0], 174.0 * tint[1], 166.0 * tint[2]];

    // Defect parameters, drawn up front.
    struct Chip {
        bx: f64,
        by: f64,
        br: f64,
        k: [f64; 2],
    }
    struct Scratch {
        px: f64,
        py: f64,
        vx: f64,
        vy: f64,
        width: f64,
        delta: f64,
    }
    struct Spot {
        sx: f64,
        sy: f64,
        ax: f64,
        ay: f64,
        rot: f64,
        strength: f64,
    }
    let chip = (kind == PartKind::Chip).then(|| {
        let ang = rng.uniform(0.0, 2.0 * pi);
        let br = rng.uniform(8.0, 13.0);
        Chip {
            bx: cx + (outer_r + br * 0.25) * ang.cos(),
            by: cy - (outer_r + br * 0.25) * ang.sin(),
            br,
            k: [rng.uniform(0.0, 2.0 * pi), rng.uniform(0.0, 2.0 * pi)],
        }
    });
    let scratch = (kind == PartKind::Scratch).then(|| {
        let (mut px, mut py, mut qx, mut qy) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..20 {
            let rad = rng.uniform(inner_r + 6.0, outer_r - 8.0);
            let ang = rng.uniform(0.0, 2.0 * pi);
            px = cx + rad * ang.cos();
            py = cy - rad * ang.sin();
            let length = rng.uniform(22.0, 45.0);
            let dirn = rng.uniform(0.0, pi);
            qx = px + length * dirn.cos();
            qy = py - length * dirn.sin();
            let dq = (qx - cx).hypot(qy - cy);
            if dq < outer_r - 6.0 && dq > inner_r + 4.0 {
                break;
            }
        }
        let width = rng.uniform(0.9, 1.6);
        let bright = rng.unit() < 0.5;
        let delta = rng.uniform(55.0, 80.0) * if bright { 1.0 } else { -1.0 };
        Scratch {
            px,
            py,
            vx: qx - px,
            vy: qy - py,
            width,
            delta,
        }
    });
    let spot = (kind == PartKind::Spot).then(|| {
        let rad = rng.uniform(inner_r + 10.0, outer_r - 10.0);
        let ang = rng.uniform(0.0, 2.0 * pi);
        let ax = rng.uniform(4.0, 8.0);
        Spot {
            sx: cx + rad * ang.cos(),
            sy: cy - rad * ang.sin(),
            ax,
            ay: ax * rng.uniform(0.6, 1.0),
            rot: rng.uniform(0.0, pi),
            strength: rng.uniform(0.55, 0.8),
        }
    });
    let stain = [92.0 * gain, 70.0 * gain, 48.0 * gain];

    let mut out = RgbImage::new(WIDTH, HEIGHT);
    for y in 0..h {
        let yy = y as f64;
        for x in 0..w {
            let xx = x as f64;
            let vert = 1.0 + 0.18 * (0.5 - yy / h as f64);
            let fab = 1.0 + 0.04 * fabric[y * w + x];
            let dx = xx - cx;
            let dy = yy - cy;
            let r = dx.hypot(dy);
            let theta = (-dy).atan2(dx);
            let rs = (dx - 4.0).hypot(dy - 5.0);
            let shadow = ((outer_r + 6.0 - rs) / 10.0).clamp(0.0, 1.0);
            let bg = vert * fab * (1.0 - 0.45 * shadow);

            let mut part = coverage(r - outer_r) * (1.0 - coverage(r - inner_r));
            let turning = 0.035 * (2.0 * pi * r / 3.1 + ring_phase[0]).sin()
                + 0.025 * (2.0 * pi * r / 7.3 + ring_phase[1]).sin()
                + 0.02 * (2.0 * pi * r / 17.0 + ring_phase[2]).sin();
            let shade = 1.0 + 0.16 * (theta - light_dir).cos() * (r / outer_r);
            let chamfer = ((r - (outer_r - 5.0)) / 5.0).clamp(0.0, 1.0);
            let chamfer_light = 1.0 - 0.25 * chamfer + 0.35 * chamfer * (theta - light_dir).cos();
            let inner_chamfer = ((inner_r + 3.0 - r) / 3.0).clamp(0.0, 1.0);
            let inner_light = 1.0 - 0.3 * inner_chamfer * (theta - light_dir).cos();
            let mut lum = (1.0 + turning) * shade * chamfer_light * inner_light;

            if let Some(c) = &chip {
                let phi = (yy - c.by).atan2(xx - c.bx);
                let br_map = c.br
                    * (1.0 + 0.18 * (3.0 * phi + c.k[0]).sin() + 0.1 * (5.0 * phi + c.k[1]).sin());
                let d_bite = (xx - c.bx).hypot(yy - c.by) - br_map;
                let bite = coverage(d_bite);
                let edge = (1.0 - d_bite.abs() / 1.5).clamp(0.0, 1.0) * (1.0 - bite);
                lum *= 1.0 + 0.35 * edge;
                part *= 1.0 - bite;
            }

            let mut px = [0.0f64; 3];
            for ch in 0..3 {
                px[ch] = belt[ch] * bg * (1.0 - part) + metal[ch] * lum * part;
            }
            if let Some(s) = &scratch {
                let t = (((xx - s.px) * s.vx + (yy - s.py) * s.vy) / (s.vx * s.vx + s.vy * s.vy))
                    .clamp(0.0, 1.0);
                let dseg = (xx - (s.px + t * s.vx)).hypot(yy - (s.py + t * s.vy));
                let line = coverage(dseg - s.width / 2.0) * part;
                for v in &mut px {
                    *v += s.delta * line;
                }
            }
            if let Some(s) = &spot {
                let ux = (xx - s.sx) * s.rot.cos() + (yy - s.sy) * s.rot.sin();
                let uy = -(xx - s.sx) * s.rot.sin() + (yy - s.sy) * s.rot.cos();
                let e = (ux / s.ax).hypot(uy / s.ay);
                let alpha = (1.3 - e).clamp(0.0, 1.0).powf(0.7) * part;
                let a = s.strength * alpha;
                for (v, st) in px.iter_mut().zip(stain) {
                    *v = *v * (1.0 - a) + st * a;
                }
            }
            let noise = 1.6 * rng.normal();
            let pixel = out.get_pixel_mut(x as u32, y as u32);
            for ch in 0..3 {
                pixel[ch] = (px[ch] * gain + noise).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// A camera that films washers passing by: frame `i` shows [`part_kind`]`(seed, i, defect_rate)`.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    seed: u64,
    defect_rate: f64,
    frames: Option<u64>,
    next: u64,
}

impl SyntheticSource {
    /// `frames`: stop after that many (none: forever).
    pub fn new(seed: u64, defect_rate: f64, frames: Option<u64>) -> SyntheticSource {
        SyntheticSource {
            seed,
            defect_rate,
            frames,
            next: 0,
        }
    }
}

impl super::FrameSource for SyntheticSource {
    fn describe(&self) -> String {
        format!(
            "synthetic seed {} defect rate {}",
            self.seed, self.defect_rate
        )
    }

    fn next_frame(&mut self) -> Result<Option<super::Captured>, super::SourceError> {
        if self.frames.is_some_and(|n| self.next >= n) {
            return Ok(None);
        }
        let index = self.next;
        self.next += 1;
        let kind = part_kind(self.seed, index, self.defect_rate);
        Ok(Some(super::Captured {
            image: render(self.seed, index, kind),
            captured_at: std::time::SystemTime::now(),
            origin: format!("synthetic:{}:{index}:{}", self.seed, kind.as_str()),
        }))
    }

    fn reopen(&mut self) -> Result<(), super::SourceError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_deterministic_and_defects_change_pixels() {
        let a = render(7, 3, PartKind::Good);
        assert_eq!(a, render(7, 3, PartKind::Good));
        assert_ne!(a, render(7, 4, PartKind::Good));
        assert_eq!(a.dimensions(), (WIDTH, HEIGHT));
        // The washer is bright metal in the middle, the belt is dark at the corner.
        let centre_ring = a.get_pixel(WIDTH / 2 + 45, HEIGHT / 2);
        let corner = a.get_pixel(2, 2);
        assert!(centre_ring[0] > 120, "{centre_ring:?}");
        assert!(corner[0] < 80, "{corner:?}");
    }

    #[test]
    fn part_kinds_follow_the_defect_rate() {
        let n = 4000;
        let defects = (0..n)
            .filter(|&i| part_kind(1, i, 0.25).is_defect())
            .count();
        let rate = defects as f64 / n as f64;
        assert!((0.22..0.28).contains(&rate), "{rate}");
        assert!((0..100).all(|i| !part_kind(1, i, 0.0).is_defect()));
        assert!((0..100).all(|i| part_kind(1, i, 1.0).is_defect()));
    }
}
