// Command flashmemd is the FlashMemory daemon: it keeps long-context KV caches
// in GPU reserve, host mirror and SSD tiers and serves decoders over a unix
// socket. All of it lives in package daemon; see docs/architecture.md.
package main

import (
	"os"

	"github.com/flashmemory/flashmemory/daemon"
)

func main() { os.Exit(daemon.Main()) }
