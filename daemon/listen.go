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
// activation) if any, else a fresh unix socket at path, mode 0660 and owned
// by group gid (-1: the daemon's own group), so members of that group can
// connect. A stale socket file left by a crashed daemon is replaced; a live
// one is an error.
func listen(path string, gid int) (*net.UnixListener, bool, error) {
	if lns, err := activation.Listeners(); err == nil {
		for _, ln := range lns {
			if ul, ok := ln.(*net.UnixListener); ok {
				return ul, true, nil
			}
		}
	}
	dir := filepath.Dir(path)
	_, statErr := os.Stat(dir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, false, fmt.Errorf("socket directory: %w", err)
	}
	// The group must be able to reach the socket: a directory the daemon
	// made (or its own "flashmemd" run directory) gets the socket's group.
	if gid >= 0 && (os.IsNotExist(statErr) || ownRunDir(dir)) {
		if err := os.Chown(dir, -1, gid); err != nil {
			return nil, false, fmt.Errorf("socket directory %s: give it group %d: %w", dir, gid, err)
		}
		if err := os.Chmod(dir, 0o750); err != nil {
			return nil, false, fmt.Errorf("socket directory: %w", err)
		}
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
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			ln.Close()
			return nil, false, fmt.Errorf("socket %s: give it group %d (socket_group): %w; run the daemon as root or as a member of that group", path, gid, err)
		}
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, false, err
	}
	return ln, false, nil
}

// ownRunDir says whether dir is a "flashmemd" directory owned by the
// daemon's uid, which the daemon may give the socket's group.
func ownRunDir(dir string) bool {
	fi, err := os.Stat(dir)
	if err != nil || filepath.Base(dir) != "flashmemd" {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid()
}

// socketGID resolves socket_group (default: the first of allowed_groups);
// -1 leaves the socket with the daemon's own group.
func socketGID(cfg Config) (int, error) {
	name := cfg.SocketGroup
	if name == "" && len(cfg.AllowedGroups) > 0 {
		name = cfg.AllowedGroups[0]
	}
	if name == "" {
		return -1, nil
	}
	gid, err := lookupGroup(name)
	if err != nil {
		return -1, fmt.Errorf("%w: socket_group %q: %v (create the group or set socket_group)", ErrConfig, name, err)
	}
	return int(gid), nil
}

// signalContext ends on SIGTERM or SIGINT: the start of a graceful shutdown.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
}
