// Package state keeps what portfw changed in a network namespace, so that
// it can be undone, and the namespace's lock.
//
// Both are files in one directory (/run/portfw, a tmpfs: a reboot forgets
// them with the sysctls they describe), named by the namespace's cookie,
// which is never reused while the system runs. Naming them by the
// namespace's inode, as portfw once did, let a fresh namespace inherit a
// deleted one's state (inodes are reused) and restore a threshold it never
// had. The file also records its cookie, and a file that names another
// cookie is refused.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/portfw/portfw/model"
)

// DefaultDir holds the state and lock files.
const DefaultDir = "/run/portfw"

// Version is the state file's format.
const Version = 2

// State is what portfw changed in a namespace, recorded before changing
// it, and what it last committed.
type State struct {
	Version int    `json:"version"`
	Cookie  uint64 `json:"netns_cookie"`
	// Table is the nftables table portfw manages here, so that remove
	// needs no policy and a policy that renames it removes the old one.
	Table string `json:"table,omitempty"`
	// UnprivPortStartOriginal is the threshold found before portfw first
	// lowered it; nil while portfw has not changed it.
	UnprivPortStartOriginal *int `json:"unprivileged_port_start_original,omitempty"`
	// ReservedPortsAdded are the ports portfw added to
	// ip_local_reserved_ports; the admin's own entries are never in it.
	ReservedPortsAdded model.Ports `json:"ip_local_reserved_ports_added,omitempty"`
	// Gen is the nftables ruleset generation of portfw's last commit here
	// and Digest a digest of the table it committed: while the kernel's
	// generation is still Gen, nobody changed the table since, and a
	// policy with the same digest is in sync without reading the table.
	Gen    uint32 `json:"ruleset_generation,omitempty"`
	Digest string `json:"ruleset_digest,omitempty"`
	// GuardDigest is a digest of the bind guard policy portfw applied here;
	// empty when portfw has no guard entry for this namespace.
	GuardDigest string `json:"bind_guard_digest,omitempty"`
	// Inputs identifies what the last sync was computed from (the policy
	// file's bytes, the user database, portfw's build, its options), Host
	// the sysctl values it saw, and Summary what it reported. While those
	// and the generation are unchanged, an apply has nothing to do and
	// need not even parse the policy (engine.Unchanged).
	Inputs  string   `json:"inputs,omitempty"`
	Host    string   `json:"host,omitempty"`
	Summary *Summary `json:"summary,omitempty"`
}

// Summary is what a sync reported about the policy it enforced.
type Summary struct {
	Table        string              `json:"table"`
	Reservations int                 `json:"reservations"`
	GuardMode    model.BindGuardMode `json:"bind_guard_mode"`
	GuardOn      bool                `json:"bind_guard"`
	GuardNote    string              `json:"bind_guard_note,omitempty"`
	Threshold    int                 `json:"unprivileged_port_start"`
	// RootOnly are the root-only entries of a lowered threshold.
	RootOnly []model.Reservation `json:"root_only,omitempty"`
	Notes    []string            `json:"notes,omitempty"`
	Warnings []string            `json:"warnings,omitempty"`
	// Waiting names, by reservation, the units and cgroups that owned
	// nothing at the sync because they did not exist.
	Waiting map[string][]string `json:"waiting,omitempty"`
}

// ErrCorrupt is wrapped by Load when the state file cannot be read as a
// state. `portfw remove` then restores the safest values it can.
var ErrCorrupt = errors.New("state file is corrupt")

// Store loads and saves one namespace's state.
type Store interface {
	// Load returns the state; a missing file is the zero State and no
	// error. An unreadable one is an error wrapping ErrCorrupt.
	Load() (State, error)
	// Save writes the state atomically: a crash leaves the old file or
	// the new one, never a mix.
	Save(State) error
	// Delete removes the state (a corrupt file is kept aside, .corrupt).
	Delete() error
	// Path names the file, for messages.
	Path() string
}

// Dir is the Store of one namespace in a directory.
type Dir struct {
	Dir    string
	Cookie uint64
}

var _ Store = Dir{}

func (d Dir) base() string     { return filepath.Join(d.Dir, "netns-"+strconv.FormatUint(d.Cookie, 10)) }
func (d Dir) Path() string     { return d.base() + ".json" }
func (d Dir) lockPath() string { return d.base() + ".lock" }

