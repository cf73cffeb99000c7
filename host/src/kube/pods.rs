//! The pod watch: this node's pods, one reflector store of them for the life of the
//! process, and the per-term controller that hands each pod to [`super::worker::reconcile`].
//!
//! Layers, each kube-runtime's own: a `watcher` on `spec.nodeName=<node>` (it re-lists
//! and re-watches by itself when the API server goes away, with backoff) → a `reflector`
//! store (the current pods) → kube-runtime's `applier`, which runs at most one reconcile
//! per pod at a time and at most `max-concurrent-reconciles` in all, and requeues what a
//! reconcile asks for.
//!
//! Why the watch is split from the controller: the store must outlive leader terms. The
//! kubelet API answers `/pods` and routes `kubectl logs` from it on every replica, whether
//! it leads or not, and a new term must not start from an empty cache. So one watch feeds
//! one store for the whole process ([`PodWatch`]), and each term gets a queue of its own
//! ([`PodWatch::queue`]): every pod in the store at the term's start, then every pod the
//! watch sees change. kube-runtime's `Controller` cannot share a store without its
//! unstable features; its `applier`, which the controller is built on, can.

use std::convert::Infallible;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures_util::{Stream, StreamExt};
use kube::runtime::controller::{self, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use tokio::sync::mpsc;

use super::stored_pod::StoredPod;
use super::worker::{self, Context};

/// The field selector of this node's pods.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

/// The process's watch of this node's pods.
#[derive(Debug, Clone)]
pub struct PodWatch {
    store: Store<StoredPod>,
    /// Where changed pods go: the current term's queue, if a term runs.
    term: Arc<Mutex<Option<mpsc::UnboundedSender<ObjectRef<StoredPod>>>>>,
}

impl PodWatch {
    /// The watch, and the future that drives it (run it for the life of the process; it
    /// never ends by itself: watch errors are logged and retried with backoff).
    pub fn new(
        client: Client,
        node: &str,
    ) -> (PodWatch, impl Future<Output = ()> + Send + 'static) {
        let (store, writer) = reflector::store::<StoredPod>();
        let watch = PodWatch {
            store,
            term: Arc::default(),
        };
        let term = Arc::clone(&watch.term);
        // Each pod is decoded straight into the store's compact form (see `stored_pod`).
        let api: Api<StoredPod> = Api::all(client);
        let events =
            watcher(api, watcher::Config::default().fields(&node_selector(node))).default_backoff();
        let drive = reflector::reflector(writer, events).for_each(move |event| {
            match event {
                // The store has the pod by now (the reflector writes before it yields),
                // except during a re-list, when the applier waits for the store to be ready.
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    if let Some(queue) = term.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        // A closed queue is a term that just ended; the next one re-queues all.
                        let _ = queue.send(ObjectRef::from_obj(&pod));
                    }
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "pod watch failed; retrying with backoff"),
            }
            std::future::ready(())
        });
        (watch, drive)
    }

    /// The node's pods as the watch sees them.
    pub fn store(&self) -> Store<StoredPod> {
        self.store.clone()
    }

    /// A new term's queue: every pod of the store, then every pod that changes. Replaces
    /// the previous term's queue.
    fn queue(
        &self,
    ) -> impl Stream<Item = Result<ObjectRef<StoredPod>, Infallible>> + Send + 'static {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        // Installed before the store is read: a pod changing in between is queued twice,
        // which the applier folds into one reconcile, rather than not at all.
        *self.term.lock().unwrap_or_else(|e| e.into_inner()) = Some(sender.clone());
        for pod in self.store.state() {
            let _ = sender.send(ObjectRef::from_obj(&*pod));
        }
        drop(sender);
        futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx)).map(Ok)
    }
}

/// Run one term's pod controller until the future is dropped.
///
/// Reconcile failures are logged by the error policy; a pod deleted before its queued
/// reconcile ran has nothing left to do.
pub async fn control(watch: &PodWatch, context: Arc<Context>, concurrency: u16) {
    let config = controller::Config::default().concurrency(concurrency);
    // The applier keeps each reconcile future in place: boxed, as kube's Controller does.
    let reconcile = |pod, context| Box::pin(worker::reconcile(pod, context));
    applier(
        reconcile,
        worker::error_policy,
        context,
        watch.store(),
        watch.queue(),
        config,
    )
    .for_each(|result| async move {
        match result {
            Ok(_) => {}
            // Already logged, with its pod and backoff, by the error policy.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(controller::Error::ObjectNotFound(object)) => {
                tracing::debug!(%object, "pod gone before its reconcile")
            }
            Err(error) => tracing::warn!(%error, "pod controller"),
        }
    })
    .await;
}
