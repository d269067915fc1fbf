//! The label toolkit: connected components, consecutive relabelling, object ids and sizes, size
//! filtering, object statistics and outlines. Data loading, evaluation and inference post-processing
//! all use these, on [`LabelImage`]s and other [`Plane`]s.

use std::collections::HashMap;

use crate::image::LabelImage;
use crate::plane::Plane;

/// Which neighbours touch.
///
/// The default is [`Connectivity::Eight`], skimage's default (`connectivity=ndim`) for
/// `skimage.measure.label` on 2-D images. Every caller in the workspace still names its choice:
/// training targets, synthetic data, evaluation, the AIS seeds and AMG's small-region removal
/// use 8; AMG's splitting of merged masks into pieces uses 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connectivity {
    /// Up, down, left, right.
    Four,
    /// Also the diagonals.
    #[default]
    Eight,
}

/// Per-object statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectStats {
    /// The instance id.
    pub id: u32,
    /// Number of pixels.
    pub area: usize,
    /// Bounding box `[x0, y0, x1, y1]` in SAM's box-prompt order (x = column, y = row),
    /// `x1`/`y1` exclusive: numpy's `a[y0:y1, x0:x1]` holds the object.
    pub bbox: [usize; 4],
    /// Mean (x, y) = (column, row) of the pixels, the order of SAM's point prompts.
    pub centroid: (f64, f64),
}

/// A horizontal run of equal values: row, columns `start..end`.
struct Run<T> {
    row: usize,
    start: usize,
    end: usize,
    value: T,
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Runs of equal values other than `background`, row by row, and the union-find roots
/// connecting them (every run's entry is its root).
fn runs_and_roots<T: PartialEq + Copy>(
    image: &Plane<T>,
    background: T,
    conn: Connectivity,
) -> (Vec<Run<T>>, Vec<usize>) {
    let (h, w) = image.shape();
    let mut runs: Vec<Run<T>> = Vec::new();
    let mut row_start = Vec::with_capacity(h + 1);
    for y in 0..h {
        row_start.push(runs.len());
        let row = image.row(y);
        let mut x = 0;
        while x < w {
            let v = row[x];
            let s = x;
            while x < w && row[x] == v {
                x += 1;
            }
            if v != background {
                runs.push(Run {
                    row: y,
                    start: s,
                    end: x,
                    value: v,
                });
            }
        }
    }
    row_start.push(runs.len());
    let mut parent: Vec<usize> = (0..runs.len()).collect();
    let reach = usize::from(conn == Connectivity::Eight);
    for y in 1..h {
        let (prev, cur) = (
            row_start[y - 1]..row_start[y],
            row_start[y]..row_start[y + 1],
        );
        let mut j = prev.start;
        for i in cur {
            let (s, e) = (runs[i].start.saturating_sub(reach), runs[i].end + reach);
            // skip previous-row runs that end before this one can touch them
            while j < prev.end && runs[j].end <= s {
                j += 1;
            }
            let mut k = j;
            while k < prev.end && runs[k].start < e {
                if runs[k].value == runs[i].value {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, k));
                    if a != b {
                        parent[a.max(b)] = a.min(b);
                    }
                }
                k += 1;
            }
        }
    }
    for i in 0..runs.len() {
        find(&mut parent, i);
    }
    (runs, parent)
}

/// Connected components of equal-valued pixels other than `background` (as
/// `skimage.measure.label(image, background, connectivity)`, and bioimage_cpp's `label`): two
/// pixels share a component when a path of neighbour steps with constant value joins them.
/// Components are numbered 1..=n in row-major order of their first pixel; background pixels are
/// 0. Returns the components and n.
///
/// On a binary mask (`Plane<bool>`, background `false`) these are the mask's connected
/// regions; on a label image (background 0) an id split into pieces gives one component per
/// piece, and touching objects with different ids stay apart.
pub fn connected_components<T: PartialEq + Copy>(
    image: &Plane<T>,
    background: T,
    conn: Connectivity,
) -> (LabelImage, u32) {
    let (runs, parent) = runs_and_roots(image, background, conn);
    let mut comp = vec![0u32; runs.len()];
    let mut next = 0u32;
    let mut out = LabelImage::zeros(image.rows(), image.cols());
    for (i, r) in runs.iter().enumerate() {
        let root = parent[i];
        if comp[root] == 0 {
            next += 1;
            comp[root] = next;
        }
        out.row_mut(r.row)[r.start..r.end].fill(comp[root]);
    }
    (out, next)
}

