// Package ctl is flashmemctl, the operator's and tester's command line for
// flashmemd: status, sessions, inspect, evict, and demo (a synthetic decoder
// that drives a long session through the real socket). Everything talks to
// the daemon through package proto, as any decoder would.
package ctl
