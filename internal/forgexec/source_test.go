package forgexec

import (
	"archive/tar"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestFetchSource(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/source/right" {
			http.Error(w, "no such workspace", http.StatusNotFound)
			return
		}
		tw := tar.NewWriter(w)
		tw.WriteHeader(&tar.Header{Name: "src/", Mode: 0o755, Typeflag: tar.TypeDir})
		data := []byte("package main\n")
		tw.WriteHeader(&tar.Header{Name: "src/main.go", Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg})
		tw.Write(data)
		tw.Close()
	}))
	defer srv.Close()
	pin := CertPin(srv.Certificate().Raw)
	ctx := context.Background()

	dir := filepath.Join(t.TempDir(), "workspace")
	if err := FetchSource(ctx, &Source{URL: srv.URL + "/source/right", CertSHA256: pin}, dir); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "src", "main.go")); err != nil || string(b) != "package main\n" {
		t.Errorf("src/main.go = %q, %v", b, err)
	}

	tests := []struct {
		name string
		src  Source
		want string
	}{
		{"unknown workspace", Source{URL: srv.URL + "/source/wrong", CertSHA256: pin}, "404 Not Found: no such workspace"},
		{"another certificate", Source{URL: srv.URL + "/source/right", CertSHA256: strings.Repeat("0", 64)}, "not the pinned one"},
		{"plain http", Source{URL: strings.Replace(srv.URL, "https", "http", 1) + "/source/right", CertSHA256: pin}, "not an https URL"},
		{"no pin", Source{URL: srv.URL + "/source/right"}, "no certificate pin"},
	}
	for _, tt := range tests {
		started := time.Now()
		err := FetchSource(ctx, &tt.src, t.TempDir())
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
		if took := time.Since(started); took > 5*time.Second {
			t.Errorf("%s: took %s: a server that answers is not retried", tt.name, took)
		}
	}
}
