{{/* What redis-operator may do, and nothing more: each rule says which code path needs it. */}}
{{- define "operator.rules" -}}
# Watch Redis resources, write their status, and own their children (blockOwnerDeletion).
- apiGroups: [redis.operator-kit.io]
  resources: [redises]
  verbs: [get, list, watch]
- apiGroups: [redis.operator-kit.io]
  resources: [redises/status]
  verbs: [get, patch]
- apiGroups: [redis.operator-kit.io]
  resources: [redises/finalizers]
  verbs: [update]
# Children: applied with server-side apply (patch), pruned (delete), watched by metadata.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, delete]
# The password Secret named by a Redis: its key names are checked, its changes watched.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
# Events on the Redis resources (events.k8s.io/v1; repeated events are patched).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
