package resolve

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/portfw/portfw/model"
	"github.com/portfw/portfw/policy"
)

// Units finds the cgroups of systemd units: systemd's D-Bus API where
// systemd runs (SystemdUnits), the cgroup tree elsewhere (TreeUnits).
type Units interface {
	// UnitCgroups returns the units that match pattern (a unit name, or a
	// glob as `systemctl list-units PATTERN` takes it, "app@*.service")
	// and have a cgroup now, each with its cgroup's path from the root of
	// the cgroup v2 hierarchy ("/system.slice/app@1.service"), sorted by
	// unit name. No match is not an error: the owner is waiting for the
	// unit to start.
	UnitCgroups(pattern string) ([]UnitCgroup, error)
}

// UnitCgroup is a unit and the path of its cgroup.
type UnitCgroup struct {
	Unit string
	Path string // from the cgroup v2 root, starting with "/"
}

// Cgroups is what resolving owners that are cgroups and units reads from
// the host: the cgroup v2 hierarchy and the units' cgroups.
type Cgroups interface {
	// LookupCgroup returns the id of the cgroup at path (from the
	// hierarchy's root); the error wraps ErrUnknown when there is none.
	LookupCgroup(path string) (id uint64, err error)
	Units
}

// cgroupSource is a Resolver that can also resolve cgroups and units.
type cgroupSource interface{ CgroupOwners() (Cgroups, error) }

// fresher is a Cgroups whose answers may be cached for one resolution
// (a walk of the tree for all the units a policy names).
type fresher interface{ Fresh() Cgroups }

// StaticCgroups resolves cgroups and units from fixed maps. It is for
// tests.
type StaticCgroups struct {
	IDs   map[string]uint64       // path -> id
	Units map[string][]UnitCgroup // pattern -> units
}

func (s StaticCgroups) LookupCgroup(path string) (uint64, error) {
	if id, ok := s.IDs[path]; ok {
		return id, nil
	}
	return 0, fmt.Errorf("cgroup %q: %w", path, ErrUnknown)
}

func (s StaticCgroups) UnitCgroups(pattern string) ([]UnitCgroup, error) {
	return s.Units[pattern], nil
}

// CgroupOwners makes Static a cgroupSource when it has Cgroups.
func (s Static) CgroupOwners() (Cgroups, error) {
	if s.Cgroups == nil {
		return nil, errors.New("no cgroup hierarchy")
	}
	return s.Cgroups, nil
}

// cgroupLevel is the depth of a clean absolute cgroup path.
func cgroupLevel(path string) uint8 { return uint8(strings.Count(path, "/")) }

// resolveCgroups turns a reservation's units and cgroups into owner
// cgroups: each that exists now with its id and level, each that does not
// as waiting (ID 0). A waiting cgroup path keeps its level; a waiting unit
// keeps the path and level it had in last, the reservation's owners as
// resolved before (a restart, seen by the daemon), so the rules and sets
// stay the same and the restart is an element delta. A pattern that
// matches no running unit waits under the pattern.
func resolveCgroups(rs *policy.ReservationSpec, src Cgroups, srcErr error, field string, last []model.Cgroup, errs *policy.Errors) []model.Cgroup {
	if len(rs.Units)+len(rs.Cgroups) == 0 {
		return nil
	}
	field += ".owner"
	if src == nil {
		var pos model.Pos
		if len(rs.Units) > 0 {
			pos = rs.Units[0].Pos
		} else {
			pos = rs.Cgroups[0].Pos
		}
		errs.Add(pos, field, fmt.Sprintf("owners that are units or cgroups need the cgroup v2 hierarchy: %v", srcErr))
		return nil
	}
	var out []model.Cgroup
	add := func(ref policy.OwnerRef, f, source, path string, unit bool) {
		c := model.Cgroup{Source: source, Unit: unit}
		id, err := src.LookupCgroup(path)
		switch {
		case err == nil:
			c.Path, c.Level, c.ID = path, cgroupLevel(path), id
		case errors.Is(err, ErrUnknown):
			if !unit {
				c.Path, c.Level = path, cgroupLevel(path)
			}
		default:
			errs.Add(ref.Pos, f, err.Error())
			return
		}
		if c.Level > model.MaxCgroupLevel {
			errs.Add(ref.Pos, f, fmt.Sprintf("%s runs in %s, %d levels deep; portfw matches cgroups at most %d levels below the root", source, path, c.Level, model.MaxCgroupLevel))
			return
		}
		out = append(out, c)
	}
	// waiting is a unit that is not running, with what it had last.
	waiting := func(name string) model.Cgroup {
		c := model.Cgroup{Source: name, Unit: true}
		for _, l := range last {
			if l.Unit && l.Source == name && l.Level > 0 {
				c.Path, c.Level = l.Path, l.Level
			}
		}
		return c
	}
	for j, ref := range rs.Units {
		f := fmt.Sprintf("%s.units[%d]", field, j)
		units, err := src.UnitCgroups(ref.Name)
		if err != nil {
			errs.Add(ref.Pos, f, err.Error())
			continue
		}
		if len(units) == 0 {
			if policy.IsUnitPattern(ref.Name) {
				// Instances that ran keep their levels while none runs.
				for _, l := range last {
					if l.Unit && l.Level > 0 && matchUnit(ref.Name, l.Source) {
						out = append(out, waiting(l.Source))
					}
				}
				if !slices.ContainsFunc(out, func(c model.Cgroup) bool { return c.Unit && matchUnit(ref.Name, c.Source) }) {
					out = append(out, model.Cgroup{Source: ref.Name, Unit: true})
				}
				continue
			}
			out = append(out, waiting(ref.Name))
			continue
		}
		for _, u := range units {
			if u.Path == "/" || !strings.HasPrefix(u.Path, "/") {
				errs.Add(ref.Pos, f, fmt.Sprintf("unit %s runs in cgroup %q, which cannot own a port", u.Unit, u.Path))
				continue
			}
			add(ref, f, u.Unit, u.Path, true)
		}
	}
	for j, ref := range rs.Cgroups {
		add(ref, fmt.Sprintf("%s.cgroups[%d]", field, j), ref.Name, ref.Name, false)
	}
	slices.SortFunc(out, model.CompareCgroups)
	return slices.Compact(out)
}

func matchUnit(pattern, name string) bool {
	ok, _ := path.Match(pattern, name)
	return ok
}
