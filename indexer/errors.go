package indexer

import "errors"

// Sentinel errors. Every error returned by this package wraps one of these with %w and names
// the offending value (tensor, chunk index, layer, field), so callers test with errors.Is and
// humans read the message.
var (
	// ErrBadPolicy reports a Policy field outside its valid range.
	ErrBadPolicy = errors.New("indexer: invalid policy")

	// ErrBadConfig reports a model configuration that is inconsistent or unsupported
	// (zero dimensions, unknown ensemble mode or variant, duplicate target layers).
	ErrBadConfig = errors.New("indexer: invalid model config")

	// ErrBadModel reports a weights file whose tensors are missing, misnamed, of the wrong
	// dtype or shape, or whose bytes are truncated or malformed.
	ErrBadModel = errors.New("indexer: invalid model file")

	// ErrKeyGap reports an AppendKeys call whose first chunk index is past the end of the
	// stored keys: chunks must arrive contiguously.
	ErrKeyGap = errors.New("indexer: gap in chunk keys")

	// ErrKeyDuplicate reports an AppendKeys call whose first chunk index is before the end of
	// the stored keys: that chunk was already ingested.
	ErrKeyDuplicate = errors.New("indexer: duplicate chunk keys")

	// ErrKeyLength reports per-layer key bytes that are not a whole number of keys, differ in
	// chunk count between target layers, or come for the wrong number of target layers.
	ErrKeyLength = errors.New("indexer: bad key length")

	// ErrBadKey reports key bytes of the right length that the model's key store rejected.
	ErrBadKey = errors.New("indexer: key rejected by the model")

	// ErrTooManyChunks reports an append that would take a request past Policy.MaxChunks.
	ErrTooManyChunks = errors.New("indexer: too many chunks")

	// ErrBadQuery reports a query with the wrong number of target layers or the wrong byte
	// length, or a negative position.
	ErrBadQuery = errors.New("indexer: bad query")

	// ErrBatch reports a ScoreBatch call whose requests and queries do not match (different
	// lengths, a nil request, requests of different models, the same request twice).
	ErrBatch = errors.New("indexer: bad batch")

	// ErrScores reports per-chunk scores handed to Select whose count differs from the
	// request's chunk count.
	ErrScores = errors.New("indexer: bad scores")

	// ErrBadState reports persisted request state that cannot be restored: wrong magic or
	// version, truncated, checksum mismatch, or made for a different model or page size.
	ErrBadState = errors.New("indexer: bad persisted state")
)
