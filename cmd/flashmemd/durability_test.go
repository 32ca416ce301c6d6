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
	"sync"
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
// the latest two metadata records of each session), with no allowance: the
// index's files, the segments' growth steps and their garbage all count.
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
			// Compaction runs in the background after start-up; under -race
			// on a loaded machine it can take several seconds.
			if used <= 2*liveBytes || time.Since(wait) > 30*time.Second {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		q.stop(t)
		if liveBytes > 0 {
			maxRatio = max(maxRatio, float64(used)/float64(liveBytes))
		}
		if used > 2*liveBytes {
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

// copyTree copies dir src to dst (files and directories, modes kept private).
func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		to := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(to, 0o700)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(to, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// tryStart starts flashmemd and reports whether it came up; a daemon that
// refuses to start must say why (naming the file or the repair command) and
// never panic.
func tryStart(t *testing.T, dir string) (*daemonProc, error) {
	t.Helper()
	cfgPath := filepath.Join(dir, "flashmemd.toml")
	os.WriteFile(cfgPath, []byte(smallHostConfig), 0o644)
	p := &daemonProc{socket: filepath.Join(dir, "fm.sock"), log: &lockedBuf{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(binary, "--config", cfgPath, "--socket", p.socket, "--data-dir", filepath.Join(dir, "data"), "--metrics", "off")
	p.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	out := p.log
	p.cmd.Stdout, p.cmd.Stderr = out, out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-p.exited:
			return nil, fmt.Errorf("exited (%v): %s", err, out.String())
		default:
		}
		if strings.Contains(out.String(), "msg=serving") {
			t.Cleanup(func() {
				if p.cmd.ProcessState == nil {
					p.cmd.Process.Kill()
					<-p.exited
				}
				if t.Failed() {
					t.Logf("flashmemd log:\n%s", out.String())
				}
			})
			return p, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.cmd.Process.Kill()
	<-p.exited
	return nil, fmt.Errorf("did not start: %s", out.String())
}

type lockedBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Flip, truncate and delete every kind of file in the data directory (the
// journal's segments and each kind of Badger file): the daemon starts, every
// session resumes with its pages byte-identical or reported damaged, never
// served wrong; a damaged index loses nothing (it is rebuilt).
func TestDamagedDataDir(t *testing.T) {
	base := t.TempDir()
	p := startDaemonConfig(t, base, smallHostConfig)
	c := dial(t, p.socket)
	ctx := context.Background()
	l := layout(64)
	r := rand.New(rand.NewPCG(4, 4))
	names := []string{"x", "y", "z"}
	for i, name := range names {
		op, err := c.Open(ctx, &proto.Open{Name: name, Persist: true, Layout: l, Policy: proto.Policy{KMax: 64}})
		if err != nil {
			t.Fatal(err)
		}
		// Persisted twice, so a damaged latest metadata record has one to
		// fall back to.
		if err := appendChunks(c, op.Session, &l, uint64(500+i), 0, 900, r); err != nil {
			t.Fatal(err)
		}
		if err := c.Persist(ctx, op.Session); err != nil {
			t.Fatal(err)
		}
		if err := appendChunks(c, op.Session, &l, uint64(500+i), 900, 1500, r); err != nil {
			t.Fatal(err)
		}
		if err := c.Persist(ctx, op.Session); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	p.stop(t)
	// Once more, ended by kill -9, so the index also has a memtable log
	// (.mem) and the journal a tail past the checkpoint.
	p = startDaemonConfig(t, base, smallHostConfig)
	c = dial(t, p.socket)
	rx, err := c.Resume(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Persist(ctx, rx.Session); err != nil {
		t.Fatal(err)
	}
	p.kill9(t)
	c.Close()
	pristine := filepath.Join(base, "data")
	var files []string
	filepath.WalkDir(filepath.Join(pristine, "ssd"), func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && d.Name() != "journal.lock" {
			rel, _ := filepath.Rel(pristine, path)
			files = append(files, rel)
		}
		return nil
	})
	actions := []string{"flip", "truncate", "delete"}
	if testing.Short() || (raceEnabled && os.Getenv("FLASHMEM_DURABILITY_FULL") == "") {
		actions = actions[:1] // a daemon start per file and action is slow under -race
	}
	for _, f := range files {
		for _, act := range actions {
			t.Run(strings.ReplaceAll(f, "/", "_")+"_"+act, func(t *testing.T) {
				dir := t.TempDir()
				copyTree(t, pristine, filepath.Join(dir, "data"))
				path := filepath.Join(dir, "data", f)
				b, _ := os.ReadFile(path)
				switch act {
				case "flip":
					if len(b) == 0 {
						t.Skip("empty file")
					}
					b[len(b)/2] ^= 0x5a
					os.WriteFile(path, b, 0o600)
				case "truncate":
					os.Truncate(path, int64(len(b)/2))
				case "delete":
					os.Remove(path)
				}
				p, err := tryStart(t, dir)
				if err != nil {
					if strings.Contains(err.Error(), "panic") || !strings.Contains(err.Error(), "fsck") && !strings.Contains(err.Error(), filepath.Base(f)) {
						t.Fatalf("after %s of %s the daemon %v", act, f, err)
					}
					return
				}
				c := dial(t, p.socket)
				segment := strings.HasSuffix(f, ".seg")
				for i, name := range names {
					rr, err := c.Resume(ctx, name)
					if err != nil {
						if !segment {
							t.Errorf("%s %s: resume %s: %v", act, f, name, err)
						}
						continue
					}
					if rr.Chunks == 0 && segment {
						continue // fell back to the record OPEN wrote
					}
					mem, err := rr.Region.Map()
					if err != nil {
						t.Fatal(err)
					}
					res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: rr.Chunks * 4, Queries: hidden(r)}})
					if err != nil || res[0].Err != nil {
						t.Errorf("%s %s: cycle of %s: %v %v", act, f, name, err, res[0].Err)
					} else {
						verify(t, &l, &rr.Region.RegionDesc, mem, uint64(500+i), rr.Chunks, res[0].Pages)
						if !segment && (len(res[0].Damaged) > 0 || rr.Chunks != 1500) {
							t.Errorf("%s %s: %s resumed %d chunks, damaged %v", act, f, name, rr.Chunks, res[0].Damaged)
						}
						c.Release(ctx, res[0].Lease)
					}
					proto.Unmap(mem)
				}
				c.Close()
				p.stop(t)
			})
		}
	}
}

// mountTmpfs mounts a tmpfs of size bytes at dir, or skips the test when
// this process may not mount (not root, no CAP_SYS_ADMIN, a sandbox).
func mountTmpfs(t *testing.T, dir string, size int64) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0700", size)); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): run as root, or scripts/durability.sh on a host that allows it", err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
}

// A full filesystem: a 64 MiB tmpfs, and a 512 MiB one filled by a ballast
// file. Writes get NO_SPACE before the disk is full, the daemon never
// crashes, reads go on, nothing acknowledged is lost, and writes resume once
// space is freed (a session deleted; the ballast removed), without a restart.
func TestFullDisk(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int64
		ballast int64
	}{
		{"tmpfs 64 MiB", 64 << 20, 0},
		{"tmpfs 512 MiB with ballast", 512 << 20, 440 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if testing.Short() && tc.ballast > 0 {
				t.Skip("short")
			}
			dir := t.TempDir()
			mountTmpfs(t, filepath.Join(dir, "data"), tc.size)
			ballast := filepath.Join(dir, "data", "ballast")
			if tc.ballast > 0 {
				f, err := os.Create(ballast)
				if err != nil {
					t.Fatal(err)
				}
				if err := syscall.Fallocate(int(f.Fd()), 0, 0, tc.ballast); err != nil {
					t.Fatal(err)
				}
				f.Close()
			}
			p := startDaemonConfig(t, dir, smallHostConfig)
			c := dial(t, p.socket)
			ctx := context.Background()
			l := layout(64)
			r := rand.New(rand.NewPCG(8, 8))
			opA, err := c.Open(ctx, &proto.Open{Name: "A", Persist: true, Layout: l, Policy: proto.Policy{KMax: 64}})
			if err != nil {
				t.Fatal(err)
			}
			if err := appendChunks(c, opA.Session, &l, 71, 0, 640, r); err != nil {
				t.Fatal(err)
			}
			if err := c.Persist(ctx, opA.Session); err != nil {
				t.Fatal(err)
			}
			// Fill: session B, persisted, session after session, until
			// the store refuses.
			var fill []uint64
			var full *proto.Error
			for i := 0; i < 400 && full == nil; i++ {
				ob, err := c.Open(ctx, &proto.Open{Name: fmt.Sprintf("fill%d", i), Persist: true, Layout: l})
				if err == nil {
					fill = append(fill, ob.Session)
					err = appendChunks(c, ob.Session, &l, 72, 0, 64*60, r)
					if err == nil {
						err = c.Persist(ctx, ob.Session)
					}
				}
				if err != nil {
					if !errors.As(err, &full) || full.Code != proto.CodeNoSpace {
						t.Fatalf("filling the disk: %v, want NO_SPACE", err)
					}
				}
			}
			if full == nil {
				t.Fatal("the disk never filled")
			}
			t.Logf("NO_SPACE after %d sessions: %v", len(fill), full)
			// Alive, and reads go on: A's pages come back byte-identical.
			if _, err := c.Status(ctx); err != nil {
				t.Fatalf("daemon after NO_SPACE: %v", err)
			}
			rA, err := c.Cycle(ctx, []proto.CycleEntry{{Session: opA.Session, Position: 640 * 4, Queries: hidden(r)}})
			if err != nil || rA[0].Err != nil {
				t.Fatalf("cycle after NO_SPACE: %v %v", err, rA[0].Err)
			}
			mem, err := opA.Region.Map()
			if err != nil {
				t.Fatal(err)
			}
			verify(t, &l, &opA.Region.RegionDesc, mem, 71, 640, rA[0].Pages)
			proto.Unmap(mem)
			c.Release(ctx, rA[0].Lease)
			// Free space, then A takes writes again without a restart.
			if tc.ballast > 0 {
				os.Remove(ballast)
			} else {
				for _, s := range fill {
					c.CloseSession(ctx, s, true)
				}
			}
			var aerr error
			appended := false
			for wait := time.Now(); time.Since(wait) < 90*time.Second; time.Sleep(200 * time.Millisecond) { // compaction of the deleted sessions runs in the background; a loaded machine needs longer
				if !appended {
					aerr = appendChunks(c, opA.Session, &l, 71, 640, 704, r)
					appended = aerr == nil
				}
				if appended {
					if aerr = c.Persist(ctx, opA.Session); aerr == nil {
						break
					}
				}
			}
			if aerr != nil {
				t.Fatalf("writes after freeing space: %v", aerr)
			}
			c.Close()
			p.stop(t)
			// Nothing acknowledged was lost: A resumes with all of it.
			p = startDaemonConfig(t, dir, smallHostConfig)
			c = dial(t, p.socket)
			rr, err := c.Resume(ctx, "A")
			if err != nil || rr.Chunks != 704 {
				t.Fatalf("resume A: %v, %d chunks", err, rr.Chunks)
			}
			mem, err = rr.Region.Map()
			if err != nil {
				t.Fatal(err)
			}
			defer proto.Unmap(mem)
			if dmg := checkAll(t, c, rr.Session, &l, &rr.Region.RegionDesc, mem, 71, 704, r); len(dmg) > 0 {
				t.Fatalf("damaged: %v", dmg)
			}
			p.stop(t)
		})
	}
}

// flashmemd fsck on a stopped daemon's data dir: counts, exit 0 when clean;
// a flipped page byte is found, reported and the exit code is 1; a running
// daemon's directory is refused (exit 2), never rebuilt under it.
func TestFsck(t *testing.T) {
	dir := t.TempDir()
	p := startDaemonConfig(t, dir, smallHostConfig)
	c := dial(t, p.socket)
	ctx := context.Background()
	l := layout(64)
	r := rand.New(rand.NewPCG(6, 6))
	op, err := c.Open(ctx, &proto.Open{Name: "f", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	if err := appendChunks(c, op.Session, &l, 3, 0, 640, r); err != nil {
		t.Fatal(err)
	}
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	fsck := func() (string, int) {
		out, err := exec.Command(binary, "fsck", "--data-dir", data).CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return string(out), code
	}
	if out, code := fsck(); code != 2 || !strings.Contains(out, "in use by another process") {
		t.Fatalf("fsck of a running daemon's dir: exit %d\n%s", code, out)
	}
	c.Close()
	p.stop(t)
	out, code := fsck()
	if code != 0 || !strings.Contains(out, "pages verified:      10, damaged: 0") || !strings.Contains(out, "persisted sessions:  1") {
		t.Fatalf("fsck of a clean dir: exit %d\n%s", code, out)
	}
	seg := filepath.Join(data, "ssd", "pages", "00000000.seg")
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	b[4096+pageHeaderBytes+1000] ^= 1 // the body of the first page record
	os.WriteFile(seg, b, 0o600)
	out, code = fsck()
	if code != 1 || !strings.Contains(out, "damaged: 1") || !strings.Contains(out, "damaged page") {
		t.Fatalf("fsck of a damaged dir: exit %d\n%s", code, out)
	}
}

const pageHeaderBytes = 48
