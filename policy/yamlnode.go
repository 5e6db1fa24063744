package policy

import (
	"bytes"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/portfw/portfw/model"
)

// The YAML-node toolkit the schema walk is written with: one document,
// mappings whose keys are known, lists, typed scalars, aliases followed
// safely, and errors placed at the node they are about.

type parser struct {
	file   string
	dropIn bool // a policy.d file: no settings
	errs   Errors
	// lineOff is added to every line: the text parsed begins at line
	// lineOff+1 of the file (Reparser's batches).
	lineOff int
}

func (p *parser) pos(n *yaml.Node) model.Pos {
	// Nodes yaml.v3 makes up have no position; an error must still point
	// somewhere in the file.
	return model.Pos{File: p.file, Line: max(n.Line, 1) + p.lineOff, Col: max(n.Column, 1)}
}

func (p *parser) errorf(n *yaml.Node, field fieldPath, format string, args ...any) {
	p.errs.add(&Error{Pos: p.pos(n), Field: field.String(), Msg: fmt.Sprintf(format, args...)})
}

// document decodes data into exactly one YAML document and returns its
// root node, or nil after recording why there is none.
func (p *parser) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := decode(dec, &doc); err != nil {
		if err == io.EOF {
			p.errorf(&doc, pathOf(""), `empty policy; it must start with "version: 1"`)
		} else {
			p.yamlError(err)
		}
		return nil
	}
	var extra yaml.Node
	switch err := decode(dec, &extra); {
	case err == io.EOF:
	case err != nil:
		p.yamlError(err)
		return nil
	default:
		p.errorf(&extra, pathOf(""), "more than one YAML document; a policy is a single document")
		return nil
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		p.errorf(&doc, pathOf(""), `empty policy; it must start with "version: 1"`)
		return nil
	}
	body := doc.Content[0]
	if n := expandedSize(body, map[*yaml.Node]int{}); n > 2*rawSize(body)+100_000 {
		// Walking follows aliases, so a small file could otherwise cost
		// quadratic time (yaml.v3 guards value decoding the same way).
		p.errorf(body, pathOf(""), "anchors and aliases expand to %d nodes; write the policy out", n)
		return nil
	}
	return body
}

