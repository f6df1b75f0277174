//! The passwords of the pods of both Redis kinds, and their rotation without a restart.
//!
//! Two ACL users on every Redis (and Sentinel):
//! - `default`, the clients' user, with the password of the Secret the spec names;
//! - [`OPERATOR_USER`], with a password the operator generates once and never changes. The
//!   operator, the pods' scripts and probes, replication (`masteruser`) and the sentinels
//!   (`auth-user`, `sentinel-user`) use it, so a new client password locks none of them out.
//!
//! The pods do not read the spec's Secret: they start from the operator's Secret
//! `<name>-operator-credentials` ([`PodPasswords`]), which moves only once every node accepts
//! what it says. When the spec's Secret changes, a rotation runs in two steps, each taken on
//! every Redis and Sentinel before the operator's Secret moves on ([`step`]):
//! 1. the new password is added next to the old one (`ACL SETUSER default >new`); then the
//!    operator's Secret says `password: new, previous-password: old`, so a pod restarting now
//!    accepts both, like the others;
//! 2. once `spec.passwordRotation.oldPasswordGraceSeconds` have passed (for clients to move
//!    to the new password), the old one is removed (`ACL SETUSER default resetpass >new`);
//!    then the operator's Secret forgets it.
//!
//! Between rotations every node is kept at exactly the current password: a password added by
//! hand, or the old one on a pod that restarted while step 2 was being recorded, is removed.

use std::collections::BTreeSet;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::access::{Resolver, connect};
use crate::resp::{Connection, Credentials, OPERATOR_USER, RespError};

/// The key of the clients' current password in the operator's Secret.
pub const PASSWORD_KEY: &str = "password";
/// The key of the clients' previous password, present while a rotation removes it.
pub const PREVIOUS_PASSWORD_KEY: &str = "previous-password";
/// The key of [`OPERATOR_USER`]'s password.
pub const OPERATOR_PASSWORD_KEY: &str = "operator-password";

/// What the operator's Secret holds: the passwords the pods start with. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct PodPasswords {
    /// [`OPERATOR_USER`]'s password.
    pub operator: String,
    /// The clients' password.
    pub current: String,
    /// The clients' previous password, while a rotation removes it.
    pub previous: Option<String>,
}

impl std::fmt::Debug for PodPasswords {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PodPasswords")
            .field("previous", &self.previous.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl PodPasswords {
    /// The passwords of a set that starts now with the clients' `password`: a fresh operator
    /// password from the system's random source.
    pub fn generate(password: &str) -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)?;
        Ok(Self {
            operator: bytes.iter().map(|byte| format!("{byte:02x}")).collect(),
            current: password.to_owned(),
            previous: None,
        })
    }

    /// How the operator authenticates: as its own user, else (a node from before it had
    /// that user) with the clients' passwords it knows, `also` last.
    pub fn credentials(&self, also: Option<&str>) -> Credentials {
        let mut passwords = vec![self.current.clone()];
        passwords.extend(self.previous.clone());
        passwords.extend(also.map(str::to_owned));
        Credentials {
            operator: Some(self.operator.clone()),
            passwords,
        }
    }

    /// The passwords in a Secret the operator wrote, if it holds them.
    pub fn from_secret(secret: &Secret) -> Option<Self> {
        let data = secret.data.as_ref()?;
        let text = |key: &str| {
            data.get(key)
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
        };
        Some(Self {
            operator: text(OPERATOR_PASSWORD_KEY)?,
            current: text(PASSWORD_KEY)?,
            previous: text(PREVIOUS_PASSWORD_KEY),
        })
    }

    /// The operator's Secret `name` holding these passwords (owner and labels are the
    /// caller's).
    pub fn to_secret(&self, name: &str, metadata: ObjectMeta) -> Secret {
        let mut data = std::collections::BTreeMap::new();
        let mut put = |key: &str, value: &str| {
            data.insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
        };
        put(OPERATOR_PASSWORD_KEY, &self.operator);
        put(PASSWORD_KEY, &self.current);
        if let Some(previous) = &self.previous {
            put(PREVIOUS_PASSWORD_KEY, previous);
        }
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                ..metadata
            },
            data: Some(data),
            type_: Some("Opaque".to_owned()),
            ..Secret::default()
        }
    }
}

/// What a rotation does next, from what the pods hold and what the spec's Secret wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing is rotating: every node accepts exactly the current password.
    Steady,
    /// Every node must accept the new password next to the current one; then the pods'
    /// passwords become `next`.
    AddNew {
        /// What the operator's Secret holds once every node accepts both.
        next: PodPasswords,
    },
    /// Every node keeps accepting both passwords until the old one's grace is over.
    Overlap,
    /// Every node must forget the previous password; then the pods' passwords become `next`.
    RemoveOld {
        /// What the operator's Secret holds once no node accepts the previous one.
        next: PodPasswords,
    },
}

