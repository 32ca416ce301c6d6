package ctl

import "testing"

func TestNeedleRoom(t *testing.T) {
	for _, c := range []struct{ tokens, min int }{{16384, 3}, {32768, 7}, {131072, 16}} {
		if got := needleRoom(c.tokens); got < c.min {
			t.Errorf("needleRoom(%d) = %d, want ≥ %d", c.tokens, got, c.min)
		}
	}
	m := minDemoTokens()
	if needleRoom(m) < 1 || needleRoom(m-1024) >= 1 {
		t.Errorf("minDemoTokens() = %d: room %d there, %d below", m, needleRoom(m), needleRoom(m-1024))
	}
	t.Logf("minDemoTokens = %d", m)
}
