//! What crosses the spools: a resource change as the watcher saw it
//! ([`ResourceEvent`], the events spool) and a container's log line
//! ([`LogLine`], the logs spool).
//!
//! A [`ResourceEvent`] is serialised as one JSON document per spool record. The object is kept as
//! the raw JSON the API server sent (`RawValue`), so what subscribers decode
//! is the API server's own bytes, not a re-serialisation.
//!
//! May import: `names`. Imported by the producers (`watch`, `logs`) and the
//! consumers (`publish`) of the spools, which know each other only through it.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The annotation `kubectl apply` keeps a full copy of the object in.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what an object's `metadata` carries for its writers, not its
/// readers, and what can outweigh the rest of it: `managedFields` and the
/// last-applied annotation (SPEC §3, "Size"). An annotation map left empty
/// goes too. The one rule for the watcher's last-known copy and the SNS
/// message's `trimmed` body.
pub fn drop_bulky_metadata(metadata: &mut serde_json::Map<String, serde_json::Value>) {
    metadata.remove("managedFields");
    if let Some(serde_json::Value::Object(annotations)) = metadata.get_mut("annotations") {
        annotations.remove(LAST_APPLIED_ANNOTATION);
        if annotations.is_empty() {
            metadata.remove("annotations");
        }
    }
}

/// A ConfigMap ADDED event of `name` with `object` as its body, for unit tests.
#[cfg(test)]
pub(crate) fn test_event(name: &str, object: &str) -> ResourceEvent {
    ResourceEvent {
        cluster: "https://api:6443".into(),
        context: "unit-ctx".into(),
        namespace: "ns".into(),
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        event_type: EventType::Added,
        name: name.into(),
        uid: format!("uid-{name}"),
        resource_version: "1".into(),
        resync: false,
        redacted: false,
        topic_arn: None,
        observed_at_us: None,
        object: RawValue::from_string(object.into()).expect("a test object is JSON"),
    }
}

