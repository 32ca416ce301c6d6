package textmode

import "errors"

// Sentinel errors. Every error this package returns wraps one of them with %w and
// names the offending value (tensor, field, byte offset), so callers test with
// errors.Is and people read the message.
var (
	// ErrBadConfig reports a model configuration outside its valid range (a bucket
	// count that is not a power of two, a zero dimension, too many key terms).
	ErrBadConfig = errors.New("textmode: invalid config")

	// ErrBadFile reports a safetensors file that is truncated, has a malformed
	// header, overlapping or out-of-bounds tensors, or an unknown dtype.
	ErrBadFile = errors.New("textmode: malformed safetensors file")

	// ErrBadModel reports a well-formed file whose tensors do not make a text-mode
	// model: a tensor is missing, has the wrong dtype or shape, or holds non-finite
	// values.
	ErrBadModel = errors.New("textmode: invalid model")

	// ErrBadKey reports chunk key bytes that are not a whole number of keys or
	// whose header fields are out of range.
	ErrBadKey = errors.New("textmode: bad chunk key")

	// ErrBadQuery reports query bytes of the wrong length or with fields out of
	// range.
	ErrBadQuery = errors.New("textmode: bad query")

	// ErrNoData reports training input with too little text to form a batch.
	ErrNoData = errors.New("textmode: not enough training data")
)
