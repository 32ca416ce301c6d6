//go:build cuda

package cuda

import (
	"errors"
	"fmt"
)

// Recall variants measured by TestRecallBench against Stream.Recall and not used by the
// daemon: each lost to the gather kernel alone on the H100 (docs/benchmarks.md, "CUDA
// path, second session"). They stay with the benchmark so the comparison can be re-run.

// RecallSplit copies host-to-device rows with the copy engines and the SMs at once: about
// engineShare of the bytes (the leading descriptors) go through cuMemcpyBatchAsync on aux,
// the rest through the gather kernel on s, and s waits (on the device) for aux, so work
// enqueued on s afterwards, an event included, sees every row. Either path alone leaves
// PCIe headroom on small rows (the kernel tops out near 49.5 GB/s reading host memory on
// the H100, the copy engines lose to per-row overhead), so together they get closer to a
// contiguous copy. join is an event of s's device that this call records on aux. Without
// cuMemcpyBatchAsync everything goes through Gather.
func (s *Stream) RecallSplit(aux *Stream, join *Event, descs []CopyDesc, engineShare float64) error {
	if aux.dev != s.dev || join.dev != s.dev {
		return fmt.Errorf("cuda: RecallSplit across devices: %w", ErrInvalid)
	}
	k := splitAt(descs, engineShare)
	if k > 0 {
		// aux must not start before work already on s (the slots may still be read).
		if err := join.Record(s); err != nil {
			return err
		}
		if err := aux.WaitEvent(join); err != nil {
			return err
		}
		err := aux.CopyBatch(descs[:k])
		if errors.Is(err, ErrUnsupported) {
			return s.Gather(descs)
		}
		if err != nil {
			return err
		}
		if err := join.Record(aux); err != nil {
			return err
		}
	}
	if err := s.Gather(descs[k:]); err != nil {
		return err
	}
	if k > 0 {
		return s.WaitEvent(join)
	}
	return nil
}

// CopyBatchSpread spreads host-to-device rows over several streams, one
// cuMemcpyBatchAsync each, so that more than one copy engine works on one recall: a
// single engine pays a fixed cost per row (about 0.5 µs on the H100), which caps 64 KiB
// rows near 37 GB/s. The rows are cut into len(aux)+1 runs of about equal bytes; s
// takes the first run, aux[i] the next. evs needs len(aux)+1 events of s's device: evs[0]
// orders aux after work already on s, evs[i+1] makes s wait for aux[i], so work enqueued
// on s afterwards sees every row.
func (s *Stream) CopyBatchSpread(aux []*Stream, evs []*Event, descs []CopyDesc) error {
	if len(evs) < len(aux)+1 {
		return fmt.Errorf("cuda: CopyBatchSpread with %d streams needs %d events: %w", len(aux), len(aux)+1, ErrInvalid)
	}
	if len(aux) == 0 || len(descs) <= len(aux) {
		return s.CopyBatch(descs)
	}
	if err := evs[0].Record(s); err != nil {
		return err
	}
	parts := len(aux) + 1
	rest := descs
	var runs [][]CopyDesc
	for i := range parts {
		k := len(rest)
		if i < parts-1 {
			k = splitAt(rest, 1/float64(parts-i))
		}
		runs = append(runs, rest[:k])
		rest = rest[k:]
	}
	for i, a := range aux {
		if err := a.WaitEvent(evs[0]); err != nil {
			return err
		}
		if err := a.CopyBatch(runs[i+1]); err != nil {
			return err
		}
		if err := evs[i+1].Record(a); err != nil {
			return err
		}
	}
	if err := s.CopyBatch(runs[0]); err != nil {
		return err
	}
	for i := range aux {
		if err := s.WaitEvent(evs[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// StagedPage is one page of RecallStaged: Len contiguous bytes at Src (pinned host memory)
// whose rows go to scattered device addresses; Rows[i].Src is an offset into the page.
type StagedPage struct {
	Src  DevPtr
	Len  uint64
	Rows []CopyDesc
}

// RecallStaged recalls pages whose rows scatter over many destinations (DeepSeek-V4: 21
// rows of 37,440 B per page, one per layer buffer) in two pipelined stages: the copy
// engines move whole pages, contiguous in the mirror and so at large-row speed, into a
// device staging area (on aux), and the gather kernel scatters their rows device to
// device (on s) while the engines move the next group. staging is split into two halves
// used in turn; a group is as many pages as fit in a half. evs needs 4 events of s's
// device. Work enqueued on s afterwards sees every row. Pages larger than half the
// staging area are refused with ErrInvalid.
func (s *Stream) RecallStaged(aux *Stream, evs []*Event, staging DevPtr, stagingBytes int, pages []StagedPage) error {
	if len(evs) < 4 {
		return fmt.Errorf("cuda: RecallStaged needs 4 events, got %d: %w", len(evs), ErrInvalid)
	}
	half := uint64(stagingBytes / 2 &^ 255)
	copied, free := evs[0:2], evs[2:4]
	// aux must not overwrite staging (or destinations) before work already on s is done.
	if err := free[0].Record(s); err != nil {
		return err
	}
	if err := free[1].Record(s); err != nil {
		return err
	}
	var pageDescs, rowDescs []CopyDesc
	for i, g := 0, 0; i < len(pages); g++ {
		h := g % 2
		base := staging + DevPtr(uint64(h)*half)
		pageDescs, rowDescs = pageDescs[:0], rowDescs[:0]
		var used uint64
		for ; i < len(pages) && used+pages[i].Len <= half; i++ {
			p := pages[i]
			pageDescs = append(pageDescs, CopyDesc{Src: p.Src, Dst: base + DevPtr(used), Len: p.Len})
			for _, r := range p.Rows {
				rowDescs = append(rowDescs, CopyDesc{Src: base + DevPtr(used) + r.Src, Dst: r.Dst, Len: r.Len})
			}
			used += (p.Len + 255) &^ 255
		}
		if len(pageDescs) == 0 {
			return fmt.Errorf("cuda: RecallStaged page of %d B, staging half %d B: %w", pages[i].Len, half, ErrInvalid)
		}
		if err := aux.WaitEvent(free[h]); err != nil {
			return err
		}
		if err := aux.CopyBatch(pageDescs); err != nil {
			return err
		}
		if err := copied[h].Record(aux); err != nil {
			return err
		}
		if err := s.WaitEvent(copied[h]); err != nil {
			return err
		}
		if err := s.Gather(rowDescs); err != nil {
			return err
		}
		if err := free[h].Record(s); err != nil {
			return err
		}
	}
	return nil
}
