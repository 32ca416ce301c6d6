package main_test

// Integration tests of the real flashmemd binary: built once, started on a
// temporary socket and data directory, driven through the real socket with
// the Go client, stopped with SIGTERM and restarted.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/internal/synth"
	"github.com/flashmemory/flashmemory/proto"
)

var binary string

func TestMain(m *testing.M) {
	if os.Getenv("FLASHMEM_TEST_CHILD") != "" {
		os.Exit(childClient())
	}
	if role := os.Getenv("FLASHMEM_TEST_ROLE"); role != "" {
		os.Exit(runRole(role)) // security_test.go
	}
	if b := os.Getenv("FLASHMEM_BINARY"); b != "" {
		// A prebuilt flashmemd (a machine without Go, e.g. the benchmark
		// host that runs the test binary from `go test -c`).
		binary = b
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "flashmemd-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "flashmemd")
	args := []string{"build", "-o", binary}
	if raceEnabled {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building flashmemd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

const testConfig = `
log_level = "debug"
[gpu]
mode = "off"   # the tests map reserves with mmap, also on GPU hosts
[host]
budget_bytes = 268435456
[indexer]
default_model = "small"
first_keep = 64
last_keep = 256
fallback_ratio = 1.0
[[indexer.random]]
name = "small"
seed = 7
hidden = 64
rank = 32
heads = 4
head_dim = 128
target_layers = 3
`

type daemonProc struct {
	cmd    *exec.Cmd
	socket string
	log    *lockedBuf // written by the output reader, read by failing tests
	exited chan error
}

func startDaemon(t *testing.T, dir string, extra ...string) *daemonProc {
	t.Helper()
	return startDaemonConfig(t, dir, testConfig, extra...)
}

// startDaemonConfig starts flashmemd with the given configuration file text.
func startDaemonConfig(t *testing.T, dir, config string, extra ...string) *daemonProc {
	t.Helper()
	cfgPath := filepath.Join(dir, "flashmemd.toml")
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &daemonProc{socket: filepath.Join(dir, "fm.sock"), log: &lockedBuf{}, exited: make(chan error, 1)}
	args := append([]string{"--config", cfgPath, "--socket", p.socket, "--data-dir", filepath.Join(dir, "data"), "--metrics", "off"}, extra...)
	p.cmd = exec.Command(binary, args...)
	p.cmd.Env = append(os.Environ(), "NOTIFY_SOCKET=")
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		once := false
		for sc.Scan() {
			p.log.Write([]byte(sc.Text() + "\n"))
			if !once && strings.Contains(sc.Text(), "msg=serving") {
				once = true
				close(ready)
			}
		}
	}()
	go func() { err := p.cmd.Wait(); pw.Close(); p.exited <- err }()
	select {
	case <-ready:
	case err := <-p.exited:
		t.Fatalf("flashmemd exited at start: %v\n%s", err, p.log)
	case <-time.After(20 * time.Second):
		p.cmd.Process.Kill()
		t.Fatalf("flashmemd did not start\n%s", p.log)
	}
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("flashmemd log:\n%s", p.log)
		}
	})
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *daemonProc) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		if err != nil {
			t.Fatalf("flashmemd exited with %v\n%s", err, p.log)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("flashmemd ignored SIGTERM\n%s", p.log)
	}
}

