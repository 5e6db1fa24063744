package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/portfw/portfw/testenv"
)

// scraper reads a daemon's /metrics and /healthz from inside its
// namespace.
type scraper struct {
	t    *testing.T
	http *http.Client
	base string
}

func newScraper(t *testing.T, ns *testenv.NS, d *watchProc) *scraper {
	t.Helper()
	d.waitLog("serving metrics", 1)
	m := regexp.MustCompile(`msg="serving metrics" address=(\S+)`).FindStringSubmatch(d.logText())
	if m == nil {
		t.Fatalf("no metrics address in the log:\n%s", d.logText())
	}
	return &scraper{t: t, http: ns.HTTPClient(), base: "http://" + m[1]}
}

func (s *scraper) get(path string) (int, string) {
	s.t.Helper()
	resp, err := s.http.Get(s.base + path)
	if err != nil {
		s.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// metrics scrapes /metrics and parses it with Prometheus's own parser.
func (s *scraper) metrics() testenv.Metrics {
	s.t.Helper()
	code, body := s.get("/metrics")
	if code != 200 {
		s.t.Fatalf("/metrics: %d\n%s", code, body)
	}
	return testenv.ParseMetrics(s.t, body)
}

func (s *scraper) want(mfs testenv.Metrics, check func(float64) bool, what, name string, labels ...string) {
	s.t.Helper()
	v, ok := mfs.Value(name, labels...)
	if !ok || !check(v) {
		s.t.Errorf("%s%v = %v (present %v), want %s", name, labels, v, ok, what)
	}
}

// none checks that name has no sample with these labels (or a zero one):
// a reservation's drop series appear with its first drop.
func (s *scraper) none(mfs testenv.Metrics, why, name string, labels ...string) {
	s.t.Helper()
	if v, ok := mfs.Value(name, labels...); ok && v != 0 {
		s.t.Errorf("%s%v = %v, want none (%s)", name, labels, v, why)
	}
}

func eq(x float64) func(float64) bool { return func(v float64) bool { return v == x } }
func positive(v float64) bool         { return v > 0 }

// TestMetricsDaemon: a running daemon's /metrics, read with Prometheus's
// parser after real squatter traffic, counts the drops for the reservation
// and direction they happened on and nowhere else; the audit's squatters,
// reloads, repairs and state are there; /healthz is 503 while the table is
// deleted and 200 once the daemon repaired it, and the log names the
// process that deleted it.
func TestMetricsDaemon(t *testing.T) {
	w := setup(t, "")
	path := writePolicy(t, w.policy("bind_guard: off"))
	// A long debounce holds the repair back long enough to see /healthz
	// say the table is not in sync.
	d := startDaemon(t, viaIPNetnsExec, w.Server, path, "--metrics-address", "127.0.0.1:0", "--debounce", "700ms", "--audit-interval", "100ms")
	s := newScraper(t, w.Server, d)
	if code, body := s.get("/healthz"); code != 200 || !strings.HasPrefix(body, "ok: ") {
		t.Fatalf("/healthz after start: %d %q", code, body)
	}

	// A squatter on web's 8443/tcp: the client's SYN carries no data and
	// is let in; the squatter's SYN-ACKs are dropped on output. One on
	// sip's 5060/udp: it reads the first datagram (the rules'
	// residual, docs/layers.md) and its reply is dropped on output.
	sqTCP := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat})
	sqUDP := w.Server.Serve(t, testenv.ServeConfig{Proto: testenv.UDP, Addr: any6(5060), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8443)}))
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Proto: testenv.UDP, Addr: w.v4(5060)}))
	d.waitLog("squatter", 1) // the audit saw them

	mfs := s.metrics()
	s.want(mfs, positive, "> 0", "portfw_dropped_packets_total", "reservation", "web", "direction", "out")
	s.want(mfs, positive, "> 0", "portfw_dropped_bytes_total", "reservation", "web", "direction", "out")
	s.none(mfs, "a plain SYN is let in", "portfw_dropped_packets_total", "reservation", "web", "direction", "in")
	s.want(mfs, positive, "> 0", "portfw_dropped_packets_total", "reservation", "sip", "direction", "out")
	for _, dir := range []string{"in", "out"} {
		s.none(mfs, "lite dropped nothing", "portfw_dropped_packets_total", "reservation", "lite", "direction", dir)
	}
	s.want(mfs, eq(3), "3", "portfw_reservations")
	s.want(mfs, eq(1), "1", "portfw_in_sync")
	s.want(mfs, eq(0), "0 (bind_guard: off)", "portfw_bind_guard_active")
	s.want(mfs, eq(1), "1", "portfw_reloads_total", "result", "applied")
	s.want(mfs, eq(0), "0", "portfw_drift_repairs_total")
	s.want(mfs, eq(1), "1", "portfw_squatters", "reservation", "web")
	s.want(mfs, eq(1), "1", "portfw_squatters", "reservation", "sip")
	s.want(mfs, func(v float64) bool { return float64(time.Now().Unix())-v < 60 }, "within the last minute", "portfw_policy_applied_timestamp_seconds")
	if _, ok := mfs["portfw_build_info"]; !ok {
		t.Error("no portfw_build_info")
	}
	sqTCP.Stop(t)
	sqUDP.Stop(t)

	// Drift: /healthz says so until the repair.
	w.Server.Run(t, "nft", "delete", "table", "inet", "portfw")
	code, body := s.get("/healthz")
	if code != 503 || !strings.Contains(body, "the ruleset changed since the daemon's last commit") {
		t.Errorf("/healthz with the table deleted: %d %q, want 503 saying why", code, body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for code != 200 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		code, body = s.get("/healthz")
	}
	if code != 200 || !tableHas(t, w.Server, `tcp . 8443 comment "web"`) {
		t.Fatalf("/healthz after the repair: %d %q", code, body)
	}
	d.waitLog(`changed_by="nft (pid `, 1)
	if d.count("portfw (pid") != 0 {
		t.Errorf("changed_by names the daemon's own commits:\n%s", d.logText())
	}
	mfs = s.metrics()
	s.want(mfs, eq(1), "1", "portfw_drift_repairs_total")

	// An edit reloads and is timed; an invalid one is counted and the last
	// good policy stays in force (still healthy).
	replace(t, path, strings.Replace(w.policy("bind_guard: off"), "[8080, 8443]", "[8080, 8443, 8444]", 1))
	d.waitLog("mode=delta", 1)
	replace(t, path, "version: 1\nreservations: [\n")
	d.waitLog("policy rejected", 1)
	mfs = s.metrics()
	s.want(mfs, eq(2), "2", "portfw_reloads_total", "result", "applied")
	s.want(mfs, eq(1), "1", "portfw_reloads_total", "result", "invalid")
	s.want(mfs, eq(1), "1 (the edit, write to commit)", "portfw_reload_duration_seconds")
	s.want(mfs, eq(0), "0 (the files are rejected)", "portfw_policy_files_valid")
	if code, body := s.get("/healthz"); code != 200 || !strings.Contains(body, "the files on disk are rejected, the last good policy stays") {
		t.Errorf("/healthz with an invalid file and the last good policy enforced: %d %q", code, body)
	}
}

