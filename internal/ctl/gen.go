package ctl

import (
	"bufio"
	"os"
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
			if err := eval.Generate(bw, o); err != nil {
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
