package daemon

import (
	"context"
	"errors"

	"github.com/flashmemory/flashmemory/cluster"
	"github.com/flashmemory/flashmemory/eval"
	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/indexer/textmode"
	"github.com/flashmemory/flashmemory/proto"
	"github.com/flashmemory/flashmemory/tiers"
)

// wireError maps any error to the *proto.Error sent to clients. It is the one
// place where package sentinels meet wire codes; an error already carrying a
// code keeps it.
func wireError(err error) *proto.Error {
	var pe *proto.Error
	if errors.As(err, &pe) {
		return pe
	}
	code := proto.CodeInternal
	switch {
	case errors.Is(err, cluster.ErrStaleEpoch):
		code = proto.CodeNotOwner
	case errors.Is(err, cluster.ErrNoQuorum), errors.Is(err, cluster.ErrUnderReplicated):
		code = proto.CodeUnavailable
	case errors.Is(err, cluster.ErrChecksum):
		code = proto.CodeIntegrity
	case errors.Is(err, cluster.ErrNotFound):
		code = proto.CodeUnknownSession
	case errors.Is(err, cluster.ErrUnknownMember):
		code = proto.CodeBadRequest
	case errors.Is(err, tiers.ErrIntegrity):
		code = proto.CodeIntegrity
	case errors.Is(err, tiers.ErrNoSpace), errors.Is(err, tiers.ErrDiskFull):
		code = proto.CodeNoSpace
	case errors.Is(err, tiers.ErrBudget):
		code = proto.CodeLimitExceeded
	case errors.Is(err, tiers.ErrClosed), errors.Is(err, ErrShuttingDown), errors.Is(err, context.Canceled):
		code = proto.CodeShuttingDown
	case errors.Is(err, ErrPermission):
		code = proto.CodePermissionDenied
	case errors.Is(err, indexer.ErrKeyDuplicate):
		code = proto.CodeDuplicateChunk
	case errors.Is(err, indexer.ErrKeyGap):
		code = proto.CodeChunkGap
	case errors.Is(err, indexer.ErrKeyLength):
		code = proto.CodePayloadSize
	case errors.Is(err, indexer.ErrTooManyChunks):
		code = proto.CodeLimitExceeded
	case errors.Is(err, indexer.ErrBadQuery), errors.Is(err, indexer.ErrBatch), errors.Is(err, indexer.ErrBadPolicy), errors.Is(err, indexer.ErrBadKey),
		errors.Is(err, textmode.ErrBadQuery), errors.Is(err, textmode.ErrBadKey), errors.Is(err, eval.ErrBadTrace):
		code = proto.CodeBadRequest
	default:
		if c := proto.CodeOf(err); c != proto.CodeInternal {
			code = c
		}
	}
	return &proto.Error{Code: code, Msg: err.Error()}
}

// indexerError gives indexer failures their wire code while keeping the
// indexer's message, which names the chunk or layer at fault.
func indexerError(err error) error { return wireError(err) }
