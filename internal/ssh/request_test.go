package ssh

import (
	"encoding/json"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/forgeci/forge"
)

func TestAPIPath(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{in: "/repos", want: "/api/v1/repos"},
		{in: "repos/o/r", want: "/api/v1/repos/o/r"},
		{in: "/builds?repo=o/r", want: "/api/v1/repos/o/r/builds"},
		{in: "/builds/7?repo=o/r", want: "/api/v1/repos/o/r/builds/7"},
		{in: "/builds/7/jobs/3/log?repo=o/r&follow=true", want: "/api/v1/repos/o/r/builds/7/jobs/3/log?follow=true"},
		{in: "/pools/", want: "/api/v1/pools"},
		{in: "/leases", want: "/api/v1/leases"},
		{in: "/api/v1/repos/o/r/builds?limit=5", want: "/api/v1/repos/o/r/builds?limit=5"},
		{in: "/builds", err: "builds belong to a repository"},
		{in: "/builds?repo=o", err: "want owner/repo"},
		{in: "/repos/../x", err: "no . or .."},
		{in: "//evil.example/x", err: "is not a path"},
		{in: "/a b", err: "without spaces"},
		{in: "", err: "empty"},
	}
	for _, tt := range tests {
		got, err := APIPath(tt.in)
		switch {
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("APIPath(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.err)
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("APIPath(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestParseCommand(t *testing.T) {
	r, err := ParseCommand(`STORE /builds?repo=o/r {"ref": "main", "action": "deploy"}`)
	if err != nil || r.Verb != "STORE" || r.Resource != "/builds?repo=o/r" || string(r.Body) != `{"ref": "main", "action": "deploy"}` {
		t.Errorf("ParseCommand = %+v, %v", r, err)
	}
	if r, err := ParseCommand(`UPDATE /pools/p '{"order":"fill"}'`); err != nil || string(r.Body) != `{"order":"fill"}` {
		t.Errorf("quoted body: %+v %v", r, err)
	}
	for _, bad := range []string{"GET", "FETCH /repos", "STORE /repos {", ""} {
		if _, err := ParseCommand(bad); forge.ErrorCode(err) != forge.EINVALID {
			t.Errorf("ParseCommand(%q): %v, want EINVALID", bad, err)
		}
	}
}

func TestExitStatus(t *testing.T) {
	for code, want := range map[int]int{200: 0, 201: 0, 204: 0, 400: 2, 422: 2, 401: 3, 403: 3, 404: 4, 409: 5, 503: 6, 500: 1, 501: 1} {
		if got := ExitStatus(code); got != want {
			t.Errorf("ExitStatus(%d) = %d, want %d", code, got, want)
		}
	}
}

func TestFromAllows(t *testing.T) {
	tests := []struct {
		from string
		ip   string
		want bool
	}{
		{"", "10.0.0.1", true},
		{"127.0.0.1", "127.0.0.1", true},
		{"127.0.0.1", "127.0.0.2", false},
		{"10.0.0.0/8", "10.2.3.4", true},
		{"10.0.0.0/8,!10.6.6.6", "10.6.6.6", false},
		{"192.168.1.*", "192.168.1.77", true},
		{"192.168.1.?", "192.168.1.77", false},
		{"!127.0.0.1,*", "127.0.0.1", false},
		{"host.example.com", "127.0.0.1", false},
		{"::1", "::1", true},
		{"127.0.0.1", "::ffff:127.0.0.1", true},
	}
	for _, tt := range tests {
		var pats []string
		if tt.from != "" {
			pats = strings.Split(tt.from, ",")
		}
		if got := fromAllows(pats, net.ParseIP(tt.ip)); got != tt.want {
			t.Errorf("from=%q for %s = %v, want %v", tt.from, tt.ip, got, tt.want)
		}
	}
}

func TestParseAuthorizedKeys(t *testing.T) {
	k := newKey(t, "")
	keys, err := parseAuthorizedKeys([]byte("# comment\n\n" +
		`from="10.0.0.0/8",no-agent-forwarding ` + k.line + "ops@laptop\n" +
		`restrict ` + k.line + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].user != "ops@laptop" || len(keys[0].from) != 1 || keys[0].noPTY {
		t.Errorf("first key = %+v", keys[0])
	}
	if !strings.HasPrefix(keys[1].user, "SHA256:") || !keys[1].noPTY {
		t.Errorf("second key = %+v: want named by fingerprint, no pty", keys[1])
	}
	if _, err := parseAuthorizedKeys([]byte(`command="/bin/sh" ` + k.line + "x\n")); err == nil || !strings.Contains(err.Error(), "command") {
		t.Errorf("command= key: %v, want refused", err)
	}
}

// FuzzDecodeRequest: whatever a client sends on a line, the decoder
// answers a request that maps onto an API path under /api, or an error
// with a code the transport maps; never a panic.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"id": 1, "verb": "GET", "resource": "/repos"}`,
		`{"id": "a", "verb": "STORE", "resource": "/builds?repo=o/r", "body": {"ref": "main"}}`,
		`{"verb": "delete", "resource": "/api/v1/leases/x"}`,
		`{"verb": "GET", "resource": "/builds/1/jobs/2/log?repo=o/r&follow=1"}`,
		`{"verb": "GET", "resource": "/../../etc"}`,
		`[]`, `null`, `{"verb": 1}`, "{\"verb\":\"GET\",\"resource\":\"/\x00\"}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		r, err := DecodeRequest(line)
		if err != nil {
			if c := forge.ErrorCode(err); c != forge.EINVALID && c != forge.ETOOLARGE {
				t.Fatalf("error code %q for %q", c, line)
			}
			return
		}
		m, p, err := r.Target()
		if err != nil {
			t.Fatalf("decoded %q but Target fails: %v", line, err)
		}
		if !strings.HasPrefix(p, "/api") {
			t.Fatalf("%q maps to %q, outside the API", line, p)
		}
		req, err := http.NewRequest(m, p, nil)
		if err != nil || req.URL.Host != "" || strings.Contains(req.URL.Path, "/../") {
			t.Fatalf("%q maps to %s %q: not a request the API can be given: %v", line, m, p, err)
		}
		if len(r.Body) > 0 && !json.Valid(r.Body) {
			t.Fatalf("body of %q is not JSON", line)
		}
	})
}

// FuzzParseCommand: an exec command line either parses into a request
// with a valid target or fails with EINVALID.
func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"GET /repos", `STORE /builds?repo=o/r {"ref":"x"}`, "UPDATE /pools/p '{}'", "DELETE", " "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		r, err := ParseCommand(line)
		if err != nil {
			if forge.ErrorCode(err) != forge.EINVALID {
				t.Fatalf("ParseCommand(%q): code %q", line, forge.ErrorCode(err))
			}
			return
		}
		if _, p, err := r.Target(); err != nil || !strings.HasPrefix(p, "/api") {
			t.Fatalf("ParseCommand(%q) = %+v: target %q %v", line, r, p, err)
		}
	})
}
