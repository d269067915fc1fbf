//! The one place that parses config YAML: syntax, structure (against the JSON Schema), serde,
//! then semantic validation; every problem placed at its line and column.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::diagnostics::{ConfigError, Diagnostic, Problem, Severity};
use crate::estimate::WallTimeEstimate;
use crate::experiment::ExperimentConfig;
use crate::paths::find_root_for;
use crate::positions::{dotted, parse_dotted, Pos, PositionIndex, Seg};
use crate::schema::{check_structure, json_schema, Issue};
use crate::validate::ValidateOptions;

/// A config that loaded and validated, with what validation had to say.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config, defaults filled in.
    pub config: ExperimentConfig,
    /// Warnings, placed in the file. Callers decide whether to show them.
    pub warnings: Vec<Diagnostic>,
    /// The run's wall-time estimate.
    pub wall_time: Option<WallTimeEstimate>,
    /// The repository root the config's relative paths resolve against, when one was given
    /// or found ([`find_root_for`](crate::find_root_for)); `None` for config text.
    pub root: Option<PathBuf>,
}

/// Load, check and validate a config file with the default options (file-system checks on;
/// repository root from `$SAM_TRAINER_ROOT`, the working directory, or the config's folder).
pub fn load_config(path: impl AsRef<Path>) -> Result<Loaded, ConfigError> {
    load_config_with(path, &ValidateOptions::default())
}

/// Load, check and validate a config file. All problems are collected before returning; the
/// error lists each as `file:line:column: dotted.key: message (did you mean ...)`.
///
/// The repository root is `options.root`, else found by
/// [`find_root_for`](crate::find_root_for) (working directory, then the config's folder).
/// When a root is known, a relative file path in `model.checkpoint` comes back resolved
/// against it (micro_sam model names stay as they are), so that every command loads the same
/// file from whatever folder it is started; the data folders are resolved by
/// [`RunPaths::resolve`](crate::RunPaths::resolve).
pub fn load_config_with(
    path: impl AsRef<Path>,
    options: &ValidateOptions,
) -> Result<Loaded, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut options = options.clone();
    let root = match &options.root {
        Some(r) => Some(r.clone()),
        None => find_root_for(None, Some(path)).ok(),
    };
    if options.check_paths && options.root.is_none() {
        options.root = root.clone();
    }
    let mut loaded = parse_config_in(&text, Some(path), &options, path.parent())?;
    if let Some(root) = &root {
        let paths = crate::paths::RunPaths::new(root, &loaded.config);
        loaded.config.model.checkpoint = paths.model_checkpoint(&loaded.config.model);
    }
    loaded.root = root;
    Ok(loaded)
}

/// Check and validate config text. `file` only names the source in diagnostics.
pub fn parse_config(
    text: &str,
    file: Option<&Path>,
    options: &ValidateOptions,
) -> Result<Loaded, ConfigError> {
    parse_config_in(text, file, options, None)
}

