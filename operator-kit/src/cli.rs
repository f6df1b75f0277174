//! The `main` every operator binary shares: [`run_main`], [`run_main_with`] and their command
//! line ([`OperatorCommand`]).

use kube::Client;

use crate::config::OperatorArgs;
use crate::operator::{Operator, OperatorError};

/// The command line every operator binary shares: `--print-crds` and [`OperatorArgs`].
#[derive(Clone, Debug, clap::Parser)]
pub struct OperatorCommand {
    /// Print the CustomResourceDefinitions and exit.
    #[arg(long)]
    pub print_crds: bool,
    /// Print the RBAC the operator needs (a ClusterRole, and a Role for leader election's
    /// Lease) and exit.
    #[arg(long)]
    pub print_rbac: bool,
    /// The runtime flags.
    #[command(flatten)]
    pub operator: OperatorArgs,
}

/// Where the client of `--print-rbac` would connect; it never does.
const OFFLINE_URL: &str = "https://127.0.0.1:9";

/// Errors of [`run_main`].
#[derive(Debug, thiserror::Error)]
pub enum MainError {
    /// The CRDs could not be rendered.
    #[error(transparent)]
    Crd(#[from] crate::crd::CrdError),
    /// The RBAC could not be rendered.
    #[error(transparent)]
    Rbac(#[from] crate::rbac::RbacError),
    /// No cluster configuration was found (kubeconfig or in-cluster).
    #[error("failed to load the cluster configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// The client could not be built.
    #[error("failed to create a client: {0}")]
    Client(#[from] kube::Error),
    /// The operator stopped with an error.
    #[error(transparent)]
    Operator(#[from] OperatorError),
}

/// The whole `main` of an operator binary: parses [`OperatorCommand`] from the process
/// arguments; with `--print-crds` prints `crds` as YAML, otherwise sets up logging, connects to
/// the cluster of the kubeconfig (or the pod's service account) and runs the controllers that
/// `controllers` adds until shutdown. `name` is the operator's one name: its command name in
/// `--help`, its field manager, event reporter, `managed-by` label and default Lease name.
pub async fn run_main(
    name: &'static str,
    crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
    controllers: impl FnOnce(Operator) -> Operator,
) -> Result<(), MainError> {
    run_main_with(name, crds, |operator, NoFlags {}| controllers(operator)).await
}

/// No flags of the operator's own, for [`run_main`].
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct NoFlags {}

/// [`run_main`] with flags of the operator's own: `A`'s flags (a `#[derive(clap::Args)]`
/// struct) are parsed next to [`OperatorArgs`] and shown by `--help`, and `controllers` gets
/// them.
///
/// ```no_run
/// # use operator_kit::{Operator, run_main_with};
/// /// Flags of this operator.
/// #[derive(clap::Args)]
/// struct Flags {
///     /// The image of the pods it makes.
///     #[arg(long, env = "GREETING_IMAGE", default_value = "nginx:1.27")]
///     image: String,
/// }
///
/// # async fn example() -> Result<(), operator_kit::MainError> {
/// run_main_with("greeting-operator", &[], |operator: Operator, flags: Flags| {
///     // Controller::new("greeting", GreetingReconciler { image: flags.image }) …
///     # let _ = flags.image;
///     operator
/// })
/// .await
/// # }
/// ```
pub async fn run_main_with<A: clap::Args>(
    name: &'static str,
    crds: &[k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition],
    controllers: impl FnOnce(Operator, A) -> Operator,
) -> Result<(), MainError> {
    let (command, flags) =
        parse_command::<A>(name, std::env::args_os()).unwrap_or_else(|error| error.exit());
    if command.print_crds {
        print!("{}", crate::crd::to_yaml(crds)?);
        return Ok(());
    }
    if command.print_rbac {
        // The controllers are only asked what they need: the client never connects.
        let offline = Client::try_from(kube::Config::new(http::Uri::from_static(OFFLINE_URL)))?;
        let operator = controllers(Operator::new(name, offline, command.operator), flags);
        print!("{}", crate::rbac::to_yaml(name, operator.permissions())?);
        return Ok(());
    }
    command.operator.init_logging();
    let config = kube::Config::infer().await?;
    controllers(
        Operator::from_config(name, config, command.operator)?,
        flags,
    )
    .run()
    .await?;
    Ok(())
}

/// Parses the command line of [`run_main_with`]: [`OperatorCommand`] and the operator's own
/// flags `A`, under the command name `name`.
fn parse_command<A: clap::Args>(
    name: &'static str,
    arguments: impl IntoIterator<Item = std::ffi::OsString>,
) -> Result<(OperatorCommand, A), clap::Error> {
    use clap::{CommandFactory, FromArgMatches};
    let command = A::augment_args(OperatorCommand::command())
        .name(name)
        .about(format!(
            "{name}: a Kubernetes operator built with operator-kit"
        ));
    let matches = command.try_get_matches_from(arguments)?;
    Ok((
        OperatorCommand::from_arg_matches(&matches)?,
        A::from_arg_matches(&matches)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Args)]
    struct Flags {
        /// An operator's own flag.
        #[arg(long, default_value = "nginx:1.27")]
        image: String,
    }

    #[test]
    fn an_operators_own_flags_parse_next_to_the_runtime_flags() {
        let arguments = |list: &[&str]| {
            list.iter()
                .map(std::ffi::OsString::from)
                .collect::<Vec<_>>()
        };
        let (command, flags) = parse_command::<Flags>(
            "greeting-operator",
            arguments(&["greeting-operator", "--image=httpd:2", "--concurrency=2"]),
        )
        .unwrap();
        assert_eq!(flags.image, "httpd:2");
        assert_eq!(command.operator.concurrency, 2);
        let (command, flags) = parse_command::<Flags>(
            "greeting-operator",
            arguments(&["greeting-operator", "--print-crds"]),
        )
        .unwrap();
        assert!(command.print_crds);
        assert_eq!(flags.image, "nginx:1.27");
        let help = parse_command::<Flags>(
            "greeting-operator",
            arguments(&["greeting-operator", "--help"]),
        )
        .err()
        .map(|error| error.to_string())
        .unwrap_or_default();
        assert!(
            help.contains("--image")
                && help.contains("--leader-election")
                && help.contains("greeting-operator"),
            "{help}"
        );
        assert!(parse_command::<NoFlags>("x", arguments(&["x", "--image=a"])).is_err());
    }
}
