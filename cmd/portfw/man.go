package main

import (
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/cpuguy83/go-md2man/v2/md2man"

	"github.com/portfw/portfw/docs"
)

// The man pages and the shell completions are made from the commands'
// own flag sets and docs/policy.md, so they say what --help says.

// cmdFlags is one command's flags, in the order PrintDefaults lists them.
type cmdFlags struct {
	command
	flags []*flag.Flag
}

// flagSet is c's flag set, as c defines it: c runs with describe set,
// which hands the set over instead of running the command. Defaults are the
// documented ones, not what this shell's environment makes them.
func flagSet(c command) *flag.FlagSet {
	a := newApp(io.Discard, io.Discard)
	a.getenv = func(string) string { return "" }
	var fs *flag.FlagSet
	a.describe = func(f *flag.FlagSet) { fs = f }
	c.run(a, nil)
	return fs
}

// allFlags is every command with its flags.
func allFlags() []cmdFlags {
	var out []cmdFlags
	for _, c := range commands {
		cf := cmdFlags{command: c}
		flagSet(c).VisitAll(func(f *flag.Flag) { cf.flags = append(cf.flags, f) })
		out = append(out, cf)
	}
	return out
}

// flagName is how the docs spell a flag: -f, --json.
func flagName(f *flag.Flag) string {
	if len(f.Name) == 1 {
		return "-" + f.Name
	}
	return "--" + f.Name
}

// takesValue reports whether f needs an argument (it is not a bool flag).
func takesValue(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return !ok || !b.IsBoolFlag()
}