/// [`parse_config`] for text read from a file in `config_dir`.
fn parse_config_in(
    text: &str,
    file: Option<&Path>,
    options: &ValidateOptions,
    config_dir: Option<&Path>,
) -> Result<Loaded, ConfigError> {
    // A bare file name has the working directory as its folder.
    let config_dir = config_dir.map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    });
    let config_dir = config_dir.and_then(|d| std::fs::canonicalize(d).ok());
    let config_dir = config_dir.as_deref();
    let file: Option<PathBuf> = file.map(Path::to_path_buf);
    let place = |pos: Pos, severity: Severity, problem: Problem| Diagnostic {
        file: file.clone(),
        line: pos.line,
        column: pos.column,
        severity,
        problem,
    };
    let invalid = |mut errors: Vec<Diagnostic>, warnings: Vec<Diagnostic>| {
        errors.sort_by_key(|d| (d.line, d.column));
        ConfigError::Invalid {
            file: file.clone(),
            errors,
            warnings,
        }
    };

    // 1. Syntax.
    let index = PositionIndex::build(text);
    let yaml: Yaml = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let mut d = serde_diagnostic(&e, &place);
            explain_syntax(&mut d, text);
            // serde_yaml gives no position for a duplicate key; the index knows the second one.
            let dup = d
                .problem
                .message
                .strip_prefix("duplicate entry with key \"");
            if let Some((path, pos)) = dup
                .and_then(|r| r.strip_suffix('"'))
                .and_then(|k| index.last_key_named(k))
            {
                (d.line, d.column) = (pos.line, pos.column);
                d.problem.key = dotted(&path);
            }
            return Err(invalid(vec![d], Vec::new()));
        }
    };

    // 2. Structure: every unknown key, wrong type and missing key, via the JSON Schema.
    let mut errors = Vec::new();
    let mut issues = Vec::new();
    let json = to_json(&yaml, &mut Vec::new(), &mut issues);
    if json.is_null() {
        let problem = Problem::new("", "the config is empty; see docs/config.md");
        return Err(invalid(
            vec![place(Pos::START, Severity::Error, problem)],
            Vec::new(),
        ));
    }
    // A value JSON cannot hold (NaN, inf) was reported above and replaced by null: the
    // schema's complaint about that null would name the same value twice, wrongly.
    let unrepresentable: Vec<Vec<Seg>> = issues.iter().map(|i| i.path.clone()).collect();
    match check_structure(&json_schema(), &json) {
        Ok(found) => issues.extend(
            found
                .into_iter()
                .filter(|i| !unrepresentable.contains(&i.path)),
        ),
        Err(e) => {
            let problem = Problem::new("", format!("internal error: invalid schema: {e}"));
            errors.push(place(Pos::START, Severity::Error, problem));
        }
    }
    let mut missing_required = false;
    let mut bad_paths = Vec::new();
    for issue in issues {
        let required = issue.problem.message.starts_with("missing required key");
        missing_required |= required;
        let pos = if issue.at_key || required {
            index.key(&issue.path)
        } else {
            index.value(&issue.path)
        };
        bad_paths.push(issue.path);
        errors.push(place(pos, Severity::Error, issue.problem));
    }
    if !errors.is_empty() {
        // Also report the semantic problems of everything else: drop the offending values
        // (defaults take their place) and validate the rest, leaving out problems about the
        // dropped values themselves. Not possible while a required key is missing.
        if !missing_required {
            let mut repaired = json;
            for p in &bad_paths {
                remove_path(&mut repaired, p);
            }
            if let Ok(config) = serde_json::from_value::<ExperimentConfig>(repaired) {
                let report = config.validate_in(options, config_dir);
                let related = |key: &str| {
                    let path = parse_dotted(key);
                    bad_paths
                        .iter()
                        .any(|b| path.starts_with(b) || b.starts_with(&path))
                };
                for p in report.errors.into_iter().filter(|p| !related(&p.key)) {
                    let pos = index.key(&parse_dotted(&p.key));
                    errors.push(place(pos, Severity::Error, p));
                }
            }
        }
        return Err(invalid(errors, Vec::new()));
    }

    // 3. serde, which must agree with the schema; it has the last word on types.
    let config: ExperimentConfig = match serde_yaml::from_str(text) {
        Ok(c) => c,
        Err(e) => return Err(invalid(vec![serde_diagnostic(&e, &place)], Vec::new())),
    };

    // 4. Semantics.
    let report = config.validate_in(options, config_dir);
    let locate = |p: &Problem| {
        let path = parse_dotted(&p.key);
        index.key(&path)
    };
    let warnings: Vec<Diagnostic> = report
        .warnings
        .into_iter()
        .map(|p| place(locate(&p), Severity::Warning, p))
        .collect();
    let errors: Vec<Diagnostic> = report
        .errors
        .into_iter()
        .map(|p| place(locate(&p), Severity::Error, p))
        .collect();
    if !errors.is_empty() {
        return Err(invalid(errors, warnings));
    }
    Ok(Loaded {
        config,
        warnings,
        wall_time: report.wall_time,
        root: None,
    })
}

