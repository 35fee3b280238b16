package leasecheck

import (
	"os"
	"strconv"
	"testing"
	"time"
)

// Seed returns the seed of a randomized test's run: FORGE_LEASE_SEED when
// set (to replay a run's choices), else a new one, which it logs with how
// to replay it.
func Seed(t testing.TB) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("FORGE_LEASE_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("FORGE_LEASE_SEED=%q: want the number a failed run logged: %v", s, err)
		}
	}
	t.Logf("seed %d (replay with FORGE_LEASE_SEED=%d go test -run '^%s$')", seed, seed, t.Name())
	return seed
}
