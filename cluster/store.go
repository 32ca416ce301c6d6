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
	// when it returns. It must not keep the pages' Data after it returns:
	// the peer port reuses those buffers.
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

// MetaVersions is an optional Store capability that keeps a committed copy
// available while a newer, uncommitted one arrives. A replica's copy is
// updated in place by the owner's PERSIST before the commit; if that commit
// never comes (the owner died, or lost the session to another node
// mid-PERSIST) and the owner had overwritten its own copy too, no node
// would hold the committed version any more. So before a replica write
// replaces metadata at the committed version, the store keeps it, and a
// node that needs the committed version (a RESUME, a pull) finds it.
type MetaVersions interface {
	// MetaVersion returns the canonical metadata blob of name at version
	// crc if this node has it: current, earlier in its record chain, or
	// kept by KeepMeta.
	MetaVersion(ctx context.Context, name string, crc uint32) ([]byte, bool)
	// KeepMeta durably keeps name's metadata at version crc, if this node
	// has it, before a write replaces it.
	KeepMeta(ctx context.Context, name string, crc uint32) error
}

// PageTrimmer is an optional Store capability: DropPagesExcept removes the
// local copy's pages that are not at the generation keep names (index =
// page; generation 0 or past the end: no such page), so a copy brought
// back to a committed version holds no page of a later, uncommitted one
// (whose higher generation would shadow the committed page pulled in, and
// fail the next APPEND to it).
type PageTrimmer interface {
	DropPagesExcept(ctx context.Context, name string, keep []PageEntry) error
}
