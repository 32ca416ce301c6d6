package ctl

import (
	"encoding/json"
	"errors"
	"io"
)

// Sentinel errors of flashmemctl's evaluation and simulation commands; the
// daemon's own errors arrive as *proto.Error.
var (
	// ErrUsage reports a flag value out of range or inconsistent flags.
	ErrUsage = errors.New("flashmemctl: invalid arguments")

	// ErrDaemon reports a flashmemd the simulator started that failed to
	// come up or exited early; the message carries its log's tail.
	ErrDaemon = errors.New("flashmemctl: flashmemd failed")
)

// newJSONLines returns an encoder writing one compact JSON object per line.
func newJSONLines(w io.Writer) *json.Encoder { return json.NewEncoder(w) }
