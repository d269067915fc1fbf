//! Prompt files for `sam-infer prompts`: points (positive / negative) and boxes per object.
//!
//! # CSV
//!
//! One row per point or box, with a header. Columns (any order; `image`, `label`, `x2`, `y2`
//! optional where not needed):
//!
//! ```text
//! image,object,kind,x,y,x2,y2,label
//! cells_01.tif,1,point,120,45,,,1     positive point of object 1
//! cells_01.tif,1,point,131,60,,,0     negative point of object 1
//! cells_01.tif,2,box,10,10,50,60,     box of object 2: (x, y) top-left, (x2, y2) bottom-right
//! ```
//!
//! # JSON
//!
//! A list of prompt sets (or `{"prompts": [...]}`):
//!
//! ```text
//! [{"image": "cells_01.tif", "object": 1, "points": [[120, 45], [131, 60]], "labels": [1, 0]},
//!  {"image": "cells_01.tif", "object": 2, "box": [10, 10, 50, 60]}]
//! ```
//!
//! Coordinates are pixels of the original image, `x` = column, `y` = row. Each prompt set (rows
//! sharing `image` and `object`) becomes one object. `image` matches an input file by name or by
//! stem; without it the prompts belong to the only input image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::InferError;

/// The prompts of one object.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptSet {
    /// The object name from the file (`object` column / key), or its 1-based position.
    pub object: String,
    /// Point coordinates `(x, y)` in image pixels.
    pub points: Vec<[f32; 2]>,
    /// One label per point: 1 = positive (inside the object), 0 = negative.
    pub labels: Vec<i64>,
    /// Optional box `[x0, y0, x1, y1]` in image pixels.
    pub bbox: Option<[f32; 4]>,
    /// Line (CSV, 1-based, header = 1) or list position (JSON, 1-based) where the set starts.
    pub line: usize,
}

/// All prompt sets of a file, grouped by image name (`None` = no image column / key).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PromptFile {
    /// The file the prompts came from.
    pub path: PathBuf,
    /// Prompt sets per image name, each list in file order.
    pub images: BTreeMap<Option<String>, Vec<PromptSet>>,
}