// decode turns a panic inside yaml.v3 into an error: the policy file is
// input, and no input may crash the daemon.
func decode(dec *yaml.Decoder, n *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: %v", r)
		}
	}()
	return dec.Decode(n)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): `)

// yamlError records a syntax error. yaml.v3 gives only a line, and none
// for problems on the first line.
func (p *parser) yamlError(err error) {
	msg, line := err.Error(), 1
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		if l, err := strconv.Atoi(m[1]); err == nil && l > 0 {
			line = l
		}
		msg = msg[len(m[0]):]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	p.errs.add(&Error{Pos: model.Pos{File: p.file, Line: line, Col: 1}, Msg: "not valid YAML: " + msg})
}

func rawSize(n *yaml.Node) int {
	size := 1
	for _, c := range n.Content {
		size += rawSize(c)
	}
	return size
}

// expandedSize counts nodes as a walk that follows aliases would see them.
// An alias back into an enclosing node counts once: the walk never
// descends further than the schema, so cycles cannot make it loop.
func expandedSize(n *yaml.Node, memo map[*yaml.Node]int) int {
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return 1
		}
		return expandedSize(n.Alias, memo)
	}
	if len(n.Content) == 0 {
		return 1
	}
	if size, ok := memo[n]; ok {
		return size
	}
	memo[n] = 1 // in progress
	size := 1
	for _, c := range n.Content {
		size += expandedSize(c, memo)
		if size > 1<<40 {
			break
		}
	}
	memo[n] = size
	return size
}

func deref(n *yaml.Node) *yaml.Node {
	for i := 0; i < 8 && n.Kind == yaml.AliasNode && n.Alias != nil; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	n = deref(n)
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe says what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	n = deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
	default:
		return "an alias"
	}
	v := n.Value
	if len(v) > 40 {
		v = v[:40] + "..."
	}
	switch n.ShortTag() {
	case "!!null":
		return "nothing"
	case "!!str":
		return fmt.Sprintf("the string %q", v)
	case "!!int", "!!float":
		return "the number " + v
	case "!!bool":
		return v
	}
	return fmt.Sprintf("%q (tagged %s)", v, n.Tag)
}

func (p *parser) wrongType(n *yaml.Node, field fieldPath, want string) {
	p.errorf(n, field, "expected %s, got %s", want, describe(n))
}

// fieldPath is where a field of the policy is, for an error message:
// "reservations[3].owner.users[1]". Parsing 10k reservations made some 20
// paths for each, an eighth of the parse's allocations, for errors that
// mostly never come: a fieldPath is kept in its pieces, the names constants,
// and made into text only for an error.
type fieldPath struct {
	base      string // "reservations", "settings.log", ...
	sub, sub2 string // ".owner", ".users": appended to base[res]
	res, item int    // the index after base, and after the last piece; -1 for none
}

func pathOf(s string) fieldPath { return fieldPath{base: s, res: -1, item: -1} }

// dot is p with a field's name (".ports") appended.
func (p fieldPath) dot(name string) fieldPath {
	switch {
	case p.item >= 0 || p.sub2 != "":
		return pathOf(p.String() + name) // deeper than a reservation's fields go
	case p.sub == "":
		p.sub = name
	default:
		p.sub2 = name
	}
	return p
}

// at is p with the index of a list's entry appended.
func (p fieldPath) at(i int) fieldPath {
	switch {
	case p.item >= 0:
		return pathOf(p.String()).at(i)
	case p.res < 0 && p.sub == "":
		p.res = i
	default:
		p.item = i
	}
	return p
}

func (p fieldPath) String() string {
	b := make([]byte, 0, 64)
	b = append(b, p.base...)
	if p.res >= 0 {
		b = strconv.AppendInt(append(b, '['), int64(p.res), 10)
		b = append(b, ']')
	}
	b = append(append(b, p.sub...), p.sub2...)
	if p.item >= 0 {
		b = strconv.AppendInt(append(b, '['), int64(p.item), 10)
		b = append(b, ']')
	}
	return string(b)
}

// mapping checks that n is a mapping whose keys are all in keys, each at
// most once, and returns its values by key. ok is false when n is not a
// mapping at all.
func (p *parser) mapping(n *yaml.Node, field fieldPath, want string, keys []string) (vals fields, ok bool) {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.wrongType(n, field, want)
		return nil, false
	}
	vals = make(fields, 0, min(len(n.Content)/2, len(keys)))
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := deref(n.Content[i]), n.Content[i+1]
		switch {
		case k.Kind != yaml.ScalarNode:
			p.errorf(k, field, "expected a key, got %s", describe(k))
		case k.ShortTag() == "!!merge":
			p.errorf(k, field, "merge keys (<<) are not supported; write the fields out")
		case !slices.Contains(keys, k.Value):
			msg := fmt.Sprintf("unknown key %q", k.Value)
			if s := suggest(k.Value, keys); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			p.errorf(k, field, "%s; valid keys are %s", msg, strings.Join(keys, ", "))
		case vals.get(k.Value) != nil:
			p.errorf(k, field, "duplicate key %q (first at line %d)", k.Value, keyLine(n, k.Value))
		default:
			vals = append(vals, keyValue{k.Value, v})
		}
	}
	return vals, true
}

// fields are a mapping's values by key, each key at most once and one of
// a handful (a slice: a map per mapping was a tenth of a parse).
type fields []keyValue

type keyValue struct {
	key string
	val *yaml.Node
}

// get is the value of key, or nil.
func (f fields) get(key string) *yaml.Node {
	for _, e := range f {
		if e.key == key {
			return e.val
		}
	}
	return nil
}

// keyNode is the first key named key in mapping n, or n when none is.
func keyNode(n *yaml.Node, key string) *yaml.Node {
	n = deref(n)
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := deref(n.Content[i]); k.Kind == yaml.ScalarNode && k.Value == key {
			return k
		}
	}
	return n
}

// keyLine is the line of the first key named key in mapping n.
func keyLine(n *yaml.Node, key string) int {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := deref(n.Content[i]); k.Kind == yaml.ScalarNode && k.Value == key {
			return k.Line
		}
	}
	return 0
}

// sequence returns the items of a list, or nil after recording an error.
func (p *parser) sequence(n *yaml.Node, field fieldPath, want string) ([]*yaml.Node, bool) {
	n = deref(n)
	if n.Kind != yaml.SequenceNode {
		p.wrongType(n, field, want)
		return nil, false
	}
	return n.Content, true
}

// scalar returns the text of a scalar whose tag is one of tags.
func (p *parser) scalar(n *yaml.Node, field fieldPath, want string, tags ...string) (string, bool) {
	n = deref(n)
	if n.Kind != yaml.ScalarNode || !slices.Contains(tags, n.ShortTag()) {
		p.wrongType(n, field, want)
		return "", false
	}
	return n.Value, true
}

// boolean decodes a scalar tagged !!bool.
func (p *parser) boolean(n *yaml.Node, field fieldPath, want string) (bool, bool) {
	if _, ok := p.scalar(n, field, want, "!!bool"); !ok {
		return false, false
	}
	var b bool
	if err := deref(n).Decode(&b); err != nil {
		p.wrongType(n, field, want)
		return false, false
	}
	return b, true
}

// suggest returns the key closest to a misspelt one, if any is close.
func suggest(s string, keys []string) string {
	best, bestDist := "", 3
	for _, k := range keys {
		if d := editDistance(s, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
