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

// daemon starts the real flashmemd on dir with args and waits until it
// answers; it is stopped with SIGTERM when the test ends.
func daemon(t *testing.T, dir string, args ...string) (socket string) {
	t.Helper()
	socket = filepath.Join(dir, "fm.sock")
	all := append([]string{"--socket", socket, "--data-dir", filepath.Join(dir, "data"), "--metrics", "off", "--host-budget", "256MiB", "--log-level", "warn"}, args...)
	cmd := exec.Command(filepath.Join(binDir, "flashmemd"), all...)
	cmd.Env = cleanEnv("NOTIFY_SOCKET=")
	var log strings.Builder
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	})
	if r := ctl(t, dir, "--socket", socket, "wait", "--for", "30s"); r.err != nil {
		t.Fatalf("flashmemd did not come up: %v\n%s%s", r.err, r.stderr, log.String())
	}
	return socket
}

type result struct {
	stdout, stderr string
	err            error
}

func runBin(t *testing.T, dir, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, name), args...)
	cmd.Dir = dir
	cmd.Env = cleanEnv("NOTIFY_SOCKET=")
	var o, e strings.Builder
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	return result{o.String(), e.String(), err}
}

func ctl(t *testing.T, dir string, args ...string) result {
	return runBin(t, dir, "flashmemctl", args...)
}

