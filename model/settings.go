package model

import "strconv"

// Settings are the policy-wide settings, with defaults filled in.
type Settings struct {
	Table     string // nftables table name, family inet
	AllowRoot bool   // uid 0 owns every reserved port too
	PortStart PortStart
	// Log is the kernel log rate for drops; the zero LogRate logs nothing.
	Log LogRate
	// MarkOwned and MarkSquatted are the conntrack mark bits portfw uses;
	// all other bits of the ct mark are left alone. Each is one bit.
	MarkOwned, MarkSquatted uint32
	// BindGuard says whether the eBPF bind guard also refuses bind() on
	// reserved ports to everyone but their owners.
	BindGuard BindGuardMode
}

// Defaults, as the schema documents them.
const (
	DefaultTable        = "portfw"
	DefaultMarkOwned    = 0x01000000
	DefaultMarkSquatted = 0x02000000
)

// DefaultLog is ten log lines a minute.
var DefaultLog = LogRate{Count: 10, Unit: PerMinute}

// DefaultSettings are the settings of a policy that sets none.
func DefaultSettings() Settings {
	return Settings{
		Table:        DefaultTable,
		AllowRoot:    true,
		PortStart:    PortStart{Mode: PortStartAuto},
		Log:          DefaultLog,
		MarkOwned:    DefaultMarkOwned,
		MarkSquatted: DefaultMarkSquatted,
		BindGuard:    BindGuardAuto,
	}
}

// PortStartMode is how settings.unprivileged_port_start is managed.
type PortStartMode uint8

const (
	// PortStartAuto lowers the threshold only where that opens nothing to
	// anyone: with the bind guard it is left alone (the guard grants owners
	// their low ports); without it too, since a lowered threshold would
	// make every low UDP port readable by any user.
	PortStartAuto PortStartMode = iota
	// PortStartKeep never changes the threshold (and undoes portfw's own
	// earlier change).
	PortStartKeep
	// PortStartFixed sets the threshold to Value.
	PortStartFixed
)

// PortStart is settings.unprivileged_port_start.
type PortStart struct {
	Mode  PortStartMode
	Value uint16 // 0..1024, for PortStartFixed
}

func (p PortStart) String() string {
	switch p.Mode {
	case PortStartAuto:
		return "auto"
	case PortStartKeep:
		return "keep"
	}
	return strconv.Itoa(int(p.Value))
}

// RateUnit is the period of a log rate.
type RateUnit uint8

const (
	PerSecond RateUnit = iota + 1
	PerMinute
	PerHour
	PerDay
)

var unitNames = [...]string{PerSecond: "second", PerMinute: "minute", PerHour: "hour", PerDay: "day"}

// RateUnitByName finds a unit by the name nft uses ("minute").
func RateUnitByName(s string) (RateUnit, bool) {
	for u, n := range unitNames {
		if n != "" && n == s {
			return RateUnit(u), true
		}
	}
	return 0, false
}

func (u RateUnit) String() string {
	if int(u) < len(unitNames) && unitNames[u] != "" {
		return unitNames[u]
	}
	return "unit" + strconv.Itoa(int(u))
}

// LogRate is a rate limit for the kernel log. The zero value logs nothing.
type LogRate struct {
	Count uint32
	Unit  RateUnit
}

// Enabled reports whether drops are logged at all.
func (r LogRate) Enabled() bool { return r.Count > 0 }

// String is the rate as nft writes it: "10/minute".
func (r LogRate) String() string {
	if !r.Enabled() {
		return "off"
	}
	return strconv.FormatUint(uint64(r.Count), 10) + "/" + r.Unit.String()
}

// BindGuardMode is settings.bind_guard. The zero value is off.
type BindGuardMode uint8

const (
	BindGuardOff BindGuardMode = iota
	BindGuardOn
	// BindGuardAuto (the default) runs the guard where the kernel supports
	// it and relies on the nftables rules alone elsewhere.
	BindGuardAuto
)

func (m BindGuardMode) String() string {
	switch m {
	case BindGuardOff:
		return "off"
	case BindGuardOn:
		return "on"
	case BindGuardAuto:
		return "auto"
	}
	return "BindGuardMode(" + strconv.Itoa(int(m)) + ")"
}
