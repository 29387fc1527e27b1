//! The small languages of a `resources:` entry and of `sns.routes`, checked
//! at start-up so a typo fails there, naming the field, instead of as a 400
//! from every API server or as a rule that silently matches nothing:
//!
//! - label selectors, as apimachinery's `labels.Parse` reads them;
//! - field selectors, as `fields.ParseSelector` reads them;
//! - object paths (`metadata.annotations.leader`,
//!   `status.conditions[*].lastHeartbeatTime`, `data["tls.crt"]`);
//! - `*` globs of route matches.
//!
//! Like the rest of `config`, imports nothing of kubeherald.

use serde_json::Value;

/// Checks a `labelSelector`: comma-separated requirements `key=value`,
/// `key==value`, `key!=value`, `key in (a,b)`, `key notin (a,b)`, `key`
/// (exists) and `!key` (does not exist). Keys are `[prefix/]name` (the
/// prefix a DNS subdomain of at most 253 characters, the name at most 63
/// of `[A-Za-z0-9_.-]`, alphanumeric at both ends), values at most 63 of
/// the same characters or empty (apimachinery `validation.IsQualifiedName`,
/// `IsValidLabelValue`). Returns what is wrong.
pub fn check_label_selector(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(
            "empty; write requirements such as `app=web,tier!=cache`, or remove the field".into(),
        );
    }
    for part in split_outside_parentheses(text) {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("{text:?} has an empty requirement (a stray comma)"));
        }
        check_label_requirement(part)
            .map_err(|problem| format!("requirement {part:?}: {problem}"))?;
    }
    Ok(())
}

fn check_label_requirement(part: &str) -> Result<(), String> {
    const OPERATORS: &str =
        "use key=value, key==value, key!=value, key in (a,b), key notin (a,b), key or !key";
    if let Some(key) = part.strip_prefix('!') {
        return check_label_key(key.trim());
    }
    if part.contains('<') || part.contains('>') {
        return Err(format!(
            "numeric comparisons are not supported here; {OPERATORS}"
        ));
    }
    if let Some((key, value)) = part
        .split_once("!=")
        .or_else(|| part.split_once("=="))
        .or_else(|| part.split_once('='))
    {
        check_label_key(key.trim())?;
        return check_label_value(value.trim());
    }
    for operator in [" notin ", " in "] {
        if let Some((key, set)) = part.split_once(operator) {
            check_label_key(key.trim())?;
            let inner = set
                .trim()
                .strip_prefix('(')
                .and_then(|rest| rest.strip_suffix(')'))
                .ok_or_else(|| {
                    format!(
                        "the values of `{}` go in parentheses: `key{operator}(a,b)`",
                        operator.trim()
                    )
                })?;
            let values: Vec<&str> = inner.split(',').map(str::trim).collect();
            if values.iter().all(|v| v.is_empty()) {
                return Err(format!("`{}` needs at least one value", operator.trim()));
            }
            for value in values {
                check_label_value(value)?;
            }
            return Ok(());
        }
    }
    if part.contains(char::is_whitespace) || part.contains('(') || part.contains(')') {
        return Err(format!("not a requirement; {OPERATORS}"));
    }
    check_label_key(part)
}

fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let dns = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !dns {
            return Err(format!(
                "key {key:?}: the prefix {prefix:?} must be a DNS subdomain (lower-case letters, digits, '-' and '.')"
            ));
        }
    }
    if name.is_empty() || !is_label_text(name) {
        return Err(format!(
            "key {key:?}: a key is [prefix/]name, the name 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_text(value) {
        Ok(())
    } else {
        Err(format!(
            "value {value:?}: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        ))
    }
}

fn is_label_text(text: &str) -> bool {
    text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks a `fieldSelector`: comma-separated `field=value`, `field==value`
/// or `field!=value` (the only operators the API server's field selectors
/// take), `\` escaping `,`, `=` and `\` in values (`fields.ParseSelector`).
/// Which fields a kind supports only its API server knows
/// (`metadata.name` and `metadata.namespace` everywhere; pods add
/// `status.phase`, `spec.nodeName`, ...): an unsupported one is refused by
/// the server with 400 "field label not supported" and shown as that
/// watch's error.
pub fn check_field_selector(text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(
            "empty; write requirements such as `status.phase!=Succeeded`, or remove the field"
                .into(),
        );
    }
    for part in split_unescaped_commas(text) {
        let part = part.trim();
        if part.is_empty() {
            return Err(format!("{text:?} has an empty requirement (a stray comma)"));
        }
        let (field, value) = match part.split_once("!=") {
            Some(split) => split,
            None => part
                .split_once("==")
                .or_else(|| part.split_once('='))
                .ok_or_else(|| {
                    format!(
                        "requirement {part:?}: field selectors take field=value, field==value or field!=value only"
                    )
                })?,
        };
        let field = field.trim();
        let valid_field = !field.is_empty()
            && field
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            && !field.starts_with('.')
            && !field.ends_with('.');
        if !valid_field {
            return Err(format!(
                "requirement {part:?}: {field:?} is not a field path such as metadata.name or status.phase"
            ));
        }
        if value.contains(['!', '=']) && !value.contains('\\') {
            return Err(format!(
                "requirement {part:?}: one operator per requirement; escape a literal '=' as \\="
            ));
        }
    }
    Ok(())
}

/// Splits on commas outside parentheses (`a in (x,y),b`).
fn split_outside_parentheses(text: &str) -> Vec<&str> {
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

/// Splits on commas not escaped with `\`.
fn split_unescaped_commas(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut escaped) = (0, false);
    for (i, c) in text.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            ',' if !escaped => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => escaped = false,
        }
    }
    parts.push(&text[start..]);
    parts
}

/// One step of an [`ObjectPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A member of an object.
    Key(String),
    /// Every element of an array (`[*]`).
    Each,
}

