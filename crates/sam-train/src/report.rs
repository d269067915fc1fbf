//! The run's `logs/metrics.csv` (one row per epoch, appended across resumes) and the loss and
//! metric curves drawn from it as PNG.

use std::fs;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::TrainError;

/// One epoch's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, from 1.
    pub epoch: u64,
    /// Optimiser steps done at the end of the epoch.
    pub iteration: u64,
    /// Learning rate used during the epoch.
    pub lr: f64,
    /// Mean training loss (Dice + IoU-MSE over prompting rounds, plus the decoder loss).
    pub train_loss: f64,
    /// Mean training Dice loss of the prompted masks.
    pub train_dice_loss: f64,
    /// Mean training loss of the instance decoder (0 without a decoder).
    pub train_decoder_loss: f64,
    /// Validation Dice of box-prompted masks.
    pub val_dice: f64,
    /// Validation mean IoU of box-prompted masks.
    pub val_box_iou: f64,
    /// Validation mean segmentation accuracy.
    pub val_msa: f64,
    /// Validation SA at IoU 0.5.
    pub val_sa50: f64,
    /// Seconds the epoch took (training and validation).
    pub seconds: f64,
}

/// Appends [`EpochRecord`]s to a CSV file and redraws the curves.
#[derive(Debug, Clone)]
pub struct MetricsLog {
    csv: PathBuf,
}

impl MetricsLog {
    /// A log writing `dir/metrics.csv` and `dir/curves.png`.
    pub fn new(dir: &Path) -> Self {
        Self {
            csv: dir.join("metrics.csv"),
        }
    }

    /// Path of the CSV file.
    pub fn csv_path(&self) -> &Path {
        &self.csv
    }

    /// Every record written so far.
    pub fn read(&self) -> Result<Vec<EpochRecord>, TrainError> {
        read_rows(&self.csv)
    }

    /// Appends a record, dropping rows of later epochs first (left by a run that was killed
    /// after logging but before its checkpoint), then redraws the curves.
    pub fn append(&self, record: &EpochRecord) -> Result<(), TrainError> {
        let mut rows = self.read()?;
        rows.retain(|r| r.epoch < record.epoch);
        rows.push(record.clone());
        write_rows(&self.csv, &rows)?;
        let png = self.csv.with_file_name("curves.png");
        draw_curves(&rows, &png)
    }
}

/// One panel of the curves figure: its area, title and (name, value, colour) series.
type Panel<'a, DB> = (
    &'a DrawingArea<DB, plotters::coord::Shift>,
    &'a str,
    Vec<(&'a str, fn(&EpochRecord) -> f64, RGBColor)>,
);

/// Width and height of the curves figure, in pixels.
const CURVES_SIZE: (u32, u32) = (1000, 420);

/// Draws training loss and validation metrics against the epoch into a PNG at `path` (written
/// beside it and renamed, so a reader never sees half a file).
pub fn draw_curves(rows: &[EpochRecord], path: &Path) -> Result<(), TrainError> {
    let (width, height) = CURVES_SIZE;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    draw_curves_into(rows, &mut rgb, path)?;
    let image = image::RgbImage::from_raw(width, height, rgb)
        .ok_or_else(|| TrainError::format(path, "the figure's pixel buffer has the wrong size"))?;
    let tmp = path.with_extension("png.tmp");
    image
        .save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|e| TrainError::format(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Every row of the CSV log `path` (none when it does not exist yet).
pub(crate) fn read_rows<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, TrainError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).map_err(|e| TrainError::format(path, e))?;
    reader
        .deserialize()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| TrainError::format(path, e))
}

/// Writes `rows` as the CSV log `path`, with a header: into `path.csv.tmp`, then renamed, so
/// that a reader never sees half a file.
pub(crate) fn write_rows<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), TrainError> {
    let tmp = path.with_extension("csv.tmp");
    let err = |e: csv::Error| TrainError::format(path, e);
    {
        let mut writer = csv::Writer::from_path(&tmp).map_err(err)?;
        for r in rows {
            writer.serialize(r).map_err(err)?;
        }
        writer.flush().map_err(|e| TrainError::io(path, e))?;
    }
    fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Draws the curves figure into an RGB buffer of [`CURVES_SIZE`]; `path` names it in errors.
fn draw_curves_into(rows: &[EpochRecord], rgb: &mut [u8], path: &Path) -> Result<(), TrainError> {
    let root = BitMapBackend::with_buffer(rgb, CURVES_SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| TrainError::format(path, e))?;
    let (left, right) = root.split_horizontally(500);
    let max_epoch = rows.iter().map(|r| r.epoch).max().unwrap_or(1).max(1) as f64;
    let panels: [Panel<'_, _>; 2] = [
        (
            &left,
            "training loss",
            vec![
                ("loss", |r| r.train_loss, RED),
                ("dice loss", |r| r.train_dice_loss, BLUE),
                ("decoder loss", |r| r.train_decoder_loss, GREEN),
            ],
        ),
        (
            &right,
            "validation",
            vec![
                ("mSA", |r| r.val_msa, RED),
                ("SA50", |r| r.val_sa50, MAGENTA),
                ("box IoU", |r| r.val_box_iou, BLUE),
                ("Dice", |r| r.val_dice, GREEN),
            ],
        ),
    ];
    for (area, title, series) in panels {
        let y_max = rows
            .iter()
            .flat_map(|r| series.iter().map(move |(_, f, _)| f(r)))
            .filter(|v| v.is_finite())
            .fold(1e-3f64, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(45)
            .build_cartesian_2d(0.0..max_epoch, 0.0..y_max)
            .map_err(|e| TrainError::format(path, e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .draw()
            .map_err(|e| TrainError::format(path, e))?;
        for (name, f, colour) in series {
            let points: Vec<(f64, f64)> = rows
                .iter()
                .map(|r| (r.epoch as f64, f(r)))
                .filter(|p| p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|e| TrainError::format(path, e))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| TrainError::format(path, e))?;
    }
    root.present().map_err(|e| TrainError::format(path, e))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(epoch: u64, loss: f64) -> EpochRecord {
        EpochRecord {
            epoch,
            iteration: epoch * 4,
            lr: 1e-4,
            train_loss: loss,
            train_dice_loss: loss / 2.0,
            train_decoder_loss: 0.0,
            val_dice: 0.5,
            val_box_iou: 0.4,
            val_msa: 0.3,
            val_sa50: 0.6,
            seconds: 1.0,
        }
    }

    #[test]
    fn append_replaces_rows_of_rerun_epochs_and_draws_png() {
        let dir = tempfile::tempdir().unwrap();
        let log = MetricsLog::new(dir.path());
        log.append(&rec(1, 1.0)).unwrap();
        log.append(&rec(2, 0.9)).unwrap();
        log.append(&rec(2, 0.8)).unwrap(); // epoch 2 re-run after a resume
        let rows = log.read().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].train_loss, 0.8);
        let png = fs::read(dir.path().join("curves.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let figure = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(figure.dimensions(), CURVES_SIZE);
        // The loss line is drawn in pure red; the background is white.
        assert!(figure.pixels().any(|p| p.0 == [255, 0, 0]));
        assert_eq!(figure.get_pixel(2, 2).0, [255, 255, 255]);
        assert!(!dir.path().join("curves.png.tmp").exists());
    }
}
