"""Errors: one exception class per wire error code (docs/protocol.md section 8).

Every error the daemon reports (an error frame, or a failed CYCLE entry) is raised as an
instance of the class for its code; all of them derive from :class:`FlashMemError` and carry
``code`` (the wire number) and ``message`` (the daemon's text, for logs only). A code this
build does not know is raised as :class:`FlashMemError` itself with that code; treat it like
``INTERNAL`` (section 7).

Failures on the client's side are not wire errors: :class:`ConnectionLost` (the socket
closed or broke; the client is unusable afterwards) and :class:`ProtocolError` (the daemon
sent bytes this client cannot parse; the connection is closed).
"""

__all__ = [
    "FlashMemError", "ConnectionLost", "ProtocolError", "error_for", "ERROR_CLASSES",
    "BadFrame", "UnsupportedVersion", "FrameTooLarge", "UnknownOp", "ChecksumMismatch",
    "BadRequest", "UnknownSession", "NotOwner", "DuplicateChunk", "ChunkGap", "PayloadSize",
    "NoChunks", "BadLayout", "LimitExceeded", "IntegrityError", "NoSpace", "UnknownModel",
    "UnknownLease", "SessionExists", "PermissionDenied", "ShuttingDown", "InternalError",
    "HandshakeRequired", "Unavailable",
]


class FlashMemError(Exception):
    """An error reported by flashmemd. ``code`` is the wire code, ``message`` its text."""

    code = None
    name = "error"

    def __init__(self, message="", code=None):
        if code is not None:
            self.code = code
        self.message = message
        label = self.name if self.code in ERROR_CLASSES else "code %s" % self.code
        super().__init__("flashmem: %s: %s" % (label, message) if message else "flashmem: " + label)


class ConnectionLost(Exception):
    """The connection to flashmemd closed or failed; open a new client."""


class ProtocolError(Exception):
    """The daemon sent a frame this client cannot parse; the connection was closed."""


def _cls(name, code, label, doc):
    return type(name, (FlashMemError,), {"code": code, "name": label, "__doc__": doc})


BadFrame = _cls("BadFrame", 1, "bad frame", "Invalid header or frame cut short (1).")
UnsupportedVersion = _cls("UnsupportedVersion", 2, "unsupported version",
                          "Header version not supported, or no common version in HELLO (2).")
FrameTooLarge = _cls("FrameTooLarge", 3, "frame too large",
                     "Body longer than the daemon's max_body; the connection is closed (3).")
UnknownOp = _cls("UnknownOp", 4, "unknown op", "Op number not known to the daemon (4).")
ChecksumMismatch = _cls("ChecksumMismatch", 5, "checksum mismatch", "Body CRC-32C mismatch (5).")
BadRequest = _cls("BadRequest", 6, "bad request", "Body malformed or a field invalid (6).")
UnknownSession = _cls("UnknownSession", 7, "unknown session", "No session with that id or name (7).")
NotOwner = _cls("NotOwner", 8, "not owner", "The session belongs to another connection (8).")
DuplicateChunk = _cls("DuplicateChunk", 9, "duplicate chunk",
                      "APPEND/COMMIT first_chunk below the session's chunk count (9).")
ChunkGap = _cls("ChunkGap", 10, "chunk gap", "APPEND/COMMIT first_chunk above the chunk count (10).")
PayloadSize = _cls("PayloadSize", 11, "payload size mismatch",
                   "Payload or index-key length does not match count and layout (11).")
NoChunks = _cls("NoChunks", 12, "no chunks yet", "CYCLE for a session without any chunk (12).")
BadLayout = _cls("BadLayout", 13, "bad layout", "OPEN layout invalid or not servable (13).")
LimitExceeded = _cls("LimitExceeded", 14, "limit exceeded",
                     "A limit (sessions, bytes, leases, batch size) would be exceeded (14).")
IntegrityError = _cls("IntegrityError", 15, "integrity error",
                      "A stored page failed its checksum and was not served (15).")
NoSpace = _cls("NoSpace", 16, "no space", "The reserve (or another tier) has no free slot (16).")
UnknownModel = _cls("UnknownModel", 17, "unknown model", "OPEN named a model the daemon lacks (17).")
UnknownLease = _cls("UnknownLease", 18, "unknown lease", "RELEASE named a lease not held here (18).")
SessionExists = _cls("SessionExists", 19, "session exists", "OPEN named an existing session (19).")
PermissionDenied = _cls("PermissionDenied", 20, "permission denied",
                        "The peer's credentials do not allow this (20).")
ShuttingDown = _cls("ShuttingDown", 21, "shutting down", "The daemon takes no new work (21).")
InternalError = _cls("InternalError", 22, "internal error", "Daemon-side failure (22).")
HandshakeRequired = _cls("HandshakeRequired", 23, "handshake required",
                         "An op other than HELLO/PING before HELLO, HELLO twice, or none in time (23).")
Unavailable = _cls("Unavailable", 24, "unavailable",
                   "The cluster cannot do it now (no quorum, too few replicas); retry later (24).")

ERROR_CLASSES = {c.code: c for c in (
    BadFrame, UnsupportedVersion, FrameTooLarge, UnknownOp, ChecksumMismatch, BadRequest,
    UnknownSession, NotOwner, DuplicateChunk, ChunkGap, PayloadSize, NoChunks, BadLayout,
    LimitExceeded, IntegrityError, NoSpace, UnknownModel, UnknownLease, SessionExists,
    PermissionDenied, ShuttingDown, InternalError, HandshakeRequired, Unavailable)}


def error_for(code, message=""):
    """Return the exception instance for a wire code (FlashMemError for unknown codes)."""
    cls = ERROR_CLASSES.get(code)
    if cls is None:
        return FlashMemError(message, code=code)
    return cls(message)
