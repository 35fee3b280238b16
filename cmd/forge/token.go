package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/forgeci/forge"
	httpapi "github.com/forgeci/forge/internal/http"
	"github.com/forgeci/forge/internal/sqldb"
)

func newTokenCmd() *cobra.Command {
	var data, config string
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Create, list and delete API tokens",
		Long: `API tokens authenticate REST requests: Authorization: Bearer TOKEN.
Only a SHA-256 hash of each token is stored: the token itself is printed once,
when it is created. The database is found as forge server finds it: the
--config file's data and database_url, then FORGE_DATA and
FORGE_DATABASE_URL, then --data.`,
	}
	cmd.PersistentFlags().StringVar(&data, "data", "", "data directory (default $FORGE_DATA or ./forge-data)")
	cmd.PersistentFlags().StringVar(&config, "config", "", "the server's YAML configuration file")
	open := func(cmd *cobra.Command) (*sqldb.DB, error) {
		c, err := loadServerConfig(config, os.Getenv)
		if err != nil {
			return nil, err
		}
		if data != "" {
			c.Data = data
		}
		if err := c.validate(); err != nil {
			return nil, err
		}
		db, err := sqldb.Open(cmd.Context(), sqldb.Config{DataDir: c.Data, URL: c.DatabaseURL})
		if err != nil {
			return nil, err
		}
		if err := db.CheckSchema(cmd.Context()); err != nil {
			db.Close()
			return nil, schemaAdvice(err)
		}
		return db, nil
	}

	var name string
	var admin bool
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a token and print it (once)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if name == "" {
				return usageError{fmt.Errorf("--name must not be empty")}
			}
			db, err := open(cmd)
			if err != nil {
				return err
			}
			defer db.Close()
			secret, err := newTokenSecret()
			if err != nil {
				return err
			}
			t := &forge.Token{Name: name, Admin: admin, Hash: httpapi.HashToken(secret)}
			if err := db.CreateToken(cmd.Context(), t); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), secret)
			kind := "token"
			if admin {
				kind = "admin token"
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "created %s %d %q; it is shown only now\n", kind, t.ID, t.Name)
			return nil
		},
	}
	create.Flags().StringVar(&name, "name", "api", "what the token is for")
	create.Flags().BoolVar(&admin, "admin", false, "allow admin requests (lease pools, force-releases)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			db, err := open(cmd)
			if err != nil {
				return err
			}
			defer db.Close()
			tokens, err := db.ListTokens(cmd.Context())
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tNAME\tADMIN\tCREATED")
			for _, t := range tokens {
				fmt.Fprintf(w, "%d\t%s\t%v\t%s\n", t.ID, t.Name, t.Admin, t.Created.Format("2006-01-02 15:04"))
			}
			return w.Flush()
		},
	}

	del := &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a token: requests with it fail from now on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := strconv.ParseInt(args[0], 10, 64)
			if err != nil {
				return usageError{fmt.Errorf("token id %q is not a number", args[0])}
			}
			db, err := open(cmd)
			if err != nil {
				return err
			}
			defer db.Close()
			return db.DeleteToken(cmd.Context(), id)
		},
	}
	cmd.AddCommand(create, list, del)
	return cmd
}

// newTokenSecret returns a new random token: "forge_" and 32 random bytes.
func newTokenSecret() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("token: %w", err)
	}
	return "forge_" + base64.RawURLEncoding.EncodeToString(b), nil
}