/// Whether ids are small enough for table lookups instead of hashing.
fn dense(labels: &LabelImage) -> Option<usize> {
    let m = labels.max_id() as usize;
    (m <= labels.len().max(1 << 16)).then_some(m)
}

/// Per-id pixel counts.
fn counts(labels: &LabelImage) -> HashMap<u32, usize> {
    if let Some(m) = dense(labels) {
        let mut c = vec![0usize; m + 1];
        for &v in labels.as_slice() {
            c[v as usize] += 1;
        }
        return c
            .into_iter()
            .enumerate()
            .skip(1)
            .filter(|&(_, n)| n > 0)
            .map(|(i, n)| (i as u32, n))
            .collect();
    }
    let mut m: HashMap<u32, usize> = HashMap::new();
    let mut last = 0u32;
    let mut run = 0usize;
    for &v in labels.as_slice() {
        if v == last {
            run += 1;
        } else {
            if last != 0 {
                *m.entry(last).or_default() += run;
            }
            last = v;
            run = 1;
        }
    }
    if last != 0 {
        *m.entry(last).or_default() += run;
    }
    m
}

/// Sets every object with fewer than `min_size` pixels to background, in place. Returns the
/// number of objects removed.
pub fn remove_small_objects(labels: &mut LabelImage, min_size: usize) -> usize {
    if min_size <= 1 {
        return 0;
    }
    let small: HashMap<u32, usize> = counts(labels)
        .into_iter()
        .filter(|&(_, n)| n < min_size)
        .collect();
    if small.is_empty() {
        return 0;
    }
    if let Some(m) = dense(labels) {
        let mut drop = vec![false; m + 1];
        for &id in small.keys() {
            drop[id as usize] = true;
        }
        for v in labels.as_mut_slice() {
            if drop[*v as usize] {
                *v = 0;
            }
        }
    } else {
        for v in labels.as_mut_slice() {
            if *v != 0 && small.contains_key(v) {
                *v = 0;
            }
        }
    }
    small.len()
}

/// Sizes of all ids (index = id; index 0 counts the background). The vector has `max_id + 1`
/// entries: meant for consecutive ids, as [`connected_components`] returns them.
pub fn label_sizes(labels: &LabelImage) -> Vec<u64> {
    let mut sizes = vec![0u64; labels.max_id() as usize + 1];
    for &l in labels.as_slice() {
        sizes[l as usize] += 1;
    }
    sizes
}

/// Renumbers the ids present to 1..=n in place, keeping their order, 0 staying 0 (as skimage's
/// `relabel_sequential`). Returns n.
pub fn relabel_consecutive(labels: &mut LabelImage) -> u32 {
    if let Some(m) = dense(labels) {
        let mut table = vec![0u32; m + 1];
        for &v in labels.as_slice() {
            table[v as usize] = 1;
        }
        table[0] = 0;
        let mut next = 0;
        for t in table.iter_mut().skip(1) {
            if *t != 0 {
                next += 1;
                *t = next;
            }
        }
        for v in labels.as_mut_slice() {
            *v = table[*v as usize];
        }
        return next;
    }
    let ids = labels.ids();
    let map: HashMap<u32, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i as u32 + 1))
        .collect();
    for v in labels.as_mut_slice() {
        if *v != 0 {
            *v = map[v];
        }
    }
    ids.len() as u32
}

/// Sets objects smaller than `min_size` pixels to 0 and relabels consecutively (as torch_em's
/// `size_filter` without a height map); `min_size` 0 or 1 removes nothing. Returns the number
/// of objects left.
pub fn size_filter(labels: &mut LabelImage, min_size: u64) -> u32 {
    remove_small_objects(labels, usize::try_from(min_size).unwrap_or(usize::MAX));
    relabel_consecutive(labels)
}

