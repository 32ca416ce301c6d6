// Package sharedtest finds the material in ../shared beside the checkout
// (golden vectors, the haystack essays) for tests, the same way in every
// package: in CI (env CI set) a missing file fails the test, elsewhere it
// skips it. FLASHMEM_SHARED overrides the directory (the GPU machine, where
// shared/ does not travel, gets a copy under .gpu/).
package sharedtest
