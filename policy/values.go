package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/portfw/portfw/model"
)

// The value parsers the schema walk calls: each turns one scalar's text
// into a typed value or an error message naming what is wrong.

var (
	tableRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)
	nameRE  = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_.-]{0,63}$`)
	// numericRE tells a mistyped id or port range ("80-", "1-2-3") from a
	// user or group name, so that it gets a range error and not "unknown user".
	numericRE = regexp.MustCompile(`^[0-9\s-]*[0-9][0-9\s-]*$`)
)

// parseRange parses "N" or "LO-HI" in decimal, each in min..max. what
// names the thing in errors ("port", "uid").
func parseRange(s, what string, min, max uint64) (lo, hi uint64, err error) {
	num := func(t string) (uint64, error) {
		t = strings.TrimSpace(t)
		x, err := strconv.ParseUint(t, 10, 64)
		if err != nil && !errors.Is(err, strconv.ErrRange) {
			return 0, err
		}
		if err != nil || x < min || x > max {
			return 0, fmt.Errorf("%s %s is out of range %d..%d", what, t, min, max)
		}
		return x, nil
	}
	t := strings.TrimSpace(s)
	switch {
	case isDigits(t):
		lo, err = num(t)
		return lo, lo, err
	case strings.HasPrefix(t, "-") && isDigits(t[1:]):
		return 0, 0, fmt.Errorf("%s %s is out of range %d..%d", what, t, min, max)
	}
	a, b, ok := strings.Cut(t, "-")
	if !ok || !isDigits(strings.TrimSpace(a)) || !isDigits(strings.TrimSpace(b)) {
		if strings.Contains(t, "-") && numericRE.MatchString(t) {
			return 0, 0, fmt.Errorf("invalid %s range %q; write it as LO-HI", what, s)
		}
		return 0, 0, fmt.Errorf("%q is not a %s number or LO-HI range", s, what)
	}
	if lo, err = num(a); err != nil {
		return 0, 0, err
	}
	if hi, err = num(b); err != nil {
		return 0, 0, err
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("reversed %s range %q; write the lower %s first", what, s, what)
	}
	return lo, hi, nil
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// parseRate reads a log rate "N/unit".
func parseRate(s string) (model.LogRate, error) {
	num, unitName, ok := strings.Cut(s, "/")
	num, unitName = strings.TrimSpace(num), strings.TrimSpace(unitName)
	unit, known := model.RateUnitByName(unitName)
	if !ok || !known {
		return model.LogRate{}, errors.New("use N/second, N/minute, N/hour or N/day")
	}
	if !isDigits(num) {
		return model.LogRate{}, errors.New("the count must be a whole number")
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return model.LogRate{}, errors.New("the count is too large")
	}
	if n < 1 {
		return model.LogRate{}, errors.New("the count must be at least 1")
	}
	return model.LogRate{Count: uint32(n), Unit: unit}, nil
}

// parsePrefix parses an address or prefix into a masked prefix. An
// IPv4-mapped IPv6 address becomes plain IPv4 because that is how the
// kernel matches IPv4 traffic on a dual-stack socket.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "%") {
		return netip.Prefix{}, fmt.Errorf("%q has a zone; zones are not allowed, write the address without %%zone", s)
	}
	var pfx netip.Prefix
	if strings.Contains(s, "/") {
		var err error
		if pfx, err = netip.ParsePrefix(s); err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or prefix", s)
		}
		if m := pfx.Masked(); m != pfx {
			return netip.Prefix{}, fmt.Errorf("%q has host bits set; write %s for the network or %s for the single address", s, m, pfx.Addr())
		}
	} else {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address or prefix", s)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if a := pfx.Addr(); a.Is4In6() && pfx.Bits() >= 96 {
		pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
	}
	return pfx, nil
}
