package eval

import "errors"

// Sentinel errors. Every error this package returns wraps one of them with %w
// and names the line, record, query or option at fault.
var (
	// ErrBadLine reports a dataset line that is not a valid record: malformed
	// JSON, a missing field, evidence that is not a substring of the context.
	// The message names the 1-based line number.
	ErrBadLine = errors.New("eval: bad dataset line")

	// ErrLineTooLong reports a dataset line longer than the reader's limit.
	ErrLineTooLong = errors.New("eval: dataset line too long")

	// ErrEvidenceNotFound reports an evidence string that does not occur in its
	// record's context (wrapped together with ErrBadLine by the reader).
	ErrEvidenceNotFound = errors.New("eval: evidence not in context")

	// ErrBadOptions reports generator, policy or harness options out of range.
	ErrBadOptions = errors.New("eval: invalid options")

	// ErrBadTrace reports trace keys or queries the trace-replay scorer
	// cannot use (wrong size, a cycle past TraceCycles).
	ErrBadTrace = errors.New("eval: bad trace key or query")

	// ErrNoFiller reports a filler directory without usable text.
	ErrNoFiller = errors.New("eval: no filler text")
)