/// A path into an object: members separated by `.`, `[*]` for every
/// element of an array, and `["a.b/c"]` for a member whose name holds dots
/// or slashes (annotation keys):
/// `status.conditions[*].lastHeartbeatTime`,
/// `metadata.annotations["control-plane.alpha.kubernetes.io/leader"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPath {
    text: String,
    steps: Vec<Step>,
}

impl ObjectPath {
    pub fn parse(text: &str) -> Result<ObjectPath, String> {
        const FORM: &str = "write members separated by '.', [*] for every array element and [\"a.b/c\"] for a member with dots, e.g. status.conditions[*].lastHeartbeatTime";
        let mut steps = Vec::new();
        let mut rest = text.trim();
        let mut expect_member = true;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("[*]") {
                if steps.is_empty() {
                    return Err(format!("{text:?} starts with [*]; {FORM}"));
                }
                steps.push(Step::Each);
                rest = after;
                expect_member = false;
            } else if let Some(after) = rest.strip_prefix('[') {
                let quote = after
                    .chars()
                    .next()
                    .filter(|c| *c == '"' || *c == '\'')
                    .ok_or_else(|| {
                        format!("{text:?}: a bracket holds * or a quoted name; {FORM}")
                    })?;
                let inner = &after[1..];
                let end = inner
                    .find(quote)
                    .ok_or_else(|| format!("{text:?}: unterminated quoted name; {FORM}"))?;
                let key = &inner[..end];
                let after = inner[end + 1..]
                    .strip_prefix(']')
                    .ok_or_else(|| format!("{text:?}: a quoted name ends with \"]; {FORM}"))?;
                if key.is_empty() {
                    return Err(format!("{text:?}: empty member name; {FORM}"));
                }
                steps.push(Step::Key(key.to_owned()));
                rest = after;
                expect_member = false;
            } else if let Some(after) = rest.strip_prefix('.') {
                if expect_member {
                    return Err(format!("{text:?}: empty member name; {FORM}"));
                }
                rest = after;
                expect_member = true;
                if rest.is_empty() {
                    return Err(format!("{text:?} ends with '.'; {FORM}"));
                }
            } else {
                if !expect_member {
                    return Err(format!("{text:?}: members are separated by '.'; {FORM}"));
                }
                let end = rest.find(['.', '[']).unwrap_or(rest.len());
                let key = &rest[..end];
                if key.contains(|c: char| c.is_whitespace() || matches!(c, ']' | '"' | '\'' | '*'))
                {
                    return Err(format!("{text:?}: {key:?} is not a member name; {FORM}"));
                }
                steps.push(Step::Key(key.to_owned()));
                rest = &rest[end..];
                expect_member = false;
            }
        }
        if steps.is_empty() {
            return Err(format!("empty path; {FORM}"));
        }
        Ok(ObjectPath {
            text: text.trim().to_owned(),
            steps,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Calls `f` with every value the path names in `value` (none when a
    /// member is missing or a step meets the wrong JSON type).
    pub fn for_each_mut(&self, value: &mut Value, f: &mut dyn FnMut(&mut Value)) {
        visit(&self.steps, value, f);
    }

    /// Removes every value the path names; returns how many.
    pub fn remove(&self, value: &mut Value) -> usize {
        let Some((last, parents)) = self.steps.split_last() else {
            return 0;
        };
        let mut removed = 0;
        visit(parents, value, &mut |parent| match (last, parent) {
            (Step::Key(key), Value::Object(map)) => {
                removed += usize::from(map.remove(key).is_some());
            }
            (Step::Each, Value::Array(items)) => {
                removed += items.len();
                items.clear();
            }
            _ => {}
        });
        removed
    }
}

fn visit(steps: &[Step], value: &mut Value, f: &mut dyn FnMut(&mut Value)) {
    let Some((step, rest)) = steps.split_first() else {
        f(value);
        return;
    };
    match (step, value) {
        (Step::Key(key), Value::Object(map)) => {
            if let Some(child) = map.get_mut(key) {
                visit(rest, child, f);
            }
        }
        (Step::Each, Value::Array(items)) => {
            for item in items {
                visit(rest, item, f);
            }
        }
        _ => {}
    }
}

impl std::fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A `*` glob of a route match: `*` stands for any run of characters
/// (none included); every other character for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn parse(text: &str) -> Result<Glob, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty pattern; write a name or a * glob such as prod-*".into());
        }
        if text.contains(['?', '[', ']', '{', '}']) {
            return Err(format!(
                "{text:?}: only * is a wildcard here (?, [], {{}} are not); write e.g. prod-*"
            ));
        }
        Ok(Glob(text.to_owned()))
    }

