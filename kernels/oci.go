package kernels

import (
	"context"
	"errors"
)

// getOCI fetches a kernel from an OCI repository (phase 2).
func (c *Cache) getOCI(ctx context.Context, s spec) (*Kernel, error) {
	return nil, errors.New("OCI kernels are not supported yet")
}
