# Pinned versions of every upstream tool the local cluster uses. Sourced by the other scripts.
# Changing a version here makes hack/build-binaries.sh rebuild that tool into a new folder.
KUBERNETES_VERSION=1.37.2
ETCD_VERSION=3.6.16
KWOK_VERSION=0.8.0
HELM_VERSION=3.22.0
COREDNS_VERSION=1.15.0

# Binaries live outside git, one folder per tool and version, so that several checkouts and
# CI runs on one machine share them and a version bump never mixes old and new binaries.
OPERATOR_KIT_CACHE=${OPERATOR_KIT_CACHE:-$HOME/.cache/operator-kit}
KUBERNETES_BIN_DIR=$OPERATOR_KIT_CACHE/kubernetes-v$KUBERNETES_VERSION
ETCD_BIN_DIR=$OPERATOR_KIT_CACHE/etcd-v$ETCD_VERSION
KWOK_BIN_DIR=$OPERATOR_KIT_CACHE/kwok-v$KWOK_VERSION
HELM_BIN_DIR=$OPERATOR_KIT_CACHE/helm-v$HELM_VERSION
COREDNS_BIN_DIR=$OPERATOR_KIT_CACHE/coredns-v$COREDNS_VERSION
LOCAL_PROVISIONER_BIN_DIR=$OPERATOR_KIT_CACHE/local-provisioner-k8s-v$KUBERNETES_VERSION
