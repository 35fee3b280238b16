package coverage

import (
	"math"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tt := range []struct {
		name, data string
		want       Counts
	}{
		{"go", "mode: set\nexample.com/a/a.go:3.1,5.2 3 1\nexample.com/a/a.go:6.1,7.2 1 0\n", Counts{3, 4}},
		{"go merged", "mode: count\nx.go:1.1,2.2 2 0\nx.go:3.1,4.2 2 5\nmode: count\nx.go:1.1,2.2 2 1\n", Counts{4, 4}},
		{"go spaces in path", "mode: atomic\n/w/my dir/x.go:1.1,2.2 5 0\n", Counts{0, 5}},
		{"cobertura", `<?xml version="1.0" ?><!DOCTYPE coverage SYSTEM "x.dtd"><coverage line-rate="0.5" lines-covered="87" lines-valid="100"><packages/></coverage>`, Counts{87, 100}},
		{"cobertura rate", `<coverage line-rate="0.8765"/>`, Counts{877, 1000}},
	} {
		got, err := Parse([]byte(tt.data))
		if err != nil || got != tt.want {
			t.Errorf("%s: Parse = %+v, %v; want %+v", tt.name, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", "hello", "mode: set\nx.go:1.1 zero one\n", "<report/>", `<coverage line-rate="2"/>`, "<coverage"} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse(%q): no error", bad)
		}
	}
	if p := (Counts{87, 100}).Percent(); math.Abs(p-87) > 1e-9 {
		t.Errorf("Percent = %v", p)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("mode: set\nx.go:1.1,2.2 2 1\n"))
	f.Add([]byte(`<coverage lines-covered="1" lines-valid="2"/>`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err == nil && (c.Covered < 0 || c.Covered > c.Total) {
			t.Errorf("Parse(%q) = %+v", data, c)
		}
	})
}
