package daemon

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrDataDirInUse means another flashmemd holds the data directory.
var ErrDataDirInUse = errors.New("data directory in use")

// ErrMetricsInUse means the metrics address is taken.
var ErrMetricsInUse = errors.New("metrics address in use")

// lockDataDir takes the data directory for this process: an exclusive flock
// on data_dir/flashmemd.lock, which holds the owner's pid. A second daemon
// on the same directory is refused here, with a message that says what to
// do, before Badger would refuse it with its own.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "flashmemd.lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("data directory %s: %w", dir, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			who := "another flashmemd"
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				who += " (pid " + strconv.Itoa(pid) + ")"
			}
			return nil, fmt.Errorf("%w: %s is used by %s: stop that daemon, or give this one its own directory with --data-dir DIR (or FLASHMEMD_DATA_DIR, or data_dir in the config file)",
				ErrDataDirInUse, dir, who)
		}
		return nil, fmt.Errorf("data directory %s: locking %s: %w", dir, path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// metricsListenError says what to do when the metrics address cannot be
// bound.
func metricsListenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("%w: %s is taken (another flashmemd?): pass a free one with --metrics HOST:PORT, or --metrics off (or FLASHMEMD_METRICS, or metrics in the config file)",
			ErrMetricsInUse, addr)
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	return fmt.Errorf("metrics listener %s: %v: pass another address with --metrics, or --metrics off", addr, err)
}