    pub fn matches(&self, text: &str) -> bool {
        let mut pieces = self.0.split('*');
        let first = pieces.next().unwrap_or_default();
        let Some(mut rest) = text.strip_prefix(first) else {
            return false;
        };
        let pieces: Vec<&str> = pieces.collect();
        let Some((last, middle)) = pieces.split_last() else {
            // No `*`: the whole text must be the pattern.
            return rest.is_empty();
        };
        for piece in middle {
            match rest.find(piece) {
                Some(at) => rest = &rest[at + piece.len()..],
                None => return false,
            }
        }
        rest.len() >= last.len() && rest.ends_with(last)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors_of_every_operator_pass_and_malformed_ones_say_why() {
        for good in [
            "app=web",
            "app==web,tier!=cache",
            "app in (web, api),env notin (dev)",
            "tier",
            "!canary",
            "app.kubernetes.io/name=kubeherald",
            "empty=",
        ] {
            check_label_selector(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, says) in [
            ("app in web", "parentheses"),
            ("a b", "not a requirement"),
            ("app=web,", "empty requirement"),
            ("-app=web", "key"),
            ("app=we b", "value"),
            ("Bad_Prefix/app=x", "prefix"),
            ("replicas>1", "numeric"),
            ("app in ()", "at least one value"),
            ("", "empty"),
        ] {
            let err = check_label_selector(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn field_selectors_take_equality_only() {
        for good in [
            "status.phase!=Succeeded",
            "metadata.name=a,spec.nodeName==node-1",
            "metadata.name=a\\,b",
        ] {
            check_field_selector(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, says) in [
            ("status.phase in (Running)", "field=value"),
            ("status.phase", "field=value"),
            ("=x", "field path"),
            ("a=b,", "empty requirement"),
            ("a=b=c", "one operator"),
        ] {
            let err = check_field_selector(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn paths_parse_and_name_values() {
        let path = ObjectPath::parse("status.conditions[*].lastHeartbeatTime").unwrap();
        assert_eq!(
            path.steps(),
            [
                Step::Key("status".into()),
                Step::Key("conditions".into()),
                Step::Each,
                Step::Key("lastHeartbeatTime".into())
            ]
        );
        let mut object = json!({"status": {"conditions": [
            {"type": "Ready", "lastHeartbeatTime": "t1"},
            {"type": "Disk", "lastHeartbeatTime": "t2"},
            {"type": "Other"}]}});
        assert_eq!(path.remove(&mut object), 2);
        assert_eq!(
            object,
            json!({"status": {"conditions": [{"type": "Ready"}, {"type": "Disk"}, {"type": "Other"}]}})
        );

        let quoted =
            ObjectPath::parse("metadata.annotations[\"control-plane.alpha.kubernetes.io/leader\"]")
                .unwrap();
        let mut object = json!({"metadata": {"annotations": {"control-plane.alpha.kubernetes.io/leader": "x", "b": "y"}}});
        let mut seen = Vec::new();
        quoted.for_each_mut(&mut object, &mut |v| seen.push(v.clone()));
        assert_eq!(seen, [json!("x")]);
        // A missing member or a wrong type names nothing.
        assert_eq!(
            ObjectPath::parse("spec.x.y").unwrap().remove(&mut object),
            0
        );

        for bad in [
            "", "a..b", "a.", ".a", "[*].a", "a[b]", "a[\"b\"", "a b", "a]",
        ] {
            assert!(ObjectPath::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globs_match_with_stars_only() {
        let cases = [
            ("prod-*", "prod-eu", true),
            ("prod-*", "prod-", true),
            ("prod-*", "staging", false),
            ("*", "", true),
            ("*-eu", "prod-eu", true),
            ("*-eu", "prod-us", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("Pod", "Pod", true),
            ("Pod", "Pods", false),
            ("ab*ba", "aba", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                Glob::parse(pattern).unwrap().matches(text),
                expected,
                "{pattern} ~ {text}"
            );
        }
        assert!(Glob::parse("prod-?").is_err());
        assert!(Glob::parse(" ").is_err());
    }
}
