// Package web serves forge's pages: the repositories, a repository's builds,
// a build with its job graph, a job's log, and the lease pools. Pages are
// rendered on the server with html/template; a little JavaScript and CSS,
// embedded in the binary, make them live (no front-end build step).
//
// The JavaScript reads the REST API (/api/v1/...) with the page's own
// fetches, and a page's own list again (X-Forge-Part: list) to show new
// builds and repositories; everything that changes something (sign in, sign out, cancel,
// restart) is a form posted to this package, checked for cross-origin
// requests (net/http's CrossOriginProtection) and carrying a CSRF token.
//
// Sign-in: a user pastes an API token (forge token create); it is checked
// and kept in an HttpOnly, SameSite=Strict session cookie (Options.Cookie),
// which the API's guard accepts for reads, so the pages' fetches work with
// private reads too. There is no password database.
//
// Log text is hostile: pages never put it into markup. The log page's
// script builds the DOM with textContent, and every response carries a
// Content-Security-Policy that allows scripts from this origin's files only.
package web

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"embed"
	"encoding/hex"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/forgeci/forge"
)

//go:embed assets templates
var files embed.FS

// Control cancels and restarts builds: implemented by internal/runner.
// Cancel stops build id and records reason; Restart queues a new build
// like the finished build id. ECONFLICT when the build's state does not
// allow it, ENOTFOUND for an unknown build.
type Control interface {
	Cancel(ctx context.Context, id int64, reason string) (*forge.Build, error)
	Restart(ctx context.Context, id int64) (*forge.Build, error)
}

// Options are what the pages show and who may see them. Repos, Builds and
// Logs are required.
type Options struct {
	Repos  forge.RepoStore
	Builds forge.BuildStore
	Logs   forge.LogStore
	// Control cancels and restarts builds; nil hides the buttons.
	Control Control
	// Authenticate returns the token whose secret is given; EUNAUTHORIZED
	// for an unknown one. The API's own check (httpapi.Server.Authenticate).
	Authenticate func(ctx context.Context, secret string) (*forge.Token, error)
	// Cookie names the session cookie; the API's guard reads the same one.
	Cookie string
	// PrivateReads sends anonymous visitors to sign in.
	PrivateReads bool
	// PublicURL is where users reach forge, for the badge Markdown.
	PublicURL string
	// SessionTTL is how long a sign-in lasts (default 12 hours).
	SessionTTL time.Duration
	Logger     *slog.Logger
}

// UI serves the pages. Create it with New.
type UI struct {
	opts  Options
	log   *slog.Logger
	tmpl  map[string]*template.Template
	mux   *http.ServeMux
	cop   *http.CrossOriginProtection
	start time.Time
}

// csp is every page's Content-Security-Policy: nothing inline, nothing
// from elsewhere.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// New returns the pages for opts.
func New(opts Options) (*UI, error) {
	if opts.Repos == nil || opts.Builds == nil || opts.Logs == nil {
		return nil, forge.Errorf(forge.EINVALID, "web: Repos, Builds and Logs are required")
	}
	if opts.Cookie == "" {
		opts.Cookie = "forge_session"
	}
	if opts.SessionTTL <= 0 {
		opts.SessionTTL = 12 * time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	u := &UI{opts: opts, log: opts.Logger.With("component", "web"), mux: http.NewServeMux(),
		cop: http.NewCrossOriginProtection(), start: time.Now()}
	if err := u.parse(); err != nil {
		return nil, err
	}
	u.cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.fail(w, r, forge.Errorf(forge.EFORBIDDEN, "cross-origin form posts are refused"))
	}))
	u.routes()
	return u, nil
}

func (u *UI) parse() error {
	funcs := template.FuncMap{
		"dur":     durationText,
		"ago":     ago,
		"short":   shortSHA,
		"refname": refName,
		"firstline": func(s string) string {
			s, _, _ = strings.Cut(s, "\n")
			return s
		},
		"stclass": func(s forge.Status) string { return "st-" + string(s) },
		"done":    func(s forge.Status) bool { return s.Done() },
	}
	u.tmpl = map[string]*template.Template{}
	pages, err := fs.Glob(files, "templates/*.html")
	if err != nil {
		return err
	}
	for _, p := range pages {
		name := strings.TrimSuffix(strings.TrimPrefix(p, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New(name).Funcs(funcs).ParseFS(files, "templates/layout.html", p)
		if err != nil {
			return forge.Errorf(forge.EINTERNAL, "web: template %s: %v", name, err)
		}
		u.tmpl[name] = t
	}
	return nil
}

// Handler returns the pages' handler.
func (u *UI) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", csp)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "same-origin")
		h.Set("X-Frame-Options", "DENY")
		u.mux.ServeHTTP(w, r)
	})
}

// Paths of the pages' own routes live under /-/, which no GitHub owner can
// be named, so they never shadow a repository.
func (u *UI) routes() {
	static, _ := fs.Sub(files, "assets")
	u.mux.HandleFunc("GET /-/static/{file}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		http.ServeFileFS(w, r, static, r.PathValue("file"))
	})
	u.mux.HandleFunc("GET /-/login", u.loginPage)
	u.mux.Handle("POST /-/login", u.cop.Handler(http.HandlerFunc(u.login)))
	u.mux.Handle("POST /-/logout", u.cop.Handler(u.needSession(u.logout)))
	u.mux.HandleFunc("GET /-/pools", u.read(u.poolsPage))
	u.mux.HandleFunc("GET /{$}", u.read(u.reposPage))
	u.mux.HandleFunc("GET /{owner}/{repo}", u.read(u.buildsPage))
	u.mux.HandleFunc("GET /{owner}/{repo}/builds/{number}", u.read(u.buildPage))
	u.mux.HandleFunc("GET /{owner}/{repo}/builds/{number}/jobs/{job}", u.read(u.jobPage))
	u.mux.Handle("POST /{owner}/{repo}/builds/{number}/{op}", u.cop.Handler(u.needSession(u.control)))
	u.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		u.fail(w, r, forge.Errorf(forge.ENOTFOUND, "no page at %s", r.URL.Path))
	})
}

