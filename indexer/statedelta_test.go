package indexer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"slices"
	"testing"
)

// grow appends n random chunks of keys to r and runs a cycle.
func grow(t testing.TB, m *Model, r *Request, n int, seed uint64) {
	t.Helper()
	if err := r.AppendKeys(r.Len(), m.RandomKeys(seed, n)); err != nil {
		t.Fatal(err)
	}
	if _, err := ScoreBatch([]*Request{r}, []Query{m.RandomQuery(seed, 100)}); err != nil {
		t.Fatal(err)
	}
}

func TestMergeStateEqualsFullState(t *testing.T) {
	m := fuzzModel(t)
	r, err := NewRequest(m, fuzzPolicy())
	if err != nil {
		t.Fatal(err)
	}
	grow(t, m, r, 20, 1)
	base, err := r.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var deltas [][]byte
	from := r.Len()
	for i, n := range []int{3, 0, 17, 1} {
		grow(t, m, r, n, uint64(10+i))
		d, err := r.MarshalDelta(from)
		if err != nil {
			t.Fatal(err)
		}
		if len(d) >= len(base) {
			t.Errorf("delta of %d chunks is %d B, the base of 20 is %d B", n, len(d), len(base))
		}
		deltas = append(deltas, d)
		from = r.Len()
	}
	// A delta that starts before the state's end replaces the keys after it.
	r.Truncate(from - 2)
	grow(t, m, r, 5, 99)
	d, err := r.MarshalDelta(from - 2)
	if err != nil {
		t.Fatal(err)
	}
	deltas = append(deltas, d)
	want, err := r.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, used, err := MergeState(base, deltas...)
	if err != nil || used != len(deltas) {
		t.Fatalf("merge used %d of %d: %v", used, len(deltas), err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("merged state (%d B) differs from the full state (%d B)", len(got), len(want))
	}
	back, err := NewRequest(m, fuzzPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if err := back.UnmarshalBinary(got); err != nil || back.Len() != r.Len() || back.Cycles() != r.Cycles() {
		t.Fatalf("restore of the merged state: %v (len %d cycles %d)", err, back.Len(), back.Cycles())
	}

	// Stops at the first delta that does not verify or apply, with the state before it.
	for name, bad := range map[string][][]byte{
		"flipped":  {deltas[0], deltas[1], flip(deltas[2])},
		"gap":      {deltas[2]},
		"reorder":  {deltas[0], deltas[1], deltas[3]},
		"fullBase": {deltas[0], deltas[1], base},
	} {
		got, used, err := MergeState(base, bad...)
		if !errors.Is(err, ErrBadState) {
			t.Fatalf("%s: err %v", name, err)
		}
		want, _, _ := MergeState(base, bad[:used]...)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: the result is not the state of the %d deltas that applied", name, used)
		}
	}
	if _, _, err := MergeState(flip(base)); !errors.Is(err, ErrBadState) {
		t.Fatalf("damaged base: %v", err)
	}
	if _, err := r.MarshalDelta(r.Len() + 1); !errors.Is(err, ErrBadState) {
		t.Fatalf("delta past the end: %v", err)
	}
}

// flip returns b with one bit of its middle byte flipped.
func flip(b []byte) []byte {
	c := slices.Clone(b)
	c[len(c)/2] ^= 0x40
	return c
}

// FuzzMergeState applies arbitrary bytes as a delta (as they are, and with a valid
// checksum appended, so the fuzzer reaches the field decoders) to a valid state: errors,
// never panics; an accepted delta yields a state that verifies, merges to itself, and
// either restores and re-encodes to the same bytes or is refused by the restore.
func FuzzMergeState(f *testing.F) {
	m := fuzzModel(f)
	r, err := NewRequest(m, fuzzPolicy())
	if err != nil {
		f.Fatal(err)
	}
	grow(f, m, r, 12, 1)
	base, err := r.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	grow(f, m, r, 3, 2)
	d, err := r.MarshalDelta(12)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(d)
	f.Add(d[:len(d)-4])
	f.Add(d[:40])
	f.Add([]byte("FMID\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		withSum := binary.LittleEndian.AppendUint32(slices.Clone(data), crc32.Checksum(data, castagnoli))
		for _, in := range [][]byte{data, withSum} {
			got, used, err := MergeState(base, in)
			if err != nil {
				if used != 0 || !bytes.Equal(got, base) || !errors.Is(err, ErrBadState) {
					t.Fatalf("refused delta: used %d, state changed %v, err %v", used, !bytes.Equal(got, base), err)
				}
				continue
			}
			again, _, err := MergeState(got)
			if err != nil || !bytes.Equal(again, got) {
				t.Fatalf("merged state does not verify: %v", err)
			}
			back, err := NewRequest(m, fuzzPolicy())
			if err != nil {
				t.Fatal(err)
			}
			if err := back.UnmarshalBinary(got); err != nil {
				if !errors.Is(err, ErrBadState) {
					t.Fatal(err)
				}
				continue
			}
			enc, err := back.MarshalBinary()
			if err != nil || !bytes.Equal(enc, got) {
				t.Fatalf("restored merged state re-encodes differently: %v", err)
			}
		}
	})
}
