//! One object as the API server sent it: what a watcher reads from it, the
//! bytes it forwards, and the small "last known" copy it keeps on disk.
//!
//! The forwarded bytes are the API server's own (`RawValue`), with one
//! exception: items of a LIST of a built-in kind come without `apiVersion`
//! and `kind` (the typed list encoder leaves item TypeMeta empty,
//! kubernetes/kubernetes#63676, closed as intended), so they are inserted at
//! the front of the object when missing. Watch events always carry them, so
//! their bytes pass through untouched — unless the kind redacts
//! ([`crate::redact`]): then the object is re-serialised with its values
//! replaced, here, before anything of it is spooled or stored.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::config::{ObjectPath, Redaction};
use crate::redact::{FINGERPRINT_BYTES, RedactionKey};

/// What a kind's `resources:` entry does to each of its objects as it is
/// read: redaction, and the fingerprint its `ignore_changes_in` compares.
#[derive(Debug, Clone, Default)]
pub struct ObjectRules {
    /// `None`: nothing redacted.
    pub redaction: Option<(Redaction, RedactionKey)>,
    /// Empty: no fingerprint.
    pub ignore_changes_in: Vec<ObjectPath>,
}

impl ObjectRules {
    pub fn new(redaction: &Redaction, key: RedactionKey, ignore: &[ObjectPath]) -> ObjectRules {
        ObjectRules {
            redaction: (!redaction.is_off()).then(|| (redaction.clone(), key)),
            ignore_changes_in: ignore.to_vec(),
        }
    }

    fn reads_whole_object(&self) -> bool {
        self.redaction.is_some() || !self.ignore_changes_in.is_empty()
    }
}

/// Why an object could not be read. Never retryable by itself: the answer
/// that carried it is unusable, so the caller re-lists.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The object is not JSON of an object with `metadata`.
    #[error("undecodable object")]
    Undecodable(#[source] serde_json::Error),
    /// A required metadata field is missing or empty.
    #[error("object without metadata.{0}")]
    Missing(&'static str),
}

impl ObjectError {
    /// The `reason` label of `objects_skipped`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ObjectError::Undecodable(_) => "undecodable",
            ObjectError::Missing("uid") => "no-uid",
            ObjectError::Missing("name") => "no-name",
            ObjectError::Missing("resourceVersion") => "no-resource-version",
            ObjectError::Missing(_) => "incomplete",
        }
    }
}

/// The identity of an object and its forwardable forms.
#[derive(Debug)]
pub struct ParsedObject {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub resource_version: String,
    /// The object, `apiVersion` and `kind` included.
    pub raw: Box<RawValue>,
    /// What the state store keeps to synthesise a DELETED later:
    /// `{"apiVersion","kind","metadata"}` with `managedFields` and the
    /// last-applied annotation dropped (both can be larger than the rest).
    pub tombstone: Vec<u8>,
    /// Values were replaced by redaction markers (flag `redacted`).
    pub redacted: bool,
    /// The `ignore_changes_in` fingerprint, when the kind has such paths.
    pub fingerprint: Option<[u8; FINGERPRINT_BYTES]>,
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(borrow)]
    metadata: &'a RawValue,
}

