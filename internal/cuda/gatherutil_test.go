package cuda

import "testing"

// splitAt cuts Recall's copy-engine rows into per-stream runs: the cut must fall at the
// first row where the leading rows reach the share, never past the end.
func TestSplitAt(t *testing.T) {
	rows := func(lens ...uint64) []CopyDesc {
		var d []CopyDesc
		for _, n := range lens {
			d = append(d, CopyDesc{Len: n})
		}
		return d
	}
	for _, tc := range []struct {
		descs []CopyDesc
		share float64
		want  int
	}{
		{rows(), 0.5, 0},
		{rows(10), 0.5, 1},
		{rows(10, 10, 10, 10), 0.25, 1},
		{rows(10, 10, 10, 10), 0.5, 2},
		{rows(10, 10, 10, 10), 1.0 / 3, 2},
		{rows(10, 10, 10, 10), 1, 4},
		{rows(10, 10, 10, 10), 0, 0},
		{rows(100, 1, 1, 1), 0.5, 1},
		{rows(1, 1, 1, 100), 0.5, 4},
	} {
		if got := splitAt(tc.descs, tc.share); got != tc.want {
			t.Errorf("splitAt(%d rows, %v) = %d, want %d", len(tc.descs), tc.share, got, tc.want)
		}
	}
}
