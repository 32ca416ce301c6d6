package cluster

import (
	"context"
	"hash/crc32"
)

// PageInfo names one page of a local copy.
type PageInfo struct {
	Page uint32 `json:"p"`
	Gen  uint64 `json:"g"`
	CRC  uint32 `json:"c"`
}

// PageData is a page with its bytes.
type PageData struct {
	PageInfo
	Data []byte `json:"-"`
}

// Store is what the cluster needs from the local page store; the daemon
// adapts its tiers to it. Sessions are named: local ids differ per node.
type Store interface {
	// Meta returns the local copy's metadata blob and the generation of
	// each page it names (index = page), or ErrNotFound.
	Meta(ctx context.Context, name string) (meta []byte, gens []uint64, err error)
	// ReadPage returns a page of the local copy, verified by the store.
	ReadPage(ctx context.Context, name string, page uint32) (gen uint64, data []byte, err error)
	// WritePages stores pages of name at their generations; they are durable
	// when it returns.
	WritePages(ctx context.Context, name string, pages []PageData) error
	// WriteMeta stores the metadata blob durably, after the pages it names,
	// making the local copy resumable.
	WriteMeta(ctx context.Context, name string, meta []byte) error
	// Delete removes the local copy (not an error if there is none).
	Delete(ctx context.Context, name string) error
}

// DeleteNotifier is an optional Store capability: Deleted is called
// synchronously, on the FSM's goroutine, as soon as a delete of name is
// applied on this node and before Delete runs in the background. The store
// must stop serving its local copy from then on (a RESUME racing the
// background Delete would otherwise revive a replica's copy); it must not
// block.
type DeleteNotifier interface {
	Deleted(name string)
}

// MetaDeltas is an optional Store capability: a replica that holds the
// committed metadata version gets only what changed since (a decode step
// adds a few chunks' keys to tens of MB of indexer state).
type MetaDeltas interface {
	// MetaDelta returns a delta that turns the metadata version whose
	// checksum is from into cur (the current blob, as Meta returned it);
	// ok false when this store cannot make one (send cur whole).
	MetaDelta(ctx context.Context, name string, from uint32, cur []byte) (delta []byte, ok bool)
	// ApplyMetaDelta applies delta to the local copy, which must be at
	// version from, and checks that the result is version to. On any
	// error the sender sends the whole blob.
	ApplyMetaDelta(ctx context.Context, name string, from, to uint32, delta []byte) error
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC32C every manifest entry carries.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }
