package resolve

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// CheckPerms refuses a policy that anyone but root could change, as sshd's
// StrictModes does: whoever can write the policy decides who owns which
// port. The file must be a regular file owned by root and writable by root
// alone, and so must be every directory on the way to it, from / down,
// since whoever can write a directory can replace what is below it.
// Symbolic links are followed (ConfigMaps and editors put policies behind
// them), and the directories on the way to each target are checked too.
// Root-owned sticky directories (/tmp) are fine: others cannot rename or
// delete root's entries there.
func CheckPerms(path string) error { return checkPerms(path, false) }

// CheckDirPerms is CheckPerms for a directory of policy files (policy.d):
// it and every directory on the way to it must be root's alone.
func CheckDirPerms(path string) error { return checkPerms(path, true) }

func checkPerms(path string, dir bool) error {
	if !filepath.IsAbs(path) {
		wd, err := os.Getwd()
		if err != nil {
			return fmt.Errorf("check policy permissions: %w", err)
		}
		path = wd + "/" + path // not Join: it would resolve ".." by text
	}
	c := &permCheck{seen: map[string]bool{}, leafDir: dir}
	if err := c.walk(path, 0); err != nil {
		return fmt.Errorf("check policy permissions: %w", err)
	}
	return errors.Join(c.problems...)
}

type permCheck struct {
	leafDir  bool // the path checked is a directory
	seen     map[string]bool
	problems []error
}

// walk checks every directory from / to path and then path itself,
// restarting at each symbolic link's target, as the kernel resolves it:
// ".." after a symbolic link leaves the link's target, not the link's own
// directory, so a path is never cleaned as text.
func (c *permCheck) walk(path string, hops int) error {
	if hops > 40 {
		return errors.New(path + ": too many levels of symbolic links")
	}
	var parts []string
	for _, p := range strings.Split(path, "/") {
		if p != "" && p != "." {
			parts = append(parts, p)
		}
	}
	cur := "/" // always a real directory: no symbolic link in it
	c.dir(cur)
	for i, part := range parts {
		last := i == len(parts)-1
		if part == ".." {
			cur = filepath.Dir(cur)
			if last && !c.leafDir {
				c.problems = append(c.problems, fmt.Errorf("policy file %s is a directory", path))
			}
			continue
		}
		next := filepath.Join(cur, part)
		fi, err := os.Lstat(next)
		if err != nil {
			return err
		}
		if fi.Mode()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(next)
			if err != nil {
				return err
			}
			if !filepath.IsAbs(target) {
				target = cur + "/" + target
			}
			return c.walk(target+"/"+strings.Join(parts[i+1:], "/"), hops+1)
		}
		if !last || c.leafDir {
			c.dir(next)
			cur = next
			continue
		}
		c.file(next, fi)
	}
	return nil
}

func (c *permCheck) dir(path string) {
	if c.seen[path] {
		return
	}
	c.seen[path] = true
	fi, err := os.Stat(path)
	if err != nil {
		c.problems = append(c.problems, err)
		return
	}
	uid := owner(fi)
	mode := fi.Mode()
	switch {
	case uid != 0:
		c.problems = append(c.problems, fmt.Errorf("directory %s on the way to the policy is owned by uid %d, not root: "+
			"its owner can replace the policy; move the policy into a directory only root can write, such as /etc/portfw", path, uid))
	case mode.Perm()&0o022 != 0 && mode&fs.ModeSticky == 0 && !readOnlyMountRoot(path):
		c.problems = append(c.problems, fmt.Errorf("directory %s on the way to the policy is writable by %s (mode %04o): "+
			"they can replace the policy; move the policy into a directory only root can write, such as /etc/portfw", path, writers(mode), mode.Perm()))
	}
}

func (c *permCheck) file(path string, fi fs.FileInfo) {
	if !fi.Mode().IsRegular() {
		c.problems = append(c.problems, fmt.Errorf("policy file %s is not a regular file", path))
		return
	}
	if uid := owner(fi); uid != 0 {
		c.problems = append(c.problems, fmt.Errorf("policy file %s is owned by uid %d, not root; fix with: chown root %s", path, uid, path))
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		c.problems = append(c.problems, fmt.Errorf("policy file %s is writable by %s (mode %04o); fix with: chmod go-w %s", path, writers(fi.Mode()), perm, path))
	}
}

func owner(fi fs.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid
	}
	return 0
}

func writers(m fs.FileMode) string {
	switch perm := m.Perm(); {
	case perm&0o022 == 0o022:
		return "group and others"
	case perm&0o020 != 0:
		return "its group"
	}
	return "others"
}

// readOnlyMountRoot reports whether the directory path is the root of a
// read-only mount: its mode bits let nobody write it through this mount.
// That is a Kubernetes ConfigMap volume, whose root directory is mode 0777
// (an emptyDir's) but mounted read-only into the container. Only the root
// of such a mount passes: under systemd's ProtectSystem=strict everything
// is on a read-only mount, and a writable directory below / must still be
// refused.
func readOnlyMountRoot(path string) bool {
	var sfs unix.Statfs_t
	if unix.Statfs(path, &sfs) != nil || sfs.Flags&unix.ST_RDONLY == 0 {
		return false
	}
	var stx unix.Statx_t
	if unix.Statx(unix.AT_FDCWD, path, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_BASIC_STATS, &stx) != nil {
		return false
	}
	return stx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && stx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}
