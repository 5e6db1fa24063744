package resolve

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/portfw/portfw/model"
)

// System resolves names through the host's user database: the passwd and
// group files, read once per change of the files and kept in memory, and
// then, for names the files do not have and only when the files are the
// system's own, through os/user (NSS with cgo, so LDAP and SSSD users work).
//
// A reload of the daemon resolving 1000 names costs one read of each file
// when they changed and nothing when they did not. Names NSS found are kept
// until the files change or Forget is called (SIGHUP); names not found are
// asked again every time, so a user created later is seen.
type System struct {
	// PasswdFile and GroupFile are the databases; empty means /etc/passwd
	// and /etc/group. In a container they are the host's, mounted
	// read-only (say /host/etc/passwd).
	PasswdFile, GroupFile string
	// SubUIDFile and SubGIDFile are the subordinate id files; empty means
	// /etc/subuid and /etc/subgid beside /etc/passwd, none beside custom
	// files.
	SubUIDFile, SubGIDFile string

	mu            sync.Mutex
	users, groups dbFile
	nssUsers      map[string]uint32
	nssGroups     map[string]uint32
	noNSS         bool // set for custom files: NSS would read the wrong ones

	// Cgroups resolves owners that are units and cgroups; nil refuses
	// them.
	Cgroups *HostCgroups
}

// NewSystem returns a resolver for the given database files ("" for the
// system's own).
func NewSystem(passwd, group string) *System {
	s := &System{PasswdFile: passwd, GroupFile: group}
	if passwd != "" && passwd != "/etc/passwd" || group != "" && group != "/etc/group" {
		s.noNSS = true
	}
	return s
}

// Stamp identifies the current contents of the database files: a Loader
// re-resolves everything when it changes.
func (s *System) Stamp() any {
	p, _ := stampOf(s.passwd())
	g, _ := stampOf(s.group())
	// The subordinate ids only change warnings, but those are reported.
	su, _ := stampOf(cmpOr(s.SubUIDFile, "/etc/subuid"))
	sg, _ := stampOf(cmpOr(s.SubGIDFile, "/etc/subgid"))
	return [4]fileStamp{p, g, su, sg}
}

// UsedNSS reports whether some name was found through NSS (LDAP, say) and
// not in the files: Stamp then cannot tell when its answer changes.
func (s *System) UsedNSS() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.nssUsers)+len(s.nssGroups) > 0
}

// Files are the database files the resolver reads, for the daemon to watch.
func (s *System) Files() []string { return []string{s.passwd(), s.group()} }

func (s *System) passwd() string { return cmpOr(s.PasswdFile, "/etc/passwd") }

var _ SubIDs = (*System)(nil)

// SubUIDs reads the subordinate uids (a missing file holds none).
func (s *System) SubUIDs() ([]SubRange, error) { return s.subIDs(s.SubUIDFile, "/etc/subuid") }

// SubGIDs reads the subordinate gids.
func (s *System) SubGIDs() ([]SubRange, error) { return s.subIDs(s.SubGIDFile, "/etc/subgid") }

func (s *System) subIDs(file, def string) ([]SubRange, error) {
	if file == "" && s.noNSS {
		return nil, nil // custom databases: the host's files are not theirs
	}
	subs, err := readSubIDs(cmpOr(file, def))
	if os.IsNotExist(err) {
		return nil, nil
	}
	return subs, err
}
func (s *System) group() string { return cmpOr(s.GroupFile, "/etc/group") }

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Forget drops everything cached, so the next lookup asks again.
func (s *System) Forget() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users, s.groups = dbFile{}, dbFile{}
	s.nssUsers, s.nssGroups = nil, nil
}

// Snapshot checks the files once and returns a resolver that uses what they
// held then: Resolve calls it so that one resolution costs two stat calls,
// whatever the number of names.
func (s *System) Snapshot() Resolver {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.users.refresh(s.passwd(), 2)
	s.groups.refresh(s.group(), 2)
	if s.users.changed || s.groups.changed {
		s.nssUsers, s.nssGroups = nil, nil
	}
	return snapshot{s}
}

// LookupUser resolves one user name, checking the files first.
func (s *System) LookupUser(name string) (uint32, error) { return s.Snapshot().LookupUser(name) }

