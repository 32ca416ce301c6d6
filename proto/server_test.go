package proto

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testServer is a small in-process server over a real unix socket, built on
// Conn the way the daemon is: one reader per connection, replies written
// from per-request goroutines (so they leave out of order), staging and
// region memfds passed with SCM_RIGHTS. Its sessions are plain memfds: a
// payload APPENDed is copied into the session's region at offset
// FirstChunk × chunk bytes, so a test can check the bytes through its own
// mapping of the region.
type testServer struct {
	t    testing.TB
	path string
	ln   *net.UnixListener

	mu       sync.Mutex
	conns    map[*Conn]bool
	sessions map[uint64]*testSession
	nextID   uint64
	wg       sync.WaitGroup
}

type testSession struct {
	name    string
	model   string
	persist bool
	owner   *Conn
	layout  Layout
	region  *os.File
	mem     []byte
	desc    RegionDesc
	chunks  uint64
}

func (s *testServer) info(id uint64, ss *testSession) SessionInfo {
	return SessionInfo{ID: id, Name: ss.name, Model: ss.model, Persist: ss.persist, Chunks: ss.chunks}
}

const testStagingSize = 1 << 20

func newTestServer(t testing.TB) *testServer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "fm.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s := &testServer{t: t, path: path, ln: ln, conns: map[*Conn]bool{}, sessions: map[uint64]*testSession{}}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.stop)
	return s
}

func (s *testServer) stop() {
	s.ln.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	for _, ss := range s.sessions {
		Unmap(ss.mem)
		ss.region.Close()
	}
}

// dropConns closes every server-side connection (the daemon dying).
func (s *testServer) dropConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

func (s *testServer) accept() {
	defer s.wg.Done()
	for {
		uc, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		c := NewConn(uc, 4<<20)
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go s.serve(c)
	}
}

func (s *testServer) serve(c *Conn) {
	defer s.wg.Done()
	var reqs sync.WaitGroup
	var staging *os.File
	var stMem []byte
	defer func() {
		reqs.Wait()
		c.Close()
		if stMem != nil {
			Unmap(stMem)
			staging.Close()
		}
	}()
	for {
		f, err := c.ReadFrame()
		if err != nil {
			if err == io.EOF {
				return
			}
			var h Header
			if f != nil {
				h = f.Header
			}
			c.ReplyError(h, err)
			if Fatal(err) {
				return
			}
			continue
		}
		if err := CheckRequest(f.Header); err != nil {
			f.CloseFiles()
			c.ReplyError(f.Header, err)
			continue
		}
		if f.Op == OpHello {
			// HELLO is answered inline: it creates connection state.
			var req Hello
			if err := req.Decode(f.Body); err != nil {
				c.ReplyError(f.Header, err)
				continue
			}
			v, err := req.Negotiate()
			if err != nil {
				c.ReplyError(f.Header, err)
				continue
			}
			staging = memfd(s.t, "staging", testStagingSize)
			stMem, _ = mapFile(staging, testStagingSize)
			rep := &HelloReply{Version: v, Limits: Limits{MaxBody: 4 << 20, MaxSessions: 8, MaxCycleEntries: 64, StagingSize: testStagingSize},
				InstanceID: [16]byte{0xfe}, Server: "test-server"}
			c.Reply(f.Header, rep, int(staging.Fd()))
			continue
		}
		reqs.Add(1)
		go func() {
			defer reqs.Done()
			if err := s.handle(c, f, stMem); err != nil {
				c.ReplyError(f.Header, err)
			}
		}()
	}
}

func (s *testServer) session(c *Conn, id uint64) (*testSession, error) {
	ss := s.sessions[id]
	if ss == nil {
		return nil, CodeUnknownSession.Errorf("session %d", id)
	}
	if ss.owner != c {
		return nil, CodeNotOwner.Errorf("session %d", id)
	}
	return ss, nil
}

