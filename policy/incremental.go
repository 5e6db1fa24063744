package policy

import (
	"bytes"
	"slices"

	"gopkg.in/yaml.v3"
)

// Reparser parses successive versions of one policy file, reusing the
// reservations whose text did not change: the daemon reloads a 10k
// reservation file after a one-line edit by parsing that one reservation
// (yaml.v3's decoder is most of a full parse, 150 ms at 10k).
//
// The result is always what Parse would return. The shortcut is taken only
// for the plain layout of a policy: the header (version, settings, the
// "reservations:" key) unchanged and byte for byte the same, reservations
// last, each a block-sequence item whose "- " begins its line at the one
// indentation, no anchors or aliases anywhere. Anything else, and any
// version with a problem in it, is parsed whole, so errors and their
// positions are Parse's own.
type Reparser struct {
	file   string
	dropIn bool
	last   *layout // of the last version parsed; nil: parse in full
	// Reused counts the versions parsed by reusing unchanged reservations
	// (for tests and benchmarks).
	Reused int
}

// layout is what the shortcut needs of the last version.
type layout struct {
	header []byte
	indent int            // the column of the items' "- "
	chunks map[string]int // item text -> its index in pol.Reservations
	texts  []string       // the keys of chunks, by index (to store them again)
	lines  []int          // the line each item starts at, by index
	pol    *Policy
}

// NewReparser returns a Reparser for the file named filename.
func NewReparser(filename string) *Reparser { return &Reparser{file: filename} }

// NewDropInReparser returns a Reparser for a drop-in (see ParseDropIn).
func NewDropInReparser(filename string) *Reparser { return &Reparser{file: filename, dropIn: true} }

// DropIn reports whether r parses a drop-in.
func (r *Reparser) DropIn() bool { return r.dropIn }

// Parse parses data, a new version of the file.
func (r *Reparser) Parse(data []byte) (*Policy, error) {
	if r.last != nil && len(data) <= MaxSize {
		if pol, ok := r.last.reparse(r.file, data); ok {
			r.Reused++
			return pol, nil
		}
	}
	p := &parser{file: r.file, dropIn: r.dropIn}
	pol, body := p.parse(data)
	if err := p.errs.Err(); err != nil {
		r.last = nil
		return nil, err
	}
	r.last = layoutOf(data, body, pol)
	return pol, nil
}

// layoutOf records the last version's layout, or nil when it is not the
// plain one.
func layoutOf(data []byte, body *yaml.Node, pol *Policy) *layout {
	if hasAnchors(body) || len(body.Content) < 2 {
		return nil
	}
	key, seq := body.Content[len(body.Content)-2], body.Content[len(body.Content)-1]
	if key.Value != "reservations" || seq.Kind != yaml.SequenceNode || seq.Style&yaml.FlowStyle != 0 ||
		len(seq.Content) == 0 || len(seq.Content) != len(pol.Reservations) {
		return nil
	}
	lines := lineStarts(data)
	n := len(seq.Content)
	l := &layout{indent: -1, chunks: make(map[string]int, n), texts: make([]string, n), lines: make([]int, n), pol: pol}
	starts := make([]int, len(seq.Content))
	for i, item := range seq.Content {
		if item.Line < 1 || item.Line > len(lines) {
			return nil
		}
		start := lines[item.Line-1]
		indent, ok := itemStart(data[start:])
		if !ok || (l.indent >= 0 && indent != l.indent) {
			return nil
		}
		l.indent = indent
		starts[i] = start
	}
	l.header = bytes.Clone(data[:starts[0]])
	for i, start := range starts {
		end := len(data)
		if i+1 < len(starts) {
			end = starts[i+1]
		}
		text := string(data[start:end])
		l.chunks[text], l.texts[i], l.lines[i] = i, text, seq.Content[i].Line
	}
	return l
}

// reparse parses data by reusing unchanged items; ok is false when the
// shortcut cannot be taken or found a problem (the caller parses in full).
func (l *layout) reparse(file string, data []byte) (*Policy, bool) {
	if !bytes.HasPrefix(data, l.header) {
		return nil, false
	}
	line := bytes.Count(l.header, []byte("\n")) + 1
	rest := data[len(l.header):]
	n := len(l.pol.Reservations)
	pol := &Policy{File: file, Settings: l.pol.Settings, Reservations: make([]ReservationSpec, 0, n)}
	next := &layout{header: l.header, indent: l.indent, chunks: make(map[string]int, n), texts: make([]string, 0, n),
		lines: make([]int, 0, n), pol: pol}
	for i := 0; len(rest) > 0; i++ {
		n, ok := chunkLen(rest, l.indent)
		if !ok {
			return nil, false
		}
		text := rest[:n]
		var spec ReservationSpec
		var key string
		if j, ok := l.chunks[string(text)]; ok {
			spec, key = l.pol.Reservations[j], l.texts[j]
			if l.lines[j] != line {
				// Moved: a copy with its positions moved (the lists are
				// shared otherwise; nothing changes a parsed policy).
				spec = spec.clone()
				spec.shift(line - l.lines[j])
			}
		} else {
			if spec, ok = parseItem(file, text, i); !ok {
				return nil, false
			}
			spec.shift(line - 1)
			key = string(text)
		}
		spec.Index = i
		next.chunks[key] = len(pol.Reservations)
		next.texts = append(next.texts, key)
		next.lines = append(next.lines, line)
		pol.Reservations = append(pol.Reservations, spec)
		line += bytes.Count(text, []byte("\n"))
		rest = rest[n:]
	}
	if len(pol.Reservations) == 0 || duplicateNames(pol.Reservations) {
		return nil, false
	}
	*l = *next
	return pol, true
}

