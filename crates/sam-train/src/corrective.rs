//! The corrective prompts of micro_sam's `IterativePromptGenerator`, computed on the device for
//! every object at once.
//!
//! The rules are those of [`sam_data::PromptSampler::iterative_points`] (the host version that
//! sam-eval uses): per object, a positive point in the missed region (true, not predicted), else
//! in the correctly predicted region, else anywhere in the object; a negative point in the
//! wrongly included region (predicted, not true), else in the background inside the object's
//! bounding box grown by [`RING`] pixels, else anywhere in the background. A region's point is
//! its `k`-th pixel in row-major order with `k = ⌊u · count⌋` for a uniform draw `u` made on the
//! host, so the step stays a pure function of its seed without the masks ever leaving the
//! device. An object without any candidate pixel gets SAM's padding point (label −1).

use tch::{Kind, Tensor};

/// How far the negative point's fallback box reaches beyond the object's bounding box.
pub(crate) const RING: i64 = 3;

/// One positive and one negative point per object.
pub(crate) struct CorrectivePoints {
    /// `[n, 2, 2]` float pixel coordinates `(x, y)`: the positive point, then the negative.
    pub coords: Tensor,
    /// `[n, 2]` int64 labels: 1 (positive), 0 (negative), −1 (padding: no candidate pixel).
    pub labels: Tensor,
}

/// The corrective points of `n` objects from their true and predicted masks (`[n, h, w]`
/// booleans) and two uniform draws in `[0, 1)` per object (`draws`: `[n, 2]` f64, positive
/// then negative), all on one device. Nothing is read back to the host.
pub(crate) fn corrective_points(
    truth: &Tensor,
    predicted: &Tensor,
    draws: &Tensor,
) -> CorrectivePoints {
    let size = truth.size();
    let (n, w) = (size[0], size[2]);
    let flat = |t: &Tensor| t.reshape([n, -1]);
    let t = flat(truth);
    let p = flat(predicted);
    let not_t = t.logical_not();
    let missed = t.logical_and(&p.logical_not());
    let overlap = t.logical_and(&p);
    let wrong = p.logical_and(&not_t);
    let ring = flat(&grown_box(truth, RING)).logical_and(&not_t);
    let positive = first_nonempty(&[missed, overlap, t]);
    let negative = first_nonempty(&[wrong, ring, not_t]);
    let (pos_index, pos_found) = pick(&positive, &draws.select(1, 0));
    let (neg_index, neg_found) = pick(&negative, &draws.select(1, 1));
    let index = Tensor::stack(&[pos_index, neg_index], 1); // [n, 2]
    let found = Tensor::stack(&[pos_found, neg_found], 1);
    let x = index.remainder(w);
    let y = index.floor_divide_scalar(w);
    let coords = Tensor::stack(&[x, y], -1)
        .to_kind(Kind::Float)
        .masked_fill(&found.logical_not().unsqueeze(-1), 0.0);
    let kinds = Tensor::stack(
        &[
            Tensor::ones([n], (Kind::Int64, truth.device())),
            Tensor::zeros([n], (Kind::Int64, truth.device())),
        ],
        1,
    );
    let labels = kinds.masked_fill(&found.logical_not(), -1);
    CorrectivePoints { coords, labels }
}

/// Per row, the first of `candidates` (`[n, p]` booleans) that has a `true` pixel in that row;
/// the last one when none has.
fn first_nonempty(candidates: &[Tensor]) -> Tensor {
    let (last, earlier) = candidates
        .split_last()
        .expect("at least one candidate region");
    earlier
        .iter()
        .rev()
        .fold(last.shallow_clone(), |chosen, c| {
            c.where_self(&c.any_dim(1, true), &chosen)
        })
}

/// Per row of `region` (`[n, p]` booleans), the position of its `⌊u · count⌋`-th `true` pixel
/// (`u`: `[n]` draws in `[0, 1)`) and whether it has any; position 0 where it has none.
fn pick(region: &Tensor, u: &Tensor) -> (Tensor, Tensor) {
    let counts = region.sum_dim_intlist([1i64].as_slice(), true, Kind::Int64); // [n, 1]
    let k = (u.unsqueeze(1) * counts.to_kind(Kind::Double))
        .floor()
        .to_kind(Kind::Int64)
        .minimum(&(&counts - 1).clamp_min(0));
    // The k-th true pixel is preceded by exactly the positions whose running count is ≤ k.
    let running = region.cumsum(1, Kind::Int);
    let index = running
        .le_tensor(&k)
        .sum_dim_intlist([1i64].as_slice(), false, Kind::Int64);
    (index, counts.squeeze_dim(1).gt(0))
}

/// `[n, h, w]`: the bounding box of each object's `true` pixels, grown by `grow` pixels on
/// every side and clipped to the image (the whole image for an empty mask).
fn grown_box(mask: &Tensor, grow: i64) -> Tensor {
    let size = mask.size();
    let (h, w) = (size[1], size[2]);
    let rows = span(&mask.any_dim(2, false), h, grow); // [n, h]
    let cols = span(&mask.any_dim(1, false), w, grow); // [n, w]
    rows.unsqueeze(2).logical_and(&cols.unsqueeze(1))
}

