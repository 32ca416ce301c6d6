package main_test

// Security and admission tests of the real binary: clients run as other
// users (the test binary re-run under syscall.Credential, which needs root;
// without it these tests skip), silent connections, SIGTERM with clients
// connected, EVICT from a connection that does not own the session, and the
// Python client of docs/protocol.md against a default daemon.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/proto"
)

// Uids and gids of the simulated users: no passwd or group entries needed.
const (
	uidFlood   = 20001
	uidOther   = 20002
	uidMember  = 20003
	uidSupp    = 20004
	uidOutside = 20005
	gidAllowed = 20500
)

// worldDir makes a directory every uid can traverse (the socket lives in
// it) and copies the test binary there, so children under other uids can
// run it.
func worldDir(t *testing.T) (dir, bin string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run clients as other users")
	}
	dir, err := os.MkdirTemp("", "fmsec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(dir, "client.test")
	src, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, src, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, bin
}

// child is the test binary re-run as uid/gid/groups in role.
type child struct {
	cmd   *exec.Cmd
	lines chan string
	out   *strings.Builder
	mu    sync.Mutex
}

func spawn(t *testing.T, bin, role string, uid, gid uint32, groups []uint32, env ...string) *child {
	t.Helper()
	c := &child{lines: make(chan string, 16), out: &strings.Builder{}}
	c.cmd = exec.Command(bin, "-test.run=^$")
	c.cmd.Env = append(os.Environ(), append([]string{"FLASHMEM_TEST_ROLE=" + role}, env...)...)
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: groups}}
	c.cmd.Stderr = os.Stderr
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.mu.Lock()
			c.out.WriteString(sc.Text() + "\n")
			c.mu.Unlock()
			c.lines <- sc.Text()
		}
		close(c.lines)
	}()
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	return c
}

// expect waits for the next output line starting with prefix.
func (c *child) expect(t *testing.T, prefix string, within time.Duration) string {
	t.Helper()
	timeout := time.After(within)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				c.mu.Lock()
				defer c.mu.Unlock()
				t.Fatalf("child exited before %q; output:\n%s", prefix, c.out)
			}
			if strings.HasPrefix(l, prefix) {
				return strings.TrimSpace(strings.TrimPrefix(l, prefix))
			}
			if strings.HasPrefix(l, "FAIL") {
				t.Fatalf("child: %s", l)
			}
		case <-timeout:
			t.Fatalf("no %q from the child within %v", prefix, within)
		}
	}
}

func runRole(role string) int {
	socket := os.Getenv("FLASHMEM_TEST_SOCKET")
	var err error
	switch role {
	case "silent":
		err = roleSilent(socket)
	case "hello":
		err = roleHello(socket)
	case "evict":
		err = roleEvict(socket)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Println("FAIL", err)
		return 1
	}
	return 0
}

func helloFrame(id uint64) []byte {
	body, _ := (&proto.Hello{MinVersion: 1, MaxVersion: 1, ClientName: "sec"}).AppendBinary(nil)
	h := proto.Header{Version: 1, Op: proto.OpHello, ID: id, BodyLen: uint32(len(body)), CRC: crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli))}
	b := make([]byte, proto.HeaderSize, proto.HeaderSize+len(body))
	proto.PutHeader(b, h)
	return append(b, body...)
}

// roleHello connects, writes HELLO at once (before any refusal could be
// read) and prints "OK <µs from connect to reply>" or "ERR <code>".
func roleHello(socket string) error {
	t0 := time.Now()
	nc, err := net.Dial("unix", socket)
	if err != nil {
		return err
	}
	defer nc.Close()
	if _, err := nc.Write(helloFrame(1)); err != nil {
		return fmt.Errorf("writing HELLO: %w", err)
	}
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := proto.NewConn(nc.(*net.UnixConn), 1<<20).ReadFrame()
	if err != nil {
		return fmt.Errorf("reading the HELLO reply: %w", err)
	}
	f.CloseFiles()
	if f.IsError() {
		var eb proto.ErrorBody
		if err := eb.Decode(f.Body); err != nil {
			return err
		}
		fmt.Printf("ERR %s id=%d\n", strings.ReplaceAll(eb.Code.String(), " ", "_"), f.ID)
		return nil
	}
	fmt.Printf("OK %d\n", time.Since(t0).Microseconds())
	return nil
}

