package indexer

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"slices"
	"testing"
)

// fuzzModel is small so that fuzzing spends its time in the decoders, not in arithmetic.
func fuzzModel(t testing.TB) *Model {
	return mustRandomModel(t, 1, ModelConfig{Layers: []int{2, 4}, Hidden: 8, QLoraRank: 4, Heads: 2, HeadDim: 16, RopeDim: 8})
}

func fuzzPolicy() Policy {
	p := DefaultPolicy()
	p.FirstKeep, p.LastKeep, p.KMax, p.ChunksPerPage = 4, 4, 2, 8
	p.MaxChunks = 4096 // bounds what any input can make a request hold
	return p
}

// FuzzAppendKeys feeds arbitrary key bytes, split between the two target layers, at an
// arbitrary first index: malformed input must return an error and leave the request as it
// was; accepted input must round-trip through the key store exactly.
func FuzzAppendKeys(f *testing.F) {
	m := fuzzModel(f)
	kb := m.KeyBytes()
	valid := m.RandomKeys(1, 3)
	f.Add(slices.Concat(valid[0], valid[1]), uint16(3*kb), int64(0))
	f.Add(slices.Concat(valid[0], valid[1]), uint16(3*kb), int64(5))
	f.Add(slices.Concat(valid[0], valid[1][:kb]), uint16(3*kb), int64(5))
	f.Add([]byte{1, 2, 3}, uint16(1), int64(-1))
	f.Add(bytes.Repeat([]byte{0xff}, 2*kb), uint16(kb), int64(5))
	f.Fuzz(func(t *testing.T, data []byte, split uint16, first int64) {
		r, err := NewRequest(m, fuzzPolicy())
		if err != nil {
			t.Fatal(err)
		}
		pre := m.RandomKeys(2, 5)
		if err := r.AppendKeys(0, pre); err != nil {
			t.Fatal(err)
		}
		cut := min(int(split), len(data))
		per := [][]byte{data[:cut], data[cut:]}
		err = r.AppendKeys(int(first), per)
		if err != nil {
			if r.Len() != 5 {
				t.Fatalf("failed append changed Len to %d", r.Len())
			}
			return
		}
		added := len(per[0]) / kb
		if first != 5 || len(per[0]) != len(per[1]) || len(per[0])%kb != 0 || r.Len() != 5+added {
			t.Fatalf("accepted first %d, %d and %d bytes; Len %d", first, len(per[0]), len(per[1]), r.Len())
		}
		for l, k := range r.keys {
			if got := k.AppendRaw(nil, 5, added); !bytes.Equal(got, per[l]) {
				t.Fatalf("layer %d: stored keys differ from appended bytes", l)
			}
		}
		if _, err := r.Select(make([]float32, r.Len())); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzParseModel loads arbitrary bytes as a model file: errors, never panics; a model that
// loads re-exports to a file that loads to the same configuration.
func FuzzParseModel(f *testing.F) {
	var b bytes.Buffer
	if err := fuzzModel(f).WriteSafetensors(&b); err != nil {
		f.Fatal(err)
	}
	f.Add(b.Bytes())
	f.Add(b.Bytes()[:len(b.Bytes())/2])
	f.Add([]byte{})
	f.Add([]byte("\x02\x00\x00\x00\x00\x00\x00\x00{}"))
	f.Add([]byte(`{"__metadata__":{"layers":"1"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseModel(data, LoadOptions{})
		if err != nil {
			return
		}
		var out bytes.Buffer
		if err := m.WriteSafetensors(&out); err != nil {
			t.Fatal(err)
		}
		back, err := ParseModel(out.Bytes(), LoadOptions{})
		if err != nil {
			t.Fatalf("re-exported model does not load: %v", err)
		}
		if !configEqual(m.Config(), back.Config()) {
			t.Fatalf("config changed on re-export: %+v vs %+v", m.Config(), back.Config())
		}
	})
}

// FuzzUnmarshalRequest restores arbitrary bytes, both as they are and with a valid checksum
// appended (so that the fuzzer reaches the field decoders). Accepted state must re-encode to
// the same bytes and be usable for another cycle.
func FuzzUnmarshalRequest(f *testing.F) {
	m := fuzzModel(f)
	r, err := NewRequest(m, fuzzPolicy())
	if err != nil {
		f.Fatal(err)
	}
	r.AppendKeys(0, m.RandomKeys(3, 30))
	for range 2 {
		if _, err := ScoreBatch([]*Request{r}, []Query{m.RandomQuery(1, 100)}); err != nil {
			f.Fatal(err)
		}
	}
	blob, err := r.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(blob)
	f.Add(blob[:len(blob)-4])
	f.Add(blob[:40])
	f.Add([]byte("FMIR\x01"))
	f.Fuzz(func(t *testing.T, data []byte) {
		withSum := binary.LittleEndian.AppendUint32(slices.Clone(data), crc32.Checksum(data, castagnoli))
		for _, in := range [][]byte{data, withSum} {
			r, err := NewRequest(m, fuzzPolicy())
			if err != nil {
				t.Fatal(err)
			}
			if err := r.UnmarshalBinary(in); err != nil {
				if r.Len() != 0 || r.Cycles() != 0 {
					t.Fatal("failed restore changed the request")
				}
				continue
			}
			again, err := r.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(again, in) {
				t.Fatalf("restored state re-encodes differently")
			}
			c, err := r.Select(make([]float32, r.Len()))
			if err != nil {
				t.Fatal(err)
			}
			checkCycle(t, c)
		}
	})
}