impl Step {
    /// The status phase while this step runs.
    pub fn phase(&self) -> &'static str {
        match self {
            Self::Steady => "Done",
            Self::AddNew { .. } => "AddingNewPassword",
            Self::Overlap => "NewPasswordAccepted",
            Self::RemoveOld { .. } => "RemovingOldPassword",
        }
    }

    /// The clients' passwords every node must accept during this step.
    pub fn accepted<'a>(&'a self, pods: &'a PodPasswords) -> Vec<&'a str> {
        match self {
            Self::Steady | Self::RemoveOld { .. } => vec![pods.current.as_str()],
            Self::AddNew { next } => vec![pods.current.as_str(), next.current.as_str()],
            Self::Overlap => [Some(pods.current.as_str()), pods.previous.as_deref()]
                .into_iter()
                .flatten()
                .collect(),
        }
    }
}

/// The next step from the pods' passwords and the `wanted` one, when the old password's grace
/// is over (`old_password_due`) or not: pure. A rotation under way is finished before the
/// next one starts (the Secret changed again meanwhile), so no node ever has to accept more
/// than two passwords.
pub fn step(pods: &PodPasswords, wanted: &str, old_password_due: bool) -> Step {
    if pods.previous.is_some() {
        if !old_password_due {
            return Step::Overlap;
        }
        return Step::RemoveOld {
            next: PodPasswords {
                previous: None,
                ..pods.clone()
            },
        };
    }
    if pods.current != wanted {
        return Step::AddNew {
            next: PodPasswords {
                operator: pods.operator.clone(),
                current: wanted.to_owned(),
                previous: Some(pods.current.clone()),
            },
        };
    }
    Step::Steady
}

/// A Redis or a Sentinel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// `redis-server`.
    Redis,
    /// `redis-sentinel`.
    Sentinel,
}

/// One process the passwords are kept on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its pod's name, for reports.
    pub pod: String,
    /// Where it is announced.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// What it is.
    pub process: Process,
}

/// What one pass of [`converge`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Converged {
    /// Processes that were changed, as `<pod> redis|sentinel: <what>`.
    pub changed: Vec<String>,
    /// Processes that could not be brought to the step, as `<pod> redis|sentinel: <why>`.
    pub failed: Vec<String>,
    /// How many of `failed` did not answer at all (not running, or out of reach), as opposed
    /// to refusing.
    pub unreachable: usize,
}

impl Converged {
    /// Whether every process of every node now has what the step needs.
    pub fn complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// Whether every process that answered has what the step needs.
    pub fn complete_where_reachable(&self) -> bool {
        self.failed.len() == self.unreachable
    }
}

