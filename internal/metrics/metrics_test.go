package metrics

import (
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/portfw/portfw/compiler"
	"github.com/portfw/portfw/testenv"
)

// fakeHost is the host the metrics read at scrape time.
type fakeHost struct {
	gen      uint32
	genErr   error
	lockErr  error
	drops    []compiler.Summary
	dropsErr error
	reads    int
}

func (h *fakeHost) source() Source {
	return Source{
		Gen:      func() (uint32, error) { return h.gen, h.genErr },
		LockHeld: func() error { return h.lockErr },
		Drops: func(table string) ([]compiler.Summary, error) {
			h.reads++
			return h.drops, h.dropsErr
		},
	}
}

func get(t *testing.T, m *Metrics, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

func parse(t *testing.T, text string) testenv.Metrics { return testenv.ParseMetrics(t, text) }

// sample is the value of name's sample with exactly these label pairs.
func sample(mfs testenv.Metrics, name string, labels ...string) (float64, bool) {
	return mfs.Value(name, labels...)
}

func enforced(gen uint32) State {
	return State{Policy: "/etc/portfw/policy.yaml", Enforced: true, Reservations: 2, Table: "portfw", Gen: gen, AppliedAt: time.Unix(1700000000, 0)}
}

func TestHealthz(t *testing.T) {
	for _, tc := range []struct {
		name  string
		state State
		host  fakeHost
		code  int
		want  string
	}{
		{"nothing enforced yet", State{}, fakeHost{}, 503, "no valid policy enforced yet"},
		{"start failed", State{Failure: "open ruleset: permission denied"}, fakeHost{}, 503, "the policy is not enforced: open ruleset: permission denied"},
		{"in sync", enforced(7), fakeHost{gen: 7}, 200, "ok: /etc/portfw/policy.yaml enforced, 2 reservations in table inet portfw"},
		{"partly enforced", func() State { s := enforced(7); s.Failure = "bind guard: not attached"; return s }(), fakeHost{gen: 7}, 503, "bind guard: not attached"},
		{"someone committed", enforced(7), fakeHost{gen: 8}, 503, "the ruleset changed since the daemon's last commit or check (generation 8, the daemon's 7)"},
		{"generation unreadable", enforced(7), fakeHost{genErr: errors.New("netlink: EPERM")}, 503, "cannot read the ruleset's generation: netlink: EPERM"},
		{"lock lost", enforced(7), fakeHost{gen: 7, lockErr: errors.New("lock file replaced")}, 503, "the daemon lost its namespace's lock: lock file replaced"},
		{"files rejected, last good enforced", func() State { s := enforced(7); s.Rejected = "policy.yaml:3:1: not valid YAML"; return s }(), fakeHost{gen: 7}, 200,
			"enforced, 2 reservations in table inet portfw; the files on disk are rejected, the last good policy stays: policy.yaml:3:1: not valid YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := New("v-test", tc.host.source())
			m.Set(tc.state)
			code, body := get(t, m, "/healthz")
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Errorf("/healthz = %d %q, want %d containing %q", code, body, tc.code, tc.want)
			}
			in, _ := sample(parse(t, mustGet(t, m, "/metrics")), "portfw_in_sync")
			if want := map[bool]float64{true: 1}[tc.code == 200]; in != want {
				t.Errorf("portfw_in_sync = %v, want %v (it is /healthz's answer)", in, want)
			}
		})
	}
}

func mustGet(t *testing.T, m *Metrics, path string) string {
	t.Helper()
	code, body := get(t, m, path)
	if code != 200 {
		t.Fatalf("%s: %d %s", path, code, body)
	}
	return body
}

