//! `kubeherald check` (SPEC §6): everything `run` needs, verified before it
//! runs. For each context: the API server is reached with its credentials,
//! each kind resolves to a namespaced kind, and a SelfSubjectAccessReview
//! (what `kubectl auth can-i` asks) says kubeherald may `list` and `watch`
//! it — and, with pod logs, `get`/`list`/`watch` pods and `get` pods/log —
//! in the context's namespace. For AWS: the identity (STS
//! GetCallerIdentity), every SNS topic (GetTopicAttributes) and every log
//! route's groups (DescribeLogGroups), each as its route reaches it: in its
//! region, as its role (STS AssumeRole). Each finding says how to fix a failure; for
//! RBAC, the exact `rules:` entry to add.
//!
//! May import `config`, `contexts`, `kube_api`, `publish::aws`. Only `main`
//! imports it.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{AwsAccess, Config, DEFAULT_LOG_ROUTE, GroupNaming, LogSink};
use crate::contexts::{ClusterTarget, Surroundings};
use crate::kube_api::{self, error_chain};
use crate::publish::aws::error::{AwsFailure, ServiceCodes, classify};
use crate::publish::aws::{AwsOptions, load_sdk_config, sdk_config_for};

/// How long each request of the check may take.
const TIMEOUT: Duration = Duration::from_secs(15);

/// One verified thing.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The context, or `aws`, or `config`.
    pub scope: String,
    /// What was checked, e.g. `list,watch v1/ConfigMap`.
    pub check: String,
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// How to fix a failure.
    pub fix: Option<String>,
}

impl Finding {
    fn pass(scope: &str, check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            scope: scope.to_owned(),
            check: check.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(
        scope: &str,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            scope: scope.to_owned(),
            check: check.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs every check of `config`.
pub async fn run(config: &Config, surroundings: &Surroundings) -> Vec<Finding> {
    let mut findings = Vec::new();
    let targets = match crate::app::resolve_targets(config, surroundings).await {
        Ok(targets) => targets,
        Err(err) => {
            findings.push(Finding::fail(
                "config",
                "contexts",
                error_chain(&err),
                "fix the kubeconfig or the `contexts`/`cluster` settings",
            ));
            return findings;
        }
    };
    for target in &targets {
        check_context(config, target, &mut findings).await;
    }
    check_aws(config, &mut findings).await;
    findings
}

async fn check_context(config: &Config, target: &ClusterTarget, findings: &mut Vec<Finding>) {
    let scope = target.context.as_str();
    let client = match kube_api::connect(&target.client_config, TIMEOUT).await {
        Ok(client) => client,
        Err(err) => {
            findings.push(Finding::fail(
                scope,
                "credentials",
                error_chain(&err),
                "check the context's user in the kubeconfig (token, certificate or exec plugin)",
            ));
            return;
        }
    };
    match tokio::time::timeout(TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(version)) => findings.push(Finding::pass(
            scope,
            "reachable",
            format!("{} (Kubernetes {})", target.server_url, version.git_version),
        )),
        Ok(Err(err)) => {
            findings.push(Finding::fail(
                scope,
                "reachable",
                kube_api::credentials::describe_kube(&err),
                format!(
                    "make {} reachable from kubeherald, and its credentials valid",
                    target.server_url
                ),
            ));
            return;
        }
        Err(_) => {
            findings.push(Finding::fail(
                scope,
                "reachable",
                format!("no answer from {} within {TIMEOUT:?}", target.server_url),
                "check the server URL and the network path to it",
            ));
            return;
        }
    }
    for kind in config.resources.iter().map(|resource| &resource.kind) {
        let check = format!("list,watch {kind}");
        let resource = match kube_api::resolve(&client, kind, &target.namespace, TIMEOUT).await {
            Ok(resource) => resource,
            Err(err) => {
                findings.push(Finding::fail(
                    scope,
                    check,
                    error_chain(&err),
                    "install the kind's CRD, or remove the kind from `resources` (only namespaced kinds are watched)",
                ));
                continue;
            }
        };
        let plural = resource
            .path
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let group = kind.group().to_owned();
        let rule = Rule {
            group: &group,
            resource: &plural,
            subresource: None,
            verbs: &["list", "watch"],
        };
        rbac(&client, target, findings, &check, rule).await;
    }
    if config.logs.is_some() {
        let pods = Rule {
            group: "",
            resource: "pods",
            subresource: None,
            verbs: &["get", "list", "watch"],
        };
        rbac(&client, target, findings, "get,list,watch pods", pods).await;
        let logs = Rule {
            group: "",
            resource: "pods",
            subresource: Some("log"),
            verbs: &["get"],
        };
        rbac(&client, target, findings, "get pods/log", logs).await;
    }
}

/// What an RBAC rule grants: the verbs on a resource of an API group.
#[derive(Clone, Copy)]
struct Rule<'a> {
    group: &'a str,
    resource: &'a str,
    subresource: Option<&'a str>,
    verbs: &'a [&'a str],
}

