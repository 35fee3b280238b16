// Package moby holds what the container backends (internal/backend/docker
// and internal/backend/swarm) both do with a Docker engine, so that each
// piece has one home: how an engine's errors map to forge's codes, and the
// forgexec volume both backends mount into jobs. It is an adapter-level
// library: only those backends (and cmd/forge) import it, and it imports
// only the domain and the shared libraries.
package moby

import (
	"context"
	"errors"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/forgeci/forge"
)

// EngineError wraps an engine error with the code that fits it.
func EngineError(err error, msg string) error {
	switch {
	case cerrdefs.IsNotFound(err):
		return forge.WrapError(forge.ENOTFOUND, err, msg)
	case cerrdefs.IsInvalidArgument(err), cerrdefs.IsConflict(err):
		return forge.WrapError(forge.EINVALID, err, msg)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return forge.WrapError(forge.ECANCELED, err, msg)
	}
	return forge.WrapError(forge.EUNAVAILABLE, err, msg)
}
