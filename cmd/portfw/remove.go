package main

import (
	"fmt"

	"github.com/portfw/portfw/model"
)

func runRemove(a *app, args []string) int {
	fs := a.flags("remove")
	path := fileFlag(fs)
	table := fs.String("table", "", "also remove this table `name` (the one portfw manages here is always removed)")
	o := a.hostFlags(fs, lockWait)
	if code, done := a.parse(fs, args); done {
		return code
	}
	var tables []string
	if tableGiven(fs) {
		tables = append(tables, *table)
	}
	// The policy only names a table to remove: a broken or missing one is
	// no reason to keep portfw's changes.
	if l, _ := a.policyFor(fs, *path); l != nil {
		tables = append(tables, l.resolved.Settings.Table)
	}
	if len(tables) == 0 {
		// Nothing names a table (no policy, and the state may be gone):
		// portfw's default one, if it is there.
		tables = append(tables, model.DefaultTable)
	}
	e, err := a.host(*o)
	if err != nil {
		a.printError("remove", *path, err)
		return exitUsage
	}
	unlock, err := e.Lock()
	if err != nil {
		a.printError("remove", *path, err)
		return exitNo
	}
	defer unlock()
	rr, err := e.Remove(tables...)
	if rr.Corrupt != nil {
		fmt.Fprintf(a.stderr, "warning: %v: restored the safest values instead (the threshold to 1024 unless it was higher; "+
			"reserved ports portfw may have added stay in ip_local_reserved_ports); the file was set aside\n", rr.Corrupt)
	}
	for _, n := range rr.Restored {
		fmt.Fprintf(a.stdout, "  sysctl %s\n", n)
	}
	if rr.Guard {
		fmt.Fprintln(a.stdout, "removed this namespace's bind guard")
	}
	if rr.Swept > 0 {
		fmt.Fprintf(a.stdout, "removed the bind guard entries of %d deleted namespaces\n", rr.Swept)
	}
	a.printWarnings(rr.Warnings)
	for _, t := range rr.Tables {
		fmt.Fprintf(a.stdout, "removed table inet %s\n", t)
	}
	if err != nil {
		fmt.Fprintf(a.stderr, "portfw remove: %v\n", err)
		return exitNo
	}
	if len(rr.Tables) == 0 {
		fmt.Fprintln(a.stdout, "no portfw table is installed here; nothing else to remove")
	}
	// Nothing of portfw is left here: nor is its lock file (nor its state
	// directory, when no other namespace has files in it).
	if l, ok := e.Host.Lock.(interface{ RemoveLock() error }); ok {
		if err := l.RemoveLock(); err != nil {
			fmt.Fprintf(a.stderr, "warning: remove the lock file: %v\n", err)
		}
	}
	return exitOK
}
