//go:build cuda

package cuda

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// Recall's copy-engine path spreads rows over helper streams: every row must land byte for
// byte, after the work already on the stream (a copy of other bytes into the same reserve,
// enqueued just before, must not overwrite a recalled row) and before the work enqueued on
// the stream after it (a device-to-device copy of the whole reserve taken right after the
// Recall must see every row). Row counts from 1 (no helper) to more than the streams, sizes
// from 256 KiB to 1 MiB, odd lengths and offsets included, each on a stream reused across
// cases (the helpers are made once).
func TestRecallEnginesExact(t *testing.T) {
	for _, d := range devices(t) {
		t.Run(fmt.Sprintf("dev%d", d.Ordinal()), func(t *testing.T) { testRecallEngines(t, d) })
	}
}

func testRecallEngines(t *testing.T, d *Device) {
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const mirrorBytes, reserveBytes = 96 << 20, 32 << 20
	mirror, err := d.AllocHost(mirrorBytes)
	if err != nil {
		t.Fatal(err)
	}
	defer mirror.Free()
	fill(mirror.Bytes(), 21)
	var bufs [3]DevPtr // reserve, garbage, snapshot
	for i := range bufs {
		if bufs[i], err = d.Alloc(reserveBytes); err != nil {
			t.Fatal(err)
		}
		defer d.Free(bufs[i])
	}
	reserve, garbage, snap := bufs[0], bufs[1], bufs[2]
	if err := d.CopyHtoD(garbage, pattern(reserveBytes, 99)); err != nil {
		t.Fatal(err)
	}
	rnd := rand.New(rand.NewPCG(4, 4))
	for _, tc := range []struct {
		rows      int
		min, max  int
		oddOffset bool
	}{
		{1, 256 << 10, 256 << 10, false},
		{2, 256 << 10, 512 << 10, false},
		{3, 786240, 786240, false},
		{21, 256 << 10, 1 << 20, false},
		{40, 786240, 786240, false},
		{17, 256<<10 + 1, 700 << 10, true},
	} {
		// Rows at random, non-overlapping places on both sides.
		var descs []CopyDesc
		used := 0
		for i := 0; i < tc.rows; i++ {
			n := tc.min + rnd.IntN(tc.max-tc.min+1)
			off := 0
			if tc.oddOffset {
				off = 1 + rnd.IntN(15)
			}
			src := rnd.IntN(mirrorBytes/(1<<20)-1) << 20
			descs = append(descs, CopyDesc{Src: mirror.Ptr() + DevPtr(src+off), Dst: reserve + DevPtr(used+off), Len: uint64(n)})
			used += (n + off + 4095) &^ 4095
		}
		if used > reserveBytes {
			t.Fatalf("case of %d rows needs %d B of reserve", tc.rows, used)
		}
		rnd.Shuffle(len(descs), func(i, j int) { descs[i], descs[j] = descs[j], descs[i] })
		if err := s.Copy(reserve, garbage, reserveBytes); err != nil {
			t.Fatal(err)
		}
		if err := s.Recall(descs); err != nil {
			t.Fatal(err)
		}
		if err := s.Copy(snap, reserve, reserveBytes); err != nil {
			t.Fatal(err)
		}
		if err := s.Sync(); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, reserveBytes)
		if err := d.CopyDtoH(got, snap); err != nil {
			t.Fatal(err)
		}
		mb := mirror.Bytes()
		for i, c := range descs {
			so, do := int(c.Src-mirror.Ptr()), int(c.Dst-reserve)
			if j := firstDiff(got[do:do+int(c.Len)], mb[so:so+int(c.Len)]); j >= 0 {
				t.Fatalf("%d rows of %d-%d B: row %d (%d B) differs at byte %d", tc.rows, tc.min, tc.max, i, c.Len, j)
			}
		}
	}
	if len(s.fan) > recallStreams-1 {
		t.Errorf("%d helper streams after every case, want at most %d", len(s.fan), recallStreams-1)
	}
}