// roleSilent opens FLASHMEM_TEST_N connections that send nothing (every
// tenth sends half a header and stops), prints READY, then reads what the
// daemon sends on each: one error frame of request id 0, then EOF. It
// prints "DONE <code>=<count> ... max_ms=<longest wait>".
func roleSilent(socket string) error {
	n, _ := strconv.Atoi(os.Getenv("FLASHMEM_TEST_N"))
	conns := make([]net.Conn, 0, n)
	starts := make([]time.Time, 0, n)
	for i := range n {
		nc, err := net.Dial("unix", socket)
		if err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		if i%10 == 9 {
			if _, err := nc.Write(helloFrame(1)[:10]); err != nil {
				return err
			}
		}
		conns = append(conns, nc)
		starts = append(starts, time.Now())
	}
	fmt.Println("READY")
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		maxMS  int64
		wg     sync.WaitGroup
	)
	for i, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer nc.Close()
			_ = nc.SetReadDeadline(time.Now().Add(30 * time.Second))
			pc := proto.NewConn(nc.(*net.UnixConn), 1<<20)
			what := "no_frame"
			if f, err := pc.ReadFrame(); err == nil {
				var eb proto.ErrorBody
				if f.IsError() && f.ID == 0 && eb.Decode(f.Body) == nil {
					what = strings.ReplaceAll(eb.Code.String(), " ", "_")
					if _, err := pc.ReadFrame(); !errors.Is(err, io.EOF) {
						what += "_not_closed"
					}
				} else {
					what = "unexpected_frame"
				}
			}
			ms := time.Since(starts[i]).Milliseconds()
			mu.Lock()
			counts[what]++
			maxMS = max(maxMS, ms)
			mu.Unlock()
		}()
	}
	wg.Wait()
	var b strings.Builder
	for k, v := range counts {
		fmt.Fprintf(&b, "%s=%d ", k, v)
	}
	fmt.Printf("DONE %smax_ms=%d\n", b.String(), maxMS)
	return nil
}

// roleEvict EVICTs FLASHMEM_TEST_SESSION and prints the outcome's code.
func roleEvict(socket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := proto.Dial(ctx, socket, &proto.Options{ClientName: "evictor"})
	if err != nil {
		return err
	}
	defer c.Close()
	id, _ := strconv.ParseUint(os.Getenv("FLASHMEM_TEST_SESSION"), 10, 64)
	_, err = c.Evict(ctx, proto.AdminTarget{Session: id})
	ss, serr := c.Sessions(ctx)
	if serr != nil {
		return serr
	}
	fmt.Printf("EVICT %s sessions=%d\n", strings.ReplaceAll(proto.CodeOf(err).String(), " ", "_"), len(ss.Sessions))
	return nil
}

// 260 silent connections of one uid take at most max_conns_per_uid slots:
// another uid's HELLO is answered within 100 ms while they are open; the
// rest of the flood is refused with a readable LIMIT_EXCEEDED, and every
// silent connection (including those stuck mid-header) gets
// HANDSHAKE_REQUIRED and is closed once handshake_timeout has passed.
func TestSilentFloodDoesNotLockOutOthers(t *testing.T) {
	dir, bin := worldDir(t)
	cfg := "allowed_groups = [\"" + strconv.Itoa(gidAllowed) + "\"]\n" + testConfig + "\n[limits]\nhandshake_timeout = \"4s\"\n"
	cfg = strings.Replace(cfg, "log_level = \"debug\"", "log_level = \"info\"", 1)
	p := startDaemonConfig(t, dir, cfg)

	flood := spawn(t, bin, "silent", uidFlood, gidAllowed, nil, "FLASHMEM_TEST_SOCKET="+p.socket, "FLASHMEM_TEST_N=260")
	flood.expect(t, "READY", 60*time.Second)
	var worst time.Duration
	for range 3 {
		other := spawn(t, bin, "hello", uidOther, gidAllowed, nil, "FLASHMEM_TEST_SOCKET="+p.socket)
		got := other.expect(t, "", 20*time.Second)
		var us int64
		if _, err := fmt.Sscanf(got, "OK %d", &us); err != nil {
			t.Fatalf("other uid's HELLO during the flood: %q", got)
		}
		worst = max(worst, time.Duration(us)*time.Microsecond)
		other.cmd.Wait()
	}
	t.Logf("another uid's connect+HELLO during a 260-connection flood: %v (worst of 3)", worst)
	if worst > 100*time.Millisecond {
		t.Fatalf("HELLO of another uid took %v during the flood, want < 100ms", worst)
	}
	done := flood.expect(t, "DONE", 40*time.Second)
	t.Logf("flood: %s", done)
	var limit, handshake, maxMS int
	for _, f := range strings.Fields(done) {
		k, v, _ := strings.Cut(f, "=")
		n, _ := strconv.Atoi(v)
		switch k {
		case "limit_exceeded":
			limit = n
		case "handshake_required":
			handshake = n
		case "max_ms":
			maxMS = n
		default:
			t.Fatalf("flood connection outcome %s", f)
		}
	}
	if limit+handshake != 260 || handshake != 64 {
		t.Fatalf("flood: %d refused, %d closed at the handshake deadline; want 196 and 64 (max_conns_per_uid)", limit, handshake)
	}
	if maxMS < 3500 || maxMS > 15000 {
		t.Fatalf("silent connections closed after %d ms, want about handshake_timeout (4s)", maxMS)
	}
}

