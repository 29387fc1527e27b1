//! SNS `Publish` / `PublishBatch` limits (awsQuery: form-encoded POST).
//!
//! Sources:
//! - Publish API reference, `Message`: "at most 256 KB in size (262,144 bytes,
//!   not 262,144 characters)"; too long → `InvalidParameter`, "Invalid
//!   parameter: Message too long" (the text moto and localstack copy from AWS).
//! - Developer guide, "Amazon SNS message attributes" → "Message attribute
//!   items and validation": names of `A-Z a-z 0-9 _ - .`, not starting or
//!   ending with a period, no successive periods, at most 256 characters, not
//!   starting with `AWS.` or `Amazon.` in any case; name, type and value must
//!   not be empty; "all parts of the message attribute, including name, type,
//!   and value, are included in the message size restriction" (256 KiB).
//!   Data types `String`, `Number`, `Binary`, each with an optional
//!   `.custom` suffix.
//! - Same page: "For SQS subscriptions, a maximum of 10 message attributes can
//!   be sent when Raw Message Delivery is enabled … Messages with more than 10
//!   message attributes directed towards Raw Message Delivery enabled Amazon SQS
//!   subscriptions will be discarded". SNS itself accepts the publish and the
//!   message vanishes; SPEC §3 caps kubeherald at 10, so the proxy refuses more
//!   (a testbed rule, not an AWS refusal) with `ParameterValueInvalid`, the
//!   code of SNS's attribute validation, and SQS's own wording for the limit.
//! - PublishBatch API reference: at most 10 entries
//!   (`TooManyEntriesInBatchRequest`), "the total aggregate size of all
//!   messages in a single PublishBatch call can't exceed 262,144 bytes"
//!   (`BatchRequestTooLong`), entry ids distinct (`BatchEntryIdsNotDistinct`)
//!   and of up to 80 alphanumerics, hyphens and underscores
//!   (`InvalidBatchEntryId`), at least one entry (`EmptyBatchRequest`).
//!   Messages: botocore's SNS exception docs and localstack's SNS provider.
//!   A bad attribute on any entry fails the whole batch (localstack: "AWS fails
//!   the whole publish if something is wrong in the format of 1 message").
//! - Wire codes: `aws-sdk-sns` 1.121 `protocol_serde/shape_publish{,_batch}.rs`
//!   (`InvalidParameterValueException` is `ParameterValueInvalid` on the wire).

use std::collections::{BTreeMap, BTreeSet};

use super::{Refusal, Rule};

/// Largest SNS message, body plus attributes, in bytes (256 KiB).
pub const MAX_MESSAGE_BYTES: usize = 262_144;
/// Largest total of all messages (and their attributes) in one `PublishBatch`.
pub const MAX_BATCH_BYTES: usize = 262_144;
/// Most entries in one `PublishBatch`.
pub const MAX_BATCH_ENTRIES: usize = 10;
/// Most message attributes a raw-delivery SQS subscriber accepts (SPEC §3).
pub const MAX_ATTRIBUTES: usize = 10;
/// Longest message attribute name.
pub const MAX_ATTRIBUTE_NAME_CHARS: usize = 256;
/// Longest `PublishBatch` entry id.
pub const MAX_BATCH_ENTRY_ID_CHARS: usize = 80;

const INVALID_PARAMETER: &str = "InvalidParameter";
const PARAMETER_VALUE_INVALID: &str = "ParameterValueInvalid";

/// The decoded form fields of an awsQuery request.
pub type QueryParams = BTreeMap<String, String>;

/// Decodes an `application/x-www-form-urlencoded` body.
pub fn parse_query(body: &[u8]) -> QueryParams {
    form_urlencoded::parse(body).into_owned().collect()
}

/// Checks a `Publish` request.
pub fn check_publish(params: &QueryParams) -> Result<(), Refusal> {
    let size = check_message(params, "")?;
    if size > MAX_MESSAGE_BYTES {
        return Err(Refusal::bad_request(
            Rule::SnsMessageTooLong,
            INVALID_PARAMETER,
            "Invalid parameter: Message too long",
        ));
    }
    Ok(())
}

