package tiers

import (
	"context"
	"os"
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
