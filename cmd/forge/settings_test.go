package main

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

type pflagFlag = pflag.Flag

// The settings table of docs/configuration.md against the code: every
// key of serverConfig, every FORGE_* variable in forge's code and every
// flag of forge server, migrate and token has a row; every row names what
// the code has; variables and flags set the key their row says; literal
// defaults are those of defaultServerConfig. A failure says which row to
// add or change.

// settingsDocName is the page with the table; tests run in cmd/forge.
const (
	settingsDocName = "docs/configuration.md"
	settingsDoc     = "../../" + settingsDocName
)

// settingsHeader and jobVarsHeader open the two tables of settingsDoc.
const (
	settingsHeader = "| file key | environment | flag | default | meaning |"
	jobVarsHeader  = "| variable | meaning |"
)

// settingRow is a row of the settings table.
type settingRow struct {
	line      int
	key, env  string
	flags     []flagRef
	def       string // the default cell as written
	literal   bool   // the default is one `value`
	defLit    string // that value
	rawCells  []string
	rawString string
}

// flagRef is a flag in the table: "--name" (cmd "") is a flag of forge
// server (which forge migrate and forge token may share); "forge CMD
// --name" one of another command.
type flagRef struct{ cmd, name string }

func (f flagRef) String() string {
	if f.cmd == "" {
		return "--" + f.name
	}
	return "forge " + f.cmd + " --" + f.name
}

var (
	backticked = regexp.MustCompile("`([^`]*)`")
	flagToken  = regexp.MustCompile(`^(?:forge ([a-z]+) )?--([a-z][a-z0-9-]*)$`)
	envLiteral = regexp.MustCompile(`^FORGE_[A-Z0-9_]*$`)
)

// readSettingsDoc parses the two tables of settingsDoc.
func readSettingsDoc(t *testing.T) (rows []settingRow, jobVars map[string]int) {
	t.Helper()
	f, err := os.Open(settingsDoc)
	if err != nil {
		t.Fatalf("the settings table: %v", err)
	}
	defer f.Close()
	jobVars = map[string]int{}
	sc := bufio.NewScanner(f)
	n, table := 0, ""
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == settingsHeader || line == jobVarsHeader:
			table = line
			continue
		case !strings.HasPrefix(line, "|"):
			table = ""
			continue
		case table == "" || strings.HasPrefix(line, "|---"):
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if table == jobVarsHeader {
			if m := backticked.FindStringSubmatch(cells[0]); m != nil {
				jobVars[m[1]] = n
			}
			continue
		}
		if len(cells) != 5 {
			t.Fatalf("%s:%d: want 5 cells (file key, environment, flag, default, meaning), got %d: %s", settingsDocName, n, len(cells), line)
		}
		r := settingRow{line: n, def: cells[3], rawCells: cells, rawString: line}
		if m := backticked.FindStringSubmatch(cells[0]); m != nil {
			r.key = m[1]
		}
		if m := backticked.FindStringSubmatch(cells[1]); m != nil {
			r.env = m[1]
		}
		for _, m := range backticked.FindAllStringSubmatch(cells[2], -1) {
			fm := flagToken.FindStringSubmatch(m[1])
			if fm == nil {
				t.Errorf("%s:%d: flag %q: write --name for forge server, or forge COMMAND --name for another command", settingsDocName, n, m[1])
				continue
			}
			r.flags = append(r.flags, flagRef{cmd: fm[1], name: fm[2]})
		}
		if m := backticked.FindStringSubmatch(r.def); m != nil && m[0] == r.def {
			r.literal, r.defLit = true, m[1]
		}
		rows = append(rows, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(rows) == 0 {
		t.Fatalf("%s has no settings table (a table headed %q)", settingsDocName, settingsHeader)
	}
	return rows, jobVars
}

// leaf is a setting of serverConfig: its file key ("" for a field the
// file cannot set) and its Go field path.
type leaf struct {
	key   string
	field string
}

// configLeaves lists the settings of serverConfig: struct fields are
// walked into, everything else (maps, pointers, scalars) is one setting.
func configLeaves() []leaf {
	var out []leaf
	var walk func(t reflect.Type, keyPrefix, fieldPrefix string)
	walk = func(t reflect.Type, keyPrefix, fieldPrefix string) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			key := keyPrefix + name
			if name == "-" {
				key = ""
			}
			if f.Type.Kind() == reflect.Struct && name != "-" && f.Type != reflect.TypeFor[Duration]() {
				walk(f.Type, key+".", fieldPrefix+f.Name+".")
				continue
			}
			out = append(out, leaf{key: key, field: fieldPrefix + f.Name})
		}
	}
	walk(reflect.TypeFor[serverConfig](), "", "")
	return out
}

