package daemon

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/flashmemory/flashmemory/indexer"
	"github.com/flashmemory/flashmemory/proto"
)

// Session metadata comes back from disk after a restart: a damaged blob must
// be an error, never a panic or a huge allocation.
func FuzzDecodeMeta(f *testing.F) {
	l := proto.DeepSeekV4Layout(64)
	good, err := encodeMeta(&sessionMeta{ID: 3, Name: "s", Model: "demo", Layout: l, Chunks: 65, Gens: []uint64{1, 2}}, []byte("state"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("FMS1"))
	f.Add([]byte("FMS1\xff\xff\xff\xff{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, state, err := decodeMeta(b)
		if err != nil {
			return
		}
		cpp := uint64(m.Layout.ChunksPerPage)
		if need := (m.Chunks + cpp - 1) / cpp; uint64(len(m.Gens)) < need || uint64(len(m.Gens)) > need+maxUncountedPages {
			t.Fatalf("accepted %d generations for %d chunks", len(m.Gens), m.Chunks)
		}
		if len(state) > len(b) {
			t.Fatal("state longer than the blob")
		}
	})
}

// FuzzAdmission sends arbitrary bytes as the first thing on a fresh
// connection (before, during and after HELLO), then closes its write side.
// The daemon must end the connection promptly (a reply per complete request,
// at most one connection-level error frame), send only well-formed reply
// frames, and keep serving other clients.
func FuzzAdmission(f *testing.F) {
	hello, _ := (&proto.Hello{MinVersion: 1, MaxVersion: 1, ClientName: "fz"}).AppendBinary(nil)
	frame := func(op proto.Op, id uint64, body []byte) []byte {
		h := proto.Header{Version: 1, Op: op, ID: id, BodyLen: uint32(len(body)), CRC: crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli))}
		b := make([]byte, proto.HeaderSize, proto.HeaderSize+len(body))
		proto.PutHeader(b, h)
		return append(b, body...)
	}
	f.Add(frame(proto.OpHello, 1, hello))
	f.Add(frame(proto.OpHello, 0, hello))
	f.Add(frame(proto.OpHello, 1, hello)[:10])
	f.Add(append(frame(proto.OpPing, 1, []byte("x")), frame(proto.OpHello, 2, hello)...))
	f.Add(append(frame(proto.OpHello, 1, hello), frame(proto.OpModels, 2, nil)...))
	f.Add(append(frame(proto.OpHello, 1, hello), frame(proto.OpOpen, 2, []byte{0, 0, 0, 0})...))
	f.Add(append(frame(proto.OpHello, 1, hello), frame(proto.OpEvict, 3, []byte(`{"session":1}`))...))
	f.Add(frame(proto.OpStatus, 1, nil))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"))
	big := frame(proto.OpPing, 1, nil)
	binary.LittleEndian.PutUint32(big[12:], 1<<30)
	f.Add(big)

	cfg := testConfig(f, f.TempDir())
	cfg.Limits.HandshakeTimeout = Duration(200 * time.Millisecond)
	cfg.Limits.StagingBytes = 1 << 20
	rd := start(f, cfg)
	f.Cleanup(func() { rd.shutdown(f) })
	f.Fuzz(func(t *testing.T, in []byte) {
		nc, err := net.Dial("unix", cfg.Socket)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		uc := nc.(*net.UnixConn)
		_ = uc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := uc.Write(in); err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("write: %v", err)
		}
		_ = uc.CloseWrite()
		pc := proto.NewConn(uc, 64<<20)
		connErrors := 0
		for {
			fr, err := pc.ReadFrame()
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
				break
			}
			if err != nil {
				t.Fatalf("daemon sent a bad frame or did not close: %v", err)
			}
			fr.CloseFiles()
			if !fr.IsResponse() {
				t.Fatalf("daemon sent a request: %+v", fr.Header)
			}
			if fr.ID == 0 {
				if connErrors++; connErrors > 1 || !fr.IsError() {
					t.Fatalf("connection-level frame %+v (#%d)", fr.Header, connErrors)
				}
			}
		}
		// Others are still served.
		c, err := proto.Dial(context.Background(), cfg.Socket, &proto.Options{ClientName: "after-fuzz", NoMapStaging: true})
		if err != nil {
			t.Fatalf("daemon stopped serving: %v", err)
		}
		c.Close()
	})
}

// A metadata delta comes back from disk too, applied to the full record
// before it: an arbitrary delta must be refused (the state before it kept)
// or yield a blob that decodes, never panic.
func FuzzMergeMeta(f *testing.F) {
	l := proto.DeepSeekV4Layout(64)
	l.ChunksPerPage, l.KeyBytes, l.TargetLayers = 8, 32, 2
	m, err := indexer.RandomModel(1, indexer.ModelConfig{Layers: []int{2, 4}, Hidden: 8, QLoraRank: 4, Heads: 2, HeadDim: 16, RopeDim: 8})
	if err != nil {
		f.Fatal(err)
	}
	p := indexer.DefaultPolicy()
	p.FirstKeep, p.LastKeep, p.KMax, p.ChunksPerPage = 4, 4, 2, 8
	req, err := indexer.NewRequest(m, p)
	if err != nil {
		f.Fatal(err)
	}
	if err := req.AppendKeys(0, m.RandomKeys(1, 10)); err != nil {
		f.Fatal(err)
	}
	state, err := req.MarshalBinary()
	if err != nil {
		f.Fatal(err)
	}
	meta := &sessionMeta{ID: 3, Name: "s", Model: "demo", Layout: l, Chunks: 10, Gens: []uint64{1, 2}}
	base, err := encodeMeta(meta, state)
	if err != nil {
		f.Fatal(err)
	}
	if err := req.AppendKeys(10, m.RandomKeys(2, 9)); err != nil {
		f.Fatal(err)
	}
	ds, err := req.MarshalDelta(10)
	if err != nil {
		f.Fatal(err)
	}
	next := *meta
	next.Chunks, next.Gens = 19, []uint64{1, 3, 1}
	good, err := encodeSessionDeltaFor(&next, meta.Gens, ds)
	if err != nil {
		f.Fatal(err)
	}
	if blob, used, err := mergeMeta(base, [][]byte{good}); err != nil || used != 1 {
		f.Fatalf("valid delta: used %d: %v", used, err)
	} else if got, _, err := decodeMeta(blob); err != nil || got.Chunks != 19 || len(got.Gens) != 3 || got.Gens[1] != 3 {
		f.Fatalf("merged: %+v %v", got, err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte("FMD1"))
	f.Add([]byte("FMD1\x02\x00\x00\x00{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		blob, used, err := mergeMeta(base, [][]byte{b})
		if blob == nil {
			t.Fatalf("a valid base gave no blob: %v", err)
		}
		if used == 0 {
			if err == nil {
				t.Fatal("delta not applied and no reason given")
			}
			if !bytes.Equal(blob, base) {
				if _, _, err := decodeMeta(blob); err != nil {
					t.Fatal("refused delta changed the state")
				}
			}
			return
		}
		if _, _, err := decodeMeta(blob); err != nil {
			t.Fatalf("merged blob does not decode: %v", err)
		}
	})
}
