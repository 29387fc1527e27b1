//! Building one SNS message from a resource change: body, attributes, FIFO
//! ids, and the size rule (SPEC §3), enforced here while the message is built
//! rather than discovered in an error from SNS.

use std::cell::RefCell;

use base64::Engine;
use flate2::{Compress, Compression, FlushCompress, Status};
use serde_json::Value;

use crate::record::ResourceEvent;

/// SNS's limit for one message, body plus message attributes, in bytes
/// (Publish: "up to 256 KB (262,144 bytes)"; attribute names, data types and
/// values all count towards it).
pub const SNS_MAX_MESSAGE_BYTES: usize = 262_144;

/// Raw SQS delivery drops messages with more than 10 attributes (SQS's own
/// limit of 10 message attributes), so a message never carries more.
pub const MAX_ATTRIBUTES: usize = 10;

/// The only data type kubeherald uses; it counts towards the message size.
pub const ATTRIBUTE_DATA_TYPE: &str = "String";

/// `content_encoding` value: the body is gzip, then base64 (the seed's).
pub const CONTENT_ENCODING: &str = "gzip+base64";

/// MessageGroupId and MessageDeduplicationId: at most 128 characters
/// (Publish, FIFO topics).
const FIFO_ID_MAX_LEN: usize = 128;

/// How much of the object the body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Degradation {
    /// The whole object.
    Full,
    /// `metadata.managedFields` and the last-applied annotation dropped.
    Trimmed,
    /// apiVersion, kind and (trimmed) metadata only.
    MetadataOnly,
    /// apiVersion, kind and the identifying metadata only (name, namespace,
    /// uid, resourceVersion): the metadata itself was too large.
    Identity,
}

/// A message ready for `PublishBatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct SnsMessage {
    /// gzip, then base64, of the object JSON (or of what was kept of it).
    pub body: String,
    /// (name, value) pairs, all of data type String, none empty.
    pub attributes: Vec<(&'static str, String)>,
    /// FIFO topics: the object (cluster/namespace/kind/name).
    pub group_id: Option<String>,
    /// FIFO topics: uid + resourceVersion + event type.
    pub deduplication_id: Option<String>,
    pub degradation: Degradation,
}

impl SnsMessage {
    /// The size SNS counts: body plus every attribute's name, data type and
    /// value, in bytes.
    pub fn size(&self) -> usize {
        self.body.len() + attributes_size(&self.attributes)
    }
}

