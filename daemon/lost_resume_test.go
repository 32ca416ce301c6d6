package daemon

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
)

// RESUME of a session whose journal records were lost (a segment cut
// short under an intact index) says so and what to do, not just "no
// session named"; once the name is taken again, the plain answer returns.
func TestResumeLostSessionSaysLost(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	ctx := context.Background()
	l := testLayout(8)
	persisted := func(c *proto.Client, name string, seed uint64) {
		t.Helper()
		op, err := c.Open(ctx, &proto.Open{Name: name, Persist: true, Layout: l})
		if err != nil {
			t.Fatal(err)
		}
		appendAll(t, c, op.Session, &l, 1, 0, 2*uint64(l.ChunksPerPage), rand.New(rand.NewPCG(seed, seed)))
		if err := c.Persist(ctx, op.Session); err != nil {
			t.Fatal(err)
		}
		if err := c.CloseSession(ctx, op.Session, false); err != nil {
			t.Fatal(err)
		}
	}
	rd := start(t, cfg)
	c := dial(t, cfg.Socket)
	persisted(c, "kept", 1)
	persisted(c, "lost", 2)
	c.Close()
	rd.shutdown(t)
	// Cut the journal at the first record that names "lost" (its
	// metadata): everything it held from there on is gone, while the
	// index still names it.
	seg := filepath.Join(cfg.DataDir, "ssd", "pages", "00000000.seg")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte(`lost`))
	if i < 0 {
		t.Fatal("no record names the session")
	}
	cut := i - i%512
	for cut > 0 && string(b[cut:cut+2]) != "FM" {
		cut -= 512
	}
	if err := os.Truncate(seg, int64(cut)); err != nil {
		t.Fatal(err)
	}
	rd = start(t, cfg)
	defer rd.shutdown(t)
	if lm := rd.d.store.SSD().Recovery().LostMetas; len(lm) != 1 || lm[0] != "lost" {
		t.Fatalf("the start reported lost sessions %v, want [lost]: %v", lm, rd.d.store.SSD().Recovery())
	}
	c = dial(t, cfg.Socket)
	if _, err := c.Resume(ctx, "kept"); err != nil {
		t.Fatalf("RESUME of the intact session: %v", err)
	}
	_, err = c.Resume(ctx, "lost")
	if proto.CodeOf(err) != proto.CodeUnknownSession {
		t.Fatalf("RESUME of the lost session: %v, want UNKNOWN_SESSION", err)
	}
	for _, want := range []string{`"lost"`, "lost from the SSD journal", "flashmemd fsck --data-dir " + cfg.DataDir, "replica or a backup"} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("RESUME of the lost session: %q lacks %q", err, want)
		}
	}
	_, err = c.Resume(ctx, "never")
	if err == nil || strings.Contains(err.Error(), "lost") {
		t.Fatalf("RESUME of a name never used: %v", err)
	}
	// The name taken again and deleted: no longer "lost".
	op, err := c.Open(ctx, &proto.Open{Name: "lost", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.CloseSession(ctx, op.Session, true); err != nil {
		t.Fatal(err)
	}
	_, err = c.Resume(ctx, "lost")
	if proto.CodeOf(err) != proto.CodeUnknownSession || strings.Contains(err.Error(), "journal") {
		t.Fatalf("RESUME after the name was reused and deleted: %v", err)
	}
}
