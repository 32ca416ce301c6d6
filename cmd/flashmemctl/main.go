// Command flashmemctl inspects and exercises a running flashmemd: status,
// sessions (live and persisted), inspect, evict, resume, persist, delete,
// verify, a synthetic-decoder demo, and the evaluation tools. See package
// ctl. Its tests run the README's first-hour walk-through and the errors a
// user can cause against the real binaries.
package main

import (
	"os"

	"github.com/flashmemory/flashmemory/internal/ctl"
)

func main() { os.Exit(ctl.Main()) }
