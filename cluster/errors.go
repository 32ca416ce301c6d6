package cluster

import "errors"

// Sentinel errors; daemon/errors.go maps them to wire codes.
var (
	// ErrNotFound: the catalog (or a local store) has no such session.
	ErrNotFound = errors.New("cluster: no such session")
	// ErrStaleEpoch: the caller's ownership epoch is not the catalog's (the
	// session moved to another node, or this node came back from a crash or
	// a partition); resume the session again to take it back.
	ErrStaleEpoch = errors.New("cluster: stale ownership epoch")
	// ErrNoQuorum: no leader could commit the change (this node is on the
	// minority side of a partition, or a majority is down).
	ErrNoQuorum = errors.New("cluster: no quorum")
	// ErrAuth: a peer failed the shared-secret challenge.
	ErrAuth = errors.New("cluster: peer authentication failed")
	// ErrChecksum: page or metadata bytes do not match their CRC32C.
	ErrChecksum = errors.New("cluster: checksum mismatch")
	// ErrGeneration: a page arrived older than the copy already held.
	ErrGeneration = errors.New("cluster: stale page generation")
	// ErrUnderReplicated: fewer replicas than replication_factor acked.
	ErrUnderReplicated = errors.New("cluster: not enough replicas")
	// ErrBadCommand: a catalog command or peer frame cannot be decoded.
	ErrBadCommand = errors.New("cluster: malformed command")
	// ErrUnknownMember: no member has that id.
	ErrUnknownMember = errors.New("cluster: unknown member")
	// ErrConfig: the cluster configuration is invalid.
	ErrConfig = errors.New("cluster: invalid configuration")
)
