package nft

import (
	"fmt"
	"slices"
	"sync"

	"github.com/portfw/portfw/compiler"
)

// Fake is an in-memory Kernel for testing code above package nft (the
// daemon). It checks what the kernel would: a delta must name existing
// sets and delete existing elements, or nothing changes. It keeps the
// counters of untouched elements across deltas, as the kernel does.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*compiler.Ruleset
	// Applies and Deltas count successful transactions of each kind.
	Applies, Deltas int
	// FailNext, if set, makes the next transaction fail with it.
	FailNext error
}

var _ Kernel = (*Fake)(nil)

// NewFake returns an empty fake kernel.
func NewFake() *Fake { return &Fake{tables: map[string]*compiler.Ruleset{}} }

func (f *Fake) fail() error {
	err := f.FailNext
	f.FailNext = nil
	return err
}

// Apply replaces the table.
func (f *Fake) Apply(rs *compiler.Ruleset) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	f.tables[rs.Table] = clone(rs)
	f.Applies++
	return nil
}

// ApplyDelta changes elements, all or nothing.
func (f *Fake) ApplyDelta(d compiler.Delta) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.fail(); err != nil {
		return err
	}
	cur, ok := f.tables[d.Table]
	if !ok {
		return fmt.Errorf("apply delta: table %s: %w", d.Table, ErrNoTable)
	}
	next := clone(cur)
	sets := map[string]*compiler.Set{}
	for _, s := range next.Sets {
		sets[s.Name] = s
	}
	for name, dels := range d.Del {
		s, ok := sets[name]
		if !ok {
			return fmt.Errorf("apply delta: no set %s", name)
		}
		for _, e := range dels {
			i := slices.IndexFunc(s.Elements, func(x compiler.Element) bool { return s.ElementText(x) == s.ElementText(e) })
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
			e.Packets, e.Bytes = 0, 0
			s.Elements = append(s.Elements, e)
		}
	}
	f.tables[d.Table] = next
	f.Deltas++
	return nil
}

// Read returns a copy of the table, elements in canonical order.
func (f *Fake) Read(table string) (*compiler.Ruleset, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
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

// Remove deletes the table.
func (f *Fake) Remove(table string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.tables[table]
	delete(f.tables, table)
	return ok, nil
}

// Tamper lets a test edit the table behind portfw's back (drift).
func (f *Fake) Tamper(table string, edit func(rs *compiler.Ruleset)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if rs, ok := f.tables[table]; ok {
		edit(rs)
	}
}

func clone(rs *compiler.Ruleset) *compiler.Ruleset {
	out := &compiler.Ruleset{Table: rs.Table}
	byName := map[string]*compiler.Set{}
	for _, s := range rs.Sets {
		c := *s
		c.Fields = slices.Clone(s.Fields)
		c.Elements = slices.Clone(s.Elements)
		out.Sets = append(out.Sets, &c)
		byName[s.Name] = &c
	}
	for _, ch := range rs.Chains {
		c := &compiler.Chain{Name: ch.Name, Hook: ch.Hook}
		for _, r := range ch.Rules {
			nr := slices.Clone(r)
			for i, e := range nr {
				if l, ok := e.(compiler.Lookup); ok {
					l.Set = byName[l.Set.Name]
					nr[i] = l
				}
			}
			c.Rules = append(c.Rules, nr)
		}
		out.Chains = append(out.Chains, c)
	}
	return out
}
