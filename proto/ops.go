package proto

import "strconv"

// Op identifies an operation. A reply carries the op of its request. Op
// numbers, like error codes, are never reused.
type Op uint16

// Operations. The request and reply body of each is listed; docs/protocol.md
// gives the byte layouts.
const (
	// OpHello negotiates the version: Hello → HelloReply + staging fd.
	OpHello Op = 0x0001
	// OpPing echoes its body unchanged: Ping → Ping. Allowed before HELLO.
	OpPing Op = 0x0002

	// OpOpen creates a session: Open → OpenReply + reserve region fd.
	OpOpen Op = 0x0010
	// OpResume attaches a persisted session by name: Resume → ResumeReply +
	// reserve region fd.
	OpResume Op = 0x0011
	// OpClose detaches (or deletes) a session: Close → Empty.
	OpClose Op = 0x0012
	// OpPersist flushes a session to SSD: Persist → Empty.
	OpPersist Op = 0x0013

	// OpAppend adds prefill chunks: Append → ChunksReply.
	OpAppend Op = 0x0020
	// OpCommit adds decode chunks already written into reserve tail cells:
	// Commit → ChunksReply.
	OpCommit Op = 0x0021

	// OpCycle runs one indexer cycle for each entry: Cycle → CycleReply.
	OpCycle Op = 0x0030
	// OpRelease returns cycle leases: Release → Empty.
	OpRelease Op = 0x0031

	// OpStatus reports daemon state: Empty → StatusReply (JSON).
	OpStatus Op = 0x0040
	// OpSessions lists sessions: Empty → SessionsReply (JSON).
	OpSessions Op = 0x0041
	// OpInspect describes one session: AdminTarget → InspectReply (JSON).
	OpInspect Op = 0x0042
	// OpEvict evicts a session from memory: AdminTarget → EvictReply (JSON).
	OpEvict Op = 0x0043
	// OpModels lists the indexer models with the sizes a client must send
	// and the limits in force: Empty → ModelsReply (JSON).
	OpModels Op = 0x0044
	// OpVerify reads every page of a session (live or persisted) and checks
	// its checksum: AdminTarget → VerifyReply (JSON).
	OpVerify Op = 0x0045
	// OpDelete deletes a session, live or persisted, with its pages and
	// metadata: AdminTarget → EvictReply (JSON).
	OpDelete Op = 0x0046
	// OpSave persists a named session by id or name, as PERSIST does for the
	// owning connection: AdminTarget → EvictReply (JSON; Bytes written).
	OpSave Op = 0x0047
	// OpCluster reports or changes cluster membership:
	// ClusterRequest → ClusterReply (JSON; docs/cluster.md).
	OpCluster Op = 0x0048
)

var opNames = map[Op]string{
	OpHello: "HELLO", OpPing: "PING",
	OpOpen: "OPEN", OpResume: "RESUME", OpClose: "CLOSE", OpPersist: "PERSIST",
	OpAppend: "APPEND", OpCommit: "COMMIT",
	OpCycle: "CYCLE", OpRelease: "RELEASE",
	OpStatus: "STATUS", OpSessions: "SESSIONS", OpInspect: "INSPECT", OpEvict: "EVICT",
	OpModels: "MODELS",
	OpVerify: "VERIFY", OpDelete: "DELETE", OpSave: "SAVE",
	OpCluster: "CLUSTER",
}

// Known reports whether this build knows op.
func (op Op) Known() bool { _, ok := opNames[op]; return ok }

// String returns the op's name, or "op 0xNNNN".
func (op Op) String() string {
	if s, ok := opNames[op]; ok {
		return s
	}
	return "op 0x" + strconv.FormatUint(uint64(op), 16)
}

// Message is a frame body. AppendBinary appends the encoding to b (it
// satisfies encoding.BinaryAppender); Decode parses a whole body, checking
// every count against the bytes that remain before allocating. Byte-slice
// fields of a decoded message alias the body instead of copying it.
type Message interface {
	AppendBinary(b []byte) ([]byte, error)
	Decode(body []byte) error
}

// NewRequest returns a zero request message for op, or nil for an unknown
// op. A server decodes request bodies with it.
func NewRequest(op Op) Message {
	switch op {
	case OpHello:
		return new(Hello)
	case OpPing:
		return new(Ping)
	case OpOpen:
		return new(Open)
	case OpResume:
		return new(Resume)
	case OpClose:
		return new(Close)
	case OpPersist:
		return new(Persist)
	case OpAppend:
		return new(Append)
	case OpCommit:
		return new(Commit)
	case OpCycle:
		return new(Cycle)
	case OpRelease:
		return new(Release)
	case OpStatus, OpSessions, OpModels:
		return new(Empty)
	case OpInspect, OpEvict, OpVerify, OpDelete, OpSave:
		return new(AdminTarget)
	case OpCluster:
		return new(ClusterRequest)
	}
	return nil
}

// NewReply returns a zero reply message for op, or nil for an unknown op.
func NewReply(op Op) Message {
	switch op {
	case OpHello:
		return new(HelloReply)
	case OpPing:
		return new(Ping)
	case OpOpen:
		return new(OpenReply)
	case OpResume:
		return new(ResumeReply)
	case OpClose, OpPersist, OpRelease:
		return new(Empty)
	case OpAppend, OpCommit:
		return new(ChunksReply)
	case OpCycle:
		return new(CycleReply)
	case OpStatus:
		return new(StatusReply)
	case OpSessions:
		return new(SessionsReply)
	case OpInspect:
		return new(InspectReply)
	case OpEvict, OpDelete, OpSave:
		return new(EvictReply)
	case OpModels:
		return new(ModelsReply)
	case OpVerify:
		return new(VerifyReply)
	case OpCluster:
		return new(ClusterReply)
	}
	return nil
}
