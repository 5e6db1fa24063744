package policy

import (
	"bytes"
	"errors"
	"runtime"
	"slices"

	"gopkg.in/yaml.v3"

	"github.com/portfw/portfw/internal/parallel"
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
	texts  []string       // each item's text, by index in pol.Reservations
	chunks map[string]int // text -> index, made when an item is not where it was
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
	if len(data) <= MaxSize {
		if r.last != nil && bytes.HasPrefix(data, r.last.header) {
			if pol, next, ok := r.last.reparse(r.file, data, true); ok {
				r.last = next
				r.Reused++
				return pol, nil
			}
		} else if l := headerLayout(r.file, r.dropIn, data); l != nil {
			if pol, next, ok := l.reparse(r.file, data, true); ok {
				r.last = next
				return pol, nil
			}
		}
	}
	r.last = nil
	return parseWhole(r.file, data, r.dropIn)
}

// headerLayout is the layout of data's header alone, parsed and valid,
// with no reservations yet; nil when data is not in the plain layout.
func headerLayout(file string, dropIn bool, data []byte) *layout {
	end, ok := headerEnd(data)
	if !ok {
		return nil
	}
	indent, ok := itemStart(data[end:])
	if !ok {
		return nil
	}
	p := &parser{file: file, dropIn: dropIn}
	pol, body := p.parse(data[:end])
	if p.errs.Len() > 0 || pol == nil || len(pol.Reservations) != 0 || hasAnchors(body) || len(body.Content) < 2 {
		return nil
	}
	key, val := body.Content[len(body.Content)-2], body.Content[len(body.Content)-1]
	if key.Value != "reservations" || !isNull(val) {
		return nil
	}
	return &layout{header: bytes.Clone(data[:end]), indent: indent, pol: pol}
}

// headerEnd is where the first reservation's line begins: after the first
// line that is "reservations:" at the left margin (a comment may follow)
// and the blank or comment lines after it.
func headerEnd(data []byte) (int, bool) {
	key := []byte("reservations:")
	found := false
	for off := 0; off < len(data); {
		end := bytes.IndexByte(data[off:], '\n') + 1
		if end == 0 {
			end = len(data) - off
		}
		line := data[off : off+end]
		switch {
		case found && !blankOrComment(line):
			return off, true
		case !found && bytes.HasPrefix(line, key) && blankOrComment(line[len(key):]):
			found = true
		}
		off += end
	}
	return 0, false
}

// batchItems is how many reservations one decoder call parses: large
// enough to amortise the decoder's setup, small enough that a 100k file
// spreads over every CPU and that no batch's node tree outlives its batch.
const batchItems = 512

// item is one reservation's text in the file.
type item struct {
	start, end int // bytes of data
	line       int // its first line
}

// reparse parses data, whose header is l's, by reusing the items whose text
// l has seen and parsing the others, in batches across the CPUs. ok is false
// when the layout is not the plain one or an item has a problem (the caller
// parses in full, for Parse's own errors). With keep, next is the layout of
// data, for the version after.
func (l *layout) reparse(file string, data []byte, keep bool) (pol *Policy, next *layout, ok bool) {
	if !onlyNewlines(data) {
		return nil, nil, false
	}
	line := bytes.Count(l.header, []byte("\n")) + 1
	items := make([]item, 0, len(l.texts)+16)
	for off := len(l.header); off < len(data); {
		n, ok := chunkLen(data[off:], l.indent)
		if !ok {
			return nil, nil, false
		}
		items = append(items, item{off, off + n, line})
		line += bytes.Count(data[off:off+n], []byte("\n"))
		off += n
	}
	if len(items) == 0 {
		return nil, nil, false
	}
	pol = &Policy{File: file, Settings: l.pol.Settings, Reservations: make([]ReservationSpec, len(items))}
	var todo []int                  // the items to parse
	keys := make([]int, len(items)) // the index in l of each reused item, or -1
	used := make([]bool, len(l.texts))
	misses := 0
	for i, it := range items {
		text := data[it.start:it.end]
		j := -1
		if i < len(l.texts) && l.texts[i] == string(text) {
			j = i // where it was: an edit elsewhere, the common case
		} else if misses++; misses > 16 {
			// Many not where they were: an insertion or a deletion
			// shifted them. (The first few are parsed, not looked up:
			// an edited reservation is not anywhere in l.)
			if k, ok := l.index()[string(text)]; ok {
				j = k
			}
		}
		keys[i] = j
		if j < 0 {
			todo = append(todo, i)
			continue
		}
		if used[j] {
			return nil, nil, false // the same text twice: a duplicate name
		}
		used[j] = true
		spec := l.pol.Reservations[j]
		if l.lines[j] != it.line {
			// Moved: a copy with its positions moved (the lists are
			// shared otherwise; nothing changes a parsed policy).
			spec = spec.clone()
			spec.shift(it.line - l.lines[j])
		}
		pol.Reservations[i] = spec
	}
	if !parseItems(file, data, items, todo, pol.Reservations) {
		return nil, nil, false
	}
	for i := range pol.Reservations {
		pol.Reservations[i].Index = i
	}
	// The reused reservations had distinct names in l (it was valid) and
	// none is reused twice: only a parsed one can share a name.
	if duplicateNames(pol.Reservations, todo) {
		return nil, nil, false
	}
	if !keep {
		return pol, nil, true
	}
	next = &layout{header: l.header, indent: l.indent, texts: make([]string, len(items)), lines: make([]int, len(items)), pol: pol}
	for i, it := range items {
		var text string
		if j := keys[i]; j >= 0 {
			text = l.texts[j] // the same bytes: no copy
		} else {
			text = string(data[it.start:it.end])
		}
		next.texts[i], next.lines[i] = text, it.line
	}
	return pol, next, true
}

