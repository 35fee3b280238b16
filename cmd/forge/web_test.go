package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/performance"
	"github.com/chromedp/chromedp"

	"github.com/forgeci/forge"
	"github.com/forgeci/forge/internal/sqldb"
)

// The browser tests drive Debian's chromium through chromedp against a real
// forge server. Without chromium they skip, except in CI (CI=true), where
// they fail.

// webBrowser starts a headless chromium for t and returns its context.
func webBrowser(t testing.TB) context.Context {
	t.Helper()
	path := ""
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			path = p
			break
		}
	}
	if path == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed: the browser tests need it in CI (apt-get install chromium)")
		}
		t.Skip("chromium is not installed: skipping the browser tests")
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1280, 900))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelB(); cancelA() })
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v", err)
	}
	return ctx
}

// webRun runs actions with a deadline that leaves room on a loaded machine.
func webRun(t testing.TB, ctx context.Context, within time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	if err := chromedp.Do(tctx, actions...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// webGet runs one action and returns its value.
func webGet[T any](t testing.TB, ctx context.Context, within time.Duration, a chromedp.Action[T]) T {
	t.Helper()
	tctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	v, err := chromedp.Run(tctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// webEval evaluates a JavaScript expression in the page.
func webEval[T any](t testing.TB, ctx context.Context, expr string) T {
	t.Helper()
	return webGet(t, ctx, 30*time.Second, chromedp.Evaluate[T](expr, chromedp.EvalAwaitPromise))
}

// webPoll waits until expr is truthy in the page.
func webPoll(expr string, within time.Duration) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(within))
}

// webPollAcrossNavigation waits until expr is truthy in the page, starting
// again when the page navigates (after a form post) while it waits.
func webPollAcrossNavigation(t testing.TB, ctx context.Context, expr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		tctx, cancel := context.WithDeadline(ctx, deadline)
		err := chromedp.Do(tctx, chromedp.WaitReady(chromedp.CSS("body")), webPoll(expr, time.Until(deadline)))
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || !strings.Contains(err.Error(), "navigated") && !strings.Contains(err.Error(), "context") && !strings.Contains(err.Error(), "Cannot find") {
			t.Fatalf("browser: waiting for %s: %v", expr, err)
		}
	}
}

// webCDP sends one protocol command.
func webCDP[P, R any](cmd cdp.Command[P, R], params P) chromedp.Action[chromedp.Void] {
	return chromedp.Func(func(ctx context.Context, t *chromedp.Target) error {
		_, err := cdp.Call(ctx, t, cmd, params)
		return err
	})
}

// webScreenshots is where the tests write screenshots: $FORGE_SCREENSHOTS,
// else testdata-out/screenshots at the repository's root.
func webScreenshots(t testing.TB) string {
	dir := os.Getenv("FORGE_SCREENSHOTS")
	if dir == "" {
		_, file, _, _ := runtime.Caller(0)
		dir = filepath.Join(filepath.Dir(file), "..", "..", "testdata-out", "screenshots")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// webSeed is a data directory with builds stored directly: a repository,
// a passing and a failing build with a job graph and steps, a job of
// hostile log text, and a job of lines lines.
type webSeed struct {
	data              string
	failed, big, evil int64 // job ids
}

const webEvilLog = "<script>window.__pwned='script'</script>\n" +
	`<img src=x onerror="window.__pwned='img'">` + "\n" +
	`<a href="javascript:window.__pwned='link'">click me</a>` + "\n" +
	"\x1b]8;;javascript:window.__pwned='osc8'\x1b\\osc link\x1b]8;;\x1b\\\n" +
	"\x1b[31m<b>red</b>\x1b[0m \x1b]0;retitled\x07 \x1b[38;2;999;-1;7m\"><svg onload=window.__pwned='svg'>\x1b[0m\n" +
	"\x1b[1;32mbold green\x1b[0m plain \x1b[7minverse\x1b[27m \x1b[38;5;208morange\x1b[0m\n" +
	"error: something broke\nwarning: something is odd"

func webSeedData(t testing.TB, lines int) *webSeed {
	t.Helper()
	ctx := context.Background()
	s := &webSeed{data: t.TempDir()}
	db, err := sqldb.Open(ctx, sqldb.Config{DataDir: s.data})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.PrepareSchema(ctx, true); err != nil {
		t.Fatal(err)
	}
	repo := &forge.Repo{Owner: "Codertocat", Name: "Hello-World", CloneURL: "file:///nonexistent", DefaultBranch: "main"}
	if err := db.UpsertRepo(ctx, repo); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	mk := func(status forge.Status, msg string, jobs ...*forge.BuildJob) []*forge.BuildJob {
		b := &forge.Build{RepoID: repo.ID, Action: "execute", Status: status, Created: t0, Started: t0, Finished: t0.Add(95 * time.Second),
			Hook: forge.Hook{Event: "push", Ref: "refs/heads/main", Branch: "main", SHA: "0123456789abcdef0123456789abcdef01234567", Message: msg, Author: "octocat"}}
		for _, j := range jobs {
			j.Attempt, j.Started, j.Finished = 1, t0, t0.Add(90*time.Second)
		}
		if err := db.CreateBuild(ctx, b, jobs); err != nil {
			t.Fatal(err)
		}
		return jobs
	}
	mk(forge.StatusSuccess, "first: it builds", &forge.BuildJob{Name: "build", Status: forge.StatusSuccess})
	jobs := mk(forge.StatusFailure, "second: a graph that fails\n\nwith a body",
		&forge.BuildJob{Name: "build", Status: forge.StatusSuccess},
		&forge.BuildJob{Name: "lint", Status: forge.StatusSuccess},
		&forge.BuildJob{Name: "test", Status: forge.StatusFailure, Needs: []string{"build"}},
		&forge.BuildJob{Name: "deploy", Status: forge.StatusSkipped, Needs: []string{"test", "lint"}})
	s.failed = jobs[2].ID
	// The failing job: two steps, the second fails at its last line.
	var ll []forge.LogLine
	for i := 1; i <= 300; i++ {
		step, at := 0, t0.Add(time.Duration(i)*100*time.Millisecond)
		text := fmt.Sprintf("compiling package %d", i)
		if i > 200 {
			step, at, text = 1, t0.Add(time.Minute+time.Duration(i)*100*time.Millisecond), fmt.Sprintf("=== RUN TestThing%d", i)
		}
		if i == 300 {
			text = "\x1b[31m--- FAIL: TestThing300\x1b[0m"
		}
		_ = step
		ll = append(ll, forge.LogLine{Number: i, Time: at, Stream: forge.Stdout, Text: text})
	}
	if err := db.Append(ctx, s.failed, ll); err != nil {
		t.Fatal(err)
	}
	for _, st := range []*forge.BuildStep{
		{JobID: s.failed, Index: 0, Name: "go build ./...", Status: forge.StatusSuccess, Started: t0, Finished: t0.Add(30 * time.Second)},
		{JobID: s.failed, Index: 1, Name: "go test ./...", Status: forge.StatusFailure, ExitCode: 1, Started: t0.Add(time.Minute), Finished: t0.Add(90 * time.Second)},
	} {
		if err := db.SaveStep(ctx, st); err != nil {
			t.Fatal(err)
		}
	}
	jobs = mk(forge.StatusSuccess, "third: hostile and big", &forge.BuildJob{Name: "evil", Status: forge.StatusSuccess},
		&forge.BuildJob{Name: "big", Status: forge.StatusSuccess})
	s.evil, s.big = jobs[0].ID, jobs[1].ID
	ll = ll[:0]
	for i, text := range strings.Split(webEvilLog, "\n") {
		ll = append(ll, forge.LogLine{Number: i + 1, Time: t0, Stream: forge.Stdout, Text: text})
	}
	if err := db.Append(ctx, s.evil, ll); err != nil {
		t.Fatal(err)
	}
	const batch = 20000
	for from := 1; from <= lines; from += batch {
		ll = ll[:0]
		for i := from; i < from+batch && i <= lines; i++ {
			text := fmt.Sprintf("line %d of the big log: lorem ipsum dolor sit amet, consectetur adipiscing elit", i)
			if i == 42 {
				text = "needle-near-the-start found here"
			}
			ll = append(ll, forge.LogLine{Number: i, Time: t0.Add(time.Duration(i) * time.Millisecond), Stream: forge.Stdout, Text: text})
		}
		if err := db.Append(ctx, s.big, ll); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

const webRepo = "/Codertocat/Hello-World"

// webPools is a configuration with three lease pools for the pools page.
const webPools = `pools:
  bench:
    resources: [{id: bench1}]
  dut:
    resources:
      - {id: dut1, host: 10.0.0.5, labels: {arch: arm64}}
      - {id: dut2, host: 10.0.0.6, labels: {arch: amd64}}
      - {id: dut3, disabled: true}
  ports:
    range: 20000-20003
`

// webHoldLeases has two forge lease processes hold both enabled devices
// of pool dut and a third wait in its queue, until the test ends; and a
// holder report the bench broken.
func webHoldLeases(t testing.TB, p *e2eServerProc) {
	t.Helper()
	report := exec.Command(buildForge(t), "lease", "--server", p.url, "bench", "--", "sh", "-c", `echo "fan stuck" >"$FORGE_LEASE_BROKEN"`)
	if out, err := report.CombinedOutput(); err != nil {
		t.Fatalf("forge lease reporting the bench broken: %v\n%s", err, out)
	}
	for i := 0; i < 3; i++ {
		cmd := exec.Command(buildForge(t), "lease", "--server", p.url, "--holder", fmt.Sprintf("web-test-%d", i), "dut", "--", "sleep", "600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var body struct {
			Pools []struct {
				Name  string `json:"name"`
				InUse int    `json:"in_use"`
				Queue []any  `json:"queue"`
			} `json:"pools"`
		}
		e2eApiCall(t, "GET", p.url+"/api/v1/pools", "", &body)
		for _, pl := range body.Pools {
			if pl.Name == "dut" && pl.InUse == 2 && len(pl.Queue) == 1 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leases were not held within 30s: %+v", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// webScheme emulates a colour scheme and a screen.
func webScreen(scheme string, w, h int64, mobile bool) chromedp.Action[chromedp.Void] {
	return chromedp.Steps(
		webCDP(emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}}),
		webCDP(emulation.SetDeviceMetricsOverride, emulation.SetDeviceMetricsOverrideParams{Width: w, Height: h, DeviceScaleFactor: 1, Mobile: mobile}))
}

// webLoaded waits until the log's rows and the pools have loaded.
const webLoaded = `!document.querySelector(".tx.loading") && !((document.getElementById("pools")||{}).textContent||"").startsWith("Loading")`

// TestWebPages checks the pages on a server with stored builds: every page
// renders (screenshots in light and dark, desktop and phone), #L links
// highlight, hostile log text stays text, a 1,000,000-line log opens at its
// last line in time and small, and search finds a line near its start.
func TestWebPages(t *testing.T) {
	// A million lines is the size BENCHMARKS.md measures. Under the race
	// detector (make test, make test-loaded) storing them took most of the
	// package's 30 minutes on a loaded machine, and 100,000 more than 3
	// minutes; 20,000 still make a log far taller than the page renders
	// at once.
	lines := 1000000
	switch {
	case raceEnabled:
		lines = 20000
	case testing.Short():
		lines = 100000
	}
	seed := webSeedData(t, lines)
	config := filepath.Join(t.TempDir(), "forge.yml")
	if err := os.WriteFile(config, []byte(webPools), 0o644); err != nil {
		t.Fatal(err)
	}
	p := e2eStart(t, seed.data, config)
	ctx := webBrowser(t)
	shots := webScreenshots(t)
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	webHoldLeases(t, p)

	pages := map[string]string{
		"repos":  "/",
		"builds": webRepo,
		"build":  webRepo + "/builds/2",
		"job":    fmt.Sprintf("%s/builds/2/jobs/%d", webRepo, seed.failed),
		"evil":   fmt.Sprintf("%s/builds/3/jobs/%d", webRepo, seed.evil),
		"pools":  "/-/pools",
		"login":  "/-/login",
	}
	t.Run("screenshots", func(t *testing.T) {
		for _, scheme := range []string{"light", "dark"} {
			for _, dev := range []struct {
				name   string
				w, h   int64
				mobile bool
			}{{"desktop", 1280, 900, false}, {"phone", 390, 844, true}} {
				for name, path := range pages {
					webRun(t, ctx, 60*time.Second, webScreen(scheme, dev.w, dev.h, dev.mobile),
						chromedp.Navigate(p.url+path), chromedp.WaitVisible(css("main")), webPoll(webLoaded, 20*time.Second))
					buf := webGet(t, ctx, 30*time.Second, chromedp.CaptureScreenshot())
					f := filepath.Join(shots, fmt.Sprintf("%s-%s-%s.png", name, scheme, dev.name))
					if err := os.WriteFile(f, buf, 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
		}
		webRun(t, ctx, 10*time.Second, webScreen("light", 1280, 900, false))
		t.Logf("screenshots in %s", shots)
	})

	t.Run("pools page", func(t *testing.T) {
		webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+"/-/pools"), webPoll(`document.querySelectorAll("#pools table").length === 3`, 20*time.Second))
		text := webEval[string](t, ctx, `document.getElementById("pools").textContent`)
		for _, want := range []string{"dut1leased", "dut2leased", "dut3disabled", "20000free", "Queue (1)", "3 resources: 0 free, 2 in use, 1 disabled", "web-test-",
			"bench1disabled by holderfan stuck"} {
			if !strings.Contains(text, want) {
				t.Errorf("pools page %q lacks %q", text, want)
			}
		}
	})

	t.Run("build page", func(t *testing.T) {
		webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+webRepo+"/builds/2"), chromedp.WaitVisible(css("#jobs")))
		nodes := webEval[int](t, ctx, `document.querySelectorAll("svg g.node").length`)
		edges := webEval[int](t, ctx, `document.querySelectorAll("svg path.edge").length`)
		text := webEval[string](t, ctx, `document.getElementById("jobs").textContent`)
		if nodes != 4 || edges != 3 {
			t.Errorf("job graph: %d nodes, %d edges; want 4 and 3", nodes, edges)
		}
		for _, want := range []string{"build", "lint", "test", "deploy", "failure", "skipped", "1m 30s"} {
			if !strings.Contains(text, want) {
				t.Errorf("jobs table %q lacks %q", text, want)
			}
		}
	})

	t.Run("opens at the failure with the failed step open", func(t *testing.T) {
		webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+pages["job"]),
			webPoll(`(function(){var r=document.getElementById("L300"); return !!r && r.textContent.indexOf("FAIL: TestThing300")>=0})()`, 15*time.Second))
		folds := webEval[[]string](t, ctx, `Array.from(document.querySelectorAll("#steplist .fold")).map(function(b){return b.textContent+" "+b.getAttribute("aria-expanded")})`)
		if len(folds) != 2 || !strings.Contains(folds[0], "go build") || !strings.HasSuffix(folds[0], "false") ||
			!strings.Contains(folds[1], "go test") || !strings.HasSuffix(folds[1], "true") {
			t.Errorf("step sections = %q, want go build folded and go test open (data-steps %s)", folds, webEval[string](t, ctx, `document.getElementById("log").dataset.steps`))
		}
	})

	t.Run("#L links highlight", func(t *testing.T) {
		hlRows := `Array.from(document.querySelectorAll(".row.hl")).map(function(r){return r.id}).join(",")`
		webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+pages["job"]+"#L210-L212"), chromedp.WaitVisible(css("#L211.hl")))
		if hl := webEval[string](t, ctx, hlRows); hl != "L210,L211,L212" {
			t.Errorf("highlighted rows = %v, want L210..L212", hl)
		}
		webRun(t, ctx, 30*time.Second, chromedp.Click(css("#L215 a.ln")), chromedp.WaitVisible(css("#L215.hl")))
		if hl := webEval[string](t, ctx, hlRows); hl != "L215" {
			t.Errorf("after clicking line 215: highlighted rows = %v", hl)
		}
	})

	t.Run("hostile log text stays text", func(t *testing.T) {
		webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+pages["evil"]), chromedp.WaitVisible(css("#L7")), webPoll(webLoaded, 15*time.Second))
		// Click every link in the log: none may run script.
		webEval[int](t, ctx, `document.querySelectorAll("#rows a:not(.ln)").forEach(function(a){a.click()}); 0`)
		pwned := webEval[string](t, ctx, `String(window.__pwned||"")`)
		title := webEval[string](t, ctx, `document.title`)
		foreign := webEval[int](t, ctx, `document.querySelectorAll("#rows script, #rows img, #rows svg, #rows iframe, #rows a:not(.ln), #rows b").length`)
		text := webEval[string](t, ctx, `document.getElementById("rows").textContent`)
		if pwned != "" {
			t.Errorf("log text ran script: window.__pwned = %q", pwned)
		}
		if foreign != 0 {
			t.Errorf("log text made %d elements", foreign)
		}
		if strings.Contains(title, "retitled") {
			t.Errorf("an OSC sequence retitled the page: %q", title)
		}
		for _, want := range []string{"<script>window.__pwned='script'</script>", `<img src=x onerror=`, `javascript:window.__pwned='link'`, "<b>red</b>", "osc link", "bold green"} {
			if !strings.Contains(text, want) {
				t.Errorf("log text %q lacks %q as text", text, want)
			}
		}
		if strings.Contains(text, "\x1b") {
			t.Errorf("escape characters reached the page: %q", text)
		}
		red := webEval[string](t, ctx, `getComputedStyle(document.querySelector("#L5 .tx span.f1")).color`)
		bold := webEval[string](t, ctx, `document.querySelector("#L6 .tx span").className`)
		if red == "" || !strings.Contains(bold, "bo") || !strings.Contains(bold, "f2") {
			t.Errorf("ANSI styles: red %q, bold green class %q", red, bold)
		}
		resp, err := http.Get(p.url + pages["evil"])
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") {
			t.Errorf("Content-Security-Policy = %q", csp)
		}
	})

	t.Run("a big log opens at its end", func(t *testing.T) {
		path := fmt.Sprintf("%s/builds/3/jobs/%d", webRepo, seed.big)
		ms, heap, rss, nodes := webOpenBigLog(t, ctx, p.url+path, lines)
		t.Logf("%d-line log: last line visible %.0f ms after navigation start; JS heap %.1f MB, renderer private memory %.1f MB, %.0f DOM nodes", lines, ms, heap/1e6, rss/1e6, nodes)
		if heap > 200e6 || rss > 200e6 {
			t.Errorf("JS heap %.1f MB, renderer private memory %.1f MB: want the tab under 200 MB", heap/1e6, rss/1e6)
		}
		// The figure against 500 ms is in BENCHMARKS.md; on a loaded
		// machine only a gross regression fails here.
		if ms > 5000 {
			t.Errorf("last line visible after %.0f ms, want about 500", ms)
		}
	})

	t.Run("search finds a line near the start", func(t *testing.T) {
		path := fmt.Sprintf("%s/builds/3/jobs/%d", webRepo, seed.big)
		resp, err := http.Get(fmt.Sprintf("%s/api/v1/repos%s/builds/3/jobs/%d/log/search?q=x", p.url, webRepo, seed.big))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 404 {
			t.Skip("the in-log search endpoint is not on this branch yet")
		}
		webRun(t, ctx, 60*time.Second, chromedp.Navigate(p.url+path),
			chromedp.WaitVisible(css("#lq")), chromedp.SendKeys(css("#lq"), "needle-near-the-start"), chromedp.Click(css(`#lsearch button[type="submit"]`)),
			chromedp.WaitVisible(css("#L42.cur")))
		if count := webEval[string](t, ctx, `document.getElementById("lcount").textContent`); !strings.HasPrefix(count, "1 of 1") {
			t.Errorf("match count %q, want 1 of 1", count)
		}
	})
}

