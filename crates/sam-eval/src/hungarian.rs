//! Minimum-cost rectangular assignment (Hungarian method, shortest augmenting paths with
//! potentials, O(rows² · cols)).

/// Assigns every row of the `rows × cols` cost matrix (row-major, `rows <= cols`) to a distinct
/// column so that the total cost is minimal. Returns the column of each row.
///
/// Costs must be finite. Callers keep `rows <= cols` by transposing.
pub(crate) fn assign(costs: &[f64], rows: usize, cols: usize) -> Vec<usize> {
    debug_assert!(rows <= cols);
    debug_assert_eq!(costs.len(), rows * cols);
    if rows == 0 {
        return Vec::new();
    }
    // 1-based arrays; column 0 is the virtual start of each augmenting path.
    let mut u = vec![0.0f64; rows + 1];
    let mut v = vec![0.0f64; cols + 1];
    let mut row_of_col = vec![0usize; cols + 1];
    let mut way = vec![0usize; cols + 1];
    for row in 1..=rows {
        row_of_col[0] = row;
        let mut col0 = 0usize;
        let mut min_to = vec![f64::INFINITY; cols + 1];
        let mut used = vec![false; cols + 1];
        loop {
            used[col0] = true;
            let r0 = row_of_col[col0];
            let mut delta = f64::INFINITY;
            let mut col1 = 0usize;
            for col in 1..=cols {
                if used[col] {
                    continue;
                }
                let reduced = costs[(r0 - 1) * cols + (col - 1)] - u[r0] - v[col];
                if reduced < min_to[col] {
                    min_to[col] = reduced;
                    way[col] = col0;
                }
                if min_to[col] < delta {
                    delta = min_to[col];
                    col1 = col;
                }
            }
            for col in 0..=cols {
                if used[col] {
                    u[row_of_col[col]] += delta;
                    v[col] -= delta;
                } else {
                    min_to[col] -= delta;
                }
            }
            col0 = col1;
            if row_of_col[col0] == 0 {
                break;
            }
        }
        // Flip the augmenting path.
        loop {
            let col1 = way[col0];
            row_of_col[col0] = row_of_col[col1];
            col0 = col1;
            if col0 == 0 {
                break;
            }
        }
    }
    let mut assignment = vec![0usize; rows];
    for col in 1..=cols {
        if row_of_col[col] != 0 {
            assignment[row_of_col[col] - 1] = col - 1;
        }
    }
    assignment
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn total(costs: &[f64], cols: usize, a: &[usize]) -> f64 {
        a.iter()
            .enumerate()
            .map(|(r, &c)| costs[r * cols + c])
            .sum()
    }

    /// Minimum over all injective row → column maps, by exhaustive search.
    fn brute_force(costs: &[f64], rows: usize, cols: usize) -> f64 {
        fn go(costs: &[f64], rows: usize, cols: usize, r: usize, used: &mut [bool]) -> f64 {
            if r == rows {
                return 0.0;
            }
            let mut best = f64::INFINITY;
            for c in 0..cols {
                if !used[c] {
                    used[c] = true;
                    let v = costs[r * cols + c] + go(costs, rows, cols, r + 1, used);
                    used[c] = false;
                    best = best.min(v);
                }
            }
            best
        }
        go(costs, rows, cols, 0, &mut vec![false; cols])
    }

    #[test]
    fn known_three_by_three() {
        // Optimum: row0→col1 (1), row1→col0 (2), row2→col2 (2) = 5.
        let costs = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        let a = assign(&costs, 3, 3);
        assert_eq!(a, vec![1, 0, 2]);
        assert_eq!(total(&costs, 3, &a), 5.0);
    }

    #[test]
    fn matches_brute_force_on_random_rectangles() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..300 {
            let rows = rng.gen_range(1..=5);
            let cols = rng.gen_range(rows..=6);
            let costs: Vec<f64> = (0..rows * cols)
                .map(|_| {
                    if rng.gen_bool(0.4) {
                        0.0
                    } else {
                        -rng.gen_range(0.0..2.0)
                    }
                })
                .collect();
            let a = assign(&costs, rows, cols);
            let mut seen = a.clone();
            seen.sort_unstable();
            seen.dedup();
            assert_eq!(seen.len(), rows, "columns must be distinct: {a:?}");
            let expected = brute_force(&costs, rows, cols);
            assert!((total(&costs, cols, &a) - expected).abs() < 1e-12);
        }
    }

    #[test]
    fn empty_matrix() {
        assert!(assign(&[], 0, 3).is_empty());
    }
}
