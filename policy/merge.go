package policy

import "fmt"

// Merge adds the reservations of drop-ins (ParseDropIn, in the order the
// files are read: by name) to the main policy's. A name used in two files
// is an error at the later one naming the first; overlaps across files are
// found by resolve, like any other. With no drop-ins, main is returned as
// it is.
func Merge(main *Policy, dropIns ...*Policy) (*Policy, error) {
	if len(dropIns) == 0 {
		return main, nil
	}
	n := len(main.Reservations)
	for _, d := range dropIns {
		n += len(d.Reservations)
	}
	out := &Policy{File: main.File, Settings: main.Settings, Reservations: make([]ReservationSpec, 0, n)}
	first := make(map[string]ReservationSpec, n)
	var errs Errors
	add := func(p *Policy) {
		for _, r := range p.Reservations {
			if f, dup := first[r.Name]; dup {
				errs.Add(r.namePos, fmt.Sprintf("reservations[%d].name", r.Index),
					fmt.Sprintf("duplicate reservation name %q (first at %s, reservations[%d]); names are unique across the policy and its drop-ins",
						r.Name, f.namePos, f.Index))
				continue
			}
			first[r.Name] = r
			out.Reservations = append(out.Reservations, r)
		}
	}
	add(main)
	for _, d := range dropIns {
		out.DropIns = append(out.DropIns, d.File)
		add(d)
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return out, nil
}