// webRendererRSS returns the private resident memory (RssAnon: its own heap,
// not the shared binary and fonts) of the browser's largest
// renderer process (the tab's), read from /proc: 0 where there is none.
func webRendererRSS(ctx context.Context) float64 {
	proc := chromedp.FromContext(ctx).Browser.Process()
	if proc == nil {
		return 0
	}
	ents, _ := os.ReadDir("/proc")
	parent := map[int]int{}
	for _, e := range ents {
		var pid, ppid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		st, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so cut at ')'.
		if i := strings.LastIndexByte(string(st), ')'); i > 0 {
			var state string
			fmt.Sscan(string(st[i+1:]), &state, &ppid)
			parent[pid] = ppid
		}
	}
	var best float64
	for pid := range parent {
		a := pid
		for a > 1 && a != proc.Pid {
			a = parent[a]
		}
		if a != proc.Pid {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !strings.Contains(string(cmd), "--type=renderer") {
			continue
		}
		status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		for _, line := range strings.Split(string(status), "\n") {
			var kb float64
			if _, err := fmt.Sscanf(line, "RssAnon: %f kB", &kb); err == nil {
				best = max(best, kb*1024)
			}
		}
	}
	return best
}

// webOpenBigLog opens a log of lines lines and returns when its last line
// was visible (ms after navigation start), then scrolls through it and
// returns the tab's JS heap, its renderer's resident memory and its DOM
// nodes.
func webOpenBigLog(t testing.TB, ctx context.Context, u string, lines int) (ms, heap, rss, nodes float64) {
	t.Helper()
	webRun(t, ctx, 60*time.Second, chromedp.Navigate(u))
	ms = webGet(t, ctx, 60*time.Second, chromedp.Poll[float64](
		fmt.Sprintf(`(function(){var r=document.getElementById("L%d"); return r && r.textContent.indexOf("line %d of the big log")>=0 ? performance.now() : 0})()`, lines, lines),
		chromedp.WithPollingInterval(5*time.Millisecond), chromedp.WithPollingTimeout(30*time.Second)))
	webEval[int](t, ctx, `(async function(){var v=document.getElementById("viewport"); for (var i=0;i<=20;i++){v.scrollTop=v.scrollHeight*i/20; await new Promise(function(r){setTimeout(r,60)})} return 0})()`)
	webRun(t, ctx, 30*time.Second, webCDP(performance.Enable, performance.EnableParams{}), chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		res, err := cdp.Call(ctx, tg, performance.GetMetrics, cdp.Empty{})
		if err != nil {
			return err
		}
		for _, m := range res.Metrics {
			switch m.Name {
			case "JSHeapTotalSize":
				heap = m.Value
			case "Nodes":
				nodes = m.Value
			}
		}
		return nil
	}))
	return ms, heap, webRendererRSS(ctx), nodes
}

