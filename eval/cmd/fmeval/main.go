// Command fmeval generates evaluation datasets and runs the in-process recall
// evaluation (no daemon) of the text-mode indexer against the recency, random
// and oracle baselines. `flashmemctl gen` and `flashmemctl eval` will wrap the
// same eval package functions.
//
//	go run ./eval/cmd/fmeval gen -tokens 32768 -records 2 -out /tmp/ds32k.jsonl
//	go run ./eval/cmd/fmeval run -data /tmp/ds32k.jsonl -model models/textmode-default.safetensors
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/indexer/textmode"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: fmeval gen|run [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "gen":
		err = gen(os.Args[2:])
	case "run":
		err = run(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q (gen, run)", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "fmeval:", err)
		os.Exit(1)
	}
}

func gen(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ExitOnError)
	out := fs.String("out", "-", "output JSONL file (- for stdout)")
	tokens := fs.Int("tokens", 32768, "context length in tokens")
	records := fs.Int("records", 1, "records per task")
	queries := fs.Int("queries", 4, "questions per record")
	seed := fs.Uint64("seed", 1, "seed")
	tasks := fs.String("tasks", "", "comma-separated tasks (default all: "+strings.Join(eval.AllTasks, ",")+")")
	filler := fs.String("filler", eval.DefaultFillerDir, "directory of .txt filler files")
	_ = fs.Parse(args)
	opts := eval.GenOptions{Seed: *seed, Tokens: *tokens, Records: *records, Queries: *queries, FillerDir: *filler}
	if *tasks != "" {
		opts.Tasks = strings.Split(*tasks, ",")
	}
	w := os.Stdout
	if *out != "-" {
		f, err := os.Create(*out)
		if err != nil {
			return err
		}
		defer f.Close()
		w = f
	}
	if err := eval.Generate(w, opts); err != nil {
		return err
	}
	return w.Sync()
}

func run(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	data := fs.String("data", "", "dataset JSONL")
	model := fs.String("model", "models/textmode-default.safetensors", "text-mode model")
	fps := fs.String("footprint", "0.05,0.10,0.15", "comma-separated target footprints")
	asJSON := fs.Bool("json", false, "one JSON object per cell instead of tables")
	seed := fs.Uint64("seed", 1, "seed of the random baseline")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile to this file")
	_ = fs.Parse(args)
	if *cpuprofile != "" {
		pf, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		defer pf.Close()
		if err := pprof.StartCPUProfile(pf); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	b, err := os.ReadFile(*model)
	if err != nil {
		return err
	}
	m, err := textmode.Load(b)
	if err != nil {
		return err
	}
	var footprints []float64
	for _, s := range strings.Split(*fps, ",") {
		f, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
		if err != nil {
			return fmt.Errorf("footprint %q: %w", s, err)
		}
		footprints = append(footprints, f)
	}
	f, err := os.Open(*data)
	if err != nil {
		return err
	}
	defer f.Close()
	start := time.Now()
	rep, err := eval.Run(eval.NewReader(f), eval.RunOptions{Model: m, Footprints: footprints, Seed: *seed,
		Progress: func(n int, id string) { fmt.Fprintf(os.Stderr, "\r%d records (%s)            ", n, id) }})
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return err
	}
	if *asJSON {
		return rep.WriteJSON(os.Stdout)
	}
	if err := rep.WriteTable(os.Stdout); err != nil {
		return err
	}
	fmt.Printf("\n%s in %.1f s\n", *data, time.Since(start).Seconds())
	return nil
}
