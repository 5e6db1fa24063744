package state

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ErrLocked is wrapped when another process holds a namespace's lock.
var ErrLocked = errors.New("locked")

// Locker is a namespace's lock: one portfw at a time reads the sysctls,
// changes the kernel and writes the state. Without it two applies at once
// (a config-management run and an admin) could leave a lowered threshold
// with nobody's guard rules and no state; two daemons replaced each
// other's table 130 times in 4 s.
type Locker interface {
	// Lock takes the lock, waiting at most wait for it (0: not at all).
	// When another process holds it past that, the error wraps ErrLocked
	// and names the holder's pid. The lock is released by unlock, or when
	// the process exits.
	Lock(wait time.Duration) (unlock func(), err error)
}

// Lock is Dir's lock file, held with flock(2): the kernel releases it when
// its holder dies, so a crash never leaves a namespace locked. The file is
// the lock only while it is at its path: `portfw remove` deletes it
// (RemoveLock), so a lock taken on a file deleted meanwhile is dropped and
// taken again on the path's new file.
func (d Dir) Lock(wait time.Duration) (func(), error) {
	if err := os.MkdirAll(d.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock network namespace: %w", err)
	}
	deadline := time.Now().Add(wait)
	for {
		f, err := os.OpenFile(d.lockPath(), os.O_RDWR|os.O_CREATE, 0o644)
		if errors.Is(err, os.ErrNotExist) { // the directory went with a RemoveLock
			if err = os.MkdirAll(d.Dir, 0o755); err == nil {
				continue
			}
		}
		if err != nil {
			return nil, fmt.Errorf("lock network namespace: %w", err)
		}
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		switch {
		case err == nil && !samePath(f, d.lockPath()):
			f.Close() // deleted under us: lock the new one
			continue
		case err == nil:
			// Say who holds it, for the message another process prints.
			if err := f.Truncate(0); err == nil {
				f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
			}
			return func() {
				f.Truncate(0)
				syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			}, nil
		case !errors.Is(err, syscall.EWOULDBLOCK):
			f.Close()
			return nil, fmt.Errorf("lock network namespace: %w", err)
		case !time.Now().Before(deadline):
			holder := holderOf(d.lockPath())
			f.Close()
			waited := ""
			if wait > 0 {
				waited = " after waiting " + wait.String()
			}
			return nil, fmt.Errorf("another portfw (%s) manages this network namespace: lock %s is held%s: %w",
				holder, d.lockPath(), waited, ErrLocked)
		}
		f.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// samePath reports whether the open file f is still the file at path.
func samePath(f *os.File, path string) bool {
	var open, named syscall.Stat_t
	return syscall.Fstat(int(f.Fd()), &open) == nil && syscall.Stat(path, &named) == nil &&
		open.Dev == named.Dev && open.Ino == named.Ino
}

// RemoveLock deletes the lock file, and the state directory if that leaves
// it empty. The caller holds the lock and has done its work: whoever waits
// locks a new file at the path from then on. `portfw remove` calls it once
// nothing of portfw is left in the namespace.
func (d Dir) RemoveLock() error {
	if err := os.Remove(d.lockPath()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	os.Remove(d.Dir) // only if empty
	return nil
}

func holderOf(path string) string {
	b, err := os.ReadFile(path)
	if pid := strings.TrimSpace(string(b)); err == nil && pid != "" {
		if comm, err := os.ReadFile("/proc/" + pid + "/comm"); err == nil {
			return "pid " + pid + ", " + strings.TrimSpace(string(comm))
		}
		return "pid " + pid
	}
	return "pid unknown"
}

// Held checks that this process still holds the lock: the lock file is
// there and names it. Deleting /run/portfw under a running daemon would let
// a second one lock a new file.
func (d Dir) Held() error {
	b, err := os.ReadFile(d.lockPath())
	if err != nil {
		return err
	}
	if pid := strings.TrimSpace(string(b)); pid != strconv.Itoa(os.Getpid()) {
		return fmt.Errorf("lock %s names pid %q, not this process", d.lockPath(), pid)
	}
	return nil
}
