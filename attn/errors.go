package attn

import "errors"

var (
	// ErrShape reports weights, inputs or outputs whose sizes do not agree.
	ErrShape = errors.New("attn: shape mismatch")
	// ErrKeyLength reports raw key bytes that are not a whole number of keys.
	ErrKeyLength = errors.New("attn: key bytes not a multiple of the key size")
	// ErrRange reports a key range outside the store or a bad index.
	ErrRange = errors.New("attn: key range out of bounds")
	// ErrConfig reports an invalid dimension or hyper-parameter.
	ErrConfig = errors.New("attn: invalid configuration")
	// ErrMismatch reports queries or tasks that cannot be scored together
	// (different head counts, head dims or variants).
	ErrMismatch = errors.New("attn: incompatible queries")
)
