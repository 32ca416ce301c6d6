package proto

import (
	"errors"
	"fmt"
	"strconv"
)

// Decoder errors. They describe what was wrong with bytes that arrived on the
// socket; CodeOf maps each to the wire code a server sends back. Every error
// returned by ReadFrame and by the Decode methods wraps one of these (or
// io.EOF for a clean close), with the offending value in the message.
var (
	// ErrBadMagic means the first four bytes of a header were not "FMEM". The
	// stream is out of sync; the connection cannot continue.
	ErrBadMagic = errors.New("proto: bad magic")
	// ErrUnsupportedVersion means the header's version is not one this build
	// speaks (or not the version negotiated by HELLO). The body was skipped,
	// so the stream is still in sync.
	ErrUnsupportedVersion = errors.New("proto: unsupported version")
	// ErrTruncated means the peer closed the stream in the middle of a frame,
	// or a body ended before all of its fields.
	ErrTruncated = errors.New("proto: truncated")
	// ErrOversize means a header announced a body longer than the reader's
	// limit. It is detected before the body is allocated; the stream cannot
	// continue because the body was not read.
	ErrOversize = errors.New("proto: frame too large")
	// ErrChecksum means the CRC32C of the body did not match the header.
	ErrChecksum = errors.New("proto: body checksum mismatch")
	// ErrUnknownOp means the header named an operation this build does not
	// know. The body was read, so the stream is still in sync.
	ErrUnknownOp = errors.New("proto: unknown op")
	// ErrBadHeader means a reserved header field or flag bit was set, or the
	// fd count disagrees with the fds that arrived.
	ErrBadHeader = errors.New("proto: bad header")
	// ErrMalformed means a body's fields are inconsistent: a count larger than
	// the bytes that follow, trailing bytes, a bad string, a limit exceeded.
	ErrMalformed = errors.New("proto: malformed body")
	// ErrClosed is returned by Client calls after Close or after the
	// connection failed.
	ErrClosed = errors.New("proto: client closed")
)

// Code is a stable numeric error code carried in error frames and in failed
// CYCLE entries. Numbers are never reused or renumbered; new codes are only
// appended. Code 0 means success and never appears in an error frame.
type Code uint32

// The error code table. docs/protocol.md repeats it for non-Go clients.
const (
	// CodeOK is success; it is only used as the status of a CYCLE result.
	CodeOK Code = 0
	// CodeBadFrame: the frame header was invalid (bad magic, reserved bits,
	// fd count mismatch). The server closes the connection after bad magic.
	CodeBadFrame Code = 1
	// CodeUnsupportedVersion: the header version is not supported, or HELLO
	// found no common version. The message names the server's range.
	CodeUnsupportedVersion Code = 2
	// CodeFrameTooLarge: the announced body length exceeds the limit. The
	// server closes the connection afterwards.
	CodeFrameTooLarge Code = 3
	// CodeUnknownOp: the op number is not known to the server.
	CodeUnknownOp Code = 4
	// CodeChecksum: the CRC32C of the body did not match the header.
	CodeChecksum Code = 5
	// CodeBadRequest: the body could not be decoded or a field is invalid.
	CodeBadRequest Code = 6
	// CodeUnknownSession: no session with that id or name exists.
	CodeUnknownSession Code = 7
	// CodeNotOwner: the session exists but belongs to another connection.
	CodeNotOwner Code = 8
	// CodeDuplicateChunk: APPEND/COMMIT named a chunk index already stored.
	CodeDuplicateChunk Code = 9
	// CodeChunkGap: APPEND/COMMIT started past the session's chunk count.
	CodeChunkGap Code = 10
	// CodePayloadSize: the payload or index-key length does not match the
	// chunk count and layout.
	CodePayloadSize Code = 11
	// CodeNoChunks: CYCLE for a session that has no chunk yet.
	CodeNoChunks Code = 12
	// CodeBadLayout: OPEN carried a layout the daemon cannot serve.
	CodeBadLayout Code = 13
	// CodeLimitExceeded: a per-connection or per-daemon limit (sessions,
	// bytes, leases, batch size) would be exceeded.
	CodeLimitExceeded Code = 14
	// CodeIntegrity: a stored page failed its checksum; it was not served.
	CodeIntegrity Code = 15
	// CodeNoSpace: the reserve (or another tier) has no free slot left.
	CodeNoSpace Code = 16
	// CodeUnknownModel: OPEN named an indexer model the daemon does not have.
	CodeUnknownModel Code = 17
	// CodeUnknownLease: RELEASE named a lease that is not held by this
	// connection.
	CodeUnknownLease Code = 18
	// CodeSessionExists: OPEN named a session that already exists.
	CodeSessionExists Code = 19
	// CodePermissionDenied: the peer's credentials do not allow the operation.
	CodePermissionDenied Code = 20
	// CodeShuttingDown: the daemon is stopping and accepts no new work.
	CodeShuttingDown Code = 21
	// CodeInternal: a daemon-side failure that is not the client's fault.
	CodeInternal Code = 22
	// CodeHandshakeRequired: an op other than HELLO or PING arrived before
	// HELLO, or HELLO arrived twice.
	CodeHandshakeRequired Code = 23
	// CodeUnavailable: the cluster cannot do it now (no quorum on this side
	// of a partition, fewer live replicas than replication_factor); retry
	// later or on another member.
	CodeUnavailable Code = 24
)

