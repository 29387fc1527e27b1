//! What of an object never leaves the watcher (SPEC §3, "Secrets stay
//! secret"), and the change fingerprint of `ignore_changes_in`.
//!
//! **Redaction** replaces values by a marker `<redacted hmac-sha256:XXXXXXXXXXXX>`:
//! the first 6 bytes (12 hex digits) of HMAC-SHA256 of the value under this
//! installation's [`RedactionKey`]. The keys of a Secret's `data` stay, so a
//! subscriber sees which entries exist and when one changes (the marker
//! changes with the value), never the value; keyed, so a short value cannot
//! be found by hashing guesses without the key. It is applied where an object
//! enters kubeherald ([`crate::watch`]'s object reader), before anything is
//! spooled, so SNS, stdout, the spool files, dead letters and the watch
//! state's last known copy only ever hold the redacted form.
//!
//! The key is 32 random bytes in `{spool.dir}/redaction.key` (created 0600 on
//! first start, read on every later one), so markers stay the same across
//! restarts and a re-list diff does not see every Secret as changed. Without
//! a spool directory it is random per process (the state is in memory too:
//! a restart re-sends everything as ADDED anyway).
//!
//! May import: `config`, `record`. Imported by: `watch`, `app`.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::config::{ObjectPath, Redaction};
use crate::record::LAST_APPLIED_ANNOTATION;

/// Length of the key, in bytes (HMAC-SHA256's block-size-friendly 256 bits).
const KEY_BYTES: usize = 32;

/// Hex digits of the HMAC kept in a marker: 48 bits, enough that two
/// different values of one Secret entry practically never share a marker.
const MARKER_HEX_DIGITS: usize = 12;

/// The file of the key in the spool directory.
pub fn key_path(spool_dir: &Path) -> PathBuf {
    spool_dir.join("redaction.key")
}

/// The HMAC key of redaction markers. Its `Debug` never prints it.
#[derive(Clone)]
pub struct RedactionKey(Arc<[u8; KEY_BYTES]>);

impl std::fmt::Debug for RedactionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedactionKey(<hidden>)")
    }
}

/// Why the key could not be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot {op} the redaction key {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the redaction key {path} holds {len} bytes, not {KEY_BYTES}; restore it from a backup, or delete it to start with a new key (every redacted value then looks changed once)"
    )]
    Malformed { path: PathBuf, len: usize },
}

impl RedactionKey {
    /// Reads the key at `path`, or creates it (0600) with fresh random bytes.
    pub fn load_or_create(path: &Path) -> Result<RedactionKey, KeyError> {
        let io = |op, source| KeyError::Io {
            op,
            path: path.to_owned(),
            source,
        };
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut file) => {
                let key = random_key().map_err(|e| io("generate", e))?;
                file.write_all(&key).map_err(|e| io("write", e))?;
                file.sync_all().map_err(|e| io("sync", e))?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)
                        .and_then(|d| d.sync_all())
                        .map_err(|e| io("sync the directory of", e))?;
                }
                Ok(RedactionKey(Arc::new(key)))
            }
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut bytes = Vec::with_capacity(KEY_BYTES);
                std::fs::File::open(path)
                    .and_then(|mut f| f.read_to_end(&mut bytes))
                    .map_err(|e| io("read", e))?;
                let key: [u8; KEY_BYTES] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| KeyError::Malformed {
                            path: path.to_owned(),
                            len: bytes.len(),
                        })?;
                Ok(RedactionKey(Arc::new(key)))
            }
            Err(err) => Err(io("create", err)),
        }
    }

    /// One random key for this process: without a spool directory nothing
    /// that outlives the process holds a marker.
    pub fn ephemeral() -> RedactionKey {
        static KEY: OnceLock<RedactionKey> = OnceLock::new();
        KEY.get_or_init(|| {
            // /dev/urandom does not fail on a working Linux; should it, a
            // per-process key from fastrand (seeded from the OS) still keeps
            // the values out of every output, as nothing outlives the process.
            let key = random_key().unwrap_or_else(|_| std::array::from_fn(|_| fastrand::u8(..)));
            RedactionKey(Arc::new(key))
        })
        .clone()
    }

    /// The marker that stands for `value`.
    pub fn marker(&self, value: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.0.as_slice())
            .expect("HMAC takes a key of any length");
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        let hex: String = tag
            .iter()
            .take(MARKER_HEX_DIGITS / 2)
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("<redacted hmac-sha256:{hex}>")
    }
}