/// Say in plain words what the YAML scanner's terse messages mean for the two mistakes it
/// names worst: a tab in the indentation and an integer too large for any config value.
fn explain_syntax(d: &mut Diagnostic, text: &str) {
    let line = text
        .lines()
        .nth(d.line.saturating_sub(1))
        .unwrap_or_default();
    let indent: String = line.chars().take_while(|c| c.is_whitespace()).collect();
    if let Some(i) = indent.find('\t') {
        d.column = indent[..i].chars().count() + 1;
        d.problem.message = format!(
            "line {} is indented with a tab character; YAML indents with spaces only: replace \
             the tab with spaces",
            d.line
        );
        return;
    }
    // serde_yaml: "invalid type: integer `N` as u128, expected any YAML value".
    let m = &d.problem.message;
    if m.contains(" as u128") || m.contains(" as i128") {
        let number = m
            .split('`')
            .nth(1)
            .map_or_else(String::new, |n| format!("{n} "));
        d.problem.message = format!(
            "the number {number}is too large for this key (no config value can exceed {}; \
             docs/config.md gives each key's range)",
            u64::MAX
        );
    }
}

/// Remove the value at `path` (a mapping entry or a sequence item) from `v`.
fn remove_path(v: &mut Json, path: &[Seg]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = &mut *v;
    for seg in parents {
        let next = match (seg, node) {
            (Seg::Key(k), Json::Object(m)) => m.get_mut(k),
            (Seg::Index(i), Json::Array(a)) => a.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => node = n,
            None => return,
        }
    }
    match (last, node) {
        (Seg::Key(k), Json::Object(m)) => {
            m.remove(k);
        }
        // Removing an item would shift the others; a sequence with a bad item is dropped
        // whole by its parent's entry instead.
        (Seg::Index(_), _) => remove_path(v, parents),
        _ => {}
    }
}

fn serde_diagnostic(
    e: &serde_yaml::Error,
    place: &dyn Fn(Pos, Severity, Problem) -> Diagnostic,
) -> Diagnostic {
    let pos = e.location().map_or(Pos::START, |l| Pos {
        line: l.line(),
        column: l.column(),
    });
    let msg = e.to_string();
    // serde_yaml appends " at line L column C"; the position is shown in front instead.
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg,
    };
    // serde_yaml starts path-aware messages with "dotted.key: ".
    let (key, msg) = match msg.split_once(": ") {
        Some((k, m)) if !k.contains(' ') => (k.to_owned(), m.to_owned()),
        _ => (String::new(), msg),
    };
    place(pos, Severity::Error, Problem::new(key, msg))
}

/// Convert parsed YAML to JSON for the schema check; values JSON cannot hold are reported.
fn to_json(v: &Yaml, path: &mut Vec<Seg>, issues: &mut Vec<Issue>) -> Json {
    match v {
        Yaml::Null => Json::Null,
        Yaml::Bool(b) => Json::Bool(*b),
        Yaml::Number(n) => {
            if let Some(i) = n.as_i64() {
                Json::from(i)
            } else if let Some(u) = n.as_u64() {
                Json::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f).map_or_else(
                    || {
                        issues.push(Issue {
                            path: path.clone(),
                            at_key: false,
                            problem: Problem::new(
                                dotted(path),
                                format!("expected a finite number, found {f}"),
                            ),
                        });
                        Json::Null
                    },
                    Json::Number,
                )
            }
        }
        Yaml::String(s) => Json::String(s.clone()),
        Yaml::Sequence(items) => Json::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    path.push(Seg::Index(i));
                    let j = to_json(item, path, issues);
                    path.pop();
                    j
                })
                .collect(),
        ),
        Yaml::Mapping(map) => {
            let mut out = serde_json::Map::new();
            for (k, item) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Bool(b) => b.to_string(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Null => "null".to_owned(),
                    _ => {
                        issues.push(Issue {
                            path: path.clone(),
                            at_key: false,
                            problem: Problem::new(dotted(path), "keys must be plain names"),
                        });
                        continue;
                    }
                };
                path.push(Seg::Key(key.clone()));
                let j = to_json(item, path, issues);
                path.pop();
                out.insert(key, j);
            }
            Json::Object(out)
        }
        Yaml::Tagged(t) => to_json(&t.value, path, issues),
    }
}

impl ExperimentConfig {
    /// The config as YAML (every field, defaults filled in), for saving the resolved config
    /// of a run to `runs/<experiment>/config.yaml`.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml::to_string(self).map_err(|e| ConfigError::Serialize(e.to_string()))
    }
}