// TestWebLiveAndCancel opens a running job's page and sees its lines
// arrive, then signs in and cancels the build from its page, which kills
// the job's processes.
func TestWebLiveAndCancel(t *testing.T) {
	marker := fmt.Sprintf("%d%06d", os.Getpid()%1000, time.Now().UnixNano()/1000%1000000)
	repo, sha := e2eRepo(t, fmt.Sprintf("execute:\n  - for i in $(seq 1 100000); do echo tick $i; sleep 0.1; done & sleep 3000.%s\n", marker))
	data := t.TempDir()
	token := e2eAdminToken(t, data)
	p := e2eStartServer(t, data)
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "web-live-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool { return b.Jobs[0].Status == forge.StatusRunning })
	ctx := webBrowser(t)
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	webRun(t, ctx, 30*time.Second, chromedp.Navigate(fmt.Sprintf("%s%s/builds/1/jobs/%d", p.url, webRepo, b.Jobs[0].ID)), chromedp.WaitVisible(css("#rows")))
	total := webEval[int](t, ctx, `parseInt(document.getElementById("log").dataset.total,10)`)
	// Lines printed after the page loaded appear without a reload (50s
	// were not enough under make test-loaded, with chromium, the server
	// and the step's shell sharing two busy cores).
	webRun(t, ctx, 2*time.Minute, webPoll(fmt.Sprintf(`(function(){var r=document.getElementById("L%d"); return !!r && /tick \d+/.test(r.textContent)})()`, total+5), 110*time.Second))

	// Sign in through the form, come back to the build and cancel it.
	build := p.url + webRepo + "/builds/1"
	webRun(t, ctx, 30*time.Second, chromedp.Navigate(build), chromedp.Click(css(`a[href^="/-/login"]`)), chromedp.WaitVisible(css("#token")),
		chromedp.SendKeys(css("#token"), token), chromedp.Submit(css("#token")), chromedp.WaitVisible(css("#cancel")))
	if loc := webGet(t, ctx, 10*time.Second, chromedp.Location()); loc != build {
		t.Errorf("after sign-in the browser is at %s, want back at %s", loc, build)
	}
	webRun(t, ctx, 30*time.Second, chromedp.Click(css("#cancel")))
	webPollAcrossNavigation(t, ctx, `document.getElementById("build-status").textContent === "canceled"`, 50*time.Second)
	deadline := time.Now().Add(20 * time.Second)
	for len(processesWith("3000."+marker)) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the job's processes outlived the cancel: %v", processesWith("3000."+marker))
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.stop(t)
}

