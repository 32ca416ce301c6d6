package ctl

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// simCgroup is a memory-limited cgroup the simulator's daemons run in under
// --bypass-cache, so the page cache charged to them (segment writes, any
// buffered read) cannot grow past the limit and hold the SSD tier's data.
// cgroup v2 (memory.max) where the unified hierarchy has the memory
// controller, else cgroup v1's memory hierarchy (memory.limit_in_bytes).
type simCgroup struct {
	dir   string
	v2    bool
	limit int64
}

// newSimCgroup makes a cgroup limited to limit bytes; nil and a note saying
// why when this machine offers none the process may create.
func newSimCgroup(name string, limit int64) (*simCgroup, string) {
	v2, v1 := cgroupMounts()
	var notes []string
	if v2 != "" {
		ctrl, _ := os.ReadFile(filepath.Join(v2, "cgroup.controllers"))
		if strings.Contains(" "+string(ctrl)+" ", " memory") {
			// Children of the root cgroup may use a controller once the
			// root's subtree_control enables it (the root is exempt from
			// the no-internal-process rule).
			_ = os.WriteFile(filepath.Join(v2, "cgroup.subtree_control"), []byte("+memory"), 0)
			dir := filepath.Join(v2, name)
			if err := os.Mkdir(dir, 0o755); err == nil {
				if err := os.WriteFile(filepath.Join(dir, "memory.max"), []byte(strconv.FormatInt(limit, 10)), 0); err == nil {
					_ = os.WriteFile(filepath.Join(dir, "memory.swap.max"), []byte("0"), 0)
					return &simCgroup{dir: dir, v2: true, limit: limit}, ""
				} else {
					notes = append(notes, "cgroup v2: "+err.Error())
				}
				_ = os.Remove(dir)
			} else {
				notes = append(notes, "cgroup v2: "+err.Error())
			}
		} else {
			notes = append(notes, "cgroup v2 has no memory controller here")
		}
	}
	if v1 != "" {
		dir := filepath.Join(v1, name)
		if err := os.Mkdir(dir, 0o755); err == nil {
			if err := os.WriteFile(filepath.Join(dir, "memory.limit_in_bytes"), []byte(strconv.FormatInt(limit, 10)), 0); err == nil {
				return &simCgroup{dir: dir, limit: limit}, ""
			} else {
				notes = append(notes, "cgroup v1 memory: "+err.Error())
			}
			_ = os.Remove(dir)
		} else {
			notes = append(notes, "cgroup v1 memory: "+err.Error())
		}
	} else if v2 == "" {
		notes = append(notes, "no cgroup filesystem mounted")
	}
	return nil, strings.Join(notes, "; ")
}

// cgroupMounts finds the cgroup2 mount and the cgroup v1 memory hierarchy.
func cgroupMounts() (v2, v1mem string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options... - fstype source superoptions
		l := sc.Text()
		i := strings.Index(l, " - ")
		if i < 0 {
			continue
		}
		pre, post := strings.Fields(l[:i]), strings.Fields(l[i+3:])
		if len(pre) < 5 || len(post) < 3 || pre[3] != "/" {
			continue // a bind of a sub-cgroup: its root is not the hierarchy's
		}
		switch post[0] {
		case "cgroup2":
			if v2 == "" {
				v2 = pre[4]
			}
		case "cgroup":
			for _, o := range strings.Split(post[2], ",") {
				if o == "memory" && v1mem == "" {
					v1mem = pre[4]
				}
			}
		}
	}
	return v2, v1mem
}

// add moves a process into the cgroup.
func (c *simCgroup) add(pid int) error {
	return os.WriteFile(filepath.Join(c.dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0)
}

// usage reads the cgroup's peak memory and the page cache it holds now.
func (c *simCgroup) usage() (peak, cache int64) {
	read := func(name string) int64 {
		b, _ := os.ReadFile(filepath.Join(c.dir, name))
		n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
		return n
	}
	key := "cache"
	if c.v2 {
		peak, key = read("memory.peak"), "file"
	} else {
		peak = read("memory.max_usage_in_bytes")
	}
	b, _ := os.ReadFile(filepath.Join(c.dir, "memory.stat"))
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == key {
			cache, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	return peak, cache
}

// remove deletes the cgroup once its processes have exited.
func (c *simCgroup) remove() error {
	if err := os.Remove(c.dir); err != nil {
		return fmt.Errorf("remove cgroup %s: %w", c.dir, err)
	}
	return nil
}

func (c *simCgroup) String() string {
	v := "v1"
	if c.v2 {
		v = "v2"
	}
	return fmt.Sprintf("cgroup %s %s, memory limit %s", v, c.dir, human(uint64(c.limit)))
}