func (s *testServer) handle(c *Conn, f *Frame, staging []byte) error {
	req := NewRequest(f.Op)
	if err := req.Decode(f.Body); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch m := req.(type) {
	case *Ping:
		if d, ok := strings.CutPrefix(string(m.Data), "sleep:"); ok {
			ms, _ := strconv.Atoi(strings.SplitN(d, ":", 2)[0])
			s.mu.Unlock()
			time.Sleep(time.Duration(ms) * time.Millisecond)
			s.mu.Lock()
		}
		return c.Reply(f.Header, m)
	case *Open:
		if err := m.Validate(); err != nil {
			return err
		}
		if m.Name == "slow" {
			s.mu.Unlock()
			time.Sleep(200 * time.Millisecond)
			s.mu.Lock()
		}
		for _, o := range s.sessions {
			if m.Name != "" && o.name == m.Name {
				return CodeSessionExists.Errorf("session %q", m.Name)
			}
		}
		desc := RegionDesc{Slots: m.Layout.ReserveSlots, Kind: RegionMemfd, Device: NoDevice}
		for _, l := range m.Layout.Layers {
			desc.Layers = append(desc.Layers, RegionLayer{Offset: desc.Size, RowBytes: l.RowBytes})
			desc.Size += uint64(desc.Slots) * uint64(l.RowBytes)
		}
		file := memfd(s.t, "region", int64(desc.Size))
		mem, err := mapFile(file, desc.Size)
		if err != nil {
			return err
		}
		s.nextID++
		s.sessions[s.nextID] = &testSession{name: m.Name, model: m.Model, persist: m.Persist, owner: c, layout: m.Layout, region: file, mem: mem, desc: desc}
		return c.Reply(f.Header, &OpenReply{Session: s.nextID, Region: Region{RegionDesc: desc}}, int(file.Fd()))
	case *Resume:
		for id, ss := range s.sessions {
			if ss.name == m.Name {
				ss.owner = c
				return c.Reply(f.Header, &ResumeReply{Session: id, Chunks: ss.chunks, Persist: ss.persist, Model: ss.model,
					Layout: ss.layout, Region: Region{RegionDesc: ss.desc}}, int(ss.region.Fd()))
			}
		}
		return CodeUnknownSession.Errorf("session %q", m.Name)
	case *Commit:
		ss, err := s.session(c, m.Session)
		if err != nil {
			return err
		}
		if m.FirstChunk < ss.chunks {
			return CodeDuplicateChunk.Errorf("chunk %d", m.FirstChunk)
		}
		ss.chunks += uint64(m.Count)
		return c.Reply(f.Header, &ChunksReply{Chunks: ss.chunks})
	case *Persist:
		ss, err := s.session(c, m.Session)
		if err != nil {
			return err
		}
		ss.persist = true
		return c.Reply(f.Header, &Empty{})
	case *AdminTarget:
		var id uint64
		for i, ss := range s.sessions {
			if i == m.Session || (m.Name != "" && ss.name == m.Name) {
				id = i
			}
		}
		ss := s.sessions[id]
		if ss == nil {
			return CodeUnknownSession.Errorf("%+v", *m)
		}
		if f.Op == OpEvict {
			Unmap(ss.mem)
			ss.region.Close()
			delete(s.sessions, id)
			return c.Reply(f.Header, &EvictReply{Sessions: []uint64{id}, Bytes: ss.desc.Size})
		}
		return c.Reply(f.Header, &InspectReply{Session: s.info(id, ss), Layout: ss.layout})
	case *Append:
		ss, err := s.session(c, m.Session)
		if err != nil {
			return err
		}
		if m.FirstChunk != ss.chunks {
			return CodeChunkGap.Errorf("first chunk %d, session has %d", m.FirstChunk, ss.chunks)
		}
		want, _ := ss.layout.PayloadBytes(uint64(m.Count))
		if m.Length != want {
			return CodePayloadSize.Errorf("payload %d bytes, want %d", m.Length, want)
		}
		payload := m.Payload
		if !m.Inline {
			if m.Offset+m.Length > uint64(len(staging)) {
				return CodeBadRequest.Errorf("staging range")
			}
			payload = staging[m.Offset : m.Offset+m.Length]
		}
		copy(ss.mem[ss.chunks*ss.layout.ChunkBytes():], payload)
		ss.chunks += uint64(m.Count)
		return c.Reply(f.Header, &ChunksReply{Chunks: ss.chunks})
	case *Cycle:
		rep := &CycleReply{}
		for _, e := range m.Entries {
			ss, err := s.session(c, e.Session)
			if err == nil && ss.chunks == 0 {
				err = CodeNoChunks.Errorf("session %d", e.Session)
			}
			if err != nil {
				rep.Results = append(rep.Results, CycleResult{Err: AsError(err)})
				continue
			}
			rep.Results = append(rep.Results, CycleResult{Lease: e.Step + 1, Cycle: e.Step / 64,
				Pages:    []PageSlot{{Page: uint32(e.Position % 7), Slot: uint32(len(e.Queries))}},
				Counters: CycleCounters{Chunks: ss.chunks, ScoreMicros: uint64(len(e.Queries[0]))}})
		}
		return c.Reply(f.Header, rep)
	case *Release:
		return c.Reply(f.Header, &Empty{})
	case *Close:
		ss, err := s.session(c, m.Session)
		if err != nil {
			return err
		}
		Unmap(ss.mem)
		ss.region.Close()
		delete(s.sessions, m.Session)
		return c.Reply(f.Header, &Empty{})
	case *Empty: // STATUS, SESSIONS
		if f.Op == OpStatus {
			return c.Reply(f.Header, &StatusReply{Server: "test-server", Protocol: f.Version, Sessions: len(s.sessions)})
		}
		rep := &SessionsReply{}
		for id, ss := range s.sessions {
			rep.Sessions = append(rep.Sessions, s.info(id, ss))
		}
		return c.Reply(f.Header, rep)
	}
	return CodeInternal.Errorf("test server does not implement %v", f.Op)
}

