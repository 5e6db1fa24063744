package tune

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/portfw/portfw/internal/sysctl"
	"github.com/portfw/portfw/policy"
)

// StateDir holds one state file per network namespace. /run is a tmpfs:
// a reboot forgets the state together with the sysctls it describes.
var StateDir = "/run/portfw"

func init() {
	if d := os.Getenv("PORTFW_STATE_DIR"); d != "" {
		StateDir = d
	}
}

// ReadHost reads the sysctls of the calling process's network namespace.
func ReadHost() (Host, error) {
	var h Host
	v, err := sysctl.Get(UnprivPortStart)
	if err != nil {
		return h, err
	}
	if h.UnprivPortStart, err = strconv.Atoi(v); err != nil {
		return h, fmt.Errorf("read %s: %q is not a number", UnprivPortStart, v)
	}
	rng, err := sysctl.GetInts(LocalPortRange)
	if err != nil {
		return h, err
	}
	if len(rng) != 2 {
		return h, fmt.Errorf("read %s: want two numbers, got %v", LocalPortRange, rng)
	}
	h.LocalPortRange = policy.PortRange{Lo: uint16(rng[0]), Hi: uint16(rng[1])}
	v, err = sysctl.Get(ReservedPorts)
	if err != nil {
		return h, err
	}
	h.ReservedPorts, err = ParsePorts(v)
	return h, err
}

// ParsePorts parses the kernel's port list format ("1,2,10-20"; empty).
func ParsePorts(s string) ([]policy.PortRange, error) {
	var out []policy.PortRange
	for _, f := range strings.Split(strings.TrimSpace(s), ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(f, "-")
		l, err := strconv.ParseUint(lo, 10, 16)
		h := l
		if err == nil && isRange {
			h, err = strconv.ParseUint(hi, 10, 16)
		}
		if err != nil || h < l {
			return nil, fmt.Errorf("parse port list %q: bad entry %q", s, f)
		}
		out = append(out, policy.PortRange{Lo: uint16(l), Hi: uint16(h)})
	}
	return Merge(out), nil
}

// StatePath is the state file of the calling process's network namespace,
// named by the namespace's inode so namespaces never share one.
func StatePath() (string, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &st); err != nil {
		return "", fmt.Errorf("identify network namespace: %w", err)
	}
	return filepath.Join(StateDir, fmt.Sprintf("netns-%d.json", st.Ino)), nil
}

// LoadState reads the namespace's state; a missing file is an empty state.
func LoadState() (State, string, error) {
	var st State
	path, err := StatePath()
	if err != nil {
		return st, "", err
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return st, path, nil
	}
	if err != nil {
		return st, path, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, path, fmt.Errorf("read state %s: %w", path, err)
	}
	return st, path, nil
}

// saveState writes the state atomically, or removes the file when there is
// nothing left to restore.
func saveState(path string, st State) error {
	if st.UnprivPortStartOriginal == nil && len(st.ReservedPortsAdded) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove state: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	b, _ := json.MarshalIndent(st, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// Apply carries out a plan around applyRules, which installs the ruleset
// (with the plan's guard). The order keeps every low port root-only at
// every moment: the original values are recorded first; a threshold going
// up is raised before the rules change, one going down is lowered only
// after the rules that guard it are in. On error the state file still
// names the original values.
func Apply(p Plan, st State, statePath, table string, applyRules func() error) (State, error) {
	st.Table = table
	if p.Threshold != p.Original && st.UnprivPortStartOriginal == nil {
		orig := p.Original
		st.UnprivPortStartOriginal = &orig
	}
	// Record the union of old and new additions before touching anything,
	// so a crash midway still lets remove take out all of portfw's ports.
	pending := st
	pending.ReservedPortsAdded = Merge(append(append([]policy.PortRange{}, st.ReservedPortsAdded...), p.Added...))
	if err := saveState(statePath, pending); err != nil {
		return st, err
	}
	if p.Threshold > p.Current {
		if err := sysctl.Set(UnprivPortStart, strconv.Itoa(p.Threshold)); err != nil {
			return pending, err
		}
	}
	if err := applyRules(); err != nil {
		return pending, err
	}
	if p.Threshold < p.Current {
		if err := sysctl.Set(UnprivPortStart, strconv.Itoa(p.Threshold)); err != nil {
			return pending, err
		}
	}
	if FormatPorts(p.ReservedPorts) != FormatPorts(p.CurrentReserved) {
		if err := sysctl.Set(ReservedPorts, FormatPorts(p.ReservedPorts)); err != nil {
			return pending, err
		}
	}
	st.ReservedPortsAdded = p.Added
	if p.Threshold == p.Original {
		st.UnprivPortStartOriginal = nil
	}
	return st, saveState(statePath, st)
}

// Remove restores what portfw changed around removeRules, which deletes
// the table: the threshold goes back up first, so no low port is ever
// bindable by anyone and unguarded.
func Remove(st State, statePath string, removeRules func() error) error {
	if st.UnprivPortStartOriginal != nil {
		if err := sysctl.Set(UnprivPortStart, strconv.Itoa(*st.UnprivPortStartOriginal)); err != nil {
			return err
		}
	}
	if err := removeRules(); err != nil {
		return err
	}
	if len(st.ReservedPortsAdded) > 0 {
		v, err := sysctl.Get(ReservedPorts)
		if err != nil {
			return err
		}
		cur, err := ParsePorts(v)
		if err != nil {
			return err
		}
		if err := sysctl.Set(ReservedPorts, FormatPorts(subtract(cur, st.ReservedPortsAdded))); err != nil {
			return err
		}
	}
	return saveState(statePath, State{})
}
