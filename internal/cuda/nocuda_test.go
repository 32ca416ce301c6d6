//go:build !cuda

package cuda

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

func TestDefaultBuildHasNoCUDA(t *testing.T) {
	if Available {
		t.Fatal("Available is true without the cuda tag")
	}
	if _, err := Open(0); !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("Open: %v, want ErrNoCUDA", err)
	}
	if _, err := DeviceCount(); !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("DeviceCount: %v, want ErrNoCUDA", err)
	}
	var d *Device
	if _, err := d.AllocHost(4096); !errors.Is(err, ErrNoCUDA) {
		t.Fatalf("AllocHost: %v, want ErrNoCUDA", err)
	}
}

// listDeps returns the dependency closure of every package of the module.
func listDeps(t *testing.T, tags string) []string {
	t.Helper()
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not on PATH")
	}
	args := []string{"list", "-e", "-deps"}
	if tags != "" {
		args = append(args, "-tags", tags)
	}
	args = append(args, "github.com/flashmemory/flashmemory/...")
	cmd := exec.Command("go", args...)
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=1")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go %s: %v", strings.Join(args, " "), err)
	}
	return strings.Fields(string(out))
}

func hasPrefix(list []string, prefix string) bool {
	for _, p := range list {
		if p == prefix || strings.HasPrefix(p, prefix+"/") {
			return true
		}
	}
	return false
}

// The architecture's invariant: only cuda-tagged builds link gorgonia.org/cu (whose init
// calls cuInit and exits the process when it fails).
func TestDefaultBuildDoesNotImportCu(t *testing.T) {
	if deps := listDeps(t, ""); hasPrefix(deps, "gorgonia.org/cu") {
		t.Fatal("the default build imports gorgonia.org/cu")
	}
	// The same listing with the tag must find it, or the check above proves nothing.
	if deps := listDeps(t, "cuda"); !hasPrefix(deps, "gorgonia.org/cu") {
		t.Fatal("the cuda build does not import gorgonia.org/cu: the check is vacuous")
	}
}
