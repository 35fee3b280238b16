//go:build !race

package leasehttp

const raceEnabled = false
