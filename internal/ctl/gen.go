package ctl

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flashmemory/flashmemory/eval"
)

func genCmd(g *globals) *cobra.Command {
	o := eval.GenOptions{}
	var tasks, outPath string
	cmd := &cobra.Command{
		Use:   "gen --tokens N [--out FILE.jsonl]",
		Short: "Generate a RULER / LongMemEval-style recall dataset (JSONL) from filler text",
		Long: `gen writes JSONL records {"id", "task", "context", "queries": [{"question", "answer",
"evidence"}]} for flashmemctl eval: single, multi-key, multi-value and multi-query needles,
distractor-dense haystacks, variable-tracking chains, paraphrased needles and multi-session
dialogue with knowledge updates, and multi-hop evidence (chains of assignments, entity bridges,
dialogue updates about a person named earlier). Filler is shuffled runs of sentences from the .txt files of
--filler; every evidence string is an exact, unique substring of its context. The same seed,
filler and flags give the same bytes.

Tasks: ` + strings.Join(eval.AllTasks, ", "),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tasks != "" {
				o.Tasks = splitList(tasks)
			}
			if o.Tokens < 1024 || o.Tokens > 2<<20 {
				return fmt.Errorf("%w: --tokens %d: use 1024 to 2097152 (32768 to 1048576 are the evaluated sizes)", ErrUsage, o.Tokens)
			}
			if o.Records < 1 {
				return fmt.Errorf("%w: --records %d: use 1 or more", ErrUsage, o.Records)
			}
			if o.Queries < 1 || o.Queries > 64 {
				return fmt.Errorf("%w: --queries %d: use 1 to 64", ErrUsage, o.Queries)
			}
			for _, t := range o.Tasks {
				if !slices.Contains(eval.AllTasks, t) {
					return fmt.Errorf("%w: --tasks: unknown task %q (known: %s)", ErrUsage, t, strings.Join(eval.AllTasks, ", "))
				}
			}
			if err := checkTextDir("--filler", o.FillerDir, eval.DefaultFillerDir); err != nil {
				return err
			}
			w := g.out
			var f *os.File
			if outPath != "-" {
				var err error
				if f, err = os.Create(outPath); err != nil {
					return err
				}
				defer f.Close()
				w = f
			}
			bw := bufio.NewWriterSize(w, 1<<20)
			ntasks := len(o.Tasks)
			if ntasks == 0 {
				ntasks = len(eval.AllTasks)
			}
			prog := newProgress(cmd.ErrOrStderr(), int64(ntasks*o.Records), "gen records")
			err := eval.Generate(&lineCounter{w: bw, p: prog}, o)
			prog.done()
			if err != nil {
				if errors.Is(err, eval.ErrNoFiller) {
					return fmt.Errorf("%w: pass --filler DIR, a directory of .txt files (any text)", err)
				}
				return err
			}
			if err := bw.Flush(); err != nil {
				return err
			}
			if f != nil {
				return f.Close()
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&outPath, "out", "-", "output JSONL file (- for stdout)")
	f.IntVar(&o.Tokens, "tokens", 32768, "context length in tokens (1K … 2M; 32K–1M are the evaluated sizes)")
	f.IntVar(&o.Records, "records", 1, "records per task")
	f.IntVar(&o.Queries, "queries", 4, "questions per record")
	f.Uint64Var(&o.Seed, "seed", 1, "seed")
	f.StringVar(&tasks, "tasks", "", "comma-separated tasks (default all)")
	f.StringVar(&o.FillerDir, "filler", eval.DefaultFillerDir, "directory of .txt filler files (any text)")
	f.StringVar(&o.Style, "style", eval.StyleDefault, "templates: default, or heldout (other wording, keys and values: the held-out split of docs/evaluation.md)")
	return cmd
}

// checkTextDir checks a directory flag of .txt files before any work, so
// the error names the flag, and says where a relative default resolves.
func checkTextDir(flag, dir, def string) error {
	ents, err := os.ReadDir(dir)
	n := 0
	for _, e := range ents {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".txt") {
			n++
		}
	}
	if err == nil && n > 0 {
		return nil
	}
	why := "has no .txt files"
	if err != nil {
		why = "cannot be read"
		if errors.Is(err, os.ErrNotExist) {
			why = "does not exist"
		}
	}
	hint := ""
	if dir == def && !filepath.IsAbs(def) {
		abs, _ := filepath.Abs(dir)
		hint = fmt.Sprintf(" (the default is relative to the working directory, here %s; it exists when flashmemctl runs from the repository root)", abs)
	}
	return fmt.Errorf("%w: %s %s %s%s: pass %s DIR, a directory of .txt files (any text)", ErrUsage, flag, dir, why, hint, flag)
}

// lineCounter advances a progress bar by the lines (JSONL records) written
// through it.
type lineCounter struct {
	w io.Writer
	p *progress
}

func (l *lineCounter) Write(b []byte) (int, error) {
	n, err := l.w.Write(b)
	if c := bytes.Count(b[:n], []byte{'\n'}); c > 0 {
		l.p.add(int64(c))
	}
	return n, err
}
