// Command local-provisioner is the dynamic volume provisioner of the local test cluster.
//
// The cluster has no storage system: kwok only pretends that pods run, and the real nodes share
// this machine's disk. So this program plays the external-provisioner role for one
// StorageClass, the way kind's local-path provisioner does: the class binds when the first pod
// is scheduled (WaitForFirstConsumer), and for each claim the scheduler has placed on a node
// it creates a hostPath PersistentVolume in that node's folder, pre-bound to the claim and
// required to stay on that node (node affinity), so a pod's data lives on its node as on a
// real cluster: a pod whose node is gone cannot take its volume elsewhere. It deletes the
// volume once its claim is gone (reclaim policy Delete). The kube-controller-manager's
// persistent-volume controller does the binding itself, exactly as with a real CSI driver.
package main

import (
	"context"
	"flag"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	provisionedByAnnotation = "pv.kubernetes.io/provisioned-by"
	// Set on a claim by the scheduler once it has chosen the node of the claim's first pod.
	selectedNodeAnnotation = "volume.kubernetes.io/selected-node"
)

type provisioner struct {
	client    kubernetes.Interface
	name      string
	className string
	hostRoot  string
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "path to the kubeconfig of the cluster")
	name := flag.String("provisioner-name", "operator-kit.io/local-hostpath", "name written in StorageClass.provisioner")
	className := flag.String("storage-class", "standard", "StorageClass to create (as the default class) and serve")
	hostRoot := flag.String("host-root", "/var/lib/operator-kit-local", "directory holding a folder per node, where the node's volumes are made")
	readyFile := flag.String("ready-file", "", "file written once the caches are synced, for the start script")
	flag.Parse()

	config, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		log.Fatalf("failed to load kubeconfig %q: %v", *kubeconfig, err)
	}
	// client-go's default of 5 requests per second would make 1,000 claims wait minutes.
	config.QPS, config.Burst = 100, 200
	client, err := kubernetes.NewForConfig(config)
	if err != nil {
		log.Fatalf("failed to create client: %v", err)
	}
	p := &provisioner{client: client, name: *name, className: *className, hostRoot: *hostRoot}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := p.ensureStorageClass(ctx); err != nil {
		log.Fatalf("failed to create storage class %q: %v", p.className, err)
	}

	factory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	claims := factory.Core().V1().PersistentVolumeClaims().Informer()
	volumes := factory.Core().V1().PersistentVolumes().Informer()
	_, _ = claims.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.onClaim(ctx, obj) },
		UpdateFunc: func(_, obj any) { p.onClaim(ctx, obj) },
	})
	_, _ = volumes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { p.onVolume(ctx, obj) },
		UpdateFunc: func(_, obj any) { p.onVolume(ctx, obj) },
	})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	log.Printf("serving storage class %q as %q", p.className, p.name)
	if *readyFile != "" {
		if err := os.WriteFile(*readyFile, []byte("ready\n"), 0o644); err != nil {
			log.Fatalf("failed to write ready file %q: %v", *readyFile, err)
		}
	}
	<-ctx.Done()
}

func (p *provisioner) ensureStorageClass(ctx context.Context) error {
	reclaim := corev1.PersistentVolumeReclaimDelete
	binding := storagev1.VolumeBindingWaitForFirstConsumer
	expand := true
	class := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{
			Name:        p.className,
			Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"},
		},
		Provisioner:          p.name,
		ReclaimPolicy:        &reclaim,
		VolumeBindingMode:    &binding,
		AllowVolumeExpansion: &expand,
	}
	_, err := p.client.StorageV1().StorageClasses().Create(ctx, class, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

func (p *provisioner) servesClaim(claim *corev1.PersistentVolumeClaim) bool {
	if claim.Spec.StorageClassName == nil || *claim.Spec.StorageClassName != p.className {
		return false
	}
	return claim.Spec.VolumeName == "" && claim.DeletionTimestamp == nil && claim.Annotations[selectedNodeAnnotation] != ""
}

func (p *provisioner) onClaim(ctx context.Context, obj any) {
	claim, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok || !p.servesClaim(claim) {
		return
	}
	size, ok := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		log.Printf("claim %s/%s requests no storage; skipped", claim.Namespace, claim.Name)
		return
	}
	filesystem := corev1.PersistentVolumeFilesystem
	volumeMode := claim.Spec.VolumeMode
	if volumeMode == nil {
		volumeMode = &filesystem
	}
	hostPathType := corev1.HostPathDirectoryOrCreate
	// Named after the claim's UID like every CSI provisioner, so a retried create is
	// idempotent and a recreated claim of the same name gets a new, empty volume.
	name := "pvc-" + string(claim.UID)
	node := claim.Annotations[selectedNodeAnnotation]
	if filepath.Base(node) != node || node == "." || node == ".." {
		log.Printf("claim %s/%s names node %q, which cannot be a folder; skipped", claim.Namespace, claim.Name, node)
		return
	}
	path := filepath.Join(p.hostRoot, node, name)
	// Made here, writable by any user: pods on the real node run as non-root users, and
	// fsGroup does not apply to hostPath volumes (the kubelet would make it root's, 0755).
	if err := os.MkdirAll(path, 0o777); err != nil {
		log.Printf("failed to create the directory of claim %s/%s: %v", claim.Namespace, claim.Name, err)
		return
	}
	if err := os.Chmod(path, 0o777); err != nil {
		log.Printf("failed to open the directory of claim %s/%s to its pods: %v", claim.Namespace, claim.Name, err)
		return
	}
	volume := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{provisionedByAnnotation: p.name},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   claim.Spec.AccessModes,
			VolumeMode:                    volumeMode,
			StorageClassName:              p.className,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID,
			},
			PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{
				Path: path, Type: &hostPathType,
			}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{
				NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{
					Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{node},
				}}}},
			}},
		},
	}
	_, err := p.client.CoreV1().PersistentVolumes().Create(ctx, volume, metav1.CreateOptions{})
	switch {
	case err == nil:
		log.Printf("created volume %s for claim %s/%s (%s) on node %s", volume.Name, claim.Namespace, claim.Name, size.String(), node)
	case apierrors.IsAlreadyExists(err):
	default:
		log.Printf("failed to create volume for claim %s/%s: %v", claim.Namespace, claim.Name, err)
	}
}

// onVolume deletes a volume this provisioner made once its claim was deleted, which is what
// the Delete reclaim policy promises.
func (p *provisioner) onVolume(ctx context.Context, obj any) {
	volume, ok := obj.(*corev1.PersistentVolume)
	if !ok || volume.Annotations[provisionedByAnnotation] != p.name || volume.Status.Phase != corev1.VolumeReleased ||
		volume.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || volume.DeletionTimestamp != nil {
		return
	}
	err := p.client.CoreV1().PersistentVolumes().Delete(ctx, volume.Name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		log.Printf("failed to delete released volume %s: %v", volume.Name, err)
		return
	}
	// Its data goes with it, as the Delete reclaim policy means.
	if source := volume.Spec.HostPath; source != nil && filepath.Dir(filepath.Dir(source.Path)) == filepath.Clean(p.hostRoot) {
		if err := os.RemoveAll(source.Path); err != nil {
			log.Printf("failed to remove the data of volume %s: %v", volume.Name, err)
		}
	}
	log.Printf("deleted released volume %s", volume.Name)
}
