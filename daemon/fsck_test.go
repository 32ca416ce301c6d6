package daemon

import (
	"bytes"
	"context"
	"math/rand/v2"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// fsck checks that every page a persisted session's metadata names is
// stored: a page the index lost is reported (and exit 1), as VERIFY and
// CYCLE report it, not passed over because no stored record failed.
func TestFsckReportsPagesMetadataNames(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(t, dir)
	rd := start(t, cfg)
	c := dial(t, cfg.Socket)
	ctx := context.Background()
	l := testLayout(96)
	op, err := c.Open(ctx, &proto.Open{Name: "f", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	appendAll(t, c, op.Session, &l, 3, 0, 3*uint64(l.ChunksPerPage), rand.New(rand.NewPCG(1, 2)))
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatal(err)
	}
	c.Close()
	rd.shutdown(t)
	fsck := func() (string, int) {
		var out, errb bytes.Buffer
		code := Fsck([]string{"--data-dir", cfg.DataDir}, func(string) string { return "" }, &out, &errb)
		return out.String() + errb.String(), code
	}
	if out, code := fsck(); code != 0 {
		t.Fatalf("clean: exit %d\n%s", code, out)
	}
	ssd, err := tiers.OpenSSD(tiers.SSDConfig{Dir: filepath.Join(cfg.DataDir, "ssd"), GCInterval: -1, MergeMeta: mergeMeta})
	if err != nil {
		t.Fatal(err)
	}
	if err := ssd.Delete(ctx, tiers.PageID{Session: op.Session, Page: 1}); err != nil {
		t.Fatal(err)
	}
	ssd.Close()
	out, code := fsck()
	if code != 1 || !strings.Contains(out, "pages not stored: 1 (missing)") {
		t.Fatalf("a page the metadata names is gone: exit %d\n%s", code, out)
	}
}
