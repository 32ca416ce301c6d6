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
				cols = append(cols, c.cellText())
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
		if c := r.firstCell(f); c != nil && c.TooSmall > 0 {
			fmt.Fprintf(w, "\n%s\n", TooSmallNote)
		}
	}
	return nil
}

// TooSmallNote explains the "too small" marks of a report.
const TooSmallNote = `"too small": at this footprint and context length the page budget holds only the sink and the tail, no page of evidence, so no method (the oracle included) can keep any; "*": some records of the cell were too small and count as misses.`

// cellText is a table cell: recall_all / recall_any, or "too small" when no
// record of the cell leaves room for evidence (a "*" when only some do not).
func (c *Cell) cellText() string {
	switch {
	case c.Records > 0 && c.TooSmall == c.Records:
		return "too small"
	case c.TooSmall > 0:
		return fmt.Sprintf("%.3f / %.3f*", c.RecallAll(), c.RecallAny())
	}
	return fmt.Sprintf("%.3f / %.3f", c.RecallAll(), c.RecallAny())
}

// Fits reports whether every record of the cell left room for evidence.
func (c *Cell) Fits() bool { return c.TooSmall == 0 }

func (r *Report) firstCell(f float64) *Cell {
	for i := range r.Cells {
		if r.Cells[i].Task == "overall" && r.Cells[i].Target == f {
			return &r.Cells[i]
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
	// TooSmall counts records whose footprint holds only sink and tail (their
	// questions count as misses); omitted when 0.
	TooSmall int `json:"too_small_records,omitempty"`
}

// WriteJSON writes one JSON object per cell, the "overall" cells last.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	for _, c := range r.Cells {
		mt := 0
		if c.Records > 0 {
			mt = c.Tokens / c.Records
		}
		if err := enc.Encode(jsonCell{c.Task, c.Method, c.Target, c.Queries, mt, c.RecallAll(), c.RecallAny(), c.Footprint(), c.TooSmall}); err != nil {
			return err
		}
	}
	return nil
}
