package main

import (
	"os"

	"github.com/spf13/cobra"

	"github.com/forgeci/forge/internal/guard"
)

// guardCommand is the hidden command a guard process runs (see package
// guard).
const guardCommand = "__guard"

// newGuard returns a guard that re-executes this very binary: through
// /proc/self/exe, so that an upgrade replacing the file on disk while forge
// runs does not matter.
func newGuard() *guard.Guard {
	self := "/proc/self/exe"
	if _, err := os.Stat(self); err != nil {
		if self, err = os.Executable(); err != nil {
			self = os.Args[0]
		}
	}
	return guard.New(self, guardCommand)
}

func newGuardCmd() *cobra.Command {
	return &cobra.Command{
		Use:    guardCommand,
		Short:  "Stop the process groups forge asks for once forge is gone (internal)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return guard.Main(cmd.InOrStdin())
		},
	}
}
