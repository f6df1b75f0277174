//! Runtime configuration shared by every operator: flags with environment equivalents, and
//! logging.
//!
//! Flatten [`OperatorArgs`] into an operator's own `clap` parser; each flag also reads an
//! environment variable (in brackets in `--help`), which is how a Helm chart sets them.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;

use crate::leader::LeaderElectionConfig;

/// The format of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, for log collectors.
    Json,
    /// Human-readable lines.
    Text,
}

/// Flags every operator built with operator-kit accepts.
#[derive(Clone, Debug, Args)]
pub struct OperatorArgs {
    /// Namespace to watch; all namespaces when unset.
    #[arg(long, env = "WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,

    /// Maximum number of objects reconciled at once, per controller.
    #[arg(long, env = "OPERATOR_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Elect a leader among replicas through a Lease; only the leader reconciles.
    #[arg(long, env = "OPERATOR_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,

    /// Name of the leader election Lease (default: the operator's name).
    #[arg(long, env = "OPERATOR_LEASE_NAME")]
    pub lease_name: Option<String>,

    /// Namespace of the leader election Lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's identity in the Lease (default: the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// Seconds a Lease stays valid after its last renewal.
    #[arg(long, env = "OPERATOR_LEASE_DURATION_SECONDS", default_value_t = 15.0)]
    pub lease_duration_seconds: f64,

    /// Seconds the leader keeps trying to renew before it gives up leadership.
    #[arg(long, env = "OPERATOR_RENEW_DEADLINE_SECONDS", default_value_t = 10.0)]
    pub renew_deadline_seconds: f64,

    /// Seconds between renewals, and between attempts to acquire.
    #[arg(long, env = "OPERATOR_RETRY_PERIOD_SECONDS", default_value_t = 2.0)]
    pub retry_period_seconds: f64,

    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`).
    #[arg(long, env = "OPERATOR_ADMIN_ADDRESS", default_value = "127.0.0.1:8080")]
    pub admin_address: SocketAddr,

    /// Log format.
    #[arg(long, env = "OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter: a level (`info`, `debug`) or `tracing` directives (`info,kube=debug`).
    #[arg(long, env = "OPERATOR_LOG_LEVEL", default_value = "info", value_parser = log_filter)]
    pub log_level: String,

    /// How long a shutdown waits for running reconciles to finish.
    #[arg(long, env = "OPERATOR_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
}

impl OperatorArgs {
    /// Defaults for use in code (tests, examples): all namespaces, no leader election, an admin
    /// server on a free loopback port.
    pub fn for_tests() -> Self {
        Self {
            watch_namespace: None,
            concurrency: 4,
            leader_election: false,
            lease_name: None,
            lease_namespace: None,
            identity: None,
            lease_duration_seconds: 15.0,
            renew_deadline_seconds: 10.0,
            retry_period_seconds: 2.0,
            admin_address: SocketAddr::from(([127, 0, 0, 1], 0)),
            log_format: LogFormat::Text,
            log_level: "info".to_owned(),
            shutdown_grace_seconds: 30,
        }
    }

    /// The shutdown grace period.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// The leader election settings for an operator of the given name, if election is on.
    pub fn leader_election_config(&self, operator_name: &str) -> Option<LeaderElectionConfig> {
        if !self.leader_election {
            return None;
        }
        let identity = self.identity.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
            format!("{host}-{}", std::process::id())
        });
        let seconds = |value: f64| Duration::try_from_secs_f64(value).unwrap_or_default();
        Some(LeaderElectionConfig {
            lease_duration: seconds(self.lease_duration_seconds),
            renew_deadline: seconds(self.renew_deadline_seconds),
            retry_period: seconds(self.retry_period_seconds),
            ..LeaderElectionConfig::new(
                self.lease_name.as_deref().unwrap_or(operator_name),
                self.lease_namespace.as_deref().unwrap_or("default"),
                &identity,
            )
        })
    }

    /// Installs the global `tracing` subscriber in the chosen format and level. Call once, at
    /// the start of `main`; a second call does nothing.
    pub fn init_logging(&self) {
        // The command line refuses a filter that does not parse (see `log_filter`); one set
        // in code falls back to `info`.
        let filter = EnvFilter::try_new(&self.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
        let colour = use_colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        );
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour)
            .with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Json => builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .try_init(),
            LogFormat::Text => builder.try_init(),
        };
    }
}

/// Whether text logs get ANSI colours: only on a terminal (a log file or a pipe would be full
/// of escape sequences), and never when `NO_COLOR` is set to anything but the empty string.
fn use_colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|value| value.is_empty())
}

/// Checks `--log-level` when it is parsed: a filter that does not parse is refused with the
/// reason, instead of silently becoming `info`.
fn log_filter(text: &str) -> Result<String, String> {
    EnvFilter::try_new(text)
        .map(|_| text.to_owned())
        .map_err(|error| format!("not a log level or filter: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn logs_are_coloured_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("".into())));
        assert!(!use_colour(true, Some("1".into())));
        assert!(!use_colour(false, None));
    }

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        operator: OperatorArgs,
    }

    #[test]
    fn defaults_and_flags_parse() {
        let command = Command::try_parse_from(["operator"]).unwrap();
        assert_eq!(command.operator.concurrency, 4);
        assert!(!command.operator.leader_election);
        assert!(command.operator.leader_election_config("x").is_none());
        let command = Command::try_parse_from([
            "operator",
            "--watch-namespace=team-a",
            "--concurrency=8",
            "--leader-election",
            "--lease-namespace=ops",
            "--identity=pod-1",
            "--log-format=json",
        ])
        .unwrap();
        let operator = command.operator;
        assert_eq!(operator.watch_namespace.as_deref(), Some("team-a"));
        assert_eq!(operator.log_format, LogFormat::Json);
        let lease = operator.leader_election_config("redis-operator").unwrap();
        assert_eq!(
            (lease.lease_name.as_str(), lease.lease_namespace.as_str()),
            ("redis-operator", "ops")
        );
        assert_eq!(lease.identity, "pod-1");
        assert_eq!(lease.lease_duration, Duration::from_secs(15));
        assert!(Command::try_parse_from(["operator", "--concurrency=0"]).is_err());
    }

    #[test]
    fn a_log_level_that_does_not_parse_is_refused_with_the_reason() {
        for good in ["debug", "info,kube=debug", "warn"] {
            let command = Command::try_parse_from(["operator", "--log-level", good]).unwrap();
            assert_eq!(command.operator.log_level, good);
        }
        let Err(error) = Command::try_parse_from(["operator", "--log-level", "loud=="]) else {
            panic!("an invalid log level was accepted");
        };
        let message = error.to_string();
        assert!(
            message.contains("--log-level") && message.contains("not a log level"),
            "{message}"
        );
    }
}