// fieldValue is the value of field path p of c.
func fieldValue(c *serverConfig, p string) reflect.Value {
	v := reflect.ValueOf(c).Elem()
	for _, name := range strings.Split(p, ".") {
		v = v.FieldByName(name)
	}
	return v
}

// formatSetting writes a setting's value as the table does.
func formatSetting(v reflect.Value) string {
	switch x := v.Interface().(type) {
	case Duration:
		return time.Duration(x).String()
	case *bool:
		if x == nil {
			return ""
		}
		return strconv.FormatBool(*x)
	}
	switch v.Kind() {
	case reflect.String:
		return v.String()
	case reflect.Int, reflect.Int64:
		return strconv.FormatInt(v.Int(), 10)
	case reflect.Bool:
		return strconv.FormatBool(v.Bool())
	}
	return fmt.Sprint(v.Interface())
}

// changedLeaves lists the settings whose value differs between a and b.
func changedLeaves(a, b *serverConfig) []leaf {
	var out []leaf
	for _, l := range configLeaves() {
		if !reflect.DeepEqual(fieldValue(a, l.field).Interface(), fieldValue(b, l.field).Interface()) {
			out = append(out, l)
		}
	}
	return out
}

// samples are tried in order as the value of a variable or flag until one
// is accepted: one of them parses as each kind of setting.
var samples = []string{"7", "true", "17s", "http://sample.example:7"}

// envSettings maps each variable applyEnv reads to the setting it sets.
func envSettings(t *testing.T) map[string]leaf {
	t.Helper()
	var asked []string
	c := defaultServerConfig()
	if err := applyEnv(&c, func(k string) string { asked = append(asked, k); return "" }); err != nil {
		t.Fatal(err)
	}
	out := map[string]leaf{}
	for _, name := range asked {
		for _, s := range samples {
			c := defaultServerConfig()
			if err := applyEnv(&c, func(k string) string {
				if k == name {
					return s
				}
				return ""
			}); err != nil {
				continue
			}
			base := defaultServerConfig()
			if changed := changedLeaves(&base, &c); len(changed) == 1 {
				out[name] = changed[0]
				break
			}
		}
		if _, ok := out[name]; !ok {
			t.Errorf("applyEnv reads %s, but none of the values %q sets exactly one setting with it", name, samples)
		}
	}
	return out
}

// serverFlagSettings maps each flag of forge server to the setting it
// sets (none for --config).
func serverFlagSettings(t *testing.T) map[string]leaf {
	t.Helper()
	out := map[string]leaf{}
	probe := &cobra.Command{}
	addServerFlags(probe, &serverFlags{})
	probe.Flags().VisitAll(func(fl *pflagFlag) {
		if fl.Name == "config" {
			return
		}
		for _, s := range samples {
			var f serverFlags
			cmd := &cobra.Command{}
			addServerFlags(cmd, &f)
			if cmd.Flags().Set(fl.Name, s) != nil {
				continue
			}
			m := &serverMain{}
			if m.ParseFlags(cmd, &f, func(string) string { return "" }) != nil {
				continue
			}
			base := defaultServerConfig()
			if changed := changedLeaves(&base, &m.Config); len(changed) == 1 {
				out[fl.Name] = changed[0]
				return
			}
		}
		t.Errorf("forge server --%s: none of the values %q sets exactly one setting", fl.Name, samples)
	})
	return out
}

// configFlags lists the flags of the commands that read the server's
// configuration (not their subcommands'), by name.
func configFlags() map[string][]string {
	out := map[string][]string{}
	add := func(cmd *cobra.Command) {
		seen := map[string]bool{}
		visit := func(fl *pflagFlag) {
			if fl.Name != "help" && !seen[fl.Name] {
				seen[fl.Name] = true
				out[fl.Name] = append(out[fl.Name], cmd.Name())
			}
		}
		cmd.Flags().VisitAll(visit)
		cmd.PersistentFlags().VisitAll(visit)
	}
	add(newServerCmd())
	add(newMigrateCmd())
	add(newTokenCmd())
	return out
}