func dial(t *testing.T, socket string) *proto.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := proto.Dial(ctx, socket, &proto.Options{ClientName: "integration"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func layout(slots uint32) proto.Layout {
	return proto.Layout{
		ChunksPerPage: 64, KeyBytes: 132, TargetLayers: 3, CycleSteps: 64, ReserveSlots: slots,
		Layers: []proto.LayerLayout{
			{RowBytes: 64 * 584, Segments: []uint32{576, 8}},
			{RowBytes: 64 * 64, Segments: []uint32{64}},
		},
	}
}

func appendChunks(c *proto.Client, sess uint64, l *proto.Layout, seed, from, to uint64, r *rand.Rand) error {
	const batch = 128
	for first := from; first < to; first += batch {
		n := min(batch, to-first)
		size, _ := l.PayloadBytes(n)
		buf := make([]byte, size)
		synth.FillAppend(l, seed, first, n, buf)
		if err := c.WriteStaging(0, buf); err != nil {
			return err
		}
		keys := synth.Keys(r, int(l.TargetLayers), int(l.KeyBytes), n)
		if _, err := c.Append(context.Background(), &proto.Append{Session: sess, FirstChunk: first, Count: uint32(n), Length: size, Keys: keys}); err != nil {
			return fmt.Errorf("append %d+%d: %w", first, n, err)
		}
	}
	return nil
}

func hidden(r *rand.Rand) [][]byte {
	return [][]byte{synth.Hidden(r, 64), synth.Hidden(r, 64), synth.Hidden(r, 64)}
}

func verify(t *testing.T, l *proto.Layout, desc *proto.RegionDesc, mem []byte, seed, chunks uint64, pages []proto.PageSlot) {
	t.Helper()
	for _, ps := range pages {
		for ly := range l.Layers {
			if bad := synth.CheckRow(l, seed, ps.Page, ly, chunks, desc.Row(mem, ly, ps.Slot)); bad >= 0 {
				t.Fatalf("page %d slot %d layer %d: chunk %d is not what was appended", ps.Page, ps.Slot, ly, bad)
			}
		}
	}
}

// 32K tokens of random payloads go in; every page the daemon makes resident
// reads back byte-identical through the mapped reserve, before and after a
// restart of the daemon.
func TestAppendCycleRestartResume(t *testing.T) {
	dir := t.TempDir()
	p := startDaemon(t, dir)
	c := dial(t, p.socket)
	ctx := context.Background()
	l := layout(128)
	const seed, chunks = 1234, 8192 // 32K tokens at 4 tokens per chunk
	op, err := c.Open(ctx, &proto.Open{Name: "itest", Persist: true, Layout: l, Policy: proto.Policy{KMax: 24}})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	r := rand.New(rand.NewPCG(1, 1))
	if err := appendChunks(c, op.Session, &l, seed, 0, chunks, r); err != nil {
		t.Fatal(err)
	}
	covered := map[uint32]bool{}
	var lease uint64
	for i := 0; i < 6; i++ {
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: chunks * 4, Queries: hidden(r)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle %d: %v %v", i, err, res[0].Err)
		}
		verify(t, &l, &op.Region.RegionDesc, mem, seed, chunks, res[0].Pages)
		for _, ps := range res[0].Pages {
			covered[ps.Page] = true
		}
		if lease != 0 {
			c.Release(ctx, lease)
		}
		lease = res[0].Lease
	}
	t.Logf("%d distinct pages of %d verified resident", len(covered), chunks/64)
	c.Close()
	p.stop(t) // SIGTERM flushes persisted sessions

	p = startDaemon(t, dir)
	c = dial(t, p.socket)
	rr, err := c.Resume(ctx, "itest")
	if err != nil {
		t.Fatal(err)
	}
	if rr.Chunks != chunks || len(rr.Layout.Layers) != len(l.Layers) {
		t.Fatalf("resumed %d chunks / %d layers", rr.Chunks, len(rr.Layout.Layers))
	}
	mem2, err := rr.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem2)
	for i := 0; i < 3; i++ {
		res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: rr.Session, Position: chunks * 4, Queries: hidden(r)}})
		if err != nil || res[0].Err != nil {
			t.Fatalf("cycle after resume: %v %v", err, res[0].Err)
		}
		verify(t, &l, &rr.Region.RegionDesc, mem2, seed, chunks, res[0].Pages)
		c.Release(ctx, res[0].Lease)
	}
	p.stop(t)
}

// childClient is the test binary re-run as a decoder that opens a session,
// takes a lease and waits to be killed.
func childClient() int {
	socket := os.Getenv("FLASHMEM_TEST_SOCKET")
	ctx := context.Background()
	c, err := proto.Dial(ctx, socket, &proto.Options{ClientName: "victim"})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	l := layout(64)
	op, err := c.Open(ctx, &proto.Open{Name: "victim", Persist: true, Layout: l})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	r := rand.New(rand.NewPCG(9, 9))
	if err := appendChunks(c, op.Session, &l, 77, 0, 1024, r); err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: 4096, Queries: hidden(r)}})
	if err != nil || res[0].Err != nil {
		fmt.Println("ERR", err, res[0].Err)
		return 1
	}
	fmt.Printf("READY %d %d\n", op.Session, res[0].Lease)
	time.Sleep(time.Minute)
	return 0
}

