package ctl

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flashmemory/flashmemory/proto"
)

// The operator commands against a real daemon: demo leaves a persisted
// session behind (--keep); status, sessions and inspect show it; evict moves
// it out of memory; inspect then says so.
func TestAdminCommands(t *testing.T) {
	dir := t.TempDir()
	cfg := testDaemonConfig(t, dir)
	stop := inProcess(t, cfg)
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	sock := "--socket=" + cfg.Socket
	out, err := run(t, sock, "demo", "--tokens", "32768", "--cycles", "3", "--needles", "3", "--keep")
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, out)
	}
	if !strings.Contains(out, "planted-chunk recall") || !strings.Contains(out, "KV footprint") {
		t.Fatalf("demo printed no results:\n%s", out)
	}
	out, err = run(t, sock, "status")
	if err != nil || !strings.Contains(out, "sessions 1") || !strings.Contains(out, "reserve") {
		t.Fatalf("status: %v\n%s", err, out)
	}
	out, err = run(t, sock, "--json", "sessions")
	if err != nil {
		t.Fatal(err)
	}
	var ss struct {
		Sessions []struct {
			Name    string `json:"name"`
			Chunks  uint64 `json:"chunks"`
			Persist bool   `json:"persist"`
		} `json:"sessions"`
	}
	if err := json.Unmarshal([]byte(out), &ss); err != nil || len(ss.Sessions) != 1 || ss.Sessions[0].Name != "demo" || !ss.Sessions[0].Persist || ss.Sessions[0].Chunks != 8192+3*16 {
		t.Fatalf("sessions: %v %+v\n%s", err, ss, out)
	}
	out, err = run(t, sock, "inspect", "demo")
	if err != nil || !strings.Contains(out, `session 1 "demo"`) || !strings.Contains(out, "resident set") {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	out, err = run(t, sock, "evict", "demo")
	if err != nil || !strings.Contains(out, "evicted session [1]") {
		t.Fatalf("evict: %v\n%s", err, out)
	}
	// Out of memory, the persisted session is still listed, inspectable,
	// evictable (nothing to do) and verifiable.
	out, err = run(t, sock, "sessions")
	if err != nil || !strings.Contains(out, "demo") || !strings.Contains(out, "on-ssd") {
		t.Fatalf("sessions after evict: %v\n%s", err, out)
	}
	out, err = run(t, sock, "inspect", "demo")
	if err != nil || !strings.Contains(out, "state on-ssd") || !strings.Contains(out, "ssd 129") {
		t.Fatalf("inspect after evict: %v\n%s", err, out)
	}
	out, err = run(t, sock, "evict", "demo")
	if err != nil || !strings.Contains(out, "already out of memory") {
		t.Fatalf("evict again: %v\n%s", err, out)
	}
	out, err = run(t, sock, "verify", "demo")
	if err != nil || !strings.Contains(out, "129 pages, 129 verified") || !strings.Contains(out, " 0 bad") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	out, err = run(t, sock, "resume", "demo")
	if err != nil || !strings.Contains(out, "is in memory") {
		t.Fatalf("resume: %v\n%s", err, out)
	}
	out, err = run(t, sock, "sessions")
	// In memory again: attached until the daemon sees resume's connection
	// end, then detached.
	if err != nil || !strings.Contains(out, "demo") || strings.Contains(out, "on-ssd") {
		t.Fatalf("sessions after resume: %v\n%s", err, out)
	}
	out, err = run(t, sock, "persist", "demo")
	if err != nil || !strings.Contains(out, "persisted session demo") {
		t.Fatalf("persist: %v\n%s", err, out)
	}
	// A page whose bytes change on disk fails VERIFY with ErrDamaged.
	if _, err := run(t, sock, "evict", "demo"); err != nil {
		t.Fatal(err)
	}
	corruptSegment(t, cfg.DataDir)
	out, err = run(t, sock, "verify", "demo")
	if !errors.Is(err, ErrDamaged) || !strings.Contains(out, "129 bad") || !strings.Contains(out, "checksum") {
		t.Fatalf("verify of a damaged session: %v\n%s", err, out)
	}
	out, err = run(t, sock, "delete", "demo")
	if err != nil || !strings.Contains(out, "deleted session demo") {
		t.Fatalf("delete: %v\n%s", err, out)
	}
	out, err = run(t, sock, "--json", "sessions")
	if err != nil || !strings.Contains(out, `"sessions": []`) {
		t.Fatalf("sessions after delete: %v\n%s", err, out)
	}
	for _, cmd := range []string{"inspect", "evict", "verify", "delete", "resume", "persist"} {
		_, err := run(t, sock, cmd, "nosuch")
		if err == nil || !strings.Contains(err.Error(), `no session "nosuch"`) || !strings.Contains(err.Error(), "flashmemctl sessions") {
			t.Errorf("%s nosuch: %v", cmd, err)
		}
		_, err = run(t, sock, cmd)
		if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "usage: flashmemctl "+cmd+" ") {
			t.Errorf("%s without a session: %v", cmd, err)
		}
	}
}

// corruptSegment flips one body byte of every page record (magic "FMPG" at
// a 512-byte boundary: tiers/journal.go) in every SSD segment file under
// dir, so every live page fails its checksum wherever compaction put it;
// metadata records are left alone.
func corruptSegment(t *testing.T, dir string) {
	t.Helper()
	segs, _ := filepath.Glob(filepath.Join(dir, "ssd", "pages", "*.seg"))
	if len(segs) == 0 {
		t.Fatalf("no segment files under %s/ssd/pages", dir)
	}
	n := 0
	for _, seg := range segs {
		f, err := os.OpenFile(seg, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(f)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+48+100 < len(b); off += 512 {
			if string(b[off:off+4]) == "FMPG" {
				if _, err := f.WriteAt([]byte{b[off+48+100] ^ 0xFF}, int64(off+48+100)); err != nil {
					t.Fatal(err)
				}
				n++
			}
		}
		f.Close()
	}
	if n == 0 {
		t.Fatal("no page records found in the segment files")
	}
}

// The GPU section of `flashmemctl status`: absent without GPUs, one line per device and
// per GPU-scoring model otherwise, fallbacks called out.
func TestWriteGPUStatus(t *testing.T) {
	var b strings.Builder
	writeGPUStatus(&b, &proto.StatusReply{})
	if b.Len() != 0 {
		t.Fatalf("no GPUs printed %q", b.String())
	}
	writeGPUStatus(&b, &proto.StatusReply{
		PinnedMirror: true,
		GPUs: []proto.GPUStatus{
			{Device: 0, Name: "NVIDIA H100 80GB HBM3", ReserveBudgetBytes: 38 << 30, ReserveUsedBytes: 3 << 30, Exportable: true},
			{Device: 1, Name: "old card", ReserveBudgetBytes: 1 << 30},
		},
		Scoring: []proto.GPUScoring{{Model: "fm-ds-v4", Device: 0, GPUBatches: 120, CPUFallbacks: 2, LastError: "device lost"}},
	})
	out := b.String()
	for _, want := range []string{"host mirror pinned", "NVIDIA H100 80GB HBM3", "3.0 GiB", "38.0 GiB", "legacy IPC only",
		`model "fm-ds-v4" scores on GPU 0: 120 batches, 2 fell back to the CPU (last: device lost)`} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}