fn err(path: &Path, line: Option<usize>, message: impl Into<String>) -> InferError {
    InferError::Prompt {
        path: path.to_path_buf(),
        line,
        message: message.into(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSet {
    image: Option<String>,
    object: Option<serde_json::Value>,
    #[serde(default)]
    points: Vec<[f32; 2]>,
    labels: Option<Vec<i64>>,
    #[serde(rename = "box")]
    bbox: Option<[f32; 4]>,
}

/// Read a prompt file; `.json` is JSON, anything else CSV. Checks the structure (columns, kinds,
/// labels, box corners); coordinates against the image size are checked by
/// [`PromptFile::for_image`].
pub fn read_prompts(path: &Path) -> Result<PromptFile, InferError> {
    let text = std::fs::read_to_string(path).map_err(|e| InferError::io(path, e))?;
    let is_json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let file = if is_json {
        parse_json(path, &text)?
    } else {
        parse_csv(path, &text)?
    };
    if file.images.values().all(|v| v.is_empty()) {
        return Err(err(path, None, "no prompts in the file"));
    }
    Ok(file)
}

fn parse_json(path: &Path, text: &str) -> Result<PromptFile, InferError> {
    const SHAPE: &str = "a list of {\"image\", \"object\", \"points\": [[x, y], ...], \
                         \"labels\": [1|0, ...], \"box\": [x0, y0, x1, y1]}";
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| err(path, Some(e.line()), format!("{e}; expected {SHAPE}")))?;
    let list = match value {
        serde_json::Value::Array(v) => v,
        serde_json::Value::Object(mut m) if m.contains_key("prompts") => {
            match m.remove("prompts") {
                Some(serde_json::Value::Array(v)) => v,
                _ => return Err(err(path, None, format!("`prompts` must be {SHAPE}"))),
            }
        }
        _ => return Err(err(path, None, format!("expected {SHAPE}"))),
    };
    let mut sets = Vec::with_capacity(list.len());
    for (i, v) in list.into_iter().enumerate() {
        let set: JsonSet = serde_json::from_value(v).map_err(|e| {
            err(
                path,
                Some(i + 1),
                format!("prompt set {}: {e}; expected {SHAPE}", i + 1),
            )
        })?;
        sets.push(set);
    }
    let mut file = PromptFile {
        path: path.to_path_buf(),
        images: BTreeMap::new(),
    };
    for (i, s) in sets.into_iter().enumerate() {
        let pos = i + 1;
        let object = match s.object {
            None => pos.to_string(),
            Some(serde_json::Value::String(v)) => v,
            Some(v) => v.to_string(),
        };
        let labels = s.labels.unwrap_or_else(|| vec![1; s.points.len()]);
        if labels.len() != s.points.len() {
            return Err(err(
                path,
                Some(pos),
                format!(
                    "prompt set {pos} (object {object}): {} points but {} labels; give one label \
                     (1 = positive, 0 = negative) per point",
                    s.points.len(),
                    labels.len()
                ),
            ));
        }
        let set = PromptSet {
            object,
            points: s.points,
            labels,
            bbox: s.bbox,
            line: pos,
        };
        check_structure(path, &set)?;
        file.images.entry(s.image).or_default().push(set);
    }
    Ok(file)
}

fn parse_csv(path: &Path, text: &str) -> Result<PromptFile, InferError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| err(path, Some(1), e.to_string()))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    const KNOWN: [&str; 8] = ["image", "object", "kind", "x", "y", "x2", "y2", "label"];
    if let Some(i) = headers.iter().position(str::is_empty) {
        let named: Vec<&str> = headers.iter().filter(|h| !h.is_empty()).collect();
        let missing: Vec<&str> = KNOWN
            .iter()
            .copied()
            .filter(|k| !named.iter().any(|h| h.eq_ignore_ascii_case(k)))
            .collect();
        return Err(err(
            path,
            Some(1),
            format!(
                "header column {} of {} has no name (the header reads `{}`); every column \
                 needs one of the names {}{}",
                i + 1,
                headers.len(),
                headers.iter().collect::<Vec<_>>().join(","),
                KNOWN.join(","),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(" (not named yet: {})", missing.join(","))
                }
            ),
        ));
    }
    if let Some(unknown) = headers
        .iter()
        .find(|h| !KNOWN.iter().any(|k| k.eq_ignore_ascii_case(h)))
    {
        return Err(err(
            path,
            Some(1),
            format!(
                "unknown column `{unknown}`; expected columns {}",
                KNOWN.join(",")
            ),
        ));
    }
    let need = |name: &str| {
        col(name).ok_or_else(|| {
            err(
                path,
                Some(1),
                format!(
                    "missing column `{name}`; expected columns {}",
                    KNOWN.join(",")
                ),
            )
        })
    };
    let (c_object, c_kind, c_x, c_y) = (need("object")?, need("kind")?, need("x")?, need("y")?);
    let (c_image, c_x2, c_y2, c_label) = (col("image"), col("x2"), col("y2"), col("label"));

    // (image, object) → index into the image's list, to keep file order.
    let mut file = PromptFile {
        path: path.to_path_buf(),
        images: BTreeMap::new(),
    };
    let mut index: BTreeMap<(Option<String>, String), usize> = BTreeMap::new();
    for (row, record) in reader.records().enumerate() {
        let line = row + 2;
        let record = record.map_err(|e| match e.kind() {
            csv::ErrorKind::UnequalLengths { len, .. } => err(
                path,
                Some(line),
                format!(
                    "{len} fields, but the header names {} columns (`{}`): name every column in \
                     the header (expected columns {})",
                    headers.len(),
                    headers.iter().collect::<Vec<_>>().join(","),
                    KNOWN.join(",")
                ),
            ),
            _ => err(path, Some(line), e.to_string()),
        })?;
        let field = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or("").to_string();
        let number = |c: Option<usize>, name: &str| -> Result<f32, InferError> {
            let v = field(c);
            v.parse::<f32>()
                .ok()
                .filter(|n| n.is_finite())
                .ok_or_else(|| {
                    err(
                        path,
                        Some(line),
                        format!("column `{name}`: expected a number, found `{v}`"),
                    )
                })
        };
        let image = c_image.map(|_| field(c_image)).filter(|s| !s.is_empty());
        let object = field(Some(c_object));
        if object.is_empty() {
            return Err(err(
                path,
                Some(line),
                "column `object`: empty; name the object this prompt belongs to",
            ));
        }
        let key = (image.clone(), object.clone());
        let sets = file.images.entry(image).or_default();
        let at = *index.entry(key).or_insert_with(|| {
            sets.push(PromptSet {
                object,
                points: vec![],
                labels: vec![],
                bbox: None,
                line,
            });
            sets.len() - 1
        });
        let set = &mut sets[at];
        let kind = field(Some(c_kind)).to_ascii_lowercase();
        match kind.as_str() {
            "point" => {
                let (x, y) = (number(Some(c_x), "x")?, number(Some(c_y), "y")?);
                let label_text = field(c_label);
                let label = if label_text.is_empty() {
                    1
                } else {
                    label_text.parse::<i64>().map_err(|_| {
                        err(path, Some(line), format!("column `label`: expected 1 (positive) or 0 (negative), found `{label_text}`"))
                    })?
                };
                set.points.push([x, y]);
                set.labels.push(label);
            }
            "box" => {
                if set.bbox.is_some() {
                    return Err(err(
                        path,
                        Some(line),
                        format!(
                            "object `{}` has a second box; SAM takes one box per object",
                            set.object
                        ),
                    ));
                }
                let b = [
                    number(Some(c_x), "x")?,
                    number(Some(c_y), "y")?,
                    number(c_x2, "x2")?,
                    number(c_y2, "y2")?,
                ];
                set.bbox = Some(b);
            }
            other => {
                return Err(err(
                    path,
                    Some(line),
                    format!("column `kind`: expected `point` or `box`, found `{other}`"),
                ))
            }
        }
    }
    for sets in file.images.values() {
        for s in sets {
            check_structure(path, s)?;
        }
    }
    Ok(file)
}

