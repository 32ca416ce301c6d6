package cluster

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net"
	"testing"
	"time"
)

// FuzzReadFrame: peer frames come from the network (after the handshake,
// but a member may be buggy); the decoder must never panic or allocate
// past its limits.
func FuzzReadFrame(f *testing.F) {
	var b bytes.Buffer
	w := bufio.NewWriter(&b)
	writeFrame(w, popPutPages, pagesHdr{Name: "x", Pages: []PageInfo{{1, 2, 3}}, Lens: []int{3}}, []byte("abc"))
	f.Add(b.Bytes())
	f.Add([]byte{1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, in []byte) {
		var raw json.RawMessage
		_, _, _ = readFrame(bufio.NewReader(bytes.NewReader(in)), &raw)
	})
}

// FuzzServerHandshake: whatever a client sends, the server either
// authenticates a holder of the secret or refuses.
func FuzzServerHandshake(f *testing.F) {
	f.Add([]byte{5, 'a', 'b', 'c', 'd', 'e'})
	f.Add(bytes.Repeat([]byte{0}, 80))
	f.Fuzz(func(t *testing.T, in []byte) {
		a, b := net.Pipe()
		defer a.Close()
		go func() {
			b.SetDeadline(time.Now().Add(time.Second))
			buf := make([]byte, len(authMagic)+nonceLen)
			b.Read(buf)
			b.Write(in)
			b.Close()
		}()
		if _, err := serverHandshake(a, testSecret); err == nil {
			t.Fatal("authenticated a client without the secret")
		}
	})
}
