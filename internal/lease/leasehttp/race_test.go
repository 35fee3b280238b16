//go:build race

package leasehttp

// raceEnabled: the race detector slows the server several times over.
const raceEnabled = true