fn check_structure(path: &Path, s: &PromptSet) -> Result<(), InferError> {
    if s.points.is_empty() && s.bbox.is_none() {
        return Err(err(
            path,
            Some(s.line),
            format!("object `{}` has neither points nor a box", s.object),
        ));
    }
    if let Some(l) = s.labels.iter().find(|&&l| l != 0 && l != 1) {
        return Err(err(
            path,
            Some(s.line),
            format!(
                "object `{}`: point label {l}; expected 1 (positive) or 0 (negative)",
                s.object
            ),
        ));
    }
    if let Some([x0, y0, x1, y1]) = s.bbox {
        if !(x1 > x0 && y1 > y0) {
            return Err(err(
                path,
                Some(s.line),
                format!(
                    "object `{}`: box [{x0}, {y0}, {x1}, {y1}] must have x2 > x and y2 > y",
                    s.object
                ),
            ));
        }
    }
    Ok(())
}

/// `name` (from the prompt file) names `image` when the file names or the stems agree
/// (`cells_01`, `cells_01.tif` and `cells_01.png` all name `/data/cells_01.tif`).
fn matches(name: &str, image: &Path) -> bool {
    let file_name = image.file_name().map(|n| n.to_string_lossy().to_string());
    let stem = image.file_stem().map(|n| n.to_string_lossy().to_string());
    let name_stem = Path::new(name)
        .file_stem()
        .map(|n| n.to_string_lossy().to_string());
    file_name.as_deref() == Some(name) || (stem.is_some() && stem == name_stem)
}

impl PromptFile {
    fn is_json(&self) -> bool {
        self.path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    }