// Four uids flooding a default daemon with max_conns_per_uid (64) silent
// connections each would fill all 256 slots of max_conns: the last
// admin_reserved_conns (8) are kept for root and admin_groups, so an
// operator can always connect and look; other users are refused with a
// LIMIT_EXCEEDED that names the reserve.
func TestFloodLeavesSlotsForAdmins(t *testing.T) {
	dir, bin := worldDir(t)
	const gidAdmin = 20600
	cfg := "allowed_groups = [\"" + strconv.Itoa(gidAllowed) + "\"]\nadmin_groups = [\"" + strconv.Itoa(gidAdmin) + "\"]\n" +
		testConfig + "\n[limits]\nhandshake_timeout = \"10s\"\n"
	cfg = strings.Replace(cfg, "log_level = \"debug\"", "log_level = \"info\"", 1)
	p := startDaemonConfig(t, dir, cfg)
	var floods []*child
	for i := range 4 {
		floods = append(floods, spawn(t, bin, "silent", uidFlood+10*uint32(i), gidAllowed, nil,
			"FLASHMEM_TEST_SOCKET="+p.socket, "FLASHMEM_TEST_N=64"))
	}
	for _, f := range floods {
		f.expect(t, "READY", 60*time.Second)
	}
	time.Sleep(time.Second) // every flood connection admitted or refused
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	root, err := proto.Dial(ctx, p.socket, &proto.Options{ClientName: "operator"})
	if err != nil {
		t.Fatalf("root during a 4-uid flood: %v", err)
	}
	defer root.Close()
	st, err := root.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Connections != 249 {
		t.Errorf("connections during the flood, root's included: %d, want 248 + 1", st.Connections)
	}
	admin := spawn(t, bin, "hello", uidMember, uidMember, []uint32{gidAllowed, gidAdmin}, "FLASHMEM_TEST_SOCKET="+p.socket)
	if got := admin.expect(t, "", 20*time.Second); !strings.HasPrefix(got, "OK") {
		t.Fatalf("admin_groups member during the flood: %q", got)
	}
	other := spawn(t, bin, "hello", uidOther, gidAllowed, nil, "FLASHMEM_TEST_SOCKET="+p.socket)
	if got := other.expect(t, "", 20*time.Second); got != "ERR limit_exceeded id=0" {
		t.Fatalf("another user during the flood: %q, want a LIMIT_EXCEEDED refusal", got)
	}
	var admitted, refused int
	for _, f := range floods {
		done := f.expect(t, "DONE", 60*time.Second)
		for _, kv := range strings.Fields(done) {
			k, v, _ := strings.Cut(kv, "=")
			n, _ := strconv.Atoi(v)
			switch k {
			case "handshake_required":
				admitted += n
			case "limit_exceeded":
				refused += n
			case "max_ms":
			default:
				t.Fatalf("flood connection outcome %s", kv)
			}
		}
	}
	if admitted != 248 || refused != 8 {
		t.Fatalf("flood: %d admitted, %d refused; want 248 and 8 (admin_reserved_conns)", admitted, refused)
	}
	p.stop(t)
}

