//! Credential failures, said without the secrets they carry (SPEC §6, §7).
//!
//! kube-rs's error for a failing exec credential plugin prints the plugin's
//! command line with its environment (values included), its arguments and
//! its whole output (SPEC §11): `aws eks get-token` with keys in `env`, a
//! token on stdout. Such an error is never displayed: [`describe`] turns it
//! into a sentence that names what failed and how (an exit status, an I/O
//! error kind, a token file's path), which is all a log line, a status or a
//! Sentry event may hold. Every kube error that reaches a log line passes
//! through [`describe_kube`] first.

use kube::client::AuthError;

/// A safe description of a credential failure.
pub fn describe(err: &AuthError) -> String {
    match err {
        AuthError::AuthExecStart(io) => format!(
            "the exec credential plugin cannot be started ({})",
            io.kind()
        ),
        AuthError::AuthExecRun { out, .. } => format!(
            "the exec credential plugin failed ({}); its environment, arguments and output are not shown",
            out.status
        ),
        AuthError::AuthExecParse(_) => {
            "the exec credential plugin's output is not an ExecCredential".to_owned()
        }
        AuthError::AuthExecSerialize(_) => {
            "the exec credential plugin's input cannot be written".to_owned()
        }
        AuthError::ExecPluginFailed | AuthError::AuthExec(_) => {
            "the exec credential plugin gave no usable credential".to_owned()
        }
        AuthError::MissingCommand => {
            "the kubeconfig's exec credential plugin names no command".to_owned()
        }
        AuthError::ExecMissingClusterInfo => {
            "the exec credential plugin asks for cluster info (provideClusterInfo) the kubeconfig lacks"
                .to_owned()
        }
        AuthError::ReadTokenFile(io, path) => format!(
            "the token file {} cannot be read ({})",
            path.display(),
            io.kind()
        ),
        AuthError::MalformedTokenExpirationDate(_) => {
            "the credential's expiration date is malformed".to_owned()
        }
        AuthError::InvalidBearerToken(_) | AuthError::InvalidBasicAuth(_) => {
            "the kubeconfig's credential is not a valid header value".to_owned()
        }
        AuthError::UnrefreshableTokenResponse => {
            "a token refresh gave a token that cannot be refreshed".to_owned()
        }
        _ => "the credential provider failed".to_owned(),
    }
}

/// A safe description of any kube error: credential failures through
/// [`describe`], everything else as kube prints it (hosts, files and HTTP
/// errors, never credentials).
pub fn describe_kube(err: &kube::Error) -> String {
    match err {
        kube::Error::Auth(auth) => describe(auth),
        other => crate::kube_api::error_chain(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_plugin_is_described_without_its_command_line_or_output() {
        use std::os::unix::process::ExitStatusExt;
        let err = AuthError::AuthExecRun {
            cmd: "KH_SECRET=\"hunter2\" aws eks get-token --password hunter3".into(),
            out: Box::new(std::process::Output {
                status: std::process::ExitStatus::from_raw(256),
                stdout: b"token hunter4".to_vec(),
                stderr: b"hunter5".to_vec(),
            }),
        };
        assert!(err.to_string().contains("hunter2"), "kube's own text leaks");
        let said = describe(&err);
        for secret in ["hunter2", "hunter3", "hunter4", "hunter5"] {
            assert!(!said.contains(secret), "{said}");
        }
        assert!(said.contains("exit status: 1"), "{said}");
        let said = describe_kube(&kube::Error::Auth(err));
        assert!(!said.contains("hunter"), "{said}");
    }
}