    /// The prompt sets that name `image` (or no image), each object once.
    fn sets_of(&self, image: &Path) -> Result<Vec<PromptSet>, InferError> {
        let mut out: Vec<PromptSet> = Vec::new();
        for (name, sets) in &self.images {
            if name.as_deref().is_none_or(|n| matches(n, image)) {
                out.extend(sets.iter().cloned());
            }
        }
        for (i, s) in out.iter().enumerate() {
            if let Some(other) = out[..i].iter().find(|f| f.object == s.object) {
                let (first, s) = if other.line <= s.line {
                    (other, s)
                } else {
                    (s, other)
                };
                return Err(err(
                    &self.path,
                    Some(s.line),
                    format!(
                        "object `{}` of {} is given again (first at {} {}); each object \
                         becomes one label, so give its points and box in one prompt set, or \
                         use another object id",
                        s.object,
                        image.display(),
                        if self.is_json() { "prompt set" } else { "line" },
                        first.line
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// Fail when the file names images that are not among `inputs` (by file name or stem), has
    /// prompts without an image name while there are several inputs, or gives one object of an
    /// image twice.
    pub fn check_images(&self, inputs: &[PathBuf]) -> Result<(), InferError> {
        for input in inputs {
            self.sets_of(input)?;
        }
        let available = || {
            inputs
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for (name, sets) in &self.images {
            let line = sets.first().map(|s| s.line);
            match name {
                Some(n) if !inputs.iter().any(|p| matches(n, p)) => {
                    return Err(err(
                        &self.path,
                        line,
                        format!("unknown image `{n}`; the input images are: {}", available()),
                    ));
                }
                None if inputs.len() != 1 => {
                    return Err(err(&self.path, line, format!("prompts without an `image` name, but there are {} input images; add the image column ({})", inputs.len(), available())));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The prompt sets for `image` (of `shape = (h, w)`), with every coordinate checked to lie in
    /// the image: points in `[0, w) × [0, h)`, boxes in `[0, w] × [0, h]`. One object given
    /// twice (two JSON sets, or rows under two spellings of the image name) is an error: each
    /// object becomes one label.
    pub fn for_image(
        &self,
        image: &Path,
        shape: (usize, usize),
    ) -> Result<Vec<PromptSet>, InferError> {
        let out = self.sets_of(image)?;
        let img = image.display();
        let (h, w) = (shape.0 as f32, shape.1 as f32);
        for s in &out {
            for p in &s.points {
                if !(p[0] >= 0.0 && p[0] < w && p[1] >= 0.0 && p[1] < h) {
                    return Err(err(&self.path, Some(s.line), format!("object `{}`: point (x={}, y={}) lies outside {img} ({}×{} pixels: x in [0, {}), y in [0, {}))", s.object, p[0], p[1], shape.1, shape.0, shape.1, shape.0)));
                }
            }
            if let Some(b) = s.bbox {
                if !(b[0] >= 0.0 && b[1] >= 0.0 && b[2] <= w && b[3] <= h) {
                    return Err(err(
                        &self.path,
                        Some(s.line),
                        format!(
                            "object `{}`: box [{}, {}, {}, {}] exceeds {img} ({}×{} pixels)",
                            s.object, b[0], b[1], b[2], b[3], shape.1, shape.0
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn csv_groups_rows_into_sets() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "p.csv",
            "image,object,kind,x,y,x2,y2,label\n\
             a.tif,1,point,10,5,,,1\n\
             a.tif,2,box,1,2,30,40,\n\
             a.tif,1,point,12,6,,,0\n\
             b.tif,1,point,3,3,,,\n",
        );
        let f = read_prompts(&p).unwrap();
        let a = f.for_image(Path::new("/x/a.tif"), (50, 50)).unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].object, "1");
        assert_eq!(a[0].points, vec![[10.0, 5.0], [12.0, 6.0]]);
        assert_eq!(a[0].labels, vec![1, 0]);
        assert_eq!(a[1].bbox, Some([1.0, 2.0, 30.0, 40.0]));
        let b = f.for_image(Path::new("b.png"), (50, 50)).unwrap(); // matched by stem
        assert_eq!(b[0].labels, vec![1]); // empty label = positive
        f.check_images(&[PathBuf::from("a.tif"), PathBuf::from("b.tif")])
            .unwrap();
    }

    #[test]
    fn json_list_and_wrapped() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "p.json",
            r#"[{"points": [[1, 2]], "labels": [1]}, {"object": 7, "box": [0, 0, 4, 4]}]"#,
        );
        let f = read_prompts(&p).unwrap();
        let s = f.for_image(Path::new("any.tif"), (10, 10)).unwrap();
        assert_eq!((s[0].object.as_str(), s[1].object.as_str()), ("1", "7"));
        let p = write(
            d.path(),
            "q.json",
            r#"{"prompts": [{"image": "a", "points": [[1, 2]]}]}"#,
        );
        assert_eq!(read_prompts(&p).unwrap().images.len(), 1);
    }

    #[test]
    fn bad_coordinates_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "p.csv",
            "object,kind,x,y\n1,point,10,5\n2,point,64,3\n",
        );
        let f = read_prompts(&p).unwrap();
        let e = f
            .for_image(Path::new("img.tif"), (32, 64))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.csv:3") && e.contains("x=64") && e.contains("outside"),
            "{e}"
        );
        let p = write(d.path(), "b.json", r#"[{"box": [0, 0, 70, 10]}]"#);
        let e = read_prompts(&p)
            .unwrap()
            .for_image(Path::new("i.tif"), (32, 64))
            .unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
    }

    #[test]
    fn unknown_image_names_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "p.csv",
            "image,object,kind,x,y\nzzz.tif,1,point,1,1\n",
        );
        let e = read_prompts(&p)
            .unwrap()
            .check_images(&[PathBuf::from("/d/a.tif")])
            .unwrap_err();
        let e = e.to_string();
        assert!(
            e.contains("unknown image `zzz.tif`") && e.contains("a.tif") && e.contains(":2"),
            "{e}"
        );
    }

    #[test]
    fn structural_errors() {
        let d = tempfile::tempdir().unwrap();
        let cases = [
            (
                "object,kind,x,y\n1,circle,1,1\n",
                "expected `point` or `box`",
            ),
            (
                "object,kind,x,y\n1,point,one,1\n",
                "column `x`: expected a number, found `one`",
            ),
            ("object,kind,x,y,label\n1,point,1,1,2\n", "label 2"),
            ("object,kind,x,y,x2,y2\n1,box,5,5,2,9\n", "x2 > x"),
            (
                "object,kind,x,y,x2,y2\n1,box,0,0,2,2\n1,box,0,0,3,3\n",
                "second box",
            ),
            ("object,kind,x,z\n1,point,1,1\n", "unknown column `z`"),
            ("kind,x,y\npoint,1,1\n", "missing column `object`"),
            ("object,kind,x,y\n", "no prompts"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let p = write(d.path(), &format!("c{i}.csv"), text);
            let e = read_prompts(&p).unwrap_err().to_string();
            assert!(e.contains(want), "case {i}: {e}");
        }
        let p = write(
            d.path(),
            "l.json",
            r#"[{"points": [[1, 2], [3, 4]], "labels": [1]}]"#,
        );
        assert!(read_prompts(&p)
            .unwrap_err()
            .to_string()
            .contains("2 points but 1 labels"));
        let p = write(d.path(), "m.json", r#"[{"pts": [[1, 2]]}]"#);
        assert!(read_prompts(&p).unwrap_err().to_string().contains("m.json"));
    }
    #[test]
    fn issue_16_header_problems_name_the_columns() {
        let d = tempfile::tempdir().unwrap();
        // A trailing comma leaves the last header column without a name.
        let p = write(
            d.path(),
            "h.csv",
            "image,object,kind,x,y,\na.tif,1,point,1,1,\n",
        );
        let e = read_prompts(&p).unwrap_err().to_string();
        assert!(
            e.contains("h.csv:1: header column 6 of 6 has no name")
                && e.contains("not named yet: x2,y2,label")
                && !e.contains("``"),
            "{e}"
        );
        // Rows wider than the header.
        let p = write(
            d.path(),
            "w.csv",
            "image,object,kind,x,y\na.tif,2,box,1,2,30,40,\n",
        );
        let e = read_prompts(&p).unwrap_err().to_string();
        assert!(
            e.contains(
                "w.csv:2: 8 fields, but the header names 5 columns (`image,object,kind,x,y`)"
            ) && e.contains("expected columns image,object,kind,x,y,x2,y2,label"),
            "{e}"
        );
    }

    #[test]
    fn issue_16_an_object_given_twice_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "dup.json",
            r#"[{"object": 3, "points": [[1, 2]]}, {"object": 4, "box": [0, 0, 4, 4]},
                {"object": 3, "box": [0, 0, 5, 5]}]"#,
        );
        let f = read_prompts(&p).unwrap();
        for e in [
            f.check_images(&[PathBuf::from("a.tif")]).unwrap_err(),
            f.for_image(Path::new("a.tif"), (10, 10)).unwrap_err(),
        ] {
            let e = e.to_string();
            assert!(
                e.contains(
                    "dup.json:3: object `3` of a.tif is given again (first at prompt set 1)"
                ),
                "{e}"
            );
        }
        // CSV rows of one object under the file name and under the stem.
        let p = write(
            d.path(),
            "dup.csv",
            "image,object,kind,x,y\na.tif,1,point,1,1\na,1,point,2,2\n",
        );
        let e = read_prompts(&p)
            .unwrap()
            .check_images(&[PathBuf::from("/d/a.tif")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("object `1` of /d/a.tif is given again (first at line 2)"),
            "{e}"
        );
    }
}
