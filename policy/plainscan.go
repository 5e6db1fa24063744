package policy

import "gopkg.in/yaml.v3"

// scanItem builds the node tree that yaml.v3 decodes from text, one
// reservation of the plain layout (a block sequence item), when the item is
// written in the simple forms portfw's examples and generators use: keys
// with inline values or one nested mapping of them (owner:), flow lists
// and mappings on one line, plain or quoted scalars without escapes, ASCII,
// comments. line is the line text begins at. ok is false for anything
// else, or anything it is not sure of, and the caller decodes the text with
// yaml.v3: the scanner never decides what YAML means, it only recognises
// forms whose meaning is plain (FuzzScanItem compares it with yaml.v3).
//
// A 10k reservation file is parsed about eight times faster this way:
// yaml.v3's decoder was two thirds of every apply's parse.
func scanItem(text []byte, line int, slab *nodeSlab) (*yaml.Node, bool) {
	for _, c := range text {
		// Tabs, carriage returns, control and non-ASCII bytes: columns
		// would count differently, or YAML treats them specially.
		if c < ' ' && c != '\n' || c >= 0x7f {
			return nil, false
		}
	}
	s := itemScanner{slab: slab}
	var item *yaml.Node // the reservation's mapping
	var nested *yaml.Node
	keyCol, nestCol := 0, 0 // the column (0-based) of item's keys, of nested's
	for off := 0; off < len(text); line++ {
		end := off
		for end < len(text) && text[end] != '\n' {
			end++
		}
		l := text[off:end]
		off = end + 1
		in := leadingSpaces(l)
		if in == len(l) || l[in] == '#' {
			continue // blank or a comment
		}
		s.line, s.text = line, l
		switch {
		case item == nil:
			if l[in] != '-' || in+2 >= len(l) || l[in+1] != ' ' {
				return nil, false
			}
			if l[in+2] == '{' {
				s.pos = in + 2
				n, ok := s.flowMapping(0)
				if !ok || !s.lineEnd() {
					return nil, false
				}
				item, keyCol = n, -1 // nothing may follow
				continue
			}
			keyCol = in + 2
			item = s.node(yaml.MappingNode, 0, "", keyCol)
			if !s.entry(item, keyCol) {
				return nil, false
			}
		case in == keyCol:
			if s.pending.Kind == 0 {
				return nil, false // the key before has no value (null)
			}
			nested = nil
			if !s.entry(item, keyCol) {
				return nil, false
			}
		case in > keyCol && keyCol >= 0 && nested == nil && s.pending != nil && s.pending.Kind == 0:
			// The first key of a mapping under the key before.
			nested, nestCol = s.pending, in
			*nested = yaml.Node{Kind: yaml.MappingNode, Line: line, Column: in + 1}
			fallthrough
		case nested != nil && in == nestCol:
			if !s.entry(nested, nestCol) || s.pending.Kind == 0 {
				return nil, false // nothing deeper than owner's fields
			}
		default:
			return nil, false
		}
	}
	if item == nil || s.pending != nil && s.pending.Kind == 0 {
		return nil, false // empty, or a key without a value (null)
	}
	return item, true
}

// nodeSlab hands out nodes from blocks, not one allocation each, and
// hands the same blocks out again after reset.
type nodeSlab struct {
	blocks [][]yaml.Node
	block  int // the block in use
	used   int // of it
}

func (sl *nodeSlab) new() *yaml.Node {
	if sl.block == len(sl.blocks) || sl.used == len(sl.blocks[sl.block]) {
		if sl.block < len(sl.blocks) {
			sl.block++
		}
		if sl.block == len(sl.blocks) {
			sl.blocks = append(sl.blocks, make([]yaml.Node, 1024))
		}
		sl.used = 0
	}
	n := &sl.blocks[sl.block][sl.used]
	sl.used++
	return n
}

// reset makes every node free again: the nodes handed out must be
// unreachable by then.
func (sl *nodeSlab) reset() { sl.block, sl.used = 0, 0 }

type itemScanner struct {
	slab    *nodeSlab
	text    []byte // the line
	line    int
	pos     int        // in text
	pending *yaml.Node // the value of the last block entry; Kind 0: none yet
}

