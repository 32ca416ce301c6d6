package eval

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/flashmemory/flashmemory/indexer/textmode"
)

// repoRoot is where `go test ./eval/` runs relative to the checkout root.
const repoRoot = ".."

func haystackDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(repoRoot, DefaultFillerDir)
	if _, err := os.Stat(dir); err != nil {
		// CI has ../shared beside the checkout; without it the generator and
		// harness cannot be tested, which must fail, not pass silently.
		t.Fatalf("haystack %s: %v", dir, err)
	}
	return dir
}

func TestGenerateAllTasks(t *testing.T) {
	f, err := LoadFiller(haystackDir(t))
	if err != nil {
		t.Fatal(err)
	}
	opts := GenOptions{Seed: 3, Tokens: 8192, Records: 2, Queries: 3}
	var a, b bytes.Buffer
	if err := GenerateFrom(&a, f, opts); err != nil {
		t.Fatal(err)
	}
	if err := GenerateFrom(&b, f, opts); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("same seed, different datasets")
	}
	r := NewReader(&a)
	perTask := map[string]int{}
	for {
		rec, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		perTask[rec.Task]++
		n := len(textmode.Tokenize(rec.Context))
		if n < opts.Tokens || n > opts.Tokens+600 {
			t.Errorf("%s: %d tokens, want about %d", rec.ID, n, opts.Tokens)
		}
		if len(rec.Queries) != opts.Queries {
			t.Errorf("%s: %d queries", rec.ID, len(rec.Queries))
		}
		for _, q := range rec.Queries {
			for _, e := range q.Evidence {
				if c := strings.Count(rec.Context, e); c != 1 {
					t.Errorf("%s: evidence %q occurs %d times", rec.ID, e, c)
				}
			}
			switch rec.Task {
			case TaskMultiValue:
				if len(q.Evidence) != 4 {
					t.Errorf("%s: %d evidence strings", rec.ID, len(q.Evidence))
				}
			case TaskVariableTracking:
				// The chain is in order: each assignment after the one it reads.
				last := -1
				for _, e := range q.Evidence {
					i := strings.Index(rec.Context, e)
					if i < last {
						t.Errorf("%s: chain out of order at %q", rec.ID, e)
					}
					last = i
				}
			case TaskKnowledgeUpdate:
				if !strings.Contains(q.Evidence[0], q.Answer) || !strings.Contains(rec.Context, "Session") {
					t.Errorf("%s: update %q does not hold answer %q", rec.ID, q.Evidence[0], q.Answer)
				}
			}
			if !strings.Contains(strings.Join(q.Evidence, " "), strings.Split(q.Answer, ",")[0]) && rec.Task != TaskVariableTracking {
				t.Errorf("%s: answer %q not in its evidence", rec.ID, q.Answer)
			}
		}
	}
	for _, task := range AllTasks {
		if perTask[task] != opts.Records {
			t.Errorf("task %s: %d records", task, perTask[task])
		}
	}
	opts.Seed = 4
	var c bytes.Buffer
	if err := GenerateFrom(&c, f, opts); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(a.Bytes(), c.Bytes()) {
		t.Fatal("different seeds, same dataset")
	}
}

func TestGenerateOptions(t *testing.T) {
	f, err := NewFiller(strings.Repeat("A short sentence about nothing much. ", 40))
	if err != nil {
		t.Fatal(err)
	}
	bad := []GenOptions{
		{Tokens: 100},
		{Tokens: 4 << 20},
		{Tokens: 4096, Tasks: []string{"nope"}},
		{Tokens: 4096, Queries: 1000},
	}
	for _, o := range bad {
		if err := GenerateFrom(io.Discard, f, o); !errors.Is(err, ErrBadOptions) {
			t.Errorf("%+v: err %v", o, err)
		}
	}
	if _, err := NewFiller("Too short."); !errors.Is(err, ErrNoFiller) {
		t.Errorf("tiny filler: %v", err)
	}
	if _, err := LoadFiller(t.TempDir()); !errors.Is(err, ErrNoFiller) {
		t.Errorf("empty dir: %v", err)
	}
	// A filler shorter than the context repeats.
	var buf bytes.Buffer
	if err := GenerateFrom(&buf, f, GenOptions{Seed: 1, Tokens: 4096, Tasks: []string{TaskSingleNeedle}}); err != nil {
		t.Fatal(err)
	}
}

func TestRunEndToEnd(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(repoRoot, "models", "textmode-default.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := textmode.Load(b)
	if err != nil {
		t.Fatal(err)
	}
	f, err := LoadFiller(haystackDir(t))
	if err != nil {
		t.Fatal(err)
	}
	var ds bytes.Buffer
	if err := GenerateFrom(&ds, f, GenOptions{Seed: 11, Tokens: 32768, Tasks: []string{TaskSingleNeedle, TaskMultiKey, TaskVariableTracking}, Queries: 4}); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(NewReader(&ds), RunOptions{Model: m, Footprints: []float64{0.10}, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	get := func(method string) *Cell {
		c := rep.Get("overall", method, 0.10)
		if c == nil || c.Queries != 12 {
			t.Fatalf("%s: cell %+v", method, c)
		}
		if fp := c.Footprint(); fp > 0.10 || fp < 0.05 {
			t.Errorf("%s: footprint %.4f outside (0.05, 0.10]", method, fp)
		}
		return c
	}
	if c := get(MethodOracle); c.RecallAll() != 1 {
		t.Errorf("oracle recall_all %.3f", c.RecallAll())
	}
	comb, rec := get(MethodCombined), get(MethodRecency)
	if comb.RecallAll() < 0.9 || comb.RecallAll()-rec.RecallAll() < 0.4 {
		t.Errorf("combined recall_all %.3f, recency %.3f", comb.RecallAll(), rec.RecallAll())
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(js.String()), "\n")
	if len(lines) != 4*len(AllMethods) || !strings.Contains(lines[len(lines)-1], `"task":"overall"`) {
		t.Errorf("JSON output: %d lines, last %q", len(lines), lines[len(lines)-1])
	}
	var tab bytes.Buffer
	if err := rep.WriteTable(&tab); err != nil || !strings.Contains(tab.String(), "variable_tracking") {
		t.Errorf("table: %v\n%s", err, tab.String())
	}
}
