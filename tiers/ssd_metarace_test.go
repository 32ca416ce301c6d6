package tiers

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// A metadata write racing a compaction that moves the same name's records:
// the index value the write commits must name where the records are now,
// never the segment compaction is about to delete (the write read the chain
// before the move, then committed it after). And a read racing the move must
// look again, never take the removed segment for damage and return an older
// state.
func TestSSDMetaWriteRacesCompaction(t *testing.T) {
	dir := t.TempDir()
	cfg := SSDConfig{Dir: dir, GCInterval: -1, SegmentBytes: 1 << 20, MergeMeta: concatMerge}
	s, err := OpenSSD(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			s.RunGC()
		}
	}()
	var damaged []error
	var dmu sync.Mutex
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c, err := s.ReadMetaChain(ctx, fmt.Sprintf("m%d", i%3))
			if err == nil && c.Damaged != nil {
				dmu.Lock()
				damaged = append(damaged, c.Damaged)
				dmu.Unlock()
			}
		}
	}()
	want := map[string][]byte{}
	deadline := time.Now().Add(3 * time.Second)
	var pos MetaPos
	for i := 0; time.Now().Before(deadline) && i < 4000; i++ {
		name := fmt.Sprintf("m%d", i%3)
		if i%4 == 0 || want[name] == nil {
			blob := bytes.Repeat([]byte{byte('a' + i%26)}, 64<<10+i%1000)
			if pos, err = s.PutMetaBase(ctx, name, 1, blob); err != nil {
				t.Fatal(err)
			}
			want[name] = blob
		} else {
			_, p, err := s.GetMetaPos(ctx, name)
			if err != nil {
				t.Fatalf("iteration %d: read %q: %v", i, name, err)
			}
			d := []byte(fmt.Sprintf("d%d", i))
			if pos, err = s.PutMetaDelta(ctx, name, 1, p.Seq, d); err != nil {
				t.Fatal(err)
			}
			want[name] = append(want[name], d...)
		}
		_ = pos
	}
	close(stop)
	wg.Wait()
	if len(damaged) > 0 {
		t.Errorf("%d reads found an intact chain damaged, first: %v", len(damaged), damaged[0])
	}
	check := func(s *SSD, when string) {
		for name, w := range want {
			got, err := s.GetMeta(ctx, name)
			if err != nil || !bytes.Equal(got, w) {
				t.Fatalf("%s: meta %q: %d B, %v; want %d B", when, name, len(got), err, len(w))
			}
		}
	}
	t.Logf("%d compactions", s.Compactions())
	check(s, "running")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = OpenSSD(cfg); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if r := s.Recovery(); r.IndexRebuilt {
		t.Errorf("reopen rebuilt the index: %+v", r)
	}
	check(s, "reopened")
}
