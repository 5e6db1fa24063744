// Package sysctl reads and writes kernel parameters. The net.* ones are per
// network namespace: they are those of the namespace of the process that
// opens the file. Proc is the real thing; Fake is for tests, which never
// touch the host's sysctls.
package sysctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// Sysctls is what portfw needs of the kernel's parameters.
type Sysctls interface {
	// Get returns a parameter's value, trimmed.
	Get(name string) (string, error)
	// Set writes a parameter.
	Set(name, value string) error
	// Writable returns nil when Set of the parameter can succeed, or why
	// not (a container's read-only /proc/sys), before anything is tried.
	Writable(name string) error
}

// ErrReadOnly is wrapped by Writable for a read-only /proc/sys.
var ErrReadOnly = errors.New("read-only")

// Proc is /proc/sys (or another root, for tests of Proc itself).
type Proc struct{ Root string }

var _ Sysctls = Proc{}

func (p Proc) path(name string) string {
	root := p.Root
	if root == "" {
		root = "/proc/sys"
	}
	return filepath.Join(root, strings.ReplaceAll(name, ".", "/"))
}

func (p Proc) Get(name string) (string, error) {
	b, err := os.ReadFile(p.path(name))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (p Proc) Set(name, value string) error {
	if err := os.WriteFile(p.path(name), []byte(value+"\n"), 0); err != nil {
		return fmt.Errorf("write sysctl %s=%q: %w", name, value, err)
	}
	return nil
}

func (p Proc) Writable(name string) error {
	var st syscall.Statfs_t
	if err := syscall.Statfs(p.path(name), &st); err != nil {
		return fmt.Errorf("sysctl %s: %w", name, err)
	}
	if st.Flags&0x1 != 0 { // ST_RDONLY
		return fmt.Errorf("sysctl %s: /proc/sys is mounted %w here (a container without the privilege to change it)", name, ErrReadOnly)
	}
	return nil
}

// Fake is an in-memory Sysctls. Set fails with Fail[name] when set, and on
// every name when ReadOnly.
type Fake struct {
	mu       sync.Mutex
	Values   map[string]string
	Fail     map[string]error
	ReadOnly bool
	// Writes records every successful Set as "name=value", in order.
	Writes []string
}

var _ Sysctls = (*Fake)(nil)

// NewFake returns a Fake holding a fresh namespace's values.
func NewFake() *Fake {
	return &Fake{Values: map[string]string{
		"net.ipv4.ip_unprivileged_port_start": "1024",
		"net.ipv4.ip_local_port_range":        "32768\t60999",
		"net.ipv4.ip_local_reserved_ports":    "",
		"net.ipv4.tcp_syncookies":             "1",
		"net.ipv4.tcp_fastopen":               "1",
	}}
}

func (f *Fake) Get(name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.Values[name]
	if !ok {
		return "", fmt.Errorf("read sysctl %s: %w", name, os.ErrNotExist)
	}
	return v, nil
}

func (f *Fake) Set(name, value string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.writable(name); err != nil {
		return fmt.Errorf("write sysctl %s=%q: %w", name, value, err)
	}
	if err := f.Fail[name]; err != nil {
		return fmt.Errorf("write sysctl %s=%q: %w", name, value, err)
	}
	f.Values[name] = value
	f.Writes = append(f.Writes, name+"="+value)
	return nil
}

func (f *Fake) Writable(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writable(name)
}

func (f *Fake) writable(name string) error {
	if f.ReadOnly {
		return fmt.Errorf("sysctl %s: %w", name, ErrReadOnly)
	}
	return nil
}

// Written returns the writes so far.
func (f *Fake) Written() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.Writes)
}
