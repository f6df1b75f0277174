//go:build tools

// Package tools pins helm.sh/helm/v3, whose cmd/helm installs and tests our charts.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
