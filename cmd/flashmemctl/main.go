// Command flashmemctl inspects and exercises a running flashmemd: status,
// sessions, inspect, evict and a synthetic-decoder demo. See package ctl.
package main

import (
	"os"

	"github.com/flashmemory/flashmemory/internal/ctl"
)

func main() { os.Exit(ctl.Main()) }
