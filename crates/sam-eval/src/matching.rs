//! Optimal one-to-one matching of ground-truth and predicted objects at an IoU threshold.

use std::collections::HashMap;

use serde::Serialize;

use crate::contingency::Contingency;
use crate::hungarian;

/// A ground-truth object matched to a predicted object.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MatchedPair {
    /// Ground-truth object id.
    pub gt_id: u32,
    /// Predicted object id.
    pub pred_id: u32,
    /// IoU of the two objects.
    pub iou: f64,
}

impl Contingency {
    /// The optimal one-to-one matching between objects whose IoU is at least `threshold`.
    ///
    /// Optimal means: as many matched pairs as possible (a maximum-cardinality matching of
    /// the graph whose edges are the pairs with IoU ≥ `threshold`), and among those the
    /// largest total IoU. This is the matching elf builds with
    /// `linear_sum_assignment(-(iou >= t) - iou / (2 n))`, so the number of pairs, which is
    /// the true-positive count, is always the same as elf's.
    ///
    /// The graph is split into connected components; a component with one edge is matched
    /// directly and larger components are solved by the Hungarian method. For thresholds
    /// ≥ 0.5 an object has at most two candidate partners, so components stay tiny.
    ///
    /// The result is sorted by ground-truth id.
    pub fn match_at(&self, threshold: f64) -> Vec<MatchedPair> {
        let pairs = self.pairs();
        let edges: Vec<usize> = (0..pairs.len())
            .filter(|&i| pairs[i].iou >= threshold)
            .collect();
        let n_gt = self.gt_ids().len();
        let mut forest = UnionFind::new(n_gt + self.pred_ids().len());
        for &e in &edges {
            forest.union(pairs[e].gt, n_gt + pairs[e].pred);
        }
        let mut components: HashMap<usize, Vec<usize>> = HashMap::new();
        for &e in &edges {
            components
                .entry(forest.find(pairs[e].gt))
                .or_default()
                .push(e);
        }

        let mut matched: Vec<(usize, usize, f64)> = Vec::new();
        for component in components.values() {
            if let [e] = component.as_slice() {
                matched.push((pairs[*e].gt, pairs[*e].pred, pairs[*e].iou));
                continue;
            }
            let mut gts: Vec<usize> = component.iter().map(|&e| pairs[e].gt).collect();
            let mut preds: Vec<usize> = component.iter().map(|&e| pairs[e].pred).collect();
            gts.sort_unstable();
            gts.dedup();
            preds.sort_unstable();
            preds.dedup();
            // Rows are the smaller side so that every row can be assigned.
            let gt_rows = gts.len() <= preds.len();
            let (rows, cols) = if gt_rows {
                (gts.len(), preds.len())
            } else {
                (preds.len(), gts.len())
            };
            let scale = 2.0 * rows as f64;
            let mut costs = vec![0.0f64; rows * cols];
            for &e in component {
                let g = gts.partition_point(|&x| x < pairs[e].gt);
                let p = preds.partition_point(|&x| x < pairs[e].pred);
                let (r, c) = if gt_rows { (g, p) } else { (p, g) };
                // One unit per matched pair dominates the IoU tie-breaker (sum < 1/2).
                costs[r * cols + c] = -(1.0 + pairs[e].iou / scale);
            }
            for (r, c) in hungarian::assign(&costs, rows, cols)
                .into_iter()
                .enumerate()
            {
                if costs[r * cols + c] < 0.0 {
                    let (g, p) = if gt_rows {
                        (gts[r], preds[c])
                    } else {
                        (gts[c], preds[r])
                    };
                    let iou = component
                        .iter()
                        .map(|&e| &pairs[e])
                        .find(|pair| pair.gt == g && pair.pred == p)
                        .map_or(0.0, |pair| pair.iou);
                    matched.push((g, p, iou));
                }
            }
        }
        matched.sort_unstable_by_key(|m| (m.0, m.1));
        matched
            .into_iter()
            .map(|(g, p, iou)| MatchedPair {
                gt_id: self.gt_ids()[g],
                pred_id: self.pred_ids()[p],
                iou,
            })
            .collect()
    }

    /// Number of true positives at `threshold`: the size of [`Self::match_at`].
    pub fn true_positives(&self, threshold: f64) -> usize {
        self.match_at(threshold).len()
    }
}

/// Disjoint sets with path halving.
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra] = rb;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn split_halves_match_only_once() {
        // gt: one object of 4 pixels; pred: split into two halves of 2 pixels each.
        // Both halves have IoU 2/4 = 0.5 with the object, but only one can be matched.
        let gt = [1, 1, 1, 1];
        let pred = [3, 3, 4, 4];
        let c = Contingency::new(&gt, &pred).unwrap();
        let m = c.match_at(0.5);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].gt_id, 1);
        assert_eq!(m[0].iou, 0.5);
        assert_eq!(c.true_positives(0.55), 0);
    }

    #[test]
    fn weak_overlaps_below_threshold_are_not_edges() {
        // gt:   1 1 2 2 2 2 0 0   a = 1 (2 px), b = 2 (4 px)
        // pred: 5 5 5 6 6 6 6 6   x = 5 (3 px), y = 6 (5 px)
        // a∩x = 2 → IoU 2/3; b∩x = 1 → 1/6; b∩y = 3 → 3/6 = 0.5 (exactly at the threshold).
        let gt = [1, 1, 2, 2, 2, 2, 0, 0];
        let pred = [5, 5, 5, 6, 6, 6, 6, 6];
        let c = Contingency::new(&gt, &pred).unwrap();
        let m = c.match_at(0.5);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].gt_id, m[0].pred_id, m[0].iou), (1, 5, 2.0 / 3.0));
        assert_eq!((m[1].gt_id, m[1].pred_id, m[1].iou), (2, 6, 0.5));
        assert_eq!(c.true_positives(0.55), 1);
    }

    #[test]
    fn low_threshold_component_uses_hungarian() {
        // At t = 0.1 the chain a–x–b–y is one component of three edges; the maximum
        // matching has two pairs: (a,x), (b,y).
        // gt:   1 1 1 2 2 2
        // pred: 5 5 5 5 6 6
        // a∩x = 3/4 ; b∩x = 1/(3+4-1)=1/6 ; b∩y = 2/3
        let gt = [1, 1, 1, 2, 2, 2];
        let pred = [5, 5, 5, 5, 6, 6];
        let c = Contingency::new(&gt, &pred).unwrap();
        let m = c.match_at(0.1);
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].gt_id, m[0].pred_id, m[0].iou), (1, 5, 0.75));
        assert_eq!((m[1].gt_id, m[1].pred_id, m[1].iou), (2, 6, 2.0 / 3.0));
    }
}