// TestWebPrivateReads: with api.private_reads an anonymous visitor is sent
// to sign in, the pages' fetches work with the session, and a form posted
// from another site is refused.
func TestWebPrivateReads(t *testing.T) {
	seed := webSeedData(t, 10)
	token := e2eForgeCmd(t, nil, "token", "create", "--name", "reader", "--data", seed.data)
	p := e2eStartServer(t, seed.data, "FORGE_API_PRIVATE_READS=true")
	ctx := webBrowser(t)
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+webRepo), chromedp.WaitVisible(css("#token")))
	if loc := webGet(t, ctx, 10*time.Second, chromedp.Location()); !strings.HasPrefix(loc, p.url+"/-/login?next=") {
		t.Fatalf("anonymous visit ended at %s, want the sign-in page", loc)
	}
	webRun(t, ctx, 30*time.Second, chromedp.SendKeys(css("#token"), token), chromedp.Submit(css("#token")), chromedp.WaitVisible(css("#builds")))
	if loc := webGet(t, ctx, 10*time.Second, chromedp.Location()); loc != p.url+webRepo {
		t.Errorf("after sign-in: %s, want %s", loc, p.url+webRepo)
	}
	// The log page's own fetches read the API with the session cookie.
	webRun(t, ctx, 30*time.Second, chromedp.Navigate(fmt.Sprintf("%s%s/builds/2/jobs/%d", p.url, webRepo, seed.failed)),
		webPoll(`(function(){var r=document.getElementById("L300"); return !!r && r.textContent.indexOf("TestThing300")>=0})()`, 20*time.Second))

	// Another site's page posts a form to forge (sign out): refused.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprintf(w, `<form id="f" method="post" action="%s/-/logout"><input name="csrf" value="guess"></form><script>document.getElementById("f").submit()</script>`, p.url)
	}))
	defer evil.Close()
	other := strings.Replace(evil.URL, "127.0.0.1", "localhost", 1)
	webRun(t, ctx, 30*time.Second, chromedp.Navigate(other), chromedp.WaitVisible(css(".error-msg")))
	if body := webEval[string](t, ctx, `document.querySelector("main").textContent`); !strings.Contains(body, "403") {
		t.Errorf("cross-site post answered %q, want 403", body)
	}
	// Still signed in: the post changed nothing.
	webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+"/"), chromedp.WaitVisible(css(".who")))
	if body := webEval[string](t, ctx, `document.querySelector(".who").textContent`); !strings.Contains(body, "signed in as reader") {
		t.Errorf("after the refused post: %q, want still signed in", body)
	}
	// Without the session, the API refuses reads.
	if st := e2eApiCall(t, "GET", p.url+e2eRepoPath+"/builds", "", nil); st != 401 {
		t.Errorf("anonymous API read with private reads: %d, want 401", st)
	}
}