// TestMetricsAddressBusy: a taken metrics address does not stop the
// daemon from enforcing; it serves once the address is free. A malformed
// one is a usage error.
func TestMetricsAddressBusy(t *testing.T) {
	w := setup(t, "")
	taken := w.Server.Serve(t, testenv.ServeConfig{Addr: netip.MustParseAddrPort("127.0.0.1:9851"), As: w.squat})
	path := writePolicy(t, w.policy("bind_guard: off"))
	d := startDaemon(t, viaIPNetnsExec, w.Server, path, "--metrics-address", "127.0.0.1:9851")
	d.waitLog("metrics: cannot listen; retrying", 1)
	if !tableHas(t, w.Server, `tcp . 8443 comment "web"`) {
		t.Fatal("the daemon enforced nothing while the metrics address was taken")
	}
	taken.Stop(t)
	d.waitLog(`msg="serving metrics" address=127.0.0.1:9851`, 1)

	_, stderr, err := w.Server.Exec(portfwBin(t), "watch", "-f", path, "--metrics-address", "localhost")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != exitUsage || !strings.Contains(stderr, `--metrics-address "localhost"`) {
		t.Errorf("a malformed address: %v\n%s", err, stderr)
	}
}

// TestHealthNoPolicy: a daemon that never had a valid policy is unhealthy,
// and says why.
func TestHealthNoPolicy(t *testing.T) {
	w := setup(t, "")
	path := writePolicy(t, "version: 1\nreservations:\n  - name: x\n    ports: [99999]\n")
	d := startDaemon(t, viaIPNetnsExec, w.Server, path, "--metrics-address", "127.0.0.1:0")
	s := newScraper(t, w.Server, d)
	if code, body := s.get("/healthz"); code != 503 || !strings.Contains(body, "no valid policy enforced yet") {
		t.Errorf("/healthz without a valid policy: %d %q", code, body)
	}
	mfs := s.metrics()
	s.want(mfs, eq(0), "0", "portfw_in_sync")
	s.want(mfs, eq(1), "1", "portfw_reloads_total", "result", "invalid")
}

// TestCoexistNftablesService: nftables.service (re)loading its
// configuration runs `nft -f /etc/nftables.conf`, which starts with
// `flush ruleset`: portfw's table goes with everyone else's. The daemon
// puts it back within a second, beside the service's table, says that nft
// removed it, and enforcement holds again with traffic.
func TestCoexistNftablesService(t *testing.T) {
	w := setup(t, "")
	path := writePolicy(t, w.policy("bind_guard: off"))
	d := startDaemon(t, viaIPNetnsExec, w.Server, path)
	conf := writePolicy(t, `#!/usr/sbin/nft -f
flush ruleset

table inet filter {
	chain input { type filter hook input priority filter; policy accept; }
	chain forward { type filter hook forward priority filter; policy accept; }
	chain output { type filter hook output priority filter; policy accept; }
}
`)
	start := time.Now()
	w.Server.Run(t, "nft", "-f", conf)
	for !tableHas(t, w.Server, `tcp . 8443 comment "web"`) {
		if time.Since(start) > time.Second {
			t.Fatal("portfw's table not restored within a second of nftables.service's flush")
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.waitLog(`changed_by="nft (pid `, 1)
	if out := w.Server.Run(t, "nft", "list", "tables"); !strings.Contains(out, "table inet filter") {
		t.Errorf("the service's table is gone:\n%s", out)
	}
	sq := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.squat})
	testenv.Blocked(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v4(8443)}))
	if len(sq.Received(t)) != 0 {
		t.Error("squatter read data after the repair")
	}
	sq.Stop(t)
	srv := w.Server.Serve(t, testenv.ServeConfig{Addr: any6(8443), As: w.owner})
	testenv.Delivered(t, w.Client.Dial(t, testenv.DialConfig{Addr: w.v6(8443)}), fmt.Sprintf("hello from %d", w.owner.UID))
	srv.Stop(t)
	_ = os.Remove(conf)
}