// A daemon whose configuration only names allowed_groups admits a member by
// primary or by supplementary group, binds its socket to that group, and
// refuses anyone else with a PERMISSION_DENIED frame the client reads even
// though it wrote HELLO first.
func TestAllowedGroupMembers(t *testing.T) {
	dir, bin := worldDir(t)
	cfg := "allowed_groups = [\"" + strconv.Itoa(gidAllowed) + "\"]\n"
	p := startDaemonConfig(t, dir, cfg)
	fi, err := os.Stat(p.socket)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Gid != gidAllowed || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket group %d mode %v, want %d and 0660", st.Gid, fi.Mode().Perm(), gidAllowed)
	}
	for _, tc := range []struct {
		name   string
		uid    uint32
		gid    uint32
		groups []uint32
		want   string
	}{
		{"primary", uidMember, gidAllowed, nil, "OK"},
		{"supplementary", uidSupp, uidSupp, []uint32{7, gidAllowed}, "OK"},
		{"outsider", uidOutside, uidOutside, []uint32{7}, "ERR"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.want == "ERR" {
				// The outsider cannot even open the socket file (0660, group
				// gidAllowed); open it up to see the daemon's own refusal.
				if err := os.Chmod(p.socket, 0o666); err != nil {
					t.Fatal(err)
				}
			}
			c := spawn(t, bin, "hello", tc.uid, tc.gid, tc.groups, "FLASHMEM_TEST_SOCKET="+p.socket)
			got := c.expect(t, "", 20*time.Second)
			if !strings.HasPrefix(got, tc.want) {
				t.Fatalf("uid %d gid %d groups %v: %q, want %s", tc.uid, tc.gid, tc.groups, got, tc.want)
			}
			if tc.want == "ERR" && got != "ERR permission_denied id=0" {
				t.Fatalf("outsider: %q, want a PERMISSION_DENIED frame with id 0", got)
			}
		})
	}
	p.stop(t)
}

// EVICT from a connection that does not own a session leaves it working for
// its owner: a second connection of the same uid only demotes its pages; a
// connection of another uid does not even see it.
func TestEvictFromNonOwnerKeepsSession(t *testing.T) {
	dir, bin := worldDir(t)
	p := startDaemonConfig(t, dir, "allowed_groups = [\""+strconv.Itoa(gidAllowed)+"\"]\n"+testConfig)
	ctx := context.Background()
	owner := dial(t, p.socket)
	l := layout(64)
	op, err := owner.Open(ctx, &proto.Open{Layout: l, Policy: proto.Policy{KMax: 8}})
	if err != nil {
		t.Fatal(err)
	}
	mem, err := op.Region.Map()
	if err != nil {
		t.Fatal(err)
	}
	defer proto.Unmap(mem)
	defer op.Region.Close()
	r := rand.New(rand.NewPCG(5, 6))
	if err := appendChunks(owner, op.Session, &l, 31, 0, 2048, r); err != nil {
		t.Fatal(err)
	}
	res, err := owner.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: 2048, Queries: hidden(r)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("cycle: %v %v", err, res[0].Err)
	}

	// Another uid: the session does not exist for it.
	c := spawn(t, bin, "evict", uidOther, gidAllowed, nil, "FLASHMEM_TEST_SOCKET="+p.socket, "FLASHMEM_TEST_SESSION="+strconv.FormatUint(op.Session, 10))
	if got := c.expect(t, "EVICT", 20*time.Second); got != "unknown_session sessions=0" {
		t.Fatalf("EVICT from another uid: %q", got)
	}
	// The same uid on another connection: demoted, not dropped.
	other := dial(t, p.socket)
	ev, err := other.Evict(ctx, proto.AdminTarget{Session: op.Session})
	if err != nil || !ev.Demoted {
		t.Fatalf("EVICT from a second connection: %+v %v", ev, err)
	}
	verify(t, &l, &op.Region.RegionDesc, mem, 31, 2048, res[0].Pages)
	if err := owner.Release(ctx, res[0].Lease); err != nil {
		t.Fatalf("owner's lease after EVICT: %v", err)
	}
	if err := appendChunks(owner, op.Session, &l, 31, 2048, 2304, r); err != nil {
		t.Fatalf("append after EVICT: %v", err)
	}
	res, err = owner.Cycle(ctx, []proto.CycleEntry{{Session: op.Session, Position: 2304, Queries: hidden(r)}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("cycle after EVICT: %v %v", err, res[0].Err)
	}
	verify(t, &l, &op.Region.RegionDesc, mem, 31, 2304, res[0].Pages)
	if err := owner.CloseSession(ctx, op.Session, true); err != nil {
		t.Fatalf("close after EVICT: %v", err)
	}
	p.stop(t)
}