// webShot writes a screenshot of the page as name.png.
func webShot(t testing.TB, ctx context.Context, name string) {
	t.Helper()
	buf := webGet(t, ctx, 30*time.Second, chromedp.CaptureScreenshot())
	if err := os.WriteFile(filepath.Join(webScreenshots(t), name+".png"), buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestWebLiveLists: a new repository appears on the open repositories
// page, and a new build on top of the open builds list, without a reload
// (window.__same would be gone after one), and its state changes there.
func TestWebLiveLists(t *testing.T) {
	repo, sha := e2eRepo(t, "execute:\n  - echo built\n")
	p := e2eStartServer(t, t.TempDir())
	ctx := webBrowser(t)
	css := func(s string) chromedp.CSS { return chromedp.CSS(s) }
	deliver := func(id string, pr int) {
		t.Helper()
		if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", id, e2ePrPayload(t, "opened", repo, sha, pr)); err != nil || st != 202 {
			t.Fatalf("delivery %s: %d %v", id, st, err)
		}
	}
	webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+"/"), chromedp.WaitVisible(css("#norepos")))
	webEval[int](t, ctx, `window.__same = 1`)
	deliver("web-lists-1", 2)
	webRun(t, ctx, 60*time.Second, webPoll(`window.__same === 1 && !!document.querySelector('#repos a.title[href="`+webRepo+`"]') &&
		document.getElementById("norepos").textContent === ""`, 50*time.Second))
	e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool { return b.Status.Done() })
	webRun(t, ctx, 60*time.Second, webPoll(`window.__same === 1 && /#1 success/.test(document.querySelector("#repos .badge").textContent)`, 50*time.Second))

	webRun(t, ctx, 30*time.Second, chromedp.Navigate(p.url+webRepo), chromedp.WaitVisible(css("#builds")))
	webEval[int](t, ctx, `window.__same = 2`)
	focused := webEval[bool](t, ctx, `(function(){var a=document.querySelector("#build-rows a"); a.focus(); return document.activeElement === a})()`)
	deliver("web-lists-2", 3)
	webRun(t, ctx, 60*time.Second, webPoll(`(function(){
		var r = document.querySelectorAll("#build-rows tr[data-build]");
		return window.__same === 2 && r.length === 2 && r[0].querySelector("a").textContent === "#2" && r[1].querySelector("a").textContent === "#1"})()`, 50*time.Second))
	e2eWaitBuild(t, p, 2, 30*time.Second, func(b *e2eBuildView) bool { return b.Status.Done() })
	webRun(t, ctx, 60*time.Second, webPoll(`document.querySelector("#build-rows tr [data-status]").textContent === "success"`, 50*time.Second))
	// The row that was there kept its focus: only changed cells are redrawn.
	if focused && !webEval[bool](t, ctx, `document.activeElement && document.activeElement.textContent === "#1"`) {
		t.Errorf("the focused link of build 1 lost its focus when build 2 came")
	}
	webShot(t, ctx, "builds-live-new-build")
}

