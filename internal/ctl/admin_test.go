package ctl

import (
	"encoding/json"
	"strings"
	"testing"
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
