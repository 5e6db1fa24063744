package testenv

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var peerBin struct {
	once sync.Once
	path string
	err  error
}

// peerPath builds testenv/peer once per test binary. go test puts its own go
// first in PATH, so the peer is built by the toolchain running the tests.
func peerPath(t testing.TB) string {
	t.Helper()
	peerBin.once.Do(func() { peerBin.path, peerBin.err = buildPeer() })
	if peerBin.err != nil {
		t.Fatalf("build peer: %v", peerBin.err)
	}
	return peerBin.path
}

// buildPeer builds into a root-only cache directory and renames the result
// into place: the rename is atomic, so test binaries building at the same time
// never run a half-written peer, and unlike a fresh temporary directory per
// test binary nothing piles up, since nothing runs after the last test to
// remove it.
func buildPeer() (string, error) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("find go: %w", err)
	}
	out, err := exec.Command(goBin, "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("run go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("find module root: not inside the portfw module (run tests with go test)")
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "portfw-testenv")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("create peer dir: %w", err)
	}
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return "", fmt.Errorf("create build dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "peer")
	cmd := exec.Command(goBin, "build", "-o", bin, "./testenv/peer")
	cmd.Dir = filepath.Dir(gomod)
	// Static, so the peer starts fast and needs nothing from the namespace.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./testenv/peer: %w\n%s", err, out)
	}
	final := filepath.Join(dir, "peer")
	if err := os.Rename(bin, final); err != nil {
		return "", fmt.Errorf("install peer: %w", err)
	}
	return final, nil
}

// proc is a running peer. Its stdout is read line by line on a goroutine;
// done is closed once stdout hit EOF and the process was reaped.
type proc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	stderr  lockedBuffer
	done    chan struct{}
	waitErr error
}

// startPeer runs the peer inside ns. nsenter joins the namespace and execs
// the peer (it does not fork for a network namespace alone), so the process
// the harness holds is the peer itself. The peer starts as root and drops to
// the requested uid on its own.
func startPeer(t testing.TB, ns *NS, onLine func([]byte), args ...string) *proc {
	t.Helper()
	bin := peerPath(t)
	p := &proc{done: make(chan struct{})}
	p.cmd = exec.Command("nsenter", append([]string{"--net=" + ns.Path, "--", bin}, args...)...)
	p.cmd.Stderr = &p.stderr
	var err error
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatalf("pipe peer stdin: %v", err)
	}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("pipe peer stdout: %v", err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start peer: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
		for sc.Scan() {
			onLine(sc.Bytes())
		}
		// Drain, so Wait is never stuck behind a full pipe.
		io.Copy(io.Discard, stdout)
		p.waitErr = p.cmd.Wait()
		close(p.done)
	}()
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) String() string {
	// Args: nsenter --net=PATH -- BIN ARGS...
	return "peer " + strings.Join(p.cmd.Args[4:], " ")
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
