//! The strict AWS proxy refuses, through the real AWS SDK, every request real
//! AWS would refuse, with AWS's error code; lets requests at the limits through
//! to moto; drops too-old / too-new log events as CloudWatch does; and injects
//! faults. Needs moto (see `kubeherald_testbed::aws::moto`); fails loudly
//! without it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_cloudwatchlogs::operation::put_log_events::PutLogEventsError;
use aws_sdk_cloudwatchlogs::types::InputLogEvent;
use aws_sdk_sns::error::ProvideErrorMetadata;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use kubeherald_testbed::aws::rules::{logs, sns};
use kubeherald_testbed::aws::{
    Fault, Moto, Rule, SqsSubscription, StrictProxy, TestSdk, unique_name,
};

const DRAIN: Duration = Duration::from_secs(15);

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn string_attr(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .unwrap()
}

/// The wire error code of a failed SDK call, or a panic if it succeeded.
fn code<T: std::fmt::Debug, E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    result: Result<T, aws_sdk_sns::error::SdkError<E, R>>,
) -> String {
    let err = result.expect_err("AWS should have refused this request");
    let service = err
        .as_service_error()
        .unwrap_or_else(|| panic!("expected a service error, got {err:?}"));
    service.code().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_publish_limits() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let sdk = TestSdk::new(proxy.url()).max_attempts(1);
    let moto_sdk = TestSdk::new(moto.url());
    let (topic, queue) = SqsSubscription::topic_with_raw_queue(&sdk, &moto_sdk, "strict").await;
    let client = sdk.sns();

    // Body + attributes (name + type + value bytes) exactly 262,144 bytes, with
    // two-byte characters so characters and bytes differ.
    let attrs: BTreeMap<String, String> = (0..10)
        .map(|i| (format!("k{i}"), format!("v{i}")))
        .collect();
    let attrs_bytes: usize = attrs
        .iter()
        .map(|(k, v)| k.len() + "String".len() + v.len())
        .sum();
    let body = format!(
        "{}{}",
        "é".repeat((sns::MAX_MESSAGE_BYTES - attrs_bytes) / 2),
        "a".repeat((sns::MAX_MESSAGE_BYTES - attrs_bytes) % 2)
    );
    assert_eq!(body.len() + attrs_bytes, sns::MAX_MESSAGE_BYTES);
    let publish = |message: &str, attrs: &BTreeMap<String, String>| {
        let mut request = client.publish().topic_arn(&topic).message(message);
        for (k, v) in attrs {
            request = request.message_attributes(k, string_attr(v));
        }
        request.send()
    };
    publish(&body, &attrs)
        .await
        .expect("a message at the limit passes");

    let over = format!("{body}a");
    assert_eq!(code(publish(&over, &attrs).await), "InvalidParameter");
    assert_eq!(proxy.rejections(Rule::SnsMessageTooLong), 1);

    let mut eleven = attrs.clone();
    eleven.insert("k10".into(), "v".into());
    assert_eq!(code(publish("m", &eleven).await), "ParameterValueInvalid");
    assert_eq!(proxy.rejections(Rule::SnsTooManyAttributes), 1);

    let empty_value: BTreeMap<String, String> = [("namespace".to_owned(), String::new())].into();
    let err = publish("m", &empty_value).await.unwrap_err();
    assert!(
        err.as_service_error()
            .unwrap()
            .is_invalid_parameter_value_exception(),
        "{err:?}"
    );
    assert_eq!(proxy.rejections(Rule::SnsAttributeEmptyValue), 1);

    for bad_name in ["AWS.kind", "a..b", ".kind", "kind.", "ki nd"] {
        let attrs: BTreeMap<String, String> = [(bad_name.to_owned(), "v".to_owned())].into();
        assert_eq!(
            code(publish("m", &attrs).await),
            "ParameterValueInvalid",
            "{bad_name}"
        );
    }
    assert_eq!(proxy.rejections(Rule::SnsAttributeName), 5);

    let err = client.publish().topic_arn(&topic).message("").send().await;
    assert_eq!(code(err), "InvalidParameter");
    assert_eq!(proxy.rejections(Rule::SnsEmptyMessage), 1);

    // Only the message at the limit reached moto, intact, with its 10 attributes.
    let delivered = queue.drain(1, DRAIN).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].message, body);
    assert_eq!(delivered[0].attributes, attrs);
    assert_eq!(proxy.count("Publish"), 10);
    assert_eq!(proxy.refused(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sns_publish_batch_limits() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let sdk = TestSdk::new(proxy.url()).max_attempts(1);
    let moto_sdk = TestSdk::new(moto.url());
    let (topic, queue) = SqsSubscription::topic_with_raw_queue(&sdk, &moto_sdk, "strict").await;
    let client = sdk.sns();
    let entry = |id: &str, message: &str| {
        PublishBatchRequestEntry::builder()
            .id(id)
            .message(message)
            .message_attributes("kind", string_attr("Pod"))
            .build()
            .unwrap()
    };
    let batch = |entries: Vec<PublishBatchRequestEntry>| {
        client
            .publish_batch()
            .topic_arn(&topic)
            .set_publish_batch_request_entries(Some(entries))
            .send()
    };
    // Ten entries totalling exactly 262,144 bytes, attributes included.
    let per_attr = "kind".len() + "String".len() + "Pod".len();
    let sizes: Vec<usize> = (0..10)
        .map(|i| sns::MAX_BATCH_BYTES / 10 + usize::from(i < sns::MAX_BATCH_BYTES % 10) - per_attr)
        .collect();
    assert_eq!(
        sizes.iter().map(|s| s + per_attr).sum::<usize>(),
        sns::MAX_BATCH_BYTES
    );
    let at_limit: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| entry(&format!("e{i}"), &"x".repeat(n)))
        .collect();
    let answer = batch(at_limit.clone())
        .await
        .expect("a batch at the limit passes");
    assert_eq!(answer.successful().len(), 10);
    assert!(answer.failed().is_empty());

    let mut over = at_limit.clone();
    over[0] = entry("e0", &"x".repeat(sizes[0] + 1));
    assert_eq!(code(batch(over).await), "BatchRequestTooLong");

    let eleven: Vec<_> = (0..11).map(|i| entry(&format!("e{i}"), "m")).collect();
    let err = batch(eleven).await.unwrap_err();
    assert!(
        err.as_service_error()
            .unwrap()
            .is_too_many_entries_in_batch_request_exception(),
        "{err:?}"
    );

    assert_eq!(code(batch(vec![]).await), "EmptyBatchRequest");
    assert_eq!(
        code(batch(vec![entry("same", "a"), entry("same", "b")]).await),
        "BatchEntryIdsNotDistinct"
    );
    assert_eq!(
        code(batch(vec![entry("no:colons", "a")]).await),
        "InvalidBatchEntryId"
    );
    let empty_attr = PublishBatchRequestEntry::builder()
        .id("e")
        .message("m")
        .message_attributes("namespace", string_attr(""))
        .build()
        .unwrap();
    assert_eq!(
        code(batch(vec![entry("ok", "m"), empty_attr]).await),
        "ParameterValueInvalid"
    );

    for rule in [
        Rule::SnsBatchTooLong,
        Rule::SnsBatchTooManyEntries,
        Rule::SnsBatchEmpty,
        Rule::SnsBatchIdsNotDistinct,
        Rule::SnsBatchInvalidId,
        Rule::SnsAttributeEmptyValue,
    ] {
        assert_eq!(proxy.rejections(rule), 1, "{rule}");
    }
    let delivered = queue.drain(10, DRAIN).await;
    let mut lengths: Vec<usize> = delivered.iter().map(|d| d.message.len()).collect();
    lengths.sort_unstable();
    let mut expected = sizes.clone();
    expected.sort_unstable();
    assert_eq!(
        lengths, expected,
        "only the batch at the limit reached moto"
    );
}