fn attributes_size(attributes: &[(&'static str, String)]) -> usize {
    attributes
        .iter()
        .map(|(name, value)| name.len() + ATTRIBUTE_DATA_TYPE.len() + value.len())
        .sum()
}

/// Builds the message of `event`, degrading the body until it fits:
/// full object → without managedFields and last-applied → metadata only →
/// identity only. Each step is named in the `flags` attribute.
pub fn build(event: &ResourceEvent, fifo: bool) -> SnsMessage {
    let object = event.object.get().as_bytes();
    // Attributes without `flags`, to learn how much room the body has; the
    // longest flags value any degradation adds is reserved up front.
    let base_attributes = attributes(event, None);
    let reserve = "flags".len() + ATTRIBUTE_DATA_TYPE.len() + "resync,redacted,metadata-only".len();
    let room = SNS_MAX_MESSAGE_BYTES.saturating_sub(attributes_size(&base_attributes) + reserve);

    let (body, degradation) = fit_body(object, event, room);
    let mut flags = event_flags(event);
    match degradation {
        Degradation::Full => {}
        Degradation::Trimmed => flags.push("trimmed"),
        Degradation::MetadataOnly | Degradation::Identity => flags.push("metadata-only"),
    }
    let flags = (!flags.is_empty()).then(|| flags.join(","));
    let (group_id, deduplication_id) = if fifo {
        (Some(group_id(event)), Some(deduplication_id(event)))
    } else {
        (None, None)
    };
    SnsMessage {
        body,
        attributes: attributes(event, flags),
        group_id,
        deduplication_id,
        degradation,
    }
}

/// The attributes of `event` for a sink without a size limit (stdout): the
/// same names and values as on SNS, `flags` saying only `resync` and
/// `redacted` since the object is never reduced there.
pub fn plain_attributes(event: &ResourceEvent) -> Vec<(&'static str, String)> {
    let flags = event_flags(event);
    attributes(event, (!flags.is_empty()).then(|| flags.join(",")))
}

/// The flags an event carries from the watcher, before any size reduction.
fn event_flags(event: &ResourceEvent) -> Vec<&'static str> {
    let mut flags = Vec::new();
    if event.resync {
        flags.push("resync");
    }
    if event.redacted {
        flags.push("redacted");
    }
    flags
}

/// The attributes of SPEC §3, in a fixed order. An empty value is left out
/// (SNS refuses empty attribute values).
fn attributes(event: &ResourceEvent, flags: Option<String>) -> Vec<(&'static str, String)> {
    let candidates = [
        ("source", "kubernetes".to_owned()),
        ("cluster", event.cluster.clone()),
        ("context", event.context.clone()),
        ("namespace", event.namespace.clone()),
        ("api_version", event.api_version.clone()),
        ("kind", event.kind.clone()),
        ("event_type", event.event_type.as_str().to_owned()),
        ("object_name", event.name.clone()),
        ("content_encoding", CONTENT_ENCODING.to_owned()),
    ];
    let mut attributes: Vec<(&'static str, String)> = candidates
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect();
    if let Some(flags) = flags {
        attributes.push(("flags", flags));
    }
    debug_assert!(attributes.len() <= MAX_ATTRIBUTES);
    attributes
}

fn fit_body(object: &[u8], event: &ResourceEvent, room: usize) -> (String, Degradation) {
    // Level 1 first: most objects are far below the limit, and the publisher
    // compresses thousands per second. Near the limit, the best level may
    // still save the whole object.
    for level in [Compression::fast(), Compression::best()] {
        let body = encode(object, level);
        if body.len() <= room {
            return (body, Degradation::Full);
        }
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(object) else {
        // The API server sent JSON we cannot read back: say only who it is.
        return (
            encode(&identity(event), Compression::best()),
            Degradation::Identity,
        );
    };
    trim(&mut value);
    let trimmed = serde_json::to_vec(&value).unwrap_or_default();
    let body = encode(&trimmed, Compression::best());
    if body.len() <= room {
        return (body, Degradation::Trimmed);
    }
    let metadata_only = serde_json::json!({
        "apiVersion": value.get("apiVersion").cloned().unwrap_or_else(|| event.api_version.clone().into()),
        "kind": value.get("kind").cloned().unwrap_or_else(|| event.kind.clone().into()),
        "metadata": value.get("metadata").cloned().unwrap_or(Value::Null),
    });
    let body = encode(
        &serde_json::to_vec(&metadata_only).unwrap_or_default(),
        Compression::best(),
    );
    if body.len() <= room {
        return (body, Degradation::MetadataOnly);
    }
    // Labels and annotations alone can exceed the limit (each annotation
    // value may be 256 KiB); the identity always fits.
    (
        encode(&identity(event), Compression::best()),
        Degradation::Identity,
    )
}

fn trim(object: &mut Value) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        crate::record::drop_bulky_metadata(metadata);
    }
}

fn identity(event: &ResourceEvent) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": event.api_version,
        "kind": event.kind,
        "metadata": {
            "name": event.name,
            "namespace": event.namespace,
            "uid": event.uid,
            "resourceVersion": event.resource_version,
        },
    }))
    .unwrap_or_default()
}

/// gzip, then standard base64 with padding.
pub fn encode(bytes: &[u8], level: Compression) -> String {
    base64::engine::general_purpose::STANDARD.encode(gzip(bytes, level))
}

/// The gzip member header (RFC 1952): magic, deflate, no flags, no mtime,
/// no extra flags, OS unknown.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// gzip of `bytes`: the header, raw deflate, CRC-32 and length (RFC 1952).
/// The deflate state (hundreds of KiB in miniz_oxide) is kept per thread and
/// level and reset between messages: allocating it per message cost about
/// half of the compression time at thousands of messages per second.
fn gzip(bytes: &[u8], level: Compression) -> Vec<u8> {
    thread_local! {
        static DEFLATERS: RefCell<Vec<(u32, Compress)>> = const { RefCell::new(Vec::new()) };
    }
    DEFLATERS.with_borrow_mut(|deflaters| {
        let index = match deflaters.iter().position(|(l, _)| *l == level.level()) {
            Some(index) => index,
            None => {
                deflaters.push((level.level(), Compress::new(level, false)));
                deflaters.len() - 1
            }
        };
        let deflate = &mut deflaters[index].1;
        deflate.reset();
        let mut out = Vec::with_capacity(GZIP_HEADER.len() + bytes.len() / 3 + 64);
        out.extend_from_slice(&GZIP_HEADER);
        loop {
            let consumed = deflate.total_in() as usize;
            // Compressing into memory cannot fail.
            let status = deflate
                .compress_vec(&bytes[consumed..], &mut out, FlushCompress::Finish)
                .expect("deflate into memory");
            if status == Status::StreamEnd {
                break;
            }
            // compress_vec writes into spare capacity only.
            out.reserve(out.capacity().max(256));
        }
        out.extend_from_slice(&crc32fast::hash(bytes).to_le_bytes());
        // ISIZE: the input length modulo 2^32.
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out
    })
}

