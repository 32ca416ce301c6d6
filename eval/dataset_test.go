package eval

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
)

const goodLine = `{"id":"a","task":"t","context":"The sky is blue. The code is 42.","queries":[{"question":"What is the code?","answer":"42","evidence":["The code is 42."]}]}`

func TestReader(t *testing.T) {
	cases := []struct {
		name    string
		in      string
		records int
		errLine int   // line named by the first error (0: none)
		errIs   error // sentinel the first error wraps
	}{
		{"one good line", goodLine + "\n", 1, 0, nil},
		{"no final newline", goodLine, 1, 0, nil},
		{"blank lines skipped", "\n" + goodLine + "\n\n  \n" + goodLine + "\n", 2, 0, nil},
		{"malformed JSON on line 2", goodLine + "\n{\"id\": \n", 1, 2, ErrBadLine},
		{"evidence not in context", goodLine + "\n" + goodLine + "\n" + strings.Replace(goodLine, `"The code is 42."]`, `"The code is 43."]`, 1) + "\n", 2, 3, ErrEvidenceNotFound},
		{"missing id", strings.Replace(goodLine, `"id":"a",`, ``, 1), 0, 1, ErrBadLine},
		{"empty answer", strings.Replace(goodLine, `"answer":"42"`, `"answer":" "`, 1), 0, 1, ErrBadLine},
		{"no evidence", strings.Replace(goodLine, `"evidence":["The code is 42."]`, `"evidence":[]`, 1), 0, 1, ErrBadLine},
		{"empty evidence", strings.Replace(goodLine, `"evidence":["The code is 42."]`, `"evidence":[""]`, 1), 0, 1, ErrBadLine},
		{"no queries", `{"id":"a","task":"t","context":"x","queries":[]}`, 0, 1, ErrBadLine},
		{"unknown field", strings.Replace(goodLine, `"task":"t"`, `"task":"t","extra":1`, 1), 0, 1, ErrBadLine},
		{"trailing data", goodLine + ` {}`, 0, 1, ErrBadLine},
		{"array not object", `[1,2]`, 0, 1, ErrBadLine},
	}
	for _, c := range cases {
		r := NewReader(strings.NewReader(c.in))
		n := 0
		var firstErr error
		errLine := 0
		for {
			rec, err := r.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				if firstErr == nil {
					firstErr, errLine = err, r.Line()
				}
				continue
			}
			if rec.ID != "a" || len(rec.Queries) != 1 {
				t.Errorf("%s: record %+v", c.name, rec)
			}
			n++
		}
		if n != c.records {
			t.Errorf("%s: %d records, want %d", c.name, n, c.records)
		}
		if c.errLine == 0 {
			if firstErr != nil {
				t.Errorf("%s: unexpected error %v", c.name, firstErr)
			}
			continue
		}
		if firstErr == nil {
			t.Errorf("%s: no error, want one on line %d", c.name, c.errLine)
			continue
		}
		if !errors.Is(firstErr, c.errIs) || !errors.Is(firstErr, ErrBadLine) {
			t.Errorf("%s: error %v does not wrap %v and ErrBadLine", c.name, firstErr, c.errIs)
		}
		if errLine != c.errLine || !strings.Contains(firstErr.Error(), "line "+itoa(c.errLine)) {
			t.Errorf("%s: error %q at line %d, want it to name line %d", c.name, firstErr, errLine, c.errLine)
		}
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestReaderLineTooLong(t *testing.T) {
	long := strings.Replace(goodLine, "The sky is blue.", strings.Repeat("x", 5000), 1)
	r := NewReader(strings.NewReader(long + "\n" + goodLine + "\n"))
	r.SetMaxLine(1000)
	_, err := r.Next()
	if !errors.Is(err, ErrLineTooLong) || !strings.Contains(err.Error(), "line 1") {
		t.Fatalf("err %v, want ErrLineTooLong naming line 1", err)
	}
	rec, err := r.Next()
	if err != nil || rec.ID != "a" || r.Line() != 2 {
		t.Fatalf("after a long line: %v %v line %d", rec, err, r.Line())
	}
}

func TestWriterRoundTrip(t *testing.T) {
	recs := []*Record{
		{ID: "x", Task: "t1", Context: "alpha <beta> & \"gamma\"\nnew line", Queries: []Query{{Question: "q?", Answer: "a", Evidence: []string{"<beta> & \"gamma\""}}}},
		{ID: "y", Task: "t2", Context: "ünïcödé text", Queries: []Query{{Question: "q", Answer: "a", Evidence: []string{"cödé"}}}},
	}
	var buf bytes.Buffer
	w := NewWriter(&buf)
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&buf)
	for i, want := range recs {
		got, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != want.ID || got.Context != want.Context || got.Queries[0].Evidence[0] != want.Queries[0].Evidence[0] {
			t.Errorf("record %d: %+v, want %+v", i, got, want)
		}
	}
	if _, err := r.Next(); !errors.Is(err, io.EOF) {
		t.Fatalf("after the last record: %v", err)
	}
	bad := &Record{ID: "z", Task: "t", Context: "abc", Queries: []Query{{Question: "q", Answer: "a", Evidence: []string{"zzz"}}}}
	if err := NewWriter(io.Discard).Write(bad); !errors.Is(err, ErrEvidenceNotFound) {
		t.Fatalf("writing a record with missing evidence: %v", err)
	}
}

func FuzzReader(f *testing.F) {
	f.Add([]byte(goodLine + "\n" + goodLine))
	f.Add([]byte("{\"id\":\n\n[]"))
	f.Add([]byte(strings.Repeat("\n", 10)))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		r.SetMaxLine(1 << 16)
		for range 1000 {
			rec, err := r.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				if !errors.Is(err, ErrBadLine) && !errors.Is(err, ErrLineTooLong) {
					t.Fatalf("error %v wraps neither ErrBadLine nor ErrLineTooLong", err)
				}
				continue
			}
			if err := rec.Validate(); err != nil {
				t.Fatalf("Next returned an invalid record: %v", err)
			}
		}
	})
}