// TestWebStepFolds: a step that starts while the log page is open gets
// its fold, at the line it started at.
func TestWebStepFolds(t *testing.T) {
	gate := filepath.Join(t.TempDir(), "go-on")
	repo, sha := e2eRepo(t, fmt.Sprintf("execute:\n  - name: first\n    run: |\n      echo in-first-step\n      while [ ! -e %s ]; do sleep 0.1; done\n"+
		"  - name: second\n    run: echo in-second-step\n", gate))
	p := e2eStartServer(t, t.TempDir())
	if st, err := e2eDeliver(http.DefaultClient, p.url, "pull_request", "web-steps-1", e2ePrPayload(t, "opened", repo, sha, 2)); err != nil || st != 202 {
		t.Fatalf("delivery: %d %v", st, err)
	}
	b := e2eWaitBuild(t, p, 1, 30*time.Second, func(b *e2eBuildView) bool {
		return len(b.Jobs[0].Steps) > 0 && b.Jobs[0].Steps[0].Status == forge.StatusRunning
	})
	ctx := webBrowser(t)
	webRun(t, ctx, 30*time.Second, chromedp.Navigate(fmt.Sprintf("%s%s/builds/1/jobs/%d", p.url, webRepo, b.Jobs[0].ID)),
		chromedp.WaitVisible(chromedp.CSS("#rows")))
	// headerBefore(text): the step header right above the line that says text.
	const headerBefore = `(function(text){
		for (var r = document.getElementById("rows").firstChild; r; r = r.nextSibling)
			if (r.querySelector(".tx") && r.querySelector(".tx").textContent === text) {
				var h = r.previousElementSibling;
				return h && h.classList.contains("steprow") ? h.querySelector(".fold").textContent.slice(2) : "";
			}
		return null})`
	webRun(t, ctx, 60*time.Second, webPoll(headerBefore+`("in-first-step") === "first"`, 50*time.Second))
	if got := webEval[string](t, ctx, `document.getElementById("steplist").textContent`); strings.Contains(got, "second") {
		t.Fatalf("the step list shows step second before it started: %q", got)
	}
	webEval[int](t, ctx, `window.__same = 1`)
	if err := os.WriteFile(gate, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	webRun(t, ctx, 60*time.Second, webPoll(`window.__same === 1 && `+headerBefore+`("in-second-step") === "second"`, 50*time.Second))
	// When the job ends, both steps show their result and line count.
	webRun(t, ctx, 60*time.Second, webPoll(`(function(){
		var li = document.querySelectorAll("#steplist li");
		return li.length === 2 && /^success · .* · 1 lines$/.test(li[0].querySelector("a").textContent) &&
			/^success · .* · 1 lines$/.test(li[1].querySelector("a").textContent)})()`, 50*time.Second))
	webShot(t, ctx, "log-step-started-live")
}
