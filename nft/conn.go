package nft

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/portfw/portfw/compiler"
)

// ErrNoTable is returned by Read when portfw's table is not in the kernel.
var ErrNoTable = errors.New("table not found")

// Kernel is what the rest of portfw needs from the kernel's nftables. The
// daemon is tested against a fake of it.
type Kernel interface {
	// Apply makes the kernel's table equal to rs in one transaction: on
	// error the previous table, or its absence, is left exactly in place.
	Apply(rs *compiler.Ruleset) error
	// ApplyDelta deletes and adds set elements in one transaction. Every
	// set it names must exist; on error nothing changed.
	ApplyDelta(d compiler.Delta) error
	// Read returns the table as the kernel holds it, with set element
	// counters filled in, or an error wrapping ErrNoTable.
	Read(table string) (*compiler.Ruleset, error)
	// Remove deletes the table. It reports whether there was one.
	Remove(table string) (bool, error)
}

var _ Kernel = (*Conn)(nil)

// Conn talks nftables over netlink in one network namespace.
type Conn struct {
	nc *nftables.Conn
}

// Open connects to nftables in the namespace of the calling process, or in
// the namespace of netnsFd when it is >= 0.
func Open(netnsFd int) (*Conn, error) {
	var opts []nftables.ConnOption
	if netnsFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	nc, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("open nftables: %w", err)
	}
	return &Conn{nc: nc}, nil
}

func table(name string) *nftables.Table {
	return &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
}

// Apply replaces portfw's table with rs in one transaction: create the
// table if missing, delete it, create it again with every set, element,
// chain and rule. The kernel either commits all of it or none.
func (c *Conn) Apply(rs *compiler.Ruleset) error {
	t := table(rs.Table)
	c.nc.AddTable(t)
	c.nc.DelTable(t)
	c.nc.AddTable(t)
	sets := map[string]*nftables.Set{}
	for _, s := range rs.Sets {
		set, elems, err := newSet(t, s)
		if err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		if err := c.nc.AddSet(set, elems); err != nil {
			return fmt.Errorf("apply: add set %s: %w", s.Name, err)
		}
		sets[s.Name] = set
	}
	chains := map[string]*nftables.Chain{}
	for _, ch := range rs.Chains {
		chains[ch.Name] = c.nc.AddChain(newChain(t, ch))
	}
	for _, ch := range rs.Chains {
		for i, r := range ch.Rules {
			exprs, err := encodeRule(r, sets)
			if err != nil {
				return fmt.Errorf("apply: chain %s rule %d: %w", ch.Name, i+1, err)
			}
			c.nc.AddRule(&nftables.Rule{Table: t, Chain: chains[ch.Name], Exprs: exprs})
		}
	}
	if err := c.nc.Flush(); err != nil {
		return fmt.Errorf("apply table %s: %w", rs.Table, err)
	}
	return nil
}

// ApplyDelta applies element changes to existing sets in one transaction:
// deletions first, so an element whose key stays and whose comment changes
// is replaced.
func (c *Conn) ApplyDelta(d compiler.Delta) error {
	t := table(d.Table)
	for _, pass := range []struct {
		elems map[string][]compiler.Element
		op    func(*nftables.Set, []nftables.SetElement) error
	}{{d.Del, c.nc.SetDeleteElements}, {d.Add, c.nc.SetAddElements}} {
		for _, name := range sortedKeys(pass.elems) {
			s := d.Sets[name]
			set, elems, err := newSet(t, &compiler.Set{Name: s.Name, Fields: s.Fields, Interval: s.Interval, Counter: s.Counter, Elements: pass.elems[name]})
			if err != nil {
				return fmt.Errorf("apply delta: %w", err)
			}
			if err := pass.op(set, elems); err != nil {
				return fmt.Errorf("apply delta to set %s: %w", name, err)
			}
		}
	}
	if err := c.nc.Flush(); err != nil {
		return fmt.Errorf("apply delta to table %s: %w", d.Table, err)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ReadOrNil is Read that returns nil, not an error, when the table is
// not installed.
func ReadOrNil(k Kernel, table string) (*compiler.Ruleset, error) {
	rs, err := k.Read(table)
	if errors.Is(err, ErrNoTable) {
		return nil, nil
	}
	return rs, err
}

func newChain(t *nftables.Table, ch *compiler.Chain) *nftables.Chain {
	c := &nftables.Chain{Name: ch.Name, Table: t}
	if ch.Hook != "" {
		accept := nftables.ChainPolicyAccept
		c.Type = nftables.ChainTypeFilter
		c.Priority = nftables.ChainPriorityFilter
		c.Policy = &accept
		c.Hooknum = nftables.ChainHookInput
		if ch.Hook == "output" {
			c.Hooknum = nftables.ChainHookOutput
		}
	}
	return c
}

// Remove deletes portfw's table and everything in it.
func (c *Conn) Remove(name string) (bool, error) {
	if _, err := c.nc.ListTableOfFamily(name, nftables.TableFamilyINet); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("look up table %s: %w", name, err)
	}
	c.nc.DelTable(table(name))
	if err := c.nc.Flush(); err != nil {
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("delete table %s: %w", name, err)
	}
	return true, nil
}

func isNotFound(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, os.ErrNotExist)
}
