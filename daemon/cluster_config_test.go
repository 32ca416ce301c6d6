package daemon

import (
	"strings"
	"testing"
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