// session is who is looking at a page.
type session struct {
	Token  *forge.Token // nil when not signed in
	secret string
}

// CSRF is the token forms carry when signed in: derived from the session
// secret, so a page from another site cannot know it, and the server keeps
// no state.
func (s *session) CSRF() string {
	if s == nil || s.Token == nil {
		return ""
	}
	return csrfFor(s.secret)
}

func csrfFor(secret string) string {
	sum := sha256.Sum256([]byte("forge-csrf\x00" + secret))
	return hex.EncodeToString(sum[:])
}

// sessionOf returns the request's session; an unknown or expired cookie is
// no session.
func (u *UI) sessionOf(r *http.Request) *session {
	c, err := r.Cookie(u.opts.Cookie)
	if err != nil || c.Value == "" || u.opts.Authenticate == nil {
		return &session{}
	}
	tok, err := u.opts.Authenticate(r.Context(), c.Value)
	if err != nil {
		return &session{}
	}
	return &session{Token: tok, secret: c.Value}
}

type pageFunc func(w http.ResponseWriter, r *http.Request, s *session)

// read serves a page anyone may read, or only the signed-in with private
// reads; the others are sent to sign in and brought back.
func (u *UI) read(f pageFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := u.sessionOf(r)
		if u.opts.PrivateReads && s.Token == nil {
			http.Redirect(w, r, "/-/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		f(w, r, s)
	}
}

// needSession serves form posts of signed-in users carrying their CSRF
// token.
func (u *UI) needSession(f pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := u.sessionOf(r)
		if s.Token == nil {
			u.fail(w, r, forge.Errorf(forge.EUNAUTHORIZED, "sign in first"))
			return
		}
		if subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.CSRF())) != 1 {
			u.fail(w, r, forge.Errorf(forge.EFORBIDDEN, "the form's CSRF token is missing or wrong: reload the page and try again"))
			return
		}
		f(w, r, s)
	})
}

// loginCookie is the CSRF cookie of the sign-in form, before any session.
const loginCookie = "forge_login_csrf"

func (u *UI) loginPage(w http.ResponseWriter, r *http.Request) {
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	v := hex.EncodeToString(tok)
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Value: v, Path: "/-/login", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: 3600})
	u.render(w, r, http.StatusOK, "login", &session{}, map[string]any{
		"Title": "Sign in", "Next": safeNext(r.URL.Query().Get("next")), "LoginCSRF": v,
		"Error": r.URL.Query().Get("error"),
	})
}

// safeNext keeps sign-in redirects on this site.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.HasPrefix(next, "//") || strings.HasPrefix(next, "/\\") {
		return "/"
	}
	return next
}

func (u *UI) login(w http.ResponseWriter, r *http.Request) {
	c, err := r.Cookie(loginCookie)
	if err != nil || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostFormValue("csrf"))) != 1 {
		u.fail(w, r, forge.Errorf(forge.EFORBIDDEN, "the sign-in form's CSRF token is missing or wrong: reload the page and try again"))
		return
	}
	next := safeNext(r.PostFormValue("next"))
	secret := strings.TrimSpace(r.PostFormValue("token"))
	if u.opts.Authenticate == nil {
		u.fail(w, r, forge.Errorf(forge.ENOTIMPL, "this server cannot check tokens"))
		return
	}
	if _, err := u.opts.Authenticate(r.Context(), secret); secret == "" || err != nil {
		http.Redirect(w, r, "/-/login?error=unknown+token&next="+url.QueryEscape(next), http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: u.opts.Cookie, Value: secret, Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil, MaxAge: int(u.opts.SessionTTL.Seconds())})
	http.SetCookie(w, &http.Cookie{Name: loginCookie, Path: "/-/login", MaxAge: -1})
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request, _ *session) {
	http.SetCookie(w, &http.Cookie{Name: u.opts.Cookie, Value: "", Path: "/", HttpOnly: true,
		SameSite: http.SameSiteStrictMode, MaxAge: -1})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// render writes template name with data, adding the session and title.
func (u *UI) render(w http.ResponseWriter, r *http.Request, status int, name string, s *session, data map[string]any) {
	t := u.tmpl[name]
	data["Session"] = s
	data["Private"] = u.opts.PrivateReads
	data["Asset"] = u.start.Unix()
	data["Here"] = "/"
	if !strings.HasPrefix(r.URL.Path, "/-/") {
		data["Here"] = r.URL.RequestURI() // where signing in comes back to
	}
	// A page's script asks for just its list (X-Forge-Part: list) to show
	// what changed without a reload; the rest of the page stays.
	part := "layout"
	if r.Header.Get("X-Forge-Part") == "list" && status == http.StatusOK && t.Lookup("list") != nil {
		part = "list"
	}
	var b strings.Builder
	if err := t.ExecuteTemplate(&b, part, data); err != nil {
		u.log.Error("rendering a page", "page", name, "err", err)
		http.Error(w, "internal error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Vary", "X-Forge-Part")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

// fail answers with an error page carrying err's status and message.
func (u *UI) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := forge.HTTPStatus(err)
	msg := forge.ErrorMessage(err)
	if status >= 500 {
		u.log.Error("page failed", "path", r.URL.Path, "err", err)
		msg = "internal error"
	}
	u.render(w, r, status, "error", u.sessionOf(r), map[string]any{"Title": http.StatusText(status), "Message": msg, "Status": status})
}