// LookupGroup resolves one group name, checking the files first.
func (s *System) LookupGroup(name string) (uint32, error) { return s.Snapshot().LookupGroup(name) }

type snapshot struct{ s *System }

func (v snapshot) LookupUser(name string) (uint32, error) {
	return v.s.lookup(name, "user", &v.s.users, &v.s.nssUsers, func(n string) (string, error) {
		u, err := user.Lookup(n)
		if err != nil {
			if errors.As(err, new(user.UnknownUserError)) {
				return "", ErrUnknown
			}
			return "", err
		}
		return u.Uid, nil
	})
}

func (v snapshot) LookupGroup(name string) (uint32, error) {
	return v.s.lookup(name, "group", &v.s.groups, &v.s.nssGroups, func(n string) (string, error) {
		g, err := user.LookupGroup(n)
		if err != nil {
			if errors.As(err, new(user.UnknownGroupError)) {
				return "", ErrUnknown
			}
			return "", err
		}
		return g.Gid, nil
	})
}

func (s *System) lookup(name, kind string, db *dbFile, nss *map[string]uint32, ask func(string) (string, error)) (uint32, error) {
	s.mu.Lock()
	if id, ok := db.ids[name]; ok {
		s.mu.Unlock()
		return id, nil
	}
	if id, ok := (*nss)[name]; ok {
		s.mu.Unlock()
		return id, nil
	}
	readErr, noNSS := db.err, s.noNSS
	s.mu.Unlock()
	if noNSS {
		if readErr != nil {
			return 0, fmt.Errorf("look up %s %q: %w", kind, name, readErr)
		}
		return 0, fmt.Errorf("%s %q: %w", kind, name, ErrUnknown)
	}
	text, err := ask(name)
	if errors.Is(err, ErrUnknown) {
		return 0, fmt.Errorf("%s %q: %w", kind, name, ErrUnknown)
	}
	if err != nil {
		return 0, fmt.Errorf("look up %s %q: %w", kind, name, err)
	}
	id, err := strconv.ParseUint(text, 10, 32)
	if err != nil || id > model.MaxID {
		return 0, fmt.Errorf("look up %s %q: unusable id %q", kind, name, text)
	}
	s.mu.Lock()
	if *nss == nil {
		*nss = map[string]uint32{}
	}
	(*nss)[name] = uint32(id)
	s.mu.Unlock()
	return uint32(id), nil
}

// dbFile is one parsed database file and the identity it was read at.
type dbFile struct {
	stamp   fileStamp
	ids     map[string]uint32
	err     error
	read    bool
	changed bool // the last refresh read the file anew
}

// fileStamp identifies a version of a file: an editor's rename gives a new
// inode, an in-place write a new size or time.
type fileStamp struct {
	dev, ino, size   uint64
	mtime, ctime     int64
	mtimeNs, ctimeNs int64
}

func stampOf(path string) (fileStamp, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return fileStamp{}, err
	}
	return fileStamp{uint64(st.Dev), st.Ino, uint64(st.Size), st.Mtim.Sec, st.Ctim.Sec, st.Mtim.Nsec, st.Ctim.Nsec}, nil
}

// refresh rereads the file if it changed since the last read. idField is
// the 0-based field holding the id (2 in both passwd and group).
func (d *dbFile) refresh(path string, idField int) {
	d.changed = false
	st, err := stampOf(path)
	if d.read && err == nil && st == d.stamp {
		return
	}
	d.read, d.changed, d.stamp = true, true, st
	d.ids, d.err = nil, err
	if err != nil {
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		d.err = err
		return
	}
	d.ids = parseDB(data, idField)
}

// parseDB reads passwd(5) or group(5) lines "name:x:id:...". The first
// entry of a name wins, as for getpwnam(3); malformed lines and NIS "+"
// entries are skipped (NSS handles those).
func parseDB(data []byte, idField int) map[string]uint32 {
	ids := map[string]uint32{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || line[0] == '+' || line[0] == '-' {
			continue
		}
		f := strings.SplitN(line, ":", idField+2)
		if len(f) <= idField || f[0] == "" {
			continue
		}
		id, err := strconv.ParseUint(f[idField], 10, 32)
		if err != nil || id > model.MaxID {
			continue
		}
		if _, dup := ids[f[0]]; !dup {
			ids[f[0]] = uint32(id)
		}
	}
	return ids
}
