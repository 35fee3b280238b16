package spec

import (
	"math/rand/v2"
	"regexp"
	"testing"
)

// TestNameSyntaxMatchesRegexp: the hand-written name checks accept exactly
// what the regular expressions they replace accept.
func TestNameSyntaxMatchesRegexp(t *testing.T) {
	for _, tc := range []struct {
		name string
		got  charSyntax
		want *regexp.Regexp
	}{
		{"reName", reName, regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)},
		{"reVar", reVar, regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)},
	} {
		inputs := []string{"", "a", "_", "0", "9a", "a-b.c_d", "-a", ".a", "a\n", "a b", "é", "A_1", "x\x00"}
		rng := rand.New(rand.NewPCG(1, 2))
		const alphabet = "aZ09_.-/ \n\xff=é"
		for range 5000 {
			b := make([]byte, rng.IntN(6))
			for i := range b {
				b[i] = alphabet[rng.IntN(len(alphabet))]
			}
			inputs = append(inputs, string(b))
		}
		for _, s := range inputs {
			if g, w := tc.got.MatchString(s), tc.want.MatchString(s); g != w {
				t.Errorf("%s.MatchString(%q) = %v, the regexp says %v", tc.name, s, g, w)
			}
		}
	}
}
