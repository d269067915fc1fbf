//! TensorBoard event files: the format `tensorboard --logdir` reads, written without TensorFlow.
//!
//! An event file is a sequence of TFRecords, each
//!
//! ```text
//! u64 length (little-endian) | u32 masked CRC-32C of those 8 bytes | data | u32 masked CRC-32C of data
//! ```
//!
//! whose data is one serialised `tensorflow.Event` protobuf ([`Event`]). The first event of a
//! file carries `file_version: "brain.Event:2"` ([`FILE_VERSION`]); every later one a wall time,
//! a step and a `Summary` of tagged values, each a scalar (`simple_value`, an f32) or an encoded
//! image (`Summary.Image`). Only the fields written here are declared; their numbers are those of
//! TensorFlow's `event.proto` and `summary.proto`, and a reader skips any field it does not know.
//!
//! [`EventWriter`] creates a new file per process run (`events.out.tfevents.<unix seconds>.<host>.<pid>.<n>`,
//! the name TensorBoard looks for); TensorBoard merges the files of one folder. A resumed run
//! first calls [`discard_after`] with the step it resumes from, so that the steps the killed run
//! logged after its last checkpoint (and which the resumed run logs again) are not shown twice.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use sam_train::tensorboard::{read_events, EventWriter};
//! let dir = tempfile::tempdir()?;
//! let mut writer = EventWriter::create(dir.path())?;
//! writer.add_scalars(10, &[("train/loss", 0.25), ("train/lr", 1e-5)])?;
//! let events = read_events(writer.path())?;
//! assert_eq!(events.len(), 2); // the file version, then step 10
//! assert_eq!(events[1].step, 10);
//! # Ok(()) }
//! ```

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use prost::Message;

use crate::TrainError;

/// The `file_version` of the first event of every file (what TensorFlow writes).
pub const FILE_VERSION: &str = "brain.Event:2";

/// What every event file name starts with; TensorBoard reads the files whose name contains
/// `tfevents`.
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// `tensorflow.Event`: one record of an event file.
#[derive(Clone, PartialEq, Message)]
pub struct Event {
    /// Seconds since the Unix epoch when the event was written.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The training step (iteration) the event belongs to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// The payload: the file version or a summary.
    #[prost(oneof = "EventKind", tags = "3, 5")]
    pub what: Option<EventKind>,
}

/// The payload of an [`Event`] (the `what` oneof of `event.proto`, the two cases written here).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum EventKind {
    /// `file_version`: [`FILE_VERSION`] in the first event of a file.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// `summary`: tagged values.
    #[prost(message, tag = "5")]
    Summary(Summary),
}

/// `tensorflow.Summary`: the values of one event.
#[derive(Clone, PartialEq, Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`: one tagged value.
#[derive(Clone, PartialEq, Message)]
pub struct Value {
    /// The series the value belongs to (`train/loss`); TensorBoard groups tags by the part
    /// before the first `/`.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// The value.
    #[prost(oneof = "ValueKind", tags = "2, 4")]
    pub value: Option<ValueKind>,
}

/// The value of a [`Value`] (the `value` oneof of `summary.proto`, the two cases written here).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    /// `simple_value`: a scalar (TensorBoard keeps it as f32).
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// `image`: an encoded picture.
    #[prost(message, tag = "4")]
    Image(Image),
}

/// `tensorflow.Summary.Image`: an encoded picture and its size.
#[derive(Clone, PartialEq, Message)]
pub struct Image {
    /// Height in pixels.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Width in pixels.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// Channels: 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The PNG (or JPEG) file's bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

impl Event {
    /// The scalar values of a summary event, as (tag, value) pairs (none for other events).
    pub fn scalars(&self) -> Vec<(&str, f32)> {
        self.values()
            .filter_map(|v| match v.value {
                Some(ValueKind::SimpleValue(x)) => Some((v.tag.as_str(), x)),
                _ => None,
            })
            .collect()
    }