/// The type of a change, as the watch API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One resource change, ready to publish.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceEvent {
    /// The API server URL (the `cluster` attribute, as the seed set it).
    pub cluster: String,
    /// The kubeconfig context.
    pub context: String,
    pub namespace: String,
    pub api_version: String,
    pub kind: String,
    pub event_type: EventType,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.resourceVersion` of this state of the object.
    pub resource_version: String,
    /// Synthesised by a re-list diff rather than seen on a watch.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resync: bool,
    /// Values of the object were replaced by redaction markers before it
    /// was spooled ([`crate::redact`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
    /// The SNS topic of the `sns.routes` entry this copy of the event is
    /// for; `None`: the default topic (or stdout). Chosen when the event is
    /// spooled, one record per topic, so each copy is acknowledged (or
    /// dead-lettered, and replayed) for its own topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_arn: Option<String>,
    /// When the watcher read it off the API server's answer, in
    /// microseconds since the Unix epoch: the start of the delays
    /// `event_spool_delay_seconds` and `event_publish_delay_seconds`
    /// measure (SPEC §9). Absent in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at_us: Option<u64>,
    /// The object as the API server sent it.
    pub object: Box<RawValue>,
}

/// Microseconds since the Unix epoch now (for [`ResourceEvent::observed_at_us`]).
pub fn unix_micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Seconds from `observed_at_us` (see [`ResourceEvent::observed_at_us`]) to now.
pub fn seconds_since(observed_at_us: u64) -> f64 {
    unix_micros_now().saturating_sub(observed_at_us) as f64 / 1e6
}

impl ResourceEvent {
    /// The spool record of this event.
    pub fn to_record(&self) -> Vec<u8> {
        // Serialising plain strings and an already valid RawValue cannot fail.
        serde_json::to_vec(self).expect("a ResourceEvent always serialises")
    }

    /// Reads a spool record back.
    pub fn from_record(record: &[u8]) -> Result<ResourceEvent, serde_json::Error> {
        serde_json::from_slice(record)
    }
}

/// One container instance: the identity of a log stream, of a resume
/// checkpoint and of the lines of a [`LogLine`] — the one type for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerKey {
    /// The cluster name used in the log group.
    pub cluster: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub restart_count: u32,
}

impl ContainerKey {
    /// The container instance a line comes from.
    pub fn of(line: &LogLine) -> ContainerKey {
        ContainerKey {
            cluster: line.cluster_name.clone(),
            namespace: line.namespace.clone(),
            pod: line.pod.clone(),
            container: line.container.clone(),
            restart_count: line.restart_count,
        }
    }

    /// Whether `line` comes from this container instance.
    pub fn matches(&self, line: &LogLine) -> bool {
        self.restart_count == line.restart_count
            && self.container == line.container
            && self.pod == line.pod
            && self.namespace == line.namespace
            && self.cluster == line.cluster_name
    }

    /// Its log stream name ([`crate::names::log_stream_name`]).
    pub fn log_stream_name(&self) -> String {
        crate::names::log_stream_name(
            &self.namespace,
            &self.pod,
            &self.container,
            self.restart_count,
        )
    }
}

/// One line of a container's log, as the pod-log follower read it: what
/// crosses the logs spool (its own spool, so a log flood never delays
/// resource events) on its way to CloudWatch Logs.
///
/// The container instance (`cluster`, `namespace`, `pod`, `container`,
/// `restart_count`) names the log group and stream
/// ([`crate::names::log_group_name`], [`crate::names::log_stream_name`]) and
/// the resume checkpoint: its [`ContainerKey`] ([`LogLine::key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The cluster name used in the log group (the context's cluster name).
    pub cluster_name: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// `status.containerStatuses[].restartCount` of this container instance.
    pub restart_count: u32,
    /// The kubelet's timestamp of the line (`timestamps=true`), nanoseconds
    /// since the Unix epoch.
    pub timestamp: i64,
    /// 1-based count of the lines of this container instance carrying exactly
    /// this `timestamp`, this one included: with the timestamp, the line's
    /// position for resuming (`sinceTime` has whole seconds only).
    pub seq_at_timestamp: u32,
    /// The line without the kubelet timestamp and without the newline.
    pub message: String,
    /// The `logs.routes` entry the pod's lines go to (chosen when the pod
    /// is first seen), or [`crate::config::DEFAULT_LOG_ROUTE`].
    pub route: String,
}

/// Why a logs spool record is not a [`LogLine`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogLineError {
    #[error("log line record: unknown format (first bytes {0:02x?})")]
    Format(Vec<u8>),
    #[error("log line record: truncated")]
    Truncated,
    #[error("log line record: {0} is not UTF-8")]
    Utf8(&'static str),
}

/// `L2`: format 2 of a [`LogLine`] record (five names: the route added).
const LOG_LINE_MAGIC: [u8; 2] = *b"L2";
/// `L1`: format 1, four names; read (as the default route) so that a spool
/// written before an upgrade is shipped after it.
const LOG_LINE_MAGIC_V1: [u8; 2] = *b"L1";
/// Magic, restart count, timestamp, seq, then one u16 length per name.
const LOG_LINE_FIXED: usize = 2 + 4 + 8 + 4;

impl LogLine {
    /// The container instance this line comes from.
    pub fn key(&self) -> ContainerKey {
        ContainerKey::of(self)
    }

    /// An empty line of `key`'s container instance (a template to fill).
    pub fn of_container(key: &ContainerKey) -> LogLine {
        LogLine {
            cluster_name: key.cluster.clone(),
            namespace: key.namespace.clone(),
            pod: key.pod.clone(),
            container: key.container.clone(),
            restart_count: key.restart_count,
            timestamp: 0,
            seq_at_timestamp: 0,
            message: String::new(),
            route: crate::config::DEFAULT_LOG_ROUTE.to_owned(),
        }
    }

    /// The container instance and the message, moved out of the line.
    pub fn into_key_and_message(self) -> (ContainerKey, String) {
        let key = ContainerKey {
            cluster: self.cluster_name,
            namespace: self.namespace,
            pod: self.pod,
            container: self.container,
            restart_count: self.restart_count,
        };
        (key, self.message)
    }