// TestUserErrors drives the binaries into each error a user can cause and
// checks that the message names the fix, in the flag's or key's own name.
func TestUserErrors(t *testing.T) {
	dir := t.TempDir()
	sock := daemon(t, dir)
	missing := filepath.Join(dir, "nothing-here.sock")
	stale := filepath.Join(dir, "stale.sock")
	staleSocket(t, stale)
	cfgTable := filepath.Join(dir, "table.toml")
	cfgKey := filepath.Join(dir, "key.toml")
	write(t, cfgTable, "[nosuch]\nx = 1\n")
	write(t, cfgKey, "[host]\nbudget_bytes = 1\nbudget = 2\n")
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	empty := t.TempDir() // a working directory where relative defaults resolve to nothing

	cases := []struct {
		name    string
		bin     string
		args    []string
		want    []string // all must appear in stderr
		notWant []string
		code    int // expected exit code
	}{
		{"no daemon: socket missing", "flashmemctl", []string{"--socket", missing, "status"},
			[]string{"no flashmemd", "start it", "--socket", "FLASHMEMD_SOCKET"}, []string{"proto:", "dial unix"}, 1},
		{"no daemon: stale socket", "flashmemctl", []string{"--socket", stale, "sessions"},
			[]string{"nothing listens", "start it", "--socket"}, []string{"proto:"}, 1},
		{"unknown session", "flashmemctl", []string{"--socket", sock, "inspect", "nosuch"},
			[]string{`no session "nosuch"`, "flashmemctl sessions"}, []string{"no live session"}, 1},
		{"evict unknown session", "flashmemctl", []string{"--socket", sock, "evict", "nosuch"},
			[]string{`no session "nosuch"`, "flashmemctl sessions"}, nil, 1},
		{"inspect without a session", "flashmemctl", []string{"--socket", sock, "inspect"},
			[]string{"usage: flashmemctl inspect SESSION", "flashmemctl sessions"}, nil, 1},
		{"gen --tokens out of range", "flashmemctl", []string{"gen", "--tokens", "500"},
			[]string{"--tokens 500", "1024 to 2097152"}, []string{"Tokens 500"}, 1},
		{"gen relative filler default", "flashmemctl", []string{"gen", "--tokens", "4096", "--out", filepath.Join(dir, "ds.jsonl")},
			[]string{"--filler", "does not exist", "relative to the working directory", "pass --filler DIR"}, nil, 1},
		{"train relative text default", "flashmemctl", []string{"train", "--out", filepath.Join(dir, "m.safetensors")},
			[]string{"--text", "pass --text DIR"}, nil, 1},
		{"eval without --data", "flashmemctl", []string{"eval"},
			[]string{"--data FILE.jsonl", "flashmemctl gen"}, nil, 1},
		{"eval --data missing", "flashmemctl", []string{"eval", "--data", filepath.Join(dir, "none.jsonl")},
			[]string{"--data " + filepath.Join(dir, "none.jsonl"), "no such file", "flashmemctl gen --out"}, nil, 1},
		{"demo --tokens too small", "flashmemctl", []string{"--socket", sock, "demo", "--tokens", "4096"},
			[]string{"--tokens 4096", "use --tokens 10240 or more"}, nil, 1},
		{"demo --needles too many", "flashmemctl", []string{"--socket", sock, "demo", "--tokens", "16384", "--needles", "20"},
			[]string{"--needles 20", "use --needles 3"}, nil, 1},
		{"data dir in use", "flashmemd", []string{"--socket", filepath.Join(dir, "second.sock"), "--data-dir", filepath.Join(dir, "data"), "--metrics", "off"},
			[]string{"is used by another flashmemd (pid", "--data-dir", "FLASHMEMD_DATA_DIR"}, []string{"Badger", "badger", "ready to serve"}, 1},
		{"size with a bad unit", "flashmemd", []string{"--host-budget", "8X"},
			[]string{`"8X" is not a size`, "GiB", "--host-budget"}, nil, 2},
		{"size with a bad unit and B", "flashmemd", []string{"--host-budget", "8XB"},
			[]string{`"8XB" is not a size`, "MiB"}, nil, 2},
		{"unknown TOML table", "flashmemd", []string{"--config", cfgTable},
			[]string{"line 1: unknown table [nosuch]", "[host]", "systemd/flashmemd.toml"}, []string{"missing table"}, 2},
		{"unknown TOML key", "flashmemd", []string{"--config", cfgKey},
			[]string{"line 3: unknown key host.budget", "systemd/flashmemd.toml"}, nil, 2},
		{"metrics port taken", "flashmemd", []string{"--socket", filepath.Join(dir, "m.sock"), "--data-dir", filepath.Join(dir, "mdata"), "--metrics", busy.Addr().String()},
			[]string{busy.Addr().String() + " is taken", "--metrics", "off"}, []string{"ready to serve"}, 1},
		{"flashmemd stray argument", "flashmemd", []string{"start"},
			[]string{"flags only", "flashmemd --help"}, nil, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runBin(t, empty, c.bin, c.args...)
			code := 0
			if ee, ok := r.err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			} else if r.err != nil {
				t.Fatal(r.err)
			}
			if code != c.code {
				t.Errorf("exit code %d, want %d", code, c.code)
			}
			for _, w := range c.want {
				if !strings.Contains(r.stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, r.stderr)
				}
			}
			for _, w := range c.notWant {
				if strings.Contains(r.stderr, w) {
					t.Errorf("stderr has %q:\n%s", w, r.stderr)
				}
			}
		})
	}
	// The socket path is named once, not three times.
	r := ctl(t, empty, "--socket", missing, "status")
	if n := strings.Count(r.stderr, missing); n != 1 {
		t.Errorf("the path appears %d times:\n%s", n, r.stderr)
	}
	// An empty list is [], not null; a second demo --keep says how to clear
	// the first.
	r = ctl(t, empty, "--socket", sock, "--json", "sessions")
	if r.err != nil || !strings.Contains(r.stdout, `"sessions": []`) {
		t.Errorf("sessions --json: %v %q", r.err, r.stdout)
	}
	if r = ctl(t, empty, "--socket", sock, "demo", "--tokens", "16384", "--cycles", "2", "--keep"); r.err != nil {
		t.Fatalf("demo --keep: %v\n%s", r.err, r.stderr)
	}
	r = ctl(t, empty, "--socket", sock, "demo", "--tokens", "16384", "--cycles", "2", "--keep")
	if r.err == nil || !strings.Contains(r.stderr, "flashmemctl delete demo") {
		t.Errorf("second demo --keep: %v\n%s", r.err, r.stderr)
	}
}