/// Checks a `PublishBatch` request.
pub fn check_publish_batch(params: &QueryParams) -> Result<(), Refusal> {
    const PREFIX: &str = "PublishBatchRequestEntries.member.";
    let indices: BTreeSet<u32> = params
        .keys()
        .filter_map(|k| k.strip_prefix(PREFIX))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect();
    if indices.is_empty() {
        return Err(Refusal::bad_request(
            Rule::SnsBatchEmpty,
            "EmptyBatchRequest",
            "The batch request doesn't contain any entries.",
        ));
    }
    if indices.len() > MAX_BATCH_ENTRIES {
        return Err(Refusal::bad_request(
            Rule::SnsBatchTooManyEntries,
            "TooManyEntriesInBatchRequest",
            "The batch request contains more entries than permissible.",
        ));
    }
    let mut ids = BTreeSet::new();
    for i in &indices {
        let id = params
            .get(&format!("{PREFIX}{i}.Id"))
            .map(String::as_str)
            .unwrap_or("");
        if !ids.insert(id) {
            return Err(Refusal::bad_request(
                Rule::SnsBatchIdsNotDistinct,
                "BatchEntryIdsNotDistinct",
                "Two or more batch entries in the request have the same Id.",
            ));
        }
    }
    for id in &ids {
        let valid = !id.is_empty()
            && id.chars().count() <= MAX_BATCH_ENTRY_ID_CHARS
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(Refusal::bad_request(
                Rule::SnsBatchInvalidId,
                "InvalidBatchEntryId",
                "The Id of a batch entry in a batch request doesn't abide by the specification.",
            ));
        }
    }
    let mut total = 0;
    for i in &indices {
        total += check_message(params, &format!("{PREFIX}{i}."))?;
    }
    if total > MAX_BATCH_BYTES {
        return Err(Refusal::bad_request(
            Rule::SnsBatchTooLong,
            "BatchRequestTooLong",
            "The length of all the messages put together is more than the limit.",
        ));
    }
    Ok(())
}

/// Checks one message (`prefix` is empty for `Publish`, the entry's prefix
/// for `PublishBatch`) and returns its size as SNS counts it.
fn check_message(params: &QueryParams, prefix: &str) -> Result<usize, Refusal> {
    let message = params
        .get(&format!("{prefix}Message"))
        .map(String::as_str)
        .unwrap_or("");
    if message.is_empty() {
        return Err(Refusal::bad_request(
            Rule::SnsEmptyMessage,
            INVALID_PARAMETER,
            "Invalid parameter: Empty message",
        ));
    }
    let attributes = parse_attributes(params, &format!("{prefix}MessageAttributes.entry."));
    Ok(message.len() + check_attributes(&attributes)?)
}

/// One `MessageAttributes.entry.N` as sent on the wire.
#[derive(Debug, Default)]
struct Attribute {
    name: Option<String>,
    data_type: Option<String>,
    string_value: Option<String>,
    /// Base64, as awsQuery encodes blobs.
    binary_value: Option<String>,
}

fn parse_attributes(params: &QueryParams, prefix: &str) -> Vec<Attribute> {
    let mut by_index: BTreeMap<u32, Attribute> = BTreeMap::new();
    for (key, value) in params.range(prefix.to_owned()..) {
        let Some(rest) = key.strip_prefix(prefix) else {
            break;
        };
        let Some((index, field)) = rest.split_once('.') else {
            continue;
        };
        let Ok(index) = index.parse() else {
            continue;
        };
        let attribute = by_index.entry(index).or_default();
        let value = Some(value.clone());
        match field {
            "Name" => attribute.name = value,
            "Value.DataType" => attribute.data_type = value,
            "Value.StringValue" => attribute.string_value = value,
            "Value.BinaryValue" => attribute.binary_value = value,
            _ => {}
        }
    }
    by_index.into_values().collect()
}

/// Validates the attributes and returns the bytes they add to the message.
fn check_attributes(attributes: &[Attribute]) -> Result<usize, Refusal> {
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(Refusal::bad_request(
            Rule::SnsTooManyAttributes,
            PARAMETER_VALUE_INVALID,
            format!(
                "Number of message attributes [{}] exceeds the allowed maximum [{MAX_ATTRIBUTES}].",
                attributes.len()
            ),
        ));
    }
    let mut bytes = 0;
    for attribute in attributes {
        let name = attribute.name.as_deref().unwrap_or("");
        check_attribute_name(name)?;
        let data_type = attribute.data_type.as_deref().unwrap_or("");
        if data_type.is_empty() {
            return Err(Refusal::bad_request(
                Rule::SnsAttributeType,
                PARAMETER_VALUE_INVALID,
                format!(
                    "The message attribute '{name}' must contain non-empty message attribute value."
                ),
            ));
        }
        let base = data_type.split('.').next().unwrap_or("");
        if !matches!(base, "String" | "Number" | "Binary") {
            return Err(Refusal::bad_request(
                Rule::SnsAttributeType,
                PARAMETER_VALUE_INVALID,
                format!(
                    "The message attribute '{name}' has an invalid message attribute type, the set of supported type prefixes is Binary, Number, and String."
                ),
            ));
        }
        let (value, value_bytes) = if base == "Binary" {
            let v = attribute.binary_value.as_deref().unwrap_or("");
            (v, base64_decoded_len(v))
        } else {
            let v = attribute.string_value.as_deref().unwrap_or("");
            (v, v.len())
        };
        if value.is_empty() {
            return Err(Refusal::bad_request(
                Rule::SnsAttributeEmptyValue,
                PARAMETER_VALUE_INVALID,
                format!(
                    "The message attribute '{name}' must contain non-empty message attribute value for message attribute type '{base}'."
                ),
            ));
        }
        if base == "Number" && value.trim().parse::<f64>().is_err() {
            return Err(Refusal::bad_request(
                Rule::SnsAttributeNotNumber,
                PARAMETER_VALUE_INVALID,
                format!("Could not cast message attribute '{name}' value to number."),
            ));
        }
        bytes += name.len() + data_type.len() + value_bytes;
    }
    Ok(bytes)
}

