//! The JSON Schema of the config, and structural checking of a parsed document against it
//! with the `jsonschema` crate, turning its errors into [`Problem`]s with paths.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::ValidationError;
use serde_json::Value;

use crate::diagnostics::{did_you_mean, Problem};
use crate::experiment::ExperimentConfig;
use crate::positions::{dotted, Seg};

/// The JSON Schema (draft 2020-12) of [`ExperimentConfig`], generated from the types; every
/// field's doc comment is its `description`. `sam-train schema` prints it and
/// `configs/schema.json` is a copy for editors.
pub fn json_schema() -> Value {
    schemars::schema_for!(ExperimentConfig).to_value()
}

/// A structural problem: where it is, and whether it is best shown at the key (an unknown
/// key) or at the value.
#[derive(Debug)]
pub(crate) struct Issue {
    pub path: Vec<Seg>,
    pub at_key: bool,
    pub problem: Problem,
}

/// Check `instance` against `schema`; every problem, not only the first.
pub(crate) fn check_structure(schema: &Value, instance: &Value) -> Result<Vec<Issue>, String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    let mut issues = Vec::new();
    for err in validator.iter_errors(instance) {
        map_error(&err, schema, instance, &mut issues);
    }
    // One problem per place and message (anyOf branches can repeat each other).
    let mut seen = std::collections::HashSet::new();
    issues.retain(|i| seen.insert((i.path.clone(), i.problem.message.clone())));
    Ok(issues)
}

/// Split a JSON pointer into path segments, using the instance to tell keys from indices.
fn pointer_path(pointer: &str, instance: &Value) -> Vec<Seg> {
    let mut node = Some(instance);
    let mut path = Vec::new();
    for raw in pointer.split('/').skip(1) {
        let token = raw.replace("~1", "/").replace("~0", "~");
        match node {
            Some(Value::Array(items)) => match token.parse::<usize>() {
                Ok(i) => {
                    node = items.get(i);
                    path.push(Seg::Index(i));
                }
                Err(_) => {
                    node = None;
                    path.push(Seg::Key(token));
                }
            },
            Some(Value::Object(map)) => {
                node = map.get(&token);
                path.push(Seg::Key(token));
            }
            _ => {
                node = None;
                path.push(Seg::Key(token));
            }
        }
    }
    path
}

/// The schema that describes the value at `path`, following `$ref`, `allOf`, `anyOf` and
/// `oneOf` (the first branch that has the next property).
fn schema_at<'a>(root: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut node = resolve(root, root)?;
    for seg in path {
        node = match seg {
            Seg::Key(k) => find_branch(root, node, &|s| s.get("properties")?.get(k))?,
            Seg::Index(_) => find_branch(root, node, &|s| {
                s.get("items").or_else(|| s.get("prefixItems")?.get(0))
            })?,
        };
        node = resolve(root, node)?;
    }
    Some(node)
}

fn resolve<'a>(root: &'a Value, mut node: &'a Value) -> Option<&'a Value> {
    for _ in 0..32 {
        match node.get("$ref").and_then(Value::as_str) {
            Some(r) => node = root.pointer(r.strip_prefix('#')?)?,
            None => return Some(node),
        }
    }
    None
}

fn find_branch<'a>(
    root: &'a Value,
    node: &'a Value,
    get: &dyn Fn(&'a Value) -> Option<&'a Value>,
) -> Option<&'a Value> {
    let node = resolve(root, node)?;
    if let Some(found) = get(node) {
        return Some(found);
    }
    for comb in ["allOf", "anyOf", "oneOf"] {
        if let Some(branches) = node.get(comb).and_then(Value::as_array) {
            for b in branches {
                if let Some(found) = find_branch(root, b, get) {
                    return Some(found);
                }
            }
        }
    }
    None
}

/// The property names the schema allows at `path` (for "did you mean").
fn allowed_keys<'a>(root: &'a Value, path: &[Seg]) -> Vec<&'a str> {
    let Some(node) = schema_at(root, path) else {
        return Vec::new();
    };
    find_branch(root, node, &|s| s.get("properties"))
        .and_then(Value::as_object)
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