// staleSocket leaves a socket file nothing listens on, as a daemon that was
// killed does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestVersionAndUsage: --version on both binaries names the version, the
// commit and the CUDA tag; the usage of flashmemd lists every flag and every
// environment variable it reads.
func TestVersionAndUsage(t *testing.T) {
	dir := t.TempDir()
	for _, bin := range []string{"flashmemd", "flashmemctl"} {
		r := runBin(t, dir, bin, "--version")
		out := r.stdout + r.stderr
		if r.err != nil || !strings.HasPrefix(out, bin+" ") || !strings.Contains(out, "commit") || !strings.Contains(out, "CUDA") {
			t.Errorf("%s --version: %v %q", bin, r.err, out)
		}
	}
	r := runBin(t, dir, "flashmemd", "--help")
	if r.err != nil {
		t.Fatalf("flashmemd --help: %v", r.err)
	}
	for _, w := range []string{"-config", "-socket", "-data-dir", "-metrics", "-host-budget", "-log-level", "-version",
		"FLASHMEMD_CONFIG", "FLASHMEMD_SOCKET", "FLASHMEMD_DATA_DIR", "FLASHMEMD_METRICS", "FLASHMEMD_HOST_BUDGET", "FLASHMEMD_LOG_LEVEL"} {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("flashmemd --help lacks %s:\n%s", w, r.stderr)
		}
	}
	if first := strings.SplitN(r.stderr, "\n", 3); !strings.Contains(first[0]+first[1], "--host-budget") || !strings.Contains(first[0]+first[1], "--log-level") {
		t.Errorf("usage line lacks flags: %q", first[:2])
	}
	r = runBin(t, dir, "flashmemctl", "--help")
	if r.err != nil || !strings.Contains(r.stdout, "--socket") || !strings.Contains(r.stdout, "FLASHMEMD_SOCKET") {
		t.Errorf("flashmemctl --help: %v\n%s", r.err, r.stdout)
	}
}

// TestDemoScript: scripts/demo.sh parses, and keeps its promises in the
// text (temporary socket, data dir and metrics port; cleanup on exit; no
// go-nvml warnings). Running it rebuilds the cgo packages with other flags,
// too slow for every CI run; it is run by hand (README quick start).
func TestDemoScript(t *testing.T) {
	path := filepath.Join(repoRoot, "scripts", "demo.sh")
	if out, err := exec.Command("bash", "-n", path).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"mktemp -d", "trap cleanup EXIT", `--socket "$sock"`, `--data-dir "$tmp/data"`, `--metrics "127.0.0.1:$port"`,
		"-Wno-deprecated-declarations", "go build -v", "flashmemctl --socket \"$sock\" wait"} {
		if !strings.Contains(string(b), w) {
			t.Errorf("scripts/demo.sh lacks %q", w)
		}
	}
}

// TestVerifyExitCode: verify exits 0 on a sound session and 3 on damage,
// with and without --json, naming the way out.
func TestVerifyExitCode(t *testing.T) {
	dir := t.TempDir()
	sock := daemon(t, dir)
	for _, args := range [][]string{
		{"demo", "--tokens", "16384", "--cycles", "2", "--keep"},
		{"evict", "demo"},
		{"verify", "demo"},
	} {
		if r := ctl(t, dir, append([]string{"--socket", sock}, args...)...); r.err != nil {
			t.Fatalf("%v: %v\n%s", args, r.err, r.stderr)
		}
	}
	// Flip one body byte of every page record (magic "FMPG" on a 512-byte
	// boundary, tiers/journal.go).
	segs, _ := filepath.Glob(filepath.Join(dir, "data", "ssd", "pages", "*.seg"))
	n := 0
	for _, seg := range segs {
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(seg, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		for off := 0; off+200 < len(b); off += 512 {
			if string(b[off:off+4]) == "FMPG" {
				if _, err := f.WriteAt([]byte{b[off+148] ^ 0xFF}, int64(off+148)); err != nil {
					t.Fatal(err)
				}
				n++
			}
		}
		f.Close()
	}
	if n == 0 {
		t.Fatal("no page records in the segment files")
	}
	for _, json := range []bool{false, true} {
		args := []string{"--socket", sock, "verify", "demo"}
		if json {
			args = append([]string{"--json"}, args...)
		}
		r := ctl(t, dir, args...)
		ee, ok := r.err.(*exec.ExitError)
		if !ok || ee.ExitCode() != 3 {
			t.Errorf("verify (json %v) of a damaged session: %v, want exit 3\n%s%s", json, r.err, r.stdout, r.stderr)
		}
		if !strings.Contains(r.stderr, "flashmemctl delete demo") || !strings.Contains(r.stdout, "checksum") {
			t.Errorf("verify (json %v) output:\n%s%s", json, r.stdout, r.stderr)
		}
	}
}
