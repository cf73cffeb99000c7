// vk-mock: the peer of cellet's node benchmark (bench/src/bin/node-bench/).
//
// A virtual-kubelet node built the way its users build one: nodeutil.NewNode with the
// node and pod controllers of github.com/virtual-kubelet/virtual-kubelet, and an
// in-memory provider equivalent to the project's own mock provider (which lives in an
// internal package and cannot be imported): CreatePod marks a pod Running at once and
// tells the pod controller through NotifyPods, DeletePod marks it Succeeded.
//
// Every setting is virtual-kubelet's default, as its reference command
// (cmd/virtual-kubelet) sets it: 10 pod sync workers, a 1-minute informer resync, the
// taint virtual-kubelet.io/provider=mock:NoSchedule, the v1 node Lease with its default
// duration, and a client from nodeutil.ClientsetFromEnv (client-go's default rate limit,
// 5 requests/s with bursts of 10). The kubelet API is served as the reference command
// serves it when given certificates (its APISERVER_CERT_LOCATION, APISERVER_KEY_LOCATION
// and APISERVER_CA_CERT_LOCATION are the flags --tls-cert, --tls-key and --client-ca
// here): TLS, the provider's routes, webhook authentication and authorization. The only
// flag beyond the reference command's is --unthrottled: it lifts virtual-kubelet's rate
// limits — client-go's (5 requests/s, bursts of 10) and the overall 10 items/s (bursts of
// 100) of client-go's default controller rate limiter on each of the pod controller's work
// queues, keeping only their per-item retry backoff — so the benchmark can also show the
// node loop without them.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// The reference command's defaults (cmd/virtual-kubelet/internal/commands/root/opts.go).
const (
	defaultPodSyncWorkers = 10
	defaultInformerResync = time.Minute
	taintKey              = "virtual-kubelet.io/provider"
	providerName          = "mock"
)

func main() {
	nodeName := flag.String("nodename", "vk-mock", "name of the node to register")
	kubeconfig := flag.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig of the cluster")
	internalIP := flag.String("internal-ip", "127.0.0.1", "the node's InternalIP address")
	pods := flag.String("pods", "20", "the node's pod capacity (the mock provider's default is 20)")
	workers := flag.Int("pod-sync-workers", defaultPodSyncWorkers, "pod sync workers")
	unthrottled := flag.Bool("unthrottled", false, "lift the client's and the pod controller's rate limits (not a default)")
	var api kubeletAPI
	flag.IntVar(&api.port, "listen-port", 10250, "port of the kubelet API")
	flag.StringVar(&api.cert, "tls-cert", "", "serving certificate of the kubelet API (none: the API is not served)")
	flag.StringVar(&api.key, "tls-key", "", "its private key")
	flag.StringVar(&api.clientCA, "client-ca", "", "CA of client certificates (none: no authentication)")
	flag.Parse()

	if err := run(*nodeName, *kubeconfig, *internalIP, *pods, *workers, *unthrottled, api); err != nil {
		fmt.Fprintf(os.Stderr, "vk-mock: %v\n", err)
		os.Exit(1)
	}
}

// kubeletAPI: where and how the kubelet API is served.
type kubeletAPI struct {
	port                int
	cert, key, clientCA string
}

// options wires the kubelet API as the reference command does (root.go: setAuth,
// WithTLSConfig, AttachProviderRoutes).
func (a kubeletAPI) options(nodeName string) []nodeutil.NodeOpt {
	if a.cert == "" {
		return nil
	}
	mux := http.NewServeMux()
	auth := func(cfg *nodeutil.NodeConfig) error {
		cfg.Handler = mux
		cfg.HTTPListenAddr = fmt.Sprintf(":%d", a.port)
		if a.clientCA == "" {
			cfg.Handler = api.InstrumentHandler(nodeutil.WithAuth(nodeutil.NoAuth(), cfg.Handler))
			return nil
		}
		auth, err := nodeutil.WebhookAuth(cfg.Client, nodeName, func(c *nodeutil.WebhookAuthConfig) error {
			var err error
			c.AuthnConfig.ClientCertificateCAContentProvider, err = dynamiccertificates.NewDynamicCAContentFromFile("ca-cert-bundle", a.clientCA)
			return err
		})
		if err != nil {
			return err
		}
		cfg.Handler = api.InstrumentHandler(nodeutil.WithAuth(auth, cfg.Handler))
		return nil
	}
	tls := []func(*tls.Config) error{nodeutil.WithKeyPairFromPath(a.cert, a.key)}
	if a.clientCA != "" {
		tls = append(tls, nodeutil.WithCAFromPath(a.clientCA))
	}
	return []nodeutil.NodeOpt{auth, nodeutil.WithTLSConfig(tls...), nodeutil.AttachProviderRoutes(mux)}
}

