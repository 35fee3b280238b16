package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/spec"
)

func newLintCmd() *cobra.Command {
	var schema bool
	cmd := &cobra.Command{
		Use:   "lint [FILE...]",
		Short: "Check build specs and show what is wrong, with positions",
		Long: `Lint checks each FILE (default .forge.yml; - reads standard input) the
way forge exec and forge server read it: the YAML, every key and value, the
needs of every job, the on: section, and that each action compiles.

Each problem is printed to standard output as FILE:LINE:COL: message,
followed by the offending line and a caret under the column. Valid files
print nothing.

Exit status: 0 when every file is valid, 1 when any has a problem, 2 when
a file cannot be read.

--schema prints the JSON Schema of the format (docs/forge.schema.json), for
editors, instead.`,
		Example: `  forge lint
  forge lint examples/*.yml
  git show HEAD:.forge.yml | forge lint -
  forge lint --schema > forge.schema.json`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if schema {
				if len(args) > 0 {
					return usageError{fmt.Errorf("--schema takes no files")}
				}
				_, err := cmd.OutOrStdout().Write(spec.Schema)
				return err
			}
			if len(args) == 0 {
				args = []string{".forge.yml"}
			}
			return lintFiles(cmd.InOrStdin(), cmd.OutOrStdout(), cmd.ErrOrStderr(), args)
		},
	}
	cmd.Flags().BoolVar(&schema, "schema", false, "print the JSON Schema of the spec format and exit")
	return cmd
}

// lintFiles lints each file, printing problems to stdout and read errors
// to stderr, and returns the exit status as an error.
func lintFiles(stdin io.Reader, stdout, stderr io.Writer, paths []string) error {
	unreadable, invalid := 0, 0
	for _, path := range paths {
		err := lintFile(stdin, path)
		var errs *spec.Errors
		switch {
		case err == nil:
		case errors.As(err, &errs):
			invalid++
			fmt.Fprint(stdout, errs.Report())
		default:
			unreadable++
			fmt.Fprintf(stderr, "forge: %s\n", forge.ErrorMessage(err))
		}
	}
	switch {
	case unreadable > 0:
		return exitWith(exitUsage, "")
	case invalid > 0:
		return exitWith(exitFailed, "")
	}
	return nil
}

// lintFile parses the file and compiles each of its actions.
func lintFile(stdin io.Reader, path string) error {
	var f *spec.File
	var err error
	if path == "-" {
		data, rerr := io.ReadAll(io.LimitReader(stdin, 1<<20+1))
		if rerr != nil {
			return forge.WrapError(forge.EINVALID, rerr, "cannot read standard input")
		}
		f, err = spec.Parse("<stdin>", data)
	} else {
		f, err = spec.Load(path)
	}
	if err != nil {
		return err
	}
	for _, a := range f.Actions() {
		if _, err := spec.Compile(f, spec.Options{Action: a}); err != nil {
			return err
		}
	}
	return nil
}