fn random_key() -> std::io::Result<[u8; KEY_BYTES]> {
    let mut key = [0u8; KEY_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

/// Applies `rules` to `object` in place; returns whether anything was
/// replaced or dropped. Secrets (when `rules.secret_values`): every value
/// of `data` and `stringData`. Then every value at `rules.paths`. And when
/// anything was redacted, the last-applied annotation goes too: it is a
/// full copy of the applied object, redacted values included.
pub fn redact(object: &mut Value, rules: &Redaction, key: &RedactionKey) -> bool {
    let mut redacted = false;
    if rules.secret_values {
        for field in ["data", "stringData"] {
            if let Some(Value::Object(entries)) = object.get_mut(field) {
                for value in entries.values_mut() {
                    replace(value, key);
                    redacted = true;
                }
            }
        }
        // Even a Secret without data: its last-applied copy may hold some.
        redacted |= drop_last_applied(object);
    }
    for path in &rules.paths {
        path.for_each_mut(object, &mut |value| {
            replace(value, key);
            redacted = true;
        });
    }
    if redacted {
        drop_last_applied(object);
    }
    redacted
}

/// A value replaced by its marker: strings by the marker of their text
/// (Secret `data` is base64 text), anything else by that of its JSON.
fn replace(value: &mut Value, key: &RedactionKey) {
    let marker = match &*value {
        Value::String(text) => key.marker(text.as_bytes()),
        other => key.marker(other.to_string().as_bytes()),
    };
    *value = Value::String(marker);
}

fn drop_last_applied(object: &mut Value) -> bool {
    let Some(Value::Object(metadata)) = object.get_mut("metadata") else {
        return false;
    };
    let Some(Value::Object(annotations)) = metadata.get_mut("annotations") else {
        return false;
    };
    let dropped = annotations.remove(LAST_APPLIED_ANNOTATION).is_some();
    if annotations.is_empty() {
        metadata.remove("annotations");
    }
    dropped
}

/// Length of a change fingerprint, in bytes (a truncated SHA-256).
pub const FINGERPRINT_BYTES: usize = 16;

/// The fingerprint `ignore_changes_in` compares: SHA-256 of the object in a
/// canonical form (members sorted) without `metadata.resourceVersion`
/// (different in every version), `metadata.managedFields` (rewritten with a
/// new timestamp by every write) and the `ignored` paths, prefixed by the
/// ignored paths themselves, so a fingerprint taken under other paths
/// never compares equal by accident.
pub fn fingerprint(object: &Value, ignored: &[ObjectPath]) -> [u8; FINGERPRINT_BYTES] {
    let mut object = object.clone();
    if let Some(Value::Object(metadata)) = object.get_mut("metadata") {
        metadata.remove("resourceVersion");
        metadata.remove("managedFields");
    }
    for path in ignored {
        path.remove(&mut object);
    }
    let mut hasher = Sha256::new();
    for path in ignored {
        hasher.update(path.as_str().as_bytes());
        hasher.update([0]);
    }
    hasher.update([0xff]);
    canonical(&object, &mut hasher);
    let digest = hasher.finalize();
    let mut out = [0u8; FINGERPRINT_BYTES];
    out.copy_from_slice(&digest[..FINGERPRINT_BYTES]);
    out
}

/// Feeds `value` to `hasher` with object members in sorted order (whatever
/// order the API server wrote them in), each token tagged so that no two
/// different values feed the same bytes.
fn canonical(value: &Value, hasher: &mut Sha256) {
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(b) => hasher.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            let text = n.to_string();
            hasher.update(b"#");
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        Value::String(s) => {
            hasher.update(b"s");
            hasher.update((s.len() as u64).to_le_bytes());
            hasher.update(s.as_bytes());
        }
        Value::Array(items) => {
            hasher.update(b"[");
            hasher.update((items.len() as u64).to_le_bytes());
            for item in items {
                canonical(item, hasher);
            }
        }
        Value::Object(map) => {
            hasher.update(b"{");
            hasher.update((map.len() as u64).to_le_bytes());
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            for key in keys {
                hasher.update((key.len() as u64).to_le_bytes());
                hasher.update(key.as_bytes());
                canonical(&map[key.as_str()], hasher);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Redaction, ResourceKind};
    use serde_json::json;

    fn secret_rules() -> Redaction {
        Redaction::default_for(&ResourceKind {
            api_version: "v1".into(),
            kind: "Secret".into(),
        })
    }

    #[test]
    fn secret_values_are_replaced_keys_kept_and_last_applied_dropped() {
        let key = RedactionKey::ephemeral();
        let mut secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "annotations": {LAST_APPLIED_ANNOTATION: "{\"data\":{\"password\":\"aHVudGVyMg==\"}}"}},
            "data": {"password": "aHVudGVyMg==", "user": "YWRtaW4="},
            "stringData": {"token": "plain"},
            "type": "Opaque"
        });
        assert!(redact(&mut secret, &secret_rules(), &key));
        let text = secret.to_string();
        for value in ["aHVudGVyMg==", "YWRtaW4=", "plain"] {
            assert!(!text.contains(value), "{value} left in {text}");
        }
        assert_eq!(secret["data"]["password"], key.marker(b"aHVudGVyMg=="));
        assert!(
            secret["data"]["user"]
                .as_str()
                .unwrap()
                .starts_with("<redacted hmac-sha256:")
        );
        assert!(secret["metadata"].get("annotations").is_none());
        assert_eq!(secret["type"], "Opaque");
        // Changes stay visible: another value, another marker.
        assert_ne!(key.marker(b"aHVudGVyMg=="), key.marker(b"aHVudGVyMw=="));
    }

    #[test]
    fn opting_out_keeps_values_and_extra_paths_apply_to_any_kind() {
        let key = RedactionKey::ephemeral();
        let mut secret = json!({"kind": "Secret", "data": {"a": "b"}});
        let off = Redaction {
            secret_values: false,
            paths: Vec::new(),
        };
        assert!(!redact(&mut secret, &off, &key));
        assert_eq!(secret["data"]["a"], "b");

        let rules = Redaction {
            secret_values: false,
            paths: vec![
                ObjectPath::parse("data.password").unwrap(),
                ObjectPath::parse("spec.containers[*].env").unwrap(),
            ],
        };
        let mut config_map = json!({"metadata": {"name": "c", "annotations": {LAST_APPLIED_ANNOTATION: "x", "keep": "y"}},
            "data": {"password": "p", "other": "o"},
            "spec": {"containers": [{"env": [{"name": "A", "value": "1"}]}, {"name": "no-env"}]}});
        assert!(redact(&mut config_map, &rules, &key));
        assert_eq!(config_map["data"]["other"], "o");
        assert!(
            config_map["data"]["password"]
                .as_str()
                .unwrap()
                .starts_with("<redacted")
        );
        assert!(config_map["spec"]["containers"][0]["env"].is_string());
        assert_eq!(config_map["metadata"]["annotations"], json!({"keep": "y"}));
        // Nothing at the paths: nothing redacted, the annotation stays.
        let mut plain = json!({"metadata": {"annotations": {LAST_APPLIED_ANNOTATION: "x"}}});
        assert!(!redact(&mut plain, &rules, &key));
        assert!(
            plain["metadata"]["annotations"]
                .get(LAST_APPLIED_ANNOTATION)
                .is_some()
        );
    }

    #[test]
    fn the_key_is_created_0600_once_and_read_back_the_same() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path());
        let first = RedactionKey::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = RedactionKey::load_or_create(&path).unwrap();
        assert_eq!(
            first.marker(b"v"),
            again.marker(b"v"),
            "stable across restarts"
        );
        assert_ne!(first.marker(b"v"), RedactionKey::ephemeral().marker(b"v"));
        assert_eq!(format!("{first:?}"), "RedactionKey(<hidden>)");
        std::fs::write(&path, b"short").unwrap();
        let err = RedactionKey::load_or_create(&path).unwrap_err();
        assert!(err.to_string().contains("holds 5 bytes"), "{err}");
    }

    #[test]
    fn fingerprints_ignore_the_version_managed_fields_and_the_given_paths_only() {
        let ignored = vec![
            ObjectPath::parse("status.conditions[*].lastHeartbeatTime").unwrap(),
            ObjectPath::parse("metadata.annotations.leader").unwrap(),
        ];
        let base = json!({"metadata": {"name": "n", "resourceVersion": "1", "annotations": {"leader": "a"},
            "managedFields": [{"time": "t1"}]},
            "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "t1"}]}});
        let same = json!({"status": {"conditions": [{"lastHeartbeatTime": "t2", "status": "True", "type": "Ready"}]},
            "metadata": {"annotations": {"leader": "b"}, "resourceVersion": "2", "name": "n",
            "managedFields": [{"time": "t2"}]}});
        assert_eq!(fingerprint(&base, &ignored), fingerprint(&same, &ignored));
        let mut changed = same.clone();
        changed["status"]["conditions"][0]["status"] = json!("False");
        assert_ne!(
            fingerprint(&base, &ignored),
            fingerprint(&changed, &ignored)
        );
        // Other ignored paths, another fingerprint of the same object.
        assert_ne!(
            fingerprint(&base, &ignored),
            fingerprint(&base, &ignored[..1])
        );
    }
}
