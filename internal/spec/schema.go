package spec

import _ "embed"

// Schema is the JSON Schema (draft 2020-12) of the spec format, for
// editors; docs/forge.schema.json is a copy, kept equal by a test. The
// parser is the authority: the schema accepts a few files the parser
// rejects (cycles in needs, unknown needs, misspelt action names).
//
//go:embed forge.schema.json
var Schema []byte
