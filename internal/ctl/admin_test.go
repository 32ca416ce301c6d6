package ctl

import (
	"encoding/json"
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
	if _, err := run(t, sock, "inspect", "demo"); err == nil || !strings.Contains(err.Error(), "unknown session") {
		t.Fatalf("inspect after evict: %v", err)
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