    /// The values of a summary event (none for other events).
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        let values = match &self.what {
            Some(EventKind::Summary(s)) => s.value.as_slice(),
            _ => &[],
        };
        values.iter()
    }
}

/// CRC-32C (Castagnoli) of `data`, masked as TFRecord stores it: rotated right by 15 bits plus
/// `0xa282ead8` (a checksum of data that holds checksums must not look like one).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// `data` framed as one TFRecord: length, its masked CRC, data, the data's masked CRC.
pub fn encode_record(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// The records at the start of `bytes` whose framing and checksums are intact, and how many
/// bytes they span. A torn record (a process killed while writing) or a corrupt one ends the
/// list: what follows it cannot be framed.
pub fn decode_records(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + 12) {
        let (len_bytes, len_crc) = header.split_at(8);
        if u32::from_le_bytes([len_crc[0], len_crc[1], len_crc[2], len_crc[3]])
            != masked_crc32c(len_bytes)
        {
            break;
        }
        let mut len = [0u8; 8];
        len.copy_from_slice(len_bytes);
        let Ok(len) = usize::try_from(u64::from_le_bytes(len)) else {
            break;
        };
        let start = at + 12;
        let Some(end) = start.checked_add(len) else {
            break;
        };
        let (Some(data), Some(crc)) = (bytes.get(start..end), bytes.get(end..end + 4)) else {
            break;
        };
        if u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) != masked_crc32c(data) {
            break;
        }
        records.push(data);
        at = end + 4;
    }
    (records, at)
}

/// The events of an event file, in file order. A torn or corrupt tail is left out (as
/// TensorBoard does); a record that is not an `Event` is an error.
pub fn read_events(path: &Path) -> Result<Vec<Event>, TrainError> {
    let bytes = fs::read(path).map_err(|e| TrainError::io(path, e))?;
    decode_records(&bytes)
        .0
        .into_iter()
        .map(|r| Event::decode(r).map_err(|e| TrainError::format(path, e)))
        .collect()
}

