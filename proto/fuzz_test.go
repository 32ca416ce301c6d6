package proto

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"testing"
)

// frameSeeds returns valid frames of every sample body plus a few broken
// ones, as a seed corpus for the frame fuzzers.
func frameSeeds() [][]byte {
	var seeds [][]byte
	for i, s := range samples() {
		body, err := s.msg.AppendBinary(nil)
		if err != nil {
			panic(err)
		}
		h := Header{Version: 1, Op: s.op, ID: uint64(i + 1)}
		if s.reply {
			h.Flags = FlagResponse
		}
		if s.op == 0 {
			h.Flags = FlagResponse | FlagError
		}
		seeds = append(seeds, frameBytes(h, body))
	}
	bad := bytes.Clone(seeds[2])
	bad[HeaderSize] ^= 0xff
	return append(seeds, bad, seeds[3][:HeaderSize+1], []byte("FMEM"), nil)
}

// FuzzParseFrame: the frame decoder over arbitrary bytes never panics, never
// accepts a body larger than the limit, and what it accepts re-encodes to
// the same bytes.
func FuzzParseFrame(f *testing.F) {
	for _, s := range frameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 16
		h, body, n, err := ParseFrame(data, limit)
		if err != nil {
			if Fatal(err) && n != 0 {
				t.Fatalf("fatal error %v consumed %d bytes", err, n)
			}
			return
		}
		if h.BodyLen > limit || len(body) != int(h.BodyLen) || n != HeaderSize+len(body) {
			t.Fatalf("header %+v, body %d, consumed %d", h, len(body), n)
		}
		if !bytes.Equal(frameBytes(h, body), data[:n]) {
			t.Fatal("accepted frame does not re-encode to its bytes")
		}
	})
}

// FuzzReadFrame: the stream reader over arbitrary bytes with arbitrary read
// sizes keeps reading after non-fatal errors and stops at fatal ones,
// without panicking or over-allocating.
func FuzzReadFrame(f *testing.F) {
	seeds := frameSeeds()
	for i, s := range seeds {
		f.Add(append(bytes.Clone(s), seeds[(i+1)%len(seeds)]...), uint8(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, chunk uint8) {
		sc := &streamConn{data: data, chunk: int(chunk)}
		oob := make([]byte, oobSpace)
		for range 1000 {
			fr, err := readFrame(sc, 1<<16, oob)
			if err == io.EOF || (err != nil && Fatal(err)) {
				return
			}
			if err != nil {
				if fr == nil || fr.Body != nil || fr.Files != nil {
					t.Fatalf("non-fatal %v returned %+v", err, fr)
				}
				continue
			}
			if len(fr.Body) != int(fr.BodyLen) || fr.BodyLen > 1<<16 {
				t.Fatalf("frame %+v with %d body bytes", fr.Header, len(fr.Body))
			}
		}
	})
}

// fuzzBody fuzzes one body decoder: Decode of any bytes returns nil or an
// error wrapping ErrMalformed, never panics; a binary body it accepts
// re-encodes to exactly the same bytes, and those decode and re-encode again.
func fuzzBody(f *testing.F, proto Message) {
	typ := reflect.TypeOf(proto)
	for _, s := range samples() {
		b, _ := s.msg.AppendBinary(nil)
		if reflect.TypeOf(s.msg) == typ {
			f.Add(b)
		}
	}
	f.Add([]byte{})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, body []byte) {
		m := newLike(proto)
		err := m.Decode(body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if isJSON(m) {
			b, err := m.AppendBinary(nil)
			if err != nil {
				return // e.g. NaN smuggled in: not encodable, fine
			}
			if err := newLike(proto).Decode(b); err != nil {
				t.Fatalf("re-encoded JSON does not decode: %v", err)
			}
			return
		}
		b, err := m.AppendBinary(nil)
		if err != nil {
			t.Fatalf("accepted body does not encode: %v", err)
		}
		if !bytes.Equal(b, body) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", body, b)
		}
		// (Values are compared through their bytes: a NaN ratio is a valid
		// body that reflect.DeepEqual would call unequal to itself.)
		m2 := newLike(proto)
		if err := m2.Decode(b); err != nil {
			t.Fatalf("second decode: %v", err)
		}
		if b2, err := m2.AppendBinary(nil); err != nil || !bytes.Equal(b2, b) {
			t.Fatalf("second re-encoding differs (%v)", err)
		}
	})
}

func FuzzDecodeError(f *testing.F)       { fuzzBody(f, &ErrorBody{}) }
func FuzzDecodeEmpty(f *testing.F)       { fuzzBody(f, &Empty{}) }
func FuzzDecodePing(f *testing.F)        { fuzzBody(f, &Ping{}) }
func FuzzDecodeHello(f *testing.F)       { fuzzBody(f, &Hello{}) }
func FuzzDecodeHelloReply(f *testing.F)  { fuzzBody(f, &HelloReply{}) }
func FuzzDecodeOpen(f *testing.F)        { fuzzBody(f, &Open{}) }
func FuzzDecodeOpenReply(f *testing.F)   { fuzzBody(f, &OpenReply{}) }
func FuzzDecodeResume(f *testing.F)      { fuzzBody(f, &Resume{}) }
func FuzzDecodeResumeReply(f *testing.F) { fuzzBody(f, &ResumeReply{}) }
func FuzzDecodeClose(f *testing.F)       { fuzzBody(f, &Close{}) }
func FuzzDecodePersist(f *testing.F)     { fuzzBody(f, &Persist{}) }
func FuzzDecodeAppend(f *testing.F)      { fuzzBody(f, &Append{}) }
func FuzzDecodeCommit(f *testing.F)      { fuzzBody(f, &Commit{}) }
func FuzzDecodeChunksReply(f *testing.F) { fuzzBody(f, &ChunksReply{}) }
func FuzzDecodeCycle(f *testing.F)       { fuzzBody(f, &Cycle{}) }
func FuzzDecodeCycleReply(f *testing.F)  { fuzzBody(f, &CycleReply{}) }
func FuzzDecodeRelease(f *testing.F)     { fuzzBody(f, &Release{}) }
func FuzzDecodeAdminTarget(f *testing.F) { fuzzBody(f, &AdminTarget{}) }
func FuzzDecodeStatus(f *testing.F)      { fuzzBody(f, &StatusReply{}) }
func FuzzDecodeSessions(f *testing.F)    { fuzzBody(f, &SessionsReply{}) }
func FuzzDecodeInspect(f *testing.F)     { fuzzBody(f, &InspectReply{}) }
func FuzzDecodeEvictReply(f *testing.F)  { fuzzBody(f, &EvictReply{}) }
func FuzzDecodeModels(f *testing.F)      { fuzzBody(f, &ModelsReply{}) }
func FuzzDecodeVerifyReply(f *testing.F) { fuzzBody(f, &VerifyReply{}) }
