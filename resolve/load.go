package resolve

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
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
	size := int64(0)
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		if size = fi.Size(); size > policy.MaxSize {
			return nil, tooLarge(path, size)
		}
	}
	// One buffer of the file's size (and room to see it end), not the
	// doublings of io.ReadAll: the daemon reads a 10k file on each reload.
	var b bytes.Buffer
	b.Grow(int(size) + bytes.MinRead)
	if _, err := b.ReadFrom(io.LimitReader(f, policy.MaxSize+1)); err != nil {
		return nil, fmt.Errorf("read policy: %w", err)
	}
	data := b.Bytes()
	if len(data) > policy.MaxSize {
		return nil, tooLarge(path, int64(len(data)))
	}
	return data, nil
}

func tooLarge(path string, size int64) error {
	var es policy.Errors
	es.Add(model.Pos{File: path, Line: 1, Col: 1}, "",
		fmt.Sprintf("the policy is %d bytes (with the drop-ins before this one), over the %d-byte (16 MiB) limit", size, policy.MaxSize))
	return es.Err()
}

// DropInDir is the directory of the drop-ins of the policy file main:
// policy.d beside it.
func DropInDir(main string) string { return filepath.Join(filepath.Dir(main), "policy.d") }

// Files lists the files of the policy whose main file is main: main, then
// its drop-ins, the *.yaml files of policy.d sorted by name (as sysctl.d
// is). Names starting with "." are skipped: editors, Ansible and
// Kubernetes keep their temporary files and ..data links there. A missing
// policy.d means no drop-ins. A *.yml file is an error, not skipped: it is
// surely meant as a drop-in, and skipping it would leave its ports free.
func Files(main string) ([]string, error) {
	dir := DropInDir(main)
	entries, err := os.ReadDir(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return []string{main}, nil
	case err != nil:
		return nil, fmt.Errorf("read drop-ins: %w", err)
	}
	files := []string{main}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, "."):
		case strings.HasSuffix(name, ".yaml"):
			files = append(files, filepath.Join(dir, name))
		case strings.HasSuffix(name, ".yml"):
			return nil, fmt.Errorf("drop-in %s: drop-ins are read only when their name ends in .yaml: rename it to %s.yaml",
				filepath.Join(dir, name), strings.TrimSuffix(name, ".yml"))
		}
	}
	return files, nil
}

// CheckFilePerms is CheckPerms for every file of a policy (Files) and for
// policy.d itself, since whoever can write it can add a drop-in.
func CheckFilePerms(files []string) error {
	var errs []error
	for i, f := range files {
		if i == 1 {
			errs = append(errs, CheckDirPerms(filepath.Dir(f)))
		}
		errs = append(errs, CheckPerms(f))
	}
	if len(files) == 1 {
		if _, err := os.Stat(DropInDir(files[0])); err == nil {
			errs = append(errs, CheckDirPerms(DropInDir(files[0])))
		}
	}
	return errors.Join(errs...)
}

// Load reads, parses and resolves the policy whose main file is path,
// with its drop-ins. The Policy is returned whenever parsing succeeded,
// even if resolving failed, so that `portfw check` can still summarise it.
func Load(path string, r Resolver) (*model.Resolved, *policy.Policy, error) {
	files, err := Files(path)
	if err != nil {
		return nil, nil, err
	}
	return LoadFiles(files, r)
}

// LoadFiles is Load of the files Files listed (the main file first).
func LoadFiles(files []string, r Resolver) (*model.Resolved, *policy.Policy, error) {
	p, err := parseFiles(files, func(file string, dropIn bool, data []byte) (*policy.Policy, error) {
		if dropIn {
			return policy.ParseDropIn(file, data)
		}
		return policy.Parse(file, data)
	})
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

// parseFiles reads and parses every file (the first is the main one) and
// merges them. Every file is parsed even when one has problems, so that
// all of them are reported at once.
func parseFiles(files []string, parse func(file string, dropIn bool, data []byte) (*policy.Policy, error)) (*policy.Policy, error) {
	pols := make([]*policy.Policy, len(files))
	var errs policy.Errors
	total := 0
	for i, f := range files {
		data, err := Read(f)
		if err != nil {
			return nil, err
		}
		if total += len(data); total > policy.MaxSize {
			return nil, tooLarge(f, int64(total))
		}
		p, err := parse(f, i > 0, data)
		if err != nil {
			if !errs.Append(err) {
				return nil, err
			}
			continue
		}
		pols[i] = p
	}
	if err := errs.Err(); err != nil {
		return nil, err
	}
	return policy.Merge(pols[0], pols[1:]...)
}

// Loader loads successive versions of one policy file, as the daemon does:
// it parses only the reservations whose text changed (policy.Reparser) and
// resolves only those, reusing the rest while the user database is the same.
// At 10k reservations a one-line edit then costs milliseconds.
type Loader struct {
	r   Resolver
	rps map[string]*policy.Reparser // by file
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

// NewLoader returns a Loader.
func NewLoader(r Resolver) *Loader {
	return &Loader{r: r, rps: map[string]*policy.Reparser{}}
}

// Forget drops what was resolved (SIGHUP, or the user database changed).
func (l *Loader) Forget() { l.pol, l.res, l.order, l.byName = nil, nil, nil, nil }

// Load reads, parses and resolves the current version of the policy's
// files (see LoadFiles).
func (l *Loader) Load(files []string) (*model.Resolved, *policy.Policy, error) {
	for f := range l.rps {
		if !slices.Contains(files, f) {
			delete(l.rps, f)
		}
	}
	p, err := parseFiles(files, func(file string, dropIn bool, data []byte) (*policy.Policy, error) {
		rp := l.rps[file]
		if rp == nil || rp.DropIn() != dropIn { // a file that became (or stopped being) the main one
			rp = policy.NewReparser(file)
			if dropIn {
				rp = policy.NewDropInReparser(file)
			}
			l.rps[file] = rp
		}
		return rp.Parse(data)
	})
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
			return l.res.Reservations[l.order[j]], false, slices.Equal(last.Protocols, spec.Protocols) &&
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
// Owners that are units or cgroups are never the same: their cgroups come
// and go while the text stays.
func sameSpec(a, b policy.ReservationSpec) bool {
	if len(b.Units)+len(b.Cgroups) > 0 {
		return false
	}
	return a.Name == b.Name && a.Description == b.Description && a.Pos == b.Pos && a.Index == b.Index &&
		same(a.Protocols, b.Protocols) && same(a.Ports, b.Ports) && same(a.Users, b.Users) &&
		same(a.Groups, b.Groups) && same(a.Addresses, b.Addresses)
}

// same reports whether two slices are one: same array, same length.
func same[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || unsafe.SliceData(a) == unsafe.SliceData(b))
}