/// `[n, len]`: the positions from `grow` before the first `true` of each row of `any` to
/// `grow` after its last.
fn span(any: &Tensor, len: i64, grow: i64) -> Tensor {
    let as_int = any.to_kind(Kind::Int);
    // argmax returns the first maximal position.
    let first = as_int.argmax(1, true);
    let end = as_int.flip([1]).argmax(1, true).neg() + len; // one past the last
    let at = Tensor::arange(len, (Kind::Int64, any.device())).unsqueeze(0);
    at.ge_tensor(&(first - grow))
        .logical_and(&at.lt_tensor(&(end + grow)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tch::Device;

    /// `[1, h, w]` mask from rows of '#' (true) and '.' (false).
    fn mask(rows: &[&str]) -> Tensor {
        let (h, w) = (rows.len() as i64, rows[0].len() as i64);
        let v: Vec<bool> = rows
            .iter()
            .flat_map(|r| r.chars().map(|c| c == '#'))
            .collect();
        Tensor::from_slice(&v).view([1, h, w])
    }

    fn points(truth: &Tensor, pred: &Tensor, u: [f64; 2]) -> Vec<(f32, f32, i64)> {
        let cp = corrective_points(truth, pred, &Tensor::from_slice(&u).view([1, 2]));
        let c = Vec::<f32>::try_from(cp.coords.reshape([-1])).unwrap();
        let l = Vec::<i64>::try_from(cp.labels.reshape([-1])).unwrap();
        vec![(c[0], c[1], l[0]), (c[2], c[3], l[1])]
    }

    /// The positions (x, y) of the true pixels of a `[1, h, w]` mask in row-major order.
    fn pixels(m: &Tensor) -> Vec<(f32, f32)> {
        let w = m.size()[2] as usize;
        let v = Vec::<bool>::try_from(m.reshape([-1])).unwrap();
        v.iter()
            .enumerate()
            .filter(|(_, &b)| b)
            .map(|(i, _)| ((i % w) as f32, (i / w) as f32))
            .collect()
    }

    #[test]
    fn points_are_the_drawn_pixels_of_the_missed_and_wrong_regions() {
        let truth = mask(&["......", ".####.", ".####.", "......"]);
        let pred = mask(&["##....", "##....", ".#....", "......"]);
        // missed = truth ∧ ¬pred: (2..4, 1) and (2..4, 2) → 6 pixels; wrong: (0,0),(1,0),(0,1).
        let missed = [(2., 1.), (3., 1.), (4., 1.), (2., 2.), (3., 2.), (4., 2.)];
        let wrong = [(0., 0.), (1., 0.), (0., 1.)];
        for (u, kp, kn) in [(0.0, 0, 0), (0.5, 3, 1), (0.999, 5, 2)] {
            let got = points(&truth, &pred, [u, u]);
            assert_eq!(got[0], (missed[kp].0, missed[kp].1, 1), "u = {u}");
            assert_eq!(got[1], (wrong[kn].0, wrong[kn].1, 0), "u = {u}");
        }
    }

    #[test]
    fn a_perfect_prediction_falls_back_to_the_object_and_the_ring_around_it() {
        let truth = mask(&[
            "..........",
            "..........",
            "..........",
            "..........",
            ".....##...",
            ".....##...",
            "..........",
            "..........",
            "..........",
            "..........",
        ]);
        // Rows 4..6 and columns 5..7 grown by 3: rows 1..9, columns 2..10 (the image's edge).
        let ring_box = mask(&[
            "..........",
            "..########",
            "..########",
            "..########",
            "..########",
            "..########",
            "..########",
            "..########",
            "..########",
            "..........",
        ]);
        let ring = ring_box.logical_and(&truth.logical_not());
        let inside = pixels(&truth); // no miss: the overlap, which is the object itself
        let candidates = pixels(&ring);
        assert_eq!(candidates.len(), 8 * 8 - 4);
        for u in [0.0, 0.3, 0.77, 0.9999] {
            let got = points(&truth, &truth, [u, u]);
            let kp = (u * inside.len() as f64) as usize;
            let kn = (u * candidates.len() as f64) as usize;
            assert_eq!(got[0], (inside[kp].0, inside[kp].1, 1), "u = {u}");
            assert_eq!(got[1], (candidates[kn].0, candidates[kn].1, 0), "u = {u}");
        }
    }

    #[test]
    fn the_background_is_the_last_resort_and_padding_when_nothing_is_left() {
        // The grown box covers the whole image: the ring is empty, any background pixel goes.
        let truth = mask(&["##.", "###", "###"]);
        let got = points(&truth, &truth, [0.0, 0.0]);
        assert_eq!(got[1], (2.0, 0.0, 0));
        // An object covering everything has no negative candidate: padding (0, 0, −1).
        let full = mask(&["##", "##"]);
        assert_eq!(points(&full, &full, [0.6, 0.6])[1], (0.0, 0.0, -1));
        // An empty target (never in training) has no positive one.
        let empty = mask(&["..", ".."]);
        let got = points(&empty, &full, [0.2, 0.2]);
        assert_eq!(got[0], (0.0, 0.0, -1));
        assert_eq!(got[1].2, 0);
    }

    #[test]
    fn objects_are_independent_rows() {
        let a = mask(&["#..", "...", "..."]);
        let b = mask(&["...", "...", "..#"]);
        let truth = Tensor::cat(&[&a, &b], 0);
        let pred = Tensor::zeros([2, 3, 3], (Kind::Bool, Device::Cpu));
        let draws = Tensor::from_slice(&[0.0f64, 0.0, 0.0, 0.0]).view([2, 2]);
        let cp = corrective_points(&truth, &pred, &draws);
        let c = Vec::<f32>::try_from(cp.coords.reshape([-1])).unwrap();
        // Positives at each object's only pixel; negatives at the first background pixel
        // inside each grown box (which here is the whole 3×3 image).
        assert_eq!(c, vec![0., 0., 1., 0., 2., 2., 0., 0.]);
        let l = Vec::<i64>::try_from(cp.labels.reshape([-1])).unwrap();
        assert_eq!(l, vec![1, 0, 1, 0]);
    }
}
