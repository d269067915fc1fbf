//! Synthetic brightfield images with exact instance labels: dark, textured cells (ellipses and
//! irregular blobs) with bright halos, touching and overlapping neighbours, uneven
//! illumination and camera noise.

use rand::Rng;
use rayon::prelude::*;

use crate::image::{BitDepth, GreyImage, LabelImage};
use crate::labels::{relabel_consecutive, split_fragments};
use crate::plane::Plane;
use crate::rng::{derive_seed, normal_pair, rng_for};

/// Parameters of the synthetic brightfield generator.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynthConfig {
    /// Image width and height in pixels (default 2048).
    pub size: usize,
    /// Storage depth of the image (default 16-bit).
    pub depth: BitDepth,
    /// Mean number of cells per 512x512 area (default 110: crowded, many touching).
    pub cells_per_512: f64,
    /// Smallest semi-axis in pixels (default 9).
    pub min_radius: f64,
    /// Largest semi-axis in pixels (default 22).
    pub max_radius: f64,
    /// Fraction of cells placed right next to an earlier one, touching or overlapping it
    /// (default 0.5).
    pub touching_fraction: f64,
    /// Fraction of cells with an irregular (non-elliptic) outline (default 0.4).
    pub irregular_fraction: f64,
    /// Gaussian camera noise, as a fraction of the background level (default 0.02).
    pub noise: f64,
    /// Visible pieces smaller than this many pixels are dropped (default 25).
    pub min_object_size: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            size: 2048,
            depth: BitDepth::U16,
            cells_per_512: 110.0,
            min_radius: 9.0,
            max_radius: 22.0,
            touching_fraction: 0.5,
            irregular_fraction: 0.4,
            noise: 0.02,
            min_object_size: 25,
        }
    }
}

/// One synthetic image and its instance labels (ids 1..N, consecutive).
#[derive(Debug, Clone)]
pub struct SynthSample {
    /// The brightfield image (cells darker than the background).
    pub image: GreyImage,
    /// The exact instance labels of what the image shows.
    pub labels: LabelImage,
}

struct Cell {
    cx: f64,
    cy: f64,
    a: f64,
    b: f64,
    cos: f64,
    sin: f64,
    /// (k, amplitude, cos phase, sin phase) of the outline's harmonics.
    harmonics: Vec<(u32, f64, f64, f64)>,
    darkness: f32,
    halo: f32,
    halo_width: f64,
    texture: f32,
}

impl Cell {
    fn reach(&self) -> f64 {
        let amp: f64 = self.harmonics.iter().map(|h| h.1).sum();
        self.a.max(self.b) * (1.0 + amp) + self.halo_width + 1.0
    }

    /// Normalised radius: < 1 inside, 1 on the outline.
    #[inline]
    fn t(&self, x: f64, y: f64) -> f64 {
        let (dx, dy) = (x - self.cx, y - self.cy);
        let u = (dx * self.cos + dy * self.sin) / self.a;
        let v = (-dx * self.sin + dy * self.cos) / self.b;
        let rho = (u * u + v * v).sqrt();
        if self.harmonics.is_empty() || rho < 1e-9 {
            return rho;
        }
        // cos(k phi + p) from (cos phi, sin phi) by complex powers, no trigonometry per pixel
        let (c1, s1) = (u / rho, v / rho);
        let (mut ck, mut sk) = (1.0, 0.0);
        let mut k = 0;
        let mut f = 1.0;
        for &(kk, amp, cp, sp) in &self.harmonics {
            while k < kk {
                let nc = ck * c1 - sk * s1;
                sk = ck * s1 + sk * c1;
                ck = nc;
                k += 1;
            }
            f += amp * (ck * cp - sk * sp);
        }
        rho / f
    }
}

/// Smooth random field in [-1, 1]: random values on a grid of `step` pixels, bilinearly
/// interpolated.
struct ValueNoise {
    gw: usize,
    step: f32,
    grid: Vec<f32>,
}

impl ValueNoise {
    fn new(size: usize, step: f32, rng: &mut impl Rng) -> Self {
        let gw = (size as f32 / step).ceil() as usize + 2;
        let grid = (0..gw * gw).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        ValueNoise { gw, step, grid }
    }

