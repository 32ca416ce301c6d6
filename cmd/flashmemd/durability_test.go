package main_test

// Durability of the real binary: kill -9 (the reproduced "generation 2 not
// newer than 2" bug and a loop of kills), damaged files in the data
// directory, a full filesystem. scripts/durability.sh runs the long forms.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/proto"
)

// smallHostConfig is testConfig with a 4 MiB host mirror, so pages spill to
// SSD while sessions are written.
var smallHostConfig = strings.Replace(testConfig, "budget_bytes = 268435456", "budget_bytes = 4194304", 1)

// kill9 kills the daemon with SIGKILL and waits for it.
func (p *daemonProc) kill9(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("flashmemd survived SIGKILL")
	}
}

// checkAll cycles over a session with every page resident and verifies
// every page it serves against the payloads appended (chunks < n).
func checkAll(t *testing.T, c *proto.Client, sess uint64, l *proto.Layout, desc *proto.RegionDesc, mem []byte, seed, n uint64, r *rand.Rand) []proto.DamagedPage {
	t.Helper()
	res, err := c.Cycle(context.Background(), []proto.CycleEntry{{Session: sess, Position: n * 4, Queries: hidden(r)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("cycle of session %d: %v %v", sess, err, res[0].Err)
	}
	verify(t, l, desc, mem, seed, n, res[0].Pages)
	c.Release(context.Background(), res[0].Lease)
	return res[0].Damaged
}

// The reproduction from issue #9: a page of a persisted session written to
// SSD after its last PERSIST, then kill -9; after RESUME the APPEND at the
// persisted end must succeed (it failed forever with "generation 2 not newer
// than 2"), and every page reads back byte-identical.
func TestKill9ResumeAppend(t *testing.T) {
	dir := t.TempDir()
	p := startDaemonConfig(t, dir, smallHostConfig)
	c := dial(t, p.socket)
	ctx := context.Background()
	l := layout(64)
	const seed = 99
	r := rand.New(rand.NewPCG(9, 9))
	op, err := c.Open(ctx, &proto.Open{Name: "A", Persist: true, Layout: l, Policy: proto.Policy{KMax: 64}})
	if err != nil {
		t.Fatal(err)
	}
	if err := appendChunks(c, op.Session, &l, seed, 0, 100, r); err != nil {
		t.Fatal(err)
	}
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatal(err)
	}
	if err := appendChunks(c, op.Session, &l, seed, 100, 128, r); err != nil {
		t.Fatal(err)
	}
	// Fill another session until A's pages are written to SSD (4 MiB of
	// mirror, 41 KiB pages: 300 pages are far more than fit).
	ob, err := c.Open(ctx, &proto.Open{Name: "B", Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	if err := appendChunks(c, ob.Session, &l, seed+1, 0, 300*64, r); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the background spiller and cleaner run every 100 ms
	p.kill9(t)

	p = startDaemonConfig(t, dir, smallHostConfig)
	c = dial(t, p.socket)
	rr, err := c.Resume(ctx, "A")
	if err != nil {
		t.Fatal(err)
	}
	if rr.Chunks != 100 {
		t.Fatalf("resumed %d chunks, want the 100 persisted", rr.Chunks)
	}
	if err := appendChunks(c, rr.Session, &l, seed, 100, 128, r); err != nil {
		t.Fatalf("APPEND after RESUME following kill -9: %v", err)
	}
	if err := c.Persist(ctx, rr.Session); err != nil {
		t.Fatal(err)
	}
	mem, err := rr.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	if dmg := checkAll(t, c, rr.Session, &l, &rr.Region.RegionDesc, mem, seed, 128, r); len(dmg) > 0 {
		t.Fatalf("damaged pages after kill -9: %v", dmg)
	}
	p.stop(t)
}

// diskUsage is the bytes allocated to the files under dir.
func diskUsage(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok {
				n += st.Blocks * 512
			}
		}
		return nil
	})
	return n
}