// rawDial connects without the Client, for sending hand-made bytes.
func rawDial(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestServerSideBadFrames drives Conn.ReadFrame/ReplyError over a real
// socket with the malformed inputs the daemon must survive.
func TestServerSideBadFrames(t *testing.T) {
	s := newTestServer(t)
	ping := frameBytes(Header{Version: 1, Op: OpPing, ID: 5}, []byte("ok?"))
	mod := func(f func(b []byte)) []byte { b := bytes.Clone(ping); f(b); return b }
	tests := []struct {
		name   string
		send   []byte
		code   Code
		id     uint64
		closed bool // server hangs up after the error
	}{
		{"bad magic", mod(func(b []byte) { copy(b, "GET ") }), CodeBadFrame, 0, true},
		{"unsupported version", mod(func(b []byte) { b[4] = 7 }), CodeUnsupportedVersion, 5, false},
		{"unknown op", mod(func(b []byte) { b[6] = 0xee }), CodeUnknownOp, 5, false},
		{"checksum", mod(func(b []byte) { b[HeaderSize+1] ^= 0x20 }), CodeChecksum, 5, false},
		{"oversize", mod(func(b []byte) { b[15] = 0x7f }), CodeFrameTooLarge, 5, true},
		{"bad body", frameBytes(Header{Version: 1, Op: OpCycle, ID: 5}, []byte{9, 0, 0, 0}), CodeBadRequest, 5, false},
		{"reserved flag", mod(func(b []byte) { b[9] = 1 }), CodeBadFrame, 5, false},
		{"response flag on request", mod(func(b []byte) { b[8] = byte(FlagResponse) }), CodeBadFrame, 5, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := rawDial(t, s.path)
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			f, err := ReadFrame(c, 0)
			if err != nil {
				t.Fatal(err)
			}
			var eb ErrorBody
			if !f.IsError() || eb.Decode(f.Body) != nil || eb.Code != tt.code || f.ID != tt.id {
				t.Fatalf("reply %+v %+v, want code %v id %d", f.Header, eb, tt.code, tt.id)
			}
			// Then: either the server hangs up, or the connection still works.
			if _, err := c.Write(ping); err != nil && !tt.closed {
				t.Fatal(err)
			}
			g, err := ReadFrame(c, 0)
			if tt.closed {
				if err == nil {
					t.Fatalf("server kept the connection: %+v", g.Header)
				}
				return
			}
			if err != nil || g.IsError() || string(g.Body) != "ok?" {
				t.Fatalf("after the error: %v %+v", err, g)
			}
		})
	}
	t.Run("fds from a client", func(t *testing.T) {
		c := rawDial(t, s.path)
		m := memfd(t, "client-fd", 64)
		defer m.Close()
		h := Header{Version: 1, Op: OpPing, ID: 6, Flags: FlagFDs, NFDs: 1}
		if _, _, err := c.WriteMsgUnix(frameBytes(h, nil), unix.UnixRights(int(m.Fd())), nil); err != nil {
			t.Fatal(err)
		}
		f, err := ReadFrame(c, 0)
		if err != nil || !f.IsError() || f.ID != 6 {
			t.Fatalf("reply %v %+v", err, f)
		}
	})
	t.Run("truncated", func(t *testing.T) {
		c := rawDial(t, s.path)
		c.Write(ping[:HeaderSize+1])
		c.CloseWrite()
		// The server gives up on the frame and closes; a reply may or may
		// not precede the close, but it must not hang.
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			if _, err := ReadFrame(c, 0); err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatal("server did not close a truncated connection")
				}
				return
			}
		}
	})
}
