package main_test

// The first hour of a new user, with the real binaries: the README's
// walk-through, run line by line as written, and the errors a user can cause,
// each of which must say what to do next.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

var (
	repoRoot string
	binDir   string
)

func TestMain(m *testing.M) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	repoRoot = root
	dir, err := os.MkdirTemp("", "flashmem-firsthour")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	// Plain builds, as a user makes them (the race detector would make the
	// 128K-token demo slow; the daemon's own tests run under -race).
	cmd := exec.Command("go", "build", "-o", binDir+"/", "./cmd/flashmemd", "./cmd/flashmemctl")
	cmd.Dir = repoRoot
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the binaries: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cleanEnv is the test's environment without FLASHMEMD_* variables, so a
// developer's own settings do not leak into the test.
func cleanEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLASHMEMD_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// firstHour reads the walk-through block of README.md.
func firstHour(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "<!-- first-hour: begin -->")
	block, _, ok2 := strings.Cut(rest, "<!-- first-hour: end -->")
	if !ok || !ok2 {
		t.Fatal("README.md has no first-hour block")
	}
	var lines []string
	for _, l := range strings.Split(block, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "```") || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
	}
	return lines
}

type step struct {
	line string
	out  string
	rc   int
}

// TestFirstHour runs every line of the README's walk-through in one bash, as
// a user pasting it would, and checks each line's exit status and what the
// important ones print.
func TestFirstHour(t *testing.T) {
	lines := firstHour(t)
	tmp := t.TempDir()
	work := filepath.Join(tmp, "work")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	var script strings.Builder
	script.WriteString("cd " + strconv.Quote(work) + "\n")
	for i, l := range lines {
		run := l
		if strings.HasPrefix(l, "go build ") {
			// The build runs at the repository root, writing into the
			// walk-through's own bin/.
			run = fmt.Sprintf("(cd %s && %s)", strconv.Quote(repoRoot), strings.Replace(l, "-o bin/", "-o "+strconv.Quote(work+"/bin")+"/", 1))
		}
		fmt.Fprintf(&script, "echo '@@CMD %d'\n%s\necho \"@@RC %d $?\"\n", i, run, i)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Env = cleanEnv("TMPDIR=" + tmp)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	t0 := time.Now()
	err := cmd.Run()
	// Background daemons share bash's process group: none outlives the test.
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	t.Logf("walk-through: %d lines in %.1fs", len(lines), time.Since(t0).Seconds())
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out.String())
	}
	steps := parseSteps(t, out.String(), lines)
	for _, s := range steps {
		if s.rc != 0 {
			t.Errorf("%q exited %d:\n%s", s.line, s.rc, s.out)
		}
	}
	// What the lines that matter print; n counts the lines with that prefix.
	checks := []struct {
		prefix string
		n      int
		want   []string
	}{
		{"bin/flashmemctl demo --tokens 16384", 0, []string{"needles", "planted-chunk recall"}},
		{"bin/flashmemctl demo --tokens 32768", 0, []string{"planted-chunk recall"}},
		{"bin/flashmemctl demo --tokens 131072", 0, []string{"planted-chunk recall"}},
		{"bin/flashmemctl sessions", 0, []string{"demo", "tached"}}, // attached until the daemon sees demo's connection end
		{"bin/flashmemctl sessions", 1, []string{"demo", "on-ssd"}},
		{"bin/flashmemctl inspect demo", 0, []string{`"demo"`, "state on-ssd"}},
		{"bin/flashmemctl verify demo", 0, []string{"verified", " 0 bad"}},
		{"bin/flashmemctl delete demo", 0, []string{"deleted session demo"}},
		{"bin/flashmemctl sessions", 2, []string{"no sessions"}},
	}
	for _, c := range checks {
		s := nthStep(steps, c.prefix, c.n)
		if s == nil {
			t.Errorf("the walk-through has no %d-th line %q", c.n+1, c.prefix)
			continue
		}
		for _, w := range c.want {
			if !strings.Contains(s.out, w) {
				t.Errorf("%q (%d-th) printed no %q:\n%s", c.prefix, c.n+1, w, s.out)
			}
		}
	}
	// Tables fit 100 columns.
	for _, s := range steps {
		if strings.HasPrefix(s.line, "bin/flashmemctl sessions") || strings.HasPrefix(s.line, "bin/flashmemctl status") {
			for _, l := range strings.Split(s.out, "\n") {
				if n := len([]rune(l)); n > 100 {
					t.Errorf("%q printed a line of %d columns: %q", s.line, n, l)
				}
			}
		}
	}
	if t.Failed() {
		t.Logf("whole output:\n%s", out.String())
	}
}

func parseSteps(t *testing.T, out string, lines []string) []step {
	steps := make([]step, len(lines))
	for i := range steps {
		steps[i] = step{line: lines[i], rc: -1}
	}
	cur := -1
	var buf strings.Builder
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	rcLine := regexp.MustCompile(`^@@RC (\d+) (\d+)$`)
	for sc.Scan() {
		l := sc.Text()
		if n, ok := strings.CutPrefix(l, "@@CMD "); ok {
			cur, _ = strconv.Atoi(n)
			buf.Reset()
			continue
		}
		if m := rcLine.FindStringSubmatch(l); m != nil {
			i, _ := strconv.Atoi(m[1])
			rc, _ := strconv.Atoi(m[2])
			steps[i].rc, steps[i].out = rc, buf.String()
			cur = -1
			continue
		}
		if cur >= 0 {
			buf.WriteString(l + "\n")
		}
	}
	return steps
}

func nthStep(steps []step, prefix string, n int) *step {
	for i := range steps {
		if strings.HasPrefix(steps[i].line, prefix) {
			if n == 0 {
				return &steps[i]
			}
			n--
		}
	}
	return nil
}