fn check_attribute_name(name: &str) -> Result<(), Refusal> {
    let lower = name.to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.chars().count() <= MAX_ATTRIBUTE_NAME_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.");
    if valid {
        Ok(())
    } else {
        Err(Refusal::bad_request(
            Rule::SnsAttributeName,
            PARAMETER_VALUE_INVALID,
            format!(
                "The message attribute name '{name}' is invalid. Attribute name can contain A-Z, a-z, 0-9, underscore (_), hyphen (-), and period (.) characters, must not start or end with a period nor contain successive periods, must not start with 'AWS.' or 'Amazon.', and can be up to 256 characters long."
            ),
        ))
    }
}

/// Bytes a base64 string decodes to (awsQuery sends blobs base64-encoded).
fn base64_decoded_len(encoded: &str) -> usize {
    let trimmed = encoded.trim_end_matches('=');
    trimmed.len() * 3 / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> QueryParams {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn attr(prefix: &str, i: usize, name: &str, ty: &str, value: &str) -> Vec<(String, String)> {
        vec![
            (
                format!("{prefix}MessageAttributes.entry.{i}.Name"),
                name.into(),
            ),
            (
                format!("{prefix}MessageAttributes.entry.{i}.Value.DataType"),
                ty.into(),
            ),
            (
                format!("{prefix}MessageAttributes.entry.{i}.Value.StringValue"),
                value.into(),
            ),
        ]
    }

    #[test]
    fn size_counts_bytes_of_body_and_attributes() {
        // "é" is 2 bytes: 131,072 characters are 262,144 bytes, exactly the limit.
        let body = "é".repeat(131_072);
        let mut p = params(&[("Action", "Publish"), ("Message", &body)]);
        assert_eq!(check_publish(&p), Ok(()));
        p.extend(attr("", 1, "k", "String", "v"));
        assert_eq!(check_publish(&p).unwrap_err().rule, Rule::SnsMessageTooLong);
    }

    #[test]
    fn attribute_rules() {
        let mut p = params(&[("Message", "m")]);
        p.extend(attr("", 1, "ok.name-1_x", "String.custom", "v"));
        assert_eq!(check_publish(&p), Ok(()));
        for bad in [".a", "a.", "a..b", "AWS.x", "amazon.x", "a b", ""] {
            let mut p = params(&[("Message", "m")]);
            p.extend(attr("", 1, bad, "String", "v"));
            assert_eq!(
                check_publish(&p).unwrap_err().rule,
                Rule::SnsAttributeName,
                "{bad:?}"
            );
        }
        let mut p = params(&[("Message", "m")]);
        p.extend(attr("", 1, "n", "Number", "x1"));
        assert_eq!(
            check_publish(&p).unwrap_err().rule,
            Rule::SnsAttributeNotNumber
        );
        let mut p = params(&[("Message", "m")]);
        p.extend(attr("", 1, "n", "Text", "x"));
        assert_eq!(check_publish(&p).unwrap_err().rule, Rule::SnsAttributeType);
        let mut p = params(&[("Message", "m")]);
        p.extend(attr("", 1, "n", "String", ""));
        let refusal = check_publish(&p).unwrap_err();
        assert_eq!(
            (refusal.rule, refusal.code),
            (Rule::SnsAttributeEmptyValue, "ParameterValueInvalid")
        );
    }

    #[test]
    fn batch_rules() {
        let entry = |i: usize, id: &str| {
            vec![
                (
                    format!("PublishBatchRequestEntries.member.{i}.Id"),
                    id.to_string(),
                ),
                (
                    format!("PublishBatchRequestEntries.member.{i}.Message"),
                    "m".to_string(),
                ),
            ]
        };
        assert_eq!(
            check_publish_batch(&params(&[])).unwrap_err().rule,
            Rule::SnsBatchEmpty
        );
        let p: QueryParams = (1..=11).flat_map(|i| entry(i, &format!("e{i}"))).collect();
        assert_eq!(
            check_publish_batch(&p).unwrap_err().rule,
            Rule::SnsBatchTooManyEntries
        );
        let p: QueryParams = (1..=10).flat_map(|i| entry(i, &format!("e{i}"))).collect();
        assert_eq!(check_publish_batch(&p), Ok(()));
        let p: QueryParams = [entry(1, "a"), entry(2, "a")]
            .concat()
            .into_iter()
            .collect();
        assert_eq!(
            check_publish_batch(&p).unwrap_err().rule,
            Rule::SnsBatchIdsNotDistinct
        );
        let p: QueryParams = entry(1, "a:b").into_iter().collect();
        assert_eq!(
            check_publish_batch(&p).unwrap_err().rule,
            Rule::SnsBatchInvalidId
        );
    }
}
