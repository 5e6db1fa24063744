// Command portfw makes ports belong to users: it compiles a YAML policy
// into one nftables table and an eBPF bind guard that keep any other uid
// off a reserved port, and keeps the kernel in step with the policy.
//
// The command is flags, output and exit codes: everything it does to the
// host goes through package engine.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/portfw/portfw/internal/engine"
	"github.com/portfw/portfw/resolve"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const defaultPolicy = "/etc/portfw/policy.yaml"

// Exit codes. 1 means "the answer is no" (invalid policy, not in sync,
// apply failed, a squatter found); 2 means portfw could not run as asked.
const (
	exitOK    = 0
	exitNo    = 1
	exitUsage = 2
)

type command struct {
	name, args, summary string
	run                 func(a *app, args []string) int
	// exits documents the exit status, when it says more than 0/1/2.
	exits string
	// hidden commands are left out of the usage (they serve packaging).
	hidden bool
}

var commands []command

func init() {
	commands = []command{
		{"check", "[-f FILE] [--drop-in FILE [--as NAME]] [--json]", "validate a policy and say what applying it would do here", runCheck,
			"0 valid; 1 invalid (every problem is listed, file:line:col); 2 bad usage", false},
		{"compile", "[-f FILE]", "print the nftables ruleset for a policy (nft -f syntax)", runCompile, "", false},
		{"apply", "[-f FILE] [--dry-run] [--json]", "make the kernel enforce a policy (one atomic transaction)", runApply, "", false},
		{"diff", "[-f FILE] [--json]", "show what apply would change; exit 0 in sync, 1 changes, 2 error", runDiff,
			"0 in sync: apply would change nothing; 1 changes: apply would change what is listed; 2 error: no comparison could be made (an invalid policy, no permission, no nftables)", false},
		{"status", "[-f FILE] [--table NAME] [--format text|json|prometheus]", "show what is installed, with drop counters", runStatus, "", false},
		{"audit", "[-f FILE] [--json]", "list the sockets on reserved ports; exit 1 when a squatter holds one", runAudit,
			"0 no squatter; 1 a squatter holds a reserved port; 2 error", false},
		{"remove", "[-f FILE] [--table NAME]", "delete portfw's table and guard, restore the sysctls it changed", runRemove, "", false},
		{"watch", "[-f FILE] [--log-format text|json] [--metrics-address HOST:PORT] [--remove-on-exit]", "run as a daemon: apply, reload on change, repair drift", runWatch, "", false},
		{"wait-owner", "[--cgroup PATH] [--timeout D]", "wait until a cgroup (default: this process's) owns reservations here: ExecStartPre= of a unit owner", runWaitOwner,
			"0 the cgroup owns reservations in the table; 1 it owns none before the timeout, or an error; 2 bad usage", false},
		{"version", "[--json]", "print the version, the Go version and whether the bind guard is built in", runVersion, "", false},
		{"completion", "bash|zsh", "print the shell completion script", runCompletion, "", false},
		{"man", "portfw|policy", "print the portfw(8) or portfw-policy(5) man page (roff)", runMan, "", true},
	}
}

// app carries the process's streams and its view of the host, so commands
// can be tested in-process against fakes.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// host builds the engine for this namespace; tests give fakes.
	host  func(hostOptions) (*engine.Engine, error)
	users resolve.Resolver
	// describe, when set, receives each command's flags instead of the
	// command running: the man page and completions are made from them.
	describe func(*flag.FlagSet)
}

func newApp(stdout, stderr io.Writer) *app {
	a := &app{stdout: stdout, stderr: stderr, getenv: os.Getenv}
	a.host = a.realHost
	return a
}

func main() {
	stop := profile(os.Getenv("PORTFW_CPUPROFILE"))
	limitMemory(os.Args[1:])
	code := newApp(os.Stdout, os.Stderr).run(os.Args[1:])
	stop()
	os.Exit(code)
}

// oneShotMemory is the soft memory limit of the commands that exit when
// done: the collector works harder near it instead of letting the heap
// double. At 100k reservations a fresh apply's live heap peaks near 190 MB
// (a 160 MiB limit slowed it, measured) and its resident size was ~270 MB
// with a 256 MiB limit, ~215 MB with this one, in the same time; below
// some 50k reservations the heap never comes near it. The daemon has none:
// a limit under its live heap would keep its collector running.
// GOMEMLIMIT, when set, is the Go runtime's and wins.
const oneShotMemory = 200 << 20

// oneShotGC is the collector's GOGC for those commands: they allocate
// most of what they ever hold within a quarter of a second, and at the
// default 100 the collector ran five or six cycles through a fresh apply
// of 10k reservations, on the two CPUs its work needs. At 400, median of
// 10 fresh applies alternating: 262 -> 233 ms, peak resident 56-60 ->
// 62-65 MB; the memory limit above still bounds the heap. GOGC, when set,
// wins.
const oneShotGC = 400