/// Reads an object of the watched kind (`api_version`, `kind`, as
/// discovery resolved them), applying `rules`.
pub fn parse(
    raw: &RawValue,
    api_version: &str,
    kind: &str,
    rules: &ObjectRules,
) -> Result<ParsedObject, ObjectError> {
    let head: Head<'_> = serde_json::from_str(raw.get()).map_err(ObjectError::Undecodable)?;
    let mut metadata: Map<String, Value> =
        serde_json::from_str(head.metadata.get()).map_err(ObjectError::Undecodable)?;
    let text =
        |metadata: &Map<String, Value>, field: &'static str| -> Result<String, ObjectError> {
            match metadata.get(field) {
                Some(Value::String(value)) if !value.is_empty() => Ok(value.clone()),
                _ => Err(ObjectError::Missing(field)),
            }
        };
    let name = text(&metadata, "name")?;
    let uid = text(&metadata, "uid")?;
    let resource_version = text(&metadata, "resourceVersion")?;
    let namespace = text(&metadata, "namespace").unwrap_or_default();

    let mut raw = with_type_meta(
        raw,
        head.api_version.is_none().then_some(api_version),
        head.kind.is_none().then_some(kind),
    );
    let (mut redacted, mut fingerprint) = (false, None);
    if rules.reads_whole_object() {
        let mut value: Value = serde_json::from_str(raw.get()).map_err(ObjectError::Undecodable)?;
        if let Some((redaction, key)) = &rules.redaction {
            redacted = crate::redact::redact(&mut value, redaction, key);
        }
        if !rules.ignore_changes_in.is_empty() {
            fingerprint = Some(crate::redact::fingerprint(&value, &rules.ignore_changes_in));
        }
        if redacted {
            // The last known copy is taken from the redacted object: a
            // redacted path may lie in the metadata.
            if let Some(Value::Object(redacted_metadata)) = value.get("metadata") {
                metadata = redacted_metadata.clone();
            }
            raw = serde_json::value::to_raw_value(&value).map_err(ObjectError::Undecodable)?;
        }
    }

    crate::record::drop_bulky_metadata(&mut metadata);
    let tombstone = serde_json::to_vec(&Tombstone {
        api_version: head.api_version.as_deref().unwrap_or(api_version),
        kind: head.kind.as_deref().unwrap_or(kind),
        metadata: &metadata,
    })
    .map_err(ObjectError::Undecodable)?;

    Ok(ParsedObject {
        name,
        namespace,
        uid,
        resource_version,
        raw,
        tombstone,
        redacted,
        fingerprint,
    })
}

#[derive(serde::Serialize)]
struct Tombstone<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: &'a str,
    metadata: &'a Map<String, Value>,
}

