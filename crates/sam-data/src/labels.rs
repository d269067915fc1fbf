//! Label transforms: connected components, minimum size, consecutive relabelling, object
//! statistics and outlines.

use std::collections::HashMap;

use crate::image::LabelImage;

/// Which neighbours touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Connectivity {
    /// Up, down, left, right.
    Four,
    /// Also the diagonals (skimage's default in 2D).
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
    /// Bounding box `[x0, y0, x1, y1]`, `x1`/`y1` exclusive.
    pub bbox: [usize; 4],
    /// Mean (x, y) of the pixels.
    pub centroid: (f64, f64),
}

struct Run {
    row: usize,
    start: usize,
    end: usize,
    value: u32,
}

fn find(parent: &mut [usize], mut i: usize) -> usize {
    while parent[i] != i {
        parent[i] = parent[parent[i]];
        i = parent[i];
    }
    i
}

/// Runs of equal non-zero values, row by row, and the union-find roots connecting them.
fn runs_and_roots(labels: &LabelImage, conn: Connectivity) -> (Vec<Run>, Vec<usize>) {
    let (w, h) = (labels.width, labels.height);
    let mut runs: Vec<Run> = Vec::new();
    let mut row_start = Vec::with_capacity(h + 1);
    for y in 0..h {
        row_start.push(runs.len());
        let row = &labels.data[y * w..(y + 1) * w];
        let mut x = 0;
        while x < w {
            let v = row[x];
            let s = x;
            while x < w && row[x] == v {
                x += 1;
            }
            if v != 0 {
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

/// Connected components of equal-valued non-zero pixels (as `skimage.measure.label` on a label
/// image): two pixels share a component when a path of neighbour steps with constant value
/// joins them. Components are numbered 1..N in row-major order of first appearance.
pub fn connected_components(labels: &LabelImage, conn: Connectivity) -> LabelImage {
    let (runs, parent) = runs_and_roots(labels, conn);
    let mut comp = vec![0u32; runs.len()];
    let mut next = 0u32;
    let mut out = LabelImage::zeros(labels.width, labels.height);
    for (i, r) in runs.iter().enumerate() {
        let root = parent[i];
        if comp[root] == 0 {
            next += 1;
            comp[root] = next;
        }
        let id = comp[root];
        let base = r.row * labels.width;
        out.data[base + r.start..base + r.end].fill(id);
    }
    out
}

/// Whether ids are small enough for table lookups instead of hashing.
fn dense(labels: &LabelImage) -> Option<usize> {
    let m = labels.max_id() as usize;
    (m <= labels.data.len().max(1 << 16)).then_some(m)
}

/// Per-id pixel counts.
fn counts(labels: &LabelImage) -> HashMap<u32, usize> {
    if let Some(m) = dense(labels) {
        let mut c = vec![0usize; m + 1];
        for &v in &labels.data {
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
    for &v in &labels.data {
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
        for v in labels.data.iter_mut() {
            if drop[*v as usize] {
                *v = 0;
            }
        }
    } else {
        for v in labels.data.iter_mut() {
            if *v != 0 && small.contains_key(v) {
                *v = 0;
            }
        }
    }
    small.len()
}

/// Renumbers the ids to 1..N keeping their order (as skimage's `relabel_sequential`).
pub fn relabel_consecutive(labels: &LabelImage) -> LabelImage {
    if let Some(m) = dense(labels) {
        let mut table = vec![0u32; m + 1];
        for &v in &labels.data {
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
        let data = labels.data.iter().map(|&v| table[v as usize]).collect();
        return LabelImage {
            width: labels.width,
            height: labels.height,
            data,
        };
    }
    let ids = labels.ids();
    let map: HashMap<u32, u32> = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| (id, i as u32 + 1))
        .collect();
    let data = labels
        .data
        .iter()
        .map(|v| if *v == 0 { 0 } else { map[v] })
        .collect();
    LabelImage {
        width: labels.width,
        height: labels.height,
        data,
    }
}

/// The label transform used before training targets are built, as torch_em does it:
/// connected components (8-connected), objects below `min_size` removed, ids consecutive.
pub fn prepare_instances(labels: &LabelImage, min_size: usize) -> LabelImage {
    let mut cc = connected_components(labels, Connectivity::Eight);
    if remove_small_objects(&mut cc, min_size) > 0 {
        cc = relabel_consecutive(&cc);
    }
    cc
}

/// Makes every object one connected piece after a geometric transform: the largest piece of an
/// id keeps the id, other pieces of at least `min_size` pixels get new ids above the current
/// maximum, and pieces (largest included) below `min_size` become background.
pub fn split_fragments(labels: &LabelImage, min_size: usize) -> LabelImage {
    let (runs, parent) = runs_and_roots(labels, Connectivity::Eight);
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
    let mut out = LabelImage::zeros(labels.width, labels.height);
    for (i, r) in runs.iter().enumerate() {
        let id = new_id[parent[i]];
        if id != 0 {
            let base = r.row * labels.width;
            out.data[base + r.start..base + r.end].fill(id);
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
        for y in 0..labels.height {
            let row = &labels.data[y * labels.width..(y + 1) * labels.width];
            for (x, &v) in row.iter().enumerate() {
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
        for y in 0..labels.height {
            let row = &labels.data[y * labels.width..(y + 1) * labels.width];
            for (x, &v) in row.iter().enumerate() {
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
pub fn inner_boundaries(labels: &LabelImage) -> Vec<bool> {
    let (w, h) = (labels.width, labels.height);
    let d = &labels.data;
    let mut out = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let v = d[i];
            if v == 0 {
                continue;
            }
            out[i] = (x > 0 && d[i - 1] != v)
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
        LabelImage::new(w, rows.len(), rows.concat()).unwrap()
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
        let eight = connected_components(&l, Connectivity::Eight);
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
        let four = connected_components(&l, Connectivity::Four);
        assert_eq!(four.data[6], 1);
        assert_eq!(four.data[12], 2);
        assert_eq!(four.data[18], 3);
        assert_eq!(four.data[19], 4);
    }

    #[test]
    fn u_shape_merges_late() {
        // the two arms of a U meet only in the last row
        let l = img(3, &[&[7, 0, 7], &[7, 0, 7], &[7, 7, 7]]);
        let cc = connected_components(&l, Connectivity::Four);
        assert!(
            cc.data
                .iter()
                .zip(&l.data)
                .all(|(c, v)| (*c == 1) == (*v == 7)),
            "{:?}",
            cc.data
        );
    }

    #[test]
    fn remove_small_and_relabel() {
        let mut l = img(4, &[&[9, 9, 0, 4], &[9, 9, 0, 0], &[0, 0, 2, 2]]);
        assert_eq!(remove_small_objects(&mut l, 2), 1);
        assert_eq!(l.data, vec![9, 9, 0, 0, 9, 9, 0, 0, 0, 0, 2, 2]);
        let r = relabel_consecutive(&l);
        assert_eq!(r.data, vec![2, 2, 0, 0, 2, 2, 0, 0, 0, 0, 1, 1]);
    }

    #[test]
    fn prepare_instances_splits_and_filters() {
        // id 5 has two separate pieces (sizes 3 and 1), id 8 one piece of 2
        let l = img(5, &[&[5, 5, 0, 0, 5], &[5, 0, 0, 8, 8]]);
        let p = prepare_instances(&l, 2);
        assert_eq!(p.data, vec![1, 1, 0, 0, 0, 1, 0, 0, 2, 2]);
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
            s.data,
            vec![4, 4, 4, 0, 5, 5, 4, 4, 0, 0, 5, 0, 0, 0, 0, 0, 0, 5]
        );
        let s = split_fragments(&l, 5);
        assert_eq!(
            s.data,
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
            b,
            vec![false, true, true, false, false, true, true, true, false, false, false, true]
        );
    }
}