var mdSpecial = strings.NewReplacer(`\`, `\\`, "`", "\\`", "*", `\*`, "_", `\_`, "[", `\[`, "]", `\]`, "<", `\<`, ">", `\>`, "|", `\|`)

func md(s string) string { return mdSpecial.Replace(s) }

// manPortfw is portfw(8) in markdown, for md2man.
func manPortfw(w io.Writer) {
	v := readBuildInfo().Version
	fmt.Fprintf(w, "%% PORTFW 8 %q %q\n\n", "portfw "+v, "System Administration")
	fmt.Fprint(w, `# NAME
portfw - ports that belong to users

# SYNOPSIS
**portfw** *command* [*flags*]

# DESCRIPTION
**portfw** makes ports belong to users. It compiles a YAML policy (**portfw-policy**(5)) into one
nftables table (family inet) and an eBPF bind guard. The guard makes **bind**(2) to a reserved
port fail with EPERM for anyone but its owners, and lets an owner bind its own low ports without
root. The table makes sure a process of any other uid that holds a reserved port anyway gets no
traffic: nothing it sends leaves and nothing reaches it. **portfw** also tunes
net.ipv4.ip_unprivileged_port_start and net.ipv4.ip_local_reserved_ports where that is safe, and
**portfw watch** keeps the kernel equal to the policy.

Every command works in the network namespace it runs in: **ip netns exec** *NS* **portfw apply**,
**nsenter --net=**/run/netns/*NS* **portfw apply**, or a container's namespace.

A flag is written with one dash or two (**-json** is **--json**); flags come before arguments.

# COMMANDS
`)
	for _, c := range allFlags() {
		if c.hidden {
			continue
		}
		fmt.Fprintf(w, "## portfw %s %s\n%s.\n\n", c.name, md(c.args), md(upperFirst(c.summary)))
		if c.exits != "" {
			fmt.Fprintf(w, "Exit status: %s.\n\n", md(c.exits))
		}
		for _, f := range c.flags {
			name, usage := flag.UnquoteUsage(f)
			term := "**" + md(flagName(f)) + "**"
			if takesValue(f) {
				if name == "" {
					name = "value"
				}
				term += " *" + md(name) + "*"
			}
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" && f.DefValue != "0s" {
				usage += " (default " + f.DefValue + ")"
			}
			fmt.Fprintf(w, "%s\n: %s\n\n", term, md(usage))
		}
	}
	fmt.Fprintf(w, `# EXIT STATUS
**0**
: success: the policy is valid, applied, in sync; no squatter found.

**1**
: the answer is no: an invalid policy (every problem is listed as *file*:*line*:*col*), a policy not
  applied, changes pending (**diff**), a squatter found (**audit**).

**2**
: bad usage, or portfw could not do what was asked (no permission, no nftables, the namespace's lock
  held by another portfw past **--wait**).

# FILES
%s
: The policy (see **portfw-policy**(5)). Root's, writable by nobody else, nor its directories.

/etc/portfw/policy.d/\*.yaml
: Drop-ins: reservations merged into the policy, in the order of their names.

/run/portfw/
: State: the sysctl values found before portfw changed them (restored by **portfw remove**), and
  one lock per network namespace (netns-*cookie*.lock) held by **portfw watch** and, while they
  run, **apply** and **remove**.

# ENVIRONMENT
%s
: The state and lock directory, instead of /run/portfw.

%s
: The default of **--bind-guard-cgroup**: attach the bind guard below this cgroup v2 path, guarding
  only the processes below it (tests).

PORTFW\_PASSWD\_FILE, PORTFW\_GROUP\_FILE
: Read users and groups from these files instead of the system's user database (tests, and
  containers that mount the host's /etc/passwd and /etc/group elsewhere).

NOTIFY\_SOCKET, WATCHDOG\_USEC
: Set by systemd for **portfw watch** (Type=notify, WatchdogSec=).

# EXAMPLES
Check a policy, see what applying it would change, apply it:

    portfw check -f /etc/portfw/policy.yaml
    portfw diff
    portfw apply

Who holds the reserved ports, and what portfw dropped:

    portfw audit
    portfw status

In a network namespace:

    ip netns exec blue portfw apply -f blue.yaml

# SEE ALSO
**portfw-policy**(5), **nft**(8), **systemd.unit**(5), **ip-netns**(8)

The documentation in /usr/share/doc/portfw/.
`, md(defaultPolicy), envStateDir, envGuardCgroup)
}

// relativeLink is a markdown link to another page of the docs; in a man
// page only its text is kept.
var relativeLink = regexp.MustCompile(`\[([^\]]+)\]\((?:[^)h:][^):]*|#[^)]*)\)`)

// manPolicy is portfw-policy(5) in markdown: docs/policy.md under the
// sections a man page has.
func manPolicy(w io.Writer) {
	v := readBuildInfo().Version
	body := docs.Policy
	if i := strings.Index(body, "\n"); i >= 0 && strings.HasPrefix(body, "# ") {
		body = body[i+1:]
	}
	body = tablesAsLists(relativeLink.ReplaceAllString(body, "$1"))
	fmt.Fprintf(w, "%% PORTFW-POLICY 5 %q %q\n\n", "portfw "+v, "File Formats")
	fmt.Fprintf(w, "# NAME\nportfw-policy - the policy file of portfw\n\n# SYNOPSIS\n%s, %s\n\n# DESCRIPTION\n",
		md(defaultPolicy), md("/etc/portfw/policy.d/*.yaml"))
	fmt.Fprint(w, body)
	fmt.Fprint(w, "\n# SEE ALSO\n**portfw**(8)\n")
}

// tablesAsLists turns each markdown table into a definition list, one
// entry per row: a man page's width cannot hold a table of sentences.
//
//	| key | default | meaning |      **table**
//	|---|---|---|                     : default: portfw. The nftables...
//	| `+"`table`"+` | `+"`portfw`"+` | The... |
func tablesAsLists(doc string) string {
	cells := func(line string) []string {
		var out []string
		for _, c := range strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|") {
			out = append(out, strings.TrimSpace(c))
		}
		return out
	}
	var b strings.Builder
	var header []string
	lines := strings.Split(doc, "\n")
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(l, "|") {
			header = nil
			b.WriteString(l + "\n")
			continue
		}
		if header == nil { // the header row, then the |---| row
			header = cells(l)
			i++
			continue
		}
		row := cells(l)
		b.WriteString(row[0] + "\n: ")
		for j := 1; j < len(row)-1 && j < len(header); j++ {
			fmt.Fprintf(&b, "%s: %s. ", upperFirst(header[j]), row[j])
		}
		b.WriteString(row[len(row)-1] + "\n\n")
	}
	return b.String()
}

func runMan(a *app, args []string) int {
	fs := a.flags("man")
	if code, done := a.parseArgs(fs, args, 1); done {
		return code
	}
	var b strings.Builder
	switch fs.Arg(0) {
	case "portfw", "8":
		manPortfw(&b)
	case "policy", "portfw-policy", "5":
		manPolicy(&b)
	default:
		fmt.Fprintf(a.stderr, "portfw man: say which page: portfw or policy\n")
		return exitUsage
	}
	a.stdout.Write(md2man.Render([]byte(b.String())))
	return exitOK
}
