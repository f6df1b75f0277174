// Command etcd is upstream etcd's server, built from its published Go module so that the
// local test cluster needs no downloaded release archive.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
