package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// Version is the release version of both binaries; a release build may set
// it with -ldflags "-X github.com/flashmemory/flashmemory/internal/buildinfo.Version=…".
var Version = "0.1.0-dev"

// Commit is the commit to report when the binary carries no VCS stamp (go
// build -buildvcs=false, or a tree git cannot read); scripts/demo.sh sets it
// with -ldflags "-X github.com/flashmemory/flashmemory/internal/buildinfo.Commit=…".
var Commit = ""

// Info is what --version prints.
type Info struct {
	Version  string
	Commit   string // "unknown" when built outside a git checkout or with -buildvcs=false
	Modified bool   // the checkout had uncommitted changes
	Time     string // commit time, RFC 3339
	Tags     string // build tags; "" for none
	CUDA     bool   // built with the cuda tag
	Go       string
}

// Read returns the running binary's build information.
func Read() Info {
	in := Info{Version: Version, Commit: "unknown", Go: runtime.Version()}
	if Commit != "" {
		in.Commit = Commit
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Commit = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		case "vcs.time":
			in.Time = s.Value
		case "-tags":
			in.Tags = s.Value
		}
	}
	for _, t := range strings.Split(in.Tags, ",") {
		if strings.TrimSpace(t) == "cuda" {
			in.CUDA = true
		}
	}
	return in
}

// String is the one line --version prints after the program's name.
func (in Info) String() string {
	commit := in.Commit
	if len(commit) > 12 {
		commit = commit[:12]
	}
	if in.Modified {
		commit += "+modified"
	}
	cuda := "without CUDA (default build)"
	if in.CUDA {
		cuda = "with CUDA (cuda tag)"
	}
	s := fmt.Sprintf("%s (commit %s", in.Version, commit)
	if in.Time != "" {
		s += " of " + in.Time
	}
	s += ", " + cuda
	if in.Tags != "" {
		s += ", tags " + in.Tags
	}
	return s + ", " + in.Go + ")"
}
