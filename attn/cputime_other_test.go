//go:build !unix

package attn

import "time"

func processCPU() time.Duration { return 0 }
