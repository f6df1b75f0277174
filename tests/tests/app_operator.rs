//! app-operator on the local cluster: the adam-doc example reaches Ready, an image change
//! rolls out through Progressing, scaling, expose (Ingress, or a Route once the cluster serves
//! Routes), autoscaling, drift, deletion, and invalid specs rejected at admission.

use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use app_operator::v1beta1::{App, Route};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use operator_kit::conditions::{PROGRESSING, READY, is_true};
use operator_kit::testing::{self, RunningOperator, TestNamespace};
use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(90);
const ADAM_DOC: &str = include_str!("../../examples/adam-doc.yaml");

/// Installing the Route CRD changes the cluster for every App; tests that expose an App hold
/// this lock so that none sees the other's cluster.
static EXPOSE_LOCK: LazyLock<tokio::sync::Mutex<()>> =
    LazyLock::new(|| tokio::sync::Mutex::new(()));

async fn start(namespace: &TestNamespace) -> Result<RunningOperator> {
    let controller = app_operator::app_controller();
    Ok(namespace
        .start_operator(
            app_operator::OPERATOR_NAME,
            &app_operator::crds(),
            |operator| operator.with_controller(controller),
        )
        .await?)
}

async fn wait_ready(namespace: &TestNamespace, name: &str) -> Result<App> {
    let apps = namespace.api::<App>();
    let generation = apps.get(name).await?.metadata.generation;
    Ok(namespace
        .wait_for(&apps, name, "Ready", TIMEOUT, move |app: &App| {
            app.status.as_ref().is_some_and(|status| {
                status.observed_generation == generation && is_true(&status.conditions, READY)
            })
        })
        .await?)
}

