//! LIST: `GET .../PLURAL` without `watch`.
//!
//! Rules reproduced (Kubernetes "API Concepts": "Resource versions",
//! "Retrieving large results sets in chunks"; apiserver `storage/etcd3/store.go`
//! `GetList`):
//!
//! - the list's `metadata.resourceVersion` is the version of the snapshot it
//!   shows: the current one for `resourceVersion` unset ("most recent") or
//!   `0` ("any"; the watch cache is always current here), and for
//!   `resourceVersionMatch=NotOlderThan`;
//! - `resourceVersionMatch=Exact`, and the legacy form (`resourceVersion=N`
//!   with `limit` and no match), read the snapshot at exactly N; a compacted
//!   N is 410 `Expired` with etcd3's message "The resourceVersion for the
//!   provided list is too old.";
//! - `limit` returns at most that many items and a `continue` token that
//!   encodes the snapshot version and the last key; every page shows that
//!   same snapshot; once it is compacted the token gets 410 `Expired`;
//!   `remainingItemCount` is set only when no selector filters the list
//!   (etcd counts keys, not matches);
//! - items of built-in typed lists carry no `apiVersion`/`kind`: the typed
//!   list encoder leaves item TypeMeta empty (kubernetes/kubernetes#63676,
//!   #98925, closed as intended); kube-rs's typed `Api<K>` and
//!   `DynamicObject` lists do not need them. Custom resources are served
//!   unstructured and keep them;
//! - list `kind` is `<Kind>List`, `apiVersion` the group version.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{Value, json};

use super::kinds::KindSpec;
use super::routes::{Query, Reply, stream_channel};
use super::selector::{FieldSelector, LabelSelector};
use super::server::{Shared, lock};
use super::status::ApiError;
use super::store::{ObjKey, Stored};

/// etcd3 store's message for a compacted exact or paginated list.
const LIST_EXPIRED: &str = "The resourceVersion for the provided list is too old.";
/// etcd3 store's message for a compacted continue token.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. \
You can start a new list without the continue parameter, or use the continue token in this response to retrieve \
the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that \
were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";
/// Flush the list body in chunks of about this size.
const CHUNK_BYTES: usize = 64 * 1024;

/// Serves a LIST of `spec` in `namespace` (or across all namespaces).
pub(crate) fn list(
    shared: &Arc<Shared>,
    spec: &KindSpec,
    namespace: Option<&str>,
    q: &Query,
) -> Result<Reply, ApiError> {
    let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or(""))?;
    let fields = FieldSelector::parse(q.get("fieldSelector").unwrap_or(""), &spec.kind)?;
    let limit = match q.int("limit")? {
        Some(n) if n > 0 => Some(n as usize),
        _ => None,
    };
    let rv_param = q.get("resourceVersion").filter(|v| !v.is_empty());
    let rv_match = q.get("resourceVersionMatch").filter(|v| !v.is_empty());
    let continue_token = q.get("continue").filter(|v| !v.is_empty());
    let filtered = !labels.is_empty() || !fields.is_empty();
    let accept = move |obj: &Stored| labels.matches(&obj.labels) && fields.matches(&obj.fields);
    let key = spec.type_key();

    let store = lock(&shared.store);
    let (at_rv, after) = match (continue_token, rv_param) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        (Some(token), None) => {
            let (rv, after) = decode_continue(token)?;
            if rv < store.compacted() {
                return Err(ApiError::expired(CONTINUE_EXPIRED));
            }
            (rv, Some(after))
        }
        (None, rv) => (
            snapshot_rv(rv, rv_match, limit.is_some(), store.rv(), store.compacted())?,
            None,
        ),
    };
    let page = store
        .page(&key, at_rv, namespace, after.as_ref(), &accept, limit)
        .map_err(|_| ApiError::expired(LIST_EXPIRED))?;
    drop(store);

    let mut metadata = json!({"resourceVersion": at_rv.to_string()});
    if let Some(next) = &page.next {
        metadata["continue"] = json!(encode_continue(at_rv, next));
        if !filtered {
            metadata["remainingItemCount"] = json!(page.remaining);
        }
    }
    let head = format!(
        "{{\"kind\":{},\"apiVersion\":{},\"metadata\":{metadata},\"items\":[",
        Value::from(format!("{}List", spec.kind)),
        Value::from(spec.api_version())
    );
    let (tx, rx) = stream_channel();
    let builtin = spec.builtin;
    tokio::spawn(async move {
        let mut buf = head;
        for (i, obj) in page.items.iter().enumerate() {
            if i > 0 {
                buf.push(',');
            }
            if builtin {
                buf.push_str(obj.body_without_type());
            } else {
                buf.push_str(&obj.json_with_type(&key));
            }
            if buf.len() >= CHUNK_BYTES
                && tx
                    .send(Bytes::from(std::mem::take(&mut buf)))
                    .await
                    .is_err()
            {
                return;
            }
        }
        buf.push_str("]}");
        let _ = tx.send(Bytes::from(buf)).await;
    });
    Ok(Reply::Stream {
        content_type: "application/json",
        rx,
    })
}

