package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrPermission is returned for a peer whose credentials are not allowed.
var ErrPermission = errors.New("permission denied")

// Cred identifies a connected peer process as the kernel saw it at connect.
type Cred struct {
	PID int32
	UID uint32
	GID uint32
	// Groups are the peer process's supplementary groups (see peerGroups);
	// nil when they could not be read.
	Groups []uint32
}

// inGroup says whether the peer's primary or a supplementary group is in set.
func (c Cred) inGroup(set map[uint32]bool) bool {
	if set[c.GID] {
		return true
	}
	for _, g := range c.Groups {
		if set[g] {
			return true
		}
	}
	return false
}

func peerCred(c *net.UnixConn) (Cred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Cred{}, err
	}
	var (
		uc     *unix.Ucred
		groups []uint32
		serr   error
		gerr   error
	)
	if err := raw.Control(func(fd uintptr) {
		uc, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if serr == nil {
			groups, gerr = sockPeerGroups(int(fd))
		}
	}); err != nil {
		return Cred{}, err
	}
	if serr != nil {
		return Cred{}, serr
	}
	cred := Cred{PID: uc.Pid, UID: uc.Uid, GID: uc.Gid}
	if gerr == nil {
		cred.Groups = groups
	} else {
		cred.Groups = procGroups(cred.PID)
	}
	return cred, nil
}

// sockPeerGroups reads SO_PEERGROUPS (Linux 4.13+): the supplementary groups
// the peer process had when it connected, recorded by the kernel, so a
// process holding the group only as a supplementary group of its own (newgrp,
// sg, a service's SupplementaryGroups=) is recognised.
func sockPeerGroups(fd int) ([]uint32, error) {
	buf := make([]uint32, 64)
	for range 3 {
		n := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
		switch errno {
		case 0:
			return slices.Clone(buf[:n/4]), nil
		case syscall.ERANGE:
			buf = make([]uint32, n/4+1)
			continue
		default:
			return nil, errno
		}
	}
	return nil, syscall.ERANGE
}

// procGroups reads the "Groups:" line of /proc/PID/status: the fallback on
// kernels without SO_PEERGROUPS. nil if unreadable (the process may be gone).
func procGroups(pid int32) []uint32 {
	f, err := os.Open("/proc/" + strconv.Itoa(int(pid)) + "/status")
	if err != nil {
		return nil
	}
	defer f.Close()
	return parseProcGroups(f)
}

func parseProcGroups(f io.Reader) []uint32 {
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), "Groups:")
		if !ok {
			continue
		}
		out := []uint32{}
		for _, g := range strings.Fields(line) {
			if id, err := strconv.ParseUint(g, 10, 32); err == nil {
				out = append(out, uint32(id))
			}
		}
		return out
	}
	return nil
}

// access decides who may connect (root, the daemon's own uid, members of
// allowed_groups) and who may act on other users' sessions (root and members
// of admin_groups).
type access struct {
	uid    uint32
	groups map[uint32]bool
	admins map[uint32]bool
}

func newAccess(allowed, admins []string) (access, error) {
	a := access{uid: uint32(os.Geteuid())}
	var err error
	if a.groups, err = groupIDs("allowed_groups", allowed); err != nil {
		return a, err
	}
	if a.admins, err = groupIDs("admin_groups", admins); err != nil {
		return a, err
	}
	return a, nil
}

// groupIDs resolves group names (or numeric ids) to gids.
func groupIDs(key string, names []string) (map[uint32]bool, error) {
	out := map[uint32]bool{}
	for _, n := range names {
		gid, err := lookupGroup(n)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: group %q: %v (create it or remove it from the list)", ErrConfig, key, n, err)
		}
		out[gid] = true
	}
	return out, nil
}

func lookupGroup(n string) (uint32, error) {
	g, err := user.LookupGroup(n)
	if err != nil {
		if id, perr := strconv.ParseUint(n, 10, 32); perr == nil {
			return uint32(id), nil
		}
		return 0, err
	}
	id, err := strconv.ParseUint(g.Gid, 10, 32)
	return uint32(id), err
}

// allow admits root, the daemon's uid, and a peer whose primary or
// supplementary groups (as its process held them at connect) include an
// allowed group. Only when the kernel reported no supplementary groups does
// it fall back to the uid's groups in the group database (getgrouplist).
func (a access) allow(c Cred) error {
	if c.UID == 0 || c.UID == a.uid {
		return nil
	}
	if len(a.groups) > 0 {
		if c.inGroup(a.groups) {
			return nil
		}
		if c.Groups == nil && dbGroupsContain(c.UID, a.groups) {
			return nil
		}
	}
	return fmt.Errorf("%w: uid %d gid %d (pid %d) is neither the daemon's uid nor in allowed_groups; add the user to one of them",
		ErrPermission, c.UID, c.GID, c.PID)
}

func dbGroupsContain(uid uint32, set map[uint32]bool) bool {
	u, err := user.LookupId(strconv.FormatUint(uint64(uid), 10))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	if err != nil {
		return false
	}
	for _, g := range gids {
		if id, err := strconv.ParseUint(g, 10, 32); err == nil && set[uint32(id)] {
			return true
		}
	}
	return false
}

// admin says whether peer may see and act on every user's sessions.
func (a access) admin(peer Cred) bool { return peer.UID == 0 || peer.inGroup(a.admins) }

// mayActOn says whether peer may inspect, evict or resume a session owned
// by owner: the same uid, root, or a member of admin_groups.
func (a access) mayActOn(owner, peer Cred) bool { return peer.UID == owner.UID || a.admin(peer) }

// sameOwner says whether a resuming peer may take over a session opened by
// owner, and so receive its bytes: the same uid, or root (admin_groups may
// evict and inspect, not read).
func sameOwner(owner, peer Cred) bool { return peer.UID == owner.UID || peer.UID == 0 }