    /// The spool record of this line. Binary rather than JSON: a log line is
    /// the most frequent record (SPEC §9: 100,000 lines/s) and mostly
    /// message, which JSON would escape and unescape. All integers
    /// little-endian:
    ///
    /// | size | field                                                  |
    /// |-----:|--------------------------------------------------------|
    /// | 2    | magic `L2` (format 2)                                  |
    /// | 4    | restart_count, u32                                     |
    /// | 8    | timestamp, i64 nanoseconds                             |
    /// | 4    | seq_at_timestamp, u32                                  |
    /// | 2×5  | lengths of cluster, namespace, pod, container, route, u16 |
    /// | …    | the five names (UTF-8), then the message to the end   |
    ///
    /// Format 1 (`L1`) had no route (four names); it is still read.
    ///
    /// Names longer than 65,535 bytes (never: Kubernetes names are at most
    /// 253 characters) are cut on a character boundary.
    pub fn to_record(&self) -> Vec<u8> {
        let names = [
            cut(&self.cluster_name),
            cut(&self.namespace),
            cut(&self.pod),
            cut(&self.container),
            cut(&self.route),
        ];
        let len = LOG_LINE_FIXED
            + 2 * names.len()
            + names.iter().map(|n| n.len()).sum::<usize>()
            + self.message.len();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&LOG_LINE_MAGIC);
        out.extend_from_slice(&self.restart_count.to_le_bytes());
        out.extend_from_slice(&self.timestamp.to_le_bytes());
        out.extend_from_slice(&self.seq_at_timestamp.to_le_bytes());
        for name in names {
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        }
        for name in names {
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(self.message.as_bytes());
        out
    }

    /// Reads a logs spool record back (format 2, or format 1 as the
    /// default route).
    pub fn from_record(record: &[u8]) -> Result<LogLine, LogLineError> {
        let names = match record.get(..2) {
            Some(magic) if magic == LOG_LINE_MAGIC => 5,
            Some(magic) if magic == LOG_LINE_MAGIC_V1 => 4,
            Some(magic) => return Err(LogLineError::Format(magic.to_vec())),
            None => return Err(LogLineError::Truncated),
        };
        let header = LOG_LINE_FIXED + 2 * names;
        if record.len() < header {
            return Err(LogLineError::Truncated);
        }
        let u16_at = |i: usize| u16::from_le_bytes([record[i], record[i + 1]]) as usize;
        let u32_at = |i: usize| u32::from_le_bytes(record[i..i + 4].try_into().expect("4 bytes"));
        let restart_count = u32_at(2);
        let timestamp = i64::from_le_bytes(record[6..14].try_into().expect("8 bytes"));
        let seq_at_timestamp = u32_at(14);
        let mut at = header;
        let mut read = Vec::with_capacity(5);
        for (n, what) in ["cluster", "namespace", "pod", "container", "route"]
            .into_iter()
            .take(names)
            .enumerate()
        {
            let len = u16_at(LOG_LINE_FIXED + 2 * n);
            let bytes = record.get(at..at + len).ok_or(LogLineError::Truncated)?;
            at += len;
            read.push(String::from_utf8(bytes.to_vec()).map_err(|_| LogLineError::Utf8(what))?);
        }
        if names == 4 {
            read.push(crate::config::DEFAULT_LOG_ROUTE.to_owned());
        }
        let message =
            String::from_utf8(record[at..].to_vec()).map_err(|_| LogLineError::Utf8("message"))?;
        let [cluster_name, namespace, pod, container, route]: [String; 5] =
            read.try_into().expect("five names");
        Ok(LogLine {
            cluster_name,
            namespace,
            pod,
            container,
            restart_count,
            timestamp,
            seq_at_timestamp,
            message,
            route,
        })
    }
}

