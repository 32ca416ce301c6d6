package tiers

import "errors"

// ErrNotFound means the tier holds no page (or session, region, lease, metadata
// blob) under the requested key. For a cache-like tier (reserve, mirror) it is a
// miss, not a failure: the caller goes to the next tier down.
var ErrNotFound = errors.New("tiers: not found")

// ErrIntegrity means stored bytes failed verification (bad magic, header
// checksum or body checksum, or a header naming a different page). Such bytes are
// never served; the read counts as a miss and the error is counted in Stats.
var ErrIntegrity = errors.New("tiers: integrity check failed")

// ErrNoSpace means a reserve region has no slot that may be evicted: every slot
// is pinned by a live lease or busy with a copy.
var ErrNoSpace = errors.New("tiers: no evictable slot")

// ErrBudget means a byte budget (host mirror, reserve total) would be exceeded.
// The Store reacts to it by spilling cold pages; a standalone HostMirror returns
// it to the caller.
var ErrBudget = errors.New("tiers: byte budget exceeded")

// ErrClosed means the tier, region or mover was closed.
var ErrClosed = errors.New("tiers: closed")

// ErrSize means a buffer's length does not match the page (or chunk) it is meant
// to hold, or a page is empty or larger than MaxPageBytes.
var ErrSize = errors.New("tiers: size mismatch")

// ErrLayout means a Layout is invalid or exceeds the package limits.
var ErrLayout = errors.New("tiers: invalid layout")

// ErrPinned means the operation would overwrite or free a reserve slot that a
// live lease hands to a client. The caller updates the mirror only; the
// generation mismatch makes the next recall copy again after the lease ends.
var ErrPinned = errors.New("tiers: slot pinned by a lease")

// ErrStale means the caller's view is out of date: a reserve slot no longer holds
// the page it names, or a write carries a generation older than the stored one.
var ErrStale = errors.New("tiers: stale page or slot")

// ErrRange means a slot, chunk or layer index is out of range.
var ErrRange = errors.New("tiers: index out of range")

// ErrExists means a region for the session already exists.
var ErrExists = errors.New("tiers: already exists")

// ErrBusy means a bounded queue is full; the caller retries later (the mover
// never blocks the socket loop on a full queue).
var ErrBusy = errors.New("tiers: queue full")

// ErrName means a metadata name is empty, too long or not valid UTF-8.
var ErrName = errors.New("tiers: invalid name")

// ErrDiskFull means the SSD tier's filesystem is at its free-space floor (or
// out of space): writes are refused until space is freed; reads go on.
var ErrDiskFull = errors.New("tiers: disk space below the floor")

// errOldIndex marks an index entry of an earlier format: the index is rebuilt
// from the journal.
var errOldIndex = errors.New("index entry of an earlier format")