/// Asks a SelfSubjectAccessReview for each verb of `rule`; one finding for
/// them all.
async fn rbac(
    client: &kube::Client,
    target: &ClusterTarget,
    findings: &mut Vec<Finding>,
    check: &str,
    rule: Rule<'_>,
) {
    let Rule {
        group,
        resource,
        subresource,
        verbs,
    } = rule;
    let scope = target.context.as_str();
    let mut denied = Vec::new();
    for verb in verbs {
        match can_i(
            client,
            &target.namespace,
            verb,
            group,
            resource,
            subresource,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) => denied.push(*verb),
            Err(why) => {
                findings.push(Finding::fail(
                    scope,
                    check,
                    format!("cannot ask the API server: {why}"),
                    "allow kubeherald's user to create selfsubjectaccessreviews (every authenticated user may, by default)",
                ));
                return;
            }
        }
    }
    let full = match subresource {
        Some(sub) => format!("{resource}/{sub}"),
        None => resource.to_owned(),
    };
    if denied.is_empty() {
        findings.push(Finding::pass(
            scope,
            check,
            format!("allowed in namespace {}", target.namespace),
        ));
    } else {
        findings.push(Finding::fail(
            scope,
            check,
            format!(
                "{} {full} denied in namespace {}",
                denied.join(","),
                target.namespace
            ),
            format!(
                "add to the Role bound to kubeherald in namespace {}: rules: [{{apiGroups: [\"{group}\"], resources: [\"{full}\"], verbs: [{}]}}]",
                target.namespace,
                verbs.iter().map(|v| format!("\"{v}\"")).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
}

/// Whether the API server says the context's user may `verb` the resource
/// in `namespace` (authorization.k8s.io/v1 SelfSubjectAccessReview).
async fn can_i(
    client: &kube::Client,
    namespace: &str,
    verb: &str,
    group: &str,
    resource: &str,
    subresource: Option<&str>,
) -> Result<bool, String> {
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "namespace": namespace, "verb": verb, "group": group,
            "resource": resource, "subresource": subresource.unwrap_or(""),
        }},
    });
    let request = http::Request::post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(review.to_string().into_bytes())
        .map_err(|e| e.to_string())?;
    let answer: Value = tokio::time::timeout(TIMEOUT, client.request(request))
        .await
        .map_err(|_| format!("no answer within {TIMEOUT:?}"))?
        .map_err(|e| kube_api::credentials::describe_kube(&e))?;
    answer["status"]["allowed"]
        .as_bool()
        .ok_or_else(|| "the review has no status.allowed".to_owned())
}