func (s *itemScanner) node(kind yaml.Kind, style yaml.Style, value string, col int) *yaml.Node {
	n := s.slab.new()
	*n = yaml.Node{Kind: kind, Style: style, Value: value, Line: s.line, Column: col + 1}
	return n
}

// entry scans "key: value" or "key:" from column col of the line into m.
func (s *itemScanner) entry(m *yaml.Node, col int) bool {
	s.pos = col
	key, ok := s.key()
	if !ok {
		return false
	}
	s.pos++ // the ':'
	if s.pos < len(s.text) && s.text[s.pos] != ' ' {
		return false
	}
	s.spaces()
	var v *yaml.Node
	if s.pos == len(s.text) || s.text[s.pos] == '#' {
		v = s.slab.new() // filled in by the nested mapping's first line
	} else if v, ok = s.blockValue(); !ok || !s.lineEnd() {
		return false
	}
	m.Content = append(m.Content, key, v)
	s.pending = v
	return true
}

// key scans a key of letters, digits and _ up to its ':', at most 64 bytes
// (YAML's implicit keys end within 1024 characters; portfw's are short).
func (s *itemScanner) key() (*yaml.Node, bool) {
	start := s.pos
	for s.pos < len(s.text) && isKeyByte(s.text[s.pos], s.pos == start) {
		s.pos++
	}
	if s.pos == start || s.pos-start > 64 || s.pos == len(s.text) || s.text[s.pos] != ':' {
		return nil, false
	}
	return s.plain(start, s.pos), true
}

// knownKey is key as one of portfw's key strings, or "" ("name" on every
// reservation is then not another copy).
func knownKey(key []byte) string {
	switch string(key) {
	case "name":
		return "name"
	case "description":
		return "description"
	case "ports":
		return "ports"
	case "protocols":
		return "protocols"
	case "owner":
		return "owner"
	case "users":
		return "users"
	case "groups":
		return "groups"
	case "units":
		return "units"
	case "cgroups":
		return "cgroups"
	case "addresses":
		return "addresses"
	}
	return ""
}

func isKeyByte(c byte, first bool) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || !first && c >= '0' && c <= '9'
}

// blockValue scans the value of a block entry, which ends the line.
func (s *itemScanner) blockValue() (*yaml.Node, bool) {
	switch c := s.text[s.pos]; {
	case c == '[':
		return s.flowSequence()
	case c == '{':
		return s.flowMapping(0)
	case c == '"' || c == '\'':
		return s.quoted()
	case !isPlainStart(c):
		return nil, false
	}
	// A plain scalar: to the end of the line or a comment. A ':' or a
	// continuation on the next line is left to yaml.v3.
	start, end := s.pos, s.pos
	for ; s.pos < len(s.text); s.pos++ {
		c := s.text[s.pos]
		if c == ':' {
			return nil, false
		}
		if c == '#' && s.text[s.pos-1] == ' ' {
			break
		}
		if c != ' ' {
			end = s.pos + 1
		}
	}
	s.pos = end
	return s.plain(start, end), true
}

// plain makes the plain scalar text[start:end], with the tag yaml.v3
// resolves it to where that is plain to see (a name, a decimal), so that
// the parser does not resolve it again at every look.
func (s *itemScanner) plain(start, end int) *yaml.Node {
	n := s.node(yaml.ScalarNode, 0, "", start)
	if k := knownKey(s.text[start:end]); k != "" {
		n.Value = k
	} else {
		n.Value = string(s.text[start:end])
	}
	switch c := n.Value[0]; {
	case c >= '1' && c <= '9' && len(n.Value) <= 18 && isDigits(n.Value):
		n.Tag = "!!int"
	case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
		switch n.Value {
		case "true", "True", "TRUE", "false", "False", "FALSE", "null", "Null", "NULL":
		default:
			n.Tag = "!!str" // not in yaml.v3's table of words
		}
	}
	return n
}

