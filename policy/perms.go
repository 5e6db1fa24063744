package policy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// CheckPerms refuses a policy that anyone but root could change, as sshd's
// StrictModes does: whoever can write the policy decides who owns which
// port. It checks the file and its directory (a writable directory lets
// anyone replace the file); for a symlink it checks the directory of every
// link on the way and the final target and its directory, because
// ConfigMaps and editors put policies behind links.
func CheckPerms(path string) error {
	var errs []error
	checked := map[string]bool{}
	check := func(p, what string, wantFile bool) {
		if checked[p] {
			return
		}
		checked[p] = true
		if err := checkOwner(p, what, wantFile); err != nil {
			errs = append(errs, err)
		}
	}
	cur := path
	for hops := 0; ; hops++ {
		fi, err := os.Lstat(cur)
		if err != nil {
			return fmt.Errorf("check policy permissions: %w", err)
		}
		check(filepath.Dir(cur), "policy directory", false)
		if fi.Mode()&fs.ModeSymlink == 0 {
			break
		}
		if hops == 40 {
			return fmt.Errorf("check policy permissions: %s: too many levels of symbolic links", path)
		}
		target, err := os.Readlink(cur)
		if err != nil {
			return fmt.Errorf("check policy permissions: %w", err)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(cur), target)
		}
		cur = target
	}
	final, err := filepath.EvalSymlinks(path)
	if err != nil {
		return fmt.Errorf("check policy permissions: %w", err)
	}
	check(final, "policy file", true)
	check(filepath.Dir(final), "policy directory", false)
	return errors.Join(errs...)
}

func checkOwner(path, what string, wantFile bool) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("check policy permissions: %w", err)
	}
	if wantFile && !fi.Mode().IsRegular() {
		return fmt.Errorf("%s %s is not a regular file", what, path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 {
		return fmt.Errorf("%s %s is owned by uid %d, not root; fix with: chown root %s", what, path, st.Uid, path)
	}
	var who string
	switch perm := fi.Mode().Perm(); {
	case perm&0o022 == 0o022:
		who = "group and others"
	case perm&0o020 != 0:
		who = "its group"
	case perm&0o002 != 0:
		who = "others"
	default:
		return nil
	}
	return fmt.Errorf("%s %s is writable by %s (mode %04o); fix with: chmod go-w %s", what, path, who, fi.Mode().Perm(), path)
}
