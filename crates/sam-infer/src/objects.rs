//! The per-object CSV: id, area, centroid, bounding box and score of every object.

use std::io::Write;
use std::path::Path;

use sam_data::Plane;

use crate::error::{check_same_shape, InferError};

/// Mean of `values` over each object of `labels` (index = id - 1; NaN for absent ids), e.g. the
/// AIS score from the foreground probability.
pub fn mean_per_object(labels: &Plane<u32>, values: &Plane<f32>) -> Result<Vec<f32>, InferError> {
    check_same_shape(labels, values, "labels vs per-pixel values")?;
    let max = labels.as_slice().iter().copied().max().unwrap_or(0) as usize;
    let mut sum = vec![0f64; max + 1];
    let mut n = vec![0u64; max + 1];
    for (&l, &v) in labels.as_slice().iter().zip(values.as_slice()) {
        sum[l as usize] += f64::from(v);
        n[l as usize] += 1;
    }
    Ok((1..=max)
        .map(|i| {
            if n[i] > 0 {
                (sum[i] / n[i] as f64) as f32
            } else {
                f32::NAN
            }
        })
        .collect())
}

/// The CSV header of [`write_objects_csv`].
pub const OBJECTS_CSV_HEADER: &str =
    "id,area,centroid_y,centroid_x,bbox_y0,bbox_x0,bbox_y1,bbox_x1,score";

/// Write one row per object of `labels` (columns [`OBJECTS_CSV_HEADER`]; centroid = mean pixel
/// row / column; bbox max corner exclusive; `score` = `scores[id - 1]`, empty when missing).
/// Returns the number of objects.
pub fn write_objects_csv(
    path: &Path,
    labels: &Plane<u32>,
    scores: &[f32],
) -> Result<usize, InferError> {
    let stats = sam_data::object_stats(labels);
    let io = |e| InferError::io(path, e);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    writeln!(f, "{OBJECTS_CSV_HEADER}").map_err(io)?;
    for o in &stats {
        let score = match scores.get(o.id as usize - 1) {
            Some(s) if !s.is_nan() => format!("{s:.6}"),
            _ => String::new(),
        };
        let [x0, y0, x1, y1] = o.bbox;
        let (cx, cy) = o.centroid;
        writeln!(
            f,
            "{},{},{cy:.3},{cx:.3},{y0},{x0},{y1},{x1},{score}",
            o.id, o.area
        )
        .map_err(io)?;
    }
    f.flush().map_err(io)?;
    Ok(stats.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_by_hand() {
        // id 1: pixels (0,1), (0,2), (1,1) → area 3, centroid (1/3, 4/3), bbox rows 0..2, cols 1..3.
        // id 3: pixel (1,3) → score missing.
        let l = Plane::from_vec(2, 4, vec![0, 1, 1, 0, 0, 1, 0, 3]).unwrap();
        let v = Plane::from_vec(2, 4, vec![9.0, 0.2, 0.4, 9.0, 9.0, 0.6, 9.0, 1.0]).unwrap();
        let m = mean_per_object(&l, &v).unwrap();
        assert!((m[0] - 0.4).abs() < 1e-6 && m[1].is_nan() && m[2] == 1.0);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.csv");
        assert_eq!(write_objects_csv(&p, &l, &[0.4]).unwrap(), 2);
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], OBJECTS_CSV_HEADER);
        assert_eq!(lines[1], "1,3,0.333,1.333,0,1,2,3,0.400000");
        assert_eq!(lines[2], "3,1,1.000,3.000,1,3,2,4,");
    }
}