// isPlainStart: what a plain scalar portfw writes may begin with (no YAML
// indicator: - ? : , [ ] { } # & * ! | > ' " % @ `).
func isPlainStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '.' || c == '/'
}

// quoted scans a quoted scalar that closes on its line, without escapes.
func (s *itemScanner) quoted() (*yaml.Node, bool) {
	q, start := s.text[s.pos], s.pos
	for s.pos++; s.pos < len(s.text) && s.text[s.pos] != q; s.pos++ {
		if s.text[s.pos] == '\\' {
			return nil, false
		}
	}
	if s.pos == len(s.text) || s.pos+1 < len(s.text) && s.text[s.pos+1] == q {
		return nil, false // on the next line, or '' (an escaped quote)
	}
	s.pos++
	style := yaml.DoubleQuotedStyle
	if q == '\'' {
		style = yaml.SingleQuotedStyle
	}
	n := s.node(yaml.ScalarNode, style, string(s.text[start+1:s.pos-1]), start)
	n.Tag = "!!str"
	return n, true
}

// flowScalar scans a list entry or a flow mapping's value: quoted, or plain
// of letters, digits and _ . / @ * - (no spaces in it).
func (s *itemScanner) flowScalar() (*yaml.Node, bool) {
	if s.pos == len(s.text) {
		return nil, false
	}
	if c := s.text[s.pos]; c == '"' || c == '\'' {
		return s.quoted()
	} else if !isPlainStart(c) {
		return nil, false
	}
	start := s.pos
	for s.pos < len(s.text) {
		c := s.text[s.pos]
		if !isPlainStart(c) && c != '-' && c != '@' && c != '*' {
			break
		}
		s.pos++
	}
	return s.plain(start, s.pos), true
}

// flowSequence scans [a, b, ...] on one line.
func (s *itemScanner) flowSequence() (*yaml.Node, bool) {
	seq := s.node(yaml.SequenceNode, yaml.FlowStyle, "", s.pos)
	s.pos++
	ok := s.flowEntries(']', func() bool {
		v, ok := s.flowScalar()
		seq.Content = append(seq.Content, v)
		return ok
	})
	return seq, ok
}

// flowMapping scans {key: value, ...} on one line; its values are scalars,
// lists, or (depth 0 only) mappings.
func (s *itemScanner) flowMapping(depth int) (*yaml.Node, bool) {
	m := s.node(yaml.MappingNode, yaml.FlowStyle, "", s.pos)
	s.pos++
	ok := s.flowEntries('}', func() bool {
		k, ok := s.key()
		if !ok || s.pos+1 >= len(s.text) || s.text[s.pos+1] != ' ' {
			return false
		}
		s.pos++
		s.spaces()
		var v *yaml.Node
		switch {
		case s.pos == len(s.text):
			return false
		case s.text[s.pos] == '[':
			v, ok = s.flowSequence()
		case s.text[s.pos] == '{' && depth == 0:
			v, ok = s.flowMapping(depth + 1)
		default:
			v, ok = s.flowScalar()
		}
		m.Content = append(m.Content, k, v)
		return ok
	})
	return m, ok
}

// flowEntries scans entries, separated by commas, up to close (s.pos is
// after the opening bracket); no trailing comma.
func (s *itemScanner) flowEntries(close byte, entry func() bool) bool {
	s.spaces()
	if s.pos < len(s.text) && s.text[s.pos] == close {
		s.pos++
		return true
	}
	for {
		if !entry() {
			return false
		}
		s.spaces()
		if s.pos == len(s.text) {
			return false
		}
		switch s.text[s.pos] {
		case close:
			s.pos++
			return true
		case ',':
			s.pos++
			s.spaces()
			if s.pos < len(s.text) && s.text[s.pos] == close {
				return false
			}
		default:
			return false
		}
	}
}

func (s *itemScanner) spaces() {
	for s.pos < len(s.text) && s.text[s.pos] == ' ' {
		s.pos++
	}
}

// lineEnd reports whether only spaces and a comment follow.
func (s *itemScanner) lineEnd() bool {
	start := s.pos
	s.spaces()
	return s.pos == len(s.text) || s.text[s.pos] == '#' && s.pos > start
}
