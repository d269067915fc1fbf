//! Prompt sampling for SAM training, following micro_sam: a random positive point in the
//! object, a box with random enlargement, and the iterative correction step.

use rand::Rng;

use crate::image::LabelImage;

/// A point prompt `(x, y)` in pixel coordinates (SAM's order).
pub type Point = (usize, usize);

/// A box prompt `[x0, y0, x1, y1]`, `x1`/`y1` exclusive (regionprops' convention).
pub type BoxPrompt = [usize; 4];

/// Draws prompts for objects of a label image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PromptSampler {
    /// Boxes grow on each side by up to this fraction of their size (micro_sam's
    /// `box_distortion_factor`; `0.0` gives the tight box).
    pub box_distortion: f64,
}

impl Default for PromptSampler {
    fn default() -> Self {
        PromptSampler {
            box_distortion: 0.1,
        }
    }
}

impl PromptSampler {
    /// A uniformly random pixel of object `id` (`None` when the id is absent).
    pub fn positive_point(
        &self,
        labels: &LabelImage,
        id: u32,
        rng: &mut impl Rng,
    ) -> Option<Point> {
        let mask: Vec<bool> = labels.as_slice().iter().map(|&v| v == id).collect();
        pick(&mask, labels.cols(), rng)
    }

    /// The bounding box of object `id`, each side pushed outwards by a uniform random fraction
    /// in `[0, box_distortion]` of the box size and clipped to the image, as micro_sam's
    /// `ConvertToSamInputs._distort_boxes` (`None` when the id is absent).
    pub fn jittered_box(
        &self,
        labels: &LabelImage,
        id: u32,
        rng: &mut impl Rng,
    ) -> Option<BoxPrompt> {
        let [x0, y0, x1, y1] = bbox(labels, id)?;
        if self.box_distortion <= 0.0 {
            return Some([x0, y0, x1, y1]);
        }
        let (lx, ly) = ((x1 - x0) as f64, (y1 - y0) as f64);
        let f = self.box_distortion;
        let mut d = || rng.gen_range(0.0..f);
        // micro_sam's order of draws: y0, y1, x0, x1
        let ny0 = (y0 as f64 - d() * ly).max(0.0).round() as usize;
        let ny1 = (y1 as f64 + d() * ly).min(labels.rows() as f64).round() as usize;
        let nx0 = (x0 as f64 - d() * lx).max(0.0).round() as usize;
        let nx1 = (x1 as f64 + d() * lx).min(labels.cols() as f64).round() as usize;
        Some([nx0, ny0, nx1, ny1])
    }

    /// The iterative correction step of micro_sam's `IterativePromptGenerator` for one object,
    /// given its true mask and the current predicted mask (row-major, `width` columns):
    ///
    /// - positive point: random pixel of the missed region (true, not predicted); if there is
    ///   none, of the correctly predicted region; if that is empty too, of the object;
    /// - negative point: random pixel of the wrongly included region (predicted, not true); if
    ///   there is none, of the background inside the object's bounding box grown by 3 pixels;
    ///   if that is empty too, of any background.
    ///
    /// Returns `(positive, negative)`; either is `None` only when no candidate pixel exists.
    pub fn iterative_points(
        &self,
        truth: &[bool],
        prediction: &[bool],
        width: usize,
        rng: &mut impl Rng,
    ) -> (Option<Point>, Option<Point>) {
        let missed: Vec<bool> = truth
            .iter()
            .zip(prediction)
            .map(|(&t, &p)| t && !p)
            .collect();
        let positive = pick(&missed, width, rng)
            .or_else(|| {
                let overlap: Vec<bool> = truth
                    .iter()
                    .zip(prediction)
                    .map(|(&t, &p)| t && p)
                    .collect();
                pick(&overlap, width, rng)
            })
            .or_else(|| pick(truth, width, rng));
        let wrong: Vec<bool> = truth
            .iter()
            .zip(prediction)
            .map(|(&t, &p)| p && !t)
            .collect();
        let negative = pick(&wrong, width, rng)
            .or_else(|| {
                let height = truth.len() / width.max(1);
                let ring = bbox_background(truth, width, height, 3)?;
                pick(&ring, width, rng)
            })
            .or_else(|| {
                let bg: Vec<bool> = truth.iter().map(|&t| !t).collect();
                pick(&bg, width, rng)
            });
        (positive, negative)
    }
}

/// A uniformly random `true` pixel.
fn pick(mask: &[bool], width: usize, rng: &mut impl Rng) -> Option<Point> {
    let n = mask.iter().filter(|&&m| m).count();
    if n == 0 || width == 0 {
        return None;
    }
    let k = rng.gen_range(0..n);
    let i = mask.iter().enumerate().filter(|(_, &m)| m).nth(k)?.0;
    Some((i % width, i / width))
}

