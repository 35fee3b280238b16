package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseSecret(t *testing.T) {
	tests := []struct {
		in, name, value, err string
	}{
		{"TOKEN=abc", "TOKEN", "abc", ""},
		{"T_1=a=b=c", "T_1", "a=b=c", ""},
		{"_X= spaced ", "_X", " spaced ", ""},
		{"TOKEN", "", "", "want NAME=VALUE"},
		{"1X=abc", "", "", "not a variable name"},
		{"MY-VAR=abc", "", "", "not a variable name"},
		{"EMPTY=", "", "", "is empty"},
	}
	for _, tt := range tests {
		name, value, err := parseSecret(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseSecret(%q): got error %v, want one containing %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || name != tt.name || value != tt.value {
			t.Errorf("parseSecret(%q) = %q, %q, %v; want %q, %q", tt.in, name, value, err, tt.name, tt.value)
		}
	}
}

func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("# comment\n\n  # indented comment\nA=one\r\nB=two=2\nA=uno\n"), 0o600)
	got := map[string]string{}
	if err := readSecretFile(good, got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["A"] != "uno" || got["B"] != "two=2" {
		t.Errorf("got %q, want A=uno B=two=2", got)
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("A=1x\nexport B=2\n"), 0o600)
	err := readSecretFile(bad, map[string]string{})
	if err == nil || !strings.Contains(err.Error(), bad+":2:") {
		t.Errorf("got %v, want an error at %s:2", err, bad)
	}
}
