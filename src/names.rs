//! CloudWatch Logs names: the log forwarder's naming (seed 000), made safe
//! for CloudWatch's rules.
//!
//! - Log group `/{prefix}-{cluster}`. CreateLogGroup, `logGroupName`: 1-512
//!   characters of `[\.\-_/#A-Za-z0-9]`.
//! - Log stream `{namespace}/{pod}/{container}/{restart_count}`.
//!   CreateLogStream, `logStreamName`: 1-512 characters, no `:` and no `*`.
//!
//! A character CloudWatch refuses is replaced by `_`, so a context named after
//! an EKS ARN (`arn:aws:eks:eu-west-1:123456789012:cluster/prod`) still gets a
//! readable group (`/p-arn_aws_eks_eu-west-1_123456789012_cluster/prod`).
//!
//! Imports nothing of kubeherald; `record`, `logs` and the CloudWatch sink use it.

/// CloudWatch's longest log group and log stream name, in characters.
pub const MAX_NAME_LEN: usize = 512;

/// Whether CloudWatch accepts `c` in a log group name.
pub fn is_log_group_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#')
}

/// Replaces every character a log group name may not hold.
pub fn sanitize_for_log_group(name: &str) -> String {
    name.chars()
        .map(|c| if is_log_group_char(c) { c } else { '_' })
        .collect()
}

/// The log group of a cluster: `/{prefix}-{cluster}`, sanitised and cut to
/// CloudWatch's 512 characters.
pub fn log_group_name(prefix: &str, cluster: &str) -> String {
    let mut name = sanitize_for_log_group(&format!("/{prefix}-{cluster}"));
    name.truncate(MAX_NAME_LEN); // all ASCII after sanitising: bytes are characters
    name
}

/// The log stream of one container instance:
/// `{namespace}/{pod}/{container}/{restart_count}`, without `:` or `*`, cut
/// to 512 characters from the front so the distinguishing tail (container
/// and restart count) survives.
pub fn log_stream_name(namespace: &str, pod: &str, container: &str, restart_count: u32) -> String {
    let name: String = format!("{namespace}/{pod}/{container}/{restart_count}")
        .chars()
        .map(|c| if matches!(c, ':' | '*') { '_' } else { c })
        .collect();
    let excess = name.chars().count().saturating_sub(MAX_NAME_LEN);
    name.chars().skip(excess).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_group_follows_the_seed_pattern() {
        assert_eq!(
            log_group_name("myapp-prod", "mpp-prod"),
            "/myapp-prod-mpp-prod"
        );
    }

    #[test]
    fn log_group_replaces_characters_cloudwatch_refuses() {
        assert_eq!(
            log_group_name("p", "arn:aws:eks:eu-west-1:123456789012:cluster/prod"),
            "/p-arn_aws_eks_eu-west-1_123456789012_cluster/prod"
        );
        assert_eq!(log_group_name("p", "kind@ctx é"), "/p-kind_ctx__");
        let name = log_group_name("p", "admin@cluster.example.com:6443");
        assert!(name.chars().all(is_log_group_char), "{name}");
    }

    #[test]
    fn log_group_is_cut_to_512_characters() {
        let name = log_group_name("p", &"x".repeat(1000));
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(name.starts_with("/p-x"));
    }

    #[test]
    fn log_stream_follows_the_seed_pattern() {
        assert_eq!(
            log_stream_name("team-a", "web-7d8c", "nginx", 3),
            "team-a/web-7d8c/nginx/3"
        );
    }

    #[test]
    fn log_stream_has_no_colon_or_star_and_keeps_its_tail() {
        assert_eq!(log_stream_name("ns", "p:1", "c*", 0), "ns/p_1/c_/0");
        let long = log_stream_name("ns", &"p".repeat(600), "c", 12);
        assert_eq!(long.chars().count(), MAX_NAME_LEN);
        assert!(long.ends_with("/c/12"), "{long}");
    }
}