async fn patch_spec(namespace: &TestNamespace, name: &str, spec: Value) -> Result<()> {
    let patch = json!({ "spec": spec });
    namespace
        .api::<App>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

#[tokio::test]
async fn adam_doc_becomes_ready_exposed_and_rolls_out_through_progressing() -> Result<()> {
    let _expose = EXPOSE_LOCK.lock().await;
    let namespace = TestNamespace::create("app-adam-doc").await?;
    let operator = start(&namespace).await?;
    let app: App = serde_yaml_from(ADAM_DOC)?;
    namespace
        .api::<App>()
        .create(&PostParams::default(), &app)
        .await?;
    let ready = wait_ready(&namespace, "adam-doc").await?;
    let status = ready.status.context("no status")?;
    ensure!(status.ready_replicas == 2, "{status:?}");
    ensure!(
        status.url.as_deref() == Some("http://adam-doc.apps.example.com/"),
        "{status:?}"
    );
    let ingress = namespace.api::<Ingress>().get("adam-doc").await?;
    let rule = &ingress
        .spec
        .context("ingress spec")?
        .rules
        .context("rules")?[0];
    ensure!(rule.host.as_deref() == Some("adam-doc.apps.example.com"));

    // Watch the App through the rollout: Progressing must be seen before Ready returns.
    let apps = namespace.api::<App>();
    let config = watcher::Config::default().fields("metadata.name=adam-doc");
    let mut updates = watcher(apps.clone(), config).applied_objects().boxed();
    patch_spec(
        &namespace,
        "adam-doc",
        json!({ "image": "registry.example.com/adam/adam-doc:1.1" }),
    )
    .await?;
    let mut saw_progressing = false;
    let generation = apps.get("adam-doc").await?.metadata.generation;
    tokio::time::timeout(TIMEOUT, async {
        while let Some(app) = updates.try_next().await? {
            let Some(status) = app.status.as_ref() else {
                continue;
            };
            if status.observed_generation != generation {
                continue;
            }
            saw_progressing |= is_true(&status.conditions, PROGRESSING);
            if is_true(&status.conditions, READY) {
                break;
            }
        }
        anyhow::Ok(())
    })
    .await
    .context("the rollout did not finish")??;
    ensure!(
        saw_progressing,
        "the App never reported Progressing during the rollout"
    );
    let deployment = namespace.api::<Deployment>().get("adam-doc").await?;
    let image = deployment
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|pod| pod.containers[0].image.clone());
    ensure!(image.as_deref() == Some("registry.example.com/adam/adam-doc:1.1"));

    // On a cluster that serves Routes the same App gets a Route, as `oc expose` would, and
    // no Ingress.
    let route_crd = Route::crd();
    testing::install_crd(namespace.client(), &route_crd, TIMEOUT).await?;
    let result = async {
        patch_spec(
            &namespace,
            "adam-doc",
            json!({ "expose": { "path": "/docs" } }),
        )
        .await?;
        let routes = namespace.api::<Route>();
        let route = namespace
            .wait_for(&routes, "adam-doc", "created", TIMEOUT, |route: &Route| {
                route.spec.path.as_deref() == Some("/docs")
            })
            .await?;
        ensure!(
            route.spec.to.name == "adam-doc"
                && route.spec.host.as_deref() == Some("adam-doc.apps.example.com")
        );
        namespace
            .wait_for_deletion(&namespace.api::<Ingress>(), "adam-doc", TIMEOUT)
            .await?;
        anyhow::Ok(())
    }
    .await;
    let crds = Api::<CustomResourceDefinition>::all(namespace.client().clone());
    crds.delete(
        &route_crd.metadata.name.clone().context("crd name")?,
        &DeleteParams::default(),
    )
    .await?;
    namespace
        .wait_for_deletion(&crds, "routes.route.openshift.io", TIMEOUT)
        .await?;
    result?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn scale_expose_autoscale_drift_and_delete() -> Result<()> {
    let _expose = EXPOSE_LOCK.lock().await;
    let namespace = TestNamespace::create("app-lifecycle").await?;
    let operator = start(&namespace).await?;
    let app: App = serde_json::from_value(json!({
        "apiVersion": "app.operator-kit.io/v1beta1", "kind": "App",
        "metadata": { "name": "web" },
        "spec": { "image": "nginx:1.27", "port": 8080 },
    }))?;
    namespace
        .api::<App>()
        .create(&PostParams::default(), &app)
        .await?;
    let status = wait_ready(&namespace, "web")
        .await?
        .status
        .context("status")?;
    ensure!(
        status.url.as_deref() == Some(&*format!("http://web.{}.svc:8080", namespace.name())),
        "{status:?}"
    );
    ensure!(
        namespace.api::<Ingress>().get_opt("web").await?.is_none(),
        "an Ingress without expose"
    );

    patch_spec(&namespace, "web", json!({ "replicas": 3 })).await?;
    ensure!(
        wait_ready(&namespace, "web")
            .await?
            .status
            .context("status")?
            .ready_replicas
            == 3
    );

    let ingresses = namespace.api::<Ingress>();
    patch_spec(
        &namespace,
        "web",
        json!({ "expose": { "host": "web.example.com" } }),
    )
    .await?;
    namespace
        .wait_for(&ingresses, "web", "created", TIMEOUT, |_: &Ingress| true)
        .await?;
    patch_spec(&namespace, "web", json!({ "expose": null })).await?;
    namespace
        .wait_for_deletion(&ingresses, "web", TIMEOUT)
        .await?;

    let autoscalers = namespace.api::<HorizontalPodAutoscaler>();
    patch_spec(
        &namespace,
        "web",
        json!({ "autoscaling": { "minReplicas": 2, "maxReplicas": 4 } }),
    )
    .await?;
    let autoscaler = namespace
        .wait_for(
            &autoscalers,
            "web",
            "created",
            TIMEOUT,
            |_: &HorizontalPodAutoscaler| true,
        )
        .await?;
    ensure!(autoscaler.spec.max_replicas == 4);
    patch_spec(&namespace, "web", json!({ "autoscaling": null })).await?;
    namespace
        .wait_for_deletion(&autoscalers, "web", TIMEOUT)
        .await?;

    // Drift: an image edited by hand is put back.
    let deployments = namespace.api::<Deployment>();
    let edit = json!({ "spec": { "template": { "spec": { "containers": [{ "name": "app", "image": "evil:1" }] } } } });
    deployments
        .patch("web", &PatchParams::default(), &Patch::Strategic(&edit))
        .await?;
    namespace
        .wait_for(
            &deployments,
            "web",
            "restored to nginx:1.27",
            TIMEOUT,
            |deployment: &Deployment| {
                deployment
                    .spec
                    .template
                    .spec
                    .as_ref()
                    .and_then(|pod| pod.containers[0].image.as_deref())
                    == Some("nginx:1.27")
            },
        )
        .await?;

    namespace
        .api::<App>()
        .delete("web", &DeleteParams::default())
        .await?;
    namespace
        .wait_for_deletion(&deployments, "web", TIMEOUT)
        .await?;
    namespace
        .wait_for_deletion(
            &namespace.api::<k8s_openapi::api::core::v1::Service>(),
            "web",
            TIMEOUT,
        )
        .await?;
    operator.stop().await?;
    namespace.delete().await?;
    Ok(())
}

#[tokio::test]
async fn invalid_specs_are_rejected_with_the_field_named() -> Result<()> {
    let namespace = TestNamespace::create("app-invalid").await?;
    for crd in app_operator::crds() {
        testing::install_crd(namespace.client(), &crd, TIMEOUT).await?;
    }
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        namespace.client().clone(),
        namespace.name(),
        &kube::api::ApiResource::erase::<App>(&()),
    );
    let cases: [(&str, Value, &str); 9] = [
        (
            "port zero",
            json!({ "image": "a", "port": 0 }),
            "port must be between 1 and 65535",
        ),
        (
            "port too big",
            json!({ "image": "a", "port": 65536 }),
            "port must be between 1 and 65535",
        ),
        (
            "empty image",
            json!({ "image": "", "port": 80 }),
            "image must be a non-empty",
        ),
        (
            "bad host",
            json!({ "image": "a", "port": 80, "expose": { "host": "Bad_Host!" } }),
            "expose.host must be a lowercase DNS name",
        ),
        (
            "relative path",
            json!({ "image": "a", "port": 80, "expose": { "host": "a.b", "path": "docs" } }),
            "expose.path must start with /",
        ),
        (
            "min above max",
            json!({ "image": "a", "port": 80, "autoscaling": { "minReplicas": 5, "maxReplicas": 2 } }),
            "minReplicas must not exceed",
        ),
        (
            "negative replicas",
            json!({ "image": "a", "port": 80, "replicas": -1 }),
            "replicas must not be negative",
        ),
        (
            "cpu request",
            json!({ "image": "a", "port": 80, "resources": { "requests": { "cpu": "lots" } } }),
            "requests and limits must be quantities",
        ),
        (
            "memory limit",
            json!({ "image": "a", "port": 80, "resources": { "limits": { "memory": "12 Mi" } } }),
            "requests and limits must be quantities",
        ),
    ];
    let mut failures = Vec::new();
    for (case, spec, message) in cases {
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "app.operator-kit.io/v1beta1", "kind": "App",
            "metadata": { "name": format!("invalid-{}", case.replace(' ', "-")) },
            "spec": spec,
        }))?;
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => failures.push(format!("{case}: accepted")),
            Err(kube::Error::Api(status))
                if status.code == 422 && status.message.contains(message) => {}
            Err(error) => failures.push(format!(
                "{case}: expected a 422 with {message:?}, got {error}"
            )),
        }
    }
    for (case, name) in [("dot in name", "docs.v2"), ("leading digit", "4000-docs")] {
        let object: kube::api::DynamicObject = serde_json::from_value(json!({
            "apiVersion": "app.operator-kit.io/v1beta1", "kind": "App",
            "metadata": { "name": name }, "spec": { "image": "a", "port": 80 },
        }))?;
        match api.create(&PostParams::default(), &object).await {
            Err(kube::Error::Api(status))
                if status.code == 422
                    && status
                        .message
                        .contains("metadata.name must start with a lowercase letter") => {}
            other => failures.push(format!("{case}: {other:?}")),
        }
    }
    // Quantities as numbers and as strings are both accepted.
    let valid: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "app.operator-kit.io/v1beta1", "kind": "App",
        "metadata": { "name": "valid-quantities" },
        "spec": { "image": "a", "port": 80, "resources": {
            "requests": { "cpu": 2, "memory": "128Mi" }, "limits": { "cpu": "2500m" },
        } },
    }))?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    if let Err(error) = api.create(&dry_run, &valid).await {
        failures.push(format!("valid quantities refused: {error}"));
    }
    ensure!(
        failures.is_empty(),
        "invalid Apps not rejected as they should be:\n{}",
        failures.join("\n")
    );
    namespace.delete().await?;
    Ok(())
}

fn serde_yaml_from(text: &str) -> Result<App> {
    Ok(serde_yaml::from_str(text)?)
}
