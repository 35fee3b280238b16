package docker

import (
	"context"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/moby"
)

// LabelExec labels the volumes that hold a forgexec binary, with its
// digest.
const LabelExec = moby.LabelExec

// execVolume returns the volume holding the forgexec binary, filling it
// the first time (moby.FillExecVolume: named after the binary's content,
// shared with every server and the swarm backend, complete once its
// marker exists).
func (b *Backend) execVolume(ctx context.Context, image string) (string, error) {
	b.execMu.Lock()
	defer b.execMu.Unlock()
	if b.execSum == "" {
		sum, err := moby.FileDigest(b.opts.Forgexec)
		if err != nil {
			return "", forge.WrapError(forge.EINTERNAL, err, "cannot read the forgexec binary "+b.opts.Forgexec)
		}
		b.execSum = sum
	}
	name := moby.ExecVolumeName(b.execSum)
	if b.execReady[name] {
		return name, nil
	}
	name, err := moby.FillExecVolume(ctx, b.cli, b.opts.Forgexec, b.execSum, image,
		map[string]string{LabelScope: b.opts.Scope, LabelRole: "exec-fill"})
	if err != nil {
		return "", err
	}
	b.execReady[name] = true
	return name, nil
}

// forgetExec makes the next job check the forgexec volume again.
func (b *Backend) forgetExec() {
	b.execMu.Lock()
	clear(b.execReady)
	b.execMu.Unlock()
}
