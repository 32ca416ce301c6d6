package sharedtest

import (
	"os"
	"path/filepath"
	"testing"
)

// RepoRoot is the directory holding go.mod above the test's working
// directory.
func RepoRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// Path returns shared/<rel...>, failing in CI and skipping elsewhere when
// it does not exist.
func Path(tb testing.TB, rel ...string) string {
	tb.Helper()
	dir := os.Getenv("FLASHMEM_SHARED")
	if dir == "" {
		dir = filepath.Join(RepoRoot(tb), "..", "shared")
	}
	p := filepath.Join(append([]string{dir}, rel...)...)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("shared test material missing in CI: %v", err)
		}
		tb.Skipf("shared test material missing: %v", err)
	}
	return p
}

// Golden is the reference scorer's golden vectors (LSA.md, "Test vectors").
func Golden(tb testing.TB) string {
	tb.Helper()
	return Path(tb, "testdata", "indexer_golden.safetensors")
}

// Haystack is the directory of filler essays.
func Haystack(tb testing.TB) string {
	tb.Helper()
	return Path(tb, "haystack", "paul-graham-essays")
}