// parseItems parses the items listed in todo into out, each by its index:
// runs of neighbours together, at most batchItems at a time, the batches
// spread over GOMAXPROCS goroutines. ok is false if any batch fails.
func parseItems(file string, data []byte, items []item, todo []int, out []ReservationSpec) bool {
	type batch struct{ first, n int }
	var batches []batch
	for k := 0; k < len(todo); {
		b := batch{todo[k], 1}
		for k+b.n < len(todo) && todo[k+b.n] == b.first+b.n && b.n < batchItems {
			b.n++
		}
		batches = append(batches, b)
		k += b.n
	}
	workers := runtime.GOMAXPROCS(0)
	slabs := make([]nodeSlab, workers) // each worker's nodes, batch after batch
	return parallel.Each(workers, len(batches), func(w, k int) error {
		b := batches[k]
		slabs[w].reset()
		if !parseBatch(file, data, items[b.first:b.first+b.n], b.first, out[b.first:b.first+b.n], &slabs[w]) {
			return errNotPlain
		}
		return nil
	}) == nil
}

// errNotPlain is a batch that parseBatch would not take.
var errNotPlain = errors.New("a batch is not plain, valid reservations")

// parseBatch parses the items of data listed in out, len(out) consecutive
// ones of which the first is reservations[first], on their own; ok is false
// for anything but that many plain, valid reservations. Items in the simple
// forms are scanned (scanItem); the batch is decoded by yaml.v3 when one is
// not.
func parseBatch(file string, data []byte, items []item, first int, out []ReservationSpec, slab *nodeSlab) bool {
	p := &parser{file: file, lineOff: items[0].line - 1}
	nodes := make([]*yaml.Node, len(items))
	for k, it := range items {
		n, ok := scanItem(data[it.start:it.end], it.line-items[0].line+1, slab)
		if !ok {
			nodes = nil
			break
		}
		nodes[k] = n
	}
	if nodes == nil {
		var doc yaml.Node
		text := data[items[0].start:items[len(items)-1].end]
		if err := decode(yaml.NewDecoder(bytes.NewReader(text)), &doc); err != nil || len(doc.Content) != 1 {
			return false
		}
		seq := doc.Content[0]
		if seq.Kind != yaml.SequenceNode || len(seq.Content) != len(out) || hasAnchors(seq) {
			return false
		}
		nodes = seq.Content
	}
	for k, n := range nodes {
		spec, _, ok := p.reservation(n, pathOf("reservations").at(first+k))
		if !ok || p.errs.Len() > 0 {
			return false
		}
		out[k] = spec
	}
	return true
}

// index is l's map from item text to index, made on first use.
func (l *layout) index() map[string]int {
	if l.chunks == nil {
		l.chunks = make(map[string]int, len(l.texts))
		for i, t := range l.texts {
			l.chunks[t] = i
		}
	}
	return l.chunks
}

// duplicateNames reports whether two reservations share a name (Parse
// reports it, with both places), given that only those at the indexes in
// fresh can share one with another.
func duplicateNames(rs []ReservationSpec, fresh []int) bool {
	if len(fresh) <= 8 {
		for _, i := range fresh {
			for j := range rs {
				if j != i && rs[j].Name == rs[i].Name {
					return true
				}
			}
		}
		return false
	}
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

// onlyNewlines reports whether every line break in data is "\n" or
// "\r\n", the ones the item split sees. YAML also breaks lines at a lone
// "\r" and at NEL, LS and PS (yaml.v3 does).
func onlyNewlines(data []byte) bool {
	for _, br := range []string{"\u0085", "\u2028", "\u2029"} {
		if bytes.Contains(data, []byte(br)) {
			return false
		}
	}
	for i := bytes.IndexByte(data, '\r'); i >= 0; {
		if i+1 >= len(data) || data[i+1] != '\n' {
			return false
		}
		j := bytes.IndexByte(data[i+1:], '\r')
		if j < 0 {
			break
		}
		i += 1 + j
	}
	return true
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
