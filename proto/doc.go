// Package proto is flashmemd's wire protocol and its Go client.
//
// A decoder talks to the daemon over a unix SOCK_STREAM socket in frames: a
// fixed 32-byte little-endian header (magic "FMEM", version, op, flags, fd
// count, body length, request id, CRC32C of the body) followed by a
// little-endian body. Memory regions — the connection's staging region and
// each session's reserve region — travel as file descriptors (SCM_RIGHTS)
// attached to the header bytes of a reply. docs/protocol.md specifies every
// byte, so that clients in other languages can be written from it alone.
//
// Three layers, for three users:
//
//   - Frames: ReadFrame, WriteFrame, ParseFrame, DecodeHeader and Conn. A
//     reader enforces its body limit from the header before allocating,
//     checks the CRC, and reports typed errors (ErrBadMagic,
//     ErrUnsupportedVersion, ErrTruncated, ErrOversize, ErrChecksum,
//     ErrUnknownOp, ErrBadHeader); Fatal says whether the stream is still in
//     sync. The daemon reads with Conn.ReadFrame and answers with Conn.Reply
//     or Conn.ReplyError from any goroutine.
//   - Bodies: one Go type per request and reply (Hello, Open, Append, Cycle,
//     ... and their replies), each a Message with AppendBinary and Decode.
//     Decode never panics on hostile bytes and checks every count against
//     the remaining length before allocating; byte slices in decoded
//     messages alias the frame body. Semantic checks that need more than the
//     bytes (Open.Validate, Layout.Validate) are separate.
//   - Client: Dial performs HELLO, maps the staging region and runs one
//     reader goroutine that matches replies to calls by request id, so one
//     Client serves many goroutines. Each op has a typed method; error frames
//     come back as *Error, whose Code is one of the stable Code constants.
//
// Typical decoder use:
//
//	c, err := proto.Dial(ctx, "/run/flashmemd/flashmemd.sock", &proto.Options{ClientName: "dec0"})
//	s, err := c.Open(ctx, &proto.Open{Model: "lsa", Layout: proto.DeepSeekV4Layout(512)})
//	reserve, err := s.Region.Map()     // caller unmaps (proto.Unmap) and closes (s.Region.Close)
//	c.WriteStaging(0, payload)          // chunk payloads, layout per Layout.PayloadOffset
//	n, err := c.Append(ctx, &proto.Append{Session: s.Session, Count: k, Length: uint64(len(payload)), Keys: keys})
//	res, err := c.Cycle(ctx, []proto.CycleEntry{{Session: s.Session, Position: pos, Queries: hidden}})
//	// read pages res[0].Pages from reserve via s.Region.Row, then:
//	c.Release(ctx, res[0].Lease)
//
// The package imports no other project package (docs/architecture.md).
package proto