/// The hex SHA-256 of a password, as `ACL GETUSER` lists it.
fn acl_hash(password: &str) -> String {
    Sha256::digest(password.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The password hashes `ACL GETUSER default` lists.
async fn default_user_hashes(connection: &mut Connection) -> Result<BTreeSet<String>, RespError> {
    let reply = connection.command(&["ACL", "GETUSER", "default"]).await?;
    let fields = reply.items();
    Ok(fields
        .chunks_exact(2)
        .find(|pair| pair[0].text().as_deref() == Some("passwords"))
        .map(|pair| {
            pair[1]
                .items()
                .iter()
                .filter_map(|hash| hash.text())
                .collect()
        })
        .unwrap_or_default())
}

/// Brings one process to the step: the operator's user, used by replication and the
/// sentinels, and exactly the step's passwords on the default user. Returns what it changed.
async fn converge_process(
    connection: &mut Connection,
    process: Process,
    pods: &PodPasswords,
    accepted: &[&str],
    master_set: &str,
) -> Result<Vec<&'static str>, RespError> {
    let mut changed = Vec::new();
    let whoami = connection.command(&["ACL", "WHOAMI"]).await?.text();
    if whoami.as_deref() != Some(OPERATOR_USER) {
        // A process started before the operator had its own user (an upgrade): give it the
        // user first, then let replication and the sentinels use it, so that the pods of the
        // new template find it on the old ones. Or one whose user has a password the operator
        // no longer knows (its Secret was deleted and made anew): the new password is added,
        // never put in the place of the old one, which the pod's probes and scripts still use
        // until it restarts.
        let password = format!(">{}", pods.operator);
        connection
            .command(&[
                "ACL",
                "SETUSER",
                OPERATOR_USER,
                "on",
                &password,
                "~*",
                "&*",
                "+@all",
            ])
            .await?;
        match process {
            Process::Redis => {
                connection
                    .command(&[
                        "CONFIG",
                        "SET",
                        "masteruser",
                        OPERATOR_USER,
                        "masterauth",
                        &pods.operator,
                    ])
                    .await?;
            }
            Process::Sentinel => {
                for (option, value) in [
                    ("sentinel-user", OPERATOR_USER),
                    ("sentinel-pass", pods.operator.as_str()),
                ] {
                    connection
                        .command(&["SENTINEL", "CONFIG", "SET", option, value])
                        .await?;
                }
                // Only a sentinel that monitors the set has its auth to change.
                if connection
                    .command(&["SENTINEL", "MASTER", master_set])
                    .await
                    .is_ok()
                {
                    connection
                        .command(&[
                            "SENTINEL",
                            "SET",
                            master_set,
                            "auth-user",
                            OPERATOR_USER,
                            "auth-pass",
                            &pods.operator,
                        ])
                        .await?;
                }
            }
        }
        changed.push("added the operator's user");
    }
    let wanted: BTreeSet<String> = accepted.iter().map(|password| acl_hash(password)).collect();
    if default_user_hashes(connection).await? != wanted {
        // One command, applied at once: the user never has fewer passwords than both sets
        // share. Clients already authenticated stay connected.
        let mut args = vec![
            "ACL".to_owned(),
            "SETUSER".to_owned(),
            "default".to_owned(),
            "on".to_owned(),
            "resetpass".to_owned(),
        ];
        args.extend(accepted.iter().map(|password| format!(">{password}")));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        connection.command(&args).await?;
        changed.push("set the clients' passwords");
    }
    Ok(changed)
}

/// Brings every process of `targets` to `step`, concurrently, each on what it reports just
/// before it is changed. Never touches data or replication roles. `master_set` is the
/// sentinels' name of the master, if there are sentinels.
pub async fn converge(
    targets: &[Target],
    resolver: &dyn Resolver,
    pods: &PodPasswords,
    step: &Step,
    master_set: &str,
) -> Converged {
    let accepted = step.accepted(pods);
    let also = match step {
        Step::AddNew { next } => Some(next.current.as_str()),
        _ => None,
    };
    let credentials = pods.credentials(also);
    let results = futures::future::join_all(targets.iter().map(|target| {
        let (credentials, accepted) = (&credentials, &accepted);
        async move {
            let mut connection = connect(resolver, &target.host, target.port, credentials).await?;
            converge_process(&mut connection, target.process, pods, accepted, master_set).await
        }
    }))
    .await;
    let mut converged = Converged::default();
    for (target, result) in targets.iter().zip(results) {
        let name = match target.process {
            Process::Redis => "redis",
            Process::Sentinel => "sentinel",
        };
        match result {
            Ok(changes) => converged.changed.extend(
                changes
                    .into_iter()
                    .map(|change| format!("{} {name}: {change}", target.pod)),
            ),
            Err(error) => {
                if matches!(error, RespError::Io(_) | RespError::Timeout) {
                    converged.unreachable += 1;
                }
                converged
                    .failed
                    .push(format!("{} {name}: {error}", target.pod));
            }
        }
    }
    converged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(current: &str, previous: Option<&str>) -> PodPasswords {
        PodPasswords {
            operator: "operator".to_owned(),
            current: current.to_owned(),
            previous: previous.map(str::to_owned),
        }
    }

    #[test]
    fn a_rotation_adds_the_new_password_then_removes_the_old_one() {
        assert_eq!(step(&pods("old", None), "old", true), Step::Steady);
        let add = step(&pods("old", None), "new", false);
        assert_eq!(
            add,
            Step::AddNew {
                next: pods("new", Some("old"))
            }
        );
        assert_eq!(add.accepted(&pods("old", None)), ["old", "new"]);
        assert_eq!(add.phase(), "AddingNewPassword");
        // Recorded: pods restarting now accept both, until the grace is over.
        let overlap = step(&pods("new", Some("old")), "new", false);
        assert_eq!(overlap, Step::Overlap);
        assert_eq!(overlap.accepted(&pods("new", Some("old"))), ["new", "old"]);
        // Then the old one goes.
        let remove = step(&pods("new", Some("old")), "new", true);
        assert_eq!(
            remove,
            Step::RemoveOld {
                next: pods("new", None)
            }
        );
        assert_eq!(remove.accepted(&pods("new", Some("old"))), ["new"]);
        // A third password while the second rotation is recorded: the old one goes first, so
        // no node ever needs three.
        assert_eq!(
            step(&pods("new", Some("old")), "newer", true),
            Step::RemoveOld {
                next: pods("new", None)
            }
        );
        assert_eq!(
            step(&pods("new", None), "newer", true),
            Step::AddNew {
                next: pods("newer", Some("new"))
            }
        );
    }

    #[test]
    fn the_secret_round_trips_and_nothing_is_printed() {
        let generated = PodPasswords::generate("client secret").unwrap();
        assert_eq!(generated.operator.len(), 48);
        assert_ne!(
            generated.operator,
            PodPasswords::generate("client secret").unwrap().operator
        );
        let rotating = PodPasswords {
            previous: Some("older secret".to_owned()),
            ..generated
        };
        let secret = rotating.to_secret("cache-operator-credentials", ObjectMeta::default());
        assert_eq!(PodPasswords::from_secret(&secret), Some(rotating.clone()));
        assert!(!format!("{rotating:?}").contains("secret"));
        let credentials = rotating.credentials(Some("newer secret"));
        assert_eq!(
            credentials.passwords,
            ["client secret", "older secret", "newer secret"]
        );
        assert_eq!(credentials.operator, Some(rotating.operator));
    }

    #[test]
    fn acl_hashes_are_sha256_hex() {
        // `ACL GETUSER` lists "hunter2" as this hash.
        assert_eq!(
            acl_hash("hunter2"),
            "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"
        );
    }
}