/// `name` cut to at most `u16::MAX` bytes on a character boundary.
fn cut(name: &str) -> &str {
    let mut end = name.len().min(u16::MAX as usize);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip_keeps_the_object_bytes() {
        let object = r#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a",  "uid":"u1"}}"#;
        let event = ResourceEvent {
            cluster: "https://api:6443".into(),
            context: "ctx".into(),
            namespace: "ns".into(),
            api_version: "v1".into(),
            kind: "Pod".into(),
            event_type: EventType::Modified,
            name: "a".into(),
            uid: "u1".into(),
            resource_version: "42".into(),
            resync: true,
            redacted: false,
            topic_arn: None,
            observed_at_us: None,
            object: RawValue::from_string(object.into()).unwrap(),
        };
        let back = ResourceEvent::from_record(&event.to_record()).unwrap();
        assert_eq!(
            back.object.get(),
            object,
            "the object's own bytes, spacing included"
        );
        assert_eq!(back.event_type, EventType::Modified);
        assert!(back.resync);
        assert_eq!(back.resource_version, "42");
    }
}

#[cfg(test)]
mod log_line_tests {
    use super::*;

    fn line(message: &str) -> LogLine {
        LogLine {
            cluster_name: "prod-eu".into(),
            namespace: "team-a".into(),
            pod: "web-7d8c".into(),
            container: "nginx".into(),
            restart_count: 3,
            timestamp: 1_750_000_000_123_456_789,
            seq_at_timestamp: 2,
            message: message.into(),
            route: "payments".into(),
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        for message in [
            "",
            "plain",
            "é ünïcode ✓ \\n \"quoted\"",
            &"x".repeat(300_000),
        ] {
            let original = line(message);
            assert_eq!(
                LogLine::from_record(&original.to_record()).unwrap(),
                original
            );
        }
        let mut negative = line("before 1970");
        negative.timestamp = -5;
        assert_eq!(
            LogLine::from_record(&negative.to_record()).unwrap(),
            negative
        );
    }

    #[test]
    fn malformed_records_are_errors_not_panics() {
        let record = line("hello").to_record();
        for len in 0..record.len() - "hello".len() {
            assert!(
                LogLine::from_record(&record[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        assert!(matches!(
            LogLine::from_record(br#"{"cluster":"x"}"#),
            Err(LogLineError::Format(_))
        ));
        let mut bad = record.clone();
        let last = bad.len() - 1;
        bad[last] = 0xff;
        assert_eq!(
            LogLine::from_record(&bad),
            Err(LogLineError::Utf8("message"))
        );
    }

    #[test]
    fn a_format_1_record_reads_as_the_default_route() {
        // Format 1 as written before routes: L1, u32, i64, u32, four u16
        // lengths, the names, the message.
        let mut record = b"L1".to_vec();
        record.extend_from_slice(&3u32.to_le_bytes());
        record.extend_from_slice(&7i64.to_le_bytes());
        record.extend_from_slice(&1u32.to_le_bytes());
        for name in ["c", "ns", "p", "k"] {
            record.extend_from_slice(&(name.len() as u16).to_le_bytes());
        }
        record.extend_from_slice(b"cnspk");
        record.extend_from_slice(b"old line");
        let line = LogLine::from_record(&record).unwrap();
        assert_eq!(
            (
                line.cluster_name.as_str(),
                line.namespace.as_str(),
                line.pod.as_str()
            ),
            ("c", "ns", "p")
        );
        assert_eq!(line.container, "k");
        assert_eq!(
            (line.restart_count, line.timestamp, line.seq_at_timestamp),
            (3, 7, 1)
        );
        assert_eq!(line.message, "old line");
        assert_eq!(line.route, crate::config::DEFAULT_LOG_ROUTE);
    }

    #[test]
    fn overlong_names_are_cut_on_a_character_boundary() {
        let mut long = line("m");
        long.pod = "é".repeat(40_000);
        let back = LogLine::from_record(&long.to_record()).unwrap();
        assert_eq!(back.pod.len(), 65_534);
        assert_eq!(back.message, "m");
    }
}
