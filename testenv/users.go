package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"syscall"
	"testing"
)

// Cred is a uid and gid a peer process runs as. The zero value is root.
type Cred struct {
	UID, GID uint32
}

// Root is the credential of uid 0.
var Root = Cred{}

func (c Cred) String() string { return fmt.Sprintf("uid %d gid %d", c.UID, c.GID) }

// ProcCred is what a peer process reported about itself after dropping
// privileges.
type ProcCred struct {
	UID, EUID, GID, EGID uint32
	Groups               []uint32 // supplementary groups
}

// Is reports whether the process runs exactly as c: real and effective ids
// match and no supplementary groups were kept (a leftover group of root would
// let a "dropped" process keep root's access).
func (p ProcCred) Is(c Cred) bool {
	return p.UID == c.UID && p.EUID == c.UID && p.GID == c.GID && p.EGID == c.GID && len(p.Groups) == 0
}

// usersLock serialises useradd across concurrently running test binaries:
// useradd takes /etc/passwd locks itself and fails, rather than waits, when
// another useradd holds them.
const usersLock = "/run/portfw-testenv.lock"

// EnsureUser returns the uid and gid of the system user name, creating it
// (with a group of its own, no home, no login shell) if it does not exist.
// Users stay after the test: they are cheap, and other test binaries running
// at the same time may be using them.
func EnsureUser(t testing.TB, name string) (uid, gid uint32) {
	t.Helper()
	RequireNetNS(t)
	if uid, gid, err := lookupUser(name); err == nil {
		return uid, gid
	}
	f, err := os.OpenFile(usersLock, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("open lock: %v", err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("lock %s: %v", usersLock, err)
	}
	if uid, gid, err := lookupUser(name); err == nil {
		return uid, gid
	}
	args := []string{"--system", "--no-create-home", "--shell", "/usr/sbin/nologin"}
	if _, err := user.LookupGroup(name); err == nil {
		args = append(args, "--gid", name)
	} else {
		args = append(args, "--user-group")
	}
	if out, err := exec.Command("useradd", append(args, name)...).CombinedOutput(); err != nil {
		t.Fatalf("add user %s: %v: %s", name, err, out)
	}
	uid, gid, err = lookupUser(name)
	if err != nil {
		t.Fatalf("look up new user: %v", err)
	}
	return uid, gid
}

// User is EnsureUser returning a Cred.
func User(t testing.TB, name string) Cred {
	t.Helper()
	uid, gid := EnsureUser(t, name)
	return Cred{UID: uid, GID: gid}
}

func lookupUser(name string) (uid, gid uint32, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, err
	}
	id, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("parse uid of %s: %w", name, err)
	}
	g, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("parse gid of %s: %w", name, err)
	}
	return uint32(id), uint32(g), nil
}