    #[inline]
    fn at(&self, x: usize, y: usize) -> f32 {
        let (fx, fy) = (x as f32 / self.step, y as f32 / self.step);
        let (ix, iy) = (fx as usize, fy as usize);
        let (tx, ty) = (fx - ix as f32, fy - iy as f32);
        let g = |i: usize, j: usize| self.grid[j * self.gw + i];
        let top = g(ix, iy) + (g(ix + 1, iy) - g(ix, iy)) * tx;
        let bot = g(ix, iy + 1) + (g(ix + 1, iy + 1) - g(ix, iy + 1)) * tx;
        top + (bot - top) * ty
    }
}

fn make_cells(cfg: &SynthConfig, rng: &mut impl Rng) -> Vec<Cell> {
    let size = cfg.size as f64;
    let n = (cfg.cells_per_512 * size * size / (512.0 * 512.0))
        .round()
        .max(1.0) as usize;
    let (rmin, rmax) = (
        cfg.min_radius.max(2.0),
        cfg.max_radius.max(cfg.min_radius.max(2.0) + 0.5),
    );
    let mut cells: Vec<Cell> = Vec::with_capacity(n);
    for _ in 0..n {
        let a = rng.gen_range(rmin..rmax);
        let b = a * rng.gen_range(0.6..1.0);
        let (cx, cy) = if !cells.is_empty() && rng.gen_bool(cfg.touching_fraction.clamp(0.0, 1.0)) {
            // next to an earlier cell, from just overlapping to just touching
            let other = &cells[rng.gen_range(0..cells.len())];
            let ang: f64 = rng.gen_range(0.0..std::f64::consts::TAU);
            let d = (other.a.min(other.b) + b) * rng.gen_range(0.75..1.05);
            (other.cx + d * ang.cos(), other.cy + d * ang.sin())
        } else {
            (rng.gen_range(0.0..size), rng.gen_range(0.0..size))
        };
        let theta: f64 = rng.gen_range(0.0..std::f64::consts::PI);
        let harmonics = if rng.gen_bool(cfg.irregular_fraction.clamp(0.0, 1.0)) {
            (2..=5)
                .map(|k| {
                    let p: f64 = rng.gen_range(0.0..std::f64::consts::TAU);
                    (k, rng.gen_range(0.0..0.22) / f64::from(k), p.cos(), p.sin())
                })
                .collect()
        } else {
            Vec::new()
        };
        cells.push(Cell {
            cx,
            cy,
            a,
            b,
            cos: theta.cos(),
            sin: theta.sin(),
            harmonics,
            darkness: rng.gen_range(0.25..0.55),
            halo: rng.gen_range(0.08..0.25),
            halo_width: rng.gen_range(2.0..5.0),
            texture: rng.gen_range(0.03..0.1),
        });
    }
    cells
}