// Every client connected at SIGTERM reads SHUTTING_DOWN (request id 0)
// before its connection closes: before HELLO, idle after HELLO, and holding
// a session.
func TestSIGTERMClientsReadShuttingDown(t *testing.T) {
	dir := t.TempDir()
	p := startDaemon(t, dir)
	ctx := context.Background()
	idle := dial(t, p.socket)
	busy := dial(t, p.socket)
	op, err := busy.Open(ctx, &proto.Open{Layout: layout(16)})
	if err != nil {
		t.Fatal(err)
	}
	op.Region.Close()
	raw, err := net.Dial("unix", p.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	if _, err := busy.Ping(ctx, []byte("x")); err != nil { // all three are being served
		t.Fatal(err)
	}
	rawCode := make(chan string, 1)
	go func() {
		_ = raw.SetReadDeadline(time.Now().Add(30 * time.Second))
		f, err := proto.NewConn(raw.(*net.UnixConn), 1<<20).ReadFrame()
		var eb proto.ErrorBody
		switch {
		case err != nil:
			rawCode <- err.Error()
		case !f.IsError() || f.ID != 0 || eb.Decode(f.Body) != nil:
			rawCode <- fmt.Sprintf("frame %+v", f.Header)
		default:
			rawCode <- eb.Code.String()
		}
	}()
	p.stop(t)
	if got := <-rawCode; got != proto.CodeShuttingDown.String() {
		t.Errorf("connection before HELLO read %q, want %v", got, proto.CodeShuttingDown)
	}
	for name, c := range map[string]*proto.Client{"idle": idle, "busy": busy} {
		deadline := time.Now().Add(5 * time.Second)
		for c.Err() == nil && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if proto.CodeOf(c.Err()) != proto.CodeShuttingDown {
			t.Errorf("%s client: %v, want SHUTTING_DOWN", name, c.Err())
		}
	}
}

// The Python client of docs/protocol.md section 13 runs unchanged against a
// daemon with no configuration at all (default model "demo").
func TestProtocolDocPythonClient(t *testing.T) {
	const py = "/usr/bin/python3"
	if _, err := os.Stat(py); err != nil {
		t.Skip("no /usr/bin/python3")
	}
	doc, err := os.ReadFile("../../docs/protocol.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := codeBlocks(doc, "python")
	if len(blocks) == 0 {
		t.Fatal("no python blocks in docs/protocol.md")
	}
	dir := t.TempDir()
	p := startDaemonConfig(t, dir, "")
	for i, code := range blocks {
		cmd := exec.Command(py, "-")
		cmd.Stdin = bytes.NewReader(code)
		cmd.Env = append(os.Environ(), "FLASHMEMD_SOCKET="+p.socket)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("python block %d: %v\n%s\n--- block:\n%s", i, err, out, code)
		}
		t.Logf("python block %d:\n%s", i, out)
		if i == len(blocks)-1 && !bytes.HasPrefix(out, []byte("ok: session ")) {
			t.Fatalf("the client (last python block) did not finish: %q", out)
		}
	}
	p.stop(t)
}

// codeBlocks returns the fenced code blocks of one language in a markdown
// text, in order.
func codeBlocks(doc []byte, lang string) [][]byte {
	var out [][]byte
	fence := []byte("```" + lang + "\n")
	for {
		i := bytes.Index(doc, fence)
		if i < 0 {
			return out
		}
		doc = doc[i+len(fence):]
		j := bytes.Index(doc, []byte("\n```"))
		if j < 0 {
			return out
		}
		out = append(out, doc[:j+1])
		doc = doc[j+4:]
	}
}

// TestDataFilesPrivate: every file and directory the daemon creates under
// its data dir (the journal's segments, Badger's files, locks, the index
// checkpoint) is closed to other users, even when flashmemd starts with a
// umask of 0: KV bytes are one chmod of the parent away from exposure
// otherwise. The check is `find DATA -perm /o+r`; this also refuses
// write and execute for others.
func TestDataFilesPrivate(t *testing.T) {
	dir := t.TempDir()
	old := syscall.Umask(0)
	p := startDaemon(t, dir)
	syscall.Umask(old)
	c := dial(t, p.socket)
	ctx := context.Background()
	l := layout(16)
	op, err := c.Open(ctx, &proto.Open{Name: "private", Persist: true, Layout: l})
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(5, 5))
	if err := appendChunks(c, op.Session, &l, 5, 0, 64*8, r); err != nil {
		t.Fatal(err)
	}
	if err := c.Persist(ctx, op.Session); err != nil {
		t.Fatal(err)
	}
	c.Close()
	p.stop(t) // flushes Badger's memtable and the index checkpoint too

	data := filepath.Join(dir, "data")
	n := 0
	err = filepath.WalkDir(data, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		n++
		if fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("%s has mode %v: others may access it", path, fi.Mode().Perm())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 5 {
		t.Fatalf("only %d entries under %s: the daemon wrote less than expected", n, data)
	}
}
