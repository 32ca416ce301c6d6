package cluster

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The handshake every peer and Raft connection starts with. The server
// sends a magic and a fresh nonce; the client answers with its node id, its
// own nonce and HMAC-SHA256(secret, "c" ‖ server nonce ‖ client nonce ‖ id);
// the server answers with HMAC-SHA256(secret, "s" ‖ client nonce ‖ server
// nonce ‖ id). Both sides prove they hold the secret without sending it,
// and a recorded exchange cannot be replayed (fresh nonces).
var authMagic = []byte("FMPEER1\n")

const (
	nonceLen      = 32
	macLen        = sha256.Size
	authTimeout   = 3 * time.Second
	maxNodeIDLen  = 255
	authRejectTag = 0xFF
)

func authMAC(secret []byte, tag byte, a, b []byte, id string) []byte {
	h := hmac.New(sha256.New, secret)
	h.Write([]byte{tag})
	h.Write(a)
	h.Write(b)
	h.Write([]byte(id))
	return h.Sum(nil)
}

// serverHandshake authenticates an accepted connection; it returns the
// client's node id.
func serverHandshake(c net.Conn, secret []byte) (string, error) {
	_ = c.SetDeadline(time.Now().Add(authTimeout))
	defer c.SetDeadline(time.Time{})
	ns := make([]byte, nonceLen)
	if _, err := rand.Read(ns); err != nil {
		return "", err
	}
	if _, err := c.Write(append(slicesClone(authMagic), ns...)); err != nil {
		return "", fmt.Errorf("%w: %v", ErrAuth, err)
	}
	var n [1]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		return "", fmt.Errorf("%w: reading client hello: %v", ErrAuth, err)
	}
	buf := make([]byte, int(n[0])+nonceLen+macLen)
	if _, err := io.ReadFull(c, buf); err != nil {
		return "", fmt.Errorf("%w: reading client hello: %v", ErrAuth, err)
	}
	id := string(buf[:n[0]])
	nc := buf[n[0] : int(n[0])+nonceLen]
	mac := buf[int(n[0])+nonceLen:]
	if !hmac.Equal(mac, authMAC(secret, 'c', ns, nc, id)) {
		_, _ = c.Write([]byte{authRejectTag})
		return id, fmt.Errorf("%w: client %q does not hold the cluster secret", ErrAuth, id)
	}
	if _, err := c.Write(append([]byte{0}, authMAC(secret, 's', nc, ns, id)...)); err != nil {
		return id, fmt.Errorf("%w: %v", ErrAuth, err)
	}
	return id, nil
}

// clientHandshake proves this node holds the secret and checks that the
// server does too.
func clientHandshake(c net.Conn, secret []byte, id string) error {
	if len(id) > maxNodeIDLen {
		return fmt.Errorf("%w: node id longer than %d bytes", ErrConfig, maxNodeIDLen)
	}
	_ = c.SetDeadline(time.Now().Add(authTimeout))
	defer c.SetDeadline(time.Time{})
	hello := make([]byte, len(authMagic)+nonceLen)
	if _, err := io.ReadFull(c, hello); err != nil {
		return fmt.Errorf("%w: reading server hello: %v", ErrAuth, err)
	}
	if !bytes.Equal(hello[:len(authMagic)], authMagic) {
		return fmt.Errorf("%w: %s is not a FlashMemory peer port", ErrAuth, c.RemoteAddr())
	}
	ns := hello[len(authMagic):]
	nc := make([]byte, nonceLen)
	if _, err := rand.Read(nc); err != nil {
		return err
	}
	msg := append([]byte{byte(len(id))}, id...)
	msg = append(msg, nc...)
	msg = append(msg, authMAC(secret, 'c', ns, nc, id)...)
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	var st [1]byte
	if _, err := io.ReadFull(c, st[:]); err != nil {
		return fmt.Errorf("%w: server closed the handshake: %v", ErrAuth, err)
	}
	if st[0] != 0 {
		return fmt.Errorf("%w: %s refused this node's secret; check secret_file on both nodes", ErrAuth, c.RemoteAddr())
	}
	mac := make([]byte, macLen)
	if _, err := io.ReadFull(c, mac); err != nil {
		return fmt.Errorf("%w: %v", ErrAuth, err)
	}
	if !hmac.Equal(mac, authMAC(secret, 's', nc, ns, id)) {
		return fmt.Errorf("%w: %s does not hold the cluster secret", ErrAuth, c.RemoteAddr())
	}
	return nil
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }

// authListener hands out only connections that passed the handshake;
// handshakes run concurrently so a slow or hostile client does not hold up
// the accept loop.
type authListener struct {
	net.Listener
	secret []byte
	log    *slog.Logger
	what   string
	ch     chan net.Conn
	done   chan struct{}
	once   sync.Once
	// refused counts connections that failed the handshake.
	refused func()
}

func newAuthListener(ln net.Listener, secret []byte, tlsConf *tls.Config, log *slog.Logger, what string, refused func()) *authListener {
	if tlsConf != nil {
		ln = tls.NewListener(ln, tlsConf)
	}
	a := &authListener{Listener: ln, secret: secret, log: log, what: what, ch: make(chan net.Conn), done: make(chan struct{}), refused: refused}
	go a.loop()
	return a
}

func (a *authListener) loop() {
	for {
		c, err := a.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			a.Close()
			return
		}
		go func() {
			id, err := serverHandshake(c, a.secret)
			if err != nil {
				a.log.Warn("cluster connection refused", "port", a.what, "remote", c.RemoteAddr().String(), "node", id, "err", err)
				if a.refused != nil {
					a.refused()
				}
				_ = c.Close()
				return
			}
			select {
			case a.ch <- c:
			case <-a.done:
				_ = c.Close()
			}
		}()
	}
}

func (a *authListener) Accept() (net.Conn, error) {
	select {
	case c := <-a.ch:
		return c, nil
	case <-a.done:
		return nil, net.ErrClosed
	}
}

func (a *authListener) Close() error {
	var err error
	a.once.Do(func() {
		close(a.done)
		err = a.Listener.Close()
	})
	return err
}

// dialer opens authenticated connections to members.
type dialer struct {
	id     string
	secret []byte
	tls    *tls.Config
}

func (d *dialer) dial(addr string, timeout time.Duration) (net.Conn, error) {
	nd := net.Dialer{Timeout: timeout}
	var c net.Conn
	var err error
	if d.tls != nil {
		c, err = tls.DialWithDialer(&nd, "tcp", addr, d.tls)
	} else {
		c, err = nd.Dial("tcp", addr)
	}
	if err != nil {
		return nil, err
	}
	if err := clientHandshake(c, d.secret, d.id); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// raftStream is the Raft transport's stream layer with the handshake on
// every connection, so the Raft port too accepts only members.
type raftStream struct {
	*authListener
	d         *dialer
	advertise net.Addr
}

func (s *raftStream) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return s.d.dial(string(addr), timeout)
}

func (s *raftStream) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.authListener.Addr()
}