func run(nodeName, kubeconfig, internalIP, pods string, workers int, unthrottled bool, kubeletAPI kubeletAPI) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	client, err := clientset(kubeconfig, unthrottled)
	if err != nil {
		return err
	}
	capacity, err := resource.ParseQuantity(pods)
	if err != nil {
		return fmt.Errorf("--pods %q: %w", pods, err)
	}
	newProvider := func(cfg nodeutil.ProviderConfig) (nodeutil.Provider, node.NodeProvider, error) {
		p := &memoryProvider{pods: map[string]*corev1.Pod{}, hostIP: internalIP}
		configureNode(cfg.Node, internalIP, int32(kubeletAPI.port), capacity)
		return p, nil, nil
	}
	opts := []nodeutil.NodeOpt{
		nodeutil.WithClient(client),
		func(cfg *nodeutil.NodeConfig) error {
			cfg.NumWorkers = workers
			cfg.InformerResyncPeriod = defaultInformerResync
			cfg.NodeSpec.Spec.Taints = append(cfg.NodeSpec.Spec.Taints, corev1.Taint{
				Key:    taintKey,
				Value:  providerName,
				Effect: corev1.TaintEffectNoSchedule,
			})
			return nil
		},
	}
	if unthrottled {
		opts = append(opts, nodeutil.WithPodControllerConfigOverrides(unthrottledQueues))
	}
	n, err := nodeutil.NewNode(nodeName, newProvider, append(opts, kubeletAPI.options(nodeName)...)...)
	if err != nil {
		return err
	}
	go n.Run(ctx) //nolint:errcheck // Err() below reports it
	if err := n.WaitReady(ctx, time.Minute); err != nil {
		return fmt.Errorf("node %s not ready: %w", nodeName, err)
	}
	fmt.Fprintf(os.Stderr, "vk-mock: node %s ready\n", nodeName)
	select {
	case <-ctx.Done():
	case <-n.Done():
	}
	stop()
	<-n.Done()
	if err := n.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// clientset is nodeutil.ClientsetFromEnv, or without client-side rate limit.
func clientset(kubeconfig string, unthrottled bool) (kubernetes.Interface, error) {
	if !unthrottled {
		return nodeutil.ClientsetFromEnv(kubeconfig)
	}
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
	}
	config.QPS = -1 // client-go: a negative QPS disables its rate limiter
	return kubernetes.NewForConfig(config)
}

// unthrottledQueues keeps the pod controller's per-item retry backoff (as in client-go's
// default controller rate limiter) without the overall 10/s bucket.
func unthrottledQueues(cfg *node.PodControllerConfig) error {
	backoff := func() workqueue.TypedRateLimiter[any] {
		return workqueue.NewTypedItemExponentialFailureRateLimiter[any](5*time.Millisecond, 1000*time.Second)
	}
	cfg.SyncPodsFromKubernetesRateLimiter = backoff()
	cfg.DeletePodsFromKubernetesRateLimiter = backoff()
	cfg.SyncPodStatusFromProviderRateLimiter = backoff()
	return nil
}

// configureNode does what the mock provider's ConfigureNode does: capacity, address,
// and the node information a kubelet reports.
func configureNode(n *corev1.Node, internalIP string, kubeletPort int32, pods resource.Quantity) {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("20"),
		corev1.ResourceMemory: resource.MustParse("100Gi"),
		corev1.ResourcePods:   pods,
	}
	n.Status.Capacity = capacity
	n.Status.Allocatable = capacity
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: internalIP}}
	n.Status.DaemonEndpoints.KubeletEndpoint.Port = kubeletPort
	n.Status.NodeInfo.OperatingSystem = "linux"
	n.Status.NodeInfo.Architecture = "amd64"
	n.ObjectMeta.Labels["kubernetes.io/os"] = "linux"
	n.ObjectMeta.Labels["alpha.service-controller.exclude-balancer"] = "true"
}

