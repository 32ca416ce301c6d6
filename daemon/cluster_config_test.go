package daemon

import (
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestClusterConfigValidate: replica_sync takes "fsync" (the default when
// empty) or "write"; anything else is a configuration error naming both.
func TestClusterConfigValidate(t *testing.T) {
	base := ClusterConfig{NodeID: "n1", RaftAddr: "127.0.0.1:7001", PeerAddr: "127.0.0.1:7101", SecretFile: "/s"}
	for _, tc := range []struct {
		sync string
		ok   bool
	}{{"", true}, {"fsync", true}, {"write", true}, {"none", false}, {"WRITE", false}} {
		c := base
		c.ReplicaSync = tc.sync
		errs := c.validate()
		if tc.ok != (len(errs) == 0) {
			t.Errorf("replica_sync %q: errors %v, want ok=%v", tc.sync, errs, tc.ok)
		}
		if !tc.ok && (len(errs) != 1 || !strings.Contains(errs[0], `"fsync"`) || !strings.Contains(errs[0], `"write"`)) {
			t.Errorf("replica_sync %q: message %v does not name the choices", tc.sync, errs)
		}
	}
}

// TestGroupSync: every sync call returns only after a sync that started
// after the call finished (so it covers the caller's write), and callers
// arriving while one runs share the next.
func TestGroupSync(t *testing.T) {
	var g groupSync
	var writes, covered, rounds atomic.Int64
	do := func() error {
		at := writes.Load()
		rounds.Add(1)
		time.Sleep(5 * time.Millisecond)
		for c := covered.Load(); c < at && !covered.CompareAndSwap(c, at); c = covered.Load() {
		}
		return nil
	}
	const callers = 64
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := writes.Add(1)
			if err := g.sync(do); err != nil {
				t.Error(err)
			}
			if c := covered.Load(); c < w {
				t.Errorf("write %d returned after syncs covering only %d", w, c)
			}
		}()
	}
	wg.Wait()
	if r := rounds.Load(); r >= callers/2 {
		t.Fatalf("%d syncs for %d concurrent callers: not grouped", r, callers)
	}
	boom := errors.New("disk gone")
	if err := g.sync(func() error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("sync error: %v", err)
	}
}
