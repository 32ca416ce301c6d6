package ctl

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/daemon"
	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/models"
	"github.com/flashmemory/flashmemory/proto"
)

// fillerDir is the shared haystack relative to this package's directory.
var fillerDir = filepath.Join("..", "..", eval.DefaultFillerDir)

// inProcess starts a daemon from cfg on its socket and returns a stop
// function; the daemon is the real one (daemon.New, Run), in this process.
func inProcess(t testing.TB, cfg daemon.Config) func() error {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	d, err := daemon.New(cfg, daemon.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))))
	if err != nil {
		t.Fatalf("daemon.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	// Run listens before it returns control to clients; wait for the socket.
	for i := 0; ; i++ {
		if _, err := os.Stat(cfg.Socket); err == nil {
			break
		}
		if i > 500 {
			t.Fatal("daemon socket did not appear")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return func() error {
		cancel()
		return errors.Join(<-done, d.Close())
	}
}

func testDaemonConfig(t testing.TB, dir string) daemon.Config {
	cfg := daemon.DefaultConfig()
	cfg.Socket = filepath.Join(dir, "fm.sock")
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Metrics = "off"
	cfg.LogLevel = "error"
	cfg.Host.BudgetBytes = 64 << 20
	cfg.ShutdownTimeout = daemon.Duration(10 * time.Second)
	return cfg
}

// run executes flashmemctl with args and returns its stdout.
func run(t testing.TB, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	cmd := Command(&out, &errb)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	if err != nil {
		t.Logf("flashmemctl %s: %v\nstderr: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), err
}

// TestGenEvalThroughDaemon generates a small dataset, evaluates it through
// an in-process flashmemd over its socket, and checks the JSON report: one
// object per task, then "overall"; the oracle finds everything, recency
// little; the footprint stays within its target; the daemon-backed recall
// equals the in-process cross-check.
func TestGenEvalThroughDaemon(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "ds.jsonl")
	if _, err := run(t, "gen", "--tokens", "16384", "--records", "1", "--queries", "2", "--seed", "5",
		"--tasks", "single_needle,multi_key,variable_tracking", "--filler", fillerDir, "--out", data); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(t, dir)
	stop := inProcess(t, cfg)
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("daemon: %v", err)
		}
	}()
	out, err := run(t, "--socket", cfg.Socket, "--json", "eval", "--data", data, "--footprint", "0.10", "--modes", "combined,lexical")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("got %d JSON lines, want 3 tasks + overall:\n%s", len(lines), out)
	}
	var objs []evalJSON
	for _, l := range lines {
		var j evalJSON
		if err := json.Unmarshal([]byte(l), &j); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		objs = append(objs, j)
	}
	ov := objs[3]
	if ov.Task != "overall" || ov.Method != "combined" || ov.Questions != 6 {
		t.Fatalf("last object %+v, want the overall combined one over 6 questions", ov)
	}
	if ov.Compare["oracle"].RecallAll != 1 {
		t.Errorf("oracle recall_all %v, want 1", ov.Compare["oracle"].RecallAll)
	}
	if ov.RecallAll < 0.8 || ov.RecallAll < ov.Compare["recency"].RecallAll+0.4 {
		t.Errorf("combined recall_all %v (recency %v): the text model through the daemon should find the needles", ov.RecallAll, ov.Compare["recency"].RecallAll)
	}
	for _, j := range objs {
		if j.Footprint <= 0 || j.Footprint > 0.10+1e-9 {
			t.Errorf("%s: footprint %v outside (0, 0.10]", j.Task, j.Footprint)
		}
	}
	// Cross-check: the same loop in process gives the same recall.
	in, err := run(t, "--json", "eval", "--in-process", "--data", data, "--footprint", "0.10", "--modes", "combined,lexical")
	if err != nil {
		t.Fatal(err)
	}
	il := strings.Split(strings.TrimSpace(in), "\n")
	var ij evalJSON
	if err := json.Unmarshal([]byte(il[len(il)-1]), &ij); err != nil {
		t.Fatal(err)
	}
	if ij.RecallAll != ov.RecallAll || ij.Compare["lexical"].RecallAll != ov.Compare["lexical"].RecallAll {
		t.Errorf("in-process recall_all %v / lexical %v, daemon %v / %v", ij.RecallAll, ij.Compare["lexical"].RecallAll, ov.RecallAll, ov.Compare["lexical"].RecallAll)
	}
	// The table form names every method.
	tab, err := run(t, "--socket", cfg.Socket, "eval", "--data", data, "--modes", "trained", "--baselines", "oracle")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"footprint target 10 %", "trained", "oracle", "overall", "through flashmemd"} {
		if !strings.Contains(tab, w) {
			t.Errorf("table lacks %q:\n%s", w, tab)
		}
	}
}

func TestEvalErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.jsonl")
	if err := os.WriteFile(bad, []byte(`{"id":"a","task":"t","context":"alpha beta gamma","queries":[{"question":"q","answer":"a","evidence":["beta"]}]}`+"\n{not json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"bad line names the line", []string{"eval", "--in-process", "--data", bad}, "line 2"},
		{"footprint out of range", []string{"eval", "--in-process", "--data", bad, "--footprint", "1.5"}, "not in (0, 1]"},
		{"unknown mode", []string{"eval", "--in-process", "--data", bad, "--modes", "bm25"}, "not lexical, trained or combined"},
		{"unknown baseline", []string{"eval", "--in-process", "--data", bad, "--baselines", "lru"}, "not recency, random or oracle"},
		{"no daemon", []string{"--socket", filepath.Join(dir, "none.sock"), "--timeout", "200ms", "eval", "--data", bad}, "start it"},
		{"sim bad churn", []string{"sim", "--churn", "2", "--flashmemd", "/bin/true"}, "churn"},
		{"sim too many cycles", []string{"sim", "--cycles", "300", "--flashmemd", "/bin/true"}, "--cycles 300"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// inProcessLauncher starts each mode's daemon in this process from the
// TOML the simulator writes, through the same config loader flashmemd uses.
func inProcessLauncher(t *testing.T) Launcher {
	return func(_ context.Context, dir, toml, socket string) (func() error, error) {
		path := filepath.Join(dir, "flashmemd.toml")
		if err := os.WriteFile(path, []byte(toml), 0o600); err != nil {
			return nil, err
		}
		cfg, err := daemon.ConfigFromArgs([]string{"--config", path}, func(string) string { return "" }, io.Discard)
		if err != nil {
			return nil, err
		}
		if cfg.Socket != socket {
			t.Errorf("config socket %q, simulator dials %q", cfg.Socket, socket)
		}
		return inProcess(t, cfg), nil
	}
}

// TestSimTiny runs every mode on a tiny workload: every cycle's page
// table must be the trace's previous set plus sink and tail (RunSim fails
// otherwise); lookahead staging loads nothing synchronously, LRU-only loads
// every newly selected page synchronously.
func TestSimTiny(t *testing.T) {
	o := DefaultSimOptions()
	o.Sessions, o.Tokens, o.Cycles, o.Resident, o.Churn = 3, 64*eval.TokensPerPage, 6, 0.2, 0.25
	o.CycleTime = 30 * time.Millisecond
	var progress bytes.Buffer
	res, err := RunSim(context.Background(), o, inProcessLauncher(t), "", t.TempDir(), &progress)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	if len(res) != len(AllSimModes) {
		t.Fatalf("%d results, want %d", len(res), len(AllSimModes))
	}
	byMode := map[string]SimResult{}
	for _, r := range res {
		byMode[r.Mode] = r
		if r.Cycles != o.Sessions*(o.Cycles-1) || r.Mismatch != 0 {
			t.Errorf("%s: %d cycles (want %d), %d mismatches", r.Mode, r.Cycles, o.Sessions*(o.Cycles-1), r.Mismatch)
		}
	}
	// 12 pages resident, 3 replaced per cycle.
	if r := byMode[ModeLookahead]; r.SyncPages != 0 || r.Counters["staged"] == 0 {
		t.Errorf("lookahead: %d pages loaded synchronously, %v staged; want 0 and some", r.SyncPages, r.Counters["staged"])
	}
	// LRU-only: cycle 1 loads the whole first set, later cycles the pages
	// the trace added (less any still cached in the reserve from before).
	if r := byMode[ModeLRU]; r.SyncPages < o.Sessions*12 || r.SyncPages > o.Sessions*(12+3*(o.Cycles-2)) || r.Stalled < r.Cycles/2 {
		t.Errorf("lru: %d sync pages, %d/%d stalled; want %d…%d and most", r.SyncPages, r.Stalled, r.Cycles, o.Sessions*12, o.Sessions*(12+3*(o.Cycles-2)))
	}
	if r := byMode[ModeNoStaging]; r.Counters["staged"] != 0 || r.SyncPages != 0 {
		t.Errorf("no-staging: %v pages staged, %d loaded synchronously; want none (background recall reads SSD pages too)", r.Counters["staged"], r.SyncPages)
	}
	// On demand: the pages only on SSD are read when a cycle hands them
	// out, so some cycles load pages synchronously.
	if r := byMode[ModeOnDemand]; r.Counters["staged"] != 0 || r.SyncPages == 0 {
		t.Errorf("on-demand: %v pages staged, %d loaded synchronously; want none staged and some loaded", r.Counters["staged"], r.SyncPages)
	}
	var tab bytes.Buffer
	if err := WriteSimTable(&tab, o, res); err != nil {
		t.Fatal(err)
	}
	for _, m := range AllSimModes {
		if !strings.Contains(tab.String(), m) {
			t.Errorf("table lacks %s:\n%s", m, tab.String())
		}
	}
	head, _, _ := strings.Cut(tab.String(), "\ncycles:")
	for _, l := range strings.Split(head, "\n") {
		if n := len([]rune(l)); n > 100 {
			t.Errorf("table line of %d columns: %q", n, l)
		}
	}
}

// TestSimTrace checks the synthetic trace: fixed set size, the churn, hints
// that foreshadow exactly the next set's new pages, and keys that encode it.
func TestSimTrace(t *testing.T) {
	o := DefaultSimOptions()
	o.Tokens, o.Cycles, o.Resident, o.Churn = 100*eval.TokensPerPage, 10, 0.1, 0.3
	tr := newSimTrace(newRand(3), &o)
	keys := tr.keys()
	for k, s := range tr.sets {
		if len(s) != 10 {
			t.Fatalf("cycle %d: %d pages, want 10", k, len(s))
		}
		for _, p := range s {
			if p == 0 || int(p) == tr.pages-1 {
				t.Fatalf("cycle %d selects forced page %d", k, p)
			}
		}
		if k+1 < len(tr.sets) {
			var added []uint32
			for _, p := range tr.sets[k+1] {
				if !containsSorted(s, p) {
					added = append(added, p)
				}
			}
			if len(added) != 3 || len(tr.hints[k]) != 3 {
				t.Fatalf("cycle %d: %d pages added, %d hinted; want 3 and 3", k, len(added), len(tr.hints[k]))
			}
		}
		// Score the keys at cycle k with the daemon's trace scorer.
		above := map[int]int{}
		for c := 0; c < tr.pages*eval.ChunksPerPage; c++ {
			if keys[c*eval.TraceKeyBytes+k/8]&(1<<(k%8)) != 0 {
				above[c/eval.ChunksPerPage]++
			}
		}
		for _, p := range s {
			if above[int(p)] != eval.ChunksPerPage {
				t.Fatalf("cycle %d page %d: %d chunks above threshold, want all", k, p, above[int(p)])
			}
		}
		for _, p := range tr.hints[k] {
			if above[int(p)] != 1 {
				t.Fatalf("cycle %d hinted page %d: %d chunks above, want 1", k, p, above[int(p)])
			}
		}
		if len(above) != len(s)+len(tr.hints[k]) {
			t.Fatalf("cycle %d: %d pages with chunks above threshold, want %d", k, len(above), len(s)+len(tr.hints[k]))
		}
	}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0)) }

func containsSorted(s []uint32, p uint32) bool {
	_, ok := slices.BinarySearch(s, p)
	return ok
}

// TestTrain trains a model on a small synthetic corpus and checks that the
// file loads and scores, and that progress went to stderr as lines (not a
// terminal).
func TestTrain(t *testing.T) {
	dir := t.TempDir()
	txt := filepath.Join(dir, "text")
	if err := os.Mkdir(txt, 0o700); err != nil {
		t.Fatal(err)
	}
	r := newRand(1)
	for d := range 24 {
		var sb strings.Builder
		for range 50 {
			for range 8 + r.IntN(8) {
				fmt.Fprintf(&sb, "t%c%c ", 'a'+d%6, 'a'+r.IntN(26))
			}
			sb.WriteString("the end. ")
		}
		if err := os.WriteFile(filepath.Join(txt, fmt.Sprintf("%02d.txt", d)), []byte(sb.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(dir, "m.safetensors")
	var stdout, stderr bytes.Buffer
	cmd := Command(&stdout, &stderr)
	cmd.SetErr(&stderr)
	cmd.SetArgs([]string{"train", "--text", txt, "--out", out, "--epochs", "1", "--batch", "32"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("%v\n%s", err, stderr.String())
	}
	if !strings.Contains(stdout.String(), "wrote "+out) || !strings.Contains(stderr.String(), "training steps") {
		t.Errorf("stdout %q, stderr %q", stdout.String(), stderr.String())
	}
	m, err := loadTextModel(out)
	if err != nil {
		t.Fatal(err)
	}
	if m.Metadata()["corpus"] == "" && len(m.Metadata()) == 0 {
		t.Error("model has no metadata")
	}
	if _, err := run(t, "train", "--text", filepath.Join(dir, "empty"), "--out", out); err == nil {
		t.Error("training on a directory without .txt files succeeded")
	}
}

// TestDaemonTextModels covers the daemon's text-mode registration: the
// embedded default ("text"), a file ([[indexer.text]] name/path) that
// sessions can open, and configuration errors.
func TestDaemonTextModels(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "copy.safetensors")
	if err := os.WriteFile(file, models.TextModeDefault, 0o600); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(dir, "junk.safetensors")
	if err := os.WriteFile(junk, []byte("not safetensors at all"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testDaemonConfig(t, dir)
	cfg.Indexer.Text = append(cfg.Indexer.Text, daemon.TextModelConfig{Name: "mine", Path: file})
	stop := inProcess(t, cfg)
	defer func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
	}()
	c := dialSimT(t, cfg.Socket)
	for _, name := range []string{"text", "mine", "trace"} {
		kb := 132
		if name == "trace" {
			kb = eval.TraceKeyBytes
		}
		op, err := c.Open(context.Background(), &proto.Open{Model: name, Layout: evalLayout(kb, 16)})
		if err != nil {
			t.Fatalf("open with model %q: %v", name, err)
		}
		op.Region.Close()
		if _, err := c.Open(context.Background(), &proto.Open{Model: name, Layout: evalLayout(kb+4, 16)}); err == nil {
			t.Errorf("model %q accepted %d-byte keys", name, kb+4)
		}
	}

	bad := []struct {
		name string
		mut  func(*daemon.Config)
	}{
		{"missing file", func(c *daemon.Config) {
			c.Indexer.Text = []daemon.TextModelConfig{{Name: "x", Path: filepath.Join(dir, "none")}}
		}},
		{"not a model", func(c *daemon.Config) { c.Indexer.Text = []daemon.TextModelConfig{{Name: "x", Path: junk}} }},
		{"duplicate name", func(c *daemon.Config) { c.Indexer.Text = []daemon.TextModelConfig{{Name: "demo"}} }},
		{"trace clashes", func(c *daemon.Config) { c.Indexer.Trace = "text" }},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			c := testDaemonConfig(t, t.TempDir())
			tc.mut(&c)
			err := c.Validate()
			if err == nil {
				var d *daemon.Daemon
				d, err = daemon.New(c)
				if d != nil {
					d.Close()
				}
			}
			if !errors.Is(err, daemon.ErrConfig) {
				t.Fatalf("got %v, want ErrConfig", err)
			}
		})
	}
}

func dialSimT(t *testing.T, sock string) *proto.Client {
	t.Helper()
	c, err := dialSim(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
