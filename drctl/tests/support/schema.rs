//! A validator for the JSON Schema subset docs/evidence.schema.json uses (type, required,
//! properties, additionalProperties: false, items, enum, const, oneOf, minimum/maximum,
//! minItems/maxItems, format uuid/date-time, the 64-hex pattern). A keyword it does not know
//! fails the validation, so the schema cannot grow past what is checked.

use serde_json::Value;

const KNOWN: &[&str] = &[
    "$schema",
    "$id",
    "title",
    "description",
    "type",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "oneOf",
    "minimum",
    "maximum",
    "minItems",
    "maxItems",
    "format",
    "pattern",
];

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("schema type {other} unknown"),
    }
}

fn format_ok(f: &str, s: &str) -> bool {
    match f {
        "uuid" => uuid::Uuid::parse_str(s).is_ok() && s.len() == 36,
        "date-time" => chrono::DateTime::parse_from_rfc3339(s).is_ok(),
        other => panic!("schema format {other} unknown"),
    }
}

/// Every violation, as `path: problem`.
pub fn validate(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let Some(s) = schema.as_object() else {
        return;
    };
    for k in s.keys() {
        assert!(
            KNOWN.contains(&k.as_str()),
            "schema keyword {k} not checked"
        );
    }
    let mut err = |m: String| errors.push(format!("{path}: {m}"));
    if let Some(t) = s.get("type") {
        let ok = match t {
            Value::String(t) => type_ok(t, v),
            Value::Array(ts) => ts.iter().any(|t| type_ok(t.as_str().unwrap(), v)),
            _ => panic!("bad type"),
        };
        if !ok {
            err(format!("{v} is not of type {t}"));
            return;
        }
    }
    if let Some(Value::Array(e)) = s.get("enum")
        && !e.contains(v)
    {
        err(format!("{v} not in {e:?}"));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        err(format!("{v} is not {c}"));
    }
    if let (Some(f), Some(sv)) = (s.get("format").and_then(Value::as_str), v.as_str())
        && !format_ok(f, sv)
    {
        err(format!("{sv} is not a {f}"));
    }
    if let (Some(p), Some(sv)) = (s.get("pattern").and_then(Value::as_str), v.as_str()) {
        assert_eq!(p, "^[0-9a-f]{64}$", "pattern not checked");
        if !(sv.len() == 64
            && sv
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        {
            err(format!("{sv} does not match {p}"));
        }
    }
    if let Some(n) = v.as_f64() {
        if s.get("minimum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n < m)
        {
            err(format!("{n} below minimum"));
        }
        if s.get("maximum")
            .and_then(Value::as_f64)
            .is_some_and(|m| n > m)
        {
            err(format!("{n} above maximum"));
        }
    }
    if let Some(Value::Array(options)) = s.get("oneOf") {
        let matching = options
            .iter()
            .filter(|o| {
                let mut e = Vec::new();
                validate(o, v, path, &mut e);
                e.is_empty()
            })
            .count();
        if matching != 1 {
            err(format!("matches {matching} of oneOf"));
        }
    }
    if let Some(o) = v.as_object() {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !o.contains_key(r.as_str().unwrap()) {
                errors.push(format!("{path}: missing {r}"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, val) in o {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => validate(ps, val, &format!("{path}/{k}"), errors),
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errors.push(format!("{path}: unexpected field {k}"))
                }
                None => {}
            }
        }
    }
    if let Some(a) = v.as_array() {
        if s.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| (a.len() as u64) < m)
        {
            errors.push(format!("{path}: fewer than minItems"));
        }
        if s.get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| (a.len() as u64) > m)
        {
            errors.push(format!("{path}: more than maxItems"));
        }
        if let Some(items) = s.get("items") {
            for (i, x) in a.iter().enumerate() {
                validate(items, x, &format!("{path}/{i}"), errors);
            }
        }
    }
}
