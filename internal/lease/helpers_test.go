package lease

import (
	"testing"

	"github.com/goccy/go-yaml"

	"github.com/forgeci/forge"
)

// poolsFromYAML reads a lease configuration as the server's config file
// holds it, and builds its pools.
func poolsFromYAML(t testing.TB, src string) ([]*forge.Pool, *Config) {
	t.Helper()
	var c Config
	if err := yaml.Unmarshal([]byte(src), &c); err != nil {
		t.Fatalf("yaml: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	pools, err := c.BuildPools()
	if err != nil {
		t.Fatalf("build pools: %v", err)
	}
	return pools, &c
}