func limitMemory(args []string) {
	if len(args) > 0 && args[0] == "watch" {
		return
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(oneShotMemory)
	}
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(oneShotGC)
	}
}

// profile writes a CPU profile of the command to file, when it is set
// (docs/performance.md: how the numbers there were explained).
func profile(file string) (stop func()) {
	if file == "" {
		return func() {}
	}
	f, err := os.Create(file)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "portfw: PORTFW_CPUPROFILE: %v\n", err)
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
	}
}

// resolver is the user database, shared by the daemon's reloads.
func (a *app) resolver() resolve.Resolver {
	if a.users == nil {
		s := resolve.NewSystem(a.getenv("PORTFW_PASSWD_FILE"), a.getenv("PORTFW_GROUP_FILE"))
		s.Cgroups = &resolve.HostCgroups{From: a.getenv("PORTFW_UNITS_FROM")}
		a.users = s
	}
	return a.users
}

func (a *app) run(args []string) int {
	if len(args) == 0 {
		a.usage(a.stderr)
		return exitUsage
	}
	name := args[0]
	if name == "help" || name == "-h" || name == "--help" || name == "-help" {
		if len(args) > 1 {
			for _, c := range commands {
				if c.name == args[1] {
					return c.run(a, []string{"-h"})
				}
			}
		}
		a.usage(a.stdout)
		return exitOK
	}
	if name == "--version" || name == "-version" {
		name = "version"
	}
	for _, c := range commands {
		if c.name == name {
			return c.run(a, args[1:])
		}
	}
	fmt.Fprintf(a.stderr, "portfw: unknown command %q\n\n", name)
	a.usage(a.stderr)
	return exitUsage
}

func (a *app) usage(w io.Writer) {
	fmt.Fprintf(w, "portfw: ports that belong to users.\n\nUsage:\n  portfw <command> [flags]\n\nCommands:\n")
	for _, c := range commands {
		if !c.hidden {
			fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
		}
	}
	fmt.Fprintf(w, "\nThe policy file defaults to %s. Run 'portfw help <command>' for its flags.\n", defaultPolicy)
	fmt.Fprintf(w, "Exit codes: 0 success, 1 the answer is no (invalid policy, not applied, changes pending, squatter found), 2 usage or runtime error.\n")
}

// flags makes a FlagSet for a command with the usage line every command
// shares; errors are reported by the caller with exit code 2.
func (a *app) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.Usage = func() {
		for _, c := range commands {
			if c.name == name {
				fmt.Fprintf(fs.Output(), "Usage: portfw %s %s\n\n%s.\n", name, c.args, upperFirst(c.summary))
				if c.exits != "" {
					fmt.Fprintf(fs.Output(), "\nExit status: %s.\n", c.exits)
				}
				fmt.Fprintf(fs.Output(), "\nFlags:\n")
			}
		}
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags; it returns done=true with the exit code when the
// command must stop (bad flags, -h, stray arguments).
func (a *app) parse(fs *flag.FlagSet, args []string) (code int, done bool) {
	return a.parseArgs(fs, args, 0)
}

// parseArgs is parse for a command that takes up to max arguments after
// its flags.
func (a *app) parseArgs(fs *flag.FlagSet, args []string, max int) (code int, done bool) {
	if a.describe != nil {
		a.describe(fs)
		return exitOK, true
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, true
		}
		return exitUsage, true
	}
	if fs.NArg() > max {
		fmt.Fprintf(a.stderr, "portfw %s: unexpected argument %q\n", fs.Name(), fs.Arg(max))
		fs.Usage()
		return exitUsage, true
	}
	return 0, false
}

func fileFlag(fs *flag.FlagSet) *string {
	p := fs.String("f", defaultPolicy, "policy `file`; the *.yaml drop-ins of policy.d beside it are merged in")
	fs.StringVar(p, "file", defaultPolicy, "policy `file` (same as -f)")
	return p
}

func insecureFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("insecure-policy-perms", false, "accept a policy file (or a directory on the way to it) that users other than root can write")
}

// hostFlags are the flags of commands that change the host.
func (a *app) hostFlags(fs *flag.FlagSet, wait time.Duration) *hostOptions {
	o := &hostOptions{}
	fs.StringVar(&o.cgroup, "bind-guard-cgroup", a.getenv(envGuardCgroup),
		"attach the bind guard to this cgroup v2 `path` (relative to the hierarchy's root, as in /proc/self/cgroup) instead of the root, "+
			"guarding only processes below it (tests); default $"+envGuardCgroup)
	if wait > 0 {
		fs.DurationVar(&o.lockWait, "wait", wait, "how long to wait while another portfw holds this network namespace's lock")
	}
	return o
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
