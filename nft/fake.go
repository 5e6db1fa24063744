package nft

import (
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/portfw/portfw/compiler"
)

// Fake is an in-memory Kernel for testing code above package nft. It checks
// what the kernel would: a delta must name existing sets and delete existing
// elements, a commit built on an old generation is refused, and a failed
// transaction changes nothing. It keeps the counters of untouched elements
// across deltas, as the kernel does, and increments the generation on every
// commit, its own and Tamper's.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*compiler.Ruleset
	gen    uint32
	// Replaces and Deltas count committed operations of each kind; Reads
	// counts table reads (a dump of the whole table in the kernel),
	// SetReads reads of some sets (ReadSets).
	Replaces, Deltas, Reads, SetReads int
	// FailNext, if set, makes the next commit fail with it.
	FailNext error
	// caps is each exact set's compiler.Capacity, as the table was last replaced:
	// a delta past it fails with ErrFull, as in the kernel.
	caps map[string]map[string]int
}

var _ Kernel = (*Fake)(nil)

// NewFake returns an empty fake kernel.
func NewFake() *Fake { return &Fake{tables: map[string]*compiler.Ruleset{}, gen: 1} }

func (f *Fake) Gen() (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gen, nil
}

func (f *Fake) bump() {
	f.gen++
	if f.gen == 0 {
		f.gen = 1
	}
}

// Commit applies tx to a copy of the tables and keeps it only if every
// operation succeeded.
func (f *Fake) Commit(tx *Tx, gen uint32) (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if tx.Empty() {
		return f.gen, nil
	}
	if err := f.FailNext; err != nil {
		f.FailNext = nil
		return 0, err
	}
	if gen != 0 && gen != f.gen {
		return 0, ErrChanged
	}
	next := map[string]*compiler.Ruleset{}
	for name, rs := range f.tables {
		next[name] = clone(rs)
	}
	caps := maps.Clone(f.caps)
	if caps == nil {
		caps = map[string]map[string]int{}
	}
	replaces, deltas := 0, 0
	for _, op := range tx.ops {
		switch {
		case op.replace != nil:
			next[op.replace.Table] = clone(op.replace)
			c := map[string]int{}
			for _, s := range op.replace.Sets {
				if !s.Interval {
					c[s.Name] = int(compiler.Capacity(len(s.Elements)))
				}
			}
			caps[op.replace.Table] = c
			replaces++
		case op.delta != nil:
			if err := applyDelta(next, *op.delta, caps[op.delta.Table]); err != nil {
				return 0, err
			}
			deltas++
		default:
			delete(next, op.remove)
			delete(caps, op.remove)
		}
	}
	f.tables, f.caps = next, caps
	f.Replaces += replaces
	f.Deltas += deltas
	f.bump()
	return f.gen, nil
}

func applyDelta(tables map[string]*compiler.Ruleset, d compiler.Delta, caps map[string]int) error {
	cur, ok := tables[d.Table]
	if !ok {
		return fmt.Errorf("apply delta: table %s: %w", d.Table, ErrNoTable)
	}
	sets := map[string]*compiler.Set{}
	for _, s := range cur.Sets {
		sets[s.Name] = s
	}
	for name, dels := range d.Del {
		s, ok := sets[name]
		if !ok {
			return fmt.Errorf("apply delta: no set %s", name)
		}
		for _, e := range dels {
			i := slices.IndexFunc(s.Elements, func(x compiler.Element) bool { return x.Key() == e.Key() })
			if i < 0 {
				return fmt.Errorf("apply delta: set %s has no element %s", name, s.ElementText(e))
			}
			s.Elements = slices.Delete(s.Elements, i, i+1)
		}
	}
	for name, adds := range d.Add {
		s, ok := sets[name]
		if !ok {
			return fmt.Errorf("apply delta: no set %s", name)
		}
		for _, e := range adds {
			if slices.ContainsFunc(s.Elements, func(x compiler.Element) bool { return x.Key() == e.Key() }) {
				continue // the kernel keeps an element added twice, and its counter
			}
			e.Packets, e.Bytes = 0, 0
			s.Elements = append(s.Elements, e)
		}
		if c, ok := caps[name]; ok && len(s.Elements) > c {
			return fmt.Errorf("commit: set %s: %w", name, ErrFull)
		}
	}
	return nil
}

