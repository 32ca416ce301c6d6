package daemon

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
)

// ErrInUse means another daemon is already serving the configured socket.
var ErrInUse = errors.New("socket in use by a running daemon")

// listen returns the control listener: the one systemd passed (socket
// activation) if any, else a fresh unix socket at path. A stale socket file
// left by a crashed daemon is replaced; a live one is an error.
func listen(path string) (*net.UnixListener, bool, error) {
	if lns, err := activation.Listeners(); err == nil {
		for _, ln := range lns {
			if ul, ok := ln.(*net.UnixListener); ok {
				return ul, true, nil
			}
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, false, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&fs.ModeSocket == 0 {
			return nil, false, fmt.Errorf("%s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			return nil, false, fmt.Errorf("%w: %s", ErrInUse, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, false, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, false, err
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, false, err
	}
	return ln, false, nil
}

// signalContext ends on SIGTERM or SIGINT: the start of a graceful shutdown.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}
