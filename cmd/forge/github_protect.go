package main

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/github"
	"github.com/forgeci/forge/internal/spec"
	"github.com/forgeci/forge/internal/trigger"
)

func newGitHubCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "github",
		Short: "Set up a GitHub repository for forge",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newGitHubProtectCmd())
	return cmd
}

func newGitHubProtectCmd() *cobra.Command {
	var (
		apply            bool
		config           string
		main, production string
	)
	cmd := &cobra.Command{
		Use:   "protect OWNER/REPO",
		Short: "Print (or, with --apply, set) the status checks branch protection should require",
		Long: `forge github protect reads the repository's .forge.yml on GitHub, works out the
commit status contexts forge reports for pull requests into the main branch
(the repository's default branch) and into the production branch
(forge/JOB for each job), and prints what each branch's protection would
require. With --apply it sets them: other required checks and every other
protection setting are kept; a branch without protection gets one that
requires these checks and an up-to-date branch.

It authenticates like forge server: FORGE_GITHUB_APP_ID and
FORGE_GITHUB_APP_KEY (a GitHub App installed on the repository, with
Administration: write to apply), or FORGE_GITHUB_TOKEN; FORGE_GITHUB_API_URL
for GitHub Enterprise. --config reads them from forge server's configuration
file instead.`,
		Example: `  forge github protect acme/app
  FORGE_GITHUB_TOKEN=ghp_... forge github protect acme/app --apply`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			owner, name, ok := strings.Cut(args[0], "/")
			if !ok || owner == "" || name == "" || strings.Contains(name, "/") {
				return usageError{fmt.Errorf("%q is not OWNER/REPO", args[0])}
			}
			c := defaultServerConfig()
			if config != "" {
				if err := loadConfigFile(config, &c); err != nil {
					return err
				}
			}
			if err := applyEnv(&c, os.Getenv); err != nil {
				return err
			}
			if errs := c.validateGitHub(); len(errs) > 0 {
				return forge.Errorf(forge.EINVALID, "config: %s", strings.Join(errs, "; "))
			}
			if production == "" {
				production = c.Builds.ProductionBranch
			}
			if main == "" {
				main = c.GitHub.MainBranch
			}
			client, err := c.githubClient()
			if err != nil {
				return err
			}
			if client == nil {
				return forge.Errorf(forge.EINVALID, "no GitHub credentials: set FORGE_GITHUB_TOKEN, or FORGE_GITHUB_APP_ID and FORGE_GITHUB_APP_KEY")
			}
			return protect(cmd, client, owner, name, main, production, apply)
		},
	}
	fl := cmd.Flags()
	fl.BoolVar(&apply, "apply", false, "set the required checks (default: only print them)")
	fl.StringVar(&config, "config", "", "forge server's YAML configuration file (github: and builds: sections)")
	fl.StringVar(&main, "main", "", "the main branch (default: the repository's default branch)")
	fl.StringVar(&production, "production", "", `the production branch (default "production")`)
	return cmd
}

// protect prints, and with apply sets, the required contexts of the
// main and production branches of owner/name.
func protect(cmd *cobra.Command, client *github.Client, owner, name, main, production string, apply bool) error {
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	if main == "" {
		var err error
		if main, err = client.DefaultBranch(ctx, owner, name); err != nil {
			return err
		}
	}
	branches := []string{main}
	if production != "" && production != main {
		branches = append(branches, production)
	}
	for _, branch := range branches {
		// The spec of the branch itself, or main's when it has none yet.
		data, err := client.File(ctx, owner, name, branch, trigger.DefaultSpecFile)
		if forge.ErrorCode(err) == forge.ENOTFOUND && branch != main {
			data, err = client.File(ctx, owner, name, main, trigger.DefaultSpecFile)
		}
		if err != nil {
			return err
		}
		contexts, err := requiredContexts(data, branch)
		if err != nil {
			return err
		}
		plan, err := client.PlanContexts(ctx, owner, name, branch, contexts)
		if err != nil {
			return err
		}
		printProtection(out, owner+"/"+name, plan, apply)
		if apply {
			if err := client.RequireContexts(ctx, owner, name, plan); err != nil {
				return err
			}
		}
	}
	if !apply {
		fmt.Fprintln(out, "\nNothing was changed: run again with --apply to set these.")
	}
	return nil
}

// requiredContexts are the status contexts forge reports for a pull
// request into branch, by the spec data.
func requiredContexts(data []byte, branch string) ([]string, error) {
	f, err := spec.Parse(trigger.DefaultSpecFile, data)
	if err != nil {
		return nil, forge.Errorf(forge.EINVALID, "the spec on %s is not valid:\n%s", branch, strings.TrimRight(spec.Report(err), "\n"))
	}
	actions := []string{spec.DefaultAction}
	if f.HasOn() {
		actions = f.ActionsFor(&forge.Hook{Event: "pull_request", Action: "opened", Target: branch, Branch: "pull-request"})
	}
	var out []string
	for _, a := range actions {
		plan, err := spec.Compile(f, spec.Options{Action: a, Event: "pull_request", Branch: branch})
		if err != nil {
			return nil, forge.Errorf(forge.EINVALID, "action %s of the spec on %s:\n%s", a, branch, strings.TrimRight(spec.Report(err), "\n"))
		}
		for _, j := range plan.Jobs {
			out = append(out, github.Context(a, j.Name))
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

func printProtection(w io.Writer, repo string, p *github.Protection, apply bool) {
	verb := "would require"
	if apply {
		verb = "now requires"
	}
	state := "protected"
	if p.Created {
		state = "not protected yet"
	}
	fmt.Fprintf(w, "%s branch %s (%s) %s:\n", repo, p.Branch, state, verb)
	for _, c := range p.After {
		mark := "  "
		if !slices.Contains(p.Before, c) {
			mark = "+ "
		}
		fmt.Fprintf(w, "  %s%s\n", mark, c)
	}
	for _, c := range p.Before {
		if !slices.Contains(p.After, c) {
			fmt.Fprintf(w, "  - %s\n", c)
		}
	}
}
