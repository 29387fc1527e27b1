//! Label and field selectors of LIST and WATCH.
//!
//! Label selectors follow apimachinery `labels.Parse`: comma-separated
//! requirements `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`,
//! `!k`. Field selectors follow `fields.ParseSelector` (`k=v`, `k==v`,
//! `k!=v`); every kind supports `metadata.name` and `metadata.namespace`, a
//! few kinds add their own fields (the registry's `GetAttrs`/field label
//! conversion funcs), and any other field is a 400.

use std::collections::BTreeMap;

use serde_json::Value;

use super::status::ApiError;

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<(String, Op)>);

impl LabelSelector {
    /// Parses `labelSelector`; a malformed one is a 400 like the real one.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let bad =
            |what: &str| ApiError::bad_request(format!("unable to parse requirement: {what}"));
        let mut reqs = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            if let Some(key) = part.strip_prefix('!') {
                reqs.push((
                    valid_key(key.trim()).ok_or_else(|| bad(part))?,
                    Op::NotExists,
                ));
            } else if let Some((key, value)) = part.split_once("!=") {
                reqs.push((
                    valid_key(key.trim()).ok_or_else(|| bad(part))?,
                    Op::NotEq(value.trim().into()),
                ));
            } else if let Some((key, value)) =
                part.split_once("==").or_else(|| part.split_once('='))
            {
                reqs.push((
                    valid_key(key.trim()).ok_or_else(|| bad(part))?,
                    Op::Eq(value.trim().into()),
                ));
            } else if let Some((key, set)) = split_set(part, " notin ") {
                reqs.push((
                    valid_key(key).ok_or_else(|| bad(part))?,
                    Op::NotIn(set.ok_or_else(|| bad(part))?),
                ));
            } else if let Some((key, set)) = split_set(part, " in ") {
                reqs.push((
                    valid_key(key).ok_or_else(|| bad(part))?,
                    Op::In(set.ok_or_else(|| bad(part))?),
                ));
            } else {
                reqs.push((valid_key(part).ok_or_else(|| bad(part))?, Op::Exists));
            }
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(key, op)| {
            let value = labels.get(key);
            match op {
                Op::Eq(v) => value == Some(v),
                Op::NotEq(v) => value != Some(v),
                Op::In(set) => value.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        })
    }

    /// Whether the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses `fieldSelector` for `kind`; an unknown field is a 400
    /// `field label not supported: <field>`, as the apiserver answers.
    pub fn parse(text: &str, kind: &str) -> Result<Self, ApiError> {
        let mut reqs = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (f, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported_fields(kind).contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            reqs.push((field.to_string(), equal, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// Whether the object's field values satisfy every requirement.
    pub fn matches(&self, fields: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = fields.get(field).map(String::as_str).unwrap_or("");
            (actual == value) == *equal
        })
    }

    /// Whether the selector has no requirement.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Fields a field selector may name for a kind.
fn supported_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        // pkg/registry/core/pod/strategy.go ToSelectableFields (a subset).
        "Pod" => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "status.phase",
        ],
        // pkg/registry/core/secret/strategy.go SelectableFields.
        "Secret" => &["metadata.name", "metadata.namespace", "type"],
        // pkg/registry/core/event/strategy.go ToSelectableFields (a subset).
        "Event" => &[
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.name",
            "involvedObject.namespace",
            "involvedObject.uid",
            "reason",
            "type",
        ],
        "Node" => &["metadata.name", "spec.unschedulable"],
        _ => &["metadata.name", "metadata.namespace"],
    }
}

/// The field-selectable values of an object (its `GetAttrs`).
pub(crate) fn field_values(kind: &str, obj: &Value) -> BTreeMap<String, String> {
    supported_fields(kind)
        .iter()
        .map(|field| {
            let value = field.split('.').try_fold(obj, |v, part| v.get(part));
            let text = match value {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (field.to_string(), text)
        })
        .collect()
}

fn valid_key(key: &str) -> Option<String> {
    let ok = !key.is_empty()
        && key.len() <= 317
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    ok.then(|| key.to_string())
}

/// `k in (a,b)` → (`k`, Some([a, b])); `None` if `op` is absent.
fn split_set<'a>(part: &'a str, op: &str) -> Option<(&'a str, Option<Vec<String>>)> {
    let (key, rest) = part.split_once(op)?;
    let set = rest
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .map(|inner| {
            inner
                .split(',')
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
                .collect()
        });
    Some((key.trim(), set))
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for (sel, expected) in [
            ("app=web", true),
            ("app==web,tier=front", true),
            ("app!=web", false),
            ("app in (api, web)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing,app in (web)", true),
            ("", true),
        ] {
            assert_eq!(
                LabelSelector::parse(sel).unwrap().matches(&l),
                expected,
                "{sel}"
            );
        }
        assert!(LabelSelector::parse("app in web").is_err());
        assert!(LabelSelector::parse("a b").is_err());
    }

    #[test]
    fn field_selector_rejects_unknown_fields() {
        let err = FieldSelector::parse("spec.foo=x", "ConfigMap").unwrap_err();
        assert_eq!(err.message, "field label not supported: spec.foo");
        let sel = FieldSelector::parse("metadata.name=a,status.phase!=Failed", "Pod").unwrap();
        let obj = serde_json::json!({"metadata": {"name": "a"}, "status": {"phase": "Running"}});
        assert!(sel.matches(&field_values("Pod", &obj)));
    }
}
