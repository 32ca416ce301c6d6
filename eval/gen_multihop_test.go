package eval

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestGenerateSingleHopStable pins the bytes of the 2026-11-27 tasks: adding
// tasks and styles must not change the datasets the published tables were
// computed from (hash of `flashmemctl gen --tokens 8192 --records 1 --queries 2
// --seed 3` at commit 637b626, before the multi-hop tasks existed).
func TestGenerateSingleHopStable(t *testing.T) {
	f, err := LoadFiller(haystackDir(t))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := GenerateFrom(&b, f, GenOptions{Seed: 3, Tokens: 8192, Records: 1, Queries: 2, Tasks: SingleHopTasks}); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b.Bytes())
	if got, want := hex.EncodeToString(sum[:]), "7541899ea252a1f8f8e2490ce355d560ab6dc0f6d013d9fc6a3c2edff1bc4e23"; got != want {
		t.Fatalf("single-hop dataset changed: sha256 %s, want %s", got, want)
	}
}

// TestGenerateStyles checks the held-out style and the multi-hop tasks: every
// evidence string is unique in its context, links come in order, each later
// link names the previous one, the question names only the first, and no
// held-out question or evidence uses a default-style template.
func TestGenerateStyles(t *testing.T) {
	f, err := LoadFiller(haystackDir(t))
	if err != nil {
		t.Fatal(err)
	}
	defaultPhrases := []string{"special magic number", "VAR ", "By the way", "Quick update", "secret code", "works for", "is based in", "Let ", "moved again"}
	for _, style := range []string{StyleDefault, StyleHeldout} {
		var b bytes.Buffer
		if err := GenerateFrom(&b, f, GenOptions{Seed: 5, Tokens: 8192, Records: 2, Queries: 4, Style: style}); err != nil {
			t.Fatal(err)
		}
		r := NewReader(&b)
		tasks := map[string]int{}
		for {
			rec, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			tasks[rec.Task]++
			if style == StyleHeldout && !strings.HasPrefix(rec.ID, "heldout-") {
				t.Errorf("held-out record id %q", rec.ID)
			}
			for _, q := range rec.Queries {
				last := -1
				for i, e := range q.Evidence {
					at := strings.Index(rec.Context, e)
					if strings.Count(rec.Context, e) != 1 {
						t.Fatalf("%s: evidence %q occurs %d times", rec.ID, e, strings.Count(rec.Context, e))
					}
					if style == StyleHeldout {
						for _, p := range defaultPhrases {
							if strings.Contains(e, p) || strings.Contains(q.Question, p) {
								t.Errorf("%s: held-out text %q / %q uses default phrase %q", rec.ID, q.Question, e, p)
							}
						}
					}
					if rec.Task == TaskChainHops || rec.Task == TaskEntityBridge || rec.Task == TaskDialogueUpdate {
						if at < last {
							t.Errorf("%s: link %d %q before the previous one", rec.ID, i, e)
						}
						last = at
					}
				}
				switch rec.Task {
				case TaskChainHops:
					names := strings.Split(q.Answer, ", ")
					if len(q.Evidence) < 2 || len(q.Evidence) > 4 || len(names) != len(q.Evidence) {
						t.Fatalf("%s: %d links, answer %q", rec.ID, len(q.Evidence), q.Answer)
					}
					for i := 1; i < len(names); i++ {
						if !strings.Contains(q.Evidence[i], names[i-1]) || !strings.Contains(q.Evidence[i], names[i]) {
							t.Errorf("%s: link %q does not join %s and %s", rec.ID, q.Evidence[i], names[i-1], names[i])
						}
						if strings.Contains(q.Question, names[i]) {
							t.Errorf("%s: question %q names link %d", rec.ID, q.Question, i)
						}
					}
				case TaskEntityBridge, TaskDialogueUpdate:
					if len(q.Evidence) != 2 || !strings.Contains(q.Evidence[1], q.Answer) || strings.Contains(q.Question, q.Answer) {
						t.Errorf("%s: evidence %q for %q → %q", rec.ID, q.Evidence, q.Question, q.Answer)
					}
				}
			}
		}
		for _, task := range AllTasks {
			if tasks[task] != 2 {
				t.Errorf("%s: task %s has %d records", style, task, tasks[task])
			}
		}
	}
	if err := GenerateFrom(io.Discard, f, GenOptions{Tokens: 4096, Style: "fancy"}); !errors.Is(err, ErrBadOptions) {
		t.Errorf("unknown style: %v", err)
	}
}

// TestFits: a footprint that leaves no page beside sink and tail is reported,
// not scored as a 0.
func TestFits(t *testing.T) {
	for _, c := range []struct {
		tokens int
		fp     float64
		fits   bool
	}{
		{32768, 0.02, false}, // 128 pages: KMAX 2 = sink page + tail page
		{32768, 0.05, true},  // KMAX 6: sink, 1 tail page, 4 free
		{131072, 0.02, true}, // KMAX 10: sink, 2 tail pages, 7 free
		{524288, 0.02, true},
		{4096, 0.10, false}, // 16 pages: KMAX 1 is the tail alone
	} {
		if got := Fits(c.tokens/TokensPerChunk, c.fp); got != c.fits {
			t.Errorf("%d tokens at %.2f: Fits %v, want %v", c.tokens, c.fp, got, c.fits)
		}
	}
	col := NewCollector()
	col.AddRecord("t", 32768, []float64{0.02, 0.10}, []string{MethodOracle})
	col.Cell("t", MethodOracle, 0.02).AddQuery([]bool{false})
	col.Cell("t", MethodOracle, 0.10).AddQuery([]bool{true})
	rep := col.Report([]string{MethodOracle}, []float64{0.02, 0.10})
	if c := rep.Get("overall", MethodOracle, 0.02); c.TooSmall != 1 || c.Fits() {
		t.Errorf("overall 2 %%: %+v", c)
	}
	var tab, js bytes.Buffer
	if err := rep.WriteTable(&tab); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(tab.String(), "too small") || strings.Count(tab.String(), "1.000 / 1.000") != 2 {
		t.Errorf("table:\n%s", tab.String())
	}
	if err := rep.WriteJSON(&js); err != nil || strings.Count(js.String(), `"too_small_records":1`) != 2 {
		t.Errorf("JSON: %v\n%s", err, js.String())
	}
}
