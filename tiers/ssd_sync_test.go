package tiers

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A Sync that starts while another Sync's fdatasync of the same segment is in
// flight must not return before that fdatasync covered the writes it is
// asked about: it used to see the segment marked clean (the flag was cleared
// before the fdatasync ran) and return at once, so a replica could ack pages
// that were not yet durable.
func TestSyncWaitsForTheSyncInFlight(t *testing.T) {
	s, err := OpenSSD(SSDConfig{Dir: t.TempDir(), GCInterval: -1, MemTableSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	if err := s.Put(ctx, PageID{Session: 1, Page: 0}, 1, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}

	entered, release := make(chan struct{}), make(chan struct{})
	var synced int
	old := syncFile
	syncFile = func(f *os.File) error {
		if synced++; synced == 1 {
			close(entered)
			<-release
		}
		return old(f)
	}
	defer func() { syncFile = old }()

	first := make(chan error, 1)
	go func() { first <- s.Sync() }()
	<-entered // the first fdatasync is in flight, covering the Put
	second := make(chan error, 1)
	go func() { second <- s.Sync() }()
	early := false
	select {
	case err := <-second:
		early = true
		second <- err
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	for _, c := range []chan error{first, second} {
		if err := <-c; err != nil {
			t.Fatal(err)
		}
	}
	if early {
		t.Fatal("second Sync returned while the fdatasync covering the write was still running")
	}
	if synced != 1 {
		t.Errorf("%d fdatasyncs for one write, want 1 (the second Sync is covered by the first)", synced)
	}
}

// Concurrent writers that each sync their own write share fdatasyncs (group
// commit), every Sync returns only after an fdatasync that started after its
// write finished, and an fdatasync error reaches the callers it covers.
func TestConcurrentSyncsAreGrouped(t *testing.T) {
	s, err := OpenSSD(SSDConfig{Dir: t.TempDir(), GCInterval: -1, MemTableSize: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var writes, covered, rounds atomic.Int64
	var fail atomic.Pointer[error]
	old := syncFile
	syncFile = func(f *os.File) error {
		at := writes.Load()
		rounds.Add(1)
		time.Sleep(5 * time.Millisecond)
		if e := fail.Load(); e != nil {
			return *e
		}
		if err := old(f); err != nil {
			return err
		}
		for c := covered.Load(); c < at && !covered.CompareAndSwap(c, at); c = covered.Load() {
		}
		return nil
	}
	defer func() { syncFile = old }()

	const callers = 32
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Counted before the write: an fdatasync that covers it reads its
			// count after the write finished, so at >= w.
			w := writes.Add(1)
			if err := s.Put(context.Background(), PageID{Session: 1, Page: uint32(i)}, 1, make([]byte, 4096)); err != nil {
				t.Error(err)
				return
			}
			if err := s.Sync(); err != nil {
				t.Error(err)
				return
			}
			if c := covered.Load(); c < w {
				t.Errorf("Sync returned after write %d with only %d covered", w, c)
			}
		}()
	}
	wg.Wait()
	if r := rounds.Load(); r >= callers/2 {
		t.Fatalf("%d fdatasyncs for %d concurrent callers: not grouped", r, callers)
	}

	boom := errors.New("disk gone")
	fail.Store(&boom)
	if err := s.Put(context.Background(), PageID{Session: 2, Page: 0}, 1, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	if err := s.Sync(); !errors.Is(err, boom) {
		t.Fatalf("Sync error: %v, want %v", err, boom)
	}
}
