package cuda

import "errors"

// ErrNoCUDA is returned by every call of a binary built without the `cuda` tag, and by Open
// when the build has CUDA but the machine has no usable device.
var ErrNoCUDA = errors.New("cuda: not available (built without the cuda tag or no device)")

// ErrDriver wraps every failed CUDA driver call; the message names the call, the device and
// the driver's error name.
var ErrDriver = errors.New("cuda: driver call failed")

// ErrClosed is returned by calls on a Device (or anything created from it) after Close.
var ErrClosed = errors.New("cuda: device closed")

// ErrInvalid is returned for arguments the driver would reject or misuse: negative sizes,
// misaligned copy descriptors, out-of-range ordinals, too many kernel arguments.
var ErrInvalid = errors.New("cuda: invalid argument")

// ErrUnsupported is returned when the device lacks a feature a call needs (for example
// exporting memory as a POSIX file descriptor); callers fall back (see Device.AllocShareable).
var ErrUnsupported = errors.New("cuda: not supported by this device")
