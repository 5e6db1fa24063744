package compiler_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/portfw/portfw/compiler"
)

// TestVersion ties compiler.Version to the goldens' output: when what the
// goldens compile to changes, Version must change too (a daemon or apply of
// the previous build would otherwise take the kernel's table for the new
// build's). testdata/version holds "VERSION HASH"; -update rewrites it only
// together with a new Version.
func TestVersion(t *testing.T) {
	h := sha256.New()
	for _, dir := range goldenDirs(t) {
		fmt.Fprintf(h, "%s\n%s", filepath.Base(dir), compileFile(t, filepath.Join(dir, "policy.yaml")).String())
	}
	got := fmt.Sprintf("%d %s", compiler.Version, hex.EncodeToString(h.Sum(nil)))
	const path = "testdata/version"
	data, err := os.ReadFile(path)
	if err != nil && !*update {
		t.Fatalf("%v (run go test ./compiler -update)", err)
	}
	want := strings.TrimSpace(string(data))
	var wantVersion int
	fmt.Sscan(want, &wantVersion)
	switch {
	case want == got:
	case wantVersion == compiler.Version && err == nil:
		t.Fatalf("the goldens compile to something new but compiler.Version is still %d: bump it (then go test ./compiler -update)", compiler.Version)
	case *update:
		if err := os.WriteFile(path, []byte(got+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("compiler.Version is %d, testdata/version says %q: run go test ./compiler -update", compiler.Version, want)
	}
}
