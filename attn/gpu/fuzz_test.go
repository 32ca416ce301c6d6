package gpu

import (
	"encoding/binary"
	"errors"
	"math"
	"testing"
)

// Raw key records come from decoders over the socket; splitting them must never panic and
// must either reject the input with ErrShape or reproduce every byte.
func FuzzSplitKeys(f *testing.F) {
	one := make([]byte, KeyRecord)
	for i := range one[:HeadDim] {
		one[i] = byte(i)
	}
	binary.LittleEndian.PutUint32(one[HeadDim:], math.Float32bits(0.25))
	f.Add(one)
	f.Add(append(append([]byte{}, one...), one...))
	f.Add(one[:KeyRecord-1])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		n := len(raw) / KeyRecord
		codes := make([]byte, n*HeadDim)
		scales := make([]float32, n)
		err := splitKeys(raw, codes, scales)
		if len(raw)%KeyRecord != 0 {
			if !errors.Is(err, ErrShape) {
				t.Fatalf("ragged input of %d bytes: err %v", len(raw), err)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			r := raw[i*KeyRecord:]
			if string(codes[i*HeadDim:(i+1)*HeadDim]) != string(r[:HeadDim]) {
				t.Fatalf("key %d codes differ", i)
			}
			if math.Float32bits(scales[i]) != binary.LittleEndian.Uint32(r[HeadDim:]) {
				t.Fatalf("key %d scale differs", i)
			}
		}
		// Too-small destinations are an error, not a panic.
		if n > 0 {
			if err := splitKeys(raw, codes[:len(codes)-1], scales); !errors.Is(err, ErrShape) {
				t.Fatalf("short codes buffer: err %v", err)
			}
		}
	})
}
