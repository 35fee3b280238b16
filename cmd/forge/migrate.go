package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
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
starting the server (which refuses to start on a schema it does not expect,
unless FORGE_MIGRATE=auto).

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
then finds nothing left to do. Migrations only add to the schema, so the
previous forge release keeps running on the new schema.`,
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
		c := defaultServerConfig()
		if configPath != "" {
			if err := loadConfigFile(configPath, &c); err != nil {
				return nil, err
			}
		}
		if err := applyEnv(&c, os.Getenv); err != nil {
			return nil, err
		}
		if dataDir != "" {
			c.Data = dataDir
		}
		if dbURL != "" {
			c.DatabaseURL = dbURL
		}
		if c.Data == "" {
			c.Data = sqldb.DefaultDataDir()
		}
		return sqldb.Open(ctx, sqldb.Config{DataDir: c.Data, URL: strings.TrimSpace(c.DatabaseURL)})
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
				return err
			}
			if serr != nil {
				return serr
			}
			switch {
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
		fmt.Fprintf(tw, "%d\t%s\t%s\n", m.Version, migrationName(m.Version, m.Name), applied)
	}
	tw.Flush()
	switch {
	case len(st.Unknown) > 0:
		fmt.Fprintf(w, "the schema is at version %d, newer than this forge knows (%d): use a newer forge\n", st.Current, st.Latest)
	case len(st.Pending) > 0:
		fmt.Fprintf(w, "the schema is at version %d of %d: %d pending; run forge migrate up\n", st.Current, st.Latest, len(st.Pending))
	default:
		fmt.Fprintf(w, "the schema is up to date (version %d)\n", st.Current)
	}
}
