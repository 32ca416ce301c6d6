// Command fmtrain trains the text-mode dual encoder on a directory of text
// files and writes it as safetensors. It is the training entry point until
// `flashmemctl train` wraps textmode.Train.
//
//	go run ./indexer/textmode/cmd/fmtrain -text ../shared/haystack/paul-graham-essays -out models/textmode-default.safetensors
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"

	"github.com/flashmemory/flashmemory/indexer/textmode"
	"github.com/schollz/progressbar/v3"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "fmtrain:", err)
		os.Exit(1)
	}
}

func run() error {
	def := textmode.DefaultTrainOptions()
	textDir := flag.String("text", "../shared/haystack/paul-graham-essays", "directory of .txt training files")
	out := flag.String("out", "models/textmode-default.safetensors", "output model file")
	seed := flag.Uint64("seed", def.Seed, "random seed")
	epochs := flag.Int("epochs", def.Epochs, "epochs")
	batch := flag.Int("batch", def.BatchSize, "batch size (in-batch negatives)")
	corpus := flag.String("corpus", "", "description of the corpus for the model metadata (default: the directory name)")
	quiet := flag.Bool("q", false, "no progress bar")
	flag.Parse()

	names, err := filepath.Glob(filepath.Join(*textDir, "*.txt"))
	if err != nil {
		return err
	}
	sort.Strings(names)
	if len(names) == 0 {
		return fmt.Errorf("no .txt files in %s", *textDir)
	}
	docs := make([]textmode.Document, 0, len(names))
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return err
		}
		docs = append(docs, textmode.Document{Name: filepath.Base(n), Text: string(b)})
	}
	opts := def
	opts.Seed, opts.Epochs, opts.BatchSize = *seed, *epochs, *batch
	opts.Corpus = *corpus
	if opts.Corpus == "" {
		opts.Corpus = fmt.Sprintf("%d files of %s", len(docs), filepath.Base(filepath.Clean(*textDir)))
	}
	var bar *progressbar.ProgressBar
	var last textmode.Progress
	opts.Progress = func(p textmode.Progress) {
		last = p
		if *quiet {
			return
		}
		if p.Phase == "train" {
			if bar == nil {
				bar = progressbar.NewOptions(p.Steps, progressbar.OptionSetWriter(os.Stderr),
					progressbar.OptionSetDescription("training"), progressbar.OptionShowCount(), progressbar.OptionThrottle(100e6))
			}
			bar.Describe(fmt.Sprintf("loss %.3f acc %.2f held-out %.2f", p.Loss, p.Accuracy, p.ValAccuracy))
			_ = bar.Set(p.Step)
			return
		}
		if bar != nil && p.Phase != "train" {
			_ = bar.Finish()
			fmt.Fprintln(os.Stderr)
			bar = nil
		}
		if p.Phase == "calibrate" {
			fmt.Fprintf(os.Stderr, "calibration %d/%d: log-loss %.4f accuracy %.4f\n", p.Step, p.Steps, p.Loss, p.Accuracy)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	m, err := textmode.Train(ctx, docs, opts)
	if err != nil {
		return err
	}
	tmp := *out + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := m.Save(f); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	st, _ := os.Stat(*out)
	var cal []string
	for _, mode := range []textmode.Mode{textmode.Combined, textmode.Lexical, textmode.Dense} {
		c := m.Calibration(mode)
		cal = append(cal, fmt.Sprintf("%s: %.3f·lex %+.3f·cos %+.3f", mode, c.Lex, c.Dense, c.Bias))
	}
	fmt.Printf("wrote %s (%d bytes), held-out top-1 %.3f\n%s\n", *out, st.Size(), last.ValAccuracy, strings.Join(cal, "\n"))
	return nil
}
