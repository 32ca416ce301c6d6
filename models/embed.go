package models

import _ "embed"

// TextModeDefault holds the bytes of textmode-default.safetensors. The slice
// is shared read-only data: textmode.Load copies what it keeps, and nothing
// may write to it.
//
//go:embed textmode-default.safetensors
var TextModeDefault []byte
