package main

import (
	"encoding/xml"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/forgeci/forge"
)

// TestServerBadgesAndLogSearch is issue 11's acceptance for badges and the
// search across builds through the real server: a manual build of a
// branch whose job writes a JUnit report and a Go cover profile gives
// status, tests and coverage badges with the expected texts and colours,
// and its log is found by the repository's search once the job ended.
func TestServerBadgesAndLogSearch(t *testing.T) {
	repo, sha := e2eRepo(t, `jobs:
  test:
    reports:
      - junit: report.xml
      - coverage: cover.out
    steps:
      - |
        echo "dial tcp 10.0.0.1:5432: connection reset by peer"
      - printf '<testsuite tests="3"><testcase name="a"/><testcase name="b"><failure message="x"/></testcase><testcase name="c"><skipped/></testcase></testsuite>' > report.xml
      - |
        printf 'mode: set\na.go:1.1,2.2 3 1\na.go:3.1,4.2 1 0\n' > cover.out
`)
	data := t.TempDir()
	token := e2eAdminToken(t, data)
	p := e2eStartServerWith(t, data, "")
	// The pull request's build makes the repository known; it does not
	// count for badges.
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "b-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	e2eWaitBuild(t, p, 1, 30*time.Second, e2eBuildDone)
	badge := func(name string) (title, fill string) {
		resp, err := http.Get(p.url + "/badges/Codertocat/Hello-World/" + name)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		var doc struct {
			Title string `xml:"title"`
			Rects []struct {
				Fill string `xml:"fill,attr"`
			} `xml:"g>rect"`
		}
		if err := xml.Unmarshal(body, &doc); err != nil || resp.StatusCode != 200 || len(doc.Rects) < 2 {
			t.Fatalf("%s: %d %v: %s", name, resp.StatusCode, err, body)
		}
		return doc.Title, doc.Rects[1].Fill
	}
	if title, _ := badge("status.svg?branch=master"); title != "build: unknown" {
		t.Errorf("status badge with only a pull request's build: %q, want unknown", title)
	}

	req, _ := http.NewRequest("POST", p.url+e2eRepoPath+"/builds", strings.NewReader(`{"ref": "master"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 201 {
		t.Fatalf("manual build: %v %v", resp.Status, err)
	}
	resp.Body.Close()
	if b := e2eWaitBuild(t, p, 2, 30*time.Second, e2eBuildDone); b.Status != forge.StatusSuccess {
		t.Fatalf("build 2 = %s %q", b.Status, b.Error)
	}
	deadline := time.Now().Add(30 * time.Second)
	want := map[string][2]string{
		"status.svg?branch=master":          {"build: passing", "#4c1"},
		"status.svg?branch=master&job=test": {"test: passing", "#4c1"},
		"tests.svg?branch=master":           {"tests: 1 passed, 1 failed, 1 skipped", "#e05d44"},
		"coverage.svg?branch=master":        {"coverage: 75%", "#97ca00"},
	}
	for name, w := range want {
		for { // the report summary is saved just after the job ends
			title, fill := badge(name)
			if title == w[0] && fill == w[1] {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s = %q %s, want %q %s", name, title, fill, w[0], w[1])
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	for { // the log is indexed off the hot path, shortly after the job
		var found []forge.LogMatch
		e2eApiCall(t, "GET", p.url+e2eRepoPath+"/search?q="+url.QueryEscape("connection reset"), "", &found)
		if len(found) == 2 && found[0].Build == 2 && found[1].Build == 1 && strings.Contains(found[0].Text, "5432: connection reset by peer") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("search across builds = %+v, want builds 2 and 1", found)
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.stop(t)
}
