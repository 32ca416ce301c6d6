package daemon

import (
	"testing"

	"github.com/flashmemory/flashmemory/proto"
)

// Session metadata comes back from disk after a restart: a damaged blob must
// be an error, never a panic or a huge allocation.
func FuzzDecodeMeta(f *testing.F) {
	l := proto.DeepSeekV4Layout(64)
	good, err := encodeMeta(&sessionMeta{ID: 3, Name: "s", Model: "demo", Layout: l, Chunks: 65, Gens: []uint64{1, 2}}, []byte("state"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("FMS1"))
	f.Add([]byte("FMS1\xff\xff\xff\xff{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, state, err := decodeMeta(b)
		if err != nil {
			return
		}
		cpp := uint64(m.Layout.ChunksPerPage)
		if need := (m.Chunks + cpp - 1) / cpp; uint64(len(m.Gens)) < need || uint64(len(m.Gens)) > need+maxUncountedPages {
			t.Fatalf("accepted %d generations for %d chunks", len(m.Gens), m.Chunks)
		}
		if len(state) > len(b) {
			t.Fatal("state longer than the blob")
		}
	})
}