/// Draws one synthetic brightfield image and its labels. The same `seed` gives the same
/// sample, bit for bit, on any number of threads.
pub fn synthesize(cfg: &SynthConfig, seed: u64) -> SynthSample {
    let size = cfg.size.max(1);
    let mut rng = rng_for(derive_seed(seed, &[0x5117]));
    let cells = make_cells(cfg, &mut rng);

    // Paint: later cells cover earlier ones, which makes overlapping neighbours.
    let mut owner = vec![0u32; size * size];
    let mut tbuf = vec![0f32; size * size];
    let mut halo = vec![0f32; size * size];
    for (i, c) in cells.iter().enumerate() {
        let r = c.reach();
        let x0 = (c.cx - r).floor().max(0.0) as usize;
        let y0 = (c.cy - r).floor().max(0.0) as usize;
        let x1 = ((c.cx + r).ceil().max(0.0) as usize).min(size);
        let y1 = ((c.cy + r).ceil().max(0.0) as usize).min(size);
        let hw = c.halo_width / c.a.min(c.b);
        for y in y0..y1 {
            for x in x0..x1 {
                let t = c.t(x as f64, y as f64);
                let p = y * size + x;
                if t < 1.0 {
                    owner[p] = i as u32 + 1;
                    tbuf[p] = t as f32;
                } else if t < 1.0 + hw {
                    let s = (1.0 - (t - 1.0) / hw) as f32;
                    halo[p] = halo[p].max(c.halo * s * s);
                }
            }
        }
    }
    let painted = LabelImage::from_parts(size, size, owner.clone());
    let mut labels = split_fragments(&painted, cfg.min_object_size);
    relabel_consecutive(&mut labels);

    // Render from the final labels, so the picture shows exactly what the labels say.
    let max = cfg.depth.max_value();
    let background = 0.62 * max;
    let g = (rng.gen_range(-0.15f32..0.15), rng.gen_range(-0.15f32..0.15));
    let vignette = rng.gen_range(0.0f32..0.15);
    let coarse = ValueNoise::new(size, 64.0, &mut rng);
    let fine = ValueNoise::new(size, 3.0, &mut rng);
    let noise_seed = rng.gen::<u64>();
    let noise_std = cfg.noise as f32;
    let half = size as f32 / 2.0;
    let mut data = vec![0f32; size * size];
    data.par_chunks_mut(size).enumerate().for_each(|(y, row)| {
        let mut nrng = rng_for(derive_seed(noise_seed, &[y as u64]));
        let fy = (y as f32 - half) / size as f32;
        for (x, out) in row.iter_mut().enumerate() {
            let p = y * size + x;
            let fx = (x as f32 - half) / size as f32;
            let illum = 1.0 + g.0 * fx + g.1 * fy - vignette * 4.0 * (fx * fx + fy * fy)
                + 0.02 * coarse.at(x, y);
            let mut v = 1.0 + halo[p];
            if labels.as_slice()[p] != 0 {
                let c = &cells[owner[p] as usize - 1];
                let t = tbuf[p];
                let rim = if t > 0.8 { (t - 0.8) * 5.0 } else { 0.0 };
                v = 1.0 - c.darkness * (0.75 + 0.25 * t * t) - 0.12 * rim
                    + c.texture * fine.at(x, y);
            }
            let (n, _) = normal_pair(nrng.gen::<f32>(), nrng.gen::<f32>());
            *out = (background * (illum * v + noise_std * n))
                .round()
                .clamp(0.0, max);
        }
    });
    SynthSample {
        image: GreyImage {
            pixels: Plane::from_parts(size, size, data),
            depth: cfg.depth,
        },
        labels,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::labels::{connected_components, object_stats, Connectivity};

    fn small() -> SynthConfig {
        SynthConfig {
            size: 256,
            ..SynthConfig::default()
        }
    }

    #[test]
    fn deterministic_per_seed() {
        let a = synthesize(&small(), 3);
        let b = synthesize(&small(), 3);
        let c = synthesize(&small(), 4);
        assert_eq!(a.image, b.image);
        assert_eq!(a.labels, b.labels);
        assert_ne!(a.labels, c.labels);
        // thread count does not matter
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let d = pool.install(|| synthesize(&small(), 3));
        assert_eq!(a.image, d.image);
    }

    #[test]
    fn labels_are_exact_and_cells_are_dark_with_touching_neighbours() {
        let s = synthesize(&small(), 11);
        let stats = object_stats(&s.labels);
        // ~110 per 512^2 -> ~27 in 256^2, minus merged/occluded ones
        assert!(stats.len() >= 15, "only {} objects", stats.len());
        // consecutive ids, each object one 8-connected piece of >= min size
        assert_eq!(stats.last().unwrap().id as usize, stats.len());
        assert_eq!(
            connected_components(&s.labels, 0, Connectivity::Eight).1 as usize,
            stats.len()
        );
        assert!(stats.iter().all(|o| o.area >= 25));
        // cells darker than background
        let (mut fg, mut nf, mut bg, mut nb) = (0f64, 0usize, 0f64, 0usize);
        for (v, l) in s.image.as_slice().iter().zip(s.labels.as_slice()) {
            if *l != 0 {
                fg += f64::from(*v);
                nf += 1;
            } else {
                bg += f64::from(*v);
                nb += 1;
            }
        }
        assert!(fg / (nf as f64) < 0.8 * bg / nb as f64);
        // some objects touch another object (4-neighbour with a different non-zero id)
        let w = s.labels.cols();
        let touching = s
            .labels
            .as_slice()
            .windows(2)
            .enumerate()
            .filter(|(i, p)| (i + 1) % w != 0 && p[0] != 0 && p[1] != 0 && p[0] != p[1])
            .count();
        assert!(touching > 20, "{touching}");
        assert!(s
            .image
            .as_slice()
            .iter()
            .all(|v| *v >= 0.0 && *v <= 65535.0 && v.fract() == 0.0));
    }
}