/// A log group and stream, created through the proxy.
async fn log_stream(client: &aws_sdk_cloudwatchlogs::Client) -> (String, String) {
    let group = format!("/kubeherald-test/{}", unique_name("g"));
    let stream = unique_name("s");
    client
        .create_log_group()
        .log_group_name(&group)
        .send()
        .await
        .unwrap();
    client
        .create_log_stream()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .send()
        .await
        .unwrap();
    (group, stream)
}

fn event(timestamp: i64, message: &str) -> InputLogEvent {
    InputLogEvent::builder()
        .timestamp(timestamp)
        .message(message)
        .build()
        .unwrap()
}

/// The message of an `InvalidParameterException`, or a panic if the call
/// succeeded or failed otherwise.
fn refused<T: std::fmt::Debug, R: std::fmt::Debug + Send + Sync + 'static>(
    result: Result<T, aws_sdk_cloudwatchlogs::error::SdkError<PutLogEventsError, R>>,
) -> String {
    let err = result.expect_err("AWS should have refused this request");
    let service = err.into_service_error();
    assert!(service.is_invalid_parameter_exception(), "{service:?}");
    service.message().unwrap_or_default().to_owned()
}

async fn stored(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
            .unwrap();
        let events = page.events.unwrap_or_default();
        let empty = events.is_empty();
        out.extend(events.into_iter().map(|e| {
            (
                e.timestamp.unwrap_or_default(),
                e.message.unwrap_or_default(),
            )
        }));
        if empty || page.next_forward_token == token {
            return out;
        }
        token = page.next_forward_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_put_log_events_limits() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let client = TestSdk::new(proxy.url()).max_attempts(1).logs();
    let (group, stream) = log_stream(&client).await;
    let put = |events: Vec<InputLogEvent>| {
        client
            .put_log_events()
            .log_group_name(&group)
            .log_stream_name(&stream)
            .set_log_events(Some(events))
            .send()
    };
    let t = now_ms() - 60_000;

    // At the limits: four events of 262,118 bytes (+26 each) = 1,048,576 bytes,
    // each event exactly 262,144 bytes with its overhead; multibyte characters.
    let big = "é".repeat((logs::MAX_EVENT_BYTES - logs::EVENT_OVERHEAD_BYTES) / 2);
    assert_eq!(
        big.len() + logs::EVENT_OVERHEAD_BYTES,
        logs::MAX_EVENT_BYTES
    );
    let four: Vec<_> = (0..4).map(|i| event(t + i, &big)).collect();
    let answer = put(four.clone())
        .await
        .expect("a batch at the byte limits passes");
    assert!(answer.rejected_log_events_info.is_none(), "{answer:?}");

    let mut five = four.clone();
    five.push(event(t + 4, "x"));
    assert!(refused(put(five).await).starts_with("Upload too large"));
    let too_big = format!("{big}x");
    assert!(refused(put(vec![event(t, &too_big)]).await).starts_with("Log event too large"));

    // 10,000 events pass, 10,001 do not.
    let many: Vec<_> = (0..logs::MAX_BATCH_EVENTS)
        .map(|i| event(t + 10 + i as i64 / 100, "e"))
        .collect();
    put(many.clone()).await.expect("10,000 events pass");
    let mut too_many = many;
    too_many.push(event(t + 200, "e"));
    refused(put(too_many).await);

    assert!(
        refused(put(vec![event(t, "a"), event(t - 1, "b")]).await).contains("chronological order")
    );
    refused(put(vec![event(t, "a"), event(t, "")]).await);
    refused(put(vec![]).await);

    // The span: exactly 24 h passes, a millisecond more does not.
    let (g2, s2) = log_stream(&client).await;
    let put2 = |events: Vec<InputLogEvent>| {
        client
            .put_log_events()
            .log_group_name(&g2)
            .log_stream_name(&s2)
            .set_log_events(Some(events))
            .send()
    };
    let day_ago = now_ms() - logs::MAX_SPAN_MS - 5_000;
    put2(vec![
        event(day_ago, "first"),
        event(day_ago + logs::MAX_SPAN_MS, "last"),
    ])
    .await
    .expect("a 24 h span passes");
    assert!(
        refused(
            put2(vec![
                event(day_ago, "first"),
                event(day_ago + logs::MAX_SPAN_MS + 1, "last")
            ])
            .await
        )
        .contains("24 hours")
    );

    for rule in [
        Rule::LogsBatchTooLarge,
        Rule::LogsEventTooLarge,
        Rule::LogsTooManyEvents,
        Rule::LogsNotChronological,
        Rule::LogsEmptyMessage,
        Rule::LogsNoEvents,
        Rule::LogsSpanOver24Hours,
    ] {
        assert_eq!(proxy.rejections(rule), 1, "{rule}");
    }
    assert_eq!(proxy.refused(), 7);

    // Only the accepted batches reached moto.
    let events = stored(&client, &group, &stream).await;
    assert_eq!(events.len(), 4 + logs::MAX_BATCH_EVENTS);
    assert!(events[..4].iter().all(|(_, m)| *m == big));
    let events = stored(&client, &g2, &s2).await;
    assert_eq!(
        events.iter().map(|(_, m)| m.as_str()).collect::<Vec<_>>(),
        ["first", "last"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_too_old_and_too_new_events_are_dropped_not_refused() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let client = TestSdk::new(proxy.url()).max_attempts(1).logs();
    let (group, stream) = log_stream(&client).await;
    let now = now_ms();
    let too_old = now - logs::MAX_AGE_MS - 60_000;
    let too_new = now + logs::MAX_FUTURE_MS + 60_000;
    let answer = client
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .set_log_events(Some(vec![
            event(too_old, "old-1"),
            event(too_old + 1, "old-2"),
            event(now, "kept-1"),
            event(now + 1, "kept-2"),
            event(too_new, "new-1"),
        ]))
        .send()
        .await
        .expect("too old / too new events do not fail the request");
    let info = answer
        .rejected_log_events_info
        .expect("rejectedLogEventsInfo");
    assert_eq!(
        info.too_old_log_event_end_index,
        Some(2),
        "exclusive end of the too-old events"
    );
    assert_eq!(
        info.too_new_log_event_start_index,
        Some(4),
        "first too-new event"
    );
    assert_eq!(info.expired_log_event_end_index, None);
    assert_eq!(proxy.rejections(Rule::LogsEventTooOld), 2);
    assert_eq!(proxy.rejections(Rule::LogsEventTooNew), 1);
    proxy.assert_nothing_refused();

    let events = stored(&client, &group, &stream).await;
    assert_eq!(
        events,
        [(now, "kept-1".to_owned()), (now + 1, "kept-2".to_owned())]
    );

    // All events out of range: still a success, nothing stored.
    let answer = client
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .log_events(event(too_old, "old"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer
            .rejected_log_events_info
            .unwrap()
            .too_old_log_event_end_index,
        Some(1)
    );
    assert_eq!(stored(&client, &group, &stream).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection() {
    let moto = Moto::shared();
    let proxy = StrictProxy::start(moto.url());
    let once = TestSdk::new(proxy.url()).max_attempts(1);
    let sns = once.sns();
    let topic = sns
        .create_topic()
        .name(unique_name("faults"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let publish =
        |client: &aws_sdk_sns::Client| client.publish().topic_arn(&topic).message("m").send();

    // SNS throttling, as AWS sends it: HTTP 400 `Throttling`.
    proxy.fail_next_for("Publish", 1, Fault::Throttling);
    let err = publish(&sns).await.unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 400);
    assert_eq!(err.code(), Some("Throttling"));
    publish(&sns).await.expect("the fault was used up");

    // 5xx twice, then success: the SDK's retries get through.
    let retrying = TestSdk::new(proxy.url()).max_attempts(3).sns();
    let before = proxy.count("Publish");
    proxy.fail_next_for("Publish", 2, Fault::Status(500));
    publish(&retrying).await.expect("third attempt succeeds");
    assert_eq!(proxy.count("Publish") - before, 3);

    // A fault for another action leaves this one alone.
    proxy.fail_next_for("PutLogEvents", 1, Fault::Throttling);
    publish(&sns).await.expect("Publish is not PutLogEvents");
    let logs = once.logs();
    let (group, stream) = log_stream(&logs).await;
    let err = logs
        .put_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .log_events(event(now_ms(), "m"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ThrottlingException"));

    // A reset connection is a dispatch failure, not a service error.
    proxy.fail_next(1, Fault::Reset);
    let err = publish(&sns).await.unwrap_err();
    assert!(err.as_service_error().is_none(), "{err:?}");

    // Down: connections are refused until it is up again.
    proxy.set_down(true);
    let err = publish(&sns).await.unwrap_err();
    assert!(err.as_service_error().is_none(), "{err:?}");
    proxy.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while publish(&sns).await.is_err() {
        assert!(Instant::now() < deadline, "the proxy did not come back up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Latency.
    proxy.set_latency(Duration::from_millis(300));
    let started = Instant::now();
    publish(&sns).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    proxy.set_latency(Duration::ZERO);

    assert!(proxy.count("CreateTopic") >= 1);
    proxy.assert_nothing_refused();
}
