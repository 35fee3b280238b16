package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDeployConfigLoads: the example configuration is valid, and its
// comments tell the truth: a value whose comment says "default X" differs
// from the default X, which is the code's, and every other value is the
// default.
func TestDeployConfigLoads(t *testing.T) {
	c := defaultServerConfig()
	if err := loadConfigFile("../../deploy/config.yml", &c); err != nil {
		t.Fatal(err)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if c.Builds.Concurrency != 4 || c.Builds.PerRepo != 2 || time.Duration(c.Grace) != 5*time.Minute || len(c.Pools) != 1 || c.Data != "/var/lib/forge" {
		t.Errorf("config = %+v", c)
	}
	raw, err := os.ReadFile("../../deploy/config.yml")
	if err != nil {
		t.Fatal(err)
	}
	base := defaultServerConfig()
	changed := map[string]bool{}
	for _, l := range changedLeaves(&base, &c) {
		changed[l.key] = true
	}
	said := map[string]bool{}
	var section string
	for _, line := range strings.Split(string(raw), "\n") {
		code, comment, _ := strings.Cut(line, "#")
		key, _, ok := strings.Cut(strings.TrimSpace(code), ":")
		if !ok || strings.TrimSpace(code) == "" {
			continue
		}
		if !strings.HasPrefix(code, " ") {
			section = key
		} else if section != "" {
			key = section + "." + key
		}
		if strings.Contains(comment, "default") {
			said[key] = true
			if !changed[key] && key != "pools" && key != "secrets" {
				t.Errorf("deploy/config.yml: %s has a comment about its default, but its value is the default", key)
			}
		}
	}
	for key := range changed {
		if !said[key] && key != "secrets" {
			t.Errorf("deploy/config.yml sets %s to other than its default without a comment saying so", key)
		}
	}
}

func TestConfigErrorsNameTheProblem(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown key", "adr: :80\n", "adr"},
		{"unknown nested key", "builds:\n  concurency: 3\n", "concurency"},
		{"bad duration", "grace: soon\n", "not a duration"},
		{"bad type", "builds:\n  concurrency: many\n", "concurrency"},
		{"bad level", "log: {level: loud}\n", "log.level"},
		{"bad public url", "public_url: ci.example.com\n", "public_url"},
		{"bad pool", "pools:\n  ports:\n    range: 9-1\n", "ports"},
		{"bad secrets key", "secrets:\n  app: {A: b}\n", "owner/repo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.yml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			c := defaultServerConfig()
			c.Data = "d"
			err := loadConfigFile(path, &c)
			if err == nil {
				err = c.validate()
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one naming %q", err, tt.want)
			}
		})
	}
}

func TestConfigPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.yml")
	if err := os.WriteFile(path, []byte("addr: :1111\ndata: /from/file\nbuilds: {concurrency: 3}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"FORGE_ADDR": ":2222", "FORGE_BUILDS_CONCURRENCY": "5", "FORGE_GITHUB_WEBHOOK_SECRET": "s3"}
	cmd := newServerCmd()
	if err := cmd.Flags().Parse([]string{"--addr", ":3333"}); err != nil {
		t.Fatal(err)
	}
	m := &serverMain{}
	f := &serverFlags{config: path, addr: ":3333"}
	if err := m.ParseFlags(cmd, f, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	c := m.Config
	if c.Addr != ":3333" || c.Data != "/from/file" || c.Builds.Concurrency != 5 || c.GitHub.WebhookSecret != "s3" {
		t.Errorf("addr %q (want flag :3333), data %q (want file), concurrency %d (want env 5), secret %q (want env)", c.Addr, c.Data, c.Builds.Concurrency, c.GitHub.WebhookSecret)
	}
	env["FORGE_BUILDS_CONCURRENCY"] = "lots"
	if err := m.ParseFlags(cmd, f, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "FORGE_BUILDS_CONCURRENCY") {
		t.Errorf("bad env value: %v, want an error naming it", err)
	}
}

func TestSecretsForRepo(t *testing.T) {
	c := defaultServerConfig()
	c.Secrets = map[string]map[string]string{"*": {"A": "all", "B": "all"}, "acme/app": {"B": "app"}}
	got := c.secretsFor("acme/app")
	if got["A"] != "all" || got["B"] != "app" || len(got) != 2 {
		t.Errorf("secretsFor(acme/app) = %v", got)
	}
	if got := c.secretsFor("other/x"); got["B"] != "all" {
		t.Errorf("secretsFor(other/x) = %v", got)
	}
}

// TestGitOrigin: repositories are cloned from, and the token goes to,
// github.com for the public API and the API's own host for GitHub
// Enterprise; FORGE_GIT_ALLOW_FILE turns on local repositories.
func TestGitOrigin(t *testing.T) {
	for _, tt := range []struct{ api, want, err string }{
		{"", "https://github.com", ""},
		{"https://api.github.com", "https://github.com", ""},
		{"https://ghe.example.com/api/v3", "https://ghe.example.com", ""},
		{"http://127.0.0.1:8089/api/v3", "http://127.0.0.1:8089", ""},
		{"ftp://x", "", "github.api_url"},
		{"ghe.example.com", "", "github.api_url"},
	} {
		c := defaultServerConfig()
		c.GitHub.APIURL = tt.api
		got, err := c.gitOrigin()
		if got != tt.want || (err == nil) != (tt.err == "") || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("gitOrigin(%q) = %q, %v; want %q, error %q", tt.api, got, err, tt.want, tt.err)
		}
	}
	c := defaultServerConfig()
	env := map[string]string{"FORGE_GIT_ALLOW_FILE": "true", "FORGE_GITHUB_API_URL": "https://ghe.example.com/api/v3"}
	if err := applyEnv(&c, func(k string) string { return env[k] }); err != nil || !c.Git.AllowFile || c.GitHub.APIURL != env["FORGE_GITHUB_API_URL"] {
		t.Errorf("applyEnv: %v, allow_file %v, api_url %q", err, c.Git.AllowFile, c.GitHub.APIURL)
	}
	env["FORGE_GIT_ALLOW_FILE"] = "sometimes"
	if err := applyEnv(&c, func(k string) string { return env[k] }); err == nil || !strings.Contains(err.Error(), "FORGE_GIT_ALLOW_FILE") {
		t.Errorf("applyEnv with a bad boolean: %v, want an error naming it", err)
	}
}
