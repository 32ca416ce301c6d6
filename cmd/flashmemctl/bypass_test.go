package main_test

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// The tiering simulator with the page cache out of the way (#17), the
// command docs/benchmarks.md quotes, with the real binaries: daemons read SSD
// pages with O_DIRECT (in a memory cgroup where this machine allows one),
// every page the decode phase reads back comes from the disk, lookahead
// staging brings the pages the next selections need into host memory so
// recalls read far fewer of them from SSD than on demand (which reads them
// when a cycle hands them out, the decoder waiting), and lookahead stays
// stall-free where on demand does not.
func TestSimBypassCache(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two daemons and writes 1.2 GB")
	}
	cmd := exec.Command(filepath.Join(binDir, "flashmemctl"), "--json", "sim", "--bypass-cache",
		"--sessions", "8", "--tokens", "131072", "--host-share", "0.25", "--layers", "4", "--cycles", "16",
		"--modes", "lookahead,on-demand", "--flashmemd", filepath.Join(binDir, "flashmemd"), "--dir", t.TempDir())
	cmd.Env = cleanEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("sim: %v\n%s", err, stderr.String())
	}
	type tier struct {
		Name string `json:"name"`
		Read uint64 `json:"read_bytes"`
	}
	type result struct {
		Mode       string             `json:"mode"`
		SyncPages  int                `json:"sync_loaded_pages"`
		StallFree  float64            `json:"stall_free_fraction"`
		AfterFirst float64            `json:"stall_free_steady"`
		ReadMode   string             `json:"read_mode"`
		Cgroup     string             `json:"cgroup"`
		Limit      int64              `json:"cgroup_limit_bytes"`
		Peak       int64              `json:"cgroup_peak_bytes"`
		Tiers      []tier             `json:"tiers"`
		ByCycle    map[int]int        `json:"stalls_by_cycle"`
		WaitP99    float64            `json:"wait_p99_us"`
		VisibleP99 float64            `json:"visible_wait_p99_us"`
		Counters   map[string]float64 `json:"counters"`
	}
	res := map[string]result{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("%v: %s", err, sc.Text())
		}
		res[r.Mode] = r
	}
	la, od := res["lookahead"], res["on-demand"]
	if la.Mode == "" || od.Mode == "" {
		t.Fatalf("results: %s", out)
	}
	t.Logf("lookahead: stall-free %.4f (from cycle 3 %.4f), on-demand %.4f (%.4f); %s", la.StallFree, la.AfterFirst, od.StallFree, od.AfterFirst, strings.TrimSpace(stderr.String()))
	for _, r := range []result{la, od} {
		if r.ReadMode != "direct" {
			t.Errorf("%s: daemon read %q, want direct", r.Mode, r.ReadMode)
		}
		if r.Cgroup != "" && r.Peak > r.Limit+4096 { // the kernel rounds the limit to pages
			t.Errorf("%s: cgroup peak %d over its limit %d", r.Mode, r.Peak, r.Limit)
		}
		var ssd uint64
		for _, tr := range r.Tiers {
			if tr.Name == "ssd" {
				ssd = tr.Read
			}
		}
		// The mirror holds a quarter of the pages: most of each cycle's
		// new pages must come off the disk (8 sessions × ~5 pages × 15
		// cycles of 146 KiB at least).
		if ssd < 50<<20 {
			t.Errorf("%s: %d B read from SSD during the decode, want the disk to serve the pages the mirror lacks", r.Mode, ssd)
		}
	}
	// Staging halves the recall pages read from SSD at least, beyond each
	// session's first selection (51 pages, no lookahead foresees it: up to
	// 8 × 51 of them come off the disk in both modes). Counting them in,
	// the ratio sits near 0.42 (~355 vs ~840) and crossed 0.5 by a page
	// when staging fell behind at load 10.
	first := float64(8 * 51)
	if la.Counters["staged_used"] == 0 || la.Counters["prefetch_late"]-first >= (od.Counters["prefetch_late"]-first)/2 {
		t.Errorf("lookahead: %v staged pages used, %v recall pages read from SSD; on demand %v: beyond the %v of the first selections, staging should halve them at least",
			la.Counters["staged_used"], la.Counters["prefetch_late"], od.Counters["prefetch_late"], first)
	}
	// #17: lookahead stall-free ≥ 0.99 and above on demand. On demand
	// reads the pages only on SSD when a cycle hands them out, so the
	// decoder waits on the disk in most cycles; lookahead staged them a
	// cycle earlier and copies them from host memory in the background.
	// A stall is a wait for page data (WaitMicros ≥ 250 µs) or a
	// synchronous load; the CPU time of the CYCLE's bookkeeping is not in
	// WaitMicros (on this shared VM the scheduler stretched it to
	// milliseconds with nothing to copy), and reserve memory is populated
	// ahead of the recalls.
	//
	// ≥ 0.99 is asserted from cycle 3 on, once every session's first
	// selection is in: that burst (all 8 sessions' first selections from
	// SSD within one cycle, ~340 pages, which no lookahead can foresee) is
	// a real wait for data, and on the shared 2-core VM at load 8 and above
	// it outlasts the cycle in some runs (lookahead over all cycles ≥ 0.99
	// in most runs, not all: docs/benchmarks.md, "SSD as a capacity tier",
	// third follow-up). Over all cycles lookahead must stay ≥ 0.9 and
	// strictly above on demand.
	if la.AfterFirst < 0.99 || la.StallFree < 0.9 || la.StallFree <= od.StallFree {
		t.Errorf("lookahead stall-free %.4f (from cycle 3 %.4f; stalls by cycle %v), on demand %.4f: want lookahead ≥ 0.99 from cycle 3, ≥ 0.9 overall and above on demand",
			la.StallFree, la.AfterFirst, la.ByCycle, od.StallFree)
	}
	t.Logf("decoder-visible wait beyond scoring, p99: lookahead %.0f µs, on demand %.0f µs (data wait p99 %.0f / %.0f µs)", la.VisibleP99, od.VisibleP99, la.WaitP99, od.WaitP99)
	if od.SyncPages == 0 {
		t.Errorf("on demand loaded no page synchronously: its SSD reads were not at the moment of need")
	}
	t.Logf("load average %.1f on %d CPUs", loadAverage(), runtime.NumCPU())
}

func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f, _ := strconv.ParseFloat(strings.Fields(string(b))[0], 64)
	return f
}
