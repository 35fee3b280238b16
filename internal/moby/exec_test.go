package moby

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/forgexec"
)

// The marker must come after the binary in the tar: the engine unpacks in
// order, and a server that finds the marker lets jobs run the binary.
func TestBinaryArchiveWritesMarkerAfterBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(bin, []byte("binary content"), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := BinaryArchive(bin)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(r)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == forgexec.Name {
			data, _ := io.ReadAll(tr)
			if string(data) != "binary content" || h.Mode != 0o755 {
				t.Errorf("binary entry = %q mode %o, want the file's content, mode 755", data, h.Mode)
			}
		}
	}
	if len(names) != 2 || names[0] != forgexec.Name || path.Join(forgexec.BinDir, names[1]) != ExecMarker {
		t.Errorf("entries = %v, want %s then the marker %s", names, forgexec.Name, ExecMarker)
	}
}

func TestCheckStaticRefusesNonELF(t *testing.T) {
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	err := CheckStatic(script)
	if forge.ErrorCode(err) != forge.EINVALID || !strings.Contains(err.Error(), "not a Linux binary") {
		t.Errorf("CheckStatic(script) = %v, want EINVALID naming it not a Linux binary", err)
	}
}

func TestEngineErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code string
	}{
		{cerrdefs.ErrNotFound, forge.ENOTFOUND},
		{cerrdefs.ErrConflict, forge.EINVALID},
		{context.Canceled, forge.ECANCELED},
		{errors.New("connection refused"), forge.EUNAVAILABLE},
	} {
		if got := forge.ErrorCode(EngineError(tc.err, "msg")); got != tc.code {
			t.Errorf("EngineError(%v) code = %s, want %s", tc.err, got, tc.code)
		}
	}
}

func TestHeadBufferKeepsFirstBytes(t *testing.T) {
	b := NewHeadBuffer(5)
	for _, s := range []string{"abc", "defg", "hij"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v: it must take everything", s, n, err)
		}
	}
	if b.String() != "abcde" {
		t.Errorf("String() = %q, want abcde", b.String())
	}
}
