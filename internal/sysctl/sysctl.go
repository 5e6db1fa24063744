// Package sysctl reads and writes kernel parameters under /proc/sys. The
// net.* ones are per network namespace: they are those of the namespace
// of the process that opens the file.
package sysctl

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Root is where sysctls live; tests point it elsewhere.
var Root = "/proc/sys"

func path(name string) string {
	return filepath.Join(Root, strings.ReplaceAll(name, ".", "/"))
}

// Get returns the value of a sysctl, trimmed.
func Get(name string) (string, error) {
	b, err := os.ReadFile(path(name))
	if err != nil {
		return "", fmt.Errorf("read sysctl %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// Set writes a sysctl.
func Set(name, value string) error {
	if err := os.WriteFile(path(name), []byte(value+"\n"), 0); err != nil {
		return fmt.Errorf("write sysctl %s=%q: %w", name, value, err)
	}
	return nil
}

// GetInts returns a sysctl holding whitespace-separated integers.
func GetInts(name string) ([]int, error) {
	v, err := Get(name)
	if err != nil {
		return nil, err
	}
	var out []int
	for _, f := range strings.Fields(v) {
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("read sysctl %s: %q is not a number", name, f)
		}
		out = append(out, n)
	}
	return out, nil
}
