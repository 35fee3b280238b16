package lease

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// TestEnvNameMatchesRegexp: EnvName, written by hand, gives what replacing
// every non-alphanumeric character by "_" with a regexp gives, for invalid
// UTF-8 too.
func TestEnvNameMatchesRegexp(t *testing.T) {
	notAlnum := regexp.MustCompile(`[^A-Za-z0-9]`)
	rng := rand.New(rand.NewPCG(3, 4))
	const alphabet = "azAZ09-._ /\xff\xc3ü✓"
	for range 5000 {
		b := make([]byte, rng.IntN(8))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		pool := string(b)
		want := "FORGE_LEASE_" + strings.ToUpper(notAlnum.ReplaceAllString(pool, "_"))
		if got := EnvName(pool); got != want {
			t.Fatalf("EnvName(%q) = %q, want %q", pool, got, want)
		}
	}
}
