//go:build unix

package attn

import (
	"syscall"
	"time"
)

// processCPU is the user+system CPU time of the whole process. Benchmarks report
// work per CPU-second beside wall-clock rates because the shared build machine
// is often busy with other jobs, which stretches wall time but not CPU time.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
