package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"strconv"

	"golang.org/x/sys/unix"
)

// ErrPermission is returned for a peer whose credentials are not allowed.
var ErrPermission = errors.New("permission denied")

// Cred identifies a connected peer process as the kernel saw it at connect.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
}

func peerCred(c *net.UnixConn) (Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var uc *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Cred{}, err
	}
	if serr != nil {
		return Cred{}, serr
	}
	return Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}, nil
}

// access decides who may connect: root, the daemon's own uid, and members of
// the allowed groups (primary or supplementary group of the peer's uid).
type access struct {
	uid    uint32
	groups map[uint32]bool
}

func newAccess(names []string) (access, error) {
	a := access{uid: uint32(os.Geteuid()), groups: map[uint32]bool{}}
	for _, n := range names {
		g, err := user.LookupGroup(n)
		if err != nil {
			if id, perr := strconv.ParseUint(n, 10, 32); perr == nil {
				a.groups[uint32(id)] = true
				continue
			}
			return a, fmt.Errorf("%w: allowed group %q: %v", ErrConfig, n, err)
		}
		id, _ := strconv.ParseUint(g.Gid, 10, 32)
		a.groups[uint32(id)] = true
	}
	return a, nil
}

func (a access) allow(c Cred) error {
	if c.UID == 0 || c.UID == a.uid || a.groups[c.GID] {
		return nil
	}
	if len(a.groups) > 0 {
		if u, err := user.LookupId(strconv.FormatUint(uint64(c.UID), 10)); err == nil {
			if gids, err := u.GroupIds(); err == nil {
				for _, g := range gids {
					if id, err := strconv.ParseUint(g, 10, 32); err == nil && a.groups[uint32(id)] {
						return nil
					}
				}
			}
		}
	}
	return fmt.Errorf("%w: uid %d gid %d (pid %d)", ErrPermission, c.UID, c.GID, c.PID)
}

// sameOwner says whether a resuming peer may take over a session opened by
// owner: the same uid, or root.
func sameOwner(owner, peer Cred) bool { return peer.UID == owner.UID || peer.UID == 0 }
