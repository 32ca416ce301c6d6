package eval

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// WriteTable writes one table per footprint: a row per task, a column per
// method, recall_all (recall_any) in each cell, then the measured footprint.
func (r *Report) WriteTable(w io.Writer) error {
	var tasks, methods []string
	var fps []float64
	for _, c := range r.Cells {
		if !slices.Contains(tasks, c.Task) {
			tasks = append(tasks, c.Task)
		}
		if !slices.Contains(methods, c.Method) {
			methods = append(methods, c.Method)
		}
		if !slices.Contains(fps, c.Target) {
			fps = append(fps, c.Target)
		}
	}
	for _, f := range fps {
		fmt.Fprintf(w, "\nfootprint target %.0f %% — recall_all / recall_any (questions)\n\n", 100*f)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "task\tquestions\t%s\t\n", strings.Join(methods, "\t"))
		for _, t := range tasks {
			var cols []string
			q := 0
			for _, m := range methods {
				c := r.Get(t, m, f)
				if c == nil {
					cols = append(cols, "-")
					continue
				}
				q = c.Queries
				cols = append(cols, fmt.Sprintf("%.3f / %.3f", c.RecallAll(), c.RecallAny()))
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t\n", t, q, strings.Join(cols, "\t"))
		}
		var cols []string
		for _, m := range methods {
			if c := r.Get("overall", m, f); c != nil {
				cols = append(cols, fmt.Sprintf("%.4f", c.Footprint()))
			}
		}
		fmt.Fprintf(tw, "footprint (measured)\t\t%s\t\n", strings.Join(cols, "\t"))
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}

// jsonCell is the --json form of one cell.
type jsonCell struct {
	Task      string  `json:"task"`
	Method    string  `json:"method"`
	Target    float64 `json:"target_footprint"`
	Questions int     `json:"questions"`
	MeanTok   int     `json:"mean_context_tokens"`
	RecallAll float64 `json:"recall_all"`
	RecallAny float64 `json:"recall_any"`
	Footprint float64 `json:"footprint"`
}

// WriteJSON writes one JSON object per cell, the "overall" cells last.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	for _, c := range r.Cells {
		mt := 0
		if c.Records > 0 {
			mt = c.Tokens / c.Records
		}
		if err := enc.Encode(jsonCell{c.Task, c.Method, c.Target, c.Queries, mt, c.RecallAll(), c.RecallAny(), c.Footprint()}); err != nil {
			return err
		}
	}
	return nil
}