// codeEnvLiterals returns every string literal of forge's non-test Go code
// that is a FORGE_ variable name (or a prefix ending in _), with where.
func codeEnvLiterals(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	root := "../.."
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (name == "testdata" || strings.HasPrefix(name, ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		if pkg := f.Name.Name; strings.HasPrefix(pkg, "test") || strings.HasSuffix(pkg, "test") {
			return nil // a test-support package (pgtest, testwait): its variables are the tests', not forge's
		}
		ast.Inspect(f, func(n ast.Node) bool {
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err == nil && envLiteral.MatchString(s) {
				if _, seen := out[s]; !seen {
					rel, _ := filepath.Rel(root, path)
					out[s] = fmt.Sprintf("%s:%d", rel, fset.Position(lit.Pos()).Line)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// jobVarDocumented reports whether literal s is a variable of the
// job-variables table: exactly, or the prefix of one written
// FORGE_X_<NAME>.
func jobVarDocumented(jobVars map[string]int, s string) bool {
	if _, ok := jobVars[s]; ok {
		return true
	}
	for v := range jobVars {
		if i := strings.IndexByte(v, '<'); i > 0 && v[:i] == s {
			return true
		}
	}
	return false
}

// suggestRow is the row to add for a setting, from what the code says.
func suggestRow(key, env, flag string) string {
	def := "DEFAULT"
	if key != "" {
		c := defaultServerConfig()
		for _, l := range configLeaves() {
			if l.key == key {
				if v := fieldValue(&c, l.field); !v.IsZero() {
					def = "`" + formatSetting(v) + "`"
				}
			}
		}
	}
	cell := func(s string) string {
		if s == "" {
			return ""
		}
		return "`" + s + "`"
	}
	return fmt.Sprintf("| %s | %s | %s | %s | MEANING |", cell(key), cell(env), cell(flag), def)
}

func TestSettingsTable(t *testing.T) {
	rows, jobVars := readSettingsDoc(t)
	envs := envSettings(t)
	flagSets := serverFlagSettings(t)
	flags := configFlags()
	literals := codeEnvLiterals(t)

	envOf := map[string]string{}  // key -> variable
	flagOf := map[string]string{} // key -> server flag
	for env, l := range envs {
		if l.key != "" {
			envOf[l.key] = env
		}
	}
	for fl, l := range flagSets {
		if l.key != "" {
			flagOf[l.key] = "--" + fl
		}
	}
	byKey := map[string]settingRow{}
	byEnv := map[string]settingRow{}
	byFlag := map[string]settingRow{}
	for _, r := range rows {
		if r.key != "" {
			if prev, dup := byKey[r.key]; dup {
				t.Errorf("%s:%d: file key `%s` has a row already, on line %d", settingsDocName, r.line, r.key, prev.line)
			}
			byKey[r.key] = r
		}
		if r.env != "" {
			if prev, dup := byEnv[r.env]; dup {
				t.Errorf("%s:%d: `%s` has a row already, on line %d", settingsDocName, r.line, r.env, prev.line)
			}
			byEnv[r.env] = r
		}
		for _, f := range r.flags {
			byFlag[f.String()] = r
		}
	}

	// Every file key has a row, with its variable and flag.
	c := defaultServerConfig()
	keys := map[string]leaf{}
	for _, l := range configLeaves() {
		if l.key == "" {
			continue
		}
		keys[l.key] = l
		r, ok := byKey[l.key]
		if !ok {
			t.Errorf("%s has no row for the file key `%s`. Add to its table \"Every setting\":\n%s",
				settingsDocName, l.key, suggestRow(l.key, envOf[l.key], flagOf[l.key]))
			continue
		}
		if env := envOf[l.key]; r.env != env {
			t.Errorf("%s:%d: the row of `%s` names the variable %q, but the code sets it from %q:\n%s",
				settingsDocName, r.line, l.key, r.env, env, suggestRow(l.key, env, flagOf[l.key]))
		}
		// Defaults: a literal must be the code's; words mean the value is
		// decided elsewhere, so the configuration leaves it zero.
		v := fieldValue(&c, l.field)
		switch {
		case r.literal && formatSetting(v) != r.defLit:
			t.Errorf("%s:%d: the default of `%s` is written `%s`, but the code's is `%s`", settingsDocName, r.line, l.key, r.defLit, formatSetting(v))
		case !r.literal && !v.IsZero():
			t.Errorf("%s:%d: the default of `%s` is written in words (%s), but the code sets `%s`: write that", settingsDocName, r.line, l.key, r.def, formatSetting(v))
		}
	}
	for _, r := range rows {
		if r.key != "" {
			if _, ok := keys[r.key]; !ok {
				t.Errorf("%s:%d: the file key `%s` is not a key of the configuration (serverConfig): remove the row or fix the key", settingsDocName, r.line, r.key)
			}
		}
	}

	// Every FORGE_ variable of the code is a setting or a variable forge
	// sets; every documented one is in the code.
	names := make([]string, 0, len(literals))
	for s := range literals {
		names = append(names, s)
	}
	sort.Strings(names)
	for _, s := range names {
		if _, ok := byEnv[s]; ok || jobVarDocumented(jobVars, s) {
			continue
		}
		if l, ok := envs[s]; ok && l.key != "" {
			if _, ok := byKey[l.key]; !ok {
				continue // reported with its file key above
			}
			t.Errorf("%s (%s) has no row in %s. Add to its table \"Every setting\":\n%s",
				s, literals[s], settingsDocName, suggestRow(l.key, s, flagOf[l.key]))
		} else {
			t.Errorf("%s (%s) is in neither table of %s. If forge reads it, add to \"Every setting\":\n%s\n"+
				"if forge sets it for jobs or commands, add to \"Variables forge sets\":\n| `%s` | MEANING |",
				s, literals[s], settingsDocName, suggestRow("", s, "forge COMMAND --FLAG"), s)
		}
	}
	for _, r := range rows {
		if r.env == "" {
			continue
		}
		if _, ok := literals[r.env]; !ok {
			t.Errorf("%s:%d: `%s` is not in forge's code: remove the row or fix the name", settingsDocName, r.line, r.env)
		}
		if l, ok := envs[r.env]; ok && l.key != r.key {
			t.Errorf("%s:%d: `%s` sets the file key `%s` in the code, not `%s`", settingsDocName, r.line, r.env, l.key, r.key)
		}
	}
	for v, line := range jobVars {
		s := v
		if i := strings.IndexByte(v, '<'); i > 0 {
			s = v[:i]
		}
		if _, ok := literals[s]; !ok {
			t.Errorf("%s:%d: `%s` is not in forge's code: remove the row or fix the name", settingsDocName, line, v)
		}
	}

	// Every flag of forge server, migrate and token has a row (as --name
	// when forge server has it, else as forge CMD --name); a server flag's
	// row is the setting it sets; every flag in the table exists.
	root := newRootCmd(nil, nil, nil)
	flagNames := make([]string, 0, len(flags))
	for name := range flags {
		flagNames = append(flagNames, name)
	}
	sort.Strings(flagNames)
	for _, name := range flagNames {
		for _, cmd := range flags[name] {
			ref := flagRef{name: name}
			if !slices.Contains(flags[name], "server") {
				ref.cmd = cmd
			}
			r, ok := byFlag[ref.String()]
			if !ok {
				l := flagSets[name]
				env := ""
				if l.key != "" {
					env = envOf[l.key]
				}
				t.Errorf("the flag --%s of forge %s has no row in %s. Add to its table \"Every setting\":\n%s",
					name, cmd, settingsDocName, suggestRow(l.key, env, ref.String()))
				break
			}
			if l, ok := flagSets[name]; ok && l.key != r.key {
				t.Errorf("%s:%d: forge server --%s sets the file key `%s`, not `%s`", settingsDocName, r.line, name, l.key, r.key)
			}
		}
	}
	for _, r := range rows {
		for _, f := range r.flags {
			cmdName := f.cmd
			if cmdName == "" {
				cmdName = "server"
			}
			cmd, _, err := root.Find([]string{cmdName})
			if err != nil || cmd == root || cmd.Flags().Lookup(f.name) == nil && cmd.PersistentFlags().Lookup(f.name) == nil {
				t.Errorf("%s:%d: %s is not a flag of forge", settingsDocName, r.line, f)
			}
		}
	}
}

// TestSettingsTableParser: the table test reads what it should, so its
// own failures cannot hide.
func TestSettingsTableParser(t *testing.T) {
	rows, jobVars := readSettingsDoc(t)
	var addr, lease *settingRow
	for i := range rows {
		switch {
		case rows[i].key == "addr":
			addr = &rows[i]
		case rows[i].env == "FORGE_SERVER":
			lease = &rows[i]
		}
	}
	if addr == nil || addr.env != "FORGE_ADDR" || len(addr.flags) != 1 || addr.flags[0] != (flagRef{name: "addr"}) || !addr.literal || addr.defLit != ":8080" {
		t.Errorf("the row of addr reads as %+v", addr)
	}
	if lease == nil || len(lease.flags) != 1 || lease.flags[0] != (flagRef{cmd: "lease", name: "server"}) {
		t.Errorf("the row of FORGE_SERVER reads as %+v", lease)
	}
	if _, ok := jobVars["FORGE_STATUS_URL"]; !ok || !jobVarDocumented(jobVars, "FORGE_LEASE_") {
		t.Errorf("the variables forge sets read as %v", jobVars)
	}
	envs := envSettings(t)
	if envs["FORGE_BUILDS_PER_REPO"].key != "builds.per_repo" || envs["FORGE_MIGRATE"] != (leaf{key: "", field: "Migrate"}) {
		t.Errorf("the variables applyEnv reads map to %v", envs)
	}
	if got := serverFlagSettings(t)["public-url"].key; got != "public_url" {
		t.Errorf("--public-url sets %q, want public_url", got)
	}
	if got := codeEnvLiterals(t)["FORGE_SERVER"]; !strings.HasPrefix(got, "cmd/forge/lease.go:") {
		t.Errorf("FORGE_SERVER found at %q, want cmd/forge/lease.go", got)
	}
}
