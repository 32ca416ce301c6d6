package gpu

import (
	"errors"

	"github.com/flashmemory/flashmemory/internal/cuda"
)

// ErrNoCUDA is cuda.ErrNoCUDA: the build has no CUDA or the machine no device.
var ErrNoCUDA = cuda.ErrNoCUDA

// ErrShape is returned for queries or keys the kernel cannot take: head dim other than 128,
// heads not a multiple of 8, mismatched batches, output slices of the wrong length, key
// records of the wrong size.
var ErrShape = errors.New("gpu: shape not supported")

// ErrDevice is returned when keys, scorer and stream belong to different devices.
var ErrDevice = errors.New("gpu: objects on different devices")

// ErrCapacity is returned when appending keys beyond a Keys' capacity.
var ErrCapacity = errors.New("gpu: key capacity exceeded")
