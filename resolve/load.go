package resolve

import (
	"fmt"
	"io"
	"os"
	"slices"
	"unsafe"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
)

// Read reads a policy file, refusing one over policy.MaxSize before reading
// it: a policy is input, and a huge one must not cost the daemon its memory.
func Read(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() && fi.Size() > policy.MaxSize {
		return nil, tooLarge(path, fi.Size())
	}
	data, err := io.ReadAll(io.LimitReader(f, policy.MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	if len(data) > policy.MaxSize {
		return nil, tooLarge(path, int64(len(data)))
	}
	return data, nil
}

func tooLarge(path string, size int64) error {
	var es policy.Errors
	es.Add(model.Pos{File: path, Line: 1, Col: 1}, "",
		fmt.Sprintf("the policy is %d bytes, over the %d-byte (16 MiB) limit", size, policy.MaxSize))
	return es.Err()
}

// Load reads, parses and resolves the policy file at path. The Policy is
// returned whenever parsing succeeded, even if resolving failed, so that
// `portfw check` can still summarise it.
func Load(path string, r Resolver) (*model.Resolved, *policy.Policy, error) {
	return LoadWith(path, nil, r)
}

// LoadWith is Load parsing with rp (the daemon's, which remembers the last
// version of the file), or in full when rp is nil.
func LoadWith(path string, rp *policy.Reparser, r Resolver) (*model.Resolved, *policy.Policy, error) {
	data, err := Read(path)
	if err != nil {
		return nil, nil, err
	}
	parse := func(data []byte) (*policy.Policy, error) { return policy.Parse(path, data) }
	if rp != nil {
		parse = rp.Parse
	}
	p, err := parse(data)
	if err != nil {
		return nil, nil, err
	}
	res, err := Resolve(p, r)
	if err != nil {
		return nil, p, err
	}
	if s, ok := r.(SubIDs); ok {
		res.Warnings = append(res.Warnings, SubIDWarnings(res, s)...)
	}
	return res, p, nil
}

// Loader loads successive versions of one policy file, as the daemon does:
// it parses only the reservations whose text changed (policy.Reparser) and
// resolves only those, reusing the rest while the user database is the same.
// At 10k reservations a one-line edit then costs milliseconds.
type Loader struct {
	path string
	r    Resolver
	rp   *policy.Reparser
	// The last version: its policy and its reservations resolved, in the
	// policy's order (so the next version's i-th reservation is looked for
	// at i first, and by name only when it moved).
	pol    *policy.Policy
	res    *model.Resolved
	order  []int32        // where pol's i-th reservation is in res
	byName map[string]int // made when first needed
	stamp  any
	// reused counts the reservations taken from the last version (tests).
	reused int
}

// NewLoader returns a Loader of the file at path.
func NewLoader(path string, r Resolver) *Loader {
	return &Loader{path: path, r: r, rp: policy.NewReparser(path)}
}

// Forget drops what was resolved (SIGHUP, or the user database changed).
func (l *Loader) Forget() { l.pol, l.res, l.order, l.byName = nil, nil, nil, nil }

// Load reads, parses and resolves the file's current version (see Load).
func (l *Loader) Load() (*model.Resolved, *policy.Policy, error) {
	data, err := Read(l.path)
	if err != nil {
		return nil, nil, err
	}
	p, err := l.rp.Parse(data)
	if err != nil {
		return nil, nil, err
	}
	if st, ok := l.r.(interface{ Stamp() any }); ok {
		if s := st.Stamp(); s != l.stamp {
			l.Forget()
			l.stamp = s
		}
	}
	reuse := func(i int, spec policy.ReservationSpec) (model.Reservation, bool, bool) {
		if l.pol == nil {
			return model.Reservation{}, false, false
		}
		j := i
		if j >= len(l.pol.Reservations) || l.pol.Reservations[j].Name != spec.Name {
			if l.byName == nil {
				l.byName = make(map[string]int, len(l.pol.Reservations))
				for k, r := range l.pol.Reservations {
					l.byName[r.Name] = k
				}
			}
			var ok bool
			if j, ok = l.byName[spec.Name]; !ok {
				return model.Reservation{}, false, false
			}
		}
		last := l.pol.Reservations[j]
		if !sameSpec(last, spec) {
			return model.Reservation{}, false, slices.Equal(last.Protocols, spec.Protocols) &&
				slices.Equal(last.Ports, spec.Ports) && slices.Equal(last.Addresses, spec.Addresses)
		}
		l.reused++
		return l.res.Reservations[l.order[j]], true, true
	}
	res, order, err := resolve(p, l.r, reuse)
	if err != nil {
		return nil, p, err
	}
	l.pol, l.res, l.order, l.byName = p, res, order, nil
	if s, ok := l.r.(SubIDs); ok {
		res.Warnings = append(res.Warnings, SubIDWarnings(res, s)...)
	}
	return res, p, nil
}

// sameSpec reports whether b is a as the Reparser hands back an unchanged,
// unmoved reservation: the very same lists, at the same place.
func sameSpec(a, b policy.ReservationSpec) bool {
	return a.Name == b.Name && a.Description == b.Description && a.Pos == b.Pos &&
		same(a.Protocols, b.Protocols) && same(a.Ports, b.Ports) && same(a.Users, b.Users) &&
		same(a.Groups, b.Groups) && same(a.Addresses, b.Addresses)
}

// same reports whether two slices are one: same array, same length.
func same[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b))
}
