//! Seeded watershed, as micro_sam's AIS post-processing calls it
//! (`bioimage_cpp.segmentation.watershed`), written so that the result is deterministic. The
//! connected components, size filter and relabelling around it are sam-data's label toolkit.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use sam_data::Plane;

use crate::error::{check_same_shape, InferError};

/// Map an `f32` to a `u32` whose unsigned order is the float's total order (NaN sorts last).
fn ordered_bits(v: f32) -> u32 {
    let v = if v.is_nan() { f32::INFINITY } else { v };
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Asks the CPU to bring `value`'s cache line in (no effect where not supported).
#[inline(always)]
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint; the address comes from a valid reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch(
            (value as *const T).cast::<i8>(),
            std::arch::x86_64::_MM_HINT_T0,
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// Pixel state of [`seeded_watershed`]: outside the mask or the image.
const OUTSIDE: u32 = u32::MAX;

/// Min-priority queue of pixels for the watershed: pops the lowest height, and among equal
/// heights the earliest pushed (lowest age), exactly as one binary heap would.
///
/// One binary heap over millions of pixels spends its time in cache misses. Here heights are
/// grouped into at most 2^16 buckets by their order bits (the range that occurs, split evenly):
/// a push above the current bucket is an append to that bucket's list; the current bucket is
/// one binary heap, filled from its list when the flood reaches it; pushes below it (flooding
/// downhill) go to a separate heap that is always emptied first.
struct BucketQueue {
    /// Items above the current bucket, unordered, per bucket.
    lists: Vec<Vec<(u64, u32, u32)>>,
    /// Bucket of a height: `(ordered_bits - base) >> shift`.
    base: u32,
    shift: u32,
    /// Bit b set: list b is not empty.
    words: Vec<u64>,
    /// Bit k set: `words[k]` is not zero.
    summary: Vec<u64>,
    /// The bucket being flooded and its items.
    current: usize,
    active: BinaryHeap<Reverse<(u64, u32, u32)>>,
    /// Items below the current bucket.
    below: BinaryHeap<Reverse<(u64, u32, u32)>>,
}

impl BucketQueue {
    const MAX_BITS: u32 = 16;

    /// A queue for heights whose [`ordered_bits`] lie in `lo..=hi`.
    fn new(lo: u32, hi: u32) -> Self {
        let span = u64::from(hi.saturating_sub(lo)) + 1;
        let bits_needed = 64 - (span - 1).leading_zeros();
        let shift = bits_needed.saturating_sub(Self::MAX_BITS);
        let n = ((span - 1) >> shift) as usize + 1;
        let n_words = n.div_ceil(64);
        Self {
            lists: (0..n).map(|_| Vec::new()).collect(),
            base: lo.min(hi),
            shift,
            words: vec![0; n_words],
            summary: vec![0; n_words.div_ceil(64)],
            current: 0,
            active: BinaryHeap::new(),
            below: BinaryHeap::new(),
        }
    }

    fn push(&mut self, height_bits: u32, age: u32, pixel: u32, label: u32) {
        let b = ((height_bits - self.base) >> self.shift) as usize;
        let item = (
            (u64::from(height_bits) << 32) | u64::from(age),
            pixel,
            label,
        );
        match b.cmp(&self.current) {
            std::cmp::Ordering::Greater => {
                self.lists[b].push(item);
                self.words[b / 64] |= 1 << (b % 64);
                self.summary[b / 4096] |= 1 << ((b / 64) % 64);
            }
            std::cmp::Ordering::Equal => self.active.push(Reverse(item)),
            std::cmp::Ordering::Less => self.below.push(Reverse(item)),
        }
    }

    /// Pixels that [`BucketQueue::pop`] returns soon: the next one and the candidates for the
    /// one after (the heap's top and its children), where known without changing buckets.
    fn upcoming(&self) -> impl Iterator<Item = u32> + '_ {
        let heap = if self.below.is_empty() {
            &self.active
        } else {
            &self.below
        };
        heap.as_slice()
            .iter()
            .take(3)
            .map(|Reverse((_, pixel, _))| *pixel)
    }

    /// The next pixel and its label.
    fn pop(&mut self) -> Option<(u32, u32)> {
        if let Some(Reverse((_, pixel, label))) = self.below.pop() {
            return Some((pixel, label));
        }
        loop {
            if let Some(Reverse((_, pixel, label))) = self.active.pop() {
                return Some((pixel, label));
            }
            // the current bucket is flooded: move on to the next non-empty list
            let b = self.first_non_empty(self.current)?;
            let items = std::mem::take(&mut self.lists[b]);
            self.words[b / 64] &= !(1 << (b % 64));
            if self.words[b / 64] == 0 {
                self.summary[b / 4096] &= !(1 << ((b / 64) % 64));
            }
            self.current = b;
            // reuse the active heap's buffer: `items` becomes the heap (heapify, O(n))
            self.active = BinaryHeap::from(items.into_iter().map(Reverse).collect::<Vec<_>>());
        }
    }

    /// The first non-empty bucket at or above `from`.
    fn first_non_empty(&self, from: usize) -> Option<usize> {
        let w = from / 64;
        if w >= self.words.len() {
            return None;
        }
        let bits = self.words[w] & (!0u64 << (from % 64));
        if bits != 0 {
            return Some(w * 64 + bits.trailing_zeros() as usize);
        }
        // the next non-zero word, through the summary
        let next = w + 1;
        let mut s = next / 64;
        let mut mask = if next % 64 == 0 {
            !0u64
        } else {
            !0u64 << (next % 64)
        };
        while s < self.summary.len() {
            let bits = self.summary[s] & mask;
            if bits != 0 {
                let word = s * 64 + bits.trailing_zeros() as usize;
                return Some(word * 64 + self.words[word].trailing_zeros() as usize);
            }
            s += 1;
            mask = !0;
        }
        None
    }
}

/// Seeded watershed by priority flooding of `height` from the non-zero `markers`, 4-connected.
///
/// Pixels outside `mask` are never flooded and stay 0; markers outside it are dropped. Pixels the
/// flood cannot reach stay 0. The order is skimage's `watershed` (which bioimage_cpp, used by
/// micro_sam, reproduces): a pixel takes the label of the neighbour that reaches it first; the
/// queue pops the lowest height, and among equal heights the earliest pushed, with seeds pushed
/// first in row-major order and neighbours visited up, left, right, down. On ties skimage leaves
/// the order among seeds unspecified; here it is row-major, so the result is deterministic.
///
/// Fails when the shapes differ or a marker id is `u32::MAX` (reserved internally).
pub fn seeded_watershed(
    height: &Plane<f32>,
    markers: &Plane<u32>,
    mask: Option<&Plane<bool>>,
) -> Result<Plane<u32>, InferError> {
    check_same_shape(height, markers, "watershed height map vs markers")?;
    if markers.as_slice().contains(&OUTSIDE) {
        return Err(InferError::param(
            "markers",
            "ids below 4294967295",
            OUTSIDE,
        ));
    }
    if let Some(m) = mask {
        check_same_shape(height, m, "watershed height map vs mask")?;
    }
    let (h, w) = height.shape();
    // The state of every pixel with a one-pixel OUTSIDE border, so that the four neighbours of
    // a queued pixel are always at ±1 and ±pw: OUTSIDE (border or not in the mask), 0 = not
    // reached yet, or a label; next to it the pixel's height as order bits. The flood visits
    // pixels in height order, all over the image, so memory latency dominates: one cache line
    // holds both, and the next pixel's neighbourhood is prefetched.
    let pw = w + 2;
    let mut px = vec![[OUTSIDE, 0u32]; (h + 2) * pw];
    let (mut lo, mut hi) = (u32::MAX, 0u32);
    for y in 0..h {
        let row = y * w..(y + 1) * w;
        let prow = (y + 1) * pw + 1..(y + 1) * pw + 1 + w;
        let inside = mask.map(|m| &m.as_slice()[row.clone()]);
        for (x, (p, (&l, &v))) in px[prow]
            .iter_mut()
            .zip(
                markers.as_slice()[row.clone()]
                    .iter()
                    .zip(&height.as_slice()[row]),
            )
            .enumerate()
        {
            if inside.is_none_or(|m| m[x]) {
                let b = ordered_bits(v);
                *p = [l, b];
                // only pixels inside the mask are ever queued: their range sizes the buckets
                lo = lo.min(b);
                hi = hi.max(b);
            }
        }
    }
    let mut queue = BucketQueue::new(lo, hi);
    let mut age: u32 = 0;
    for (i, &[l, b]) in px.iter().enumerate() {
        // A seed with no unreached neighbour would flood nothing when popped: leaving it out
        // changes no other pixel's order (ages only order the queued pixels among themselves).
        if l != 0
            && l != OUTSIDE
            && [i - pw, i - 1, i + 1, i + pw]
                .iter()
                .any(|&j| px[j][0] == 0)
        {
            queue.push(b, age, i as u32, l);
            age += 1;
        }
    }
    while let Some((i, label)) = queue.pop() {
        let i = i as usize;
        // start loading the neighbourhoods of the next pixels while this one is processed
        for next in queue.upcoming() {
            let k = next as usize;
            for k in [k - pw, k, k + pw] {
                prefetch(&px[k]);
            }
        }
        // up, left, right, down: skimage's raveled neighbour order for connectivity 1.
        for j in [i - pw, i - 1, i + 1, i + pw] {
            if px[j][0] == 0 {
                px[j][0] = label;
                queue.push(px[j][1], age, j as u32, label);
                age += 1;
            }
        }
    }
    let mut out = Vec::with_capacity(h * w);
    for y in 0..h {
        let prow = &px[(y + 1) * pw + 1..(y + 1) * pw + 1 + w];
        out.extend(prow.iter().map(|&[l, _]| if l == OUTSIDE { 0 } else { l }));
    }
    Ok(Plane::from_vec(h, w, out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The flooding with one plain binary heap: the definition the bucket queue must reproduce.
    fn watershed_with_one_heap(
        height: &[f32],
        markers: &[u32],
        mask: &[bool],
        w: usize,
    ) -> Vec<u32> {
        let h = height.len() / w;
        let mut out: Vec<u32> = markers
            .iter()
            .zip(mask)
            .map(|(&m, &inside)| if inside { m } else { 0 })
            .collect();
        let mut heap = BinaryHeap::new();
        let mut age = 0u64;
        for (i, &l) in out.iter().enumerate() {
            if l != 0 {
                heap.push(Reverse((ordered_bits(height[i]), age, i)));
                age += 1;
            }
        }
        while let Some(Reverse((_, _, i))) = heap.pop() {
            let (y, x) = (i / w, i % w);
            let n = [
                (y > 0).then(|| i - w),
                (x > 0).then(|| i - 1),
                (x + 1 < w).then(|| i + 1),
                (y + 1 < h).then(|| i + w),
            ];
            for j in n.into_iter().flatten() {
                if out[j] == 0 && mask[j] {
                    out[j] = out[i];
                    heap.push(Reverse((ordered_bits(height[j]), age, j)));
                    age += 1;
                }
            }
        }
        out
    }

    #[test]
    fn watershed_rejects_the_reserved_marker_id() {
        let height = Plane::from_vec(1, 3, vec![0.0f32; 3]).unwrap();
        let markers = Plane::from_vec(1, 3, vec![1, 0, u32::MAX]).unwrap();
        let e = seeded_watershed(&height, &markers, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("markers"), "{e}");
    }

    #[test]
    fn bucket_queue_floods_exactly_like_one_heap() {
        // xorshift: reproducible pseudo-random maps without a dependency
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let (h, w) = (97, 131);
        for case in 0..6 {
            // few distinct levels: many ties, so the age order matters; some cases span
            // values far apart (negative, tiny, large) to use distant buckets
            let levels = [3u64, 7, 50, 1000, 65536, 1 << 24][case];
            let height: Vec<f32> = (0..h * w)
                .map(|_| {
                    let v = (next() % levels) as f32 / levels as f32;
                    if case % 2 == 1 {
                        (v - 0.3) * 1e3
                    } else {
                        v
                    }
                })
                .collect();
            let markers: Vec<u32> = (0..h * w)
                .map(|_| {
                    if next() % 50 == 0 {
                        (next() % 9 + 1) as u32
                    } else {
                        0
                    }
                })
                .collect();
            let mask: Vec<bool> = (0..h * w).map(|_| next() % 5 != 0).collect();
            let got = seeded_watershed(
                &Plane::from_vec(h, w, height.clone()).unwrap(),
                &Plane::from_vec(h, w, markers.clone()).unwrap(),
                Some(&Plane::from_vec(h, w, mask.clone()).unwrap()),
            )
            .unwrap();
            let want = watershed_with_one_heap(&height, &markers, &mask, w);
            assert_eq!(got.as_slice(), &want[..], "case {case}");
            assert!(want.iter().filter(|&&l| l != 0).count() > h * w / 2);
        }
    }

    fn plane<T: Copy>(rows: &[&[T]]) -> Plane<T> {
        let w = rows[0].len();
        Plane::from_vec(
            rows.len(),
            w,
            rows.iter().flat_map(|r| r.iter().copied()).collect(),
        )
        .unwrap()
    }

    #[test]
    fn watershed_splits_at_the_ridge() {
        // Heights 0 1 2 3 2 1 0, seeds at both ends. x=2 and x=4 both have height 2; x=2 was
        // pushed first (the left seed is first in row-major order), so it pops first and claims
        // the peak x=3 for label 1.
        let hgt = plane(&[&[0.0f32, 1.0, 2.0, 3.0, 2.0, 1.0, 0.0]]);
        let seeds = plane(&[&[1u32, 0, 0, 0, 0, 0, 2]]);
        let out = seeded_watershed(&hgt, &seeds, None).unwrap();
        assert_eq!(out.as_slice(), &[1, 1, 1, 1, 2, 2, 2]);
    }

    #[test]
    fn watershed_respects_mask_and_unreachable_pixels() {
        let hgt = plane(&[&[0.0f32, 0.5, 0.9, 0.1, 0.2]]);
        let seeds = plane(&[&[1u32, 0, 0, 0, 2]]);
        // x=2 is outside the mask: it separates the two floods; the seed at x=4 floods x=3.
        let mask = plane(&[&[true, true, false, true, true]]);
        let out = seeded_watershed(&hgt, &seeds, Some(&mask)).unwrap();
        assert_eq!(out.as_slice(), &[1, 1, 0, 2, 2]);
        // A masked-out seed is dropped; its pixels are then flooded by nobody.
        let mask = plane(&[&[false, true, false, true, true]]);
        let seeds = plane(&[&[1u32, 0, 0, 0, 0]]);
        let out = seeded_watershed(&hgt, &seeds, Some(&mask)).unwrap();
        assert_eq!(out.as_slice(), &[0, 0, 0, 0, 0]);
    }

    #[test]
    fn watershed_lowest_path_wins_in_2d() {
        // Seed 1 top-left, seed 2 bottom-right. Pixel (0,2) sits on a low corridor from seed 2
        // (column 2 is low) and behind a wall (col 1 = 9) from seed 1, so it goes to 2.
        let hgt = plane(&[&[0.0f32, 9.0, 0.1], &[0.2, 9.0, 0.1], &[0.3, 0.4, 0.0]]);
        let seeds = plane(&[&[1u32, 0, 0], &[0, 0, 0], &[0, 0, 2]]);
        let out = seeded_watershed(&hgt, &seeds, None).unwrap();
        // Flood order: seeds (0,0)=1 h0, (2,2)=2 h0. Pop (0,0): push (0,1)=1 h9, (1,0)=1 h.2.
        // Pop (2,2): push (1,2)=2 h.1, (2,1)=2 h.4. Pop (1,2): push (0,2)=2 h.1, (1,1)=2 h9.
        // Pop (0,2). Pop (1,0): push (2,0)=1 h.3. Then the rest are labelled already.
        assert_eq!(out.as_slice(), &[1, 1, 2, 1, 2, 2, 1, 2, 2]);
    }

    #[test]
    fn watershed_rejects_shape_mismatch() {
        let err = seeded_watershed(&Plane::zeros(2, 3), &Plane::zeros(3, 2), None).unwrap_err();
        assert!(err.to_string().contains("2×3"), "{err}");
    }

    #[test]
    fn ordered_bits_is_monotone() {
        let v = [-3.5f32, -0.0, 0.0, 1e-20, 0.5, 2.0, f32::INFINITY];
        for p in v.windows(2) {
            assert!(ordered_bits(p[0]) <= ordered_bits(p[1]), "{p:?}");
        }
        assert_eq!(ordered_bits(f32::NAN), ordered_bits(f32::INFINITY));
    }
}
