//! The pod watch: this node's pods, a reflector store of them, and the controller that
//! hands each pod to [`super::worker::reconcile`].
//!
//! Layers, each kube-runtime's own: a `watcher` on `spec.nodeName=<node>` (it re-lists
//! and re-watches by itself when the API server goes away, with backoff) → a `reflector`
//! store (the current pods, shared with adoption's sweep and the kubelet API) → the
//! controller's scheduler, which runs at most one reconcile per pod at a time and at most
//! `max-concurrent-reconciles` in all, and requeues what a reconcile asks for.

use std::sync::Arc;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Api, Client};

use super::KubeSettings;
use super::provider::Plugins;
use super::worker::{self, Context, HostportTable};
use crate::config::NodeConfig;

/// The field selector of this node's pods.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// A pod controller, built but not yet running; its store can be handed out first.
pub struct PodController {
    controller: Controller<Pod>,
    context: Arc<Context>,
}

impl std::fmt::Debug for PodController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodController")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl PodController {
    pub fn new(
        client: Client,
        node: NodeConfig,
        settings: KubeSettings,
        plugins: Plugins,
        hostports: Arc<HostportTable>,
    ) -> Self {
        let api: Api<Pod> = Api::all(client.clone());
        let watch = watcher::Config::default().fields(&node_selector(&node.name));
        let controller = Controller::new(api, watch).with_config(
            controller::Config::default().concurrency(settings.max_concurrent_reconciles),
        );
        let context = Arc::new(Context::new(
            plugins,
            client,
            node,
            settings,
            controller.store(),
            hostports,
        ));
        PodController {
            controller,
            context,
        }
    }

    /// The node's pods as the watch sees them.
    pub fn store(&self) -> Store<Pod> {
        self.controller.store()
    }

    /// Run until the future is dropped. Reconcile failures are logged by the error policy;
    /// watch failures here (the watcher retries by itself).
    pub async fn run(self) {
        self.controller
            .run(worker::reconcile, worker::error_policy, self.context)
            .for_each(|result| async move {
                match result {
                    Ok(_) => {}
                    // Already logged, with its pod and backoff, by the error policy.
                    Err(controller::Error::ReconcilerFailed(..)) => {}
                    // A requeued pod deleted meanwhile: nothing left to do for it.
                    Err(controller::Error::ObjectNotFound(object)) => {
                        tracing::debug!(%object, "pod gone before its reconcile")
                    }
                    Err(error) => tracing::warn!(%error, "pod watch"),
                }
            })
            .await;
    }
}