async fn check_aws(config: &Config, findings: &mut Vec<Finding>) {
    let cloudwatch = config
        .logs
        .as_ref()
        .filter(|logs| logs.sink == LogSink::CloudWatch);
    if config.sns.is_none() && cloudwatch.is_none() {
        return;
    }
    let region = config.aws_region.clone().unwrap_or_default();
    let sdk = load_sdk_config(&region, &AwsOptions::default()).await;
    match aws_sdk_sts::Client::new(&sdk).get_caller_identity().send().await {
        Ok(identity) => findings.push(Finding::pass(
            "aws",
            "identity",
            format!(
                "{} (account {})",
                identity.arn().unwrap_or("?"),
                identity.account().unwrap_or("?")
            ),
        )),
        Err(err) => findings.push(Finding::fail(
            "aws",
            "identity",
            classify(err, &ServiceCodes::NONE).to_string(),
            "give kubeherald AWS credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a role (IRSA) for its service account",
        )),
    }
    // The default topic and every route's, each as the route publishes:
    // in its region, as its role.
    let own = AwsAccess::default();
    let topics = config.sns.iter().flat_map(|sns| {
        std::iter::once((&sns.topic_arn, &own)).chain(
            sns.routes
                .iter()
                .map(|route| (&route.topic_arn, &route.access)),
        )
    });
    for (topic, access) in topics {
        let topic = topic.as_str();
        let route_sdk = sdk_config_for(&sdk, access).await;
        match aws_sdk_sns::Client::new(&route_sdk)
            .get_topic_attributes()
            .topic_arn(topic)
            .send()
            .await
        {
            Ok(_) => findings.push(Finding::pass("aws", "SNS topic", topic)),
            Err(err) => findings.push(Finding::fail(
                "aws",
                "SNS topic",
                format!("{topic}: {}", classify(err, &ServiceCodes::NONE)),
                match access.role_arn.as_deref() {
                    Some(role) => format!(
                        "{role} must trust kubeherald's principal (with the route's external_id) and allow sns:GetTopicAttributes and sns:Publish on the topic"
                    ),
                    None => "create the topic, or grant sns:GetTopicAttributes and sns:Publish on it (template.yaml)".to_owned(),
                },
            )),
        }
    }
    if let Some(logs) = cloudwatch {
        for route in logs.destinations() {
            let (pattern, name) = match &route.naming {
                GroupNaming::Prefix(prefix) => (format!("/{prefix}-"), format!("/{prefix}-*")),
                GroupNaming::Fixed(group) => (group.clone(), group.clone()),
            };
            let check = if route.name == DEFAULT_LOG_ROUTE {
                "CloudWatch Logs".to_owned()
            } else {
                format!("CloudWatch Logs (route {})", route.name)
            };
            let route_sdk = sdk_config_for(&sdk, &route.access).await;
            let client = aws_sdk_cloudwatchlogs::Client::new(&route_sdk);
            // A fixed group is asked for its streams, which the tenant's
            // role may read (template-tenant.yaml); a prefix is listed.
            let answer = match &route.naming {
                GroupNaming::Fixed(group) => client
                    .describe_log_streams()
                    .log_group_name(group)
                    .limit(1)
                    .send()
                    .await
                    .map(|_| format!("{name}: exists"))
                    .or_else(|err| match classify(err, &ServiceCodes::NONE) {
                        AwsFailure::Refused { code, .. } if code == "ResourceNotFoundException" => {
                            Ok(format!("{name}: created on first use"))
                        }
                        other => Err(other),
                    }),
                GroupNaming::Prefix(_) => client
                    .describe_log_groups()
                    .log_group_name_prefix(&pattern)
                    .send()
                    .await
                    .map(|answer| {
                        format!(
                            "{name}: {} groups exist, others are created on first use",
                            answer.log_groups().len()
                        )
                    })
                    .map_err(|err| classify(err, &ServiceCodes::NONE)),
            };
            match answer {
                Ok(detail) => findings.push(Finding::pass("aws", check, detail)),
                Err(failure) => findings.push(Finding::fail(
                    "aws",
                    check,
                    format!("{name}: {failure}"),
                    match &route.access.role_arn {
                        Some(role) => format!(
                            "{role} must trust kubeherald's principal (with the route's external_id) and allow the CloudWatch Logs actions on {name} (template-tenant.yaml)"
                        ),
                        None => format!(
                            "grant the CloudWatch Logs actions on arn:aws:logs:*:*:log-group:{name} (template.yaml)"
                        ),
                    },
                )),
            }
        }
    }
}

/// The findings as a table: scope, check, result, detail or fix.
pub fn table(findings: &[Finding]) -> String {
    let width = |f: fn(&Finding) -> &str| findings.iter().map(|x| f(x).len()).max().unwrap_or(0);
    let scope_w = width(|f| &f.scope).max(7);
    let check_w = width(|f| &f.check).max(5);
    let mut out = format!(
        "{:<scope_w$}  {:<check_w$}  RESULT  DETAIL / FIX\n",
        "CONTEXT", "CHECK"
    );
    for finding in findings {
        let (result, text) = if finding.ok {
            ("ok", finding.detail.clone())
        } else {
            (
                "FAIL",
                format!(
                    "{}\n{:w$}fix: {}",
                    finding.detail,
                    "",
                    finding.fix.as_deref().unwrap_or(""),
                    w = scope_w + check_w + 12
                ),
            )
        };
        out.push_str(&format!(
            "{:<scope_w$}  {:<check_w$}  {result:<6}  {text}\n",
            finding.scope, finding.check
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_the_fix_of_a_failure() {
        let findings = [
            Finding::pass("prod", "reachable", "https://api (Kubernetes v1.33.0)"),
            Finding::fail("prod", "list,watch v1/Pod", "list denied", "add a rule"),
        ];
        let text = table(&findings);
        assert!(text.starts_with("CONTEXT"));
        assert!(text.contains("ok      https://api"), "{text}");
        assert!(text.contains("FAIL    list denied"), "{text}");
        assert!(text.contains("fix: add a rule"), "{text}");
    }
}
