//! [`Operator`]: one process of controllers, with leader election, the admin server and
//! graceful shutdown.

use std::sync::Arc;

use futures::future::{BoxFuture, join_all};
use kube::Client;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::admin::{AdminError, AdminServer};
use crate::config::OperatorArgs;
use crate::controller::{Controller, Environment};
use crate::health::Health;
use crate::leader::{self, LeaderError, LeaseFence};
use crate::metrics::Metrics;
use crate::rbac::Permissions;
use crate::reconciler::Reconciler;

/// Errors of running an operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The admin server could not start.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// This replica lost leadership and stopped.
    #[error(transparent)]
    Leader(#[from] LeaderError),
}

/// Stops a running [`Operator`] as SIGTERM would.
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    /// Asks the operator to shut down gracefully.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

type Task = Box<dyn FnOnce(Environment) -> BoxFuture<'static, ()> + Send>;

/// An operator process: its controllers, leader election, admin server and shutdown.
pub struct Operator {
    name: String,
    client: Client,
    args: OperatorArgs,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Arc<watch::Sender<bool>>,
    tasks: Vec<Task>,
    permissions: Permissions,
}

impl Operator {
    /// An operator named `name`: its field manager, event reporter and default Lease name.
    pub fn new(name: &str, client: Client, args: OperatorArgs) -> Self {
        Self {
            name: name.to_owned(),
            client,
            args,
            metrics: Arc::default(),
            health: Arc::default(),
            shutdown: Arc::new(watch::channel(false).0),
            tasks: Vec::new(),
            permissions: Permissions::default(),
        }
    }

    /// An operator whose client is built from `config` and counts its requests, reported as
    /// `rest_client_requests_total{method}` on `/metrics`.
    pub fn from_config(
        name: &str,
        config: kube::Config,
        args: OperatorArgs,
    ) -> Result<Self, kube::Error> {
        let (client, counter) = crate::client::counted_client(config)?;
        let operator = Self::new(name, client, args);
        operator.metrics.count_requests(counter);
        Ok(operator)
    }

    /// Adds a controller.
    pub fn with_controller<R: Reconciler>(mut self, controller: Controller<R>) -> Self {
        self.permissions.merge(controller.permissions());
        self.tasks.push(Box::new(move |environment| {
            controller.into_task(environment)
        }));
        self
    }

    /// What the operator's controllers need to be allowed, without leader election's Lease
    /// (see [`crate::rbac`]).
    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    /// The operator's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The operator's health, as `/readyz` reports it.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// A handle that shuts the operator down gracefully, for embedding and tests.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Runs until SIGTERM, SIGINT or [`ShutdownHandle::shutdown`], or until leadership is lost.
    pub async fn run(self) -> Result<(), OperatorError> {
        let Self {
            name,
            client,
            args,
            metrics,
            health,
            shutdown,
            tasks,
            permissions: _,
        } = self;
        let admin = AdminServer::bind(args.admin_address, metrics.clone(), health.clone()).await?;
        if let Some(address) = admin.local_address() {
            info!(%address, "admin server listening");
        }
        tokio::spawn(admin.serve(shutdown.subscribe()));
        tokio::spawn(shutdown_on_signal(shutdown.clone()));

        let leader_config = args.leader_election_config(&name);
        let (leading, leading_receiver) = watch::channel(leader_config.is_none());
        let fence = if leader_config.is_some() {
            LeaseFence::elected()
        } else {
            LeaseFence::unbounded()
        };
        let leader_task = leader_config.map(|config| {
            let lease = config.lease_name.clone();
            let metrics = metrics.clone();
            let mut observed = leading_receiver.clone();
            tokio::spawn(async move {
                loop {
                    metrics.set_leader(&lease, *observed.borrow_and_update());
                    if observed.changed().await.is_err() {
                        return;
                    }
                }
            });
            let (client, stop, fence) = (client.clone(), shutdown.clone(), fence.clone());
            tokio::spawn(async move {
                let result = leader::run(client, config, leading, fence, stop.subscribe()).await;
                if let Err(error) = &result {
                    error!(%error, "stopping: leadership lost");
                    stop.send_replace(true);
                }
                result
            })
        });

        let controller_count = tasks.len();
        let health_ready = Arc::new(watch::channel(0_usize).0);
        let mut ready_count = health_ready.subscribe();
        let ready_health = health.clone();
        let (primaries_listed, primaries_listed_receiver) = watch::channel(false);
        tokio::spawn(async move {
            if ready_count
                .wait_for(|count| *count >= controller_count)
                .await
                .is_ok()
            {
                ready_health.set_ready();
                primaries_listed.send_replace(true);
            }
        });
        // Every controller registers its watches before any is polled (the tasks are built
        // here, all at once), so a shared watch has all its followers before its first event.
        let watches = Arc::new(crate::cache::SharedWatches::default());
        let controllers = join_all(tasks.into_iter().map(|task| {
            task(Environment {
                client: client.clone(),
                args: args.clone(),
                operator_name: name.clone(),
                metrics: metrics.clone(),
                health: health.clone(),
                health_ready: health_ready.clone(),
                primaries_listed: primaries_listed_receiver.clone(),
                leading: leading_receiver.clone(),
                fence: fence.clone(),
                shutdown: shutdown.subscribe(),
                watches: watches.clone(),
            })
        }));
        // Once shutdown starts, running reconciles get the grace period to finish.
        let mut stopping = shutdown.subscribe();
        let grace = args.shutdown_grace();
        tokio::select! {
            _ = controllers => info!("controllers stopped"),
            _ = async {
                let _ = stopping.wait_for(|stop| *stop).await;
                tokio::time::sleep(grace).await;
            } => warn!(?grace, "shutdown grace period over; abandoning running reconciles"),
        }
        shutdown.send_replace(true);
        if let Some(task) = leader_task {
            match task.await {
                Ok(Err(error)) => return Err(error.into()),
                Ok(Ok(())) => {}
                Err(join_error) => warn!(%join_error, "leader election task failed"),
            }
        }
        Ok(())
    }
}

async fn shutdown_on_signal(shutdown: Arc<watch::Sender<bool>>) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => info!("received SIGINT; shutting down"),
        _ = terminate => info!("received SIGTERM; shutting down"),
    }
    shutdown.send_replace(true);
}
