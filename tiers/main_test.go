package tiers

import (
	"testing"

	"go.uber.org/goleak"
)

// Every tier, store and mover stops its goroutines on Close. Badger leaves
// two goroutines behind when its Open fails (a damaged index, which the tier
// then rebuilds): not ours to stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/dgraph-io/badger/v4.(*DB).monitorCache"),
		goleak.IgnoreTopFunction("github.com/dgraph-io/ristretto/v2/z.(*AllocatorPool).freeupAllocators"))
}
