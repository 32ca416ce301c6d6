package buildinfo

import (
	"strings"
	"testing"
)

func TestString(t *testing.T) {
	cases := []struct {
		in   Info
		want []string
	}{
		{Info{Version: "1.2.3", Commit: "0123456789abcdef0123", Go: "go1.26"}, []string{"1.2.3", "commit 0123456789ab,", "without CUDA", "go1.26"}},
		{Info{Version: "1.2.3", Commit: "abc", Modified: true, Tags: "cuda", CUDA: true, Time: "2026-12-02T17:00:00Z"},
			[]string{"commit abc+modified of 2026-12-02T17:00:00Z", "with CUDA (cuda tag)", "tags cuda"}},
	}
	for _, c := range cases {
		s := c.in.String()
		for _, w := range c.want {
			if !strings.Contains(s, w) {
				t.Errorf("%+v: %q lacks %q", c.in, s, w)
			}
		}
	}
	// A test binary carries build info; the default build has no cuda tag.
	if in := Read(); in.Version != Version || in.CUDA {
		t.Errorf("Read() = %+v", in)
	}
}