// A client killed while holding a lease has it reclaimed within a second;
// another client can neither release its lease nor close its session, and no
// region that client can map holds a byte of it.
func TestKilledClientLeaseReclaimed(t *testing.T) {
	dir := t.TempDir()
	p := startDaemon(t, dir)
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "FLASHMEM_TEST_CHILD=1", "FLASHMEM_TEST_SOCKET="+p.socket)
	out, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "READY ") {
		child.Process.Kill()
		t.Fatalf("child: %q %v", line, err)
	}
	f := strings.Fields(line)
	sess, _ := strconv.ParseUint(f[1], 10, 64)
	lease, _ := strconv.ParseUint(f[2], 10, 64)

	c := dial(t, p.socket)
	ctx := context.Background()
	st, err := c.Status(ctx)
	if err != nil || st.Leases != 1 {
		t.Fatalf("before the kill: %d leases, %v", st.Leases, err)
	}
	// Another client cannot release the lease or close the session.
	var pe *proto.Error
	if err := c.Release(ctx, lease); !errors.As(err, &pe) || pe.Code != proto.CodeUnknownLease {
		t.Fatalf("foreign release: %v", err)
	}
	if err := c.CloseSession(ctx, sess, true); !errors.As(err, &pe) || pe.Code != proto.CodeNotOwner {
		t.Fatalf("foreign close: %v", err)
	}
	// Its own regions hold nothing of the victim's bytes.
	l := layout(16)
	op, err := c.Open(ctx, &proto.Open{Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	mine, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mine)
	probe := make([]byte, 576)
	synth.FillAppend(&proto.Layout{ChunksPerPage: 1, Layers: []proto.LayerLayout{{RowBytes: 576, Segments: []uint32{576}}}}, 77, 5, 1, probe)
	for name, region := range map[string][]byte{"reserve": mine, "staging": c.Staging()} {
		if strings.Contains(string(region), string(probe[:64])) {
			t.Fatalf("the victim's bytes are visible in this client's %s region", name)
		}
	}

	t0 := time.Now()
	child.Process.Kill()
	child.Wait()
	for {
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Leases == 0 {
			break
		}
		if time.Since(t0) > time.Second {
			t.Fatalf("lease still held %v after the client died", time.Since(t0))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("lease reclaimed %v after SIGKILL", time.Since(t0))
	p.stop(t)
}

// Bytes that are not a valid frame get an error frame, and the daemon keeps
// serving everyone else.
func TestGarbageOnTheSocket(t *testing.T) {
	dir := t.TempDir()
	p := startDaemon(t, dir)
	good := dial(t, p.socket)
	cases := map[string][]byte{
		"wrong magic":   []byte("GET / HTTP/1.1\r\n\r\n0123456789abcdef"),
		"oversize":      header(0x0002, 1<<31),
		"truncated":     header(0x0002, 100)[:20],
		"wrong version": withVersion(header(0x0002, 0), 99),
		"unknown op":    header(0x7777, 0),
	}
	for name, raw := range cases {
		conn, err := net.Dial("unix", p.socket)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write(raw)
		if name == "truncated" {
			conn.(*net.UnixConn).CloseWrite()
		}
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		reply := make([]byte, 32)
		_, err = io.ReadFull(conn, reply)
		conn.Close()
		if name == "truncated" {
			continue // the peer hung up mid-frame: nothing to answer
		}
		if err != nil {
			t.Fatalf("%s: no error frame: %v", name, err)
		}
		h, err := proto.DecodeHeader(reply, 1<<20)
		if err != nil || !h.IsError() {
			t.Fatalf("%s: reply is not an error frame: %+v %v", name, h, err)
		}
		if _, err := good.Ping(context.Background(), []byte(name)); err != nil {
			t.Fatalf("after %s the daemon stopped serving: %v", name, err)
		}
	}
	p.stop(t)
}

func header(op uint16, bodyLen uint32) []byte {
	b := make([]byte, proto.HeaderSize)
	proto.PutHeader(b, proto.Header{Version: proto.MaxVersion, Op: proto.Op(op), BodyLen: bodyLen, ID: 1, CRC: proto.Checksum(nil)})
	return b
}

func withVersion(b []byte, v uint16) []byte {
	h, _ := proto.DecodeHeader(b, 1<<20)
	h.Version = v
	proto.PutHeader(b, h)
	return b
}

// The metrics endpoint serves the daemon's instruments.
func TestMetricsEndpoint(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p := startDaemon(t, dir, "--metrics", addr)
	dial(t, p.socket).Ping(context.Background(), nil)
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, m := range []string{"flashmem_tier_bytes", "flashmem_footprint_ratio", "flashmem_cycle_seconds", "flashmem_prefetch_pages_total"} {
		if !strings.Contains(string(body), m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
	resp, err = http.Get("http://" + addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz: %v %v", resp, err)
	}
	p.stop(t)
}
