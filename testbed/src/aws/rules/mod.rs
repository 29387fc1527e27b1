//! The AWS limits moto does not enforce, as pure functions over a request
//! body, each answering with the error AWS itself sends.
//!
//! [`sns`] checks `Publish` and `PublishBatch` (awsQuery form bodies);
//! [`logs`] checks `PutLogEvents` (awsJson1.1). The [`super::StrictProxy`]
//! runs them on every request before forwarding it to moto.
//!
//! Error codes are the wire codes of the services' Smithy models, the codes
//! the AWS SDKs map to typed errors: e.g. SNS's `InvalidParameterValueException`
//! travels as `ParameterValueInvalid`
//! (`aws-sdk-sns` 1.121 `protocol_serde/shape_publish.rs`; botocore's SNS model
//! agrees). Messages are AWS's own where they are known (quoted in the
//! rules); the others say plainly what was wrong.

pub mod logs;
pub mod sns;

/// One rule the strict proxy enforces. [`Rule::name`] is the stable label
/// used in counters and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// SNS `Publish`: no `Message` or an empty one.
    SnsEmptyMessage,
    /// SNS `Publish`: message + attributes over 262,144 bytes.
    SnsMessageTooLong,
    /// SNS: more than 10 message attributes on one message.
    SnsTooManyAttributes,
    /// SNS: an attribute name breaking the naming rules.
    SnsAttributeName,
    /// SNS: a missing or unknown attribute data type.
    SnsAttributeType,
    /// SNS: an attribute with no value or an empty one.
    SnsAttributeEmptyValue,
    /// SNS: a `Number` attribute whose value is not a number.
    SnsAttributeNotNumber,
    /// SNS `PublishBatch` with no entries.
    SnsBatchEmpty,
    /// SNS `PublishBatch` with more than 10 entries.
    SnsBatchTooManyEntries,
    /// SNS `PublishBatch` with two entries sharing an `Id`.
    SnsBatchIdsNotDistinct,
    /// SNS `PublishBatch` with an `Id` that is not 1–80 of `[A-Za-z0-9_-]`.
    SnsBatchInvalidId,
    /// SNS `PublishBatch` whose messages + attributes total over 262,144 bytes.
    SnsBatchTooLong,
    /// CloudWatch `PutLogEvents` with no events.
    LogsNoEvents,
    /// CloudWatch `PutLogEvents` with more than 10,000 events.
    LogsTooManyEvents,
    /// CloudWatch `PutLogEvents` over 1,048,576 bytes (messages + 26 per event).
    LogsBatchTooLarge,
    /// CloudWatch: one event over the per-event limit.
    LogsEventTooLarge,
    /// CloudWatch: an event with an empty message.
    LogsEmptyMessage,
    /// CloudWatch: events not in chronological order.
    LogsNotChronological,
    /// CloudWatch: accepted events spanning more than 24 hours.
    LogsSpanOver24Hours,
    /// CloudWatch: an event more than 14 days old. Not a refusal: AWS accepts
    /// the rest and reports it in `rejectedLogEventsInfo`. Counted per event.
    LogsEventTooOld,
    /// CloudWatch: an event more than 2 hours in the future. Not a refusal:
    /// reported in `rejectedLogEventsInfo`. Counted per event.
    LogsEventTooNew,
}

impl Rule {
    /// Every rule, in declaration order.
    pub const ALL: [Rule; 21] = [
        Rule::SnsEmptyMessage,
        Rule::SnsMessageTooLong,
        Rule::SnsTooManyAttributes,
        Rule::SnsAttributeName,
        Rule::SnsAttributeType,
        Rule::SnsAttributeEmptyValue,
        Rule::SnsAttributeNotNumber,
        Rule::SnsBatchEmpty,
        Rule::SnsBatchTooManyEntries,
        Rule::SnsBatchIdsNotDistinct,
        Rule::SnsBatchInvalidId,
        Rule::SnsBatchTooLong,
        Rule::LogsNoEvents,
        Rule::LogsTooManyEvents,
        Rule::LogsBatchTooLarge,
        Rule::LogsEventTooLarge,
        Rule::LogsEmptyMessage,
        Rule::LogsNotChronological,
        Rule::LogsSpanOver24Hours,
        Rule::LogsEventTooOld,
        Rule::LogsEventTooNew,
    ];

    /// A stable, dotted label such as `sns.batch_too_long`.
    pub fn name(self) -> &'static str {
        match self {
            Rule::SnsEmptyMessage => "sns.empty_message",
            Rule::SnsMessageTooLong => "sns.message_too_long",
            Rule::SnsTooManyAttributes => "sns.too_many_attributes",
            Rule::SnsAttributeName => "sns.attribute_name",
            Rule::SnsAttributeType => "sns.attribute_type",
            Rule::SnsAttributeEmptyValue => "sns.attribute_empty_value",
            Rule::SnsAttributeNotNumber => "sns.attribute_not_number",
            Rule::SnsBatchEmpty => "sns.batch_empty",
            Rule::SnsBatchTooManyEntries => "sns.batch_too_many_entries",
            Rule::SnsBatchIdsNotDistinct => "sns.batch_ids_not_distinct",
            Rule::SnsBatchInvalidId => "sns.batch_invalid_id",
            Rule::SnsBatchTooLong => "sns.batch_too_long",
            Rule::LogsNoEvents => "logs.no_events",
            Rule::LogsTooManyEvents => "logs.too_many_events",
            Rule::LogsBatchTooLarge => "logs.batch_too_large",
            Rule::LogsEventTooLarge => "logs.event_too_large",
            Rule::LogsEmptyMessage => "logs.empty_message",
            Rule::LogsNotChronological => "logs.not_chronological",
            Rule::LogsSpanOver24Hours => "logs.span_over_24_hours",
            Rule::LogsEventTooOld => "logs.event_too_old",
            Rule::LogsEventTooNew => "logs.event_too_new",
        }
    }

    /// Whether breaking this rule fails the whole request (as opposed to the
    /// too-old / too-new events CloudWatch drops while accepting the rest).
    pub fn refuses_request(self) -> bool {
        !matches!(self, Rule::LogsEventTooOld | Rule::LogsEventTooNew)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A request AWS would refuse, with the answer AWS would give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The rule that was broken.
    pub rule: Rule,
    /// HTTP status (400 for every rule here).
    pub status: u16,
    /// The wire error code (`<Code>` for awsQuery, `__type` for awsJson).
    pub code: &'static str,
    /// The error message.
    pub message: String,
}

impl Refusal {
    fn bad_request(rule: Rule, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            rule,
            status: 400,
            code,
            message: message.into(),
        }
    }
}