/// The label transform used before training targets are built, as torch_em does it:
/// connected components (8-connected), objects below `min_size` removed, ids consecutive.
pub fn prepare_instances(labels: &LabelImage, min_size: usize) -> LabelImage {
    let (mut cc, _) = connected_components(labels, 0, Connectivity::Eight);
    if remove_small_objects(&mut cc, min_size) > 0 {
        relabel_consecutive(&mut cc);
    }
    cc
}

/// Makes every object one connected piece after a geometric transform: the largest piece of an
/// id keeps the id, other pieces of at least `min_size` pixels get new ids above the current
/// maximum, and pieces (largest included) below `min_size` become background.
pub fn split_fragments(labels: &LabelImage, min_size: usize) -> LabelImage {
    let (runs, parent) = runs_and_roots(labels, 0, Connectivity::Eight);
    // size of each component (keyed by root run)
    let mut size = vec![0usize; runs.len()];
    for (i, r) in runs.iter().enumerate() {
        size[parent[i]] += r.end - r.start;
    }
    // the largest component of every id
    let mut best: HashMap<u32, usize> = HashMap::new();
    for (i, r) in runs.iter().enumerate() {
        if parent[i] != i {
            continue;
        }
        let e = best.entry(r.value).or_insert(i);
        if size[i] > size[*e] {
            *e = i;
        }
    }
    let mut next = labels.max_id();
    let mut new_id = vec![0u32; runs.len()];
    for (i, r) in runs.iter().enumerate() {
        if parent[i] != i || size[i] < min_size.max(1) {
            continue;
        }
        new_id[i] = if best.get(&r.value) == Some(&i) {
            r.value
        } else {
            next = next.saturating_add(1);
            next
        };
    }
    let mut out = LabelImage::zeros(labels.rows(), labels.cols());
    for (i, r) in runs.iter().enumerate() {
        let id = new_id[parent[i]];
        if id != 0 {
            out.row_mut(r.row)[r.start..r.end].fill(id);
        }
    }
    out
}

/// Area, bounding box and centroid of every object, sorted by id.
pub fn object_stats(labels: &LabelImage) -> Vec<ObjectStats> {
    type Acc = (usize, [usize; 4], f64, f64);
    fn add(e: &mut Acc, x: usize, y: usize) {
        if e.0 == 0 {
            e.1 = [x, y, x + 1, y + 1];
        }
        e.0 += 1;
        e.1[0] = e.1[0].min(x);
        e.1[2] = e.1[2].max(x + 1);
        e.1[3] = y + 1;
        e.2 += x as f64;
        e.3 += y as f64;
    }
    let empty: Acc = (0, [0; 4], 0.0, 0.0);
    let mut acc: Vec<(u32, Acc)> = if let Some(m) = dense(labels) {
        let mut t = vec![empty; m + 1];
        for y in 0..labels.rows() {
            for (x, &v) in labels.row(y).iter().enumerate() {
                if v != 0 {
                    add(&mut t[v as usize], x, y);
                }
            }
        }
        t.into_iter()
            .enumerate()
            .filter(|(_, a)| a.0 > 0)
            .map(|(i, a)| (i as u32, a))
            .collect()
    } else {
        let mut t: HashMap<u32, Acc> = HashMap::new();
        for y in 0..labels.rows() {
            for (x, &v) in labels.row(y).iter().enumerate() {
                if v != 0 {
                    add(t.entry(v).or_insert(empty), x, y);
                }
            }
        }
        t.into_iter().collect()
    };
    acc.sort_by_key(|a| a.0);
    acc.into_iter()
        .map(|(id, (area, bbox, sx, sy))| ObjectStats {
            id,
            area,
            bbox,
            centroid: (sx / area as f64, sy / area as f64),
        })
        .collect()
}