var codeNames = [...]string{
	CodeOK:                 "ok",
	CodeBadFrame:           "bad frame",
	CodeUnsupportedVersion: "unsupported version",
	CodeFrameTooLarge:      "frame too large",
	CodeUnknownOp:          "unknown op",
	CodeChecksum:           "checksum mismatch",
	CodeBadRequest:         "bad request",
	CodeUnknownSession:     "unknown session",
	CodeNotOwner:           "not owner",
	CodeDuplicateChunk:     "duplicate chunk",
	CodeChunkGap:           "chunk gap",
	CodePayloadSize:        "payload size mismatch",
	CodeNoChunks:           "no chunks yet",
	CodeBadLayout:          "bad layout",
	CodeLimitExceeded:      "limit exceeded",
	CodeIntegrity:          "integrity error",
	CodeNoSpace:            "no space",
	CodeUnknownModel:       "unknown model",
	CodeUnknownLease:       "unknown lease",
	CodeSessionExists:      "session exists",
	CodePermissionDenied:   "permission denied",
	CodeShuttingDown:       "shutting down",
	CodeInternal:           "internal error",
	CodeHandshakeRequired:  "handshake required",
	CodeUnavailable:        "cluster unavailable",
}

// String returns the code's name, or "code N" for a code this build does not
// know (a newer server may send one; treat it like CodeInternal).
func (c Code) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "code " + strconv.FormatUint(uint64(c), 10)
}

// Known reports whether this build has a name for c.
func (c Code) Known() bool { return int(c) < len(codeNames) }

// Errorf returns an *Error with code c and a formatted message.
func (c Code) Errorf(format string, args ...any) *Error {
	return &Error{Code: c, Msg: fmt.Sprintf(format, args...)}
}

// Error is an error reported by the peer in an error frame (or a failed CYCLE
// entry), or built by a server to send one. Two *Error values match under
// errors.Is when their codes are equal, so
//
//	errors.Is(err, &proto.Error{Code: proto.CodeUnknownSession})
//
// tests the code regardless of the message.
type Error struct {
	Code Code
	Msg  string
}

// Error implements error.
func (e *Error) Error() string {
	if e.Msg == "" {
		return "flashmem: " + e.Code.String()
	}
	return "flashmem: " + e.Code.String() + ": " + e.Msg
}

// Is matches another *Error with the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Code == e.Code
}

// CodeOf returns the wire code for err: the code of the first *Error in its
// chain, the code that corresponds to one of the decoder sentinels, or
// CodeInternal for anything else. CodeOf(nil) is CodeOK.
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe.Code
	}
	switch {
	case errors.Is(err, ErrMalformed):
		// Checked first: a body that ends early wraps both ErrMalformed and
		// ErrTruncated, and it is the request that is bad, not the frame.
		return CodeBadRequest
	case errors.Is(err, ErrBadMagic), errors.Is(err, ErrBadHeader), errors.Is(err, ErrTruncated):
		return CodeBadFrame
	case errors.Is(err, ErrUnsupportedVersion):
		return CodeUnsupportedVersion
	case errors.Is(err, ErrOversize):
		return CodeFrameTooLarge
	case errors.Is(err, ErrChecksum):
		return CodeChecksum
	case errors.Is(err, ErrUnknownOp):
		return CodeUnknownOp
	}
	return CodeInternal
}

// AsError converts err into an *Error suitable for an error frame: an *Error
// in the chain is returned as is, anything else gets CodeOf(err) and the
// error's text as message (truncated to MaxErrorMsg bytes).
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var pe *Error
	if errors.As(err, &pe) {
		return pe
	}
	return &Error{Code: CodeOf(err), Msg: clipMsg(err.Error())}
}

// Fatal reports whether a ReadFrame error leaves the stream out of sync, so
// the connection must be closed (after an optional error frame). Errors for
// which Fatal is false were detected after the whole frame was consumed; the
// reader may answer with an error frame and keep reading.
func Fatal(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrChecksum), errors.Is(err, ErrUnknownOp),
		errors.Is(err, ErrUnsupportedVersion), errors.Is(err, ErrBadHeader):
		return false
	}
	return true
}