/// A short rendering of a found value for messages.
pub(crate) fn show(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Object(_) => "a mapping".to_owned(),
        Value::Array(a) => format!(
            "a list of {} item{}",
            a.len(),
            if a.len() == 1 { "" } else { "s" }
        ),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// "found ..." text: the type and the value, each once (`null`, `a list of 2 items`,
/// `an integer 5`, `a string "x"`).
fn found_text(v: &Value) -> String {
    match v {
        Value::Null | Value::Array(_) | Value::Object(_) => show(v),
        _ => format!("{} {}", type_name(v), show(v)),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn expected_types(kind: &TypeKind) -> String {
    let names: Vec<String> = match kind {
        TypeKind::Single(t) => vec![t.to_string()],
        TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect(),
    };
    let names: Vec<String> = names
        .into_iter()
        .map(|n| match n.as_str() {
            "object" => "a mapping".to_owned(),
            "array" => "a list".to_owned(),
            "integer" => "an integer".to_owned(),
            "null" => "null".to_owned(),
            other => format!("a {other}"),
        })
        .collect();
    names.join(" or ")
}

/// Constants allowed by a failed `oneOf`/`anyOf` whose branches are all `const`/`enum` or
/// `null`: the allowed values, and whether null is allowed.
fn const_choices(context: &[Vec<ValidationError<'static>>]) -> Option<(Vec<String>, bool)> {
    let mut values = Vec::new();
    let mut null_ok = false;
    for branch in context {
        for e in branch {
            match &e.kind {
                ValidationErrorKind::Constant { expected_value } => {
                    values.push(expected_value.as_str()?.to_owned());
                }
                ValidationErrorKind::Enum { options } => {
                    for o in options.as_array()? {
                        values.push(o.as_str()?.to_owned());
                    }
                }
                ValidationErrorKind::Type {
                    kind: TypeKind::Single(t),
                } if t.to_string() == "null" => {
                    null_ok = true;
                }
                ValidationErrorKind::OneOfNotValid { context }
                | ValidationErrorKind::AnyOf { context } => {
                    let (v, n) = const_choices(context)?;
                    values.extend(v);
                    null_ok |= n;
                }
                _ => return None,
            }
        }
    }
    (!values.is_empty()).then_some((values, null_ok))
}

fn map_error(err: &ValidationError<'_>, schema: &Value, instance: &Value, out: &mut Vec<Issue>) {
    let path = pointer_path(err.instance_path.as_str(), instance);
    let found = err.instance.as_ref();
    let at = |path: Vec<Seg>, at_key: bool, problem: Problem| Issue {
        path,
        at_key,
        problem,
    };
    let key = dotted(&path);
    match &err.kind {
        ValidationErrorKind::AdditionalProperties { unexpected }
        | ValidationErrorKind::UnevaluatedProperties { unexpected } => {
            let allowed = allowed_keys(schema, &path);
            for name in unexpected {
                let mut p = path.clone();
                p.push(Seg::Key(name.clone()));
                let where_ = if key.is_empty() {
                    "at the top level".to_owned()
                } else {
                    format!("in `{key}`")
                };
                let problem = Problem::new(dotted(&p), format!("unknown key `{name}` {where_}"))
                    .suggest(did_you_mean(name, allowed.iter().copied()));
                out.push(at(p, true, problem));
            }
        }
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default().to_owned();
            let mut p = path.clone();
            p.push(Seg::Key(name.clone()));
            let where_ = if key.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in `{key}`")
            };
            out.push(at(
                path.clone(),
                false,
                Problem::new(
                    dotted(&p),
                    format!("missing required key `{name}` {where_}"),
                ),
            ));
        }
        ValidationErrorKind::Type { kind } => {
            out.push(at(
                path,
                false,
                Problem::new(
                    key,
                    format!(
                        "expected {}, found {}",
                        expected_types(kind),
                        found_text(found)
                    ),
                ),
            ));
        }
        ValidationErrorKind::Enum { options } => {
            let choices: Vec<String> = options
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            out.push(at(path, false, choice_problem(key, &choices, false, found)));
        }
        ValidationErrorKind::OneOfNotValid { context } | ValidationErrorKind::AnyOf { context } => {
            if let Some((choices, null_ok)) = const_choices(context) {
                out.push(at(
                    path,
                    false,
                    choice_problem(key, &choices, null_ok, found),
                ));
                return;
            }
            // Pick the branch whose type matched (no type error at this very place) with the
            // fewest errors, and report its errors.
            let here = err.instance_path.as_str();
            let best = context
                .iter()
                .filter(|b| {
                    !b.iter().any(|e| {
                        e.instance_path.as_str() == here
                            && matches!(e.kind, ValidationErrorKind::Type { .. })
                    })
                })
                .min_by_key(|b| b.len());
            match best {
                Some(branch) if !branch.is_empty() => {
                    for e in branch {
                        map_error(e, schema, instance, out);
                    }
                }
                _ => {
                    let mut types = Vec::new();
                    for b in context {
                        for e in b {
                            if let ValidationErrorKind::Type { kind } = &e.kind {
                                let t = expected_types(kind);
                                if !types.contains(&t) {
                                    types.push(t);
                                }
                            }
                        }
                    }
                    let expected = if types.is_empty() {
                        "a valid value".to_owned()
                    } else {
                        types.join(" or ")
                    };
                    out.push(at(
                        path,
                        false,
                        Problem::new(
                            key,
                            format!("expected {expected}, found {}", found_text(found)),
                        ),
                    ));
                }
            }
        }
        ValidationErrorKind::Minimum { limit } => out.push(at(
            path,
            false,
            Problem::new(
                key,
                format!("must be at least {limit}, found {}", show(found)),
            ),
        )),
        ValidationErrorKind::Maximum { limit } => out.push(at(
            path,
            false,
            Problem::new(
                key,
                format!("must be at most {limit}, found {}", show(found)),
            ),
        )),
        ValidationErrorKind::MinItems { limit } | ValidationErrorKind::MaxItems { limit } => {
            let n = found.as_array().map_or(0, Vec::len);
            let bound = if matches!(err.kind, ValidationErrorKind::MinItems { .. }) {
                "at least"
            } else {
                "at most"
            };
            out.push(at(
                path,
                false,
                Problem::new(key, format!("expected {bound} {limit} items, found {n}")),
            ));
        }
        ValidationErrorKind::AdditionalItems { limit } => out.push(at(
            path,
            false,
            Problem::new(
                key,
                format!("expected at most {limit} items, found {}", show(found)),
            ),
        )),
        _ => out.push(at(path, false, Problem::new(key, err.to_string()))),
    }
}

fn choice_problem(key: String, choices: &[String], null_ok: bool, found: &Value) -> Problem {
    let mut list: Vec<String> = choices.iter().map(|c| format!("`{c}`")).collect();
    if null_ok {
        list.push("null".to_owned());
    }
    let suggestion = found
        .as_str()
        .and_then(|s| did_you_mean(s, choices.iter().map(String::as_str)));
    Problem::new(
        key,
        format!("expected one of {}, found {}", list.join(", "), show(found)),
    )
    .suggest(suggestion)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_describes_every_field() {
        // Every property of every object in the schema carries a description, so that editors
        // show the documentation.
        let schema = json_schema();
        let mut missing = Vec::new();
        fn walk(v: &Value, at: &str, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    if p.get("description").is_none() {
                        missing.push(format!("{at}.{k}"));
                    }
                }
            }
            match v {
                Value::Object(m) => m
                    .iter()
                    .for_each(|(k, c)| walk(c, &format!("{at}/{k}"), missing)),
                Value::Array(a) => a.iter().for_each(|c| walk(c, at, missing)),
                _ => {}
            }
        }
        walk(&schema, "", &mut missing);
        assert!(
            missing.is_empty(),
            "fields without description: {missing:?}"
        );
    }

    #[test]
    fn schema_knows_the_keys_of_nested_sections() {
        let schema = json_schema();
        let keys = allowed_keys(&schema, &[Seg::Key("training".into())]);
        assert!(
            keys.contains(&"n_sub_iteration") && keys.contains(&"lr"),
            "{keys:?}"
        );
        let keys = allowed_keys(
            &schema,
            &[Seg::Key("model".into()), Seg::Key("architecture".into())],
        );
        assert!(keys.contains(&"encoder_depth"), "{keys:?}");
    }
}
