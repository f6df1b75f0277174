//! Tests that go through command-line tools, the way a user installs and runs an operator:
//! Helm charts installed into the test cluster, kubeconfigs holding a ServiceAccount's token
//! (`kubectl create token`), and operator binaries run out of cluster with them.
//!
//! `helm` and `kubectl` are taken from `PATH` (the repository's `hack/cluster.sh env` puts the
//! cluster's own builds there) and always get the test cluster's kubeconfig.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use super::{HarnessError, TestNamespace, local_cluster_kubeconfig};

/// Makes the API server enforce the restricted Pod Security Standard in `namespace`, so a pod
/// that is not compliant (root, privilege escalation, capabilities, no seccomp) is refused.
pub async fn enforce_restricted_pod_security(
    namespace: &TestNamespace,
) -> Result<(), HarnessError> {
    let patch = serde_json::json!({ "metadata": { "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    } } });
    Api::<Namespace>::all(namespace.client().clone())
        .patch(
            namespace.name(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map(drop)
        .map_err(|source| HarnessError::Api {
            action: format!("label namespace {:?} restricted", namespace.name()),
            source,
        })
}

/// Whether a request was refused by authorization (HTTP 403), as RBAC denies it.
pub fn is_forbidden<T>(result: &kube::Result<T>) -> bool {
    matches!(result, Err(kube::Error::Api(status)) if status.code == 403)
}

/// The kubeconfig file of the test cluster: `KUBECONFIG` (its first entry), else the local
/// cluster's.
pub fn kubeconfig_path() -> Result<PathBuf, HarnessError> {
    if let Some(value) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&value).next()
    {
        return Ok(first);
    }
    local_cluster_kubeconfig().ok_or_else(|| HarnessError::Tool {
        command: "kubeconfig lookup".to_owned(),
        detail: "set KUBECONFIG or run `hack/cluster.sh up`".to_owned(),
    })
}

/// Runs `program args…` against the test cluster, feeding `stdin` when given, and returns its
/// standard output; a non-zero exit is an error that carries its standard error.
pub fn run(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, HarnessError> {
    let command_line = format!("{program} {}", args.join(" "));
    let failed = |detail: String| HarnessError::Tool {
        command: command_line.clone(),
        detail,
    };
    let mut child = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path()?)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(format!("failed to start (is it on PATH?): {error}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(input)
            .map_err(|error| failed(format!("failed to write its input: {error}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|error| failed(format!("failed to wait for it: {error}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(failed(format!(
            "{}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

/// A Helm release in the test cluster, uninstalled when dropped (so that its cluster-scoped
/// objects, which no namespace deletion removes, do not outlive the test).
#[derive(Debug)]
pub struct HelmRelease {
    name: String,
    namespace: String,
}

impl HelmRelease {
    /// `helm install --wait` of the chart in directory `chart` as release `name` in
    /// `namespace`, with `--set key=value` for each of `values`.
    pub fn install(
        chart: &Path,
        name: &str,
        namespace: &str,
        values: &[(&str, &str)],
    ) -> Result<Self, HarnessError> {
        let chart = chart.to_string_lossy();
        let sets: Vec<String> = values
            .iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        let mut args = vec![
            "install",
            name,
            &chart,
            "--namespace",
            namespace,
            "--wait",
            "--timeout",
            "120s",
        ];
        for set in &sets {
            args.extend(["--set", set]);
        }
        run("helm", &args, None)?;
        Ok(Self {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })
    }

    /// The release's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The manifest Helm installed (`helm get manifest`).
    pub fn manifest(&self) -> Result<String, HarnessError> {
        run(
            "helm",
            &[
                "get",
                "manifest",
                &self.name,
                "--namespace",
                &self.namespace,
            ],
            None,
        )
    }
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        let _ = run(
            "helm",
            &["uninstall", &self.name, "--namespace", &self.namespace],
            None,
        );
    }
}

/// A kubeconfig file that holds a token, readable by its owner only and removed when dropped,
/// so that a test leaves no credentials behind in the temporary directory. It reads as the
/// file's [`Path`].
#[derive(Debug)]
pub struct KubeconfigFile(PathBuf);

impl std::ops::Deref for KubeconfigFile {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for KubeconfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Writes a kubeconfig for the test cluster whose only user is ServiceAccount `account` of
/// `namespace`, with a one-hour token from `kubectl create token`, and returns the file (removed
/// when dropped: keep it while a process started with it may still read it) and a client that
/// uses it. Whatever that client or a binary given the file can do, the ServiceAccount's RBAC
/// allows.
pub async fn service_account_kubeconfig(
    namespace: &str,
    account: &str,
) -> Result<(KubeconfigFile, Client), HarnessError> {
    let token = run(
        "kubectl",
        &[
            "create",
            "token",
            account,
            "--namespace",
            namespace,
            "--duration",
            "1h",
        ],
        None,
    )?;
    let admin_path = kubeconfig_path()?;
    let kubeconfig_error = |source| HarnessError::Kubeconfig {
        path: admin_path.clone(),
        source,
    };
    let admin = Kubeconfig::read_from(&admin_path).map_err(kubeconfig_error)?;
    let cluster_name = admin
        .current_context
        .as_ref()
        .and_then(|current| admin.contexts.iter().find(|named| &named.name == current))
        .and_then(|named| named.context.as_ref())
        .map(|context| context.cluster.clone());
    let cluster = admin
        .clusters
        .iter()
        .find(|named| Some(&named.name) == cluster_name.as_ref())
        .or(admin.clusters.first())
        .ok_or_else(|| HarnessError::Tool {
            command: format!("read {admin_path:?}"),
            detail: "the kubeconfig names no cluster".to_owned(),
        })?;
    let user = format!("system:serviceaccount:{namespace}:{account}");
    let document = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{ "name": user, "user": { "token": token.trim() } }],
        "contexts": [{ "name": user, "context": { "cluster": cluster.name, "user": user } }],
        "current-context": user,
    });
    let file = KubeconfigFile(
        std::env::temp_dir().join(format!("operator-kit-{namespace}-{account}.kubeconfig")),
    );
    let path: &Path = &file;
    let write_error = |error: String| HarnessError::Tool {
        command: format!("write {path:?}"),
        detail: error,
    };
    let text = serde_yaml::to_string(&document).map_err(|error| write_error(error.to_string()))?;
    write_private(path, &text).map_err(|error| write_error(error.to_string()))?;
    let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_error)?;
    let client = Client::try_from(config).map_err(HarnessError::Client)?;
    Ok((file, client))
}

/// Writes a file only its owner can read: it holds a bearer token.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// An operator binary running out of cluster (or any long-running command against the test
/// cluster, such as `kubectl port-forward`), killed when dropped. Its output goes to a log
/// file, shown by [`OperatorProcess::log`] when a test fails.
#[derive(Debug)]
pub struct OperatorProcess {
    child: Child,
    log: PathBuf,
}

impl OperatorProcess {
    /// Starts `binary args…` with `KUBECONFIG=kubeconfig`.
    pub fn spawn(binary: &Path, kubeconfig: &Path, args: &[&str]) -> Result<Self, HarnessError> {
        let stem = binary
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = std::env::temp_dir().join(format!(
            "operator-kit-{stem}-{}.log",
            super::unique_name("process")
        ));
        let failed = |detail: String| HarnessError::Tool {
            command: format!("{} {}", binary.display(), args.join(" ")),
            detail,
        };
        let output = File::create(&log).map_err(|error| failed(error.to_string()))?;
        let errors = output
            .try_clone()
            .map_err(|error| failed(error.to_string()))?;
        let child = Command::new(binary)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|error| failed(error.to_string()))?;
        Ok(Self { child, log })
    }

    /// What the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails when the process has exited (with its log), so a wait can stop early.
    pub fn check_running(&mut self) -> Result<(), HarnessError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(HarnessError::Operator(format!(
                "exited with {status}:\n{}",
                self.log()
            ))),
            Err(error) => Err(HarnessError::Operator(error.to_string())),
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
