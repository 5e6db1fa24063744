package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
)

// buildInfo is what `portfw version` reports.
type buildInfo struct {
	Version   string `json:"version"`
	Revision  string `json:"revision,omitempty"`
	GoVersion string `json:"go_version"`
	Platform  string `json:"platform"`
	// BindGuard: the guard's eBPF programs are assembled by portfw itself
	// at run time (no object files, no clang), so every build has them;
	// whether this host's kernel can run them is `portfw check`'s answer.
	BindGuard bool `json:"bind_guard"`
}

// readBuildInfo is the version the build was stamped with (make: git
// describe), else the module version `go install` records, else "dev".
func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH, BindGuard: true}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				b.Revision = s.Value
			}
		}
	}
	return b
}

func runVersion(a *app, args []string) int {
	fs := a.flags("version")
	asJSON := fs.Bool("json", false, "print the version as JSON")
	if code, done := a.parse(fs, args); done {
		return code
	}
	b := readBuildInfo()
	if *asJSON {
		out, _ := json.MarshalIndent(b, "", "  ")
		fmt.Fprintln(a.stdout, string(out))
		return exitOK
	}
	fmt.Fprintf(a.stdout, "portfw %s\n", b.Version)
	if b.Revision != "" {
		fmt.Fprintf(a.stdout, "revision %s\n", b.Revision)
	}
	fmt.Fprintf(a.stdout, "built with %s for %s\n", b.GoVersion, b.Platform)
	fmt.Fprintln(a.stdout, "bind guard: built in (cgroup bind4/bind6 eBPF, assembled at run time; `portfw check` says whether this kernel runs it)")
	return exitOK
}
