package resolve

import (
	"errors"
	"fmt"
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
// as waiting. A pattern that matches no running unit waits under the
// pattern.
func resolveCgroups(rs *policy.ReservationSpec, src Cgroups, srcErr error, field string, errs *policy.Errors) []model.Cgroup {
	if len(rs.Units)+len(rs.Cgroups) == 0 {
		return nil
	}
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
		if c.ID == 0 {
			// Waiting: the level and path are kept for a cgroups entry so
			// status can say what is awaited, but only the id matters.
			c.ID, c.Level = 0, 0
		}
		out = append(out, c)
	}
	for j, ref := range rs.Units {
		f := fmt.Sprintf("%s.units[%d]", field, j)
		units, err := src.UnitCgroups(ref.Name)
		if err != nil {
			errs.Add(ref.Pos, f, err.Error())
			continue
		}
		if len(units) == 0 {
			out = append(out, model.Cgroup{Source: ref.Name, Unit: true})
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