/// The event files of `dir` (none when it does not exist), sorted by name: the order
/// TensorBoard reads them in.
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, TrainError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| TrainError::io(dir, e))? {
        let path = entry.map_err(|e| TrainError::io(dir, e))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(FILE_PREFIX) && !name.ends_with(".tmp") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Removes from every event file in `dir` the events of steps after `last_step`, and any torn
/// tail; returns how many events were removed.
///
/// A run resumed from the checkpoint of iteration `last_step` logs every later step again; the
/// killed run may have logged some of them already (the steps between its last checkpoint and
/// the kill). Files that need no change are left untouched; the others are rewritten beside
/// themselves and renamed, so a reader never sees half a file. Events without a step (the file
/// version) are kept.
pub fn discard_after(dir: &Path, last_step: u64) -> Result<usize, TrainError> {
    let mut removed = 0;
    for path in event_files(dir)? {
        let bytes = fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        let (records, intact) = decode_records(&bytes);
        let keep: Vec<&[u8]> = records
            .iter()
            .copied()
            .filter(|r| match Event::decode(*r) {
                Ok(e) => u64::try_from(e.step).map_or(true, |s| s <= last_step),
                // Not ours to judge: kept as it is.
                Err(_) => true,
            })
            .collect();
        if keep.len() == records.len() && intact == bytes.len() {
            continue;
        }
        removed += records.len() - keep.len();
        let tmp = path.with_extension("tmp");
        let mut out = Vec::with_capacity(intact);
        for r in keep {
            out.extend_from_slice(&encode_record(r));
        }
        fs::write(&tmp, out).map_err(|e| TrainError::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| TrainError::io(&path, e))?;
    }
    Ok(removed)
}

/// Writes events to a new event file; every write reaches the file before it returns (a
/// killed run loses nothing it logged).
#[derive(Debug)]
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

impl EventWriter {
    /// A new event file in `dir` (created when missing), named as TensorFlow names them, that
    /// starts with the [`FILE_VERSION`] event. An existing file is never reused.
    pub fn create(dir: &Path) -> Result<Self, TrainError> {
        fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let host = host_name();
        let pid = std::process::id();
        let mut n = 0u32;
        let (path, file) = loop {
            let path = dir.join(format!("{FILE_PREFIX}{secs:010}.{host}.{pid}.{n}"));
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => break (path, file),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => n += 1,
                Err(e) => return Err(TrainError::io(&path, e)),
            }
        };
        let mut writer = Self { path, file };
        writer.write(&Event {
            wall_time: now(),
            step: 0,
            what: Some(EventKind::FileVersion(FILE_VERSION.into())),
        })?;
        Ok(writer)
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event.
    pub fn write(&mut self, event: &Event) -> Result<(), TrainError> {
        let record = encode_record(&event.encode_to_vec());
        self.file
            .write_all(&record)
            .and_then(|()| self.file.flush())
            .map_err(|e| TrainError::io(&self.path, e))
    }

    /// Appends one event of `step` holding these scalars (stored as f32, as TensorBoard keeps
    /// them). Nothing is written for an empty list.
    pub fn add_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<(), TrainError> {
        if scalars.is_empty() {
            return Ok(());
        }
        let value = scalars
            .iter()
            .map(|&(tag, x)| Value {
                tag: tag.into(),
                value: Some(ValueKind::SimpleValue(x as f32)),
            })
            .collect();
        self.write_summary(step, Summary { value })
    }

    /// Appends one event of `step` with the RGB picture `rgb` (`width × height` pixels, 3 bytes
    /// each, row-major) under `tag`, encoded as PNG.
    pub fn add_rgb_image(
        &mut self,
        tag: &str,
        step: u64,
        rgb: Vec<u8>,
        width: u32,
        height: u32,
    ) -> Result<(), TrainError> {
        let picture = image::RgbImage::from_raw(width, height, rgb).ok_or_else(|| {
            TrainError::format(
                &self.path,
                format!("{tag}: the pixel buffer does not hold {width}×{height} RGB pixels"),
            )
        })?;
        let mut png = Vec::new();
        picture
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(|e| TrainError::format(&self.path, e))?;
        let image = Image {
            height: i32::try_from(height).unwrap_or(i32::MAX),
            width: i32::try_from(width).unwrap_or(i32::MAX),
            colorspace: 3,
            encoded_image_string: png,
        };
        let value = vec![Value {
            tag: tag.into(),
            value: Some(ValueKind::Image(image)),
        }];
        self.write_summary(step, Summary { value })
    }

    fn write_summary(&mut self, step: u64, summary: Summary) -> Result<(), TrainError> {
        self.write(&Event {
            wall_time: now(),
            step: i64::try_from(step).unwrap_or(i64::MAX),
            what: Some(EventKind::Summary(summary)),
        })
    }
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This machine's name for file names (letters, digits, `-` and `_` only; `localhost` when
/// unknown).
fn host_name() -> String {
    let raw = fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = raw
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_its_mask_match_known_vectors() {
        // CRC-32C check values: "123456789" and RFC 3720's 32 zero and 32 0xff bytes.
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c::crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c::crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        // Masked as TensorFlow masks it (rotate right 15, add 0xa282ead8); the values of
        // TensorBoard's own `masked_crc32c` (tensorboard.compat.tensorflow_stub).
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(&3u64.to_le_bytes()), 0x0E49_99B0);
    }

    #[test]
    fn record_framing_is_length_crc_data_crc() {
        let r = encode_record(b"abc");
        assert_eq!(r.len(), 8 + 4 + 3 + 4);
        assert_eq!(&r[..8], &3u64.to_le_bytes());
        assert_eq!(&r[8..12], &masked_crc32c(&3u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&r[12..15], b"abc");
        assert_eq!(&r[15..], &masked_crc32c(b"abc").to_le_bytes());
        // Two records, then a torn third: the first two come back, spanning 2 × 19 bytes.
        let mut bytes = [r.clone(), encode_record(b"xyz")].concat();
        let whole = bytes.len();
        bytes.extend_from_slice(&encode_record(b"torn")[..10]);
        let (records, intact) = decode_records(&bytes);
        assert_eq!(records, vec![&b"abc"[..], &b"xyz"[..]]);
        assert_eq!(intact, whole);
        // A flipped data byte ends the list there.
        let mut bad = r.clone();
        bad[13] ^= 1;
        assert_eq!(decode_records(&bad), (Vec::<&[u8]>::new(), 0));
    }

    #[test]
    fn event_encoding_matches_hand_encoded_protobuf() {
        let e = Event {
            wall_time: 1.5,
            step: 3,
            what: Some(EventKind::Summary(Summary {
                value: vec![Value {
                    tag: "a".into(),
                    value: Some(ValueKind::SimpleValue(0.5)),
                }],
            })),
        };
        // field 1 double (tag 0x09), field 2 varint (0x10), field 5 bytes (0x2a) holding
        // Summary.value (0x0a) holding tag (0x0a "a") and simple_value float (0x15).
        let mut want = vec![0x09];
        want.extend_from_slice(&1.5f64.to_le_bytes());
        want.extend_from_slice(&[0x10, 3, 0x2a, 10, 0x0a, 8, 0x0a, 1, b'a', 0x15]);
        want.extend_from_slice(&0.5f32.to_le_bytes());
        assert_eq!(e.encode_to_vec(), want);
        assert_eq!(Event::decode(want.as_slice()).unwrap(), e);
        assert_eq!(e.scalars(), vec![("a", 0.5)]);
    }

    #[test]
    fn writer_round_trips_and_discard_after_removes_later_steps() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        for step in 1..=4 {
            w.add_scalars(step, &[("x", step as f64 / 4.0)]).unwrap();
        }
        w.add_scalars(5, &[]).unwrap();
        w.add_rgb_image("img", 4, vec![255; 2 * 3 * 3], 2, 3)
            .unwrap();
        assert!(w.add_rgb_image("img", 4, vec![0; 5], 2, 3).is_err());
        let path = w.path().to_path_buf();
        assert!(path
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with(FILE_PREFIX));
        // A second writer in the same second gets its own file.
        let w2 = EventWriter::create(dir.path()).unwrap();
        assert_ne!(w2.path(), path);
        assert_eq!(event_files(dir.path()).unwrap().len(), 2);

        let events = read_events(&path).unwrap();
        assert_eq!(
            events[0].what,
            Some(EventKind::FileVersion(FILE_VERSION.into()))
        );
        let steps: Vec<i64> = events.iter().map(|e| e.step).collect();
        assert_eq!(steps, [0, 1, 2, 3, 4, 4]);
        assert_eq!(events[3].scalars(), vec![("x", 0.75)]);
        match &events[5].values().next().unwrap().value {
            Some(ValueKind::Image(i)) => {
                assert_eq!((i.width, i.height, i.colorspace), (2, 3, 3));
                let png = image::load_from_memory(&i.encoded_image_string).unwrap();
                assert_eq!((png.width(), png.height()), (2, 3));
            }
            other => panic!("expected an image, got {other:?}"),
        }

        // A torn tail (killed mid-write) and steps 3 and 4 go; the rest stays byte for byte.
        drop(w);
        let mut bytes = fs::read(&path).unwrap();
        let before = bytes.clone();
        bytes.extend_from_slice(&[1, 2, 3]);
        fs::write(&path, &bytes).unwrap();
        assert_eq!(discard_after(dir.path(), 2).unwrap(), 3);
        let steps: Vec<i64> = read_events(&path).unwrap().iter().map(|e| e.step).collect();
        assert_eq!(steps, [0, 1, 2]);
        let after = fs::read(&path).unwrap();
        assert_eq!(after[..], before[..after.len()]);
        // Nothing left to remove: the file is not rewritten.
        assert_eq!(discard_after(dir.path(), 2).unwrap(), 0);
        assert_eq!(discard_after(&dir.path().join("missing"), 0).unwrap(), 0);
    }
}
