// Package tiers stores the KV pages of flashmemd sessions in three tiers and
// moves them between tiers without blocking the socket loop.
//
//   - Reserve / Region: per session, the memory the decoder reads attention KV
//     from. One buffer per layer, [slots, row_bytes], each 4096-aligned; a
//     resident page occupies the same slot in every layer's buffer. On the CPU
//     build a region is a sealed memfd the daemon maps and hands to the owning
//     client (Region.FD, SCM_RIGHTS); the CUDA build backs the same Region with
//     device memory through the Backend interface. Slots are allocated with LRU
//     eviction among unpinned slots and pinned by lease (a cycle's page table
//     stays valid until the client releases it; a lease is pending while its
//     recall fills it and handed out once the client has it). Every slot records the
//     generation it holds, so a recall copies again whenever the page changed.
//   - HostMirror: every page of every live session, in page-aligned slots carved
//     from large mmap'ed extents under a byte budget. On GPU hosts the extents
//     come from PinnedAllocator (registered with CUDA), and a GPU region copies
//     a page straight from its mirror slot.
//   - SSD: an append-only journal (Dir/pages/NNNNNNNN.seg) of checksummed,
//     self-describing records — pages, session metadata, deletions — which is
//     the source of truth, and Badger v4 as a rebuildable index of the latest
//     record of each key (journal.go, ssd_index.go). The index is committed
//     without a sync and checkpointed every few seconds; on open it is
//     replayed from its checkpoint, or rebuilt from every segment when it is
//     missing, damaged or names records the journal lacks (ssd_recover.go).
//     Damaged records are quarantined and reported, never served or deleted.
//     GC compacts segments that became mostly garbage; a statfs floor refuses
//     writes (ErrDiskFull) before the filesystem fills.
//
// Store combines mirror and SSD (spilling cold pages when the mirror passes its
// budget, bringing them back on a miss); Mover runs recalls (SSD → mirror →
// reserve) and lookahead staging on a bounded worker pool and reports each
// recall through a Ticket. A worker copies a run of one recall's pages that
// are in the mirror as one batch (Region.WritePages: one launch and one
// completion wait on the GPU).
//
// Every tier implements Tier and passes the conformance suite in
// tiers/tiertest.
//
// Typical daemon use, per session:
//
//	geo, _ := tiers.NewGeometry(layout)
//	region, _ := reserve.Create(sessionID, layout, slots)   // send region.FD()
//	run := tiers.ChunkRun{Payload: staging, N: n, From: i, Count: k, PageChunk: c}
//	prev, _ := store.WriteChunkRun(ctx, id, gen, geo, run)    // append (spills if full)
//	if slot, _, ok := region.Lookup(id.Page); ok {            // resident: keep it current
//		_ = region.WriteChunkRun(slot, id.Page, prev, gen, run)
//	}
//	tail, _ := region.AllocateZeroed(tailPage)                // decoder writes cells itself
//	a, _ := region.Allocate(page)                             // per selected page
//	_ = region.PinLoading(recallLease, []int{a.Slot})
//	t, _ := mover.Recall(region, items)                       // never blocks
//	mover.Stage(lookahead)
//	// next cycle: <-t.Done(), t.Results(); region.HandOut(recallLease) and
//	// reply with the page table; region.Release(lease) when the client does
//
// Concurrency: every type is safe for concurrent use. Writes of one page must
// be serialised by the caller (the session's goroutine); reads may race them
// and always return bytes matching the generation they report, except that
// HostMirror.WriteChunk updates a page in place (the bytes of other chunks
// never change, and a racing reader reports the older generation, so any copy
// it fed is recopied). A chunk write waits while its page is being written to
// SSD (spilled or cleaned), so the bytes and checksum that reach SSD are one
// version.
package tiers
