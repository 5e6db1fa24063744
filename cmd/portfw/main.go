// Command portfw makes ports belong to users: it compiles a YAML policy
// into one nftables table that starves any other uid on a reserved port,
// and keeps the kernel in step with the policy.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const defaultPolicy = "/etc/portfw/policy.yaml"

// Exit codes. 1 means "the answer is no" (invalid policy, not in sync,
// apply failed); 2 means portfw could not run as asked.
const (
	exitOK    = 0
	exitNo    = 1
	exitUsage = 2
)

type command struct {
	name, args, summary string
	run                 func(a *app, args []string) int
}

var commands []command

func init() {
	commands = []command{
		{"check", "[-f FILE] [--json]", "validate a policy and warn about what will matter at apply time", runCheck},
		{"compile", "[-f FILE]", "print the nftables ruleset for a policy (nft -f syntax)", runCompile},
		{"apply", "[-f FILE] [--dry-run] [--json]", "make the kernel enforce a policy (one atomic transaction)", runApply},
		{"diff", "[-f FILE] [--json]", "show what apply would change; exit 0 when in sync, 1 when not", runDiff},
		{"status", "[-f FILE] [--table NAME] [--json]", "show what is installed, with drop counters", runStatus},
		{"audit", "[-f FILE] [--json]", "list the sockets on reserved ports; exit 1 when a squatter holds one", runAudit},
		{"remove", "[-f FILE] [--table NAME]", "delete portfw's table and restore the sysctls it changed", runRemove},
		{"watch", "[-f FILE] [--log-format text|json] [--remove-on-exit]", "run as a daemon: apply, reload on change, repair drift", runWatch},
		{"version", "", "print the version", func(a *app, _ []string) int { fmt.Fprintln(a.stdout, "portfw", version); return exitOK }},
	}
}

// app carries the process's streams so commands can be tested in-process.
type app struct {
	stdout, stderr io.Writer
}

func main() {
	os.Exit((&app{stdout: os.Stdout, stderr: os.Stderr}).run(os.Args[1:]))
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
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nThe policy file defaults to %s. Run 'portfw help <command>' for its flags.\n", defaultPolicy)
}

// flags makes a FlagSet for a command with the usage line every command
// shares; errors are reported by the caller with exit code 2.
func (a *app) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.Usage = func() {
		for _, c := range commands {
			if c.name == name {
				fmt.Fprintf(fs.Output(), "Usage: portfw %s %s\n\n%s.\n\nFlags:\n", name, c.args, upperFirst(c.summary))
			}
		}
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags; it returns done=true with the exit code when the
// command must stop (bad flags, -h, stray arguments).
func (a *app) parse(fs *flag.FlagSet, args []string) (code int, done bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, true
		}
		return exitUsage, true
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(a.stderr, "portfw %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return exitUsage, true
	}
	return 0, false
}

func fileFlag(fs *flag.FlagSet) *string {
	p := fs.String("f", defaultPolicy, "policy `file`")
	fs.StringVar(p, "file", defaultPolicy, "policy `file` (same as -f)")
	return p
}

func upperFirst(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