// memoryProvider keeps pods in a map, like the mock provider (plus the lock that the
// mock's map lacks: the pod controller calls it from several workers).
type memoryProvider struct {
	mu       sync.Mutex
	pods     map[string]*corev1.Pod
	hostIP   string
	notifier func(*corev1.Pod)
}

var _ nodeutil.Provider = (*memoryProvider)(nil)
var _ node.PodNotifier = (*memoryProvider)(nil)

func key(namespace, name string) string { return namespace + "/" + name }

func (p *memoryProvider) NotifyPods(_ context.Context, notifier func(*corev1.Pod)) {
	p.notifier = notifier
}

// CreatePod: Running at once, every container running and ready.
func (p *memoryProvider) CreatePod(_ context.Context, pod *corev1.Pod) error {
	now := metav1.Now()
	pod.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		HostIP:    p.hostIP,
		PodIP:     "5.6.7.8",
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodInitialized, Status: corev1.ConditionTrue},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue},
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
		},
	}
	for _, c := range pod.Spec.Containers {
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, corev1.ContainerStatus{
			Name:  c.Name,
			Image: c.Image,
			Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
		})
	}
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = pod
	p.mu.Unlock()
	p.notifier(pod)
	return nil
}

func (p *memoryProvider) UpdatePod(_ context.Context, pod *corev1.Pod) error {
	p.mu.Lock()
	p.pods[key(pod.Namespace, pod.Name)] = pod
	p.mu.Unlock()
	p.notifier(pod)
	return nil
}

// DeletePod: Succeeded, containers terminated; the pod controller then deletes the object.
func (p *memoryProvider) DeletePod(_ context.Context, pod *corev1.Pod) error {
	k := key(pod.Namespace, pod.Name)
	p.mu.Lock()
	_, found := p.pods[k]
	delete(p.pods, k)
	p.mu.Unlock()
	if !found {
		return errdefs.NotFound("pod not found")
	}
	now := metav1.Now()
	pod.Status.Phase = corev1.PodSucceeded
	pod.Status.Reason = "MockProviderPodDeleted"
	for i, s := range pod.Status.ContainerStatuses {
		started := metav1.Time{}
		if s.State.Running != nil {
			started = s.State.Running.StartedAt
		}
		pod.Status.ContainerStatuses[i].Ready = false
		pod.Status.ContainerStatuses[i].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			Reason: "MockProviderPodContainerDeleted", StartedAt: started, FinishedAt: now,
		}}
	}
	p.notifier(pod)
	return nil
}

func (p *memoryProvider) GetPod(_ context.Context, namespace, name string) (*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pod, ok := p.pods[key(namespace, name)]
	if !ok {
		return nil, errdefs.NotFoundf("pod %s/%s not found", namespace, name)
	}
	return pod, nil
}

func (p *memoryProvider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

func (p *memoryProvider) GetPods(context.Context) ([]*corev1.Pod, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pods := make([]*corev1.Pod, 0, len(p.pods))
	for _, pod := range p.pods {
		pods = append(pods, pod)
	}
	return pods, nil
}

// The kubelet API's calls: the mock has no containers to serve them from.
var errNoContainers = errdefs.InvalidInput("vk-mock runs no containers")

func (p *memoryProvider) GetContainerLogs(context.Context, string, string, string, api.ContainerLogOpts) (io.ReadCloser, error) {
	return nil, errNoContainers
}

func (p *memoryProvider) RunInContainer(context.Context, string, string, string, []string, api.AttachIO) error {
	return errNoContainers
}

func (p *memoryProvider) AttachToContainer(context.Context, string, string, string, api.AttachIO) error {
	return errNoContainers
}

func (p *memoryProvider) PortForward(context.Context, string, string, int32, io.ReadWriteCloser) error {
	return errNoContainers
}

func (p *memoryProvider) GetStatsSummary(context.Context) (*statsv1alpha1.Summary, error) {
	return nil, errNoContainers
}

func (p *memoryProvider) GetMetricsResource(context.Context) ([]*dto.MetricFamily, error) {
	return nil, errNoContainers
}
