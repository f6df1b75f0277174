{{/* What app-operator may do, and nothing more: each rule says which code path needs it. */}}
{{- define "operator.rules" -}}
# Watch App resources, write their status, and own their children (blockOwnerDeletion).
- apiGroups: [app.operator-kit.io]
  resources: [apps]
  verbs: [get, list, watch]
- apiGroups: [app.operator-kit.io]
  resources: [apps/status]
  verbs: [get, patch]
- apiGroups: [app.operator-kit.io]
  resources: [apps/finalizers]
  verbs: [update]
# Children: applied with server-side apply (patch), pruned (delete), watched by metadata.
# Routes exist only on OpenShift; the operator asks discovery (allowed to every user) first.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [route.openshift.io]
  resources: [routes]
  verbs: [get, list, create, patch, delete]
# OpenShift admits a Route with a host only when its creator may create routes/custom-host.
- apiGroups: [route.openshift.io]
  resources: [routes/custom-host]
  verbs: [create]
# Events on the App resources (events.k8s.io/v1; repeated events are patched).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
