// Package buildinfo describes the running binary for --version: the release
// version, the commit it was built from (the Go toolchain's VCS stamp, so
// -buildvcs must not be false) and whether the CUDA build tag was set.
package buildinfo
