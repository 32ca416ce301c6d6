// Package daemon is flashmemd as a library: configuration, the control
// socket, client connections, sessions, the cycle path, persistence, GPU
// discovery, metrics and systemd integration. cmd/flashmemd is a thin main
// around Main.
//
// Use:
//
//	cfg := daemon.DefaultConfig()          // works with no file, flag or env
//	cfg.Socket = "/run/flashmemd/fm.sock"
//	d, err := daemon.New(cfg, daemon.WithLogger(log))
//	err = d.Run(ctx)                       // serves until ctx ends, then shuts down gracefully
//	err = d.Close()                        // releases everything, in reverse order of New
//
// New opens the tiers (host mirror + SSD as a tiers.Store, the reserve, the
// mover), loads the indexer models, finds the GPUs, and listens (or takes
// the socket systemd passes). Run serves each connection on one read loop:
// HELLO hands the client its staging region; OPEN/RESUME hand it its
// session's reserve region; APPEND and COMMIT store chunks; CYCLE scores a
// batch of sessions with the Memory Indexer, applies the selection one cycle
// late (LSA), pins the decoder's page table under a lease and queues the
// recall of the new selection on the mover. docs/architecture.md describes
// the data path, the lock order and who owns which memory; docs/protocol.md
// the wire format. Every error a client can cause is mapped to a wire code
// in errors.go.
package daemon