fn bbox(labels: &LabelImage, id: u32) -> Option<BoxPrompt> {
    let mask: Vec<bool> = labels.as_slice().iter().map(|&v| v == id).collect();
    mask_bbox(&mask, labels.cols())
}

fn mask_bbox(mask: &[bool], width: usize) -> Option<BoxPrompt> {
    let mut b: Option<BoxPrompt> = None;
    for (i, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
        let (x, y) = (i % width, i / width);
        b = Some(match b {
            None => [x, y, x + 1, y + 1],
            Some([x0, y0, x1, y1]) => [x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1)],
        });
    }
    b
}

/// Background pixels inside the object's bounding box grown by `grow` pixels.
fn bbox_background(truth: &[bool], width: usize, height: usize, grow: usize) -> Option<Vec<bool>> {
    let [x0, y0, x1, y1] = mask_bbox(truth, width)?;
    let (x0, y0) = (x0.saturating_sub(grow), y0.saturating_sub(grow));
    let (x1, y1) = ((x1 + grow).min(width), (y1 + grow).min(height));
    Some(
        truth
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                let (x, y) = (i % width, i / width);
                !t && x >= x0 && x < x1 && y >= y0 && y < y1
            })
            .collect(),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::rng::rng_for;

    fn square() -> LabelImage {
        let mut l = LabelImage::zeros(20, 20);
        for y in 5..10 {
            for x in 8..18 {
                l.as_mut_slice()[y * 20 + x] = 3;
            }
        }
        l
    }

    #[test]
    fn positive_points_lie_in_the_object_and_cover_it() {
        let l = square();
        let s = PromptSampler::default();
        let mut rng = rng_for(0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let (x, y) = s.positive_point(&l, 3, &mut rng).unwrap();
            assert_eq!(l.get(y, x), 3);
            seen.insert((x, y));
        }
        assert_eq!(
            seen.len(),
            50,
            "uniform sampling should reach all 50 pixels"
        );
        assert_eq!(s.positive_point(&l, 9, &mut rng), None);
    }

    #[test]
    fn boxes_contain_the_object_and_grow_within_the_factor() {
        let l = square();
        let tight = PromptSampler {
            box_distortion: 0.0,
        }
        .jittered_box(&l, 3, &mut rng_for(0))
        .unwrap();
        assert_eq!(tight, [8, 5, 18, 10]);
        let s = PromptSampler {
            box_distortion: 0.2,
        };
        let mut rng = rng_for(1);
        let mut grew = false;
        for _ in 0..200 {
            let [x0, y0, x1, y1] = s.jittered_box(&l, 3, &mut rng).unwrap();
            // width 10, height 5: each side moves by at most 0.2 * size (rounded), within the image
            assert!(
                (6..=8).contains(&x0) && (18..=20).contains(&x1),
                "{x0} {x1}"
            );
            assert!(
                (4..=5).contains(&y0) && (10..=11).contains(&y1),
                "{y0} {y1}"
            );
            grew |= x0 < 8 || x1 > 18;
        }
        assert!(grew);
    }

    #[test]
    fn iterative_step_targets_missed_and_wrong_regions() {
        let w = 10;
        let truth: Vec<bool> = (0..100).map(|i| (i % w) < 5).collect(); // left half
        let pred: Vec<bool> = (0..100).map(|i| (i % w) >= 2 && (i % w) < 8).collect(); // columns 2..8
        let s = PromptSampler::default();
        let mut rng = rng_for(3);
        for _ in 0..100 {
            let (p, n) = s.iterative_points(&truth, &pred, w, &mut rng);
            let (px, _) = p.unwrap();
            let (nx, _) = n.unwrap();
            assert!(px < 2, "positive must be missed: {px}");
            assert!(
                (5..8).contains(&nx),
                "negative must be wrongly included: {nx}"
            );
        }
        // a perfect prediction: positive inside, negative in the bbox ring (grown by 3)
        let truth: Vec<bool> = (0..100)
            .map(|i| (3..6).contains(&(i % w)) && (3..6).contains(&(i / w)))
            .collect();
        for _ in 0..100 {
            let (p, n) = s.iterative_points(&truth, &truth, w, &mut rng);
            let (px, py) = p.unwrap();
            assert!(truth[py * w + px]);
            let (nx, ny) = n.unwrap();
            assert!(!truth[ny * w + nx] && nx < 9 && ny < 9, "({nx},{ny})");
        }
    }
}