func (d Dir) Load() (State, error) {
	b, err := os.ReadFile(d.Path())
	if errors.Is(err, os.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("read state %s: %w", d.Path(), err)
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("read state %s: %w: %w", d.Path(), ErrCorrupt, err)
	}
	if st.Cookie != d.Cookie {
		return State{}, fmt.Errorf("read state %s: %w: it names network namespace cookie %d, not this namespace's %d",
			d.Path(), ErrCorrupt, st.Cookie, d.Cookie)
	}
	if st.Version != Version {
		return State{}, fmt.Errorf("read state %s: %w: format version %d, want %d", d.Path(), ErrCorrupt, st.Version, Version)
	}
	return st, nil
}

func (d Dir) Save(st State) error {
	st.Version, st.Cookie = Version, d.Cookie
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return writeAtomic(d.Path(), append(b, '\n'), true)
}

// writeAtomic writes a temporary file, syncs it, renames it over path and
// syncs the directory, so the rename is on disk before portfw goes on.
// Without durable, nothing is synced: for what is checked when read.
func writeAtomic(path string, data []byte, durable bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("write state: %w", err)
	}
	if durable {
		if err := tmp.Sync(); err != nil {
			tmp.Close()
			return fmt.Errorf("write state: %w", err)
		}
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if !durable {
		return nil
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

// snapshotPath is the file beside the state that holds the engine's record
// of its last commit (see LoadSnapshot).
func (d Dir) snapshotPath() string { return d.base() + ".snapshot" }

// LoadSnapshot returns what SaveSnapshot last wrote: the engine's record of
// the policy its last commit put in the table, which a later one-shot apply
// checks against the state and the kernel's generation before it trusts
// it. No snapshot is nil and no error.
func (d Dir) LoadSnapshot() ([]byte, error) {
	b, err := os.ReadFile(d.snapshotPath())
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// SaveSnapshot replaces the snapshot, atomically but not durably: after a
// crash it may be the old one or empty, which the engine checks for (an
// old one names an older generation than the state), so an apply does not
// wait for the disk (570 KB at 10k reservations: 10-20 ms here).
func (d Dir) SaveSnapshot(b []byte) error {
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return err
	}
	return writeAtomic(d.snapshotPath(), b, false)
}

func (d Dir) Delete() error {
	os.Remove(d.snapshotPath()) // it describes a table being removed
	if _, err := d.Load(); errors.Is(err, ErrCorrupt) {
		if err := os.Rename(d.Path(), d.Path()+".corrupt"); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("set the corrupt state aside: %w", err)
		}
		return nil
	}
	if err := os.Remove(d.Path()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove state: %w", err)
	}
	return nil
}

// Mem is an in-memory Store and Locker for tests. Corrupt makes Load fail
// as a corrupt file would.
type Mem struct {
	mu      sync.Mutex
	st      *State
	Corrupt bool
	Saves   int
	held    bool
	// Holder is the pid a refused Lock names.
	Holder int
	// Snapshot is what SaveSnapshot wrote.
	Snapshot []byte
}

func (m *Mem) LoadSnapshot() ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.Snapshot, nil
}

func (m *Mem) SaveSnapshot(b []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.Snapshot = append([]byte(nil), b...)
	return nil
}

var (
	_ Store  = (*Mem)(nil)
	_ Locker = (*Mem)(nil)
)

func (m *Mem) Load() (State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.Corrupt {
		return State{}, fmt.Errorf("read state %s: %w", m.Path(), ErrCorrupt)
	}
	if m.st == nil {
		return State{}, nil
	}
	return *m.st, nil
}

func (m *Mem) Save(st State) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	st.Version = Version
	m.st, m.Corrupt = &st, false
	m.Saves++
	return nil
}

func (m *Mem) Delete() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st, m.Corrupt, m.Snapshot = nil, false, nil
	return nil
}

func (m *Mem) Path() string { return "(memory)" }

// Lock refuses at once while another Lock is held.
func (m *Mem) Lock(time.Duration) (func(), error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.held {
		return nil, fmt.Errorf("another portfw (pid %d) manages this network namespace: %w", m.Holder, ErrLocked)
	}
	m.held = true
	return func() {
		m.mu.Lock()
		m.held = false
		m.mu.Unlock()
	}, nil
}
