package resolve

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/portfw/portfw/testenv"
)

func TestCheckPerms(t *testing.T) {
	testenv.RequireNetNS(t) // root, to make files of other owners
	// setup returns a root-owned 0755 directory holding a 0644 policy.
	setup := func(t *testing.T) (dir, file string) {
		dir = filepath.Join(t.TempDir(), "etc")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		file = filepath.Join(dir, "policy.yaml")
		if err := os.WriteFile(file, []byte("version: 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return dir, file
	}
	must := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, dir, file string) string // returns the path to check
		want  []string                                    // substrings; nil: no error
	}{
		{"good", func(t *testing.T, dir, file string) string { return file }, nil},
		{"read-only file", func(t *testing.T, dir, file string) string {
			must(t, os.Chmod(file, 0o400))
			return file
		}, nil},
		{"group writable file", func(t *testing.T, dir, file string) string {
			must(t, os.Chmod(file, 0o664))
			return file
		}, []string{"policy file " + "FILE is writable by its group (mode 0664); fix with: chmod go-w FILE"}},
		{"world writable file", func(t *testing.T, dir, file string) string {
			must(t, os.Chmod(file, 0o646))
			return file
		}, []string{"policy file FILE is writable by others (mode 0646); fix with: chmod go-w FILE"}},
		{"file owned by a user", func(t *testing.T, dir, file string) string {
			must(t, os.Chown(file, 1000, 0))
			return file
		}, []string{"policy file FILE is owned by uid 1000, not root; fix with: chown root FILE"}},
		{"writable directory", func(t *testing.T, dir, file string) string {
			must(t, os.Chmod(dir, 0o777))
			return file
		}, []string{"directory DIR on the way to the policy is writable by group and others (mode 0777): they can replace the policy; move the policy into a directory only root can write, such as /etc/portfw"}},
		{"directory owned by a user", func(t *testing.T, dir, file string) string {
			must(t, os.Chown(dir, 1000, 1000))
			return file
		}, []string{"directory DIR on the way to the policy is owned by uid 1000, not root: its owner can replace the policy; move the policy"}},
		{"every problem at once", func(t *testing.T, dir, file string) string {
			must(t, os.Chmod(dir, 0o775))
			must(t, os.Chmod(file, 0o666))
			return file
		}, []string{"directory DIR on the way to the policy is writable by its group", "policy file FILE is writable by group and others"}},
		{"good symlink", func(t *testing.T, dir, file string) string {
			link := filepath.Join(dir, "current.yaml")
			must(t, os.Symlink("policy.yaml", link))
			return link
		}, nil},
		{"symlink to a bad target", func(t *testing.T, dir, file string) string {
			other := filepath.Join(filepath.Dir(dir), "other")
			must(t, os.Mkdir(other, 0o755))
			must(t, os.WriteFile(filepath.Join(other, "p.yaml"), nil, 0o666))
			must(t, os.Chmod(filepath.Join(other, "p.yaml"), 0o666))
			link := filepath.Join(dir, "current.yaml")
			must(t, os.Symlink(filepath.Join(other, "p.yaml"), link))
			return link
		}, []string{"policy file " + "OTHER/p.yaml is writable by group and others"}},
		{"symlink to a target in a writable directory", func(t *testing.T, dir, file string) string {
			other := filepath.Join(filepath.Dir(dir), "other")
			must(t, os.Mkdir(other, 0o755))
			must(t, os.Chmod(other, 0o757))
			must(t, os.WriteFile(filepath.Join(other, "p.yaml"), nil, 0o644))
			link := filepath.Join(dir, "current.yaml")
			must(t, os.Symlink("../other/p.yaml", link))
			return link
		}, []string{"directory OTHER on the way to the policy is writable by others (mode 0757)"}},
		{"symlink in a writable directory", func(t *testing.T, dir, file string) string {
			other := filepath.Join(filepath.Dir(dir), "other")
			must(t, os.Mkdir(other, 0o755))
			must(t, os.Chmod(other, 0o777))
			link := filepath.Join(other, "policy.yaml")
			must(t, os.Symlink(file, link))
			return link
		}, []string{"directory OTHER on the way to the policy is writable by group and others"}},
		{"chain of symlinks", func(t *testing.T, dir, file string) string {
			other := filepath.Join(filepath.Dir(dir), "other")
			must(t, os.Mkdir(other, 0o755))
			must(t, os.Chown(other, 1000, 1000))
			must(t, os.Symlink(file, filepath.Join(other, "hop")))
			link := filepath.Join(dir, "current.yaml")
			must(t, os.Symlink(filepath.Join(other, "hop"), link))
			return link
		}, []string{"directory OTHER on the way to the policy is owned by uid 1000"}},
		{"writable grandparent", func(t *testing.T, dir, file string) string {
			// Whoever can write the grandparent can rename the parent
			// away and put a directory of their own in its place.
			must(t, os.Chmod(filepath.Dir(dir), 0o777))
			return file
		}, []string{"directory PARENT on the way to the policy is writable by group and others (mode 0777)", "move the policy"}},
		{"sticky root-owned directory on the way", func(t *testing.T, dir, file string) string {
			must(t, os.Chmod(filepath.Dir(dir), 0o777|os.ModeSticky)) // like /tmp
			return file
		}, nil},
		{"sticky directory of a user", func(t *testing.T, dir, file string) string {
			must(t, os.Chmod(filepath.Dir(dir), 0o777|os.ModeSticky))
			must(t, os.Chown(filepath.Dir(dir), 1000, 1000))
			return file
		}, []string{"directory PARENT on the way to the policy is owned by uid 1000"}},
		{"not a regular file", func(t *testing.T, dir, file string) string { return dir },
			[]string{"policy file DIR is not a regular file"}},
		{"missing", func(t *testing.T, dir, file string) string { return filepath.Join(dir, "nope.yaml") },
			[]string{"check policy permissions: lstat DIR/nope.yaml: no such file or directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, file := setup(t)
			path := tt.setup(t, dir, file)
			err := CheckPerms(path)
			if tt.want == nil {
				if err != nil {
					t.Errorf("CheckPerms(%s) = %v, want nil", path, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("CheckPerms(%s) = nil, want an error", path)
			}
			r := strings.NewReplacer("FILE", file, "DIR", dir, "OTHER", filepath.Join(filepath.Dir(dir), "other"), "PARENT", filepath.Dir(dir))
			for _, w := range tt.want {
				if w = r.Replace(w); !strings.Contains(err.Error(), w) {
					t.Errorf("CheckPerms(%s) = %v\nwant it to contain %q", path, err, w)
				}
			}
		})
	}
}

// TestCheckFilePerms: each drop-in, and policy.d itself, must be root's
// alone, as the main file must: whoever can write policy.d can add a
// reservation.
func TestCheckFilePerms(t *testing.T) {
	testenv.RequireNetNS(t) // root, to make files of other owners
	setup := func(t *testing.T) (main, dropIns string) {
		dir := filepath.Join(t.TempDir(), "etc")
		dropIns = filepath.Join(dir, "policy.d")
		for _, d := range []string{dir, dropIns} {
			if err := os.Mkdir(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		main = filepath.Join(dir, "policy.yaml")
		for _, f := range []string{main, filepath.Join(dropIns, "50-nginx.yaml")} {
			if err := os.WriteFile(f, []byte("version: 1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return main, dropIns
	}
	check := func(t *testing.T, main string) error {
		t.Helper()
		files, err := Files(main)
		if err != nil {
			t.Fatal(err)
		}
		return CheckFilePerms(files)
	}
	main, dropIns := setup(t)
	if err := check(t, main); err != nil {
		t.Fatalf("root's files: %v", err)
	}
	nginx := filepath.Join(dropIns, "50-nginx.yaml")
	if err := os.Chmod(nginx, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := check(t, main); err == nil || !strings.Contains(err.Error(), "policy file "+nginx+" is writable by group and others") {
		t.Errorf("a world-writable drop-in: %v", err)
	}
	main, dropIns = setup(t)
	if err := os.Chmod(dropIns, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := check(t, main); err == nil || !strings.Contains(err.Error(), "directory "+dropIns+" on the way to the policy is writable by group and others") {
		t.Errorf("a world-writable policy.d: %v", err)
	}
	// An empty policy.d is checked too: anyone could fill it.
	if err := os.Remove(filepath.Join(dropIns, "50-nginx.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := check(t, main); err == nil || !strings.Contains(err.Error(), "directory "+dropIns) {
		t.Errorf("an empty world-writable policy.d: %v", err)
	}
	main, dropIns = setup(t)
	if err := os.Chown(dropIns, 1000, 1000); err != nil {
		t.Fatal(err)
	}
	if err := check(t, main); err == nil || !strings.Contains(err.Error(), "directory "+dropIns+" on the way to the policy is owned by uid 1000") {
		t.Errorf("a policy.d owned by a user: %v", err)
	}
}

// A Kubernetes ConfigMap volume: a tmpfs whose root is mode 0777 (an
// emptyDir's), the file behind ..data symlinks, mounted read-only. Nobody
// can write it through the mount, so it passes; the same layout on a
// writable mount does not.
func TestCheckPermsConfigMapVolume(t *testing.T) {
	testenv.RequireNetNS(t) // root, to mount
	vol := filepath.Join(t.TempDir(), "policy")
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", vol, "tmpfs", 0, "mode=0777"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(vol, syscall.MNT_DETACH) })
	ts := filepath.Join(vol, "..2026_12_01_10_00_00.123")
	for _, err := range []error{
		os.Mkdir(ts, 0o755),
		os.WriteFile(filepath.Join(ts, "policy.yaml"), []byte("version: 1\n"), 0o644),
		os.Symlink(filepath.Base(ts), filepath.Join(vol, "..data")),
		os.Symlink("..data/policy.yaml", filepath.Join(vol, "policy.yaml")),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(vol, "policy.yaml")
	if err := CheckPerms(path); err == nil || !strings.Contains(err.Error(), "is writable by group and others (mode 0777)") {
		t.Fatalf("writable ConfigMap-like volume: %v, want the 0777 directory refused", err)
	}
	if err := syscall.Mount("", vol, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, "mode=0777"); err != nil {
		t.Fatal(err)
	}
	if err := CheckPerms(path); err != nil {
		t.Errorf("read-only ConfigMap volume refused: %v", err)
	}
	// Below the root of a read-only mount, a writable directory is still
	// refused: under ProtectSystem=strict every path is on one.
	inner := filepath.Join(t.TempDir(), "inner")
	os.Mkdir(inner, 0o755)
	if err := syscall.Mount("tmpfs", inner, "tmpfs", 0, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(inner, syscall.MNT_DETACH) })
	sub := filepath.Join(inner, "shared")
	os.Mkdir(sub, 0o755)
	os.Chmod(sub, 0o777)
	os.WriteFile(filepath.Join(sub, "policy.yaml"), []byte("version: 1\n"), 0o644)
	if err := syscall.Mount("", inner, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	if err := CheckPerms(filepath.Join(sub, "policy.yaml")); err == nil || !strings.Contains(err.Error(), "shared on the way to the policy is writable") {
		t.Errorf("a 0777 directory below a read-only mount's root: %v, want it refused", err)
	}
	// A writable file is refused even on a read-only mount (ConfigMap
	// files are 0644).
	if err := syscall.Mount("", inner, "", syscall.MS_REMOUNT, "mode=0755"); err != nil {
		t.Fatal(err)
	}
	os.Chmod(sub, 0o755)
	os.Chmod(filepath.Join(sub, "policy.yaml"), 0o666)
	syscall.Mount("", inner, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, "mode=0755")
	if err := CheckPerms(filepath.Join(sub, "policy.yaml")); err == nil || !strings.Contains(err.Error(), "is writable by group and others") {
		t.Errorf("a 0666 file on a read-only mount: %v, want it refused", err)
	}
}

// ".." after a symbolic link goes up from the link's target, as the
// kernel resolves it: the check must follow the same path the read does.
func TestCheckPermsDotDotAfterSymlink(t *testing.T) {
	testenv.RequireNetNS(t) // root, to make files of other owners
	base := t.TempDir()
	mk := func(p string, mode os.FileMode) string {
		p = filepath.Join(base, p)
		if err := os.MkdirAll(p, mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		return p
	}
	root := mk("root", 0o755)
	mk("root/shared", 0o755)
	os.WriteFile(filepath.Join(root, "shared", "policy.yaml"), []byte("version: 1\n"), 0o644)
	// A user's tree: releases/42 and, beside it, their own shared/policy.yaml.
	evil := mk("evil", 0o755)
	mk("evil/releases/42", 0o755)
	mk("evil/releases/shared", 0o755)
	os.WriteFile(filepath.Join(evil, "releases", "shared", "policy.yaml"), []byte("version: 1\n"), 0o644)
	for _, p := range []string{evil, filepath.Join(evil, "releases"), filepath.Join(evil, "releases", "42"),
		filepath.Join(evil, "releases", "shared"), filepath.Join(evil, "releases", "shared", "policy.yaml")} {
		os.Chown(p, 1000, 1000)
	}
	if err := os.Symlink(filepath.Join(evil, "releases", "42"), filepath.Join(root, "current")); err != nil {
		t.Fatal(err)
	}
	// root/current/../shared/policy.yaml is the user's file, not root's.
	path := filepath.Join(root, "current") + "/../shared/policy.yaml"
	if b, _ := os.ReadFile(path); len(b) == 0 {
		t.Fatal("setup: the path does not resolve")
	}
	err := CheckPerms(path)
	if err == nil || !strings.Contains(err.Error(), "owned by uid 1000") {
		t.Errorf("CheckPerms(%s) = %v, want the user's directories refused", path, err)
	}
	// Control: root's own file, reached without the link, passes.
	if err := CheckPerms(root + "/shared/../shared/policy.yaml"); err != nil {
		t.Errorf("root's own file: %v", err)
	}
}
