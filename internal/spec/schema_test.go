package spec

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/goccy/go-yaml/ast"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// TestSchemaCopyInDocs checks that docs/forge.schema.json, the copy users
// point their editors at, is the schema the tests check.
func TestSchemaCopyInDocs(t *testing.T) {
	docs, err := os.ReadFile("../../docs/forge.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(docs, Schema) {
		t.Fatalf("docs/forge.schema.json differs from internal/spec/forge.schema.json: copy it over")
	}
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(Schema))
	if err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource("forge.schema.json", doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile("forge.schema.json")
	if err != nil {
		t.Fatalf("schema does not compile: %v", err)
	}
	return sch
}

var reWant = regexp.MustCompile(`(?m)^# want: (.*)$`)

// TestSchemaAgreesWithParser runs every sample through both the schema and
// Parse+Compile: valid samples must pass both; invalid ones must fail both
// with the problems their `# want:` lines name, except those marked
// `# schema: accepts`, whose problem (a cycle, an unknown job) a schema
// cannot see.
func TestSchemaAgreesWithParser(t *testing.T) {
	sch := compileSchema(t)
	var paths []string
	for _, g := range []string{"../../examples/*.yml", "testdata/valid/*.yml", "testdata/invalid/*.yml", "../../.forge.yml"} {
		m, _ := filepath.Glob(g)
		paths = append(paths, m...)
	}
	if len(paths) < 20 {
		t.Fatalf("found only %d samples", len(paths))
	}
	for _, path := range paths {
		t.Run(path, func(t *testing.T) {
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			wants := reWant.FindAllStringSubmatch(string(data), -1)
			invalid := strings.Contains(path, "invalid")
			if invalid && len(wants) == 0 {
				t.Fatalf("an invalid sample needs `# want:` lines")
			}
			parseErr := parseAndCompileAll(path, data)
			if !invalid && parseErr != nil {
				t.Fatalf("parser rejects a valid sample:\n%s", Report(parseErr))
			}
			if invalid {
				if parseErr == nil {
					t.Fatalf("parser accepts an invalid sample")
				}
				got := parseErr.Error()
				for _, w := range wants {
					if want := path + ":" + w[1]; !strings.Contains(got, want) {
						t.Errorf("problems lack\n  %s\ngot\n  %s", want, strings.ReplaceAll(got, "\n", "\n  "))
					}
				}
				if n := strings.Count(got, "\n") + 1; n != len(wants) {
					t.Errorf("got %d problems, want %d:\n%s", n, len(wants), got)
				}
			}

			v, convErr := yamlToJSON(data)
			if convErr != nil {
				if !invalid || strings.Contains(string(data), "# schema: accepts") {
					t.Fatalf("cannot convert the sample to JSON: %v", convErr)
				}
				return // not even YAML: nothing for a schema to accept
			}
			schemaErr := sch.Validate(v)
			switch {
			case !invalid && schemaErr != nil:
				t.Fatalf("schema rejects a valid sample: %v", schemaErr)
			case invalid && strings.Contains(string(data), "# schema: accepts"):
				if schemaErr != nil {
					t.Fatalf("sample marked `schema: accepts` is rejected by the schema: %v", schemaErr)
				}
			case invalid && schemaErr == nil:
				t.Fatalf("schema accepts an invalid sample the parser rejects:\n%s", Report(parseErr))
			}
		})
	}
}

// parseAndCompileAll is what `forge lint` checks: the file parses and
// each of its actions compiles.
func parseAndCompileAll(name string, data []byte) error {
	f, err := Parse(name, data)
	if err != nil {
		return err
	}
	for _, a := range f.Actions() {
		if _, err := Compile(f, Options{Action: a}); err != nil {
			return err
		}
	}
	return nil
}

// yamlToJSON converts YAML to the values jsonschema validates, resolving
// aliases and merge keys as the parser does. Duplicate keys and tabs make
// it fail (JSON cannot hold them).
func yamlToJSON(data []byte) (any, error) {
	ps := newProblems("x", data)
	body := parseYAML(ps, data)
	if err := ps.err(); err != nil {
		return nil, err
	}
	r := &reader{ps: ps}
	r.collectAnchors(body)
	v := r.toJSON(body)
	if err := ps.err(); err != nil {
		return nil, err
	}
	// Round-trip through encoding/json so numbers are json.Number.
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	return jsonschema.UnmarshalJSON(bytes.NewReader(b))
}

func (r *reader) toJSON(n ast.Node) any {
	v := r.resolve(n)
	switch x := v.(type) {
	case nil, *ast.NullNode:
		return nil
	case *ast.MappingNode, *ast.MappingValueNode:
		entries, _ := r.mapping(x, "a mapping", "duplicate key `%s` (first at line %d)")
		out := map[string]any{}
		for _, e := range entries {
			out[e.key] = r.toJSON(e.value)
		}
		return out
	case *ast.SequenceNode:
		out := []any{}
		for _, item := range x.Values {
			out = append(out, r.toJSON(item))
		}
		return out
	case *ast.BoolNode:
		return x.Value
	case *ast.IntegerNode:
		return json.Number(strconv.FormatInt(toInt64(x.Value), 10))
	case *ast.FloatNode:
		return x.Value
	}
	s, _ := scalarText(v)
	return s
}

func toInt64(v any) int64 {
	switch x := v.(type) {
	case int64:
		return x
	case uint64:
		return int64(x)
	}
	return 0
}

// TestDocsNameEveryKey keeps docs/spec.md and the parser in step: every
// key the parser knows is documented.
func TestDocsNameEveryKey(t *testing.T) {
	doc, err := os.ReadFile("../../docs/spec.md")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, list := range [][]string{topKeys, jobKeys, stepKeys, serviceKeys, resKeys, whenKeys, limitKeys, reportKeys, onEventNames} {
		keys = append(keys, list...)
	}
	keys = append(keys, "branches", "tags", "run")
	for _, k := range keys {
		if !strings.Contains(string(doc), "`"+k+"`") && !strings.Contains(string(doc), k+":") {
			t.Errorf("docs/spec.md does not mention `%s`", k)
		}
	}
}