/// The object's bytes with the missing `apiVersion`/`kind` inserted first;
/// the rest is byte for byte the server's.
fn with_type_meta(raw: &RawValue, api_version: Option<&str>, kind: Option<&str>) -> Box<RawValue> {
    if api_version.is_none() && kind.is_none() {
        return raw.to_owned();
    }
    let text = raw.get();
    // A RawValue holding an object starts with `{` (serde_json trims
    // whitespace around a RawValue); Head parsed, so it is an object.
    let rest = text.strip_prefix('{').unwrap_or(text);
    let mut out = String::with_capacity(text.len() + 64);
    out.push('{');
    let mut fields = Vec::new();
    if let Some(api_version) = api_version {
        fields.push(format!("\"apiVersion\":{}", Value::from(api_version)));
    }
    if let Some(kind) = kind {
        fields.push(format!("\"kind\":{}", Value::from(kind)));
    }
    out.push_str(&fields.join(","));
    if !rest.trim_start().starts_with('}') {
        out.push(',');
    }
    out.push_str(rest);
    // Inserting members before the first one of a valid object keeps it
    // valid; should it not, the server's bytes go out as they came.
    RawValue::from_string(out).unwrap_or_else(|_| raw.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn objects_with_type_meta_keep_their_exact_bytes() {
        let text = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"ns","uid":"u1","resourceVersion":"7"},  "spec":{}}"#;
        let parsed = parse(&raw(text), "v1", "Pod", &ObjectRules::default()).unwrap();
        assert_eq!(parsed.raw.get(), text);
        assert_eq!(
            (parsed.name.as_str(), parsed.namespace.as_str()),
            ("a", "ns")
        );
        assert_eq!(
            (parsed.uid.as_str(), parsed.resource_version.as_str()),
            ("u1", "7")
        );
    }

    #[test]
    fn list_items_without_type_meta_get_it_inserted() {
        let text = r#"{"metadata":{"name":"a","uid":"u1","resourceVersion":"7"},"spec":{"x":1}}"#;
        let parsed = parse(&raw(text), "apps/v1", "Deployment", &ObjectRules::default()).unwrap();
        assert_eq!(
            parsed.raw.get(),
            r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"a","uid":"u1","resourceVersion":"7"},"spec":{"x":1}}"#
        );
        let only_kind_missing =
            r#"{"apiVersion":"v1","metadata":{"name":"a","uid":"u1","resourceVersion":"7"}}"#;
        let parsed = parse(
            &raw(only_kind_missing),
            "v1",
            "Pod",
            &ObjectRules::default(),
        )
        .unwrap();
        let value: Value = serde_json::from_str(parsed.raw.get()).unwrap();
        assert_eq!(
            (value["apiVersion"].as_str(), value["kind"].as_str()),
            (Some("v1"), Some("Pod"))
        );
    }

    #[test]
    fn tombstone_keeps_identity_and_drops_bulky_metadata() {
        let text = r#"{"metadata":{"name":"a","namespace":"ns","uid":"u1","resourceVersion":"7","labels":{"l":"v"},
            "managedFields":[{"manager":"kubectl"}],
            "annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{...}"}},"spec":{"big":true}}"#;
        let parsed = parse(&raw(text), "v1", "ConfigMap", &ObjectRules::default()).unwrap();
        let tombstone: Value = serde_json::from_slice(&parsed.tombstone).unwrap();
        assert_eq!(
            tombstone,
            serde_json::json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{
                "name":"a","namespace":"ns","uid":"u1","resourceVersion":"7","labels":{"l":"v"}}})
        );
    }

    #[test]
    fn objects_without_identity_are_refused() {
        let no_uid = r#"{"metadata":{"name":"a","resourceVersion":"7"}}"#;
        assert!(matches!(
            parse(&raw(no_uid), "v1", "Pod", &ObjectRules::default()),
            Err(ObjectError::Missing("uid"))
        ));
        assert!(matches!(
            parse(&raw("[1]"), "v1", "Pod", &ObjectRules::default()),
            Err(ObjectError::Undecodable(_))
        ));
    }

    #[test]
    fn corpus_objects_are_read_or_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/objects");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if !name.ends_with(".json") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let value = raw(text.trim());
            let parsed = parse(&value, "v1", "ConfigMap", &ObjectRules::default());
            match (name.starts_with("good-"), parsed) {
                (true, Ok(object)) => {
                    let body: Value = serde_json::from_str(object.raw.get()).unwrap();
                    assert_eq!(body["apiVersion"], "v1", "{name}");
                    let _: Value = serde_json::from_slice(&object.tombstone).unwrap();
                }
                (false, Err(_)) => {}
                (good, parsed) => panic!(
                    "{name}: good={good} but parse gave {:?}",
                    parsed.map(|o| o.uid)
                ),
            }
            seen += 1;
        }
        assert!(seen >= 10, "the corpus is read ({seen} files)");
    }

    fn json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9{}\\\"]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            let key = prop_oneof![
                Just("metadata".to_owned()),
                Just("name".to_owned()),
                Just("namespace".to_owned()),
                Just("uid".to_owned()),
                Just("resourceVersion".to_owned()),
                Just("apiVersion".to_owned()),
                Just("kind".to_owned()),
                Just("annotations".to_owned()),
                Just("managedFields".to_owned()),
                Just(LAST_APPLIED.to_owned()),
                "[a-z]{0,4}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    const LAST_APPLIED: &str = crate::record::LAST_APPLIED_ANNOTATION;

    proptest::proptest! {
        /// Fuzzing the parser with arbitrary JSON: it never panics, and what
        /// it accepts is an object with its identity and type meta.
        #[test]
        fn arbitrary_json_never_panics_and_accepted_objects_are_whole(value in json()) {
            let value = raw(&value.to_string());
            if let Ok(object) = parse(&value, "apps/v1", "Deployment", &ObjectRules::default()) {
                let body: Value = serde_json::from_str(object.raw.get()).unwrap();
                proptest::prop_assert!(body.is_object());
                proptest::prop_assert!(body.get("apiVersion").is_some() && body.get("kind").is_some());
                proptest::prop_assert!(!object.uid.is_empty() && !object.resource_version.is_empty());
                let tombstone: Value = serde_json::from_slice(&object.tombstone).unwrap();
                proptest::prop_assert!(tombstone["metadata"].get("managedFields").is_none());
            }
        }

        /// Arbitrary bytes (not even JSON) never panic the parser either.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,64}") {
            if let Ok(value) = RawValue::from_string(text) {
                let _ = parse(&value, "v1", "Pod", &ObjectRules::default());
            }
        }
    }
}