// Read returns a copy of the table, elements in canonical order.
func (f *Fake) Read(table string) (*compiler.Ruleset, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Reads++
	return f.read(table)
}

func (f *Fake) read(table string) (*compiler.Ruleset, error) {
	rs, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("read table %s: %w", table, ErrNoTable)
	}
	out := clone(rs)
	for _, s := range out.Sets {
		compiler.SortElements(s.Elements)
	}
	return out, nil
}

// ReadSets returns a copy of the table's sets that want names.
func (f *Fake) ReadSets(table string, want func(string) bool) (*compiler.Ruleset, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.SetReads++
	rs, err := f.read(table)
	if err != nil {
		return nil, err
	}
	out := &compiler.Ruleset{Table: table}
	for _, s := range rs.Sets {
		if want(s.Name) {
			out.Sets = append(out.Sets, s)
		}
	}
	return out, nil
}

// HasTable reports whether the table exists.
func (f *Fake) HasTable(table string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.tables[table]
	return ok, nil
}

// Tamper lets a test edit, add (rs nil in the callback) or delete (edit
// returns nil) a table behind portfw's back, as another process would: the
// generation moves.
func (f *Fake) Tamper(table string, edit func(rs *compiler.Ruleset) *compiler.Ruleset) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var cur *compiler.Ruleset
	if rs, ok := f.tables[table]; ok {
		cur = clone(rs)
	}
	if next := edit(cur); next != nil {
		f.tables[table] = next
	} else {
		delete(f.tables, table)
	}
	f.bump()
}

// Count counts packets and bytes as the drop chains do for dropped
// packets: in a count set under key (added on its first count), in a drop
// set on the element with key's key. The generation stays.
func (f *Fake) Count(table, set string, key compiler.Element, packets, bytes uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	key = key.Key()
	for _, s := range f.tables[table].Sets {
		if s.Name != set {
			continue
		}
		elems := &s.Elements
		if s.Dynamic {
			elems = &s.Counts
		}
		i := slices.IndexFunc(*elems, func(x compiler.Element) bool { return x.Key() == key })
		if i < 0 && s.Dynamic {
			*elems = append(*elems, key)
			i = len(*elems) - 1
		}
		if i >= 0 {
			(*elems)[i].Packets += packets
			(*elems)[i].Bytes += bytes
		}
	}
}

// Tables lists the tables the fake holds.
func (f *Fake) Tables() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	names := sortedKeys(f.tables)
	return names
}

func clone(rs *compiler.Ruleset) *compiler.Ruleset {
	out := &compiler.Ruleset{Table: rs.Table}
	byName := map[string]*compiler.Set{}
	for _, s := range rs.Sets {
		c := *s
		c.Fields = slices.Clone(s.Fields)
		c.Elements = slices.Clone(s.Elements)
		c.Counts = slices.Clone(s.Counts)
		out.Sets = append(out.Sets, &c)
		byName[s.Name] = &c
	}
	for _, ch := range rs.Chains {
		c := &compiler.Chain{Name: ch.Name, Hook: ch.Hook}
		for _, r := range ch.Rules {
			nr := slices.Clone(r)
			for i, e := range nr {
				switch x := e.(type) {
				case compiler.Lookup:
					x.Set = byName[x.Set.Name]
					nr[i] = x
				case compiler.Update:
					x.Set = byName[x.Set.Name]
					nr[i] = x
				}
			}
			c.Rules = append(c.Rules, nr)
		}
		out.Chains = append(out.Chains, c)
	}
	return out
}
