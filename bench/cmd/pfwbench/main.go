// Command pfwbench is the Go half of `make bench`; bench/run.sh drives it.
//
//	pfwbench gen     write a synthetic policy and its naive one-rule-per-port form
//	pfwbench phases  time each step of an apply, and a one-membership delta
//	                 against a full apply, in the calling network namespace
//	pfwbench reload  time `portfw watch` reloads: policy renamed -> change committed
//	pfwbench restart time `portfw watch` following a unit's restart: its new
//	                 cgroup made -> the new id committed
//	pfwbench run     run a command, append its wall time and peak memory to a TSV
//	pfwbench report  turn a results directory into docs/performance.md
//
// phases and reload talk to the kernel of the namespace they run in, so
// run.sh starts them with nsenter inside a throwaway namespace.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/portfw/portfw/bench/gen"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: pfwbench gen|phases|reload|report [flags]")
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"gen": runGen, "phases": runPhases, "reload": runReload, "report": runReport, "run": runRun, "restart": runRestart,
	}
	run, ok := cmds[os.Args[1]]
	if !ok {
		fmt.Fprintf(os.Stderr, "pfwbench: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
	if err := run(os.Args[2:]); err != nil {
		fmt.Fprintf(os.Stderr, "pfwbench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

// specFlags are the flags that describe a synthetic policy.
type specFlags struct {
	n, ranges int
	port, uid uint
	single    bool
	cgroups   string
}

func (f *specFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&f.n, "n", 1, "reservations of one exact port (tcp+udp), the measured one included")
	fs.IntVar(&f.ranges, "ranges", 0, "extra reservations of one port range owned by a uid range")
	fs.UintVar(&f.port, "port", 11111, "the measured port, reserved for -uid")
	fs.UintVar(&f.uid, "uid", 65534, "owner of the measured port (the server's uid)")
	fs.BoolVar(&f.single, "single", false, "one protocol per filler reservation (room for 100k)")
	fs.StringVar(&f.cgroups, "cgroups", "", "own each reservation by the cgroup `PREFIX`/NAME instead of a uid")
}

func (f *specFlags) spec() (gen.Spec, error) {
	s := gen.Spec{N: f.n, Ranges: f.ranges, Port: uint16(f.port), UID: uint32(f.uid), Single: f.single, Cgroups: f.cgroups}
	return s, s.Check()
}

func runGen(args []string) error {
	fs := flag.NewFlagSet("gen", flag.ContinueOnError)
	var sf specFlags
	sf.register(fs)
	policyOut := fs.String("policy", "", "write the policy YAML here")
	naiveOut := fs.String("naive", "", "write the naive nft ruleset here")
	cgroupsOut := fs.String("cgroup-list", "", "write the cgroup paths the policy names here, one per line (with -cgroups)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := sf.spec()
	if err != nil {
		return err
	}
	if *policyOut != "" {
		if err := os.WriteFile(*policyOut, s.YAML(nil), 0o644); err != nil {
			return err
		}
	}
	if *cgroupsOut != "" {
		if err := os.WriteFile(*cgroupsOut, []byte(strings.Join(s.CgroupPaths(), "\n")+"\n"), 0o644); err != nil {
			return err
		}
	}
	if *naiveOut != "" {
		if err := os.WriteFile(*naiveOut, []byte(s.Naive()), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// runRun runs a command (after --) and appends "LABEL\tWALL_MS\tMAXRSS_KB"
// to -o: wall time from start to exit, and the child's peak resident set
// (getrusage: the largest of it and its own children).
func runRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	label := fs.String("label", "", "the first column")
	out := fs.String("o", "", "TSV to append to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	argv := fs.Args()
	if len(argv) == 0 || *out == "" || *label == "" {
		return errors.New("usage: pfwbench run -label L -o FILE -- CMD ARGS")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stderr = os.Stderr
	t0 := time.Now()
	err := cmd.Run()
	wall := time.Since(t0)
	if err != nil {
		return fmt.Errorf("%v: %w", argv, err)
	}
	rss := int64(0)
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = ru.Maxrss
	}
	f, err := os.OpenFile(*out, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "%s\t%.1f\t%d\n", *label, float64(wall.Microseconds())/1000, rss)
	return err
}