/// Inner boundaries (skimage `find_boundaries(mode="inner")`): object pixels with a 4-neighbour
/// of a different value. Pixels outside the image count as equal (reflected), so the image
/// border itself is no boundary.
pub fn inner_boundaries(labels: &LabelImage) -> Plane<bool> {
    let (h, w) = labels.shape();
    let d = labels.as_slice();
    let mut out: Plane<bool> = Plane::zeros(h, w);
    let o = out.as_mut_slice();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let v = d[i];
            if v == 0 {
                continue;
            }
            o[i] = (x > 0 && d[i - 1] != v)
                || (x + 1 < w && d[i + 1] != v)
                || (y > 0 && d[i - w] != v)
                || (y + 1 < h && d[i + w] != v);
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn img(w: usize, rows: &[&[u32]]) -> LabelImage {
        LabelImage::from_vec(rows.len(), w, rows.concat()).unwrap()
    }

    fn plane<T: Copy>(rows: &[&[T]]) -> Plane<T> {
        Plane::from_vec(rows.len(), rows[0].len(), rows.concat()).unwrap()
    }

    #[test]
    fn four_and_eight_connectivity_differ_on_a_diagonal_pair() {
        // two pixels touching only at a corner: one object 8-connected, two 4-connected
        let m = plane(&[&[true, false], &[false, true]]);
        let (l8, n8) = connected_components(&m, false, Connectivity::Eight);
        assert_eq!((n8, l8.as_slice()), (1, &[1, 0, 0, 1][..]));
        let (l4, n4) = connected_components(&m, false, Connectivity::Four);
        assert_eq!((n4, l4.as_slice()), (2, &[1, 0, 0, 2][..]));
        // the documented default is skimage's: full (8-) connectivity in 2-D
        assert_eq!(Connectivity::default(), Connectivity::Eight);
    }

    #[test]
    fn components_eight_vs_four_and_first_occurrence_order() {
        let m = plane(&[
            &[0u8, 0, 1, 0, 1],
            &[1, 0, 0, 1, 0], // (1,3) touches (0,2) and (0,4) diagonally
            &[1, 0, 0, 0, 0],
        ]);
        let (l8, n8) = connected_components(&m, 0, Connectivity::Eight);
        assert_eq!(n8, 2);
        assert_eq!(
            l8.as_slice(),
            &[0, 0, 1, 0, 1, 2, 0, 0, 1, 0, 2, 0, 0, 0, 0]
        );
        let (l4, n4) = connected_components(&m, 0, Connectivity::Four);
        assert_eq!(n4, 4);
        assert_eq!(
            l4.as_slice(),
            &[0, 0, 1, 0, 2, 3, 0, 0, 4, 0, 3, 0, 0, 0, 0]
        );
    }

    #[test]
    fn components_of_a_label_image_split_equal_values_only() {
        let m = plane(&[&[5u32, 5, 7], &[0, 0, 7], &[5, 0, 7]]);
        let (l, n) = connected_components(&m, 0, Connectivity::Four);
        assert_eq!(n, 3);
        assert_eq!(l.as_slice(), &[1, 1, 2, 0, 0, 2, 3, 0, 2]);
    }

    #[test]
    fn size_filter_drops_small_and_relabels_in_order() {
        let mut l = plane(&[&[3u32, 3, 0, 9], &[3, 0, 4, 9], &[0, 0, 0, 9]]);
        let n = size_filter(&mut l, 3);
        // 3 (size 3) → 1, 4 (size 1) dropped, 9 (size 3) → 2.
        assert_eq!(n, 2);
        assert_eq!(l.as_slice(), &[1, 1, 0, 2, 1, 0, 0, 2, 0, 0, 0, 2]);
        let mut l = plane(&[&[0u32, 7, 7, 2]]);
        assert_eq!(size_filter(&mut l, 0), 2);
        assert_eq!(l.as_slice(), &[0, 2, 2, 1]);
        assert_eq!(label_sizes(&l), vec![1, 1, 2]);
        // sparse, huge ids take the hashing path
        let mut l = plane(&[&[u32::MAX, 0, 5, u32::MAX]]);
        assert_eq!(size_filter(&mut l, 2), 1);
        assert_eq!(l.as_slice(), &[1, 0, 0, 1]);
    }

    #[test]
    fn components_respect_connectivity_and_values() {
        let l = img(
            5,
            &[
                &[0, 0, 0, 0, 0],
                &[0, 3, 0, 0, 0],
                &[0, 0, 3, 0, 0],
                &[0, 0, 0, 5, 6],
                &[0, 0, 0, 0, 0],
            ],
        );
        // same as bioimage_cpp / skimage label on this input (row-major first occurrence)
        let (eight, n) = connected_components(&l, 0, Connectivity::Eight);
        assert_eq!(n, 3);
        assert_eq!(
            eight,
            img(
                5,
                &[
                    &[0, 0, 0, 0, 0],
                    &[0, 1, 0, 0, 0],
                    &[0, 0, 1, 0, 0],
                    &[0, 0, 0, 2, 3],
                    &[0, 0, 0, 0, 0]
                ]
            )
        );
        let (four, _) = connected_components(&l, 0, Connectivity::Four);
        assert_eq!(four.as_slice()[6], 1);
        assert_eq!(four.as_slice()[12], 2);
        assert_eq!(four.as_slice()[18], 3);
        assert_eq!(four.as_slice()[19], 4);
    }

    #[test]
    fn u_shape_merges_late() {
        // the two arms of a U meet only in the last row
        let l = img(3, &[&[7, 0, 7], &[7, 0, 7], &[7, 7, 7]]);
        let (cc, n) = connected_components(&l, 0, Connectivity::Four);
        assert_eq!(n, 1);
        assert!(
            cc.as_slice()
                .iter()
                .zip(l.as_slice())
                .all(|(c, v)| (*c == 1) == (*v == 7)),
            "{:?}",
            cc.as_slice()
        );
    }

    #[test]
    fn remove_small_and_relabel() {
        let mut l = img(4, &[&[9, 9, 0, 4], &[9, 9, 0, 0], &[0, 0, 2, 2]]);
        assert_eq!(remove_small_objects(&mut l, 2), 1);
        assert_eq!(l.as_slice(), &[9, 9, 0, 0, 9, 9, 0, 0, 0, 0, 2, 2]);
        assert_eq!(relabel_consecutive(&mut l), 2);
        assert_eq!(l.as_slice(), &[2, 2, 0, 0, 2, 2, 0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn prepare_instances_splits_and_filters() {
        // id 5 has two separate pieces (sizes 3 and 1), id 8 one piece of 2
        let l = img(5, &[&[5, 5, 0, 0, 5], &[5, 0, 0, 8, 8]]);
        let p = prepare_instances(&l, 2);
        assert_eq!(p.as_slice(), vec![1, 1, 0, 0, 0, 1, 0, 0, 2, 2]);
    }

    #[test]
    fn split_fragments_keeps_the_largest_piece_id() {
        let l = img(
            6,
            &[
                &[4, 4, 4, 0, 4, 4],
                &[4, 4, 0, 0, 4, 0],
                &[0, 0, 0, 0, 0, 4],
            ],
        );
        // pieces of 4: sizes 5 and 4 (the right one is 8-connected); the right one is new id 5
        let s = split_fragments(&l, 2);
        assert_eq!(
            s.as_slice(),
            vec![4, 4, 4, 0, 5, 5, 4, 4, 0, 0, 5, 0, 0, 0, 0, 0, 0, 5]
        );
        let s = split_fragments(&l, 5);
        assert_eq!(
            s.as_slice(),
            vec![4, 4, 4, 0, 0, 0, 4, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn stats_and_boundaries() {
        let l = img(4, &[&[0, 1, 1, 0], &[0, 1, 1, 2], &[0, 0, 0, 2]]);
        let s = object_stats(&l);
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].id, s[0].area, s[0].bbox), (1, 4, [1, 0, 3, 2]));
        assert_eq!(s[0].centroid, (1.5, 0.5));
        assert_eq!((s[1].area, s[1].bbox), (2, [3, 1, 4, 3]));
        let b = inner_boundaries(&l);
        // every pixel of object 1 touches background or object 2; pixel (3,2) of object 2
        // touches only itself, background at (2,2) and the image border
        assert_eq!(
            b.as_slice(),
            vec![false, true, true, false, false, true, true, true, false, false, false, true]
        );
    }
}
