//! Reading CloudWatch Logs back, for assertions.

/// Every event of `stream` in `group`, oldest first, as (timestamp ms,
/// message), following the forward token to the end; empty while the group
/// or stream does not exist yet.
pub async fn stored_events(
    logs: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let Ok(page) = logs
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .set_next_token(token.clone())
            .send()
            .await
        else {
            return out; // not created yet
        };
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

/// The messages of [`stored_events`].
pub async fn stored_messages(
    logs: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    stream: &str,
) -> Vec<String> {
    stored_events(logs, group, stream)
        .await
        .into_iter()
        .map(|(_, message)| message)
        .collect()
}
