package policy

import (
	"errors"
	"testing"

	"github.com/portfw/portfw/model"
)

func TestBindGuardSetting(t *testing.T) {
	tests := []struct {
		value string
		want  model.BindGuardMode
	}{
		{"", model.BindGuardAuto}, // key absent: the default
		{"off", model.BindGuardOff},
		{"on", model.BindGuardOn},
		{"auto", model.BindGuardAuto},
		{`"on"`, model.BindGuardOn},
		{"true", model.BindGuardOn},
		{"false", model.BindGuardOff},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			src := "version: 1\n"
			if tt.value != "" {
				src += "settings:\n  bind_guard: " + tt.value + "\n"
			}
			p, err := Parse("p.yaml", []byte(src))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if p.Settings.BindGuard != tt.want {
				t.Errorf("BindGuard = %v, want %v", p.Settings.BindGuard, tt.want)
			}
		})
	}
}

func TestBindGuardSettingErrors(t *testing.T) {
	tests := []struct{ name, yaml, want string }{
		{"unknown word", "version: 1\nsettings:\n  bind_guard: yes please\n",
			`p.yaml:3:15: settings.bind_guard: expected off, on or auto, got the string "yes please"`},
		{"number", "version: 1\nsettings:\n  bind_guard: 1\n",
			`p.yaml:3:15: settings.bind_guard: expected off, on or auto, got the number 1`},
		{"list", "version: 1\nsettings:\n  bind_guard: [on]\n",
			`p.yaml:3:15: settings.bind_guard: expected off, on or auto, got a list`},
		{"misspelt key", "version: 1\nsettings:\n  bind_gaurd: on\n",
			`p.yaml:3:3: settings: unknown key "bind_gaurd" (did you mean "bind_guard"?); valid keys are table, allow_root, unprivileged_port_start, log, marks, bind_guard`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.yaml))
			var errs *Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Parse error = %v, want Errors", err)
			}
			if !slicesContainsLine(err.Error(), tt.want) {
				t.Errorf("Parse error:\n%v\nwant a line:\n%s", err, tt.want)
			}
		})
	}
}

func TestBindGuardModeString(t *testing.T) {
	for m, want := range map[model.BindGuardMode]string{model.BindGuardOff: "off", model.BindGuardOn: "on", model.BindGuardAuto: "auto"} {
		if got := m.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", m, got, want)
		}
	}
}