// parseItem parses one item's text on its own, its lines counted from the
// item's first; ok is false for anything but one plain, valid reservation.
func parseItem(file string, text []byte, i int) (ReservationSpec, bool) {
	p := &parser{file: file}
	var doc yaml.Node
	if err := yaml.Unmarshal(text, &doc); err != nil || len(doc.Content) != 1 {
		return ReservationSpec{}, false
	}
	seq := doc.Content[0]
	if seq.Kind != yaml.SequenceNode || len(seq.Content) != 1 || hasAnchors(seq) {
		return ReservationSpec{}, false
	}
	spec, _, ok := p.reservation(seq.Content[0], index("reservations", i))
	if !ok || p.errs.Len() > 0 {
		return ReservationSpec{}, false
	}
	return spec, true
}

// duplicateNames reports whether two reservations share a name (Parse
// reports it, with both places).
func duplicateNames(rs []ReservationSpec) bool {
	seen := make(map[string]bool, len(rs))
	for _, r := range rs {
		if seen[r.Name] {
			return true
		}
		seen[r.Name] = true
	}
	return false
}

// shift moves every position in the reservation by lines.
func (r *ReservationSpec) shift(lines int) {
	r.Pos.Line += lines
	r.namePos.Line += lines
	for i := range r.Users {
		r.Users[i].Pos.Line += lines
	}
	for i := range r.Groups {
		r.Groups[i].Pos.Line += lines
	}
	for i := range r.Units {
		r.Units[i].Pos.Line += lines
	}
	for i := range r.Cgroups {
		r.Cgroups[i].Pos.Line += lines
	}
}

// clone copies the reservation's lists, so the Reparser's copy and the
// returned one never share what a caller may change.
func (r ReservationSpec) clone() ReservationSpec {
	r.Protocols = slices.Clone(r.Protocols)
	r.Ports = slices.Clone(r.Ports)
	r.Users = slices.Clone(r.Users)
	r.Groups = slices.Clone(r.Groups)
	r.Units = slices.Clone(r.Units)
	r.Cgroups = slices.Clone(r.Cgroups)
	r.Addresses = slices.Clone(r.Addresses)
	return r
}

// chunkLen is the length of the item at the start of b: up to the next line
// that begins an item at indent, or the end. ok is false when b does not
// begin with an item at indent, or a line in it is less indented than the
// items without being blank or a comment (something other than
// reservations follows).
func chunkLen(b []byte, indent int) (int, bool) {
	if in, ok := itemStart(b); !ok || in != indent {
		return 0, false
	}
	n := bytes.IndexByte(b, '\n') + 1
	if n == 0 {
		return len(b), true
	}
	for n < len(b) {
		line := b[n:]
		end := bytes.IndexByte(line, '\n') + 1
		if end == 0 {
			end = len(line)
		}
		if in, ok := itemStart(line); ok && in == indent {
			return n, true
		}
		if sp := leadingSpaces(line[:end]); sp < indent+1 && !blankOrComment(line[:end]) {
			return 0, false
		}
		n += end
	}
	return n, true
}

// itemStart reports whether the line at the start of b is a block
// sequence item ("- " after spaces, or "-" ending the line) and at which
// indentation.
func itemStart(b []byte) (int, bool) {
	sp := leadingSpaces(b)
	if sp >= len(b) || b[sp] != '-' {
		return 0, false
	}
	if sp+1 < len(b) && b[sp+1] != ' ' && b[sp+1] != '\n' && b[sp+1] != '\r' {
		return 0, false // "-1", "---"
	}
	return sp, true
}

func leadingSpaces(b []byte) int {
	n := 0
	for n < len(b) && b[n] == ' ' {
		n++
	}
	return n
}

func blankOrComment(line []byte) bool {
	t := bytes.TrimLeft(line, " \t")
	return len(t) == 0 || t[0] == '#' || t[0] == '\n' || t[0] == '\r'
}

func lineStarts(data []byte) []int {
	starts := []int{0}
	for i, c := range data {
		if c == '\n' && i+1 < len(data) {
			starts = append(starts, i+1)
		}
	}
	return starts
}

func hasAnchors(n *yaml.Node) bool {
	if n.Anchor != "" || n.Kind == yaml.AliasNode {
		return true
	}
	for _, c := range n.Content {
		if hasAnchors(c) {
			return true
		}
	}
	return false
}
