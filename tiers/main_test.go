package tiers

import (
	"testing"

	"go.uber.org/goleak"
)

// Every tier, store and mover stops its goroutines on Close.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