func TestMetricsReportWhatTheDaemonDid(t *testing.T) {
	h := &fakeHost{gen: 3, drops: []compiler.Summary{
		{Name: "web", DroppedIn: compiler.Counter{Packets: 2, Bytes: 120}, DroppedOut: compiler.Counter{Packets: 5, Bytes: 300}},
		{Name: "sip"},
	}}
	m := New("v-test", h.source())
	m.Set(func() State { s := enforced(3); s.GuardOn = true; return s }())
	m.Reloaded("applied", 15*time.Millisecond)
	m.Reloaded("invalid", 0)
	m.Repaired()
	m.Audited(map[string]int{"web": 2})
	mfs := parse(t, mustGet(t, m, "/metrics"))
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"portfw_dropped_packets_total", []string{"reservation", "web", "direction", "in"}, 2},
		{"portfw_dropped_bytes_total", []string{"reservation", "web", "direction", "in"}, 120},
		{"portfw_dropped_packets_total", []string{"reservation", "web", "direction", "out"}, 5},
		{"portfw_dropped_bytes_total", []string{"reservation", "web", "direction", "out"}, 300},
		{"portfw_reloads_total", []string{"result", "applied"}, 1},
		{"portfw_reloads_total", []string{"result", "invalid"}, 1},
		{"portfw_reloads_total", []string{"result", "failed"}, 0},
		{"portfw_reload_duration_seconds", nil, 1}, // the invalid reload is not timed
		{"portfw_drift_repairs_total", nil, 1},
		{"portfw_squatters", []string{"reservation", "web"}, 2},
		{"portfw_reservations", nil, 2},
		{"portfw_bind_guard_active", nil, 1},
		{"portfw_policy_applied_timestamp_seconds", nil, 1700000000},
		{"portfw_in_sync", nil, 1},
	} {
		if got, ok := sample(mfs, c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	for _, dir := range []string{"in", "out"} {
		if _, ok := sample(mfs, "portfw_dropped_packets_total", "reservation", "sip", "direction", dir); ok {
			t.Errorf("a series for sip/%s, which dropped nothing (only counters that moved are reported)", dir)
		}
	}
	if v, _ := sample(mfs, "portfw_policy_files_valid"); v != 1 {
		t.Errorf("portfw_policy_files_valid = %v with valid files", v)
	}
	if _, ok := sample(mfs, "portfw_squatters", "reservation", "sip"); ok {
		t.Error("portfw_squatters has a sample for sip, which the audit did not report")
	}
	m.Audited(map[string]int{})
	if _, ok := sample(parse(t, mustGet(t, m, "/metrics")), "portfw_squatters", "reservation", "web"); ok {
		t.Error("portfw_squatters still reports web after an audit that found nobody")
	}
}

// A scrape every few seconds does not make the daemon dump the kernel's
// counters each time; a new table does.
func TestDropCountersAreCached(t *testing.T) {
	h := &fakeHost{gen: 1, drops: []compiler.Summary{{Name: "web"}}}
	m := New("v-test", h.source())
	for range 3 {
		mustGet(t, m, "/metrics")
	}
	if h.reads != 0 {
		t.Errorf("read the drop counters %d times with no table enforced", h.reads)
	}
	m.Set(enforced(1))
	for range 3 {
		mustGet(t, m, "/metrics")
	}
	if h.reads != 1 {
		t.Errorf("read the drop counters %d times in three scrapes within %v, want 1", h.reads, DropsMaxAge)
	}
	m.Set(enforced(1)) // a reload into the same table keeps the cache
	mustGet(t, m, "/metrics")
	s := enforced(2)
	s.Table = "portfw2"
	m.Set(s)
	mustGet(t, m, "/metrics")
	if h.reads != 2 {
		t.Errorf("%d reads after a change of table, want 2", h.reads)
	}
}

// A failed read of the counters is told to the daemon's log, and the
// daemon's other metrics are still served.
func TestDropCountersUnreadable(t *testing.T) {
	h := &fakeHost{gen: 1, dropsErr: errors.New("netlink receive: EINTR")}
	src := h.source()
	var told []error
	src.ScrapeError = func(err error) { told = append(told, err) }
	m := New("v-test", src)
	m.Set(enforced(1))
	for range 3 {
		mfs := parse(t, mustGet(t, m, "/metrics"))
		if _, ok := mfs["portfw_dropped_packets_total"]; ok {
			t.Error("drop counters reported though they could not be read")
		}
		if v, _ := sample(mfs, "portfw_reservations"); v != 2 {
			t.Errorf("the other metrics are not served: portfw_reservations = %v", v)
		}
	}
	// Told once per read, not once per scrape: scrapes cannot flood the log.
	if len(told) != 1 || !strings.Contains(told[0].Error(), "netlink receive: EINTR") {
		t.Errorf("scrape errors told: %v, want the read's error once", told)
	}
}

func TestFilesRejectedGauge(t *testing.T) {
	m := New("v-test", (&fakeHost{gen: 1}).source())
	s := enforced(1)
	s.Rejected = "bad"
	m.Set(s)
	if v, _ := sample(parse(t, mustGet(t, m, "/metrics")), "portfw_policy_files_valid"); v != 0 {
		t.Errorf("portfw_policy_files_valid = %v while the files are rejected", v)
	}
}

// Many scrapes at once: at most a few are served at a time, and every one
// gets an answer (served or 503), none hangs.
func TestConcurrentScrapes(t *testing.T) {
	h := &fakeHost{gen: 1, drops: []compiler.Summary{{Name: "web", DroppedOut: compiler.Counter{Packets: 1, Bytes: 60}}}}
	m := New("v-test", h.source())
	m.Set(enforced(1))
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	codes := make(chan int, 20)
	for range 20 {
		go func() {
			resp, err := http.Get(srv.URL + "/metrics")
			if err != nil {
				codes <- 0
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	served := 0
	for range 20 {
		switch c := <-codes; c {
		case 200:
			served++
		case 503:
		default:
			t.Errorf("a scrape got %d", c)
		}
	}
	if served == 0 {
		t.Error("no scrape was served")
	}
}

func TestWriteText(t *testing.T) {
	inSync := true
	var b bytes.Buffer
	err := WriteText(&b, Text{Version: "v-test", Table: "portfw", Installed: true, InSync: &inSync, Drops: []compiler.Summary{
		{Name: "web", DroppedOut: compiler.Counter{Packets: 4, Bytes: 240}},
		{Name: "_guard"},
		{Name: compiler.Unlabelled, DroppedIn: compiler.Counter{Packets: 1, Bytes: 60}},
		{Name: "dns"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	mfs := parse(t, b.String())
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"portfw_table_installed", nil, 1},
		{"portfw_in_sync", nil, 1},
		{"portfw_bind_guard_active", nil, 0},
		{"portfw_reservations", nil, 2}, // web and dns, not the guard nor hand-added elements
		{"portfw_dropped_packets_total", []string{"reservation", "web", "direction", "out"}, 4},
		{"portfw_dropped_bytes_total", []string{"reservation", "web", "direction", "out"}, 240},
		{"portfw_dropped_packets_total", []string{"reservation", compiler.Unlabelled, "direction", "in"}, 1},
		{"portfw_build_info", []string{"goversion", goVersion(mfs), "version", "v-test"}, 1},
	} {
		if got, ok := sample(mfs, c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (present %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	b.Reset()
	if err := WriteText(&b, Text{Version: "v-test", Table: "portfw"}); err != nil {
		t.Fatal(err)
	}
	mfs = parse(t, b.String())
	if _, ok := mfs["portfw_in_sync"]; ok {
		t.Error("portfw_in_sync reported with no policy to compare with")
	}
	if v, _ := sample(mfs, "portfw_table_installed"); v != 0 {
		t.Errorf("portfw_table_installed = %v with no table", v)
	}
}

func goVersion(mfs testenv.Metrics) string {
	if mf := mfs["portfw_build_info"]; mf != nil && len(mf.Metric) == 1 {
		for _, l := range mf.Metric[0].Label {
			if l.GetName() == "goversion" {
				return l.GetValue()
			}
		}
	}
	return ""
}