// TestKill9Loop restarts the daemon with kill -9 in the middle of writes,
// FLASHMEM_KILL_CYCLES times (default 3; scripts/durability.sh runs 200):
// every session resumes with at least its acknowledged chunks, every page
// byte-identical, every session accepts appends, and once a restart's
// compaction ran the data directory stays within 2x the live data (pages and
// the latest two metadata records of each session), plus a fixed allowance
// for the index and one segment growth step.
func TestKill9Loop(t *testing.T) {
	cycles := 3
	if v, err := strconv.Atoi(os.Getenv("FLASHMEM_KILL_CYCLES")); err == nil && v > 0 {
		cycles = v
	}
	if testing.Short() {
		cycles = 1
	}
	dir := t.TempDir()
	ctx := context.Background()
	l := layout(64)
	pageBytes := int64(64*584 + 64*64)
	r := rand.New(rand.NewPCG(3, 3))
	acked := map[string]uint64{} // chunks acknowledged by PERSIST
	seeds := map[string]uint64{}
	var restarts []time.Duration
	refused, lost, wrong := 0, 0, 0
	maxRatio, maxKilled := 0.0, 0.0
	// The index's memtable log and tables, and the active segment's last
	// 8 MiB growth step.
	const allowance = 24 << 20
	deadline := time.Now().Add(25 * time.Minute)
	for cycle := 0; cycle < cycles && time.Now().Before(deadline); cycle++ {
		t0 := time.Now()
		p := startDaemonConfig(t, dir, smallHostConfig)
		restarts = append(restarts, time.Since(t0))
		c := dial(t, p.socket)
		type live struct {
			sess   uint64
			chunks uint64
		}
		open := map[string]live{}
		names := make([]string, 0, len(acked))
		for n := range acked {
			names = append(names, n)
		}
		slices.Sort(names)
		for _, name := range names {
			rr, err := c.Resume(ctx, name)
			if err != nil {
				t.Errorf("cycle %d: resume %s: %v", cycle, name, err)
				lost++
				continue
			}
			if rr.Chunks < acked[name] {
				t.Errorf("cycle %d: %s resumed with %d chunks, %d acknowledged", cycle, name, rr.Chunks, acked[name])
				lost++
			}
			mem, err := rr.Region.Map()
			if err != nil {
				t.Fatal(err)
			}
			if rr.Chunks == 0 {
				proto.Unmap(mem)
				open[name] = live{rr.Session, 0}
				continue
			}
			res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: rr.Chunks * 4, Queries: hidden(r)}})
			if err != nil || res[0].Err != nil {
				t.Errorf("cycle %d: CYCLE of %s: %v %v", cycle, name, err, res[0].Err)
				wrong++
			} else {
				if len(res[0].Damaged) > 0 {
					t.Errorf("cycle %d: %s has damaged pages %v", cycle, name, res[0].Damaged)
					wrong++
				}
				before := t.Failed()
				verify(t, &l, &rr.Region.RegionDesc, mem, seeds[name], rr.Chunks, res[0].Pages)
				if !before && t.Failed() {
					wrong++
				}
				c.Release(ctx, res[0].Lease)
			}
			proto.Unmap(mem)
			open[name] = live{rr.Session, rr.Chunks}
		}
		// A new persisted session every few cycles, and an ephemeral one
		// that spills and is left for the restart to clean up.
		if len(acked) < 6 && cycle%2 == 0 {
			name := fmt.Sprintf("s%d", cycle)
			op, err := c.Open(ctx, &proto.Open{Name: name, Persist: true, Layout: l, Policy: proto.Policy{KMax: 64}})
			if err != nil {
				t.Fatalf("cycle %d: open %s: %v", cycle, name, err)
			}
			seeds[name] = uint64(1000 + cycle)
			acked[name] = 0
			open[name] = live{op.Session, 0}
		}
		// On a connection of its own: a connection has one staging region.
		c2 := dial(t, p.socket)
		eph, err := c2.Open(ctx, &proto.Open{Layout: l})
		if err != nil {
			t.Fatal(err)
		}
		// Everyone appends and persists; the kill lands somewhere in it.
		killAt := time.Duration(50+r.IntN(400)) * time.Millisecond
		killed := time.AfterFunc(killAt, func() { p.cmd.Process.Signal(syscall.SIGKILL) })
		go appendChunks(c2, eph.Session, &l, 7, 0, 64*40, rand.New(rand.NewPCG(1, uint64(cycle))))
		for round := 0; round < 8; round++ {
			for _, name := range names {
				s, ok := open[name]
				if !ok {
					continue
				}
				n := uint64(1 + r.IntN(100))
				if s.chunks+n > 60*64 {
					continue
				}
				if err := appendChunks(c, s.sess, &l, seeds[name], s.chunks, s.chunks+n, r); err != nil {
					if !isKilled(err) {
						t.Errorf("cycle %d: %s refuses appends at %d: %v", cycle, name, s.chunks, err)
						refused++
					}
					break
				}
				s.chunks += n
				open[name] = s
				if err := c.Persist(ctx, s.sess); err == nil {
					acked[name] = s.chunks
				} else if !isKilled(err) {
					t.Errorf("cycle %d: persist %s: %v", cycle, name, err)
				}
			}
			for _, name := range []string{fmt.Sprintf("s%d", cycle)} {
				if s, ok := open[name]; ok && !slices.Contains(names, name) {
					n := uint64(64 + r.IntN(200))
					if s.chunks+n > 60*64 {
						continue
					}
					if appendChunks(c, s.sess, &l, seeds[name], s.chunks, s.chunks+n, r) == nil {
						s.chunks += n
						open[name] = s
						if c.Persist(ctx, s.sess) == nil {
							acked[name] = s.chunks
						}
					}
				}
			}
		}
		killed.Stop()
		p.kill9(t)
		c.Close()
		c2.Close()
		// Live data: every acknowledged page. Right after the kill the
		// directory also holds the garbage of the writes in flight; the
		// bound is checked once the next start's compaction ran.
		// Metadata counts too: each session's indexer state (its index
		// keys, 3 target layers of 132 B per chunk), whose latest and
		// previous records the store keeps.
		var liveBytes int64
		for _, n := range acked {
			liveBytes += int64((n+63)/64)*pageBytes + 2*int64(n)*3*132
		}
		killedUsed := diskUsage(filepath.Join(dir, "data"))
		if liveBytes > 0 {
			maxKilled = max(maxKilled, float64(killedUsed)/float64(liveBytes))
		}
		if cycle == cycles-1 || !time.Now().Before(deadline) {
			break
		}
		q := startDaemonConfig(t, dir, smallHostConfig)
		var used int64
		for wait := time.Now(); ; {
			used = diskUsage(filepath.Join(dir, "data"))
			if used <= 2*liveBytes+allowance || time.Since(wait) > 5*time.Second {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		q.stop(t)
		if liveBytes > 0 {
			maxRatio = max(maxRatio, float64(used)/float64(liveBytes))
		}
		if used > 2*liveBytes+allowance {
			t.Errorf("cycle %d: data dir %d B after a restart's compaction, for %d B of live pages: %s", cycle, used, liveBytes, usageByFile(filepath.Join(dir, "data")))
		}
	}
	slices.Sort(restarts)
	t.Logf("kill -9 loop: %d cycles, %d sessions refused appends, %d lost, %d wrong; restart p50 %v max %v; data dir / live max %.2f after restart (%.2f right after a kill)",
		len(restarts), refused, lost, wrong, restarts[len(restarts)/2], restarts[len(restarts)-1], maxRatio, maxKilled)
	fmt.Printf("KILL9-LOOP cycles=%d refused=%d lost=%d wrong=%d restart_p50=%v restart_max=%v dir_over_live_max=%.2f dir_over_live_after_kill_max=%.2f\n",
		len(restarts), refused, lost, wrong, restarts[len(restarts)/2], restarts[len(restarts)-1], maxRatio, maxKilled)
}

func usageByFile(dir string) string {
	var b strings.Builder
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil {
			if st, ok := info.Sys().(*syscall.Stat_t); ok && st.Blocks*512 > 1<<20 {
				rel, _ := filepath.Rel(dir, path)
				fmt.Fprintf(&b, "%s %d MiB (size %d MiB); ", rel, st.Blocks*512>>20, info.Size()>>20)
			}
		}
		return nil
	})
	return b.String()
}

func isKilled(err error) bool {
	var pe *proto.Error
	if errors.As(err, &pe) {
		return pe.Code == proto.CodeShuttingDown
	}
	return err != nil // the connection died with the daemon
}

var _ = exec.Command
