package policy

import (
	"cmp"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/portfw/portfw/model"
)

// checkUnit says why s is not a systemd unit name or pattern, or "". The
// rules are systemd's (unit_name_is_valid): at most 255 bytes of
// [A-Za-z0-9:_.\-] and at most one "@" (a template instance), a known type
// after the last dot; a pattern may also hold the glob characters *, ? and
// [...] that `systemctl list-units` takes.
func checkUnit(s string) string {
	stem, typ, ok := cutLast(s, ".")
	switch {
	case s == "":
		return "empty unit name"
	case len(s) > 255:
		return "unit name longer than 255 bytes"
	case !ok || !slices.Contains(model.UnitTypes, typ):
		return `invalid unit name "` + s + `"; name a unit with its type, such as nginx.service (types: ` + strings.Join(model.UnitTypes, ", ") + ")"
	case stem == "" || strings.HasPrefix(stem, "@"):
		return `invalid unit name "` + s + `"; it needs a name before the type`
	case strings.Count(stem, "@") > 1:
		return `invalid unit name "` + s + `"; at most one @ (a template's instance)`
	}
	for _, c := range stem {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune(":_.-\\@*?[]!", c)) {
			return `invalid unit name "` + s + `": the character ` + strconv.QuoteRune(c) + ` is not allowed in a unit name`
		}
	}
	if _, err := path.Match(stem, ""); err != nil {
		return `invalid unit pattern "` + s + `": unbalanced [ ]`
	}
	return ""
}

// IsUnitPattern reports whether a unit entry is a glob rather than a name.
func IsUnitPattern(s string) bool { return strings.ContainsAny(s, "*?[") }

// checkCgroup says why s is not a cgroup v2 path portfw accepts, or "":
// absolute from the hierarchy's root, clean, not the root itself, at most
// model.MaxCgroupLevel deep.
func checkCgroup(s string) string {
	switch {
	case s == "":
		return "empty cgroup path"
	case strings.HasPrefix(s, "/sys/fs/cgroup"):
		rel := strings.TrimPrefix(strings.TrimPrefix(s, "/sys/fs/cgroup"), "/unified")
		return `cgroup path "` + s + `" names the mount point; write the path from the cgroup v2 hierarchy's root, such as "` + cmp.Or(rel, "/system.slice/app.service") + `"`
	case !strings.HasPrefix(s, "/"):
		return `cgroup path "` + s + `" is relative; write it from the cgroup v2 hierarchy's root, such as "/` + s + `"`
	case s == "/":
		return `the root cgroup holds every process: it cannot own a port`
	}
	parts := strings.Split(s[1:], "/")
	for _, c := range parts {
		switch c {
		case "":
			return `cgroup path "` + s + `" has an empty component (// or a trailing /)`
		case ".", "..":
			return `cgroup path "` + s + `" holds "` + c + `"; write it without . and ..`
		}
		if strings.ContainsAny(c, "\n\t\r\x00") {
			return `cgroup path "` + s + `" holds a control character`
		}
	}
	if len(parts) > model.MaxCgroupLevel {
		return `cgroup path "` + s + `" is ` + strconv.Itoa(len(parts)) + ` levels deep; portfw matches cgroups at most ` + strconv.Itoa(model.MaxCgroupLevel) + ` levels below the root`
	}
	return ""
}

func cutLast(s, sep string) (before, after string, ok bool) {
	i := strings.LastIndex(s, sep)
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+len(sep):], true
}
