// Package policy reads portfw's YAML policy ("port P belongs to user U"):
// it parses and validates the text, and nothing else. It never looks at the
// host, so user and group names stay names here; package resolve turns a
// Policy into the ownership model (package model).
//
// Every problem is reported, each as file:line:col: field: message, because
// an admin fixing a policy should not have to run portfw once per mistake;
// the number of problems kept is capped (MaxErrors) so that a huge broken
// file cannot exhaust memory.
//
// The package is three things: a YAML-node toolkit (yamlnode.go: one
// document, mappings with known keys, lists, typed scalars, aliases
// expanded safely), the schema walk (schema.go), and the value parsers it
// calls (values.go: ports, id ranges, rates, addresses).
package policy
