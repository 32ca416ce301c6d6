package ctl

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/indexer/textmode"
)

func trainCmd(g *globals) *cobra.Command {
	def := textmode.DefaultTrainOptions()
	o := def
	var textDir, outPath, refit string
	cmd := &cobra.Command{
		Use:   "train --text DIR --out FILE.safetensors",
		Short: "Train the text-mode indexer (dual encoder) on a directory of .txt files",
		Long: `train fits the text-mode dual encoder (indexer/textmode) on unlabelled text: IDF statistics,
then InfoNCE with in-batch negatives on (sentence, surrounding chunk) pairs, then a calibration
of the lexical and dense signals on held-out documents. It is deterministic for a seed. The
result is a safetensors file that flashmemd loads with an [[indexer.text]] entry (name, path);
the daemon's embedded "text" model was made by this command with the defaults (models/README.md).
Progress is a bar on a terminal and a line per ~10 % otherwise.

--refit MODEL keeps MODEL's embeddings, IDF and the calibrations of its combined, lexical and
dense modes, and fits only its learned mode (the evaluation's "trained": a term weighting and
a calibration chosen on pseudo-queries of the --text corpora) — how the shipped default was
given its learned mode (models/README.md).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Several corpora: comma-separated directories, each sorted by name.
			var names []string
			for _, dir := range splitList(textDir) {
				if err := checkTextDir("--text", dir, eval.DefaultFillerDir); err != nil {
					return err
				}
				ns, err := filepath.Glob(filepath.Join(dir, "*.txt"))
				if err != nil {
					return err
				}
				sort.Strings(ns)
				names = append(names, ns...)
			}
			if len(names) == 0 {
				return fmt.Errorf("%w: no .txt files in %s: give directories of .txt files, comma-separated", ErrUsage, textDir)
			}
			docs := make([]textmode.Document, 0, len(names))
			for _, n := range names {
				b, err := os.ReadFile(n)
				if err != nil {
					return err
				}
				docs = append(docs, textmode.Document{Name: filepath.Base(filepath.Dir(n)) + "/" + filepath.Base(n), Text: string(b)})
			}
			if o.Corpus == "" {
				var dirs []string
				for _, d := range splitList(textDir) {
					dirs = append(dirs, filepath.Base(filepath.Clean(d)))
				}
				o.Corpus = fmt.Sprintf("%d files of %s", len(docs), strings.Join(dirs, ", "))
			}
			errw := cmd.ErrOrStderr()
			var bar *progress
			var last textmode.Progress
			o.Progress = func(p textmode.Progress) {
				last = p
				switch p.Phase {
				case "train":
					if bar == nil {
						bar = newProgress(errw, int64(p.Steps), "training steps")
					}
					if d := int64(p.Step) - bar.cur; d > 0 {
						bar.add(d)
					}
				case "calibrate":
					if bar != nil {
						bar.done()
						bar = nil
					}
					fmt.Fprintf(errw, "  calibration %d/%d: log-loss %.4f accuracy %.4f\n", p.Step, p.Steps, p.Loss, p.Accuracy)
				}
			}
			var m *textmode.Model
			var err error
			if refit != "" {
				f, err := os.Open(refit)
				if err != nil {
					return fmt.Errorf("--refit: %w", err)
				}
				base, err := textmode.LoadFrom(f)
				f.Close()
				if err != nil {
					return fmt.Errorf("--refit %s: %w", refit, err)
				}
				m = textmode.FitLearned(base, docs, o)
			} else {
				m, err = textmode.Train(cmd.Context(), docs, o)
			}
			if bar != nil {
				bar.done()
			}
			if err != nil {
				return err
			}
			tmp := outPath + ".tmp"
			f, err := os.Create(tmp)
			if err != nil {
				return err
			}
			if err := m.Save(f); err != nil {
				f.Close()
				os.Remove(tmp)
				return err
			}
			if err := f.Close(); err != nil {
				os.Remove(tmp)
				return err
			}
			if err := os.Rename(tmp, outPath); err != nil {
				return err
			}
			st, err := os.Stat(outPath)
			if err != nil {
				return err
			}
			fmt.Fprintf(g.out, "wrote %s (%d bytes), held-out top-1 %.3f\n", outPath, st.Size(), last.ValAccuracy)
			for _, mode := range []textmode.Mode{textmode.Combined, textmode.Lexical, textmode.Dense, textmode.Learned} {
				c := m.Calibration(mode)
				fmt.Fprintf(g.out, "  %s: logit = %.3f·lex %+.3f·cos %+.3f\n", mode, c.Lex, c.Dense, c.Bias)
			}
			tw := m.TermWeighting()
			fmt.Fprintf(g.out, "  learned term weighting: cidf^%g · idf^%g, window %g\n", tw.Power, tw.TrainPower, tw.Window)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&textDir, "text", eval.DefaultFillerDir, "directory of .txt training files, or several, comma-separated")
	f.StringVar(&outPath, "out", "textmode.safetensors", "output model file (written atomically)")
	f.Func("learned-powers", "context-IDF powers the learned mode's fit may choose, comma-separated (default 1,2,3,4)", func(v string) error {
		o.LearnedPowers = nil
		for _, x := range splitList(v) {
			p, err := strconv.ParseFloat(x, 32)
			if err != nil || p < 0 || p > 8 {
				return fmt.Errorf("%w: --learned-powers %q: each power in [0, 8]", ErrUsage, x)
			}
			o.LearnedPowers = append(o.LearnedPowers, float32(p))
		}
		return nil
	})
	f.StringVar(&refit, "refit", "", "fit only the learned mode of this model file on --text (keeps everything else)")
	f.Uint64Var(&o.Seed, "seed", def.Seed, "random seed")
	f.IntVar(&o.Epochs, "epochs", def.Epochs, "epochs")
	f.IntVar(&o.BatchSize, "batch", def.BatchSize, "batch size (in-batch negatives)")
	f.BoolVar(&o.HardNegatives, "hard-negatives", false, "add to every pair a negative chunk from another passage of the same document")
	f.IntVar(&o.Config.Dim, "dim", def.Config.Dim, "embedding dimension (the file is about 2·65536·dim bytes)")
	f.StringVar(&o.Corpus, "corpus", "", "description of the corpus for the model metadata (default: the directory name)")
	return cmd
}
