package git

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRemoveStaleLocks(t *testing.T) {
	dir := t.TempDir()
	files := map[string]bool{ // path: removed
		"acme/app.git/HEAD":                   false,
		"acme/app.git/index.lock":             true,
		"acme/app.git/refs/heads/main.lock":   true,
		"acme/app.git/refs/heads/main":        false,
		"acme/app.git/packed-refs.lock":       true,
		"other/lib.git/shallow.lock":          true,
		"other/lib.git/objects/pack/x.keep":   false,
		"other/lib.git/objects/lock-not-mine": false,
	}
	for f := range files {
		p := filepath.Join(dir, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	g, err := New(Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	n, err := g.RemoveStaleLocks()
	if err != nil || n != 4 {
		t.Fatalf("RemoveStaleLocks() = %d, %v; want 4, nil", n, err)
	}
	for f, removed := range files {
		_, err := os.Stat(filepath.Join(dir, filepath.FromSlash(f)))
		if removed != os.IsNotExist(err) {
			t.Errorf("%s: removed %v, want %v", f, os.IsNotExist(err), removed)
		}
	}

	// A data directory without mirrors yet has nothing to clean.
	g, err = New(Options{Dir: filepath.Join(dir, "missing")})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := g.RemoveStaleLocks(); n != 0 || err != nil {
		t.Errorf("without a mirror directory: got %d, %v; want 0, nil", n, err)
	}
}
