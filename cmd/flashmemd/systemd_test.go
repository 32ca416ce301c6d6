package main_test

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// needTool finds a helper program; CI installs it (scripts/test.sh), so
// there it must exist.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not installed", name)
		}
		t.Skipf("%s is not installed", name)
	}
	return p
}

// Under systemd the daemon reports READY=1 once it serves and STOPPING=1 on
// SIGTERM, on the socket NOTIFY_SOCKET names.
func TestSdNotify(t *testing.T) {
	dir := t.TempDir()
	ns := filepath.Join(dir, "notify.sock")
	pc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: ns, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cfgPath := filepath.Join(dir, "flashmemd.toml")
	os.WriteFile(cfgPath, []byte(testConfig), 0o644)
	cmd := exec.Command(binary, "--config", cfgPath, "--socket", filepath.Join(dir, "fm.sock"), "--data-dir", filepath.Join(dir, "data"), "--metrics", "off")
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+ns, "WATCHDOG_USEC=200000", "WATCHDOG_PID=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	got := map[string]bool{}
	buf := make([]byte, 256)
	deadline := time.Now().Add(15 * time.Second)
	for !(got["READY=1"] && got["WATCHDOG=1"]) {
		pc.SetReadDeadline(deadline)
		n, err := pc.Read(buf)
		if err != nil {
			t.Fatalf("notifications so far %v: %v", got, err)
		}
		got[string(buf[:n])] = true
	}
	cmd.Process.Signal(syscall.SIGTERM)
	for !got["STOPPING=1"] {
		pc.SetReadDeadline(time.Now().Add(15 * time.Second))
		n, err := pc.Read(buf)
		if err != nil {
			t.Fatalf("no STOPPING=1 after SIGTERM (got %v): %v", got, err)
		}
		got[string(buf[:n])] = true
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
}

// With socket activation the daemon serves on the listener systemd passes
// and ignores --socket.
func TestSocketActivation(t *testing.T) {
	activate := needTool(t, "systemd-socket-activate")
	dir := t.TempDir()
	sock := filepath.Join(dir, "activated.sock")
	cfgPath := filepath.Join(dir, "flashmemd.toml")
	os.WriteFile(cfgPath, []byte(testConfig), 0o644)
	cmd := exec.Command(activate, "-l", sock, binary, "--config", cfgPath, "--socket", filepath.Join(dir, "unused.sock"), "--data-dir", filepath.Join(dir, "data"), "--metrics", "off")
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Log(log.String())
		}
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i > 200 {
			t.Fatal("systemd-socket-activate did not create the socket")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c := dial(t, sock)
	if _, err := c.Ping(context.Background(), []byte("hi")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "unused.sock")); err == nil {
		t.Fatal("the daemon created its own socket despite activation")
	}
}
