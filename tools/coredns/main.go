// Command coredns is upstream CoreDNS built from its published Go module with only the plugins
// the real node's cluster DNS uses (CoreDNS's documented way to choose plugins at compile
// time: a main package that imports them and sets the directive order), which keeps the
// cloud providers' SDKs out of the build.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

// The order in which the plugins handle a query (a subset of CoreDNS's plugin.cfg order).
func init() {
	dnsserver.Directives = []string{
		"bind",
		"log",
		"errors",
		"health",
		"ready",
		"cache",
		"loadbalance",
		"kubernetes",
	}
}

func main() {
	coremain.Run()
}
