//go:build tools

// Package tools pins sigs.k8s.io/kwok, whose cmd/kwok gives the local cluster fake nodes.
package tools

import _ "sigs.k8s.io/kwok/cmd/kwok"
