package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/forgeci/forge/internal/sqldb"
)

// newMigrateCmd returns `forge migrate up|down|status`.
func newMigrateCmd() *cobra.Command {
	var configPath, dataDir, dbURL string
	cmd := &cobra.Command{
		Use:   "migrate up|down|status",
		Short: "Migrate the server's database: apply pending migrations, roll back one, or list them",
		Long: `forge migrate changes the schema of forge server's database, separately from
starting the server. The server creates the schema of a new database itself,
but refuses to start on one with pending migrations unless FORGE_MIGRATE=auto:
upgrading a shared database is a step an operator takes.

  forge migrate up       apply every pending migration
  forge migrate down     roll back the latest applied migration
  forge migrate status   list the migrations and whether each is applied

It finds the database exactly as forge server does, from the same
--config file, FORGE_* variables and flags (flags win): PostgreSQL when
database_url (--database-url, FORGE_DATABASE_URL) is a postgres:// URL,
otherwise SQLite in DATA/forge.db, where DATA is data (--data, FORGE_DATA),
else ./forge-data.

"up" and "down" hold a lock (a PostgreSQL advisory lock, or a file lock
beside the SQLite database): a second forge migrate waits for the first,
then finds nothing left to do.

Rolling upgrades: migrations only add to the schema (tables, nullable or
defaulted columns, indexes), and "up" records each one it applies in the
table forge_migrations. The previous forge release keeps running on the new
schema: its server starts, and its /readyz stays 200, on a newer schema
whose migrations are all recorded as additive. A migration that cannot be
additive is marked breaking; then older servers refuse the schema, saying
so, and every replica must be upgraded together. Only a forge that knows a
migration rolls it back ("down").`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageError{fmt.Errorf("migrate needs a subcommand: up, down or status (see forge migrate --help)")}
		},
	}
	cmd.PersistentFlags().StringVar(&configPath, "config", "", "the server's YAML configuration file, for its data and database_url")
	cmd.PersistentFlags().StringVar(&dataDir, "data", "", "data directory holding forge.db (default $FORGE_DATA, else ./forge-data)")
	cmd.PersistentFlags().StringVar(&dbURL, "database-url", "", "PostgreSQL URL postgres://USER:PASSWORD@HOST/DB (default $FORGE_DATABASE_URL; empty: SQLite in the data directory)")

	// open resolves the database as forge server does (config file, then
	// FORGE_* variables, then flags) and opens it.
	open := func(ctx context.Context) (*sqldb.DB, error) {
		c, err := loadServerConfig(configPath, os.Getenv)
		if err != nil {
			return nil, err
		}
		if dataDir != "" {
			c.Data = dataDir
		}
		if dbURL != "" {
			c.DatabaseURL = dbURL
		}
		if err := c.validate(); err != nil {
			return nil, err
		}
		return sqldb.Open(ctx, sqldb.Config{DataDir: c.Data, URL: c.DatabaseURL})
	}
	migrate := func(direction string) func(*cobra.Command, []string) error {
		return func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			db, err := open(ctx)
			if err != nil {
				return err
			}
			defer db.Close()
			done, err := db.Migrate(ctx, direction)
			out := cmd.OutOrStdout()
			st, serr := db.SchemaStatus(ctx)
			names := map[int64]string{}
			for _, m := range st.Migrations {
				names[m.Version] = m.Name
			}
			verb := "applied"
			if direction == "down" {
				verb = "rolled back"
			}
			for _, v := range done {
				fmt.Fprintf(out, "%s %s\n", verb, migrationName(v, names[v]))
			}
			if err != nil {
				return schemaAdvice(err)
			}
			if serr != nil {
				return serr
			}
			switch {
			case len(done) == 0 && direction == "up" && len(st.Unknown) > 0:
				fmt.Fprintf(out, "nothing to migrate: the schema is at version %d, newer than this forge knows (%d), and its newer migrations are additive (%s)\n", st.Current, st.Latest, db)
			case len(done) == 0 && direction == "up":
				fmt.Fprintf(out, "nothing to migrate: the schema is at version %d, the latest (%s)\n", st.Current, db)
			case len(done) == 0:
				fmt.Fprintf(out, "nothing to roll back: no migration is applied (%s)\n", db)
			default:
				fmt.Fprintf(out, "the schema is at version %d of %d (%s)\n", st.Current, st.Latest, db)
			}
			return nil
		}
	}
	cmd.AddCommand(
		&cobra.Command{
			Use:   "up",
			Short: "Apply every pending migration",
			Args:  cobra.NoArgs,
			RunE:  migrate("up"),
		},
		&cobra.Command{
			Use:   "down",
			Short: "Roll back the latest applied migration",
			Args:  cobra.NoArgs,
			RunE:  migrate("down"),
		},
		&cobra.Command{
			Use:   "status",
			Short: "List the migrations and whether each is applied",
			Args:  cobra.NoArgs,
			RunE: func(cmd *cobra.Command, _ []string) error {
				ctx := cmd.Context()
				db, err := open(ctx)
				if err != nil {
					return err
				}
				defer db.Close()
				st, err := db.SchemaStatus(ctx)
				if err != nil {
					return err
				}
				printStatus(cmd.OutOrStdout(), db.String(), st)
				return nil
			},
		},
	)
	return cmd
}

// migrationName is a migration's file name, or a note that this forge
// does not know it.
func migrationName(version int64, name string) string {
	if name == "" {
		return fmt.Sprintf("version %d (unknown to this forge)", version)
	}
	return name
}

// printStatus writes the table of forge migrate status.
func printStatus(w io.Writer, where string, st sqldb.Status) {
	fmt.Fprintln(w, where)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tMIGRATION\tAPPLIED")
	for _, m := range st.Migrations {
		applied := "pending"
		switch {
		case m.Applied && !m.AppliedAt.IsZero():
			applied = m.AppliedAt.UTC().Format(time.DateTime) + " UTC"
		case m.Applied:
			applied = "yes"
		}
		name := migrationName(m.Version, m.Name)
		switch {
		case m.Breaking:
			name += " (breaking)"
		case m.Name == "" && !m.Recorded:
			name += " (not recorded as additive)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", m.Version, name, applied)
	}
	tw.Flush()
	switch {
	case len(st.Unknown) > 0 && st.Compatible:
		fmt.Fprintf(w, "the schema is at version %d, newer than this forge knows (%d); the newer migrations are additive, so this forge runs on it\n", st.Current, st.Latest)
	case len(st.Unknown) > 0:
		fmt.Fprintf(w, "the schema is at version %d, newer than this forge knows (%d), and not compatible with it: use a newer forge\n", st.Current, st.Latest)
	case len(st.Pending) > 0:
		fmt.Fprintf(w, "the schema is at version %d of %d: %d pending; run forge migrate up\n", st.Current, st.Latest, len(st.Pending))
	default:
		fmt.Fprintf(w, "the schema is up to date (version %d)\n", st.Current)
	}
}
