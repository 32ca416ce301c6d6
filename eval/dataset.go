package eval

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Record is one dataset line: a long context and questions about it.
type Record struct {
	ID      string  `json:"id"`
	Task    string  `json:"task"`
	Context string  `json:"context"`
	Queries []Query `json:"queries"`
}

// Query is one question with its reference answer and the evidence, exact
// substrings of the context that a model must see to answer.
type Query struct {
	Question string   `json:"question"`
	Answer   string   `json:"answer"`
	Evidence []string `json:"evidence"`
}

// DefaultMaxLine bounds one dataset line: a 1M-token context is about 4 MB of
// text, so 64 MiB leaves room for JSON escaping and long multilingual text
// while still bounding what a corrupt file can make the reader allocate.
const DefaultMaxLine = 64 << 20

// Reader streams records from a JSONL dataset, one line at a time, so a file of
// many 1M-token contexts never sits in memory whole.
type Reader struct {
	br      *bufio.Reader
	line    int
	maxLine int
	buf     []byte
}

// NewReader returns a Reader over r with line limit DefaultMaxLine.
func NewReader(r io.Reader) *Reader {
	return &Reader{br: bufio.NewReaderSize(r, 1<<20), maxLine: DefaultMaxLine}
}

// SetMaxLine changes the line limit (bytes, > 0).
func (r *Reader) SetMaxLine(n int) {
	if n > 0 {
		r.maxLine = n
	}
}

// Line is the 1-based number of the line the last Next call read.
func (r *Reader) Line() int { return r.line }

// Next returns the next record, skipping blank lines, or io.EOF at the end. A
// bad line yields an error wrapping ErrBadLine (or ErrLineTooLong) that names
// its line number; the reader can continue with the next line after it.
func (r *Reader) Next() (*Record, error) {
	for {
		line, err := r.readLine()
		if err != nil {
			return nil, err
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		return parseRecord(line, r.line)
	}
}

// readLine returns the next line (without the newline), reading it whole up to
// maxLine bytes; a longer line is skipped and reported.
func (r *Reader) readLine() ([]byte, error) {
	r.buf = r.buf[:0]
	r.line++
	tooLong := false
	for {
		frag, err := r.br.ReadSlice('\n')
		if len(r.buf)+len(frag) > r.maxLine {
			tooLong = true
		} else {
			r.buf = append(r.buf, frag...)
		}
		switch {
		case err == nil:
			if tooLong {
				return nil, fmt.Errorf("%w: line %d exceeds %d bytes", ErrLineTooLong, r.line, r.maxLine)
			}
			return r.buf[:len(r.buf)-1], nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF):
			if tooLong {
				return nil, fmt.Errorf("%w: line %d exceeds %d bytes", ErrLineTooLong, r.line, r.maxLine)
			}
			if len(r.buf) == 0 {
				return nil, io.EOF
			}
			return r.buf, nil
		default:
			return nil, fmt.Errorf("eval: reading line %d: %w", r.line, err)
		}
	}
}

func parseRecord(line []byte, n int) (*Record, error) {
	var rec Record
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rec); err != nil {
		return nil, fmt.Errorf("%w: line %d: %v", ErrBadLine, n, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: line %d: trailing data after the JSON object", ErrBadLine, n)
	}
	if err := rec.Validate(); err != nil {
		return nil, fmt.Errorf("%w: line %d (id %q): %w", ErrBadLine, n, rec.ID, err)
	}
	return &rec, nil
}

// Validate checks that a record has an id, a task, a context and at least one
// query, that every query has a question and an answer, and that every
// evidence string is a non-empty substring of the context.
func (rec *Record) Validate() error {
	switch {
	case rec.ID == "":
		return errors.New(`missing "id"`)
	case rec.Task == "":
		return errors.New(`missing "task"`)
	case rec.Context == "":
		return errors.New(`missing "context"`)
	case len(rec.Queries) == 0:
		return errors.New(`no "queries"`)
	}
	for i, q := range rec.Queries {
		if strings.TrimSpace(q.Question) == "" {
			return fmt.Errorf("query %d: empty question", i)
		}
		if strings.TrimSpace(q.Answer) == "" {
			return fmt.Errorf("query %d: empty answer", i)
		}
		if len(q.Evidence) == 0 {
			return fmt.Errorf("query %d: no evidence", i)
		}
		for j, e := range q.Evidence {
			if e == "" {
				return fmt.Errorf("query %d evidence %d: empty", i, j)
			}
			if !strings.Contains(rec.Context, e) {
				return fmt.Errorf("query %d evidence %d (%.40q): %w", i, j, e, ErrEvidenceNotFound)
			}
		}
	}
	return nil
}

// Writer writes records as JSONL.
type Writer struct {
	w   *bufio.Writer
	enc *json.Encoder
}

// NewWriter returns a Writer to w; call Flush at the end.
func NewWriter(w io.Writer) *Writer {
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	return &Writer{w: bw, enc: enc}
}

// Write validates rec and writes it as one line.
func (w *Writer) Write(rec *Record) error {
	if err := rec.Validate(); err != nil {
		return fmt.Errorf("%w: record %q: %w", ErrBadOptions, rec.ID, err)
	}
	return w.enc.Encode(rec)
}

// Flush writes buffered data to the underlying writer.
func (w *Writer) Flush() error { return w.w.Flush() }