/// The FIFO message group: one object's changes stay in order.
fn group_id(event: &ResourceEvent) -> String {
    fifo_id(&format!(
        "{}/{}/{}/{}",
        event.cluster, event.namespace, event.kind, event.name
    ))
}

/// The FIFO deduplication id: one state of one object, once per event type.
fn deduplication_id(event: &ResourceEvent) -> String {
    fifo_id(&format!(
        "{}-{}-{}",
        event.uid, event.resource_version, event.event_type
    ))
}

/// FIFO ids may hold alphanumerics and ASCII punctuation, at most 128 of
/// them. Other characters become `_`; a longer id keeps its head and gets a
/// hash of the whole, so distinct long ids stay distinct.
fn fifo_id(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c.is_ascii_punctuation() {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned.len() <= FIFO_ID_MAX_LEN {
        return cleaned;
    }
    let hash = format!("{:016x}", fnv1a(raw.as_bytes()));
    format!("{}~{hash}", &cleaned[..FIFO_ID_MAX_LEN - hash.len() - 1])
}

/// FNV-1a, 64 bit: stable across runs and builds (unlike std's hasher),
/// which deduplication across a restart needs.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use serde_json::value::RawValue;

    use super::*;
    use crate::record::EventType;
    use crate::record::LAST_APPLIED_ANNOTATION;

    fn event(object: Value) -> ResourceEvent {
        ResourceEvent {
            cluster: "https://api.example.com:6443".into(),
            context: "prod-eu".into(),
            namespace: "team-a".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            event_type: EventType::Added,
            name: "settings".into(),
            uid: "0b5d-uid".into(),
            resource_version: "1234".into(),
            resync: false,
            redacted: false,
            topic_arn: None,
            observed_at_us: None,
            object: RawValue::from_string(object.to_string()).unwrap(),
        }
    }

    fn decode(body: &str) -> Vec<u8> {
        let compressed = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&compressed[..])
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn attribute<'a>(message: &'a SnsMessage, name: &str) -> Option<&'a str> {
        message
            .attributes
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Random-looking text that gzip cannot shrink much.
    fn incompressible(len: usize) -> String {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'!' + (state % 90) as u8)
            })
            .collect()
    }

    #[test]
    fn body_is_gzip_base64_of_the_object_bytes_and_attributes_are_the_seeds() {
        let event = event(
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"a": "b"}}),
        );
        let message = build(&event, false);
        assert_eq!(decode(&message.body), event.object.get().as_bytes());
        let names: Vec<&str> = message.attributes.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "source",
                "cluster",
                "context",
                "namespace",
                "api_version",
                "kind",
                "event_type",
                "object_name",
                "content_encoding"
            ]
        );
        assert_eq!(attribute(&message, "source"), Some("kubernetes"));
        assert_eq!(
            attribute(&message, "cluster"),
            Some("https://api.example.com:6443")
        );
        assert_eq!(attribute(&message, "event_type"), Some("ADDED"));
        assert_eq!(attribute(&message, "content_encoding"), Some("gzip+base64"));
        assert_eq!(
            attribute(&message, "flags"),
            None,
            "flags only when there is something to say"
        );
        assert_eq!(message.degradation, Degradation::Full);
        assert_eq!(
            (
                message.group_id.as_deref(),
                message.deduplication_id.as_deref()
            ),
            (None, None)
        );
    }

    #[test]
    fn redacted_is_flagged_beside_resync_on_sns_and_stdout() {
        let mut event = event(serde_json::json!({"metadata": {"name": "x"}}));
        event.redacted = true;
        assert_eq!(attribute(&build(&event, false), "flags"), Some("redacted"));
        event.resync = true;
        assert_eq!(
            attribute(&build(&event, false), "flags"),
            Some("resync,redacted")
        );
        let plain = plain_attributes(&event);
        assert!(plain.contains(&("flags", "resync,redacted".to_owned())));
    }

    #[test]
    fn resync_is_flagged_and_empty_values_are_left_out() {
        let mut event = event(serde_json::json!({"metadata": {"name": "x"}}));
        event.resync = true;
        event.namespace = String::new();
        let message = build(&event, false);
        assert_eq!(attribute(&message, "flags"), Some("resync"));
        assert_eq!(attribute(&message, "namespace"), None);
        assert!(
            message
                .attributes
                .iter()
                .all(|(_, value)| !value.is_empty())
        );
        assert!(message.attributes.len() <= MAX_ATTRIBUTES);
    }

    #[test]
    fn oversized_object_loses_managed_fields_and_last_applied_first() {
        let big = incompressible(300_000);
        let event = event(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "settings",
                "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:data": big}}],
                "annotations": {LAST_APPLIED_ANNOTATION: "{}", "keep": "me"},
            },
            "data": {"small": "value"},
        }));
        let message = build(&event, false);
        assert_eq!(message.degradation, Degradation::Trimmed);
        assert_eq!(attribute(&message, "flags"), Some("trimmed"));
        assert!(message.size() <= SNS_MAX_MESSAGE_BYTES);
        let body: Value = serde_json::from_slice(&decode(&message.body)).unwrap();
        assert_eq!(body["data"]["small"], "value");
        assert_eq!(body["metadata"]["annotations"]["keep"], "me");
        assert!(body["metadata"].get("managedFields").is_none());
        assert!(
            body["metadata"]["annotations"]
                .get(LAST_APPLIED_ANNOTATION)
                .is_none()
        );
    }

    #[test]
    fn object_too_large_even_trimmed_falls_back_to_metadata_only() {
        let mut event = event(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "labels": {"app": "x"}},
            "data": {"blob": incompressible(400_000)},
        }));
        event.resync = true;
        let message = build(&event, false);
        assert_eq!(message.degradation, Degradation::MetadataOnly);
        assert_eq!(attribute(&message, "flags"), Some("resync,metadata-only"));
        assert!(
            message.size() <= SNS_MAX_MESSAGE_BYTES,
            "{}",
            message.size()
        );
        let body: Value = serde_json::from_slice(&decode(&message.body)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "labels": {"app": "x"}}})
        );
    }

    #[test]
    fn metadata_too_large_falls_back_to_identity() {
        let event = event(serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "annotations": {"huge": incompressible(300_000)}},
        }));
        let message = build(&event, false);
        assert_eq!(message.degradation, Degradation::Identity);
        assert_eq!(attribute(&message, "flags"), Some("metadata-only"));
        let body: Value = serde_json::from_slice(&decode(&message.body)).unwrap();
        assert_eq!(body["metadata"]["uid"], "0b5d-uid");
        assert_eq!(body["metadata"]["resourceVersion"], "1234");
    }

    #[test]
    fn an_object_just_under_the_limit_is_sent_whole() {
        // Compressible: gzip brings 1 MiB of JSON far below 256 KiB.
        let event = event(
            serde_json::json!({"metadata": {"name": "x"}, "data": {"a": "a".repeat(1 << 20)}}),
        );
        let message = build(&event, false);
        assert_eq!(message.degradation, Degradation::Full);
        assert_eq!(decode(&message.body), event.object.get().as_bytes());
    }

    #[test]
    fn gzip_state_reused_across_messages_and_levels_decodes_exactly() {
        let inputs: Vec<Vec<u8>> = vec![
            Vec::new(),
            b"{}".to_vec(),
            incompressible(200_000).into_bytes(),
            "a".repeat(1 << 20).into_bytes(),
        ];
        for round in 0..2 {
            for input in &inputs {
                for level in [Compression::fast(), Compression::best()] {
                    assert_eq!(&decode(&encode(input, level)), input, "round {round}");
                }
            }
        }
    }

    #[test]
    fn size_counts_attribute_names_types_and_values() {
        let message = SnsMessage {
            body: "abcd".into(),
            attributes: vec![("kind", "Pod".into())],
            group_id: None,
            deduplication_id: None,
            degradation: Degradation::Full,
        };
        assert_eq!(message.size(), 4 + 4 + 6 + 3);
    }

    #[test]
    fn fifo_ids_identify_the_object_and_the_state() {
        let mut event = event(serde_json::json!({}));
        let message = build(&event, true);
        assert_eq!(
            message.group_id.as_deref(),
            Some("https://api.example.com:6443/team-a/ConfigMap/settings")
        );
        assert_eq!(
            message.deduplication_id.as_deref(),
            Some("0b5d-uid-1234-ADDED")
        );
        event.event_type = EventType::Deleted;
        assert_eq!(
            build(&event, true).deduplication_id.as_deref(),
            Some("0b5d-uid-1234-DELETED")
        );

        event.name = "n".repeat(300);
        let long = build(&event, true).group_id.unwrap();
        assert_eq!(long.len(), FIFO_ID_MAX_LEN);
        event.name = format!("{}x", "n".repeat(299));
        assert_ne!(
            build(&event, true).group_id.unwrap(),
            long,
            "distinct long ids stay distinct"
        );
        assert_eq!(fifo_id("a b\u{e9}"), "a_b_");
    }
}