/// The snapshot version a list without `continue` shows.
fn snapshot_rv(
    rv: Option<&str>,
    rv_match: Option<&str>,
    paged: bool,
    current: u64,
    compacted: u64,
) -> Result<u64, ApiError> {
    let exact = match rv_match {
        None => false,
        Some("Exact") => true,
        Some("NotOlderThan") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
    };
    let Some(rv) = rv else {
        if rv_match.is_some() {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        return Ok(current);
    };
    let n: u64 = rv.parse().map_err(|_| {
        ApiError::bad_request(format!(
            "resourceVersion: Invalid value: \"{rv}\": must be an unsigned integer"
        ))
    })?;
    if n == 0 {
        if exact {
            return Err(ApiError::bad_request(
                "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
        return Ok(current);
    }
    if n > current {
        return Err(too_large(n, current));
    }
    // Exact, or the legacy paginated form, reads etcd at exactly N.
    if exact || (rv_match.is_none() && paged) {
        if n < compacted {
            return Err(ApiError::expired(LIST_EXPIRED));
        }
        return Ok(n);
    }
    Ok(current)
}

/// 504 for a version the server has not reached (storage's `TooLargeResourceVersionError`).
pub(crate) fn too_large(requested: u64, current: u64) -> ApiError {
    ApiError {
        code: 504,
        reason: "Timeout",
        message: format!("Too large resource version: {requested}, current: {current}"),
        details: Some(
            json!({"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}], "retryAfterSeconds": 1}),
        ),
        retry_after: None,
    }
}

/// Continue token: opaque to clients; here hex of
/// `{"v":"meta.k8s.io/v1","rv":N,"ns":…,"name":…}` (the real one is base64 of
/// `{"v":"meta.k8s.io/v1","rv":N,"start":"<key>\u0000"}`).
fn encode_continue(rv: u64, after: &ObjKey) -> String {
    let json = json!({"v": "meta.k8s.io/v1", "rv": rv, "ns": after.namespace, "name": after.name})
        .to_string();
    json.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<(u64, ObjKey), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    if !token.len().is_multiple_of(2) || !token.is_ascii() {
        return Err(bad());
    }
    let bytes: Vec<u8> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&token[i..i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = value["rv"].as_u64().ok_or_else(bad)?;
    let namespace = value["ns"].as_str().ok_or_else(bad)?.to_string();
    let name = value["name"].as_str().ok_or_else(bad)?.to_string();
    Ok((rv, ObjKey { namespace, name }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_token_round_trips_and_rejects_garbage() {
        let key = ObjKey {
            namespace: "ns".into(),
            name: "p-1".into(),
        };
        assert_eq!(
            decode_continue(&encode_continue(42, &key)).unwrap(),
            (42, key)
        );
        assert_eq!(decode_continue("zz").unwrap_err().code, 400);
        assert_eq!(decode_continue("abc").unwrap_err().code, 400);
    }

    #[test]
    fn snapshot_version_rules() {
        assert_eq!(snapshot_rv(None, None, false, 50, 10).unwrap(), 50);
        assert_eq!(snapshot_rv(Some("0"), None, true, 50, 10).unwrap(), 50);
        assert_eq!(snapshot_rv(Some("20"), None, false, 50, 10).unwrap(), 50);
        assert_eq!(snapshot_rv(Some("20"), None, true, 50, 10).unwrap(), 20);
        assert_eq!(
            snapshot_rv(Some("20"), Some("Exact"), false, 50, 10).unwrap(),
            20
        );
        assert_eq!(
            snapshot_rv(Some("5"), Some("Exact"), false, 50, 10)
                .unwrap_err()
                .code,
            410
        );
        assert_eq!(
            snapshot_rv(Some("5"), Some("NotOlderThan"), true, 50, 10).unwrap(),
            50
        );
        assert_eq!(
            snapshot_rv(Some("60"), None, false, 50, 10)
                .unwrap_err()
                .code,
            504
        );
        assert_eq!(
            snapshot_rv(None, Some("Exact"), false, 50, 10)
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            snapshot_rv(Some("x"), None, false, 50, 10)
                .unwrap_err()
                .code,
            400
        );
    }
}
