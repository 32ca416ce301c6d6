// Package cluster replicates persisted FlashMemory sessions across hosts so
// that a session outlives the host that made it and resumes on any member.
//
// Two planes, kept apart on purpose:
//
//   - The catalog is a Raft state machine (hashicorp/raft, raft-boltdb log
//     and stable store, file snapshots, TCP transport). It holds only small
//     records: the members (id, addresses, capacity, GPUs) and, per
//     persisted session, its name, owner uid/gid, model, layout, policy,
//     chunk count, page manifest (page → generation, CRC32C), the digest of
//     its metadata blob (which carries the indexer state), its replica set,
//     its owner node and an ownership epoch. Every catalog change is one
//     small deterministic command; page bytes never enter the log.
//   - Page bytes and metadata blobs travel over the peer port (peer.go):
//     an authenticated (HMAC-SHA256 challenge over a shared secret,
//     optionally mutual TLS) stream between members. A replica verifies each
//     page's CRC32C and generation and makes it durable before it acks, and
//     the manifest naming that replica is committed only after the ack, so
//     the catalog never names a copy that does not exist.
//
// Ownership is an epoch: a node may append to or persist a session only
// while the catalog names it owner at the epoch it holds. Moving a session
// (RESUME elsewhere) is a compare-and-swap on the epoch through Raft, so two
// owners are never both accepted, and a node back from a crash or a
// partition finds its epoch stale and refuses.
//
// The package talks to the local page store only through the Store
// interface; the daemon adapts its tiers to it (daemon/cluster.go). It
// imports no other project package.
package cluster
