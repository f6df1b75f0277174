{{/* What redis-operator may do, and nothing more: each rule says which code path needs it. */}}
{{- define "operator.rules" -}}
# Watch Redis and RedisSentinel resources, write their status, and own their children
# (blockOwnerDeletion needs update on finalizers).
- apiGroups: [redis.operator-kit.io]
  resources: [redises, redissentinels]
  verbs: [get, list, watch]
- apiGroups: [redis.operator-kit.io]
  resources: [redises/status, redissentinels/status]
  verbs: [get, patch]
- apiGroups: [redis.operator-kit.io]
  resources: [redises/finalizers, redissentinels/finalizers]
  verbs: [update]
# Children: applied with server-side apply (patch), pruned (delete), watched (their metadata
# and status kept in the operator's cache).
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Data claims (created by the StatefulSet controller) get the resource as a second owner
# unless storage.keepAfterDelete is set, so they are deleted with it (get: re-read a claim
# whose owner references changed under the patch; watch: their metadata kept in the cache).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, patch]
# RedisSentinel pods are labelled with their role, so the master Service selects the master
# (watch: their metadata kept in the cache).
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, patch]
# The password Secret named by a resource: its key checked, its changes watched, its value
# read (in memory only) to authenticate to Redis; the pods' passwords kept in the operator's
# own Secret <name>-operator-credentials, applied with server-side apply (create, patch). The
# admission policy refuses a write to any other Secret.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
# Events on the resources (events.k8s.io/v1; repeated events are patched).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
